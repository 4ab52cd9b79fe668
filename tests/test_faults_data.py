"""Fault injection on the data tools: make the bad input, run the command line, and check that it
stops with exit code 2 and one line `error: ...` (no traceback), and that nothing already saved is lost.

The raw folders are tiny and written by hand (as in test_preprocess.py); the pickles are DataFrames
built from tests/helpers.make_stage, or crafted opcodes.
"""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, make_stage
from tools.utils.data import dataset
from tools.utils.data import schema

PREPROCESS = os.path.join(ROOT, "tools", "preprocess.py")
IMPORT_PICKLE = os.path.join(ROOT, "tools", "import_pickle.py")
SPLITS = ("train", "test_hot", "test_cold")

ADS = ["aid,advertiserId,campaignId,creativeId,creativeSize,adCategoryId,productId,productType",
       "1,10,100,1,59,21,0,9", "2,10,101,2,59,21,,4", "3,20,102,3,22,67,1344,9", "4,30,103,4,35,67,0,11"]
USERS = [f"uid {u}|age {u % 5}|gender {u % 2 + 1}|LBS {u * 7}|interest1 {u} {u + 1}|kw1 {u * 11}|topic2 {u % 3}"
         for u in range(1, 9)]
TRAIN = ["aid,uid,label"] + [f"{a},{u},{1 if (a + u) % 3 == 0 else -1}" for a in (1, 2, 3, 4) for u in (1, 2, 3, 4)]
TEST = [f"{a},{u},{1 if (a * u) % 4 == 1 else 0}" for a in (1, 2, 3, 4) for u in (5, 6, 7, 8)]


def lines(rows):
    return "\n".join(rows) + "\n"


def write_raw(folder, **texts):
    """A raw folder (text of each file overridable; bytes are written as they are)."""
    files = {"adFeature.csv": lines(ADS), "userFeature.data": lines(USERS), "train.csv": lines(TRAIN),
             "test1_truth.csv": lines(TEST)}
    files.update(texts)
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode())
    return str(folder)


def cli(tool, *args, cwd=None):
    return subprocess.run([sys.executable, tool, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_one_line_error(done, *fragments, limit=600):
    """Exit code 2 and stderr exactly one short line `error: ...` holding every fragment."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), done.stderr
    assert len(err[0]) < limit, f"{len(err[0])} characters: {err[0][:300]}..."
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def snapshot(folder):
    """{relative path: bytes} of every file under folder (folders as None, so empty ones count too)."""
    found = {}
    for d, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(d, name), folder)] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                found[os.path.relpath(os.path.join(d, name), folder)] = f.read()
    return found


# ------------------------------------------------------------------ 1. preprocess --force
def test_preprocess_force_keeps_raw_inside_out_and_other_files(tmp_path):
    """`--raw data/raw_small --out data --force` deleted data/raw_small: now refused, nothing touched; with
    the raw folder elsewhere --force replaces only train, test_hot and test_cold; `--out .` works."""
    data = tmp_path / "data"
    raw = write_raw(data / "raw_small")
    (data / "notes.txt").write_text("my notes")
    (data / "train").mkdir()
    (data / "train" / "old.txt").write_text("an old split")
    before = snapshot(data)
    for out, raw_dir, says in ((data, raw, "lies inside --out"), (data / "raw_small" / "out", raw, "lies inside --raw"),
                               (data / "raw_small", raw, "are the same folder")):
        done = cli(PREPROCESS, "--raw", raw_dir, "--out", out, "--force", "--quiet")
        assert_one_line_error(done, says)
        assert snapshot(data) == before

    shutil.move(raw, tmp_path / "raw")
    (data / "runs").mkdir()
    (data / "runs" / "model.pdparams").write_bytes(b"weights")
    keep = {k: v for k, v in snapshot(data).items() if not k.startswith("train")}
    done = cli(PREPROCESS, "--raw", tmp_path / "raw", "--out", data, "--quiet")
    assert_one_line_error(done, f"{data}: not empty", "--force")
    done = cli(PREPROCESS, "--raw", tmp_path / "raw", "--out", data, "--force", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(data)) == ["notes.txt", "runs", "test_cold", "test_hot", "train"]  # no staging left
    assert {k: v for k, v in snapshot(data).items() if k.split(os.sep)[0] not in SPLITS} == keep
    assert not (data / "train" / "old.txt").exists()
    first = snapshot(data)
    for split in SPLITS:
        dataset.load_split(str(data / split))

    # --out . (was an OSError traceback): the splits of the current folder are replaced, nothing else
    done = cli(PREPROCESS, "--raw", tmp_path / "raw", "--out", ".", "--force", "--quiet", cwd=data)
    assert done.returncode == 0, done.stderr
    assert snapshot(data) == first  # same input: the same bytes, and the other files untouched
    assert sorted(os.listdir(tmp_path)) == ["data", "raw"]


def test_preprocess_failing_late_keeps_the_old_splits(tmp_path, monkeypatch):
    """A write failing after the data was read (disk full while deflating) changes nothing in --out."""
    from tools.utils.data import raw
    out = tmp_path / "out"
    raw.preprocess(write_raw(tmp_path / "raw"), str(out), workers=1, progress=False)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    calls = []

    def disk_full(state, job):
        calls.append(job)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", job[0])
        return real(state, job)

    real = raw.write_stage_file
    monkeypatch.setattr(raw, "write_stage_file", disk_full)
    with pytest.raises(dataset.DataError,
                       match=r"cannot write the data folders \(No space left on device\).*unchanged"):
        raw.preprocess(str(tmp_path / "raw"), str(out), seed=9, workers=1, progress=False, force=True)
    assert snapshot(out) == before


# ------------------------------------------------------------------ 2. import_pickle all or nothing
def pandas():
    return pytest.importorskip("pandas")


def frame_of(arrays):
    """A DataFrame with the published MetaHeac columns (lists as object cells of arrays)."""
    n = len(arrays["label"])
    cols = {"label": arrays["label"].astype(np.int64), "aid": arrays["aid"].astype(np.int64)}
    for j, f in enumerate(schema.STATIC_FIELDS):
        cols[f] = arrays["static"][:, j].astype(np.int64)
    for j, f in enumerate(schema.DYNAMIC_FIELDS):
        cells = np.empty(n, object)
        cells[:] = list(arrays["dynamic"][:, schema.DYNAMIC_OFFSETS[j]:schema.DYNAMIC_OFFSETS[j + 1]].astype(np.int64))
        cols[f] = cells
    for j, f in enumerate(schema.DYNAMIC_FIELDS):
        cols[f + "_length"] = arrays["lengths"][:, j].astype(np.int64)
    for j, f in enumerate(schema.AD_FIELDS):
        cols[f] = arrays["ad"][:, j].astype(np.int64)
    return pandas().DataFrame(cols)


def write_frame(path, seed=0, rows=None, edit=None):
    df = frame_of(make_stage(np.random.default_rng(seed), rows or {7: 20, 8: 15}))
    df = edit(df) if edit else df
    df.to_pickle(str(path))
    return str(path)


def test_import_pickle_failure_keeps_the_old_folder(tmp_path):
    """A failed --pkl-dir import into an existing folder left a new stage 1 beside the old stage 2 and
    schema.json. Now: a non-empty --out needs --force, and a failure changes nothing."""
    pandas()
    good, bad, out = tmp_path / "good", tmp_path / "bad", tmp_path / "out"
    good.mkdir(), bad.mkdir()
    write_frame(good / "test_hot_stage1.pkl", seed=1)
    write_frame(good / "test_hot_stage2.pkl", seed=2)
    done = cli(IMPORT_PICKLE, "--pkl-dir", good, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)

    write_frame(bad / "test_hot_stage1.pkl", seed=3, rows={7: 40})  # good, and different
    write_frame(bad / "test_hot_stage2.pkl", seed=4, edit=lambda df: df.drop(columns=["kw2"]))
    done = cli(IMPORT_PICKLE, "--pkl-dir", bad, "--out", out, "--quiet")
    assert snapshot(out) == before
    assert_one_line_error(done, f"{out}: not empty", "--force")
    done = cli(IMPORT_PICKLE, "--pkl-dir", bad, "--out", out, "--force", "--quiet")
    assert snapshot(out) == before  # the old stage 1, stage 2 and schema.json, byte for byte
    assert_one_line_error(done, "test_hot_stage2.pkl: missing column(s) ['kw2']")
    dataset.load_split(str(out / "test_hot"))

    write_frame(bad / "test_hot_stage2.pkl", seed=4)  # now all good: replaced, the rest untouched
    done = cli(IMPORT_PICKLE, "--pkl-dir", bad, "--out", out, "--force", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["notes.txt", "test_hot"] and (out / "notes.txt").read_text() == "mine"
    assert len(dataset.load_split(str(out / "test_hot"))["stage1"]["label"]) == 40


# ------------------------------------------------------------------ 3. no candidates
def test_preprocess_refuses_test_splits_without_candidates(tmp_path):
    raw = write_raw(tmp_path / "raw", **{"test1_truth.csv": ""})
    done = cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(done, f"{os.path.join(raw, 'test1_truth.csv')}: no rows", "needs candidates")
    assert sorted(os.listdir(tmp_path)) == ["raw"]
    # rows, but none of the test campaigns' (seed 2021 trains on 2 of the 4 campaigns)
    train_aids = set(np.sort(np.arange(1, 5)[np.random.default_rng(2021).permutation(4)[:2]]).tolist())
    rows = [r for r in TEST if int(r.split(",")[0]) in train_aids]
    raw = write_raw(tmp_path / "raw", **{"test1_truth.csv": lines(rows)})
    done = cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(done, "test1_truth.csv: no rows for the 2 campaigns of test_cold", "needs candidates")
    assert sorted(os.listdir(tmp_path)) == ["raw"]


# ------------------------------------------------------------------ 4. messages
@pytest.mark.parametrize("name", ["train.csv", "userFeature.data", "adFeature.csv"])
def test_cr_only_line_endings_give_a_short_message(tmp_path, name):
    """A CR-only file was quoted whole as its header (a 1 MB message)."""
    texts = {"train.csv": lines(TRAIN * 3000), "userFeature.data": lines(USERS * 500), "adFeature.csv": lines(ADS)}
    raw = write_raw(tmp_path / "raw", **{name: texts[name].replace("\n", "\r")})
    done = cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(done, os.path.join(raw, name), "no line breaks found (CR-only line endings?)", limit=300)
    assert not (tmp_path / "out").exists()


def test_long_bad_header_is_cut(tmp_path):
    raw = write_raw(tmp_path / "raw", **{"train.csv": "x" * 100_000 + "\n" + lines(TRAIN[1:])})
    message = assert_one_line_error(cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet"),
                                    "train.csv line 1: header is 'xxxx", "(100,000 characters)", limit=300)
    assert message.count("x") < 100


class Huge:
    """Unpickles to np.ndarray of 2^60 bytes through the allowlisted numpy _reconstruct: a MemoryError."""

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (2 ** 60,), b"B")


class WrongArguments:
    """DataFrame(None x 8): a TypeError while the pickle runs (an allowlisted class, misused)."""

    def __reduce__(self):
        return pandas().DataFrame, (None,) * 8


class NewIndexOfDataFrame:
    """pandas' _new_Index(DataFrame, {}): a DataFrame object without its data."""

    def __reduce__(self):
        return pandas().core.indexes.base._new_Index, (pandas().DataFrame, {})


@pytest.mark.parametrize("payload, says, not_says", [
    (Huge, ["out of memory while unpickling it", "the file is", "of memory"], "download the file again"),
    (WrongArguments, ["do not rebuild a pandas DataFrame", "TypeError", "not a DataFrame pickle of the expected "
                      "shape, or was written by a pandas version"], "download the file again"),
    (NewIndexOfDataFrame, ["holds a DataFrame object without its data", "AttributeError"], "download"),
])
def test_import_pickle_says_what_happened(tmp_path, payload, says, not_says):
    """MemoryError and TypeError said "download the file again"; _new_Index(DataFrame) was a traceback."""
    pandas()
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(), protocol=4))
    out = tmp_path / "out"
    done = cli(IMPORT_PICKLE, "--pkl", path, "--split", "train", "--stage", "1", "--out", out, "--quiet")
    message = assert_one_line_error(done, f"{path}: ", *says)
    assert not_says not in message
    assert not out.exists()


@pytest.mark.parametrize("edit, says, not_says", [
    (lambda df: df.assign(kw1=[np.where(np.arange(5) == 2, -1, c) for c in df["kw1"]]),
     ["column 'kw1' row 0 holds id -1", "label-encoded with ids from 0"], "schema.json"),
    (lambda df: df.assign(age=-1), ["column 'age' row 0 holds id -1", "label-encoded"], "schema.json"),
    (lambda df: df.iloc[:0], ["holds an empty DataFrame", "no rows"], None),
])
def test_import_pickle_negative_ids_and_empty_frames(tmp_path, edit, says, not_says):
    """A negative id got a hint to regenerate schema.json; an empty DataFrame imported with rc 0."""
    path = write_frame(tmp_path / "x.pkl", edit=edit)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = cli(IMPORT_PICKLE, "--pkl", path, "--split", "train", "--stage", "1", "--out", out, "--quiet", "--force")
    message = assert_one_line_error(done, f"{path}: ", *says)
    assert not_says is None or not_says not in message
    assert os.listdir(out) == ["notes.txt"]


def test_skip_bad_lines_summary(tmp_path):
    """`skipped 0 bad lines (first: )` was printed when nothing was skipped (a user without a line)."""
    no_line = write_raw(tmp_path / "no_line", **{"userFeature.data": lines(USERS[:-1])})  # uid 8 has no line
    done = cli(PREPROCESS, "--raw", no_line, "--out", tmp_path / "a", "--quiet", "--skip-bad-lines")
    assert done.returncode == 0, done.stderr
    assert "bad line" not in done.stdout and "first:" not in done.stdout
    assert "dropped 4 labelled rows whose user has no good line" in done.stdout  # uid 8: one row per campaign
    clean = cli(PREPROCESS, "--raw", write_raw(tmp_path / "clean"), "--out", tmp_path / "b", "--quiet",
                "--skip-bad-lines")
    assert clean.returncode == 0 and "skipped" not in clean.stdout and "dropped" not in clean.stdout
    bad = write_raw(tmp_path / "bad", **{"userFeature.data": lines(USERS[:2] + ["uid 3|age x"] + USERS[3:])})
    done = cli(PREPROCESS, "--raw", bad, "--out", tmp_path / "c", "--quiet", "--skip-bad-lines")
    assert done.returncode == 0, done.stderr
    assert "skipped 1 bad line of userFeature.data (the first: " in done.stdout
    assert "userFeature.data line 3: group 'age' has value 'x'" in done.stdout


def test_user_file_cut_mid_line(tmp_path):
    """A userFeature.data cut mid-line (no line break at the end) was accepted, the last user partial."""
    text = lines(USERS)
    raw = write_raw(tmp_path / "raw", **{"userFeature.data": text[:text.rindex("|")]})  # uid 8 loses topic2
    before = snapshot(raw)
    done = cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet")
    assert_one_line_error(done, f"{os.path.join(raw, 'userFeature.data')} line {len(USERS)}: the last line does "
                          "not end with a line break", "cut off", "--skip-bad-lines")
    assert sorted(os.listdir(tmp_path)) == ["raw"] and snapshot(raw) == before
    done = cli(PREPROCESS, "--raw", raw, "--out", tmp_path / "out", "--quiet", "--skip-bad-lines")
    assert done.returncode == 0, done.stderr
    assert f"skipped 1 bad line of userFeature.data (the first: {os.path.join(raw, 'userFeature.data')} " \
           f"line {len(USERS)}: the last line does not end" in done.stdout
    assert "dropped 4 labelled rows" in done.stdout  # uid 8's rows


# ------------------------------------------------------------------ issue 20 #15: a killed run's staging folder
def dead_pid():
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_killed_runs_staging_folder_is_removed_at_the_next_start(tmp_path):
    """Issue 20 #15: preprocess killed with -9 left `.preprocess.tmpPID` folders (2-7 MB each) in --out forever, and
    a plain rerun was refused as "not empty". A live process's staging is left alone."""
    raw, out = write_raw(tmp_path / "raw"), tmp_path / "out"
    stale = out / f".preprocess.tmp{dead_pid()}"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "train_stage1.npz").write_bytes(os.urandom(5000))
    done = cli(PREPROCESS, "--raw", raw, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == sorted(SPLITS)
    live = out / f".preprocess.tmp{os.getpid()}"  # this test's process is alive: its staging is not touched
    live.mkdir()
    (out / f"notes.tmp{dead_pid()}").write_text("mine")  # not a staging folder's name: kept
    done = cli(PREPROCESS, "--raw", raw, "--out", out, "--quiet", "--force")
    assert done.returncode == 0, done.stderr
    assert live.is_dir() and len(os.listdir(out)) == 5


def test_a_killed_imports_staging_folder_is_removed_at_the_next_start(tmp_path):
    pandas()
    out = tmp_path / "out"
    stale = out / f".import_pickle.tmp{dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(os.urandom(100))
    path = write_frame(tmp_path / "x.pkl")
    done = cli(IMPORT_PICKLE, "--pkl", path, "--split", "train", "--stage", "1", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert os.listdir(out) == ["train"]


def test_a_killed_generators_staging_folder_is_removed_at_the_next_start(tmp_path):
    out = tmp_path / "raw"
    stale = out / f".make_synthetic.tmp{dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "userFeature.data").write_bytes(os.urandom(100))
    done = cli(os.path.join(ROOT, "tools", "make_synthetic.py"), "--out", out, "--users", 3000, "--campaigns", 4,
               "--train-rows", 2000, "--test-rows", 500, "--hot-cut", 20, "--cold-min", 5, "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["adFeature.csv", "oracle.csv", "test1_truth.csv", "train.csv",
                                       "userFeature.data"]
