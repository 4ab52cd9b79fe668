"""tools/preprocess.py: raw competition files -> our split folders.

The expected arrays come from `reference`, a plain-Python version of the
documented rules (dicts and lists, one user at a time), and a few are also
worked out by hand in test_hand_checked_ids.
"""
import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from tools.utils.data import dataset, raw, raw_csv, raw_users, vocabulary
from tools.utils.data import schema
from tools.utils.data.dataset import DataError

AD_HEADER = "aid,advertiserId,campaignId,creativeId,creativeSize,adCategoryId,productId,productType"
ADS = [AD_HEADER,
       "11,500,9001,1,59,21,0,9",
       "12,500,9002,2,59,21,,4",        # productId missing -> -1
       "13,700,9003,3,22,67,1344,9",
       "14,800,9004,4,35,67,0,11",
       "15,800,9005,5,59,3,77,9",
       "16,900,9006,6,22,3,77,4",
       "99,1,1,1,1,1,1,1"]               # no rows: its values are not in the vocabulary
USERS = [
    "uid 1|age 4|gender 2|marriageStatus 11|education 7|consumptionAbility 2|LBS 950|"
    "interest1 93 70 77 86 109 1 2 3 4 5 6 7|interest2 46 19|kw1 664359 276966 734911 1 2 3|"
    "topic1 9826 105 8525|ct 3 1|os 2|carrier 1",
    "uid 2|age 1|gender 1|LBS 12|interest1 5|interest3 2 3|kw2 7 8 9 10 11 12 13|topic2 55|carrier 0|house 1",
    "uid 500|age 5|gender 9|LBS 77777|kw1 424242",     # in no labelled row
    "uid 3|gender 2|age 4|interest2 19 46 3|kw1 11|appIdAction 5 6 7|carrier 2|education 0",
    "uid 4|age 0|gender 1|consumptionAbility 0",
    "uid 5|age 2|gender 2|interest1 0 1 2 3 4 5 6 7 8 9|kw1 0|topic1 0 1 2 3 4|topic2 9 8 7 6 5 4|house 1|LBS 0",
    "uid 6|age 3|gender 1|interest4 1 2|kw3 5|LBS 950|education 7",
    "uid 7|age 4|gender 2|LBS 12|interest1 109 93|topic1 105",
    "uid 8|age 5|gender 1|carrier 3|kw2 7",
]
TRAIN = ["aid,uid,label",
         "11,1,1", "11,2,-1", "11,3,-1", "12,4,1", "12,5,1", "13,6,-1", "13,7,1", "14,8,-1",
         "14,1,1", "15,2,-1", "15,3,1", "16,4,-1", "16,5,1", "12,6,-1", "11,7,-1"]
TEST = ["11,8,0", "11,5,-1", "12,1,1", "13,2,1", "13,3,0", "14,4,1", "15,5,1", "15,6,-1",
        "16,7,1", "16,8,0", "14,2,-1", "12,3,1"]


def lines(rows):
    return "\n".join(rows) + "\n"


def write_raw(folder, oracle=False, **files):
    """A raw folder from the rows above; files= overrides a whole file's text (None: leave it out)."""
    texts = {"adFeature.csv": lines(ADS), "userFeature.data": lines(USERS),
             "train.csv": lines(TRAIN), "test1_truth.csv": lines(TEST)}
    if oracle:
        probs = [f"{i / 100:.2f}" for i in range(len(TRAIN) - 1 + len(TEST))]
        keys = [r.rsplit(",", 1)[0] for r in TRAIN[1:] + TEST]
        texts["oracle.csv"] = lines(["aid,uid,prob"] + [f"{k},{p}" for k, p in zip(keys, probs)])
    texts.update(files)
    os.makedirs(folder, exist_ok=True)
    for name, text in texts.items():
        if text is not None:
            Path(folder, name).write_text(text)
    return folder


def edit(rows, number, new):
    """rows with line `number` (1-based) replaced by new (None: removed)."""
    rows = list(rows)
    if new is None:
        del rows[number - 1]
    else:
        rows[number - 1] = new
    return rows


def run(raw_dir, out_dir, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return raw.preprocess(str(raw_dir), str(out_dir), **kw)


# --------------------------------------------------------------- the reference
def reference(raw_dir, seed=2021, train_fraction=0.5, hot_threshold=2000):
    """{split: {stage: arrays}} and max_idxs, by the rules of tools/utils/data/raw.py, in plain Python."""
    raw_dir = Path(raw_dir)
    with open(raw_dir / "adFeature.csv") as f:
        ads = {int(r["aid"]): [int(r[k]) if r[k] else -1 for k in schema.AD_FIELDS] for r in csv.DictReader(f)}
    stages = []
    for name, header in (("train.csv", True), ("test1_truth.csv", False)):
        with open(raw_dir / name) as f:
            rows = list(csv.reader(f))[header:]
        stages.append([(int(a), int(u), int(int(lab) == 1)) for a, u, lab in rows])
    users = {}
    with open(raw_dir / "userFeature.data") as f:
        for line in f:
            groups = {}
            for group in line.strip().split("|"):
                name, *values = group.split(" ")
                groups[name] = [int(v) for v in values]
            users[groups["uid"][0]] = groups
    labelled = sorted({u for st in stages for _, u, _ in st})

    def static(u, f):
        return users[u].get(f, [-1])[0]

    def kept(u, f, width):
        return users[u].get(f, [])[:width]

    vocab = {f: sorted({-1} | {static(u, f) for u in labelled}) for f in schema.STATIC_FIELDS}
    for f, w in zip(schema.DYNAMIC_FIELDS, schema.DYNAMIC_WIDTHS):
        vocab[f] = sorted({-1} | {v for u in labelled for v in kept(u, f, w)})
    campaigns = sorted({a for st in stages for a, _, _ in st})
    for j, f in enumerate(schema.AD_FIELDS):
        vocab[f] = sorted({-1} | {ads[a][j] for a in campaigns})
    ids = {f: {v: i for i, v in enumerate(values)} for f, values in vocab.items()}

    order = np.random.default_rng(seed).permutation(len(campaigns))
    n_train = int(len(campaigns) * train_fraction)
    train = {campaigns[i] for i in order[:n_train]}
    positives = Counter(a for st in stages for a, _, lab in st if lab)
    test = set(campaigns) - train
    hot = {a for a in test if positives[a] > hot_threshold}
    splits = {"train": train, "test_hot": hot, "test_cold": test - hot}

    def encode(a, u, lab):
        dynamic, lengths = [], []
        for f, w in zip(schema.DYNAMIC_FIELDS, schema.DYNAMIC_WIDTHS):
            values = kept(u, f, w)
            dynamic += [ids[f][v] for v in values] + [0] * (w - len(values))
            lengths.append(len(values))
        return dict(label=lab, aid=a, uid=u, static=[ids[f][static(u, f)] for f in schema.STATIC_FIELDS],
                    dynamic=dynamic, lengths=lengths, ad=[ids[f][ads[a][j]] for j, f in enumerate(schema.AD_FIELDS)])

    rows_template = ("label", "aid", "uid", "static", "dynamic", "lengths", "ad")
    out = {}
    for split, aids in splits.items():
        out[split] = {}
        for k, st in enumerate(stages, start=1):
            rows = [encode(*r) for r in st if r[0] in aids]
            out[split][f"stage{k}"] = {name: np.array([r[name] for r in rows], np.int64).reshape(
                (len(rows),) + schema.ARRAYS[name][1]) for name in rows_template}
    max_idxs = {"static": [len(vocab[f]) - 1 for f in schema.STATIC_FIELDS],
                "dynamic": [len(vocab[f]) - 1 for f in schema.DYNAMIC_FIELDS],
                "ad": [len(vocab[f]) - 1 for f in schema.AD_FIELDS]}
    return out, max_idxs


def assert_matches_reference(out_dir, expected, max_idxs):
    for split, stages in expected.items():
        data = dataset.load_split(os.path.join(out_dir, split))
        assert data["schema"]["max_idxs"] == max_idxs
        for stage, arrays in stages.items():
            got = data[stage]
            if got is None:  # only train_stage2 may be left out, and only when it has no rows
                assert split == "train" and stage == "stage2" and len(arrays["label"]) == 0
                continue
            for name, want in arrays.items():
                np.testing.assert_array_equal(got[name], want, err_msg=f"{split} {stage} {name}")


# --------------------------------------------------------------- encoding
def test_matches_reference(tmp_path):
    raw_dir = write_raw(tmp_path / "raw")
    summary = run(raw_dir, tmp_path / "out")
    expected, max_idxs = reference(raw_dir)
    assert_matches_reference(tmp_path / "out", expected, max_idxs)
    assert summary.lines == len(USERS) and summary.bad_lines == 0 and summary.dropped_rows == 0
    assert sum(c["stage1"] for c in summary.splits.values()) == len(TRAIN) - 1
    assert sum(c["stage2"] for c in summary.splits.values()) == len(TEST)


def test_hand_checked_ids(tmp_path):
    run(write_raw(tmp_path / "raw"), tmp_path / "out", train_fraction=0.01)  # every campaign is a test one
    cold = dataset.load_split(str(tmp_path / "out" / "test_cold"))
    mx = cold["schema"]["max_idxs"]
    rows = {}
    for stage in ("stage1", "stage2"):
        for i, (a, u) in enumerate(zip(cold[stage]["aid"], cold[stage]["uid"])):
            rows[(stage, a, u)] = {k: v[i] for k, v in cold[stage].items()}
    u1, u2, u3, u5 = rows[("stage1", 11, 1)], rows[("stage1", 11, 2)], rows[("stage1", 11, 3)], rows[("stage1", 12, 5)]
    col = {f: j for j, f in enumerate(schema.STATIC_FIELDS)}
    # LBS over labelled users: 950, 12, -, -, 0, 950, 12, - -> [-1, 0, 12, 950]; 77777 is an unlabelled user's
    assert (u1["static"][col["LBS"]], u5["static"][col["LBS"]], u3["static"][col["LBS"]]) == (3, 1, 0)
    assert mx["static"][col["LBS"]] == 3
    assert u1["static"][col["gender"]] == 2 and u2["static"][col["gender"]] == 1   # [-1, 1, 2]
    assert (u1["static"][col["house"]], u2["static"][col["house"]]) == (0, 1)        # missing -> 0
    # kw1 kept tokens: u1 664359 276966 734911 1 2 (its 3 is cut), u3 11, u5 0
    # -> [-1, 0, 1, 2, 11, 276966, 664359, 734911]
    kw1 = slice(schema.DYNAMIC_OFFSETS[3], schema.DYNAMIC_OFFSETS[4])
    assert list(u1["dynamic"][kw1]) == [6, 5, 7, 2, 3]
    assert list(u3["dynamic"][kw1]) == [4, 0, 0, 0, 0]
    assert mx["dynamic"][3] == 7
    # lengths: interest1 12 values -> 10, interest2 2, interest3 missing, kw1 6 -> 5
    assert list(u1["lengths"]) == [10, 2, 0, 5, 0, 3, 0]
    interest2 = u1["dynamic"][schema.DYNAMIC_OFFSETS[1]:schema.DYNAMIC_OFFSETS[2]]
    assert interest2[0] > 0 and interest2[1] > 0 and not interest2[2:].any()
    # productId of the campaigns with rows: 0, -, 1344, 0, 77, 77 -> [-1, 0, 77, 1344] (ad 99 has no rows)
    assert mx["ad"][4] == 3 and u1["ad"][4] == 1 and u5["ad"][4] == 0
    # labels: 1 -> 1, -1 -> 0 (train.csv); 0 -> 0 (test1_truth.csv)
    assert (u1["label"], u2["label"], rows[("stage2", 11, 8)]["label"]) == (1, 0, 0)


@pytest.mark.parametrize("block_bytes, workers", [(64, 1), (64, 2)])
def test_blocks_and_workers_change_nothing(tmp_path, monkeypatch, block_bytes, workers):
    raw_dir = write_raw(tmp_path / "raw", oracle=True)
    run(raw_dir, tmp_path / "whole")
    monkeypatch.setattr(raw_users, "BLOCK_BYTES", block_bytes)
    run(raw_dir, tmp_path / "blocks", workers=workers)
    for split, _ in raw.SPLITS:
        names = sorted(os.listdir(tmp_path / "whole" / split))
        assert names == sorted(os.listdir(tmp_path / "blocks" / split))
        for name in names:
            assert (tmp_path / "whole" / split / name).read_bytes() == \
                (tmp_path / "blocks" / split / name).read_bytes(), (split, name)


def test_line_numbers_across_blocks_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(raw_users, "BLOCK_BYTES", 64)
    raw_dir = write_raw(tmp_path / "raw", **{USER_FILE: lines(edit(USERS, 8, "uid 7|topic1 1 y"))})
    with pytest.raises(DataError, match=r"userFeature\.data line 8: group 'topic1' has value 'y'"):
        run(raw_dir, tmp_path / "out", workers=2)
    summary = run(raw_dir, tmp_path / "out", workers=2, skip_bad_lines=True)
    assert summary.bad_lines == 1 and "line 8:" in summary.first_bad
    assert summary.dropped_rows == sum(r.split(",")[1] == "7" for r in TRAIN[1:] + TEST)


def test_fast_and_slow_value_parsing_agree():
    rng = np.random.default_rng(0)
    texts = [" ".join(map(str, rng.integers(0, 10 ** rng.integers(1, 9), rng.integers(1, 12)))).encode()
             for _ in range(500)]
    fast = raw_users.parse_values(texts, "kw1", -1, 2 ** 31 - 1, single=False)
    slow = raw_users.parse_values_slowly(texts, "kw1", -1, 2 ** 31 - 1, single=False)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], [len(t.split()) for t in texts])
    assert fast[2] == slow[2] == {}
    # anything unusual goes the slow way and is judged there
    odd = [b"1  2", b"-1 3", b"", b"4 x", b" 5", b"99999999999"]
    values, counts, bad = raw_users.parse_values(odd, "kw1", -1, 2 ** 31 - 1, single=False)
    assert list(counts) == [2, 2, 0, 0, 1, 0] and list(values) == [1, 2, -1, 3, 5]
    assert sorted(bad) == [2, 3, 5]


@pytest.mark.parametrize("dense_limit", [raw.DENSE_LIMIT, 0])
def test_encode_ids_ranks_values(dense_limit):
    rng = np.random.default_rng(1)
    block = rng.choice([-1, 0, 5, 17, 400, 2 ** 30], size=(300, 4)).astype(np.int32)
    present = np.unique(np.append(block, -1))
    expected = np.searchsorted(present, block)
    raw_values = block.copy()
    vocab = raw.encode_ids(block, dense_limit)
    np.testing.assert_array_equal(block, expected)
    np.testing.assert_array_equal(vocab, present)  # the vocabulary: the sorted raw values, -1 first
    ids, unknown = vocabulary.encode(raw_values, vocab)  # encoding again with it gives the same ids
    np.testing.assert_array_equal(ids, expected)
    assert unknown == 0
    ids, unknown = vocabulary.encode([-1, 5, 6, 2 ** 30, 2 ** 31], vocab)  # unseen values: the missing id 0
    assert list(ids) == [0, 2, 0, 5, 0] and unknown == 2


CSV_BODIES = [  # (body, float last column)
    (b"1,2,3\n-4,50,-1\n007,0,1\n", False),
    (b"1,2,0.5\n3,4,1e-05\n5,-6,+.5\n7,8,1.\n", True),
    (b"1,2,-\n", False), (b"1,2-3,4\n", False), (b"1,,3\n", False), (b"1,2,3,\n", False), (b"1,2\n", False),
    (b"1,2,3\n\n4,5,6\n", False), (b"1,2.5,3\n", False), (b"1,2,3e1\n", False), (b"+1,2,3\n", False),
    (b"9007199254740992,1,1\n", False), (b"1,2,.\n", True), (b"1,2,1.2.3\n", True), (b"1,2,0x1\n", True),
    (b"1,-,0.5\n", True), (b"1,2,0.5\n3,4\n", True),
]


@pytest.mark.parametrize("body, float_last", CSV_BODIES)
def test_fast_csv_parser_accepts_only_what_the_line_parser_accepts(body, float_last):
    names = ("a", "b", "c")
    fast = raw_csv.parse_clean(body, 3, float_last)
    try:
        reference_table = raw_csv.parse_lines("f.csv", body, names, float_last, 1)
    except DataError as e:
        assert fast is None and "f.csv line " in str(e)
        return
    assert fast is not None  # every well-formed body here takes the fast path
    np.testing.assert_array_equal(fast, reference_table)


def test_crlf_optional_header_and_trailing_blank_lines(tmp_path):
    base = write_raw(tmp_path / "raw", oracle=True)
    run(base, tmp_path / "base")
    texts = {name: (base / name).read_text() for name in os.listdir(base)}
    texts["test1_truth.csv"] = "aid,uid,label\n" + texts["test1_truth.csv"]
    odd = write_raw(tmp_path / "odd", **{name: text.replace("\n", "\r\n") + "\r\n\n" for name, text in texts.items()})
    summary = run(odd, tmp_path / "out")
    assert summary.oracle and summary.lines == len(USERS) + 2  # the blank lines at the end are lines too
    for split, _ in raw.SPLITS:
        for name in os.listdir(tmp_path / "base" / split):
            assert (tmp_path / "base" / split / name).read_bytes() == (tmp_path / "out" / split / name).read_bytes()


@pytest.mark.parametrize("name", ["adFeature.csv", "train.csv", "test1_truth.csv", "userFeature.data"])
def test_a_byte_order_mark_is_named_whatever_the_file(tmp_path, name):
    """Excel's 'CSV UTF-8' starts a file with a byte-order mark; every raw file says so and how to remove it
    (adFeature.csv's was 'columns [aid] are missing', userFeature.data's 'no uid group')."""
    base = write_raw(tmp_path / "raw")
    path = base / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(DataError, match=rf"{name}: starts with a UTF-8 byte-order mark.*sed -i"):
        run(base, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- split
def test_split_is_reproducible_and_follows_the_seed(tmp_path):
    raw_dir = write_raw(tmp_path / "raw")
    run(raw_dir, tmp_path / "a", seed=7)
    run(raw_dir, tmp_path / "b", seed=7)
    for split, _ in raw.SPLITS:
        for name in os.listdir(tmp_path / "a" / split):
            assert (tmp_path / "a" / split / name).read_bytes() == (tmp_path / "b" / split / name).read_bytes()
    train_sets = set()
    for seed in range(6):
        run(raw_dir, tmp_path / f"s{seed}", seed=seed)
        train = set(dataset.load_split(str(tmp_path / f"s{seed}" / "train"))["stage1"]["aid"])
        tests = [set(dataset.load_split(str(tmp_path / f"s{seed}" / s))["stage1"]["aid"])
                 for s in ("test_hot", "test_cold")]
        assert len(train) == 3 and not train & (tests[0] | tests[1])
        assert train | tests[0] | tests[1] == {11, 12, 13, 14, 15, 16}
        train_sets.add(frozenset(train))
    assert len(train_sets) > 1


def test_hot_cold_threshold(tmp_path):
    raw_dir = write_raw(tmp_path / "raw")
    positives = Counter(int(r.split(",")[0]) for r in TRAIN[1:] + TEST if r.endswith(",1"))
    threshold = positives[13]  # campaign 13 sits exactly on the threshold: cold
    run(raw_dir, tmp_path / "out", train_fraction=0.01, hot_threshold=threshold)
    hot = set(dataset.load_split(str(tmp_path / "out" / "test_hot"))["stage1"]["aid"])
    cold = set(dataset.load_split(str(tmp_path / "out" / "test_cold"))["stage1"]["aid"])
    assert hot == {a for a, p in positives.items() if p > threshold} and 13 in cold
    assert hot and cold and hot | cold == {11, 12, 13, 14, 15, 16}
    train = dataset.load_split(str(tmp_path / "out" / "train"))
    assert len(train["stage1"]["label"]) == 0 and train["stage2"] is None
    expected, max_idxs = reference(raw_dir, train_fraction=0.01, hot_threshold=threshold)
    assert_matches_reference(tmp_path / "out", expected, max_idxs)


# --------------------------------------------------------------- oracle
def test_oracle_follows_its_rows(tmp_path):
    raw_dir = write_raw(tmp_path / "raw", oracle=True)
    run(raw_dir, tmp_path / "out")
    with open(raw_dir / "oracle.csv") as f:
        rows = list(csv.reader(f))[1:]
    stage_of_row = [1] * (len(TRAIN) - 1) + [2] * len(TEST)  # oracle.csv: train.csv rows, then test1_truth.csv
    prob = {(k, int(a), int(u)): float(p) for k, (a, u, p) in zip(stage_of_row, rows)}
    seen = 0
    for split, _ in raw.SPLITS:
        for k in (1, 2):
            path = dataset.stage_path(str(tmp_path / "out" / split), k)
            if path is None:
                continue
            arrays = dataset.load_stage(path, dataset.read_schema(str(tmp_path / "out" / split)))
            oracle = dataset.load_oracle(path, len(arrays["label"]))
            assert oracle.dtype == np.float32
            want = [prob[(k, a, u)] for a, u in zip(arrays["aid"], arrays["uid"])]
            np.testing.assert_allclose(oracle, want, rtol=1e-6)
            seen += len(want)
    assert seen == len(rows)


# --------------------------------------------------------------- bad input
USER_FILE = "userFeature.data"
BAD_INPUTS = [
    (USER_FILE, 4, "uid 3|age x|gender 2", r"userFeature\.data line 4: group 'age' has value 'x', expected integers"),
    (USER_FILE, 4, "uid 3|age 4 5", r"userFeature\.data line 4: group 'age' has 2 values, expected 1"),
    (USER_FILE, 4, "age 4|gender 2", r"userFeature\.data line 4: no 'uid' group"),
    (USER_FILE, 4, "uid 3|kw1 1|kw1 2", r"userFeature\.data line 4: group 'kw1' appears twice"),
    (USER_FILE, 4, "uid 3|kw1", r"userFeature\.data line 4: group 'kw1' has no value"),
    (USER_FILE, 4, "uid 3|LBS -5", r"userFeature\.data line 4: group 'LBS' has value '-5'"),
    (USER_FILE, 3, "uid 500|gender y", r"userFeature\.data line 3: group 'gender' has value 'y'"),
    (USER_FILE, 9, "uid 3|age 1", r"userFeature\.data line 9: uid 3 already appeared on line 4"),
    (USER_FILE, 9, None, r"train\.csv line 9: uid 8 does not appear in .*userFeature\.data"),
    ("train.csv", 3, "11,2", r"train\.csv line 3: has 2 fields, expected 3 \(aid,uid,label\)"),
    ("train.csv", 3, "11,2,1,5", r"train\.csv line 3: has 4 fields, expected 3"),
    ("train.csv", 3, "11,2,2", r"train\.csv line 3: label is 2, expected 1 or -1"),
    ("train.csv", 3, "11,abc,1", r"train\.csv line 3: uid is 'abc', expected an integer"),
    ("train.csv", 3, "", r"train\.csv line 3: empty line"),
    ("train.csv", 1, "aid,user,label", r"train\.csv line 1: header is 'aid,user,label', expected 'aid,uid,label'"),
    ("train.csv", 4, "42,3,1", r"train\.csv line 4: aid 42 is not in .*adFeature\.csv"),
    ("test1_truth.csv", 2, "11,5,5", r"test1_truth\.csv line 2: label is 5"),
    ("test1_truth.csv", 2, "11,77,1", r"test1_truth\.csv line 2: uid 77 does not appear in .*userFeature\.data"),
    ("adFeature.csv", 1, AD_HEADER.replace("productType", "prodType"),
     r"adFeature\.csv line 1: columns \['productType'\]"),
    ("adFeature.csv", 4, ADS[1], r"adFeature\.csv line 4: aid 11 already appeared on line 2"),
    ("adFeature.csv", 3, "12,500,9002,2,59,-7,0,4", r"adFeature\.csv line 3: adCategoryId is -7"),
]
BASE = {USER_FILE: USERS, "train.csv": TRAIN, "test1_truth.csv": TEST, "adFeature.csv": ADS}


@pytest.mark.parametrize("name, number, new, message", BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, name, number, new, message):
    raw_dir = write_raw(tmp_path / "raw", **{name: lines(edit(BASE[name], number, new))})
    with pytest.raises(DataError, match=message):
        run(raw_dir, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # no output, no temporary folder


def test_missing_file_and_misaligned_oracle(tmp_path):
    raw_dir = write_raw(tmp_path / "raw", **{USER_FILE: None})
    with pytest.raises(DataError, match=r"userFeature\.data: not found; --raw must be the folder"):
        run(raw_dir, tmp_path / "out")
    raw_dir = write_raw(tmp_path / "raw2", oracle=True)
    oracle = (raw_dir / "oracle.csv").read_text().splitlines()
    oracle[2], oracle[3] = oracle[3], oracle[2]
    (raw_dir / "oracle.csv").write_text(lines(oracle))
    with pytest.raises(DataError, match=r"oracle\.csv line 3: row \(aid 11, uid 3"):
        run(raw_dir, tmp_path / "out")


def test_skip_bad_lines_counts_and_drops(tmp_path):
    # uid 3: bad value; uid 500 (unlabelled): bad value; uid 8: no line; uid 7: two lines
    users = edit(edit(edit(USERS, 4, "uid 3|age x"), 3, "uid 500|gender y"), 9, None) + [USERS[7]]
    raw_dir = write_raw(tmp_path / "raw", oracle=True, **{USER_FILE: lines(users)})
    with pytest.raises(DataError, match=r"line 3: group 'gender' has value 'y'.*--skip-bad-lines"):
        run(raw_dir, tmp_path / "strict")
    summary = run(raw_dir, tmp_path / "out", skip_bad_lines=True, workers=2)
    gone = {3, 7, 8}
    dropped = [r for r in TRAIN[1:] + TEST if int(r.split(",")[1]) in gone]
    assert summary.bad_lines == 2 + 2 and summary.dropped_rows == len(dropped)
    assert "line 3: group 'gender' has value 'y'" in summary.first_bad
    # the same as the strict run on a folder without those users and their rows
    keep = [i for i, r in enumerate(TRAIN[1:] + TEST) if int(r.split(",")[1]) not in gone]
    oracle = (raw_dir / "oracle.csv").read_text().splitlines()
    clean = write_raw(tmp_path / "clean", oracle=True, **{
        USER_FILE: lines([u for u in USERS if int(u.split("|")[0].split()[1]) not in gone]),
        "train.csv": lines([r for r in TRAIN if not r[0].isdigit() or int(r.split(",")[1]) not in gone]),
        "test1_truth.csv": lines([r for r in TEST if int(r.split(",")[1]) not in gone]),
        "oracle.csv": lines([oracle[0]] + [oracle[1 + i] for i in keep])})
    run(clean, tmp_path / "clean_out")
    for split, _ in raw.SPLITS:
        for name in os.listdir(tmp_path / "clean_out" / split):
            assert (tmp_path / "out" / split / name).read_bytes() == \
                (tmp_path / "clean_out" / split / name).read_bytes(), (split, name)


def test_refuses_to_overwrite_unless_forced(tmp_path):
    raw_dir = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not empty; choose another --out, or pass --force"):
        run(raw_dir, out)
    assert os.listdir(out) == ["keep.txt"]
    run(raw_dir, out, force=True)  # --force replaces the split folders only
    assert sorted(os.listdir(out)) == ["keep.txt", "test_cold", "test_hot", "train"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out", "raw"]
    (out / "train" / "stale.txt").write_text("old split")  # an old split folder is replaced whole
    run(raw_dir, out, force=True, seed=5)
    assert not (out / "train" / "stale.txt").exists()
    assert sorted(os.listdir(out)) == ["keep.txt", "test_cold", "test_hot", "train"]
    (tmp_path / "empty").mkdir()
    run(raw_dir, tmp_path / "empty")  # an empty folder is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        run(raw_dir, tmp_path / "file")


# --------------------------------------------------------------- command lines
def test_cli(tmp_path):
    raw_dir = write_raw(tmp_path / "raw", oracle=True)
    cmd = [sys.executable, str(ROOT / "tools" / "preprocess.py"), "--raw", str(raw_dir),
           "--out", str(tmp_path / "out"), "--seed", "3", "--hot-threshold", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test_cold" in done.stdout and "vocabulary (dynamic): interest1" in done.stdout
    assert f"{len(USERS)} lines read" in done.stdout and "with oracle probabilities" in done.stdout
    expected, max_idxs = reference(raw_dir, seed=3, hot_threshold=2)
    assert_matches_reference(tmp_path / "out", expected, max_idxs)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert "note: no training campaign" not in done.stdout
    all_test = subprocess.run(cmd[:5] + [str(tmp_path / "all_test"), "--train-fraction", "0.01"], capture_output=True,
                              text=True, cwd=tmp_path)
    assert all_test.returncode == 0 and "note: no training campaign" in all_test.stdout, all_test.stderr


def test_synthetic_end_to_end(tmp_path):
    maker = ROOT / "tools" / "make_synthetic.py"
    if not maker.exists():
        pytest.skip("tools/make_synthetic.py is not there yet")
    gen = subprocess.run([sys.executable, str(maker), "--out", str(tmp_path / "raw"), "--seed", "5",
                          "--users", "3000", "--campaigns", "8", "--train-rows", "2400", "--test-rows", "600",
                          "--hot-cut", "20", "--cold-min", "3"], capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    summary = run(tmp_path / "raw", tmp_path / "out", hot_threshold=20, workers=2)
    assert summary.oracle and summary.lines == 3000
    expected, max_idxs = reference(tmp_path / "raw", hot_threshold=20)
    assert_matches_reference(tmp_path / "out", expected, max_idxs)
    assert sum(c["stage1"] for c in summary.splits.values()) == 2400
    assert sum(c["stage2"] for c in summary.splits.values()) == 600
