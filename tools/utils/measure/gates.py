"""Which experts and critics each campaign uses: a checkpoint's gate weights, campaign by campaign.

MetaHeac mixes its experts, and its critics, with two gates computed from a
row's task vector: the mean of the row's user-field embeddings beside the
campaign's ad embeddings (net.py). The ad part is the same on every row of a
campaign but the user part is not, so each row has its own gate weights. A
campaign's gate here is the MEAN OVER ITS ROWS of those weights (each row's a
softmax, so the mean sums to 1 too): its training rows (stage 1 of the
training data, what the trainer reads) for a training campaign, its seeds
and candidates (both stages) for a test campaign. The
weights are the checkpoint's as saved, before any fine-tuning on a campaign.
"""
import csv
import io

import numpy as np

from ..files import atomic_write, write_text

GATES = ("expert_gate", "critic_gate")
ROWS = 4096  # rows per forward call; the result does not depend on it


def row_gates(net, batch):
    """(expert weights [B, E], critic weights [B, C]) of each row of a batch (static, dynamic, lengths, ad)."""
    from ..paddle_env import paddle

    feeds = {k: paddle.to_tensor(np.asarray(batch[k], np.int64)) for k in ("static", "dynamic", "lengths", "ad")}
    with paddle.no_grad():
        return tuple(weights.numpy() for weights in net.gates(feeds))


def campaign_gates(net, chunks):
    """{aid: (rows, mean expert weights [E], mean critic weights [C])} over chunks of stage arrays."""
    sums = {}
    for chunk in chunks:
        for start in range(0, len(chunk["aid"]), ROWS):
            part = {k: v[start:start + ROWS] for k, v in chunk.items()}
            experts, critics = row_gates(net, part)
            aids, inverse = np.unique(part["aid"], return_inverse=True)
            for i, aid in enumerate(aids.tolist()):
                rows = inverse == i
                n, e, c = sums.get(aid, (0, 0.0, 0.0))
                sums[aid] = (n + int(rows.sum()), e + experts[rows].astype(np.float64).sum(axis=0),
                             c + critics[rows].astype(np.float64).sum(axis=0))
    return {aid: (n, e / n, c / n) for aid, (n, e, c) in sorted(sums.items())}


def write_csv(path, table):
    """table: [(split, aid, rows, experts, critics)] -> split,campaign,rows,expert_0..,critic_0.. per line."""
    out = io.StringIO()
    writer = csv.writer(out)
    experts, critics = len(table[0][3]), len(table[0][4])
    writer.writerow(["split", "campaign", "rows"] + [f"expert_{i}" for i in range(experts)]
                    + [f"critic_{i}" for i in range(critics)])
    for split, aid, rows, e, c in table:
        writer.writerow([split, aid, rows] + [f"{v:.8f}" for v in list(e) + list(c)])
    write_text(path, out.getvalue())


def write_heatmap(path, table, title):
    """Experts and critics side by side, one row per campaign grouped by split; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    splits = [s for s in dict.fromkeys(row[0] for row in table)]
    figure, axes = plt.subplots(1, 2, figsize=(11, min(3 + 0.13 * len(table), 40)), squeeze=False,
                                gridspec_kw={"width_ratios": [len(table[0][3]), len(table[0][4])]})
    for ax, column, name in zip(axes[0], (3, 4), ("expert", "critic")):
        weights = np.array([row[column] for row in table])
        image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_xticks(range(weights.shape[1]), [str(i) for i in range(weights.shape[1])])
        ax.set_xlabel(f"{name} (gate weight, mean over the campaign's rows)")
        starts = [next(i for i, row in enumerate(table) if row[0] == s) for s in splits] + [len(table)]
        for edge in starts[1:-1]:
            ax.axhline(edge - 0.5, color="white", lw=2)
        ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, starts[1:])],
                      [f"{s} ({b - a})" for s, a, b in zip(splits, starts, starts[1:])])
        figure.colorbar(image, ax=ax, fraction=0.08)
    figure.suptitle(title)
    figure.tight_layout()
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))
    plt.close(figure)
    return True
