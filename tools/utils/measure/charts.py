"""The PNG of an expansion (expand.png): the pool's scores and what the seeds say of the model's quality.

matplotlib is optional (requirements-dev.txt): without it no chart is drawn and the caller says so.
"""
import numpy as np


def pyplot():
    """matplotlib.pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def expansion(path, summary):
    """expand.png from expand.json's summary: the histogram of the pool's scores (log counts) with the score at
    rank K, and the quality estimate per fold. Returns the path, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    hist, quality = summary["score_histogram"], summary["quality"]
    fig, axes = plt.subplots(1, 2 if quality else 1, figsize=(11 if quality else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.8, log=True)
    if summary["score_at_rank_k"] is not None:
        ax.axvline(summary["score_at_rank_k"], color="tab:red", linestyle="--",
                   label=f"score at rank {summary['top_k']}: {summary['score_at_rank_k']:.3g}")
        ax.legend(loc="upper right")
    ax.set_xlabel("score")
    ax.set_ylabel("pool users (log)")
    ax.set_title(f"campaign {summary['campaign']}: {summary['pool_users']} pool users")
    if quality:
        ax = axes[0][1]
        names = [("auc", "AUC, held-out seeds vs background"), ("lift_at_5", "lift in the top 5% / 10")]
        for i, (key, label) in enumerate(names):
            values = np.asarray(quality[key]["values"]) / (10 if key == "lift_at_5" else 1)
            ax.scatter(np.full(len(values), i), values, color="tab:blue")
            ax.errorbar(i + 0.15, values.mean(), yerr=values.std(), fmt="o", color="black")
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(names)), [label for _, label in names], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"quality on the seeds, {quality['folds']} folds (chance: 0.5 and 0.1)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
