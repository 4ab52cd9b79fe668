"""The MAML meta-step of DygraphModel.train_forward against independent computations, in float64."""
import os

import numpy as np
import pytest
from sklearn.metrics import log_loss

import dygraph_model as dm
from helpers import MAX_IDXS_LIST, ROOT, TINY_HP, layout, random_batch, schema
from tools.utils.data.schema import AD_FIELDS, DYNAMIC_FIELDS, DYNAMIC_OFFSETS, STATIC_FIELDS
from tools.utils.paddle_env import paddle
from tools.utils.run import model_folder

LOCAL_LR = 0.5  # large, so that the second-order term is clearly visible


def config(meta_order):
    return {"config_path": "tiny.yaml", "data_schema": schema(),
            "hyper_parameters": {**TINY_HP, "max_idxs": MAX_IDXS_LIST, "embedding_init": "normal",
                                 "local_lr": LOCAL_LR, "meta_order": meta_order,
                                 "optimizer": {"class": "adam", "learning_rate": 0.001}}}


@pytest.fixture
def setup(float64):
    """A float64 net and a meta-batch of 3 tasks whose support and query share ids.

    The tasks' batches differ in length (small campaigns), so the stacked
    computation pads; the last task's support batch has only empty lists
    (nothing to pool).
    """
    paddle.seed(11)
    model = dm.DygraphModel()
    net = model.create_model(config(2))
    rng = np.random.default_rng(12)
    meta_batch = []
    for s, q in ((7, 6), (4, 6), (7, 3)):
        rows = random_batch(rng, s + q)
        meta_batch.append(tuple({k: v[part] for k, v in rows.items()} for part in (slice(0, s), slice(s, None))))
    meta_batch[-1][0]["lengths"][:] = 0
    return model, net, meta_batch


def bce(pred, label):
    return dm.DygraphModel().create_loss(pred, label)


def train_forward_grads(model, net, meta_batch, meta_order):
    net.clear_gradients()
    loss, _ = model.train_forward(net, meta_batch, config(meta_order))
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in net.named_parameters()}
    net.clear_gradients()
    return float(loss), grads


def leaf_params(net):
    """Copies of the parameters as plain leaf tensors we can perturb and differentiate."""
    return {name: paddle.to_tensor(p.numpy(), stop_gradient=False) for name, p in net.named_parameters()}


def sampled_coordinates(net, meta_batch, rng):
    """Two coordinates per parameter; for tables, rows read by both a support and its query batch."""
    support, query = meta_batch[0]
    coords = []
    for name, p in net.named_parameters():
        if name.startswith("emb_"):
            field = name[4:]
            group, col = next((g, list(fields).index(field)) for g, fields in
                              (("static", STATIC_FIELDS), ("dynamic", DYNAMIC_FIELDS), ("ad", AD_FIELDS))
                              if field in fields)
            span = slice(DYNAMIC_OFFSETS[col], DYNAMIC_OFFSETS[col + 1]) if group == "dynamic" \
                else slice(col, col + 1)
            shared = np.intersect1d(support[group][:, span], query[group][:, span])
            coords += [(name, (int(rng.choice(shared)), int(rng.integers(p.shape[1])))) for _ in range(2)]
        else:
            coords += [(name, tuple(int(rng.integers(d)) for d in p.shape)) for _ in range(2)]
    return coords


def test_second_order_meta_gradient_matches_finite_differences(setup):
    """train_forward's gradient against central differences of the plain per-task loop's meta-loss."""
    model, net, meta_batch = setup
    loss, grads = train_forward_grads(model, net, meta_batch, meta_order=2)
    assert float(dm.meta_loss_reference(net, meta_batch, LOCAL_LR)) == pytest.approx(loss, rel=1e-12)
    step = 1e-6
    coords = sampled_coordinates(net, meta_batch, np.random.default_rng(13))
    parameters = dict(net.named_parameters())
    numeric, analytic = [], []
    for name, index in coords:
        original, values = parameters[name].numpy().copy(), []
        for sign in (1, -1):
            shifted = original.copy()
            shifted[index] += sign * step
            parameters[name].set_value(shifted)
            values.append(float(dm.meta_loss_reference(net, meta_batch, LOCAL_LR, second_order=False)))
        parameters[name].set_value(original)
        numeric.append((values[0] - values[1]) / (2 * step))
        analytic.append(grads[name][index])
    numeric, analytic = np.array(numeric), np.array(analytic)
    # Small ReLU layers have a few units dead on every row; nearly all coordinates must matter.
    assert np.mean(np.abs(numeric) > 1e-6) > 0.85
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)

    _, first = train_forward_grads(model, net, meta_batch, meta_order=1)
    first = np.array([first[name][index] for name, index in coords])
    assert np.linalg.norm(first - numeric) > 1e-2 * np.linalg.norm(numeric)


@pytest.mark.parametrize("meta_order", [2, 1])
def test_the_fast_meta_step_is_the_plain_per_task_loop(setup, meta_order):
    """train_forward (stacked tasks, the rows they touch) equals meta_loss_reference (one task after another,
    whole tables): the loss, and the gradient of every parameter on every row."""
    model, net, meta_batch = setup
    loss, fast = train_forward_grads(model, net, meta_batch, meta_order)
    reference = dm.meta_loss_reference(net, meta_batch, LOCAL_LR, second_order=meta_order == 2)
    assert float(reference) == pytest.approx(loss, rel=1e-12)
    names, parameters = zip(*net.named_parameters())
    for name, grad in zip(names, paddle.grad(reference, list(parameters))):
        np.testing.assert_allclose(fast[name], grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=name)


def test_first_order_is_query_gradient_at_fast_weights(setup):
    model, net, meta_batch = setup
    _, got = train_forward_grads(model, net, meta_batch, meta_order=1)
    expected = {name: 0 for name, _ in net.named_parameters()}
    for support, query in meta_batch:
        params = leaf_params(net)
        s, q = model.create_feeds(support), model.create_feeds(query)
        grads = paddle.grad(bce(net(s, params), s["label"]), list(params.values()))
        fast = {k: paddle.to_tensor((w - LOCAL_LR * g).numpy(), stop_gradient=False)
                for (k, w), g in zip(params.items(), grads)}
        for name, g in zip(fast, paddle.grad(bce(net(q, fast), q["label"]), list(fast.values()))):
            expected[name] = expected[name] + g.numpy() / len(meta_batch)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_the_meta_gradient_is_the_same_whichever_way_fields_are_read(setup, monkeypatch):
    """Embeddings or one-hot rows times premultiplied tables (net.FieldInput): the same second-order
    meta-gradient to float64 rounding."""
    import net as net_module
    model, net, meta_batch = setup
    results = []
    for count in (lambda rows, dim: 0, lambda rows, dim: len(rows)):
        monkeypatch.setattr(net_module, "one_hot_count", count)
        results.append(train_forward_grads(model, net, meta_batch, meta_order=2))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-12
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_each_task_adapts_only_the_table_rows_its_batches_touch(setup):
    """No table-sized fast weight: a task's copy of a table is the rows of its own unique ids, task after task."""
    _, net, meta_batch = setup
    lay = net.layout
    weights = dm.StackedMetaBatch(meta_batch, lay).task_weights(net)
    for t, name in enumerate(lay.table_names):
        columns = dm.column_table(lay) == t
        unique = [np.unique(np.concatenate([dm.columns(lay, b)[:, columns].ravel() for b in pair])) for pair in meta_batch]
        np.testing.assert_array_equal(weights[name].numpy(), getattr(net, name).numpy()[np.concatenate(unique)])
    for name, p in net.named_parameters():
        if name not in lay.table_names:
            assert weights[name].shape == [len(meta_batch)] + p.shape


def test_the_meta_step_names_the_table_rows_outside_which_the_gradient_is_zero(setup):
    """net.grad_rows, the rows a run across processes sums (tools/utils/run/collectives.py): every id the
    meta-batch holds, and the tables' gradients (written by read_rows' hook) are zero on every other row."""
    model, net, meta_batch = setup
    _, grads = train_forward_grads(model, net, meta_batch, meta_order=2)
    lay = net.layout
    for t, name in enumerate(lay.table_names):
        ids = np.unique(np.concatenate([dm.columns(lay, b)[:, dm.column_table(lay) == t].ravel()
                                        for pair in meta_batch for b in pair]))
        np.testing.assert_array_equal(net.grad_rows[name], ids)
        assert not np.delete(grads[name], ids, axis=0).any() and grads[name][ids].any(), name


def test_stacked_batches_pad_short_tasks_with_rows_of_weight_zero():
    rng = np.random.default_rng(19)
    meta_batch = [(random_batch(rng, 3), random_batch(rng, 2)), (random_batch(rng, 5), random_batch(rng, 4))]
    stacked = dm.StackedMetaBatch(meta_batch, layout())
    assert stacked.tasks == 2 and len(stacked.support["label"]) == 10 and len(stacked.query["label"]) == 8
    np.testing.assert_allclose(stacked.support["weight"], [1 / 3] * 3 + [0, 0] + [1 / 5] * 5)
    np.testing.assert_allclose(stacked.query["weight"], [1 / 2] * 2 + [0, 0] + [1 / 4] * 4)
    for k in ("lengths", "label"):
        np.testing.assert_array_equal(stacked.support[k][:3], meta_batch[0][0][k])
        np.testing.assert_array_equal(stacked.support[k][3:5], meta_batch[0][0][k][[0, 0]])
        np.testing.assert_array_equal(stacked.support[k][5:], meta_batch[1][0][k])


def test_every_column_maps_to_its_table():
    lay = layout()
    table = dm.column_table(lay)
    assert list(table[:8]) == list(range(7)) + [7]              # static fields, then interest1
    assert (table == 7 + 3).sum() == 5                           # kw1: 5 columns of dynamic
    assert list(table[-6:]) == list(range(14, 20))              # the ad fields
    batch = random_batch(np.random.default_rng(0), 3)
    assert all(np.array_equal(v, batch[k]) for k, v in dm.split_columns(lay, dm.columns(lay, batch)).items())


def test_compact_ids_round_trip():
    lay = layout()
    rng = np.random.default_rng(14)
    batches = [random_batch(rng, 5), random_batch(rng, 4)]
    remapped, row_ids = dm.compact_ids(lay, batches, lay.rows)
    for original, new in zip(batches, remapped):
        ids, local = dm.columns(lay, original), dm.columns(lay, new)
        for col, table in enumerate(dm.column_table(lay)):
            np.testing.assert_array_equal(row_ids[table][local[:, col]], ids[:, col])
        np.testing.assert_array_equal(new["lengths"], original["lengths"])
    for table, ids in enumerate(row_ids):
        assert np.all(np.diff(ids) > 0) and ids.min() >= 0 and ids.max() < lay.rows[table]


def test_compact_ids_groups_get_separate_rows():
    lay = layout()
    rng = np.random.default_rng(18)
    batches = [random_batch(rng, 5), random_batch(rng, 4), random_batch(rng, 6)]
    groups = [0, 1, 0]
    remapped, row_ids = dm.compact_ids(lay, batches, lay.rows, groups)
    for table in range(len(lay.rows)):
        columns = dm.column_table(lay) == table
        ids = [dm.columns(lay, b)[:, columns].ravel() for b in batches]
        local = [dm.columns(lay, b)[:, columns].ravel() for b in remapped]
        for i in range(3):
            np.testing.assert_array_equal(row_ids[table][local[i]], ids[i])
        group_rows = [np.unique(np.concatenate([local[i] for i in range(3) if groups[i] == g])) for g in (0, 1)]
        # group 0's rows first, then group 1's; each group's rows are its sorted unique ids
        np.testing.assert_array_equal(np.concatenate(group_rows), np.arange(len(row_ids[table])))
        np.testing.assert_array_equal(row_ids[table][group_rows[1]], np.unique(ids[1]))
        np.testing.assert_array_equal(row_ids[table][group_rows[0]], np.unique(np.concatenate([ids[0], ids[2]])))


def test_compact_ids_rejects_ids_outside_their_table():
    lay = layout()
    batch = random_batch(np.random.default_rng(17), 3)
    batch["dynamic"][2, DYNAMIC_OFFSETS[3]] = lay.rows[7 + 3]  # kw1's first id, one past its table
    with pytest.raises(ValueError, match=r"of table emb_kw1 \(row 2 of the stacked batches\) is outside the table's "
                                         r"rows 0\.\.30"):
        dm.compact_ids(lay, [batch], lay.rows)


def test_inference_hooks_and_loss_match_sklearn(float64):
    paddle.seed(15)
    model = dm.DygraphModel()
    net = model.create_model(config(2))
    batch = random_batch(np.random.default_rng(16), 9)
    probs = model.infer_forward(net, batch, config(2))
    assert isinstance(probs, np.ndarray) and probs.shape == (9,)
    np.testing.assert_allclose(probs, net(model.create_feeds(batch)).numpy())
    loss, logs = model.infer_train_forward(net, batch, config(2))
    assert logs["loss"] == pytest.approx(log_loss(batch["label"], probs, labels=[0, 1]), rel=1e-10)
    loss.backward()
    assert np.abs(net.emb_age.grad.numpy()).sum() > 0
    assert list(logs) == ["loss"]


def test_loss_and_its_two_derivatives_are_torch_bceloss_wherever_p_is_not_saturated(float64):
    """torch.nn.BCELoss: -mean(y log p + (1 - y) log(1 - p)); its gradient (p - y) / max(p (1 - p), 1e-12)."""
    model = dm.DygraphModel()
    p_np = np.array([1e-11, 1e-7, 0.03, 0.5, 0.97, 1 - 1e-7, 1 - 1e-11] * 2)
    y_np = np.repeat([1.0, 0.0], 7)
    p = paddle.to_tensor(p_np, stop_gradient=False)
    loss = model.create_loss(p, paddle.to_tensor(y_np))
    (grad,) = paddle.grad(loss, [p], create_graph=True)
    (second,) = paddle.grad(grad.sum(), [p])
    n = len(p_np)
    assert float(loss) == pytest.approx(-np.mean(y_np * np.log(p_np) + (1 - y_np) * np.log1p(-p_np)), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), (p_np - y_np) / np.maximum(p_np * (1 - p_np), 1e-12) / n, rtol=1e-10)
    np.testing.assert_allclose(second.numpy(), (y_np / p_np**2 + (1 - y_np) / (1 - p_np)**2) / n, rtol=1e-10)


def test_loss_of_saturated_probabilities_is_finite_with_finite_gradients(float64):
    model = dm.DygraphModel()
    p = paddle.to_tensor([0.0, 1.0, 0.5], stop_gradient=False)
    loss = model.create_loss(p, paddle.to_tensor([1.0, 0.0, 1.0]))
    assert float(loss) == pytest.approx((-2 * np.log(dm.LOG_FLOOR) + np.log(2)) / 3, rel=1e-9)
    loss.backward()
    assert np.isfinite(p.grad.numpy()).all()


def test_the_optimizer_is_the_one_the_config_names():
    """hyper_parameters.optimizer.class chooses from OPTIMIZERS, the classes the model declares; validate refuses
    any other (tools/utils/run/config.py)."""
    from tools.utils.run import config as cfg
    assert dm.HYPER_PARAMETERS["optimizer.class"][0] == "one of " + " | ".join(dm.OPTIMIZERS)
    net = param_holder(paddle.create_parameter([3], "float32"))
    assert isinstance(dm.DygraphModel().create_optimizer(net, config(2)), paddle.optimizer.Adam)
    wrong = cfg.load_config(os.path.join(ROOT, "config.yaml"), ["hyper_parameters.optimizer.class=sgd"])
    with pytest.raises(cfg.ConfigError, match=r"^-o hyper_parameters.optimizer.class must be one of adam \| lazy_adam, got 'sgd'"):
        cfg.validate(wrong, "train", model_folder.load_model(wrong))


def test_adam_is_torchs_adam(float64):
    """Paddle's Adam against torch.optim.Adam's update written in NumPy (betas 0.9 / 0.999, eps 1e-8 added
    to the bias-corrected sqrt(v)), with gradients small enough that eps matters."""
    rng = np.random.default_rng(21)
    w = rng.normal(size=6)
    param = paddle.create_parameter([6], "float64", default_initializer=paddle.nn.initializer.Assign(w))
    adam = dm.DygraphModel().create_optimizer(param_holder(param), config(2), learning_rate=0.1)
    m, v = np.zeros(6), np.zeros(6)
    for t, scale in enumerate((1.0, 1e-9, 1e-7, 3.0, 1e-8), 1):
        g = rng.normal(size=6) * scale
        (param * paddle.to_tensor(g)).sum().backward()
        adam.step()
        adam.clear_grad()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 0.1 / (1 - 0.9**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**t) + 1e-8)
        np.testing.assert_allclose(param.numpy(), w, rtol=1e-12, atol=1e-15)


def param_holder(param):
    layer = paddle.nn.Layer()
    layer.add_parameter("w", param)
    return layer


def test_optimizer_learning_rates(setup):
    model, net, _ = setup
    assert model.create_optimizer(net, config(2)).get_lr() == pytest.approx(0.001)
    assert model.create_optimizer(net, config(2), learning_rate=0.01).get_lr() == pytest.approx(0.01)
