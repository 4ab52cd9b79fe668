"""Background users: a sample of the training data's users that travels with every checkpoint.

The trainer draws up to BACKGROUND_USERS distinct users (their uid and encoded
features) from the training rows and stores them as background.npz in each
checkpoint. They are users unrelated to any new campaign, which two things need:
- negatives for seeds that are all positive (tools/expand.py, and
  tools/infer_meta.py with runner.infer_seeds positive): NEGATIVES_PER_SEED of
  them per seed, never a positive seed and never a user of the pool being
  ranked, so the model is never told that the users it will rank are negatives;
- the reference users on which a campaign's wide part is put on the scale of
  the network's logit (dygraph_model.DygraphModel.campaign_net).
A file of users (a stage .npz with uid, or a raw userFeature.data) can replace
them (expand.py --background).
"""
import io

import numpy as np

from ..errors import DataError
from ..files import npz_bytes

BACKGROUND_FILE = "background.npz"
BACKGROUND_USERS = 100_000
NEGATIVES_PER_SEED = 19  # 5% positives, the share in the Tencent seed file (421,961 of 8,798,814 train.csv rows)
REFERENCE_USERS = 2_000
USER_ARRAYS = ("uid", "static", "dynamic", "lengths")


def sample(rows, seed, n=BACKGROUND_USERS):
    """Up to n distinct users of the rows (a stage's arrays), drawn uniformly, in ascending uid.

    Rows without uids count as distinct users, given uids -1, -2, ... (they match no real user)."""
    uids = np.asarray(rows["uid"], np.int64) if "uid" in rows else -1 - np.arange(len(rows["label"]), dtype=np.int64)
    _, first = np.unique(uids, return_index=True)
    rng = np.random.default_rng([seed, 7])
    picked = np.sort(rng.choice(first, min(n, len(first)), replace=False)) if len(first) else first
    users = {name: np.asarray(rows[name])[picked] for name in USER_ARRAYS[1:]}
    users["uid"] = uids[picked]
    order = np.argsort(users["uid"], kind="stable")
    return {name: a[order] for name, a in users.items()}


def to_bytes(users):
    return npz_bytes({name: users[name] for name in USER_ARRAYS})


def from_bytes(data, source):
    """The users of background.npz bytes (read without pickle), checked for their arrays and row counts."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            users = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as e:
        raise DataError(f"{source}: not a background file ({e}); retrain the checkpoint") from e
    missing = [name for name in USER_ARRAYS if name not in users]
    if missing or len({len(users[name]) for name in USER_ARRAYS}) != 1:
        raise DataError(f"{source}: needs the arrays {list(USER_ARRAYS)} with one row per user; retrain the checkpoint")
    return users


def rows_for(users, aid, ad, label=0):
    """Stage rows of these users for one campaign: its aid and ad ids on every row, label `label`."""
    n = len(users["uid"])
    return {**{name: users[name] for name in USER_ARRAYS}, "label": np.full(n, label, np.int8),
            "aid": np.full(n, aid, np.int32), "ad": np.tile(np.asarray(ad, np.int32), (n, 1))}


def with_negatives(seeds, users, ratio, exclude_uids, rng):
    """(rows, drawn): the positive seeds, then round(ratio x positives) users drawn uniformly without
    replacement as negatives (label 0) among those whose uid is neither a positive seed's nor in exclude_uids
    (all of them when fewer are left), and how many were drawn.

    Seeds labelled 0 are dropped and not excluded from the draw: what is simulated is an advertiser who
    holds the positive seeds only (tools/expand.py's case), who does not know the campaign's non-clickers."""
    positives = {name: a[np.asarray(seeds["label"]) == 1] for name, a in seeds.items()}
    n = len(positives["label"])
    if not n:
        return positives, 0
    allowed = np.flatnonzero(~np.isin(users["uid"], np.concatenate([positives["uid"], exclude_uids])))
    picked = np.sort(rng.choice(allowed, min(int(round(ratio * n)), len(allowed)), replace=False))
    drawn = rows_for({name: a[picked] for name, a in users.items()}, int(seeds["aid"][0]), seeds["ad"][0])
    return {name: np.concatenate([positives[name], drawn[name].astype(positives[name].dtype)])
            for name in positives}, len(picked)


def reference(users, rng, n=REFERENCE_USERS):
    """Up to n users drawn uniformly: the users a campaign's wide part is scaled on."""
    picked = np.sort(rng.choice(len(users["uid"]), min(n, len(users["uid"])), replace=False))
    return {name: a[picked] for name, a in users.items()}
