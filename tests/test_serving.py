"""The exported campaign model (tools/utils/serving.py, serving_net.py)."""
import json
import os

import numpy as np

import net as net_module
from helpers import TINY_HP, layout, random_batch
from models import layers
from tools.utils import schema as S
from tools.utils import serving
from tools.utils.paddle_env import paddle
from tools.utils.serving_net import MetaHeacCampaign

USER_INPUTS = ("static", "dynamic", "lengths")


def feeds_of(batch, ad_ids):
    ad = np.tile(np.asarray(ad_ids, np.int64), (len(batch["label"]), 1))
    return {**{k: paddle.to_tensor(batch[k].astype(np.int64)) for k in USER_INPUTS}, "ad": paddle.to_tensor(ad)}


def batches(rng):
    """Random users (row 0: every list empty, row 1: every list full), padding past the lengths filled with
    other valid ids (never read), a batch of one user and a batch where no user has a list."""
    mixed = random_batch(rng, 64)
    past = np.arange(S.DYNAMIC_WIDTH)[None] >= np.repeat(mixed["lengths"], S.DYNAMIC_WIDTHS, axis=1)
    mixed["dynamic"] = np.where(past, random_batch(rng, 64)["dynamic"], mixed["dynamic"])
    empty = random_batch(rng, 5)
    empty["lengths"][:] = 0
    return [mixed, random_batch(rng, 3), {k: v[:1] for k, v in mixed.items()}, empty]


def test_the_exported_metaheac_scorer_equals_the_training_network(tmp_path):
    paddle.seed(5)
    net = net_module.MetaHeacNet(layout(), **TINY_HP)
    net.eval()
    rng = np.random.default_rng(4)
    ad_ids = random_batch(rng, 1)["ad"][0]
    program, _ = serving.export(net, ad_ids, str(tmp_path), {"campaign": 7, "data_schema": {}})
    predictor = serving.predictor(str(tmp_path))
    scorer = MetaHeacCampaign(net, ad_ids)
    for batch in batches(rng):
        with paddle.no_grad():
            expected = net(feeds_of(batch, ad_ids)).numpy()
            rearranged = scorer(*(paddle.to_tensor(batch[k].astype(np.int64)) for k in USER_INPUTS)).numpy()
        served = serving.predict(predictor, *(batch[k] for k in USER_INPUTS))
        np.testing.assert_allclose(rearranged, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    ops = json.dumps(json.load(open(program)))
    assert "masked_select" in ops and "index_add" in ops  # the lists are pooled by net.py's own code


def test_another_network_is_exported_as_it_is(tmp_path):
    paddle.seed(6)
    net = layers.MLPNet(layout(), 4, [5])
    net.eval()
    rng = np.random.default_rng(8)
    ad_ids = random_batch(rng, 1)["ad"][0]
    serving.export(net, ad_ids, str(tmp_path), {"data_schema": {}})
    batch = batches(rng)[0]
    with paddle.no_grad():
        expected = net(feeds_of(batch, ad_ids)).numpy()
    served = serving.predict(serving.predictor(str(tmp_path)), *(batch[k] for k in USER_INPUTS))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
