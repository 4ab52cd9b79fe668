"""The meta-training and test readers on tiny generated split folders."""
import itertools
import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

import reader_test
import reader_train
from helpers import reader_config, write_split
from tools.utils.data import dataset
from tools.utils.errors import DataError


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
def test_batches_hold_distinct_rows_of_their_campaign(tmp_path):
    rows = {1: 300, 2: 200, 3: 5, 4: 1}
    folder = write_split(tmp_path, rows)
    ds = reader_train.RecDataset(reader_config(batch_size=32, task_count=4), folder)
    table = dataset.load_split(folder, stages=(1,))["stage1"]
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


def test_too_few_campaigns_and_another_vocabulary_are_clear_errors(tmp_path):
    folder = write_split(tmp_path, {1: 10, 2: 10})
    with pytest.raises(DataError, match=r"2 campaigns .*task_count is 3.*task_count=2"):
        reader_train.RecDataset(reader_config(task_count=3), folder)
    config = reader_config()
    config["data_schema"]["max_idxs"]["static"] = [3] * 7
    for reader in (reader_train, reader_test):
        with pytest.raises(DataError, match=r"schema.json: vocabulary maxima .* differ from the (config|model)'s"):
            reader.RecDataset(config, folder)


# ---------------------------------------------------------------- test reader
def test_test_reader_yields_each_campaign_once_with_all_its_rows(tmp_path):
    folder = write_split(tmp_path, {1: 30, 2: 12, 9: 4}, stage2_rows={1: 50, 2: 8, 5: 3})
    split = dataset.load_split(folder)
    ds = reader_test.RecDataset(reader_config(), folder)
    assert ds.skipped == [(9, "no stage-2 rows (candidates) to score")]
    out = list(ds)
    assert [aid for aid, _, _ in out] == [1, 2, 5] and len(ds) == 3
    for aid, seeds, candidates in out:
        in1, in2 = split["stage1"]["aid"] == aid, split["stage2"]["aid"] == aid
        assert np.array_equal(seeds["uid"], split["stage1"]["uid"][in1])  # file order
        assert np.array_equal(candidates["uid"], split["stage2"]["uid"][in2])
        assert np.array_equal(candidates["label"], split["stage2"]["label"][in2])
    assert len(out[2][1]["label"]) == 0  # candidates without seeds: scored without fine-tuning


def test_batches_cut_consecutive_rows():
    batch = {"label": np.arange(10), "uid": np.arange(10) * 3}
    cut = list(reader_test.batches(batch, 4))
    assert [len(b["label"]) for b in cut] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["uid"] for b in cut]), batch["uid"])


def test_test_folder_without_candidates_is_a_data_error(tmp_path):
    folder = write_split(tmp_path, {1: 5})
    with pytest.raises(dataset.DataError, match=r"no candidates to score \(no \*_stage2.npz"):
        reader_test.RecDataset(reader_config(), folder)
