"""Expanding one campaign: its seeds in, the pool's users ranked by how much they resemble them out.

The inputs, in either of two formats:
- the campaign (a folder): a data-folder stage (schema.json, vocabulary.npz
  and one *_stage1.npz holding the seed rows of one aid), or the raw format
  (adFeature.csv with the campaign's row, train.csv with its aid,uid,label
  seed rows, userFeature.data with the seeds' users);
- the pool: a stage file (.npz with uid, beside its schema.json) or a raw
  userFeature.data. Either is read in chunks: memory holds the model, one
  chunk, the running top K and 12 bytes per pool user (its uid, to find
  repeats, and its score).
Raw inputs are encoded with the checkpoint's vocabulary; an id never seen in
training becomes the missing id and is counted (a new advertiser or campaign
is the normal case). Encoded inputs must carry the checkpoint's vocabulary
(schema.json's digest).

Seeds that are all positive get negatives from background users, never a user of the pool
(tools/utils/data/background.py).
Fine-tuning is meta-inference's (tools/utils/run/campaign.py), and so is the
seeding: everything random about the campaign is seeded with (seed, aid).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..run import campaign
from ..data import dataset
from ..data import raw_csv, raw_users
from ..data.schema import AD_FIELDS
from ..data import vocabulary
from ..errors import DataError
from ..progress import progress

POOL_ROWS = 65536
HISTOGRAM_BINS = 50
NEGATIVES_RULE = ("when the seeds hold no negatives, R x (number of seeds) background users are drawn uniformly "
                  "at random, without replacement, among those that are neither seeds nor users of the pool, and "
                  "fine-tuned on as negatives (label 0); R is --negatives")


@dataclass
class Campaign:
    aid: int
    ad: np.ndarray                      # [6] encoded ad ids
    seeds: dict                         # stage arrays of the seed rows, encoded
    unknown: vocabulary.UnknownIds = field(default_factory=vocabulary.UnknownIds)


# ---------------------------------------------------------------- the campaign
def read_campaign(folder, schema, vocab, aid=None):
    """The campaign of `folder`, in either format (see the module docstring); `aid` picks one among several."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such campaign folder; give a data-folder stage (schema.json + "
                        "*_stage1.npz) or raw files (adFeature.csv, train.csv, userFeature.data)")
    if os.path.isfile(os.path.join(folder, dataset.SCHEMA_FILE)):
        return _encoded_campaign(folder, schema, aid)
    if os.path.isfile(os.path.join(folder, "adFeature.csv")):
        return _raw_campaign(folder, vocab, aid)
    raise DataError(f"{folder}: neither schema.json (a data-folder stage) nor adFeature.csv (raw files); "
                    "give one of the two formats")


def _one_campaign(aids, source, aid=None):
    """The campaign's aid (the one of all rows, or `aid`) and which rows are its."""
    campaigns = np.unique(aids)
    if aid is not None:
        if aid not in campaigns:
            raise DataError(f"{source}: no seed rows of aid {aid} (it holds {len(campaigns)} campaigns: "
                            f"{', '.join(map(str, campaigns[:5]))}{', ...' if len(campaigns) > 5 else ''}); "
                            "check --aid")
        return aid, np.asarray(aids) == aid
    if len(campaigns) == 0:
        raise DataError(f"{source}: no seed rows; a campaign needs seeds to expand from")
    if len(campaigns) > 1:
        raise DataError(f"{source}: rows of {len(campaigns)} campaigns ({', '.join(map(str, campaigns[:5]))}); "
                        "pick one with --aid, or give the seeds of one campaign")
    return int(campaigns[0]), np.ones(len(aids), bool)


def _check_seed_uids(uids, source):
    values, counts = np.unique(uids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{source}: uid {values[np.argmax(counts > 1)]} is listed {counts.max()} times; "
                        "list each seed once")


def _encoded_campaign(folder, schema, aid):
    split = dataset.load_split(folder, stages=(1,))
    dataset.require_vocabulary(split["schema"], schema, folder, "the checkpoint")
    source = dataset.stage_path(folder, 1)
    aid, mine = _one_campaign(split["stage1"]["aid"], source, aid)
    seeds = dataset.take(split["stage1"], np.flatnonzero(mine))
    if "uid" not in seeds:
        raise DataError(f"{source}: no 'uid' array; seeds need their uids (to keep them out of the ranking)")
    _check_seed_uids(seeds["uid"], source)
    return Campaign(aid, seeds["ad"][0].astype(np.int32), seeds)


def _raw_campaign(folder, vocab, aid):
    if vocab is None:
        raise DataError(f"{folder}: raw seed files, but the checkpoint carries no vocabulary (its training data "
                        "came without raw-id maps): preprocess the raw training files with tools/preprocess.py")
    paths = {name: os.path.join(folder, name) for name in ("adFeature.csv", "train.csv", "userFeature.data")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise DataError(f"{path}: not found; a raw campaign folder holds adFeature.csv (the campaign's row), "
                            "train.csv (aid,uid,label: its seeds) and userFeature.data (the seeds' users)")
    rows = raw_csv.read_rows(paths["train.csv"], "required")
    aid, mine = _one_campaign(rows["aid"], paths["train.csv"], aid)
    rows = {k: np.asarray(v)[mine] for k, v in rows.items()}
    _check_seed_uids(rows["uid"], paths["train.csv"])
    aids, ads = raw_csv.read_ads(paths["adFeature.csv"], AD_FIELDS)
    at = np.searchsorted(aids, aid)
    if at == len(aids) or aids[at] != aid:
        raise DataError(f"{paths['adFeature.csv']}: no row for aid {aid} (the aid of train.csv's seeds); "
                        "add the campaign's ad features")
    result = Campaign(aid, np.zeros(len(AD_FIELDS), np.int32), {})
    result.ad = vocabulary.encode_ad(ads[at], vocab, result.unknown)
    uids = np.sort(rows["uid"])
    users = raw_users.read_users(paths["userFeature.data"], uids, workers=1, progress=False)
    if not users.found.all():
        missing = uids[~users.found]
        raise DataError(f"{paths['userFeature.data']}: no line for {len(missing)} of the {len(uids)} seeds "
                        f"(uid {missing[0]}, ...); add their lines, or remove them from train.csv")
    static, dynamic = vocabulary.encode_users(users.static, users.dynamic, vocab, result.unknown)
    user = np.searchsorted(uids, rows["uid"])  # the seeds in train.csv's order, as preprocess keeps them
    result.seeds = _rows(rows["uid"], static[user], dynamic[user], users.lengths[user].astype(np.int32), result.ad,
                         aid, rows["label"])
    return result


def _rows(uids, static, dynamic, lengths, ad, aid, label):
    return {"label": np.asarray(label, np.int8), "aid": np.full(len(uids), aid, np.int32), "static": static,
            "dynamic": dynamic, "lengths": lengths, "ad": np.tile(np.asarray(ad, np.int32), (len(uids), 1)),
            "uid": np.asarray(uids, np.int64)}


# ---------------------------------------------------------------- the pool
def pool_chunks(path, schema, vocab, unknown, rows=POOL_ROWS):
    """The pool's users in file order, chunk by chunk: dicts of uid, static, dynamic, lengths (encoded)."""
    if path.endswith(".npz"):
        folder = os.path.dirname(os.path.abspath(path))
        pool_schema = dataset.read_schema(folder)
        dataset.require_vocabulary(pool_schema, schema, folder, "the checkpoint")
        for chunk in dataset.iter_stage(path, pool_schema, rows):
            if "uid" not in chunk:
                raise DataError(f"{path}: no 'uid' array; a pool needs its users' uids to rank them")
            yield {k: chunk[k] for k in ("uid", "static", "dynamic", "lengths")}
        return
    if vocab is None:
        raise DataError(f"{path}: a raw pool, but the checkpoint carries no vocabulary to encode it with "
                        "(its training data came without raw-id maps): preprocess raw training files")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such pool file; give a stage .npz (with uid) or a userFeature.data file")
    for uids, static, dynamic, lengths in raw_users.iter_users(path):
        static, dynamic = vocabulary.encode_users(static, dynamic, vocab, unknown)
        for start in range(0, len(uids), rows):
            part = slice(start, start + rows)
            yield {"uid": uids[part], "static": static[part], "dynamic": dynamic[part],
                   "lengths": lengths[part].astype(np.int32)}


# ---------------------------------------------------------------- uids and background users
def pool_uids(path):
    """Every uid of the pool, read cheaply: the uid member of a stage file, or the first group of each line of a
    userFeature.data (a scan of the text, no parsing of the rest)."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            if "uid" not in archive.files:
                raise DataError(f"{path}: no 'uid' array; a pool needs its users' uids to rank them")
            return np.asarray(archive["uid"], np.int64)
    found = []
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24) + f.readline(), b""):
            found.append(raw_users.uids_of(block))
    return np.concatenate(found) if found else np.empty(0, np.int64)


def read_users(path, schema, vocab, limit, unknown):
    """Up to `limit` distinct users of a pool-format file (stage .npz with uid, or userFeature.data), the first
    ones: a stage file holds a user once per campaign, and a user drawn twice would be two negatives."""
    parts, seen, n = [], np.empty(0, np.int64), 0
    for chunk in pool_chunks(path, schema, vocab, unknown):
        _, first = np.unique(chunk["uid"], return_index=True)
        new = np.sort(first[~np.isin(chunk["uid"][first], seen)])[:limit - n]
        parts.append({k: v[new] for k, v in chunk.items()})
        seen = np.concatenate([seen, chunk["uid"][new]])
        n += len(new)
        if n >= limit:
            break
    if not n:
        raise DataError(f"{path}: no users; --background needs a file of users to draw negatives from")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------- scoring
class TopK:
    """The k best (score, pool position) seen so far; ties go to the earlier position."""

    def __init__(self, k):
        self.k, self.scores, self.positions = k, np.empty(0, np.float32), np.empty(0, np.int64)

    def add(self, scores, positions):
        scores = np.concatenate([self.scores, scores])
        positions = np.concatenate([self.positions, positions])
        best = np.lexsort((positions, -scores))[:self.k]
        self.scores, self.positions = scores[best], positions[best]


def score_pool(model, net, camp, pool, schema, vocab, config, batches, k, keep_seeds, unknown, all_scores=False):
    """Score every pool user for the campaign; returns (top K [(uid, score)], every score or None, pool users,
    the histogram of the scores: {"edges": HISTOGRAM_BINS + 1 edges over [0, 1], "counts"})."""
    top, uids, scores = TopK(k), [], []
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    hist = np.zeros(HISTOGRAM_BINS, np.int64)
    seed_uids = np.sort(camp.seeds["uid"])
    first = 0
    bar = progress(total=None, desc="scoring the pool", unit="user", unit_scale=True)
    for chunk in pool_chunks(pool, schema, vocab, unknown):
        n = len(chunk["uid"])
        rows = _rows(chunk["uid"], chunk["static"], chunk["dynamic"], chunk["lengths"], camp.ad, camp.aid,
                     np.zeros(n))
        s = campaign.score(model, net, rows, config, batches)
        ranked = np.ones(n, bool) if keep_seeds else ~np.isin(chunk["uid"], seed_uids)
        top.add(s[ranked], first + np.flatnonzero(ranked))
        hist += np.histogram(np.clip(s, 0.0, 1.0), edges)[0]
        uids.append(chunk["uid"])
        if all_scores:
            scores.append(s)
        first += n
        bar.update(n)
    bar.close()
    uids = np.concatenate(uids) if uids else np.empty(0, np.int64)
    if not len(uids):
        raise DataError(f"{pool}: the pool is empty; nothing to rank")
    values, counts = np.unique(uids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{pool}: uid {values[np.argmax(counts > 1)]} appears {counts.max()} times; a pool lists "
                        "each user once")
    ranked = list(zip(uids[top.positions].tolist(), top.scores.tolist()))
    histogram = {"edges": edges.round(6).tolist(), "counts": hist.tolist()}
    return ranked, (np.concatenate(scores) if all_scores else None), len(uids), histogram
