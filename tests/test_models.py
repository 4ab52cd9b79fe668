"""The baseline model folders (models/*): forward passes against NumPy, new-campaign blocks, training hooks."""
import importlib.util
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_readers import MAX_IDXS_LIST, make_stage  # noqa: E402
from tools.utils import schema as S  # noqa: E402
from tools.utils.paddle_env import paddle  # noqa: E402

from models import common  # noqa: E402

HP = {"max_idxs": MAX_IDXS_LIST, "embed_dim": 4, "mlp_dims": [5, 3], "num_expert": 3, "num_output": 2,
      "local_test_learning_rate": 0.01, "optimizer": {"class": "adam", "learning_rate": 0.01}}
CAMPAIGNS = np.array([3, 7, 9], dtype=np.int32)


def folder_module(name):
    spec = importlib.util.spec_from_file_location(f"test_models_{name}",
                                                  os.path.join(ROOT, "models", name, "dygraph_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def batch():
    paddle.seed(5)
    return make_stage(np.random.default_rng(1), {3: 6, 7: 5})


def np_params(layer):
    return {k: np.array(v, dtype=np.float64) for k, v in layer.state_dict().items()}


def np_embed(w, batch, prefix):
    """[B, 20 * D]: static lookups, the mean of each list's first `length` ids, ad lookups (NumPy)."""
    def table(field):
        return w[f"{prefix}emb_{field}"]
    cols = [table(f)[batch["static"][:, j]] for j, f in enumerate(S.STATIC_FIELDS)]
    for j, f in enumerate(S.DYNAMIC_FIELDS):
        ids = batch["dynamic"][:, S.DYNAMIC_OFFSETS[j]:S.DYNAMIC_OFFSETS[j + 1]]
        lengths = batch["lengths"][:, j]
        cols.append(np.stack([table(f)[ids[r, :n]].mean(axis=0) if n else np.zeros(table(f).shape[1])
                              for r, n in enumerate(lengths)]))
    cols += [table(f)[batch["ad"][:, j]] for j, f in enumerate(S.AD_FIELDS)]
    return np.concatenate(cols, axis=1)


def np_mlp(w, x, prefix, layers):
    for k in range(layers):  # nn.Sequential: Linear at 0, 2, ..., ReLU between
        x = np.maximum(x @ w[f"{prefix}{2 * k}.weight"] + w[f"{prefix}{2 * k}.bias"], 0)
    return x


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def feeds_of(model, batch):
    return model.create_feeds(batch)


def test_shared_mlp_net_matches_numpy(batch):
    mod = folder_module("mlp_pretrain")
    model = mod.DygraphModel()
    net = model.create_model({"hyper_parameters": HP})
    w = np_params(net)
    want = sigmoid(np_mlp(w, np_embed(w, batch, "embedding."), "tower.", 2) @ w["head.weight"] + w["head.bias"])
    np.testing.assert_allclose(np.asarray(net(feeds_of(model, batch))), want[:, 0], rtol=1e-5)


def test_lr_starts_at_zero_and_matches_numpy(batch):
    mod = folder_module("lr")
    model = mod.DygraphModel()
    net = model.create_model({"hyper_parameters": HP})
    assert model.trains_across_campaigns is False
    np.testing.assert_array_equal(np.asarray(net(feeds_of(model, batch))), 0.5)
    for p in net.parameters():
        p.set_value(paddle.uniform(p.shape, min=-1, max=1))
    w = np_params(net)
    want = sigmoid(np_embed(w, batch, "weights.").sum(axis=1) + w["bias"])
    np.testing.assert_allclose(np.asarray(net(feeds_of(model, batch))), want, rtol=1e-5)


def randomise_new_offsets(net):
    """Give the new-campaign offsets values, so the test sees whether they are used."""
    for name, p in net.named_parameters():
        if name.endswith("new_offset"):
            p.set_value(paddle.uniform(p.shape, min=-1, max=1))


def campaign_config(monkeypatch):
    monkeypatch.setattr(common, "training_campaigns", lambda config: CAMPAIGNS)
    return {"hyper_parameters": HP}


def test_shared_bottom_heads_and_the_new_head_is_the_mean(batch, monkeypatch):
    mod = folder_module("shared_bottom")
    model = mod.DygraphModel()
    net = model.create_model(campaign_config(monkeypatch))
    feeds = feeds_of(model, batch)
    w = np_params(net)
    hidden = np_mlp(w, np_embed(w, batch, "embedding."), "bottom.", 2)
    heads_w, heads_b = w["head_w.trained"], w["head_b.trained"]
    assert heads_w.shape == (3, 3) and heads_b.shape == (3, 1)
    for k in range(3):
        np.testing.assert_allclose(np.asarray(net(feeds, k)), sigmoid(hidden @ heads_w[k] + heads_b[k]), rtol=1e-5)
    mean_head = sigmoid(hidden @ heads_w.mean(axis=0) + heads_b.mean(axis=0))
    np.testing.assert_allclose(np.asarray(net(feeds)), mean_head, rtol=1e-5)  # a new campaign: the mean
    randomise_new_offsets(net)
    w = np_params(net)
    shifted = sigmoid(hidden @ (heads_w.mean(axis=0) + w["head_w.new_offset"])
                      + heads_b.mean(axis=0) + w["head_b.new_offset"])
    np.testing.assert_allclose(np.asarray(net(feeds)), shifted, rtol=1e-5)


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_mmoe_gates_and_the_new_gate_is_the_mean(batch, monkeypatch):
    mod = folder_module("mmoe")
    model = mod.DygraphModel()
    net = model.create_model(campaign_config(monkeypatch))
    feeds = feeds_of(model, batch)
    w = np_params(net)
    x = np_embed(w, batch, "embedding.")
    experts = np.stack([np_mlp(w, x, f"experts.{e}.", 2) for e in range(3)], axis=1)  # [B, E, H]

    def want(gate_w, gate_b):
        mixed = (experts * np_softmax(x @ gate_w + gate_b)[:, :, None]).sum(axis=1)
        return sigmoid(mixed @ w["head.weight"] + w["head.bias"])[:, 0]
    for k in range(3):
        np.testing.assert_allclose(np.asarray(net(feeds, k)), want(w["gate_w.trained"][k], w["gate_b.trained"][k]),
                                   rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net(feeds)), want(w["gate_w.trained"].mean(axis=0),
                                                            w["gate_b.trained"].mean(axis=0)), rtol=1e-5)


def test_pretraining_routes_each_pair_to_its_campaign_and_rejects_unknown_ones(batch, monkeypatch):
    mod = folder_module("shared_bottom")
    model = mod.DygraphModel()
    net = model.create_model(campaign_config(monkeypatch))
    rows = {k: v[batch["aid"] == 7] for k, v in batch.items()}
    loss, _ = model.train_forward(net, [(rows, rows)], {"hyper_parameters": HP})
    loss.backward()
    grad = np.asarray(net.head_w.trained.grad)
    assert np.abs(grad[1]).sum() > 0 and not grad[[0, 2]].any()  # only campaign 7's head (index 1) learns
    assert net.head_w.new_offset.grad is None  # a new campaign's block is left at zero by pre-training
    other = {k: v[batch["aid"] == 3] for k, v in batch.items()}
    other["aid"] = np.full_like(other["aid"], 4)
    with pytest.raises(ValueError, match="campaign 4 is not among the 3 training campaigns"):
        model.train_forward(net, [(other, other)], {"hyper_parameters": HP})


def test_fine_tuning_a_new_campaign_moves_only_its_offset(batch, monkeypatch):
    """Test-time head = mean of the trained heads + an offset from zero; Adam moves the offset only."""
    mod = folder_module("shared_bottom")
    model = mod.DygraphModel()
    config = {"hyper_parameters": HP}
    net = model.create_model(campaign_config(monkeypatch))
    before = np_params(net)
    optimizer = model.create_optimizer(net, config, learning_rate=0.01)
    loss, _ = model.infer_train_forward(net, batch, config)
    loss.backward()
    optimizer.step()
    after = np_params(net)
    for name in ("head_w.trained", "head_b.trained"):
        np.testing.assert_array_equal(after[name], before[name])
    assert np.abs(after["head_w.new_offset"]).sum() > 0


def test_pretrained_embeddings_are_frozen_and_the_new_tower_is_fresh(batch):
    mod = folder_module("mlp_pretrained_emb")
    model = mod.DygraphModel()
    net = model.create_model({"hyper_parameters": HP})
    feeds = feeds_of(model, batch)
    w = np_params(net)
    x = np_embed(w, batch, "embedding.")
    pre = sigmoid(np_mlp(w, x, "tower.", 2) @ w["head.weight"] + w["head.bias"])[:, 0]
    new = sigmoid(np_mlp(w, x, "new_tower.", 2) @ w["new_head.weight"] + w["new_head.bias"])[:, 0]
    np.testing.assert_allclose(np.asarray(model.pretrain_forward(net, feeds, 3)), pre, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net(feeds)), new, rtol=1e-5)
    loss, _ = model.infer_train_forward(net, batch, {"hyper_parameters": HP})
    loss.backward()
    assert all(p.grad is None for p in net.embedding.parameters())
    assert all(p.grad is None for p in net.tower.parameters())
    assert all(p.grad is not None for p in net.new_tower.parameters())


def test_no_meta_pretraining_is_the_mean_pair_loss_of_metaheacs_net(batch):
    mod = folder_module("metaheac_no_meta")
    model = mod.DygraphModel()
    net = model.create_model({"hyper_parameters": HP})
    assert type(net).__name__ == "MetaHeacNet"
    pairs = [({k: v[batch["aid"] == a][:2] for k, v in batch.items()},
              {k: v[batch["aid"] == a][2:] for k, v in batch.items()}) for a in (3, 7)]
    loss, _ = model.train_forward(net, pairs, {"hyper_parameters": HP})
    want = []
    for support, query in pairs:
        labels = np.concatenate([support["label"], query["label"]]).astype(np.float64)
        p = np.clip(np.concatenate([np.asarray(net(feeds_of(model, b))) for b in (support, query)]), 1e-7, 1 - 1e-7)
        want.append(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp_pretrain", "shared_bottom", "mmoe", "mlp_pretrained_emb"])
def test_baseline_tables_start_standard_normal_as_metaheacs(name, monkeypatch):
    monkeypatch.setattr(common, "training_campaigns", lambda config: CAMPAIGNS)
    big = [[3] * 7, [124, 82, 12, 20000, 5000, 2000, 2000], [78, 137, 14, 39, 32, 3]]
    paddle.seed(4)
    net = folder_module(name).DygraphModel().create_model({"hyper_parameters": {**HP, "max_idxs": big,
                                                                                 "embed_dim": 16}})
    kw1 = net.embedding.emb_kw1.numpy()  # 320 k draws
    assert abs(kw1.std() - 1) < 0.01 and abs(kw1.mean()) < 0.01
    assert abs((np.abs(kw1) < 1).mean() - 0.6827) < 0.01
