"""How good an expansion is likely to be, estimated from the seeds themselves (tools/expand.py).

The positive seeds are split into FOLDS folds (the negatives, true or drawn,
are split alike); for each fold the model is adapted exactly as for the
expansion, on the other folds, and scores the held-out positive seeds and
REFERENCE_USERS background users that were no negative of that fit. Two
numbers per fold, reported as mean, standard deviation and values:
- auc: the share of (held-out seed, background user) pairs the model ranks the
  right way round: 0.5 is chance, 1 every held-out seed above every
  background user;
- lift_at_5: the share of held-out seeds scored above the top 5% of the
  background users, divided by 5%: 1 is chance, 20 the most there is.
With true negatives among the seeds, auc_vs_negatives compares the held-out
positives with the held-out negatives, as meta-inference's AUC does. These
are estimates for users like the seeds against users like the background; the
pool's own mix of users is not known to them.
"""
import numpy as np

from ..run import campaign
from ..measure import metrics
from ..data import background

FOLDS = 5
TOP_PERCENT = 5


def _summary(values):
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def unavailable(rows, users, folds=FOLDS):
    """Why no estimate can be made of the adaptation to `rows` with these background users, or None."""
    labels = np.asarray(rows["label"])
    if folds < 2:
        return f"--folds {folds}"
    if (labels == 1).sum() < 2:
        return "it needs 2 or more positive seeds"
    if not (labels == 0).any():
        return "it needs negatives among the seeds, true or drawn"
    if users is None:
        return "the checkpoint holds no background users (retrain it, or give --background FILE)"
    if np.isin(users["uid"], rows["uid"]).all():
        return ("every background user is a seed or a drawn negative, so none is left to compare the held-out "
                "seeds with: give --background FILE with other users")
    return None


def estimate(model, net, params, rows, config, aid, batches, users, rng, true_negatives, folds=FOLDS):
    """{"folds", "auc", "lift_at_5", "auc_vs_negatives"} of the adaptation to `rows` (seeds with labels, drawn
    negatives included; true_negatives: the negatives are the campaign's own); call it only where
    unavailable() says None. Leaves net as the last fold's fit: the caller adapts again for the expansion
    itself."""
    labels = np.asarray(rows["label"])
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    folds = min(folds, len(pos))
    fold_of = np.empty(len(labels), np.int64)
    fold_of[rng.permutation(pos)] = np.arange(len(pos)) % folds
    fold_of[rng.permutation(neg)] = np.arange(len(neg)) % folds
    used = np.asarray(rows["uid"])
    others = {k: v[~np.isin(users["uid"], used)] for k, v in users.items()}
    reference = background.rows_for(background.reference(others, rng), aid, rows["ad"][0])
    aucs, lifts, vs_negatives = [], [], []
    for f in range(folds):
        train = {k: v[fold_of != f] for k, v in rows.items()}
        held = {k: v[fold_of == f] for k, v in rows.items()}
        scorer = campaign.adapt(model, net, params, train, config, aid, batches, users)
        held_scores = campaign.score(model, scorer, held, config, batches)
        ref_scores = campaign.score(model, scorer, reference, config, batches)
        positive = held_scores[held["label"] == 1]
        both = np.concatenate([positive, ref_scores])
        aucs.append(metrics.auc(np.r_[np.ones(len(positive)), np.zeros(len(ref_scores))], both))
        cut = np.quantile(ref_scores, 1 - TOP_PERCENT / 100)
        lifts.append(float((positive > cut).mean()) / (TOP_PERCENT / 100))
        vs_negatives.append(metrics.auc(held["label"], held_scores) if true_negatives else np.nan)
    return {"folds": folds, "reference_users": len(reference["uid"]), "auc": _summary(aucs),
            "lift_at_5": _summary(lifts), "auc_vs_negatives": _summary(vs_negatives)}
