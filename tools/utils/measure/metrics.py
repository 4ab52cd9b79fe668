"""Exact look-alike metrics: AUC (scikit-learn, not bucketed), GAUC, P@5% and R@5%.

Per campaign: rows, positives, AUC, precision and recall among the top
k = floor(5% of its candidates) by score, as the official code's
int(0.05 * n) (equal to n // 20 for every n up to 2e7, checked), but at least
1: the official code divides by k = 0 for a campaign under 20 candidates.
Ties at the cut are broken by a stable sort on descending score: of equal
scores, the earlier row (in the order of the stage-2 file) ranks first (the
official code's np.argpartition breaks them arbitrarily).

Undefined values are NaN and never crash a run: AUC of a campaign whose
candidates are all one class (left out of GAUC, with a warning), recall of a
campaign without positives (left out of the mean recall). Pooled AUC is over
all scored rows of all campaigns; GAUC is the unweighted mean of the defined
per-campaign AUCs; P@5% and R@5% are unweighted means over campaigns.
"""
import math
import warnings

import numpy as np

TOP_PERCENT = 5


def top_k(n, percent=TOP_PERCENT):
    """max(1, floor(percent% of n)), in integer arithmetic."""
    return max(1, n * percent // 100)


def auc(labels, scores):
    """ROC AUC, or NaN when the labels are all one class."""
    from sklearn.metrics import roc_auc_score  # here, not at the top: importing it takes 1-4 s
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def campaign_metrics(labels, scores, percent=TOP_PERCENT):
    """{"rows", "positives", "auc", "precision", "recall"} of one campaign's candidates."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if len(labels) == 0 or labels.shape != scores.shape:
        raise ValueError(f"campaign_metrics: need as many scores as labels (> 0), got {labels.shape} and "
                         f"{scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("campaign_metrics: scores contain NaN or infinity; the model diverged "
                         "(lower the learning rates) or was loaded from a broken checkpoint")
    positives = int(labels.sum())
    k = top_k(len(labels), percent)
    hits = int(labels[np.argsort(-scores, kind="stable")[:k]].sum())
    return {"rows": len(labels), "positives": positives, "auc": auc(labels, scores),
            "precision": hits / k, "recall": hits / positives if positives else float("nan")}


def _mean_defined(values):
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def overall_metrics(campaigns, labels, scores):
    """Pooled and averaged metrics over campaign results (dicts of campaign_metrics plus "campaign").

    labels / scores: all scored rows of all campaigns, for the pooled AUC.
    """
    undefined = [c.get("campaign") for c in campaigns if math.isnan(c["auc"])]
    if undefined:
        warnings.warn(f"{len(undefined)} of {len(campaigns)} campaigns have candidates of one class only "
                      f"(AUC undefined), left out of GAUC: {undefined[:10]}", stacklevel=2)
    return {
        "campaigns": len(campaigns),
        "rows": sum(c["rows"] for c in campaigns),
        "positives": sum(c["positives"] for c in campaigns),
        "auc": auc(labels, scores),
        "gauc": _mean_defined([c["auc"] for c in campaigns]),
        "gauc_campaigns": len(campaigns) - len(undefined),
        "precision": _mean_defined([c["precision"] for c in campaigns]),
        "recall": _mean_defined([c["recall"] for c in campaigns]),
    }


def format_table(headers, rows):
    """Plain fixed-width text table; floats with 4 decimals, NaN as "-"."""
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4f}"
        return str(v)
    cells = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
