"""The MetaHeac forward pass against an independent NumPy implementation of the equations."""
import numpy as np
import pytest

import net as net_module
from helpers import MAX_IDXS, TINY_HP, layout, random_batch
from tools.utils.data import schema
from tools.utils.paddle_env import paddle

def to_feeds(batch):
    return {k: paddle.to_tensor(batch[k].astype(np.int64)) for k in ("static", "dynamic", "lengths", "ad")}


def numpy_forward(w, batch, num_expert, mlp_dims):
    """The paper's equations, written row by row and expert by expert."""
    n = len(batch["label"])
    dim = w["emb_carrier"].shape[1]
    user = [w["emb_" + f][batch["static"][:, j]] for j, f in enumerate(schema.STATIC_FIELDS)]
    for j, f in enumerate(schema.DYNAMIC_FIELDS):
        pooled = np.zeros((n, dim))
        for i in range(n):
            length = batch["lengths"][i, j]
            if length:
                ids = batch["dynamic"][i, schema.DYNAMIC_OFFSETS[j]:schema.DYNAMIC_OFFSETS[j] + length]
                pooled[i] = w["emb_" + f][ids].mean(axis=0)
        user.append(pooled)
    ad = [w["emb_" + f][batch["ad"][:, j]] for j, f in enumerate(schema.AD_FIELDS)]
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
    return net_module.MetaHeacNet(layout(), **TINY_HP)


def test_forward_matches_numpy_equations(net):
    batch = random_batch(np.random.default_rng(1), 9)
    weights = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    expected = numpy_forward(weights, batch, TINY_HP["num_expert"], TINY_HP["mlp_dims"])
    got = net(to_feeds(batch)).numpy()
    assert got.shape == (9,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("read", ["embedded", "one-hot", "chosen"])
def test_forward_matches_numpy_equations_whichever_way_fields_are_read(net, monkeypatch, read):
    """A field enters a layer as its embedding or as one-hot rows times its premultiplied table
    (net.FieldInput); every choice of fields computes the NumPy equations, which know neither."""
    counts = {"embedded": lambda rows, dim: 0, "one-hot": lambda rows, dim: len(rows)}
    if read in counts:
        monkeypatch.setattr(net_module, "one_hot_count", counts[read])
    batch = random_batch(np.random.default_rng(4), 11)
    weights = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    expected = numpy_forward(weights, batch, TINY_HP["num_expert"], TINY_HP["mlp_dims"])
    np.testing.assert_allclose(net(to_feeds(batch)).numpy(), expected, rtol=1e-5, atol=1e-6)
    experts, critics = net.gates(to_feeds(batch))
    assert experts.shape == [11, TINY_HP["num_expert"]] and critics.shape == [11, TINY_HP["num_output"]]
    np.testing.assert_allclose(experts.numpy().sum(axis=1), 1, rtol=1e-6)


def test_small_tables_are_read_one_hot_up_to_the_width_of_an_embedding():
    """A one-hot field costs at most its table's rows in columns, an embedded one dim."""
    assert net_module.one_hot_count([856, 3, 2, 6, 8, 3, 4], 64) == 6      # the Tencent single-valued fields
    assert net_module.one_hot_count([1, 1, 1, 1, 1, 1], 64) == 6           # ad fields, one campaign per task
    assert net_module.one_hot_count([300, 200, 100], 64) == 0
    assert net_module.one_hot_count([30, 40, 50], 64) == 3                 # 30 + 40 + 50 < 3 * 64
    assert net_module.one_hot_count([10, 64, 70], 64) == 1                 # 64 rows cost as much as an embedding


def test_one_hot_fields_get_the_columns_of_their_widest_window():
    """Each task reads a window of each one-hot table, from its lowest row to its highest; a field's columns
    are its widest window over the tasks, the rows no task reads get none (net._one_hot_rows)."""
    table_a, table_b = paddle.rand([2 * 10, 3]), paddle.rand([2 * 4, 3])          # 2 tasks, 10 and 4 rows each
    ids_a = np.array([[2], [5], [11], [12]])                                        # windows 2..5 and 11..12
    ids_b = np.array([[0], [3], [4], [4]])                                          # windows 0..3 and 4..4
    ones = np.ones((4, 1))
    one_hot, padded, read = net_module._one_hot_rows([table_a, table_b], [(ids_a, ones), (ids_b, ones)], 2)
    assert one_hot.shape == [2, 2, 4 + 4 + 1] and padded.shape == [2, 2, 4, 3] and read is None
    x = paddle.matmul(one_hot[:, :, :-1], padded.reshape([2, 8, 3])).reshape([4, 3]).numpy()
    np.testing.assert_allclose(x, table_a.numpy()[ids_a[:, 0]] + table_b.numpy()[ids_b[:, 0]], rtol=1e-6)
    ids_b = np.array([[0], [1], [4], [4]])                                          # windows 0..1 and 4..4
    one_hot, padded, read = net_module._one_hot_rows([table_a, table_b], [(ids_a, ones), (ids_b, ones)], 2)
    assert one_hot.shape == [2, 2, 4 + 2 + 1] and padded.shape == [2, 2, 4, 3]
    np.testing.assert_array_equal(read.numpy(), [0, 1, 2, 3, 4, 5])                # b's rows 2, 3 of its windows go
    x = paddle.matmul(one_hot[:, :, :-1], paddle.gather(padded.reshape([2, 8, 3]), read, axis=1)).reshape([4, 3])
    np.testing.assert_allclose(x.numpy(), table_a.numpy()[ids_a[:, 0]] + table_b.numpy()[ids_b[:, 0]], rtol=1e-6)


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
    column = np.arange(schema.DYNAMIC_WIDTH)[None, :] - np.repeat(schema.DYNAMIC_OFFSETS[:-1], schema.DYNAMIC_WIDTHS)
    past_end = column >= np.repeat(batch["lengths"], schema.DYNAMIC_WIDTHS, axis=1)
    changed["dynamic"][past_end] = 0
    np.testing.assert_array_equal(net(to_feeds(batch)).numpy(), net(to_feeds(changed)).numpy())
    inside = {**batch, "dynamic": batch["dynamic"].copy()}
    inside["dynamic"][1, 0] = (inside["dynamic"][1, 0] + 1) % (MAX_IDXS["dynamic"][0] + 1)  # row 1: full lists
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
               "dynamic": list(zip(schema.DYNAMIC_OFFSETS[:-1], schema.DYNAMIC_OFFSETS[1:]))}
    remapped, rows = {**batch}, {}
    for group, spans in columns.items():
        remapped[group] = batch[group].copy()
        for field, (lo, hi) in zip(schema.GROUP_FIELDS[group], spans):
            used = np.unique(batch[group][:, lo:hi])
            remapped[group][:, lo:hi] = np.searchsorted(used, batch[group][:, lo:hi])
            rows["emb_" + field] = paddle.gather(getattr(net, "emb_" + field), paddle.to_tensor(used))
    assert rows["emb_kw1"].shape[0] < net.emb_kw1.shape[0]
    np.testing.assert_allclose(net(to_feeds(remapped), params=rows).numpy(), net(to_feeds(batch)).numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad, words", [
    ([[1] * 7, [1] * 7], "3 lists"),
    ([[1] * 7, [1] * 6, [1] * 6], "[7, 7, 6]"),
    ([[1] * 7, [1] * 7, [1, 1, 1, 1, 1, -1]], "non-negative"),
])
def test_bad_max_idxs_are_named(bad, words):
    lay = layout()
    with pytest.raises(ValueError, match="max_idxs") as err:
        net_module.FieldLayout(lay.static, lay.lists, lay.list_widths, lay.ad, bad)
    assert words in str(err.value)


def test_layout_names_a_table_per_field():
    lay = layout()
    assert lay.table_names[:2] == ("emb_carrier", "emb_consumptionAbility") and len(lay.table_names) == 20


def test_tables_start_standard_normal_as_the_official_code_and_dense_layers_as_torch():
    """The official tables are plain torch.nn.Embedding: N(0, 1). Linear: uniform +-1/sqrt(fan_in)."""
    paddle.seed(3)
    big = net_module.MetaHeacNet(layout(schema.TENCENT_MAX_IDXS))
    for name in ("emb_kw1", "emb_kw2", "emb_topic1"):  # 640 k to 16.9 M draws each
        table = getattr(big, name).numpy().astype(np.float64)
        assert abs(table.std() - 1) < 0.005 and abs(table.mean()) < 0.005, name
        assert abs((np.abs(table) < 1).mean() - 0.6827) < 0.005, name  # normal, not a uniform of std 1
    w0 = big.expert_w0.numpy()
    bound = 1 / np.sqrt(w0.shape[0])
    assert np.abs(w0).max() <= bound and np.abs(w0).max() > 0.99 * bound


def test_xavier_start_is_an_option_and_unknown_starts_are_named():
    paddle.seed(3)
    xavier = net_module.MetaHeacNet(layout(), embedding_init="xavier_uniform", **TINY_HP)
    kw1 = xavier.emb_kw1.numpy()
    bound = np.sqrt(6 / (kw1.shape[0] + kw1.shape[1]))
    assert np.abs(kw1).max() <= bound and np.abs(kw1).max() > 0.8 * bound
    with pytest.raises(ValueError, match="embedding_init is 'xavier'.*normal"):
        net_module.MetaHeacNet(layout(), embedding_init="xavier")
