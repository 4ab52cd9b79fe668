"""The meta-training and test readers on tiny generated split folders.

write_split / reader_config are also used by tests/test_tools.py.
"""
import itertools
from collections import Counter
import math
import os
import sys

import numpy as np
import pytest
from scipy.stats import chisquare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import reader_test  # noqa: E402
import reader_train  # noqa: E402
from tools.utils import dataset as D  # noqa: E402
from tools.utils import schema as S  # noqa: E402
from tools.utils.config import ConfigError  # noqa: E402

MAX_IDXS = {"static": [3, 2, 9, 5, 7, 2, 1], "dynamic": [12, 8, 6, 30, 20, 10, 10], "ad": [4, 5, 3, 3, 3, 2]}
MAX_IDXS_LIST = [MAX_IDXS["static"], MAX_IDXS["dynamic"], MAX_IDXS["ad"]]


def make_stage(rng, rows_by_aid, uid_start=0):
    """Random valid rows for {aid: rows}, shuffled (so a file is not grouped by campaign).

    Labels follow a logistic model of static[:, 0] and the campaign's first ad field,
    so a trained model can beat AUC 0.5.
    """
    aids = np.array(list(rows_by_aid), dtype=np.int32)
    aid = np.repeat(aids, list(rows_by_aid.values()))[rng.permutation(sum(rows_by_aid.values()))]
    n = len(aid)
    ad_of_campaign = {a: rng.integers(0, np.array(MAX_IDXS["ad"]) + 1) for a in aids}
    static = rng.integers(0, np.array(MAX_IDXS["static"]) + 1, size=(n, len(S.STATIC_FIELDS)))
    ad = np.array([ad_of_campaign[a] for a in aid]).reshape(n, len(S.AD_FIELDS))
    dynamic = np.concatenate([rng.integers(0, top + 1, size=(n, width))
                              for top, width in zip(MAX_IDXS["dynamic"], S.DYNAMIC_WIDTHS)], axis=1)
    lengths = rng.integers(0, np.array(S.DYNAMIC_WIDTHS) + 1, size=(n, len(S.DYNAMIC_FIELDS)))
    logit = 1.5 * (static[:, 0] - 1.5) + 0.5 * (ad[:, 0] - 2)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return {"label": label, "aid": aid, "static": static, "dynamic": dynamic, "lengths": lengths, "ad": ad,
            "uid": np.arange(uid_start, uid_start + n, dtype=np.int64)}


def write_split(folder, stage1_rows, stage2_rows=None, seed=0):
    """A split folder with schema.json, stage 1 and (if given) stage 2; rows are {aid: count}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    D.write_schema(str(folder), MAX_IDXS)
    prefix = "train" if stage2_rows is None else "test"
    stage1 = make_stage(rng, stage1_rows)
    D.save_stage(os.path.join(folder, f"{prefix}_stage1.npz"), stage1)
    if stage2_rows is not None:
        D.save_stage(os.path.join(folder, f"{prefix}_stage2.npz"),
                     make_stage(rng, stage2_rows, uid_start=len(stage1["label"])))
    return str(folder)


def reader_config(batch_size=8, task_count=2, sample_method="normal", seed=7):
    return {"runner": {"train_batch_size": batch_size, "seed": seed},
            "hyper_parameters": {"max_idxs": [list(g) for g in MAX_IDXS_LIST], "task_count": task_count,
                                 "sample_method": sample_method},
            "config_path": "test-config.yaml", "config_abs_dir": ROOT}


class CountingRng:
    """A numpy Generator that adds up how many values every draw asks for."""

    def __init__(self, seed):
        self.rng, self.drawn, self.largest = np.random.default_rng(seed), 0, 0

    def _count(self, n):
        self.drawn += n
        self.largest = max(self.largest, n)

    def integers(self, low, high, size):
        self._count(size)
        return self.rng.integers(low, high, size=size)

    def permutation(self, n):
        self._count(n)
        return self.rng.permutation(n)

    def random(self, size):
        self._count(size)
        return self.rng.random(size)


# ---------------------------------------------------------------- task sampling
ROW_COUNTS = {10: 1, 11: 4, 12: 9, 13: 16, 14: 70}
WEIGHTS = {"normal": lambda c: c, "sqrt": math.sqrt, "unit": lambda c: 1.0}


def exact_pair_probs(weights):
    """P(unordered pair {i, j}) of two successive draws without replacement, in proportion to weights."""
    total = sum(weights)
    return {(i, j): weights[i] / total * weights[j] / (total - weights[i])
            + weights[j] / total * weights[i] / (total - weights[j])
            for i, j in itertools.combinations(range(len(weights)), 2)}


@pytest.mark.parametrize("method", ["normal", "sqrt", "unit"])
def test_task_pairs_follow_weighted_draws_without_replacement(tmp_path, method):
    ds = reader_train.RecDataset(reader_config(sample_method=method), write_split(tmp_path, ROW_COUNTS))
    rng = np.random.default_rng(123)
    draws = [tuple(sorted(ds.draw_tasks(rng))) for _ in range(20000)]
    assert all(i != j for i, j in draws)
    expected = exact_pair_probs([WEIGHTS[method](c) for c in ROW_COUNTS.values()])
    counts = Counter(draws)
    observed = np.array([counts[pair] for pair in expected])
    assert chisquare(observed, np.array(list(expected.values())) * len(draws)).pvalue > 1e-3


def test_sampling_methods_differ_in_favour_of_large_campaigns(tmp_path):
    folder = write_split(tmp_path, ROW_COUNTS)
    rng = np.random.default_rng(5)
    datasets = {m: reader_train.RecDataset(reader_config(sample_method=m), folder) for m in WEIGHTS}
    share_of_largest = {m: np.mean([4 in ds.draw_tasks(rng) for _ in range(3000)]) for m, ds in datasets.items()}
    assert share_of_largest["normal"] > share_of_largest["sqrt"] > share_of_largest["unit"]


# ---------------------------------------------------------------- rows of a batch
def test_sample_distinct_is_uniform_over_ordered_samples():
    rng = np.random.default_rng(0)
    for n, k in ((9, 2), (6, 2)):  # 9 > 4k: rejection path; 6 <= 4k: permutation path
        draws = [tuple(reader_train.sample_distinct(rng, n, k)) for _ in range(10000)]
        assert all(len(set(d)) == k for d in draws)
        ordered = list(itertools.permutations(range(n), k))
        tally = Counter(draws)
        counts = np.array([tally[t] for t in ordered])
        assert counts.sum() == len(draws)
        assert chisquare(counts).pvalue > 1e-3


def test_batches_hold_distinct_rows_of_their_campaign(tmp_path):
    rows = {1: 300, 2: 200, 3: 5, 4: 1}
    folder = write_split(tmp_path, rows)
    ds = reader_train.RecDataset(reader_config(batch_size=32, task_count=4), folder)
    table = D.load_split(folder, stages=(1,))["stage1"]
    aid_of_uid = dict(zip(table["uid"].tolist(), table["aid"].tolist()))
    meta_batch = ds.draw_meta_batch(np.random.default_rng(1))
    assert sorted(int(s["aid"][0]) for s, _ in meta_batch) == [1, 2, 3, 4]
    for support, query in meta_batch:
        aid = int(support["aid"][0])
        for batch in (support, query):
            assert set(batch) == set(table)
            assert len(batch["label"]) == min(32, rows[aid])
            assert len(set(batch["uid"].tolist())) == len(batch["uid"])  # no row twice
            assert all(aid_of_uid[u] == aid for u in batch["uid"].tolist())
            assert np.array_equal(batch["aid"], np.full(len(batch["aid"]), aid))
        if rows[aid] < 32:  # a small campaign gives all its rows to support and to query
            assert sorted(support["uid"]) == sorted(query["uid"]) == sorted(u for u, a in aid_of_uid.items()
                                                                             if a == aid)


def test_drawing_cost_does_not_grow_with_the_table(tmp_path):
    counter = CountingRng(0)
    assert len(set(reader_train.sample_distinct(counter, 10 ** 12, 64))) == 64
    assert counter.drawn < 2 * 64

    drawn = {}
    for per_campaign in (100, 5000):
        folder = write_split(tmp_path / str(per_campaign), {a: per_campaign for a in range(5)})
        ds = reader_train.RecDataset(reader_config(batch_size=16, task_count=3), folder)
        counter = CountingRng(3)
        for _ in range(20):
            ds.draw_meta_batch(counter)
        drawn[per_campaign] = counter.drawn
        assert counter.largest <= 4 * 16  # never a permutation of a whole campaign or table
    # 20 meta-batches x 3 tasks x 2 batches x 16 rows, plus the task draws and a few repeats
    assert drawn[5000] < 20 * (3 * 2 * 16 * 1.5 + 5)
    assert drawn[5000] <= drawn[100] * 1.5


# ---------------------------------------------------------------- epochs and seeds
def uids_of_epoch(ds):
    return np.concatenate([b["uid"] for meta_batch in ds for pair in meta_batch for b in pair])


def test_epochs_are_seeded_reproducible_and_of_the_right_length(tmp_path):
    folder = write_split(tmp_path, {1: 100, 2: 60, 3: 40, 4: 7})
    ds = reader_train.RecDataset(reader_config(batch_size=16), folder)
    assert len(ds) == math.ceil(207 / 16) == len(list(iter(ds)))
    ds.set_epoch(0)
    first, second = uids_of_epoch(ds), uids_of_epoch(ds)  # iterating advances the epoch
    again = reader_train.RecDataset(reader_config(batch_size=16), folder)
    assert np.array_equal(first, uids_of_epoch(again))
    again.set_epoch(1)
    assert np.array_equal(second, uids_of_epoch(again))
    assert not np.array_equal(first[:200], second[:200])
    other_seed = reader_train.RecDataset(reader_config(batch_size=16, seed=8), folder)
    assert not np.array_equal(first[:200], uids_of_epoch(other_seed)[:200])


def test_too_few_campaigns_and_bad_settings_are_clear_errors(tmp_path):
    folder = write_split(tmp_path, {1: 10, 2: 10})
    with pytest.raises(ConfigError, match=r"2 campaigns .*task_count is 3.*task_count=2"):
        reader_train.RecDataset(reader_config(task_count=3), folder)
    with pytest.raises(ConfigError, match=r"sample_method is 'sqr'"):
        reader_train.RecDataset(reader_config(sample_method="sqr"), folder)
    config = reader_config()
    config["hyper_parameters"]["max_idxs"][0] = [3] * 7
    with pytest.raises(ConfigError, match=r"test-config.yaml: hyper_parameters.max_idxs .*schema.json"):
        reader_train.RecDataset(config, folder)


# ---------------------------------------------------------------- test reader
def test_test_reader_yields_each_campaign_once_with_all_its_rows(tmp_path):
    folder = write_split(tmp_path, {1: 30, 2: 12, 9: 4}, stage2_rows={1: 50, 2: 8, 5: 3})
    split = D.load_split(folder)
    ds = reader_test.RecDataset(reader_config(), folder)
    assert ds.skipped == [(9, "no stage-2 rows (candidates) to score")]
    out = list(ds)
    assert [aid for aid, _, _ in out] == [1, 2, 5] and len(ds) == 3
    for aid, seeds, candidates in out:
        in1, in2 = split["stage1"]["aid"] == aid, split["stage2"]["aid"] == aid
        assert sorted(seeds["uid"]) == sorted(split["stage1"]["uid"][in1])
        assert np.array_equal(candidates["uid"], split["stage2"]["uid"][in2])  # file order
        assert np.array_equal(candidates["label"], split["stage2"]["label"][in2])
    assert len(out[2][1]["label"]) == 0  # candidates without seeds: scored without fine-tuning
    assert not np.array_equal(out[0][1]["uid"], np.sort(out[0][1]["uid"]))  # shuffled


def test_test_shuffle_depends_on_seed_and_campaign_only(tmp_path):
    folder = write_split(tmp_path / "a", {1: 30, 2: 40}, stage2_rows={1: 5, 2: 5})
    split = D.load_split(folder)
    only2 = str(tmp_path / "b")
    os.makedirs(only2)
    D.write_schema(only2, MAX_IDXS)
    for stage in ("stage1", "stage2"):
        keep = split[stage]["aid"] == 2
        D.save_stage(os.path.join(only2, f"test_{stage}.npz"), {k: v[keep] for k, v in split[stage].items()})
    seeds_of = {name: {aid: s["uid"] for aid, s, _ in reader_test.RecDataset(reader_config(seed=seed), f)}
                for name, f, seed in (("a", folder, 7), ("b", only2, 7), ("a8", folder, 8))}
    assert np.array_equal(seeds_of["a"][2], seeds_of["b"][2])
    assert not np.array_equal(seeds_of["a"][2], seeds_of["a8"][2])


def test_batches_cut_consecutive_rows():
    batch = {"label": np.arange(10), "uid": np.arange(10) * 3}
    cut = list(reader_test.batches(batch, 4))
    assert [len(b["label"]) for b in cut] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["uid"] for b in cut]), batch["uid"])


def test_test_folder_without_candidates_is_a_data_error(tmp_path):
    folder = write_split(tmp_path, {1: 5})
    with pytest.raises(D.DataError, match=r"no \*_stage2.npz"):
        reader_test.RecDataset(reader_config(), folder)
