"""The synthetic raw-data generator: format, determinism, and the planted structure.

The files are read back with the small parser below (plain Python, written for
the test), and the numbers are checked against independent computations.
"""
import filecmp
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tools.utils.data import schema
from tools.utils.data import synthetic
from tools.utils.data.raw_text import render_tokens

AD_HEADER = "aid,advertiserId,campaignId,creativeId,creativeSize,adCategoryId,productId,productType"
USER_GROUPS = {"uid", "age", "gender", "marriageStatus", "education", "consumptionAbility", "LBS",
               "interest1", "interest2", "interest3", "interest4", "interest5", "kw1", "kw2", "kw3",
               "topic1", "topic2", "topic3", "appIdInstall", "appIdAction", "ct", "os", "carrier", "house"}
MODEST = dict(users=20_000, campaigns=30, train_rows=32_000, test_rows=8_000, hot_cut=40, cold_min=8)
TINY = dict(users=3_000, campaigns=12, train_rows=3_000, test_rows=1_000, hot_cut=15, cold_min=5)


# ----------------------------------------------------------------- an independent reader
def read_ints_csv(path, header):
    with open(path) as f:
        lines = f.read().splitlines()
    if header is not None:
        assert lines[0] == header, f"{path}: header {lines[0]!r}"
        lines = lines[1:]
    return [tuple(int(x) for x in line.split(",")) for line in lines]


def read_oracle(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "aid,uid,prob"
    out = {}
    for line in lines[1:]:
        aid, uid, prob = line.split(",")
        assert (int(aid), int(uid)) not in out
        out[int(aid), int(uid)] = float(prob)
    return out


def read_users(path):
    """uid -> {group: [ints]}, checking the line grammar on the way."""
    users = {}
    with open(path) as f:
        for line in f:
            assert line.endswith("\n")
            groups = {}
            for k, group in enumerate(line[:-1].split("|")):
                name, *values = group.split(" ")
                assert (k == 0) == (name == "uid"), line
                assert name in USER_GROUPS and name not in groups and values, line
                groups[name] = [int(v) for v in values]
            uid = groups["uid"][0]
            assert uid not in users
            users[uid] = groups
    return users


def read_folder(path):
    return dict(ads=read_ints_csv(os.path.join(path, "adFeature.csv"), AD_HEADER),
                train=read_ints_csv(os.path.join(path, "train.csv"), "aid,uid,label"),
                test=read_ints_csv(os.path.join(path, "test1_truth.csv"), None),
                oracle=read_oracle(os.path.join(path, "oracle.csv")),
                users=read_users(os.path.join(path, "userFeature.data")))


@pytest.fixture(scope="module")
def modest(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("modest"))
    truth = synthetic.generate(out, **MODEST, seed=11)
    return truth, read_folder(out)


def labelled(data):
    """(aid, uid, y in {0,1}, oracle prob) of every row of both stages."""
    rows = data["train"] + data["test"]
    aid, uid, label = (np.array(c) for c in zip(*rows))
    prob = np.array([data["oracle"][a, u] for a, u in zip(aid, uid)])
    return aid, uid, (label == 1).astype(int), prob


# ----------------------------------------------------------------- format
def test_files_follow_the_raw_format(modest):
    truth, data = modest
    assert all(len(r) == 8 for r in data["ads"]) and len(data["ads"]) == MODEST["campaigns"]
    aids = {r[0] for r in data["ads"]}
    assert len(aids) == MODEST["campaigns"]
    assert len(data["train"]) == MODEST["train_rows"] and len(data["test"]) == MODEST["test_rows"]
    assert len(data["users"]) == MODEST["users"]
    rows = data["train"] + data["test"]
    assert {label for _, _, label in rows} == {1, -1}
    pairs = [(a, u) for a, u, _ in rows]
    assert len(set(pairs)) == len(pairs), "an (aid, uid) pair occurs twice over train.csv and test1_truth.csv"
    assert set(pairs) == set(data["oracle"]), "oracle.csv must cover exactly the labelled rows"
    assert all(0 <= p <= 1 for p in data["oracle"].values())
    assert {a for a, _ in pairs} <= aids and {u for _, u in pairs} <= set(data["users"])


def test_user_groups_have_realistic_shapes(modest):
    _, data = modest
    users = list(data["users"].values())
    n = len(users)

    def present(name):
        return [g[name] for g in users if name in g]

    assert len(present("house")) / n < 0.3 and all(g == [1] for g in present("house"))
    assert len(present("interest3")) / n < 0.1
    assert 0.8 < len(present("interest1")) / n < 0.95
    assert np.mean([len(v) > 10 for v in present("interest1")]) > 0.2, "interest lists should often exceed 10"
    for name in ("kw1", "kw2", "topic1", "topic2", "interest1", "interest5"):
        lists = present(name)
        assert all(len(set(v)) == len(v) for v in lists), f"{name}: repeated ids in a list"
    kw = [len(v) for v in present("kw1")]
    assert max(kw) > 5 and np.mean(kw) < 5
    # kw ids are sparse large integers; ages are 0..5
    assert max(max(v) for v in present("kw1")) > 500_000
    assert {v[0] for v in present("age")} == set(range(6))
    # a few ids are popular, most are rare (long tail)
    counts = np.sort(np.unique(np.concatenate(present("kw1")), return_counts=True)[1])[::-1]
    assert counts[0] > 20 * np.median(counts)


def test_full_scale_vocabularies_match_the_tencent_maxima():
    """Label encoding adds one id for "-1" (missing or padding) to the raw values."""
    by_name = {f.name: f for f in synthetic.USER_FIELDS}
    dynamic = [by_name[name].n_values for name in schema.DYNAMIC_FIELDS]
    assert dynamic == schema.TENCENT_MAX_IDXS["dynamic"]
    static = [by_name[name].n_values - (by_name[name].missing == 0) for name in schema.STATIC_FIELDS if name != "house"]
    assert static + [1] == schema.TENCENT_MAX_IDXS["static"]
    ads, _ = synthetic.make_ads(np.random.default_rng(0), synthetic.REAL_CAMPAIGNS)
    distinct = [len(set(ads[name])) - 1 for name in schema.AD_FIELDS]
    assert distinct == schema.TENCENT_MAX_IDXS["ad"]


# ----------------------------------------------------------------- labels and oracle
def test_positive_rate_and_oracle_calibration(modest):
    _, data = modest
    _, _, y, prob = labelled(data)
    assert abs(y.mean() - synthetic.TARGET_RATE) < 0.008
    assert abs(prob.mean() - y.mean()) < 4 * math.sqrt((prob * (1 - prob)).sum()) / len(y)
    edges = np.quantile(prob, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, 9)
    for b in range(10):
        p, hit = prob[bins == b], y[bins == b]
        assert abs(hit.mean() - p.mean()) < 4 * math.sqrt((p * (1 - p)).sum()) / len(p) + 1e-3, f"decile {b}"
    assert 0.72 < roc_auc_score(y, prob) < 0.88


def test_oracle_is_the_stated_function_of_the_latent_taste(modest):
    truth, data = modest
    aid, uid, _, prob = labelled(data)
    campaign = {a: i for i, a in enumerate(truth.aids)}
    user = {u: i for i, u in enumerate(truth.uids)}
    c = np.array([campaign[a] for a in aid])
    u = np.array([user[x] for x in uid])
    expected = 1 / (1 + np.exp(-(truth.bias[c] + (truth.z[u].astype(float) * truth.weights[c]).sum(axis=1))))
    np.testing.assert_allclose(prob, expected, atol=1e-8)


def test_families_share_preferences_and_ad_features(modest):
    truth, data = modest
    aid, uid, _, prob = labelled(data)
    user = {x: i for i, x in enumerate(truth.uids)}
    z = truth.z[[user[x] for x in uid]].astype(float)
    keep = (prob > 1e-5) & (prob < 1 - 1e-5)
    # recover each campaign's preference from oracle.csv alone: logit(p) = b + w.z
    recovered = []
    for a in truth.aids:
        sel = keep & (aid == a)
        design = np.hstack([np.ones((sel.sum(), 1)), z[sel]])
        coef, *_ = np.linalg.lstsq(design, np.log(prob[sel] / (1 - prob[sel])), rcond=None)
        recovered.append(coef[1:])
    w = np.array(recovered)
    np.testing.assert_allclose(w, truth.weights, atol=1e-3)
    cos = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    same = truth.family[:, None] == truth.family[None, :]
    off_diagonal = ~np.eye(len(w), dtype=bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.2
    # the family is visible in the ad features: an advertiser or an ad category belongs to one family
    family_of_aid = dict(zip(truth.aids, truth.family))
    for column in (1, 5):
        owners = {}
        for row in data["ads"]:
            owners.setdefault(row[column], set()).add(family_of_aid[row[0]])
        assert all(len(f) == 1 for f in owners.values())
        assert len(owners) > 1


def test_hot_and_cold_campaigns_both_present(modest):
    _, data = modest
    aid, _, y, _ = labelled(data)
    positives = np.array([y[aid == a].sum() for a in np.unique(aid)])
    hot = positives > MODEST["hot_cut"]
    assert 0.25 < hot.mean() < 0.75
    assert positives.max() > 3 * MODEST["hot_cut"] and positives.min() < MODEST["hot_cut"] / 2


# ----------------------------------------------------------------- determinism and the command line
def test_same_seed_same_bytes_any_jobs_other_seed_differs(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "USER_CHUNK", 700)  # several chunks, so the worker pool is used
    for name, seed, jobs in (("a", 5, 1), ("b", 5, 2), ("c", 6, 1)):
        synthetic.generate(str(tmp_path / name), **TINY, seed=seed, jobs=jobs)
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", synthetic.FILES, shallow=False)
    assert match == list(synthetic.FILES) and not errors
    for name in synthetic.FILES[1:]:  # the ad table may repeat; every other file must change
        assert not filecmp.cmp(tmp_path / "a" / name, tmp_path / "c" / name, shallow=False), name


def test_command_line_writes_what_the_library_writes(tmp_path):
    args = ["--users", "3000", "--campaigns", "12", "--train-rows", "3000", "--test-rows", "1000",
            "--hot-cut", "15", "--cold-min", "5", "--seed", "3"]
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic.py"),
                          "--out", str(tmp_path / "cli"), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "train.csv: 3,000 rows" in run.stdout and "oracle AUC" in run.stdout
    synthetic.generate(str(tmp_path / "lib"), **TINY, seed=3)
    match, _, _ = filecmp.cmpfiles(tmp_path / "cli", tmp_path / "lib", synthetic.FILES, shallow=False)
    assert match == list(synthetic.FILES)

    bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic.py"),
                          "--out", str(tmp_path / "bad"), *args, "--hot-cut", "900"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--hot-cut 900" in bad.stderr and "lower --hot-cut" in bad.stderr


@pytest.mark.parametrize("change, message", [
    (dict(campaigns=1), "--campaigns"),
    (dict(test_rows=5), "--test-rows"),
    (dict(cold_min=20), "--cold-min"),
])
def test_bad_settings_name_the_option(change, message):
    with pytest.raises(ValueError, match=message):
        synthetic.resolve_scale("sample", **{**TINY, **change})


def test_render_tokens_matches_python_formatting():
    rng = np.random.default_rng(0)
    prefixes = [(b"", 0), (b" ", 0), (b"|interest1 ", 0), (b",0.", 8)]
    values = np.concatenate([[0, 9, 10, 99999999, 2 ** 40], rng.integers(0, 10 ** rng.integers(1, 9, 995))])
    ids = rng.integers(0, len(prefixes), len(values))
    eol = rng.random(len(values)) < 0.1
    expected = b"".join(prefixes[i][0] + str(v).zfill(prefixes[i][1]).encode() + (b"\n" if e else b"")
                        for v, i, e in zip(values, ids, eol))
    assert render_tokens(values, ids, prefixes, eol) == expected
