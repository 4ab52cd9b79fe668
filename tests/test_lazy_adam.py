"""dygraph_model.LazyAdam (hyper_parameters.optimizer.class: lazy_adam) against a NumPy lazy Adam, against Paddle's
Adam where the two must agree, across a checkpoint, and after real meta-steps."""
import numpy as np

import dygraph_model as dm
from helpers import TINY_HP, random_batch, schema
from tools.utils.paddle_env import paddle
from tools.utils.run import checkpoint as ckpt

RATE = 0.1


class TableAndWeight(paddle.nn.Layer):
    def __init__(self, rng):
        super().__init__()
        start = paddle.nn.initializer.Assign
        self.emb = self.create_parameter([8, 3], default_initializer=start(rng.normal(size=(8, 3))))
        self.w = self.create_parameter([4], default_initializer=start(rng.normal(size=4)))


def backward(layer, table_grad, weight_grad, rows):
    """Gradients table_grad and weight_grad, and `rows` named as the table's (None: no rows named)."""
    ((layer.emb * paddle.to_tensor(table_grad)).sum() + (layer.w * paddle.to_tensor(weight_grad)).sum()).backward()
    if rows is not None:
        layer.grad_rows = {"emb": np.asarray(rows)}


def numpy_adam(state, g, t, rows):
    """torch.optim.Adam's update (as in test_meta_grad.test_adam_is_torchs_adam) of the given rows only."""
    w, m, v = state
    m[rows] = 0.9 * m[rows] + 0.1 * g[rows]
    v[rows] = 0.999 * v[rows] + 0.001 * g[rows] ** 2
    w[rows] -= RATE / (1 - 0.9 ** t) * m[rows] / (np.sqrt(v[rows]) / np.sqrt(1 - 0.999 ** t) + 1e-8)


def test_a_table_moves_at_the_named_rows_only_by_adam_with_the_common_step_count(float64):
    rng = np.random.default_rng(3)
    layer = TableAndWeight(rng)
    lazy = dm.LazyAdam(layer, RATE)
    table, weight = ([p.numpy().copy(), np.zeros(p.shape), np.zeros(p.shape)] for p in (layer.emb, layer.w))
    # rows 2 and 5 are named by the 4th step only, which names none (Adam's step); the 5th names row 6 with a zero
    # gradient after the 4th gave it one: it moves by momentum
    for t, (rows, zero) in enumerate((([0, 1], []), ([1, 3, 6], [6]), ([7], []), (None, []), ([0, 4, 6], [6])), 1):
        named = list(range(8)) if rows is None else rows
        g = np.zeros((8, 3))
        g[named] = rng.normal(size=(len(named), 3)) * 10.0 ** -t
        g[zero] = 0
        gw = rng.normal(size=4)
        backward(layer, g, gw, rows)
        before = layer.emb.numpy().copy()
        lazy.step()
        lazy.clear_grad()
        numpy_adam(table, g, t, named)
        numpy_adam(weight, gw, t, slice(None))
        np.testing.assert_allclose(layer.emb.numpy(), table[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(layer.w.numpy(), weight[0], rtol=1e-12, atol=1e-15)
        unnamed = np.setdiff1d(np.arange(8), named)
        assert np.array_equal(layer.emb.numpy()[unnamed], before[unnamed])  # bitwise
        assert not layer.emb.grad.numpy().any() and not layer.w.grad.numpy().any()
    assert (layer.emb.numpy()[6] != before[6]).all()


def test_with_every_row_named_or_none_it_is_paddles_adam_bitwise():
    rng = np.random.default_rng(5)
    layers = [TableAndWeight(np.random.default_rng(1)) for _ in range(3)]
    optimizers = [dm.adam(layers[0], RATE), dm.LazyAdam(layers[1], RATE), dm.LazyAdam(layers[2], RATE)]
    for t in range(4):
        g, gw = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
        for layer, optimizer, rows in zip(layers, optimizers, (None, np.arange(8), None)):
            backward(layer, g, gw, rows)
            optimizer.step()
            optimizer.clear_grad()
    for layer in layers[1:]:
        assert np.array_equal(layer.emb.numpy(), layers[0].emb.numpy())
        assert np.array_equal(layer.w.numpy(), layers[0].w.numpy())


def test_a_checkpoint_resumes_lazy_adam_from_either_optimiser(tmp_path):
    """The state is Adam's: a checkpoint of either resumes under lazy_adam to the uninterrupted run's weights."""
    rng = np.random.default_rng(7)
    steps = [(rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32), rows)
             for rows in ([0, 1], [1, 2, 3], [5], [0, 6], [2, 7])]

    def train(layer, optimizer, part):
        for g, gw, rows in part:
            backward(layer, np.where(np.isin(np.arange(8), rows)[:, None], g, 0), gw, rows)
            optimizer.step()
            optimizer.clear_grad()

    whole = TableAndWeight(np.random.default_rng(1))
    train(whole, dm.LazyAdam(whole, RATE), steps)
    for first in (dm.LazyAdam, dm.adam):
        layer = TableAndWeight(np.random.default_rng(1))
        optimizer = first(layer, RATE)
        train(layer, optimizer, steps[:2])
        if first is dm.adam:  # from here on the two differ: Adam moved rows the third step would leave
            layer = TableAndWeight(np.random.default_rng(1))
            optimizer = dm.LazyAdam(layer, RATE)
            train(layer, optimizer, steps[:2])
        path = str(tmp_path / first.__name__)
        ckpt.save(path, layer, optimizer, {})
        resumed = TableAndWeight(np.random.default_rng(2))
        resumed_optimizer = dm.LazyAdam(resumed, RATE)
        ckpt.resume(path, resumed, resumed_optimizer)
        train(resumed, resumed_optimizer, steps[2:])
        assert np.array_equal(resumed.emb.numpy(), whole.emb.numpy())
        assert np.array_equal(resumed.w.numpy(), whole.w.numpy())


def meta_step(model, net, optimizer, meta_batch, config):
    loss, _ = model.train_forward(net, meta_batch, config)
    loss.backward()
    rows = dict(net.grad_rows)
    optimizer.step()
    optimizer.clear_grad()
    return rows


def test_after_meta_steps_lazy_adam_is_adam_on_the_rows_read_and_still_elsewhere(float64):
    """From a fresh state Adam moves no row whose gradient was always zero, so one meta-step is the same under
    both; in the next, Adam moves by momentum the rows the first read and the second does not, LazyAdam does not."""
    max_idxs = {"static": [40] * 7, "dynamic": [300] * 7, "ad": [60] * 6}  # more rows than a meta-batch reads
    config = {"data_schema": schema(max_idxs), "hyper_parameters": {
        **TINY_HP, "embedding_init": "normal", "local_lr": 0.1, "meta_order": 2}}
    rng = np.random.default_rng(9)
    meta_batches = [[tuple(random_batch(rng, n, max_idxs) for n in (6, 5)) for _ in range(3)] for _ in range(2)]
    model, nets = dm.DygraphModel(), []
    for make in (dm.adam, dm.LazyAdam):
        paddle.seed(4)
        net = model.create_model(config)
        optimizer = make(net, 0.01)
        start = {name: p.numpy().copy() for name, p in net.named_parameters()}
        first = meta_step(model, net, optimizer, meta_batches[0], config)
        after_first = {name: p.numpy().copy() for name, p in net.named_parameters()}
        second = meta_step(model, net, optimizer, meta_batches[1], config)
        nets.append((net, after_first, first, second))
        for name in first:
            unread = np.setdiff1d(np.arange(start[name].shape[0]), first[name])
            assert np.array_equal(after_first[name][unread], start[name][unread]), name
    (adam_net, adam_first, _, _), (lazy_net, lazy_first, first, second) = nets
    moved_by_momentum = 0
    for name, p in lazy_net.named_parameters():
        np.testing.assert_allclose(lazy_first[name], adam_first[name], rtol=1e-12, atol=1e-14, err_msg=name)
        adam_p = getattr(adam_net, name).numpy()
        if name not in second:
            np.testing.assert_allclose(p.numpy(), adam_p, rtol=1e-12, atol=1e-14, err_msg=name)
            continue
        np.testing.assert_allclose(p.numpy()[second[name]], adam_p[second[name]], rtol=1e-12, atol=1e-14)
        only_first = np.setdiff1d(first[name], second[name])
        assert np.array_equal(p.numpy()[only_first], lazy_first[name][only_first]), name
        moved_by_momentum += int((adam_p[only_first] != adam_first[name][only_first]).all(axis=1).sum())
    assert moved_by_momentum > 100
