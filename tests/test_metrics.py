"""Metrics against independent computations: pairwise (Mann-Whitney) AUC and top-k by hand."""
import math

import numpy as np
import pytest

from helpers import pairwise_auc
from tools.utils.measure import metrics


def top_hits_by_hand(labels, scores, percent):
    """Positives among the first int(percent / 100 * n) rows (at least 1) ranked by descending score,
    earlier row first on ties."""
    k = max(1, int(percent / 100 * len(labels)))
    ranked = sorted(range(len(labels)), key=lambda i: -scores[i])  # Python's sort is stable
    return k, sum(int(labels[i]) for i in ranked[:k])


@pytest.mark.parametrize("n, percent, k", [(1, 5, 1), (19, 5, 1), (20, 5, 1), (39, 5, 1), (40, 5, 2),
                                           (60, 5, 3), (100, 5, 5), (119, 5, 5), (7, 50, 3)])
def test_top_k_is_the_official_floor_but_at_least_one(n, percent, k):
    assert metrics.top_k(n, percent) == k


def test_top_k_equals_the_official_float_expression():
    n = np.arange(20, 100_000, 7)  # from 20 candidates on, where the official k is not 0
    assert [metrics.top_k(int(m)) for m in n] == list((0.05 * n).astype(int))


def test_campaign_metrics_match_independent_computation():
    rng = np.random.default_rng(0)
    for n in (7, 40, 333):
        labels = (rng.random(n) < 0.3).astype(np.int8)
        labels[:2] = [0, 1]
        scores = np.round(rng.random(n), 1)  # many ties, at the top-k cut too
        got = metrics.campaign_metrics(labels, scores)
        k, hits = top_hits_by_hand(labels, scores, 5)
        assert got["rows"] == n and got["positives"] == labels.sum()
        assert got["auc"] == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)
        assert got["precision"] == pytest.approx(hits / k) and got["recall"] == pytest.approx(hits / labels.sum())


def test_ties_at_the_cut_go_to_the_earlier_row():
    labels = np.array([0, 1] + [0] * 18)
    scores = np.array([0.9, 0.9] + [0.1] * 18)  # k = 1: of the two 0.9s, row 0 (a negative) ranks first
    assert metrics.campaign_metrics(labels, scores)["precision"] == 0
    assert metrics.campaign_metrics(labels[::-1].copy(), scores[::-1].copy())["precision"] == 1
    assert metrics.campaign_metrics(labels[[1, 0] + list(range(2, 20))], scores)["precision"] == 1


def test_one_class_campaigns_are_nan_and_left_out_of_gauc():
    rng = np.random.default_rng(1)
    parts = [(np.array([1, 0, 1, 0, 0, 1]), rng.random(6)),
             (np.ones(5, dtype=int), rng.random(5)),    # all positive: AUC undefined
             (np.zeros(4, dtype=int), rng.random(4)),   # all negative: AUC and recall undefined
             (np.array([0, 1, 1, 0, 0, 0, 1, 0]), rng.random(8))]
    campaigns = [{"campaign": i, **metrics.campaign_metrics(l, s)} for i, (l, s) in enumerate(parts)]
    assert math.isnan(campaigns[1]["auc"]) and math.isnan(campaigns[2]["auc"])
    assert math.isnan(campaigns[2]["recall"]) and campaigns[1]["recall"] == pytest.approx(1 / 5)
    labels = np.concatenate([l for l, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    with pytest.warns(UserWarning, match=r"2 of 4 campaigns .*\[1, 2\]"):
        overall = metrics.overall_metrics(campaigns, labels, scores)
    assert overall["auc"] == pytest.approx(pairwise_auc(labels, scores))
    assert overall["gauc"] == pytest.approx((pairwise_auc(*parts[0]) + pairwise_auc(*parts[3])) / 2)
    assert overall["gauc_campaigns"] == 2 and overall["campaigns"] == 4
    assert overall["rows"] == 23 and overall["positives"] == labels.sum()
    hand = [top_hits_by_hand(l, s, 5) for l, s in parts]
    assert overall["precision"] == pytest.approx(np.mean([h / k for k, h in hand]))
    assert overall["recall"] == pytest.approx(np.mean([hand[i][1] / parts[i][0].sum() for i in (0, 1, 3)]))


def test_all_campaigns_one_class_gives_nan_without_crashing():
    campaigns = [{"campaign": 3, **metrics.campaign_metrics(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]))}]
    with pytest.warns(UserWarning):
        overall = metrics.overall_metrics(campaigns, np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(overall["auc"]) and math.isnan(overall["gauc"]) and math.isnan(overall["recall"])
    assert overall["precision"] == 0


def test_broken_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        metrics.campaign_metrics(np.array([0, 1]), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="as many scores"):
        metrics.campaign_metrics(np.array([0, 1]), np.array([0.5]))


def test_format_table_aligns_columns_and_shows_nan_as_dash():
    text = metrics.format_table(("split", "AUC"), [("test_hot", 0.71234), ("c", float("nan"))])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["test_hot", "0.7123"] and lines[3].split() == ["c", "-"]
