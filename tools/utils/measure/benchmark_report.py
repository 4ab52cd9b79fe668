"""What tools/benchmark.py writes: the tables (results.md), results.csv and the chart (gauc.png).

The headline is what an advertiser gets, the ranking of their own campaign's
candidates: the mean per-campaign AUC (GAUC) and P@5%, cold and hot. The pooled
AUC of the paper's tables (all candidates of a split ranked together, so it also
rewards knowing which campaigns click more) stands beside them.
"""
import csv
import io
import math

import numpy as np

from .charts import pyplot
from ..files import write_text

SPLITS = (("cold", "test_cold"), ("hot", "test_hot"))
METRICS = (("gauc", "GAUC"), ("precision", "P@5%"), ("auc", "pooled AUC"), ("recall", "R@5%"))
TABLE = (("cold", "gauc"), ("cold", "precision"), ("hot", "gauc"), ("hot", "precision"), ("cold", "auc"),
         ("hot", "auc"))  # the columns of a table, in order
PROTOCOL_TITLES = {
    "labelled": "labelled seeds: each test campaign adapted to its stage-1 rows, clicks and non-clicks "
                "(the paper's protocol, tools/infer_meta.py)",
    "positive": "positive seeds only: each test campaign adapted to its clicking seeds and 19 background users "
                "per seed as negatives (tools/expand.py's protocol, runner.infer_seeds positive)",
}


def cell(stat):
    if stat["mean"] is None or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4f}" + ("" if stat["std"] is None else f" ± {stat['std']:.4f}")


def quick_note(extra, seeds, epochs):
    """What a --quick table and chart say about themselves: a smoke test, with the embedding width it ran at."""
    widths = [item.partition("=")[2] for item in extra if item.partition("=")[0] == "hyper_parameters.embed_dim"]
    dim = widths[-1] if widths else "as configured"
    return (f"SMOKE TEST (--quick): embed_dim {dim}, {seeds} seeds, {epochs} epoch(s); it checks that the methods run, "
            "its numbers are not results (docs/results.md has those)")


def markdown_table(report, protocol):
    names = dict(METRICS)
    head = ["Method"] + [f"{short} {names[key]}" for short, key in TABLE] + ["train s", "test s"]
    lines = ([f"**{report['note']}**", ""] if report.get("note") else []) + \
        [f"*{PROTOCOL_TITLES[protocol]}*", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in report["methods"]:
        s = m["summary"]
        lines.append("| " + " | ".join([m["label"]] + [cell(s[protocol][short][key]) for short, key in TABLE]
                                       + [f"{s['train_seconds']:.0f}", f"{s['test_seconds']:.0f}"]) + " |")
    if report["oracle"]:
        lines.append("| Oracle (the generator's true probabilities) | " + " | ".join(
            cell({"mean": report["oracle"][short][key], "std": None}) for short, key in TABLE) + " | - | - |")
    return "\n".join(lines)


def write_markdown(path, report):
    seeds = report["seeds"]
    data = report["data_summary"]
    lines = [
        "# Look-alike benchmark", "",
        f"Command: `{report['command']}`", "",
        f"Data: `{report['data']}`: " + "; ".join(
            f"{split} {v['stage1']['campaigns']} campaigns, {v['stage1']['rows']} stage-1 rows"
            + (f", {v['stage2']['rows']} stage-2 rows" if "stage2" in v else "") for split, v in data.items()) + ".",
        f"Seeds: {', '.join(map(str, seeds))}; epochs (methods trained across campaigns): {report['epochs']}; "
        f"threads per run: {report['threads']}; parallel runs: {report['jobs']}.", "",
        "Each cell: mean ± sample standard deviation (ddof 1) over the seeds. GAUC: the mean over campaigns of "
        "the AUC of each campaign's candidates; P@5%: per campaign, the share of clicks among its top 5% "
        "candidates by score, averaged; pooled AUC: every candidate of a split ranked together (the paper's "
        "AUC). Wall times: mean seconds per run (train, then adapt and score both splits under each protocol).",
        "",
        "\n\n".join(markdown_table(report, protocol) for protocol in report["protocols"]), "",
        "Fine-tuning on each test campaign's seeds (Adam, from the checkpoint): " + "; ".join(
            f"{p} passes, lr {lr:g}, batch {b}: " + ", ".join(m["label"] for m in report["methods"]
                                                          if tuple(m["fine_tune"].values()) == (p, lr, b))
            for p, lr, b in dict.fromkeys(tuple(m["fine_tune"].values()) for m in report["methods"]))
        + " (the look-alike baselines fit their own rule instead).", "",
        f"Sum of the runs' wall times: {report['run_seconds']:.0f} s; this invocation: "
        f"{report['total_seconds']:.0f} s ({report['reused']} finished runs reused). Pinterest (KDD'19) and "
        "Hubble (KDD'20) need systems outside this project and are not run.",
    ]
    write_text(path, "\n".join(lines) + "\n")


def write_csv(path, report):
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["method", "label", "protocol", "split", "metric", "mean", "std", "seeds"])
    for m in report["methods"]:
        for protocol in report["protocols"]:
            for short, _ in SPLITS:
                for key, _ in METRICS:
                    stat = m["summary"][protocol][short][key]
                    writer.writerow([m["name"], m["label"], protocol, short, key, stat["mean"], stat["std"],
                                     len(stat["values"])])
    for short, _ in SPLITS:
        for key, _ in METRICS:
            if report["oracle"]:
                writer.writerow(["oracle", "Oracle", "", short, key, report["oracle"][short][key], "", ""])
    write_text(path, table.getvalue())


def write_chart(path, report):
    """gauc.png: GAUC per method (mean, std as error bar), one panel per protocol and split; False without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    methods, protocols = report["methods"], report["protocols"]
    fig, axes = plt.subplots(len(protocols), 2, figsize=(12, len(protocols) * (0.4 * len(methods) + 1.6)),
                             sharey=True, squeeze=False)
    y = np.arange(len(methods))
    for row, protocol in zip(axes, protocols):
        for ax, (short, _) in zip(row, SPLITS):
            stats = [m["summary"][protocol][short]["gauc"] for m in methods]
            ax.barh(y, [s["mean"] for s in stats], xerr=[s["std"] or 0.0 for s in stats], color="tab:blue",
                    alpha=0.8)
            right = max(s["mean"] for s in stats) + 0.05
            if report["oracle"]:
                ax.axvline(report["oracle"][short]["gauc"], color="tab:red", linestyle="--", label="oracle")
                ax.legend(loc="lower right")
                right = max(right, report["oracle"][short]["gauc"] + 0.02)
            ax.axvline(0.5, color="grey", linewidth=0.8)
            ax.set_xlim(0.45, min(1.0, max(0.8, right)))
            ax.set_title(f"GAUC, {short} campaigns, {protocol} seeds", fontsize=10)
        row[0].set_yticks(y, [m["label"] for m in methods])
        row[0].invert_yaxis()
    if report.get("note"):
        fig.suptitle(report["note"], color="tab:red", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Description": report.get("note") or "look-alike benchmark: GAUC"})
    plt.close(fig)
    return True
