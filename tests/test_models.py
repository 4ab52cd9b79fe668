"""The baseline model folders (models/*): forward passes against NumPy, new-campaign blocks, training hooks."""
import importlib

import numpy as np
import pytest

import net as net_module
from helpers import MAX_IDXS_LIST, bce, make_stage, schema
from tools.utils.data.schema import AD_FIELDS, DYNAMIC_FIELDS, DYNAMIC_OFFSETS, STATIC_FIELDS
from tools.utils.data.dataset import make_schema
from tools.utils.paddle_env import paddle

HP = {"max_idxs": MAX_IDXS_LIST, "embed_dim": 4, "embedding_init": "normal", "mlp_dims": [5, 3], "num_expert": 3,
      "num_output": 2, "local_test_learning_rate": 0.01, "optimizer": {"class": "adam", "learning_rate": 0.01}}
CAMPAIGNS = [3, 7, 9]
CONFIG = {"hyper_parameters": HP, "data_schema": schema(), "train_campaigns": CAMPAIGNS}


def built(name, config=CONFIG):
    """(model hooks, network) of the model folder models/<name>."""
    model = importlib.import_module(f"models.{name}.dygraph_model").DygraphModel()
    return model, model.create_model(config)


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
    cols = [table(f)[batch["static"][:, j]] for j, f in enumerate(STATIC_FIELDS)]
    for j, f in enumerate(DYNAMIC_FIELDS):
        ids = batch["dynamic"][:, DYNAMIC_OFFSETS[j]:DYNAMIC_OFFSETS[j + 1]]
        lengths = batch["lengths"][:, j]
        cols.append(np.stack([table(f)[ids[r, :n]].mean(axis=0) if n else np.zeros(table(f).shape[1])
                              for r, n in enumerate(lengths)]))
    cols += [table(f)[batch["ad"][:, j]] for j, f in enumerate(AD_FIELDS)]
    return np.concatenate(cols, axis=1)


def np_mlp(w, x, prefix, layers):
    for k in range(layers):  # nn.Sequential: Linear at 0, 2, ..., ReLU between
        x = np.maximum(x @ w[f"{prefix}{2 * k}.weight"] + w[f"{prefix}{2 * k}.bias"], 0)
    return x


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_shared_mlp_net_matches_numpy(batch):
    model, net = built("mlp_pretrain")
    w = np_params(net)
    want = sigmoid(np_mlp(w, np_embed(w, batch, "embedding."), "tower.", 2) @ w["head.weight"] + w["head.bias"])
    np.testing.assert_allclose(np.asarray(net(model.create_feeds(batch))), want[:, 0], rtol=1e-5)


def test_lr_starts_at_zero_and_matches_numpy(batch):
    model, net = built("lr")
    assert model.trains_across_campaigns is False
    np.testing.assert_array_equal(np.asarray(net(model.create_feeds(batch))), 0.5)
    for p in net.parameters():
        p.set_value(paddle.uniform(p.shape, min=-1, max=1))
    w = np_params(net)
    want = sigmoid(np_embed(w, batch, "weights.").sum(axis=1) + w["bias"])
    np.testing.assert_allclose(np.asarray(net(model.create_feeds(batch))), want, rtol=1e-5)


def randomise_new_offsets(net):
    """Give the new-campaign offsets values, so the test sees whether they are used."""
    for name, p in net.named_parameters():
        if name.endswith("new_offset"):
            p.set_value(paddle.uniform(p.shape, min=-1, max=1))


def test_shared_bottom_heads_and_the_new_head_is_the_mean(batch):
    model, net = built("shared_bottom")
    feeds = model.create_feeds(batch)
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


def test_mmoe_gates_and_the_new_gate_is_the_mean(batch):
    model, net = built("mmoe")
    feeds = model.create_feeds(batch)
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


def test_pretraining_routes_each_pair_to_its_campaign_and_rejects_unknown_ones(batch):
    model, net = built("shared_bottom")
    rows = {k: v[batch["aid"] == 7] for k, v in batch.items()}
    loss, _ = model.train_forward(net, [(rows, rows)], CONFIG)
    loss.backward()
    grad = np.asarray(net.head_w.trained.grad)
    assert np.abs(grad[1]).sum() > 0 and not grad[[0, 2]].any()  # only campaign 7's head (index 1) learns
    assert net.head_w.new_offset.grad is None  # a new campaign's block is left at zero by pre-training
    other = {k: v[batch["aid"] == 3] for k, v in batch.items()}
    other["aid"] = np.full_like(other["aid"], 4)
    with pytest.raises(ValueError, match="campaign 4 is not among the 3 training campaigns"):
        model.train_forward(net, [(other, other)], CONFIG)


def test_fine_tuning_a_new_campaign_moves_only_its_offset(batch):
    """Test-time head = mean of the trained heads + an offset from zero; Adam moves the offset only."""
    model, net = built("shared_bottom")
    config = CONFIG
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
    model, net = built("mlp_pretrained_emb")
    feeds = model.create_feeds(batch)
    w = np_params(net)
    x = np_embed(w, batch, "embedding.")
    pre = sigmoid(np_mlp(w, x, "tower.", 2) @ w["head.weight"] + w["head.bias"])[:, 0]
    new = sigmoid(np_mlp(w, x, "new_tower.", 2) @ w["new_head.weight"] + w["new_head.bias"])[:, 0]
    np.testing.assert_allclose(np.asarray(model.pretrain_forward(net, feeds, 3)), pre, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net(feeds)), new, rtol=1e-5)
    loss, _ = model.infer_train_forward(net, batch, CONFIG)
    loss.backward()
    assert all(p.grad is None for p in net.embedding.parameters())
    assert all(p.grad is None for p in net.tower.parameters())
    assert all(p.grad is not None for p in net.new_tower.parameters())


def test_no_meta_pretraining_is_the_mean_pair_loss_of_metaheacs_net(batch):
    model, net = built("metaheac_no_meta")
    assert isinstance(net, net_module.MetaHeacNet)
    pairs = [({k: v[batch["aid"] == a][:2] for k, v in batch.items()},
              {k: v[batch["aid"] == a][2:] for k, v in batch.items()}) for a in (3, 7)]
    loss, _ = model.train_forward(net, pairs, CONFIG)
    want = []
    for support, query in pairs:
        labels = np.concatenate([support["label"], query["label"]]).astype(np.float64)
        want.append(bce(np.concatenate([np.asarray(net(model.create_feeds(b))) for b in (support, query)]), labels))
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp_pretrain", "shared_bottom", "mmoe", "mlp_pretrained_emb"])
def test_baseline_tables_start_standard_normal_as_metaheacs(name):
    big = {"static": [3] * 7, "dynamic": [124, 82, 12, 20000, 5000, 2000, 2000], "ad": [78, 137, 14, 39, 32, 3]}
    paddle.seed(4)
    _, net = built(name, {**CONFIG, "hyper_parameters": {**HP, "embed_dim": 16}, "data_schema": make_schema(big)})
    kw1 = net.embedding.emb_kw1.numpy()  # 320 k draws
    assert abs(kw1.std() - 1) < 0.01 and abs(kw1.mean()) < 0.01
    assert abs((np.abs(kw1) < 1).mean() - 0.6827) < 0.01
