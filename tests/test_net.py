"""The MetaHeac forward pass against an independent NumPy implementation of the equations."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.utils.paddle_env import paddle  # noqa: E402
from tools.utils import schema as S  # noqa: E402
import net as net_module  # noqa: E402

TINY_MAX_IDXS = [[3, 2, 9, 5, 7, 2, 1], [12, 8, 6, 30, 20, 11, 9], [7, 13, 4, 3, 3, 3]]
TINY_HP = dict(max_idxs=TINY_MAX_IDXS, embed_dim=4, mlp_dims=[5, 6], num_expert=3, num_output=2)


def random_batch(rng, n, max_idxs=TINY_MAX_IDXS):
    """n rows of valid random ids; the first rows get lists of length 0 and full width."""
    lengths = np.stack([rng.integers(0, w + 1, n) for w in S.DYNAMIC_WIDTHS], axis=1)
    lengths[0] = 0
    lengths[1] = S.DYNAMIC_WIDTHS
    return {
        "label": rng.integers(0, 2, n).astype(np.int8),
        "aid": np.zeros(n, np.int32),
        "static": np.stack([rng.integers(0, m + 1, n) for m in max_idxs[0]], axis=1).astype(np.int32),
        "dynamic": np.concatenate([rng.integers(0, m + 1, (n, w)) for m, w in zip(max_idxs[1], S.DYNAMIC_WIDTHS)],
                                  axis=1).astype(np.int32),
        "lengths": lengths.astype(np.int32),
        "ad": np.stack([rng.integers(0, m + 1, n) for m in max_idxs[2]], axis=1).astype(np.int32),
    }


def to_feeds(batch):
    return {k: paddle.to_tensor(batch[k].astype(np.int64)) for k in ("static", "dynamic", "lengths", "ad")}


def numpy_forward(w, batch, num_expert, mlp_dims):
    """The paper's equations, written row by row and expert by expert."""
    n = len(batch["label"])
    dim = w["emb_carrier"].shape[1]
    user = [w["emb_" + f][batch["static"][:, j]] for j, f in enumerate(S.STATIC_FIELDS)]
    for j, f in enumerate(S.DYNAMIC_FIELDS):
        pooled = np.zeros((n, dim))
        for i in range(n):
            length = batch["lengths"][i, j]
            if length:
                ids = batch["dynamic"][i, S.DYNAMIC_OFFSETS[j]:S.DYNAMIC_OFFSETS[j] + length]
                pooled[i] = w["emb_" + f][ids].mean(axis=0)
        user.append(pooled)
    ad = [w["emb_" + f][batch["ad"][:, j]] for j, f in enumerate(S.AD_FIELDS)]
    user_vec = np.concatenate(user, axis=1)
    task_vec = np.concatenate([np.mean(user, axis=0)] + ad, axis=1)

    def relu(x):
        return np.maximum(x, 0)

    def gate(prefix):
        z = relu(task_vec @ w[prefix + "_w0"] + w[prefix + "_b0"]) @ w[prefix + "_w1"] + w[prefix + "_b1"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    expert_gate, mixed = gate("expert_gate"), 0
    h0 = mlp_dims[0]
    for e in range(num_expert):
        h = relu(user_vec @ w["expert_w0"][:, e * h0:(e + 1) * h0] + w["expert_b0"][e * h0:(e + 1) * h0])
        for k in range(1, len(mlp_dims)):
            h = relu(h @ w[f"expert_w{k}"][e] + w[f"expert_b{k}"][e, 0])
        mixed = mixed + expert_gate[:, e:e + 1] * h
    critics = 1 / (1 + np.exp(-(mixed @ w["critic_w"] + w["critic_b"])))
    return (critics * gate("critic_gate")).sum(axis=1)


@pytest.fixture
def net():
    paddle.seed(3)
    return net_module.MetaHeacNet(**TINY_HP)


def test_forward_matches_numpy_equations(net):
    batch = random_batch(np.random.default_rng(1), 9)
    weights = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    expected = numpy_forward(weights, batch, TINY_HP["num_expert"], TINY_HP["mlp_dims"])
    got = net(to_feeds(batch)).numpy()
    assert got.shape == (9,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_rows_without_any_list_id(net):
    """A batch where every list is empty (nothing to pool), also as a single row."""
    batch = random_batch(np.random.default_rng(7), 4)
    batch["lengths"][:] = 0
    weights = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    expected = numpy_forward(weights, batch, TINY_HP["num_expert"], TINY_HP["mlp_dims"])
    np.testing.assert_allclose(net(to_feeds(batch)).numpy(), expected, rtol=1e-5, atol=1e-6)
    first = {k: v[:1] for k, v in batch.items()}
    np.testing.assert_allclose(net(to_feeds(first)).numpy(), expected[:1], rtol=1e-5, atol=1e-6)


def test_pooling_ignores_ids_past_length(net):
    rng = np.random.default_rng(2)
    batch = random_batch(rng, 6)
    changed = {**batch, "dynamic": batch["dynamic"].copy()}
    past_end = np.arange(S.DYNAMIC_WIDTH)[None, :] - np.repeat(S.DYNAMIC_OFFSETS[:-1], S.DYNAMIC_WIDTHS)[None, :] \
        >= np.repeat(batch["lengths"], S.DYNAMIC_WIDTHS, axis=1)
    changed["dynamic"][past_end] = 0
    np.testing.assert_array_equal(net(to_feeds(batch)).numpy(), net(to_feeds(changed)).numpy())
    inside = {**batch, "dynamic": batch["dynamic"].copy()}
    inside["dynamic"][1, 0] = (inside["dynamic"][1, 0] + 1) % (TINY_MAX_IDXS[1][0] + 1)  # row 1 has full lists
    assert not np.allclose(net(to_feeds(batch)).numpy()[1], net(to_feeds(inside)).numpy()[1])


def test_params_mapping_equals_setting_the_values(net):
    batch = random_batch(np.random.default_rng(4), 7)
    rng = np.random.default_rng(5)
    new = {name: rng.normal(0, 0.3, p.shape).astype(np.float32) for name, p in net.named_parameters()}
    before = net(to_feeds(batch)).numpy()
    via_mapping = net(to_feeds(batch), params={k: paddle.to_tensor(v) for k, v in new.items()}).numpy()
    assert np.abs(via_mapping - before).max() > 1e-3
    np.testing.assert_array_equal(net(to_feeds(batch)).numpy(), before)  # the layer itself is untouched
    for name, p in net.named_parameters():
        p.set_value(new[name])
    np.testing.assert_allclose(net(to_feeds(batch)).numpy(), via_mapping, rtol=1e-6, atol=1e-7)


def test_gathered_rows_with_remapped_ids_equal_full_tables(net):
    batch = random_batch(np.random.default_rng(6), 8)
    columns = {"static": [(j, j + 1) for j in range(7)], "ad": [(j, j + 1) for j in range(6)],
               "dynamic": list(zip(S.DYNAMIC_OFFSETS[:-1], S.DYNAMIC_OFFSETS[1:]))}
    fields = {"static": S.STATIC_FIELDS, "dynamic": S.DYNAMIC_FIELDS, "ad": S.AD_FIELDS}
    remapped, rows = {**batch}, {}
    for group, spans in columns.items():
        remapped[group] = batch[group].copy()
        for field, (lo, hi) in zip(fields[group], spans):
            used = np.unique(batch[group][:, lo:hi])
            remapped[group][:, lo:hi] = np.searchsorted(used, batch[group][:, lo:hi])
            rows["emb_" + field] = paddle.gather(getattr(net, "emb_" + field), paddle.to_tensor(used))
    assert rows["emb_kw1"].shape[0] < net.emb_kw1.shape[0]
    np.testing.assert_allclose(net(to_feeds(remapped), params=rows).numpy(), net(to_feeds(batch)).numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad, words", [
    ([[1] * 7, [1] * 7], "3 lists"),
    ([[1] * 7, [1] * 6, [1] * 6], "dynamic entry must be 7"),
    ([[1] * 7, [1] * 7, [1, 1, 1, 1, 1, -1]], "non-negative"),
])
def test_bad_max_idxs_are_named(bad, words):
    with pytest.raises(ValueError, match="max_idxs") as err:
        net_module.MetaHeacNet(bad, embed_dim=4, mlp_dims=[4, 4], num_expert=2, num_output=2)
    assert words in str(err.value)


def test_tables_start_standard_normal_as_the_official_code_and_dense_layers_as_torch():
    """The official tables are plain torch.nn.Embedding: N(0, 1). Linear: uniform +-1/sqrt(fan_in)."""
    paddle.seed(3)
    big = net_module.MetaHeacNet([S.TENCENT_MAX_IDXS[g] for g in ("static", "dynamic", "ad")])
    for name in ("emb_kw1", "emb_kw2", "emb_topic1"):  # 640 k to 16.9 M draws each
        table = getattr(big, name).numpy().astype(np.float64)
        assert abs(table.std() - 1) < 0.005 and abs(table.mean()) < 0.005, name
        assert abs((np.abs(table) < 1).mean() - 0.6827) < 0.005, name  # normal, not a uniform of std 1
    w0 = big.expert_w0.numpy()
    bound = 1 / np.sqrt(w0.shape[0])
    assert np.abs(w0).max() <= bound and np.abs(w0).max() > 0.99 * bound


def test_xavier_start_is_an_option_and_unknown_starts_are_named():
    paddle.seed(3)
    net = net_module.MetaHeacNet(TINY_MAX_IDXS, embedding_init="xavier_uniform", **{
        k: v for k, v in TINY_HP.items() if k != "max_idxs"})
    kw1 = net.emb_kw1.numpy()
    bound = np.sqrt(6 / (kw1.shape[0] + kw1.shape[1]))
    assert np.abs(kw1).max() <= bound and np.abs(kw1).max() > 0.8 * bound
    with pytest.raises(ValueError, match="embedding_init is 'xavier'.*normal"):
        net_module.MetaHeacNet(TINY_MAX_IDXS, embedding_init="xavier")
