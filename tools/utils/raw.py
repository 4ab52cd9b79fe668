"""From the raw Tencent Look-alike files to our split folders (train, test_hot, test_cold).

Encoding, one vocabulary for all splits:
- label: 1 -> 1; -1 (and 0) -> 0.
- Lists keep their first 10 (interests) or 5 (kw, topic) values in file
  order; `lengths` counts the values kept (0 for a missing group).
- The ids of a field are the ranks of its raw values in the sorted set of the
  values that occur in it over the kept labelled rows (users' lists after
  truncation; ads of the campaigns with rows), with -1 (missing) always in the
  set. So missing values and list padding are id 0 in every field, and ids
  follow the numeric order of the raw values.
Split:
- campaigns = the sorted distinct aids of the kept rows; they are shuffled by
  np.random.default_rng(seed).permutation(len(campaigns)), and the first
  floor(len(campaigns) * train_fraction) of that order are training campaigns,
  the rest test campaigns.
- A test campaign is hot when its positives over both stages are more than
  hot_threshold, cold otherwise (at most hot_threshold positives, as the
  official preprocessing does).
- Rows keep their file order within each stage; `aid` stays the raw aid.
"""
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from . import dataset
from . import schema as S
from .dataset import DataError
from .raw_csv import read_ads, read_oracle, read_rows
from .raw_users import WORKER_STATE, fork_map, read_users

AD_FILE, USER_FILE, SEED_FILE, CANDIDATE_FILE, ORACLE_FILE = (
    "adFeature.csv", "userFeature.data", "train.csv", "test1_truth.csv", "oracle.csv")
SPLITS = (("train", "train"), ("test_hot", "test"), ("test_cold", "test"))  # folder, file prefix
DENSE_LIMIT = 1 << 26  # raw values below this are encoded through a lookup table (no sort)


@dataclass
class Summary:
    splits: dict = field(default_factory=dict)   # folder -> dict(campaigns, stage1, stage2, positives)
    max_idxs: dict = None
    lines: int = 0
    user_seconds: float = 0.0                    # time spent reading userFeature.data
    bad_lines: int = 0
    first_bad: str = ""
    dropped_rows: int = 0
    oracle: bool = False
    seconds: float = 0.0


def preprocess(raw_dir, out_dir, seed=2021, hot_threshold=2000, train_fraction=0.5,
               skip_bad_lines=False, force=False, workers=2, progress=True):
    """Read the raw files in raw_dir and write out_dir/{train,test_hot,test_cold}; returns a Summary.

    Nothing is left half-written: the folders are built in a temporary folder
    beside out_dir and moved into place at the end. A non-empty out_dir is
    refused unless force.
    """
    started = time.time()
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction is {train_fraction}; it must be between 0 and 1 (exclusive)")
    if hot_threshold < 0:
        raise ValueError(f"hot_threshold is {hot_threshold}; it must be a non-negative number of positives")
    paths = {name: os.path.join(raw_dir, name) for name in (AD_FILE, USER_FILE, SEED_FILE, CANDIDATE_FILE)}
    for path in paths.values():
        if not os.path.isfile(path):
            raise DataError(f"{path}: not found; --raw must be the folder holding {AD_FILE}, {USER_FILE}, "
                            f"{SEED_FILE} and {CANDIDATE_FILE} ({ORACLE_FILE} optional)")
    check_out_dir(out_dir, force)
    summary = Summary()
    ad_aids, ad_raw, stages = read_labelled(paths)
    oracle_file = os.path.join(raw_dir, ORACLE_FILE)
    if os.path.isfile(oracle_file):
        for stage, prob in zip(stages, read_oracle(oracle_file, stages)):
            stage["oracle"] = prob
        summary.oracle = True

    uids = np.unique(np.concatenate([s["uid"] for s in stages]))
    user_started = time.time()
    users = read_users(paths[USER_FILE], uids, workers, skip_bad_lines, progress)
    summary.user_seconds = time.time() - user_started
    summary.lines, summary.bad_lines, summary.first_bad = users.lines, users.bad_lines, users.first_bad
    for i, name in enumerate((SEED_FILE, CANDIDATE_FILE)):
        stages[i]["user"] = np.searchsorted(uids, stages[i]["uid"])
        stages[i], dropped = drop_missing_users(paths[name], stages[i], users.found, paths[USER_FILE],
                                                skip_bad_lines)
        summary.dropped_rows += dropped

    campaigns = np.unique(np.concatenate([s["aid"] for s in stages]))
    ads = ad_raw[np.searchsorted(ad_aids, campaigns)]  # the ads of the campaigns with rows
    summary.max_idxs = encode_tables(users, ads)
    split_aids = split_campaigns(stages, campaigns, seed, train_fraction, hot_threshold)
    summary.splits = write_splits(out_dir, force, stages, split_aids, users, campaigns, ads, summary.max_idxs,
                                  workers, progress)
    summary.seconds = time.time() - started
    return summary


def read_labelled(paths):
    """(sorted aids of adFeature.csv, their raw ad fields, [stage-1 rows, stage-2 rows])."""
    ad_aids, ad_raw = read_ads(paths[AD_FILE], S.AD_FIELDS)
    stages = [read_rows(paths[SEED_FILE], "required"), read_rows(paths[CANDIDATE_FILE], "optional")]
    if not len(stages[0]["aid"]):
        raise DataError(f"{paths[SEED_FILE]}: no rows; the seeds of every campaign are needed")
    for stage, name in zip(stages, (SEED_FILE, CANDIDATE_FILE)):
        check_known_aids(paths[name], stage, ad_aids, paths[AD_FILE])
    return ad_aids, ad_raw, stages


def encode_tables(users, ads):
    """Label-encode the user tables and the ad rows in place; returns max_idxs for schema.json."""
    return {"static": [encode_ids(users.static[:, j]) for j in range(len(S.STATIC_FIELDS))],
            "dynamic": [encode_ids(users.dynamic[:, lo:hi])
                        for lo, hi in zip(S.DYNAMIC_OFFSETS[:-1], S.DYNAMIC_OFFSETS[1:])],
            "ad": [encode_ids(ads[:, j]) for j in range(len(S.AD_FIELDS))]}


def check_out_dir(out_dir, force):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: exists and is not a folder; choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise DataError(f"{out_dir}: not empty; choose another --out, or pass --force to replace it")


def check_known_aids(path, stage, ad_aids, ad_path):
    pos = np.minimum(np.searchsorted(ad_aids, stage["aid"]), len(ad_aids) - 1)
    unknown = ad_aids[pos] != stage["aid"]
    if unknown.any():
        i = int(np.argmax(unknown))
        raise DataError(f"{path} line {stage['line'][i]}: aid {stage['aid'][i]} is not in {ad_path}; "
                        "every campaign needs its row in adFeature.csv")


def drop_missing_users(path, stage, found, user_path, skip_bad_lines):
    """The stage without the rows whose user has no (good) line in userFeature.data, and their count."""
    missing = ~found[stage["user"]]
    if not missing.any():
        return stage, 0
    if not skip_bad_lines:
        i = int(np.argmax(missing))
        raise DataError(f"{path} line {stage['line'][i]}: uid {stage['uid'][i]} does not appear in "
                        f"{user_path}; add the user's line, or rerun with --skip-bad-lines to drop such rows")
    keep = ~missing
    return {name: a[keep] for name, a in stage.items()}, int(missing.sum())


def encode_ids(block, dense_limit=DENSE_LIMIT):
    """Replace the raw values of block (ints >= -1) in place by their rank in
    sorted(set(block) | {-1}); returns the largest id.

    A lookup table indexed by value is O(n) (the Tencent values are below 10^6);
    np.unique (a sort) is the fallback for larger raw values.
    """
    top = int(block.max(initial=-1))
    if top < dense_limit:
        present = np.zeros(top + 2, bool)
        present[0] = True
        present[block.ravel() + 1] = True
        rank = np.cumsum(present, dtype=np.int32) - 1
        block[...] = rank[block + 1]
        return int(rank[-1])
    values, inverse = np.unique(np.append(block.ravel(), -1), return_inverse=True)
    block[...] = inverse[:-1].reshape(block.shape)
    return len(values) - 1


def split_campaigns(stages, campaigns, seed, train_fraction, hot_threshold):
    """{split folder: sorted aids}, as the module docstring says."""
    order = np.random.default_rng(seed).permutation(len(campaigns))
    n_train = int(len(campaigns) * train_fraction)
    train, test = np.sort(campaigns[order[:n_train]]), np.sort(campaigns[order[n_train:]])
    aid = np.concatenate([s["aid"] for s in stages])
    label = np.concatenate([s["label"] for s in stages])
    is_test = np.isin(aid, test)
    positives = np.bincount(np.searchsorted(test, aid[is_test]), weights=label[is_test], minlength=len(test))
    return {"train": train, "test_hot": test[positives > hot_threshold], "test_cold": test[positives <= hot_threshold]}


def write_splits(out_dir, force, stages, split_aids, users, campaigns, ads, max_idxs, workers, progress):
    """Write every split folder into a temporary folder, then move it to out_dir.

    Stage files are written by `workers` forked processes, largest first:
    deflating them is the slowest step after parsing. Returns the counts per split.
    """
    out_dir = os.path.normpath(out_dir)
    tmp = f"{out_dir}.tmp{os.getpid()}"
    counts, jobs = {}, []
    for folder, prefix in SPLITS:
        counts[folder] = dict(campaigns=len(split_aids[folder]), positives=0)
        for k, stage in enumerate(stages):
            rows = np.flatnonzero(np.isin(stage["aid"], split_aids[folder]))
            counts[folder][f"stage{k + 1}"] = len(rows)
            counts[folder]["positives"] += int(stage["label"][rows].sum())
            if len(rows) or folder != "train" or k == 0:  # train_stage2 only when there are such rows
                jobs.append((os.path.join(tmp, folder, f"{prefix}_stage{k + 1}.npz"), k, rows))
    jobs.sort(key=lambda job: -len(job[2]))
    state = dict(stages=stages, users=users, campaigns=campaigns, ads=ads)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for folder, _ in SPLITS:
            os.makedirs(os.path.join(tmp, folder))
            dataset.write_schema(os.path.join(tmp, folder), max_idxs)
        with tqdm(total=sum(len(job[2]) for job in jobs), unit=" rows", desc="writing", disable=not progress,
                  leave=False) as bar, fork_map(write_stage_file, jobs, workers, state) as written:
            for n_rows in written:
                bar.update(n_rows)
        check_out_dir(out_dir, force)
        if os.path.isdir(out_dir):
            old = f"{out_dir}.old{os.getpid()}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def write_stage_file(job):
    """Write one stage file (and its oracle) from the rows of stage k; returns the row count."""
    path, k, rows = job
    stage = WORKER_STATE["stages"][k]
    arrays = stage_arrays(stage, rows, WORKER_STATE["users"], WORKER_STATE["campaigns"], WORKER_STATE["ads"])
    dataset.save_stage(path, arrays)
    if "oracle" in stage:
        dataset.atomic_write(dataset.oracle_path(path),
                             lambda f: np.save(f, stage["oracle"][rows], allow_pickle=False))
    return len(rows)


def stage_arrays(stage, rows, users, campaigns, ads):
    """The arrays of one stage file (dataset.save_stage) for the given rows."""
    user = stage["user"][rows]
    aid = stage["aid"][rows]
    return {"label": stage["label"][rows], "aid": aid, "uid": stage["uid"][rows],
            "static": users.static[user], "dynamic": users.dynamic[user],
            "lengths": users.lengths[user].astype(np.int32),
            "ad": ads[np.searchsorted(campaigns, aid)]}
