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
- Every test campaign split needs candidates: test1_truth.csv must have rows,
  and each non-empty test split some of them.
Output: only the split folders are written. They are built in a hidden
staging folder inside out_dir and swapped in at the end (replace_folders), so
a failed run leaves out_dir as it was, and --force replaces train, test_hot
and test_cold but no other file or folder of out_dir. The raw folder may not
lie inside out_dir, nor out_dir inside it.
"""
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import dataset, vocabulary
from . import schema
from .dataset import DataError
from .raw_csv import read_ads, read_oracle, read_rows
from ..files import drop_staging, inside, make_staging, replace_folders, staging_folder
from ..progress import progress as progress_bar
from .raw_users import fork_map, read_users

AD_FILE, USER_FILE, SEED_FILE, CANDIDATE_FILE, ORACLE_FILE = (
    "adFeature.csv", "userFeature.data", "train.csv", "test1_truth.csv", "oracle.csv")
SPLITS = (("train", "train"), ("test_hot", "test"), ("test_cold", "test"))  # folder, file prefix
DENSE_LIMIT = 1 << 26  # raw values below this are encoded through a lookup table (no sort)
STAGING = ".preprocess.tmp"   # + pid: the staging folder inside out_dir


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

    Nothing is left half-written and nothing else is touched: the split folders
    are built in a staging folder inside out_dir and swapped in at the end. A
    non-empty out_dir is refused unless force, which replaces only the three
    split folders.
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
    check_apart(raw_dir, "--raw", out_dir)
    check_out_dir(out_dir, force)
    summary = Summary()
    try:
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
    except OSError as e:  # a raw file that cannot be read (permissions, a disk error)
        raise DataError(f"{e.filename or raw_dir}: cannot be read ({e.strerror or e}); check the file and "
                        "its permissions") from e
    summary.lines, summary.bad_lines, summary.first_bad = users.lines, users.bad_lines, users.first_bad
    for i, name in enumerate((SEED_FILE, CANDIDATE_FILE)):
        stages[i]["user"] = np.searchsorted(uids, stages[i]["uid"])
        stages[i], dropped = drop_missing_users(paths[name], stages[i], users.found, paths[USER_FILE],
                                                skip_bad_lines)
        summary.dropped_rows += dropped
        if not len(stages[i]["aid"]):
            raise DataError(f"{paths[name]}: no rows left once the rows whose user has no good line in "
                            f"{paths[USER_FILE]} are dropped; fix those lines (rerun without --skip-bad-lines "
                            "to see the first)")

    campaigns = np.unique(np.concatenate([s["aid"] for s in stages]))
    ads = ad_raw[np.searchsorted(ad_aids, campaigns)]  # the ads of the campaigns with rows
    summary.max_idxs, vocab = encode_tables(users, ads)
    split_aids = split_campaigns(stages, campaigns, seed, train_fraction, hot_threshold)
    check_candidates(paths[CANDIDATE_FILE], stages[1], split_aids)
    summary.splits = write_splits(out_dir, force, stages, split_aids, users, campaigns, ads, summary.max_idxs,
                                  vocab, workers, progress)
    summary.seconds = time.time() - started
    return summary


def read_labelled(paths):
    """(sorted aids of adFeature.csv, their raw ad fields, [stage-1 rows, stage-2 rows])."""
    ad_aids, ad_raw = read_ads(paths[AD_FILE], schema.AD_FIELDS)
    stages = [read_rows(paths[SEED_FILE], "required"), read_rows(paths[CANDIDATE_FILE], "optional")]
    if not len(stages[0]["aid"]):
        raise DataError(f"{paths[SEED_FILE]}: no rows; the seeds of every campaign are needed")
    if not len(stages[1]["aid"]):
        raise DataError(f"{paths[CANDIDATE_FILE]}: no rows; a test split needs candidates to score: the file "
                        "must hold the aid,uid,label rows of the campaigns' candidates")
    for stage, name in zip(stages, (SEED_FILE, CANDIDATE_FILE)):
        check_known_aids(paths[name], stage, ad_aids, paths[AD_FILE])
    return ad_aids, ad_raw, stages


def encode_tables(users, ads):
    """Label-encode the user tables and the ad rows in place; returns (max_idxs for schema.json,
    the vocabulary {field: sorted raw values} for vocabulary.npz)."""
    blocks = {"static": [users.static[:, j] for j in range(len(schema.STATIC_FIELDS))],
              "dynamic": [users.dynamic[:, lo:hi]
                          for lo, hi in zip(schema.DYNAMIC_OFFSETS[:-1], schema.DYNAMIC_OFFSETS[1:])],
              "ad": [ads[:, j] for j in range(len(schema.AD_FIELDS))]}
    vocab = {field: encode_ids(block) for group in schema.GROUPS for field, block in zip(schema.GROUP_FIELDS[group],
                                                                                    blocks[group])}
    max_idxs = {group: [len(vocab[field]) - 1 for field in schema.GROUP_FIELDS[group]] for group in schema.GROUPS}
    return max_idxs, vocab


def check_candidates(path, candidates, split_aids):
    """Refuse a test split with campaigns but no stage-2 rows: its campaigns could not be scored."""
    for folder, _ in SPLITS[1:]:
        aids = split_aids[folder]
        if len(aids) and not np.isin(candidates["aid"], aids).any():
            shown = ", ".join(map(str, aids[:5])) + (", ..." if len(aids) > 5 else "")
            raise DataError(f"{path}: no rows for the {len(aids)} campaigns of {folder} (aids {shown}); a test "
                            "split needs candidates to score: add their rows, or split the campaigns "
                            "differently (--seed, --train-fraction, --hot-threshold)")


def check_apart(source, option, out_dir):
    """Refuse an input folder (--raw, --pkl-dir) inside --out, or --out inside (or equal to) it."""
    if os.path.realpath(source) == os.path.realpath(out_dir):
        raise DataError(f"{option} {source} and --out {out_dir} are the same folder; write the data folders "
                        "outside the folder of the input files (e.g. a sibling folder)")
    if inside(source, out_dir):
        raise DataError(f"{option} {source} lies inside --out {out_dir}; keep the input files out of the "
                        "output folder: choose an --out that does not hold them (e.g. a sibling folder)")
    if inside(out_dir, source):
        raise DataError(f"--out {out_dir} lies inside {option} {source}; write the data folders outside "
                        "the folder of the input files (e.g. a sibling folder)")


def check_out_dir(out_dir, force, replaced=tuple(folder for folder, _ in SPLITS), staging=None):
    """Refuse a non-empty out_dir unless force, and with force anything but folders where `replaced` go.

    staging: our own staging folder inside out_dir, not counted.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: exists and is not a folder; choose another --out")
    if not os.path.isdir(out_dir):
        return
    entries = [e for e in os.listdir(out_dir) if staging is None or e != os.path.basename(staging)]
    if entries and not force:
        raise DataError(f"{out_dir}: not empty; choose another --out, or pass --force to replace its "
                        f"{', '.join(replaced)} folders (nothing else in it is touched)")
    for name in replaced:
        target = os.path.join(out_dir, name)
        if os.path.lexists(target) and not (os.path.isdir(target) or os.path.islink(target)):
            raise DataError(f"{target}: a file where the {name} data folder goes; move it away or choose "
                            "another --out")


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
    sorted(set(block) | {-1}); returns that sorted array (the field's vocabulary).

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
        return np.flatnonzero(present).astype(np.int64) - 1
    values, inverse = np.unique(np.append(block.ravel(), -1), return_inverse=True)
    block[...] = inverse[:-1].reshape(block.shape)
    return values.astype(np.int64)


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


def write_splits(out_dir, force, stages, split_aids, users, campaigns, ads, max_idxs, vocab, workers, progress):
    """Write every split folder into a staging folder inside out_dir, then swap them in.

    Stage files are written by `workers` forked processes, largest first:
    deflating them is the slowest step after parsing. Returns the counts per split.
    """
    tmp, created = staging_folder(out_dir, STAGING)
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
    done = False
    try:
        try:
            make_staging(tmp)
        except OSError as e:
            raise DataError(f"{out_dir}: cannot create the output folder ({e.strerror}); check the path and "
                            "its permissions") from e
        for folder, _ in SPLITS:
            os.makedirs(os.path.join(tmp, folder))
            digest = vocabulary.save(os.path.join(tmp, folder), vocab)
            dataset.write_schema(os.path.join(tmp, folder), max_idxs, digest)
        with progress_bar(disable=not progress, total=sum(len(job[2]) for job in jobs), unit=" rows",
                          desc="writing", leave=False) as bar, \
                fork_map(write_stage_file, jobs, workers, state) as written:
            for n_rows in written:
                bar.update(n_rows)
        check_out_dir(out_dir, force, staging=tmp)  # nothing appeared meanwhile
        replace_folders(tmp, out_dir, [folder for folder, _ in SPLITS])
        done = True
    except OSError as e:
        raise DataError(f"{e.filename or out_dir}: cannot write the data folders ({e.strerror or e}); "
                        f"check free space and permissions; {out_dir} is unchanged") from e
    finally:
        if not done:
            drop_staging(tmp, out_dir, created)
    return counts


def write_stage_file(state, job):
    """Write one stage file (and its oracle) from the rows of stage k of state["stages"]; returns the row count."""
    path, k, rows = job
    stage = state["stages"][k]
    arrays = stage_arrays(stage, rows, state["users"], state["campaigns"], state["ads"])
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
