"""The look-alike pieces: the wide part (a logistic regression on the seeds' ids) against scikit-learn on
features built independently, its scaling beside MetaHeac's logit, the centroid baseline against NumPy, and the
background negatives."""
import importlib
import time

import numpy as np
import pytest

import dygraph_model
import net as net_module
from helpers import TINY_HP, layout, random_batch, schema
from tools.utils.data import background
from tools.utils.paddle_env import paddle


def labelled(rng, n, positives):
    batch = random_batch(rng, n)
    batch["label"] = np.zeros(n, np.int8)
    batch["label"][rng.choice(n, positives, replace=False)] = 1
    batch["uid"] = np.arange(n, dtype=np.int64) + 1000
    batch["ad"][:] = batch["ad"][0]  # one campaign
    batch["aid"][:] = 7
    return batch


def named_features(batch, lay):
    """What a practitioner builds: {'<field>=<id>': count} per user, read from the arrays column by column."""
    users = []
    for i in range(len(batch["label"])):
        features = {f"{field}={batch['static'][i, j]}": 1.0 for j, field in enumerate(lay.static)}
        for j, field in enumerate(lay.lists):
            lo = lay.list_offsets[j]
            for k in range(batch["lengths"][i, j]):
                key = f"{field}={batch['dynamic'][i, lo + k]}"
                features[key] = features.get(key, 0.0) + 1.0
        users.append(features)
    return users


def probabilities(net, batch):
    with paddle.no_grad():
        return net(dygraph_model.create_feeds(batch)).numpy().astype(np.float64)


def test_the_wide_part_is_scikit_learns_regression_on_the_users_ids():
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    rng, lay = np.random.default_rng(3), layout()
    seeds, candidates = labelled(rng, 300, 40), labelled(rng, 100, 10)
    for rows in (seeds, candidates):  # two users with a repeated list id: it counts twice on both sides
        rows["dynamic"][:2, 0:2], rows["lengths"][:2, 0] = 5, 2
    absent = seeds["static"][:, 2] == 4  # an id no seed has, in the middle of the columns: its weight is 0
    seeds["static"][absent, 2] = 5
    assert (candidates["static"][:, 2] == 4).sum() >= 5
    lookalike = importlib.import_module("models.lookalike_lr.dygraph_model")
    net = lookalike.DygraphModel().create_model({"data_schema": schema()})
    lookalike.DygraphModel().fit_campaign(net, seeds, {"runner": {"thread_num": 3}})  # the folds' fits on 3 threads
    vectorizer = DictVectorizer()

    def features(rows):  # liblinear takes 32-bit sparse indices; DictVectorizer writes 64-bit ones
        x = vectorizer.transform(named_features(rows, lay))
        x.indices, x.indptr = x.indices.astype(np.int32), x.indptr.astype(np.int32)
        return x

    vectorizer.fit(named_features(seeds, lay) + named_features(candidates, lay))
    reference = LogisticRegressionCV(Cs=list(dygraph_model.WIDE_CS), cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                     scoring="roc_auc", solver="liblinear", max_iter=1000, l1_ratios=(0,),
                                     use_legacy_attributes=False)
    reference.fit(features(seeds), seeds["label"])
    expected = reference.predict_proba(features(candidates))[:, 1]
    np.testing.assert_allclose(probabilities(net, candidates), expected, rtol=0, atol=2e-6)
    assert np.ptp(expected) > 0.05  # a regression that ranks, not all weights regularised away


def test_the_wide_parts_cross_validation_is_logistic_regression_cvs_whatever_the_threads():
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    rng, lay = np.random.default_rng(4), layout()
    seeds = labelled(rng, 400, 60)
    x = dygraph_model.multi_hot(lay, seeds)
    x, folds = x[:, np.unique(x.indices)], StratifiedKFold(5, shuffle=True, random_state=0)
    reference = LogisticRegressionCV(Cs=list(dygraph_model.WIDE_CS), cv=folds, scoring="roc_auc", solver="liblinear",
                                     max_iter=1000, l1_ratios=(0,), use_legacy_attributes=False).fit(x, seeds["label"])
    expected = reference.scores_.reshape(5, len(dygraph_model.WIDE_CS))  # [folds, 1 l1_ratio, Cs]
    assert np.ptp(expected.mean(axis=0)) > 0.01  # the choice of C matters here
    for threads in (1, 4):
        aucs = dygraph_model.held_out_aucs(x, seeds["label"], 5, threads)
        np.testing.assert_allclose(aucs, expected, rtol=0, atol=1e-12)
        assert dygraph_model.WIDE_CS[np.argmax(aucs.sum(axis=0))] == reference.C_


def test_a_failed_cross_validation_fit_drops_the_fits_not_yet_started(monkeypatch):
    rng, lay = np.random.default_rng(4), layout()
    seeds = labelled(rng, 200, 40)
    calls = []

    def failing(x, labels, c):  # the first fit fails; the others take 0.05 s each
        calls.append(c)
        if len(calls) == 1:
            raise MemoryError("a fit that fails")
        time.sleep(0.05)
        return None

    monkeypatch.setattr(dygraph_model, "_liblinear", failing)
    with pytest.raises(MemoryError):
        dygraph_model.held_out_aucs(dygraph_model.multi_hot(lay, seeds), seeds["label"], 5, threads=1)
    assert len(calls) < 10  # the one its thread began while the error came out, not the 55 a pool runs to the end


def test_the_wide_parts_scorer_is_roc_auc_score_with_ties():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(6)
    x, labels = rng.integers(0, 3, (400, 4)).astype(np.float64), rng.integers(0, 2, 400)
    fitted = LogisticRegression().fit(x, labels)  # 81 distinct feature rows: scores tie across users
    scores = fitted.decision_function(x)
    assert len(np.unique(scores)) < 100
    assert dygraph_model.rank_auc(fitted, x, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_the_wide_part_is_put_on_the_networks_scale_on_the_reference_users():
    paddle.seed(1)
    rng, lay = np.random.default_rng(5), layout()
    net = net_module.MetaHeacNet(lay, **TINY_HP)
    net.eval()
    seeds, reference = labelled(rng, 200, 30), labelled(rng, 400, 0)
    model = dygraph_model.DygraphModel()
    config = {"hyper_parameters": {"wide_weight": 2.0}, "runner": {"thread_num": 1}}
    scorer = model.campaign_net(net, seeds, reference, config)
    assert isinstance(scorer, net_module.WideAndDeep)
    deep = dygraph_model.logit(probabilities(net, reference))
    added = dygraph_model.logit(probabilities(scorer, reference)) - deep
    assert abs(added.mean()) < 1e-3 * deep.std()
    np.testing.assert_allclose(added.std(), 2.0 * deep.std(), rtol=1e-3)
    wide = dygraph_model.fit_wide(lay, seeds)
    with paddle.no_grad():
        raw = wide(dygraph_model.create_feeds(reference)).numpy()
    assert np.corrcoef(raw, added)[0, 1] > 0.9999  # the seeds' regression, rescaled
    assert model.campaign_net(net, seeds, reference, {"hyper_parameters": {"wide_weight": 0.0}}) is net
    one_class = {**seeds, "label": np.ones_like(seeds["label"])}
    assert model.campaign_net(net, one_class, reference, config) is net


def test_the_centroid_baseline_is_the_cosine_with_the_mean_positive_seed():
    rng, lay = np.random.default_rng(8), layout()
    seeds, candidates = labelled(rng, 80, 12), distinct_lists(labelled(rng, 50, 5), lay, rng)
    centroid = importlib.import_module("models.lookalike_centroid.dygraph_model")
    model = centroid.DygraphModel()
    net = model.create_model({"data_schema": schema()})
    model.fit_campaign(net, seeds, {})
    x = dygraph_model.multi_hot(lay, seeds).toarray()
    c = x[seeds["label"] == 1].mean(axis=0)
    y = dygraph_model.multi_hot(lay, candidates).toarray()
    expected = y @ c / (np.linalg.norm(y, axis=1) * np.linalg.norm(c))
    np.testing.assert_allclose(probabilities(net, candidates), expected, atol=1e-5)


def distinct_lists(batch, lay, rng):
    """Every list's ids distinct (the norm the centroid net uses is exact for such users)."""
    for j, width in enumerate(lay.list_widths):
        ids = lay.max_idxs[1][j] + 1
        batch["lengths"][:, j] = np.minimum(batch["lengths"][:, j], ids)
        for i in range(len(batch["label"])):
            lo = lay.list_offsets[j]
            batch["dynamic"][i, lo:lo + min(width, ids)] = rng.permutation(ids)[:min(width, ids)]
    return batch


def test_background_negatives_are_never_seeds_nor_users_of_the_pool():
    rng = np.random.default_rng(2)
    users = {"uid": np.arange(500, dtype=np.int64), "static": rng.integers(0, 3, (500, 7)),
             "dynamic": rng.integers(0, 5, (500, 50)), "lengths": rng.integers(0, 5, (500, 7))}
    seeds = labelled(rng, 20, 20)
    seeds["uid"] = np.arange(10, 30, dtype=np.int64)
    pool = np.arange(100, 400, dtype=np.int64)
    rows, drawn = background.with_negatives(seeds, users, 5, pool, np.random.default_rng(0))
    negatives = rows["uid"][rows["label"] == 0]
    assert drawn == len(negatives) == 100 and len(np.unique(negatives)) == 100
    assert not np.isin(negatives, pool).any() and not np.isin(negatives, seeds["uid"]).any()
    assert (rows["aid"] == seeds["aid"][0]).all() and (rows["ad"] == seeds["ad"][0]).all()
    few, drawn = background.with_negatives(seeds, users, 50, pool, np.random.default_rng(0))
    assert drawn == 500 - 300 - 20  # all that is left


@pytest.mark.parametrize("n", [10, 1000])
def test_the_background_sample_is_distinct_users_in_uid_order(n):
    rng = np.random.default_rng(4)
    rows = random_batch(rng, 300)
    rows["uid"] = rng.integers(0, 120, 300)
    users = background.sample(rows, seed=1, n=n)
    assert len(users["uid"]) == min(n, len(np.unique(rows["uid"]))) and (np.diff(users["uid"]) > 0).all()
    first = {uid: i for i, uid in reversed(list(enumerate(rows["uid"])))}
    for k, uid in enumerate(users["uid"]):
        np.testing.assert_array_equal(users["dynamic"][k], rows["dynamic"][first[uid]])
