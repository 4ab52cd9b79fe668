"""The MetaHeac network (Zhu et al., KDD 2021) as a function of explicit parameters.

`net(feeds, params)` computes with `params[name]` where the mapping has that
name and with the layer's own parameter otherwise, so a task's fast weights are
passed in (like torch.func.functional_call) instead of being attached to the
parameters. An embedding table's entry may be the full table or only the rows a
batch touches, with the batch's ids remapped to positions in those rows: a
lookup is a gather of the given ids from the given 2-D tensor either way.

Several tasks run as one computation: `net(feeds, params, tasks=T)` splits the
batch into T equal blocks of consecutive rows and computes block t with slice t
of every dense weight, each given in params with a leading task axis
([T, *shape]; matched-batch matmuls). Without `tasks` it is one task, with the
weights as they are (fine-tuning and scoring).

The field layout (which tables, which columns) comes from the data's
schema.json as a FieldLayout; this file knows nothing of the Tencent fields.

A layer over the concatenated field embeddings (the experts' first, the
gates' first) reads a field of few rows as one-hot rows times its table
premultiplied by the field's block of the weight, instead of gathering its
embedding into the layer's large product (FieldInput; which fields, by a
count of the product's columns: one_hot_count). The function and its
gradients are the same either way, to rounding.

Every op on the forward path has a double-grad kernel in Paddle 3.3 (no
F.embedding, F.softmax or einsum; softmax is written from exp and sum), so the
second-order MAML step can differentiate through an inner gradient.

Initialisation follows the official PyTorch code: its tables are plain
torch.nn.Embedding layers, so they start N(0, 1) (embedding_init "normal");
weights and biases of the dense layers are uniform in +-1/sqrt(fan_in)
(torch.nn.Linear's default). embedding_init "xavier_uniform" (bound
sqrt(6 / (rows + dim)), pytorch-fm's embedding layer, which the official
MetaHeac does not use) is kept for comparison: docs/defaults.md gives its cost.
"""
import math

import numpy as np
import paddle
from paddle import nn

EMBEDDING_INITS = ("normal", "xavier_uniform")


class FieldLayout:
    """The fields of a data set, as its schema.json describes them, and the tables that read them.

    A batch holds three id arrays, in table order: `static` [B, fields] (one
    id per field), `dynamic` [B, sum(list_widths)] (each list's padded ids,
    the lists side by side; `lengths` [B, lists] counts the real ones) and
    `ad` [B, fields]. Each field has its own table "emb_<field>" of max id + 1
    rows, in the order static, lists, ad.
    """

    ID_ARRAYS = ("static", "dynamic", "ad")

    def __init__(self, static, lists, list_widths, ad, max_idxs):
        self.static, self.lists, self.ad = tuple(static), tuple(lists), tuple(ad)
        self.list_widths = tuple(int(w) for w in list_widths)
        groups = (self.static, self.lists, self.ad)
        if not (isinstance(max_idxs, (list, tuple)) and len(max_idxs) == 3
                and all(isinstance(m, (list, tuple)) and len(m) == len(g) for m, g in zip(max_idxs, groups))
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for m in max_idxs for v in m)):
            raise ValueError(f"max_idxs must be 3 lists [static, dynamic, ad] of {[len(g) for g in groups]} "
                             f"non-negative integers (the maxima in the data's schema.json), got {max_idxs!r}")
        self.max_idxs = [list(m) for m in max_idxs]
        self.user_fields = self.static + self.lists
        self.table_names = tuple("emb_" + f for f in self.user_fields + self.ad)
        self.rows = tuple(m + 1 for group in max_idxs for m in group)
        self.list_offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.list_widths)]))

    @classmethod
    def from_schema(cls, schema):
        """The layout of a schema.json dict (tools/utils/data/dataset.py writes and checks them)."""
        return cls(schema["static_fields"], schema["dynamic_fields"], schema["dynamic_widths"], schema["ad_fields"],
                   [schema["max_idxs"][group] for group in cls.ID_ARRAYS])


def embedding_initializer(init, rows, dim):
    """The initializer of a [rows, dim] table: N(0, 1) (the official code's) or xavier-uniform."""
    if init == "normal":
        return nn.initializer.Normal(0.0, 1.0)
    if init == "xavier_uniform":
        bound = math.sqrt(6.0 / (rows + dim))
        return nn.initializer.Uniform(-bound, bound)
    raise ValueError(f"hyper_parameters.embedding_init is {init!r}; use one of {list(EMBEDDING_INITS)} "
                     "(normal is the official code's N(0, 1))")


def softmax(x, axis):
    """Softmax along `axis` from exp/sum (F.softmax has no double-grad kernel).

    The row maximum is subtracted as a constant: softmax does not depend on a
    per-row shift, so this changes no value and no gradient.
    """
    e = paddle.exp(x - x.max(axis=axis, keepdim=True).detach())
    return e / e.sum(axis=axis, keepdim=True)


def pool_lists(tables, dynamic, lengths, offsets, lists=None):
    """Mean of each row's first `length` embeddings, per list: 7 x [B, D]; length 0 gives zeros.
    tables[i] is list lists[i]'s (default: every list, in order).

    Each list is gathered whole, [B, width, D], its ids past the length read
    as row 0, summed by a batched matmul with the 0/1 mask [B, 1, width] and
    divided by the length. Gathering only the ids inside the lengths and
    summing them with an index_add reads fewer rows, but its backward and
    second derivatives cost more (docs/performance.md, 2026-12-05). The mask's
    sum then the division round as that index_add did; weights of 1 / length
    in the matmul round differently, and made 2 ranks drift from one process
    over 9 Adam steps of tests/test_distributed.py (4e-5 relative in expert_w0).
    """
    pooled = []
    for table, j in zip(tables, range(len(tables)) if lists is None else lists):
        lo, hi = offsets[j], offsets[j + 1]
        length = lengths[:, j:j + 1]
        inside = paddle.arange(hi - lo, dtype=length.dtype) < length
        ids = dynamic[:, lo:hi] * inside.astype(dynamic.dtype)
        rows = paddle.gather(table, ids.reshape([-1])).reshape([-1, hi - lo, table.shape[1]])
        sums = paddle.matmul(inside.astype(table.dtype).unsqueeze(1), rows).reshape([-1, table.shape[1]])
        pooled.append(sums / paddle.clip(length, min=1).astype(table.dtype))
    return pooled


def lookup(tables, ids):
    """[B, k, D]: column j of ids [B, k] looked up in tables[j], by one gather from the tables stacked end to end.

    For the small tables of the single-valued fields (the static and ad
    fields: under 900 rows each in the Tencent data), copying them into one
    tensor is cheaper than k gathers and a stack (and their gradients).
    """
    starts = np.cumsum([0] + [t.shape[0] for t in tables[:-1]])
    rows = paddle.gather(paddle.concat(tables), (ids + paddle.to_tensor(starts, dtype=ids.dtype)).reshape([-1]))
    return rows.reshape([ids.shape[0], len(tables), -1])


def embed_fields(layout, feeds, p):
    """The user-field embeddings [B, U, D] (static fields, then pooled lists), their mean over
    the U user fields [B, D], and the ad embeddings [B, A, D] (Tencent data: U = 14, A = 6).

    p(name) gives the table `name` (the baselines' models/layers.py reuses this with its own tables).
    The mean is summed from the parts before they are joined: a mean over
    the middle axis of [B, 14, D] costs more than the rest of this function.
    """
    names, n_static, n_user = layout.table_names, len(layout.static), len(layout.user_fields)
    single = lookup([p(name) for name in names[:n_static]], feeds["static"])
    lists = pool_lists([p(name) for name in names[n_static:n_user]], feeds["dynamic"], feeds["lengths"],
                       layout.list_offsets)
    user = paddle.concat([single] + [pooled.unsqueeze(1) for pooled in lists], axis=1)
    user_mean = (single.sum(axis=1) + paddle.add_n(lists)) / n_user
    return user, user_mean, lookup([p(name) for name in names[n_user:]], feeds["ad"])


class MetaHeacNet(nn.Layer):
    """Embeddings -> hybrid experts (mixed by a task gate) -> hybrid critics (mixed by a second gate).

    Parameter names: `emb_<field>` for the tables of `layout` (a FieldLayout); `expert_w0/b0` (all
    experts' first layer fused into one [user_dim, E*H] matrix), `expert_wK/bK`
    for K >= 1 ([E, H, H'] per-expert stacks); `expert_gate_w0/b0/w1/b1`;
    `critic_w/b` (the critic heads side by side, [H, C]); `critic_gate_w0/b0/w1/b1`.
    """

    def __init__(self, layout, embed_dim=64, mlp_dims=(64, 64), num_expert=8, num_output=5,
                 embedding_init="normal"):
        super().__init__()
        self.layout, self.num_expert, self.mlp_dims = layout, num_expert, list(mlp_dims)
        for name, rows in zip(layout.table_names, layout.rows):
            init = embedding_initializer(embedding_init, rows, embed_dim)
            self.add_parameter(name, self.create_parameter([rows, embed_dim], default_initializer=init))
        user_dim = len(layout.user_fields) * embed_dim
        task_dim = (1 + len(layout.ad)) * embed_dim
        self._add_linear("expert_w0", "expert_b0", user_dim, [user_dim, num_expert * mlp_dims[0]])
        for k in range(1, len(mlp_dims)):
            fan_in = mlp_dims[k - 1]
            self._add_linear(f"expert_w{k}", f"expert_b{k}", fan_in,
                             [num_expert, fan_in, mlp_dims[k]], [num_expert, 1, mlp_dims[k]])
        for gate, width in (("expert_gate", num_expert), ("critic_gate", num_output)):
            self._add_linear(f"{gate}_w0", f"{gate}_b0", task_dim, [task_dim, mlp_dims[-1]])
            self._add_linear(f"{gate}_w1", f"{gate}_b1", mlp_dims[-1], [mlp_dims[-1], width])
        self._add_linear("critic_w", "critic_b", mlp_dims[-1], [mlp_dims[-1], num_output])

    def _add(self, name, shape, bound):
        init = nn.initializer.Uniform(-bound, bound)
        self.add_parameter(name, self.create_parameter(shape, default_initializer=init))

    def _add_linear(self, weight, bias, fan_in, weight_shape, bias_shape=None):
        bound = 1.0 / math.sqrt(fan_in)
        self._add(weight, weight_shape, bound)
        self._add(bias, bias_shape or weight_shape[-1:], bound)

    def forward(self, feeds, params=None, tasks=None):
        """Click probability [T*B] for feeds {static, dynamic, lengths, ad} (int64, T*B rows each).

        tasks=None: one task, weights as the layer holds them. tasks=T: T
        tasks, rows t*B to (t+1)*B - 1 being task t's, and every dense weight
        in `params` with a leading task axis [T, *shape] (the meta-step's).

        Past the embeddings, activations are feature-major ([T, features, B]):
        every weight then applies as a matmul with transpose flags, every bias
        broadcasts along the last axis, and the experts split off the fused
        first layer by a reshape, so no large tensor is ever transposed
        (Paddle's CPU transpose and middle-axis broadcasts are several times
        slower than a matmul of the same data).

        The critics' linear layer is applied to each expert, then the gate
        mixes those C values: sum_e g_e W^T x_e = W^T sum_e g_e x_e, as the gate
        scales each row, so the mixture is taken over [T, E, C, B] instead of
        the experts' [T, E, H, B] (C = 5, H = 64), and so are its derivatives.
        """
        params = params or {}

        def p(name):
            return params[name] if name in params else getattr(self, name)

        def w(name):  # a dense weight with its task axis
            return p(name).unsqueeze(0) if tasks is None else p(name)

        n_tasks = tasks or 1
        user, task = self._inputs(feeds, p, n_tasks)
        experts = self._experts(user, w, n_tasks)                                          # [T, E, H, B]
        gate = self._gate(task, "expert_gate", w, n_tasks)                                # [T, E, B]
        _, n_expert, hidden, rows = experts.shape
        critic_w = w("critic_w")
        critic_w = critic_w.unsqueeze(1).expand([n_tasks, n_expert] + critic_w.shape[1:])
        heads = paddle.matmul(critic_w.reshape([n_tasks * n_expert, hidden, -1]),
                              experts.reshape([n_tasks * n_expert, hidden, rows]), transpose_x=True)
        heads = heads.reshape([n_tasks, n_expert, -1, rows])                                # [T, E, C, B]
        mixed = (heads * gate.unsqueeze(2)).sum(axis=1) + w("critic_b").unsqueeze(2)      # [T, C, B]
        critics = paddle.nn.functional.sigmoid(mixed)
        return (critics * self._gate(task, "critic_gate", w, n_tasks)).sum(axis=1).reshape([-1])

    def _inputs(self, feeds, p, tasks):
        """FieldInputs of the experts (the user fields) and of the gates (the user fields' mean, the ad fields)."""
        layout, names = self.layout, self.layout.table_names
        n_user = len(layout.user_fields)
        user = FieldInput.read([p(name) for name in names[:n_user]], feeds["static"], tasks,
                               (feeds["dynamic"], feeds["lengths"], layout.list_offsets))
        user_mean = user.field_sum() / n_user                                              # [T*B, D]
        return user, FieldInput.read([p(name) for name in names[n_user:]], feeds["ad"], tasks).after(user_mean)

    def gates(self, feeds):
        """Each row's mixing weights, (experts [B, E], critics [B, C]): which experts and critics it uses."""
        _, task = self._inputs(feeds, lambda name: getattr(self, name), 1)
        return tuple(self._gate(task, gate, lambda name: getattr(self, name).unsqueeze(0), 1)[0].transpose([1, 0])
                     for gate in ("expert_gate", "critic_gate"))

    def _experts(self, user, w, tasks):
        """All experts at once, [T, E, H, B]: the fused layer 1 (user.linear), then one GEMM per (task, expert)."""
        relu = paddle.nn.functional.relu
        hidden = relu(user.linear(w("expert_w0"), w("expert_b0"), tasks))                 # [T, E*H, B]
        rows = hidden.shape[2]
        hidden = hidden.reshape([tasks * self.num_expert, self.mlp_dims[0], rows])
        for k in range(1, len(self.mlp_dims)):
            weight = w(f"expert_w{k}").reshape([tasks * self.num_expert] + self.mlp_dims[k - 1:k + 1])
            hidden = relu(_dense(hidden, weight, w(f"expert_b{k}").reshape([tasks * self.num_expert, -1])))
        return hidden.reshape([tasks, self.num_expert, -1, rows])

    def _gate(self, task, gate, w, tasks):
        """Mixing weights [T, width, B] from the task input (user_mean and the ad fields)."""
        hidden = paddle.nn.functional.relu(task.linear(w(f"{gate}_w0"), w(f"{gate}_b0"), tasks))
        return softmax(_dense(hidden, w(f"{gate}_w1"), w(f"{gate}_b1")), axis=1)


def one_hot_count(rows, dim):
    """How many fields, the smallest tables first, a layer reads as one-hot rows rather than as embeddings.

    An embedded field adds dim columns to the layer's large product, a one-hot field at most its table's rows
    (rows: each table's rows per task; FieldInput gives a one-hot field the columns of its widest window): the
    fields of fewer rows than dim. The premultiplied tables ([rows, D] @ [D, out]) are left out as small.
    """
    return int(sum(r < dim for r in rows))


class FieldInput:
    """The input of a layer over field blocks, x = [x_0, ..., x_{F-1}] ([N, F*D] if written out), in two parts.

    embedded [N, k, D]: the embeddings of the fields `embedded_fields` (a list field's: the mean of its
    ids' rows). For the fields `one_hot_fields` (small tables), their rows as weights: one_hot
    [T, B, K + 1] (a last column of ones) and padded [T, n, W, D], each task's window of W rows of each
    table from the lowest row it reads, so that x_f = one_hot[t, :, f's W_f columns] @ padded[t, f, :W_f]
    for task t (W_f: field f's widest window; `kept_rows` picks those K rows out of the n * W).
    linear is x @ weight + bias part by part; a one-hot field's block goes through its table, [W, D] @
    [D, out], so the layer's large product spans only the embedded fields (Tencent data: 6 of 7
    single-valued user fields have at most 8 values, interest3 13, and a meta-step's task, one campaign,
    reads one row of each ad field). Same function, same gradients, to rounding.
    """

    def __init__(self, embedded, embedded_fields, embedded_sum, one_hot, padded, one_hot_fields, kept_rows=None):
        self.embedded, self.embedded_fields, self.embedded_sum = embedded, list(embedded_fields), embedded_sum
        self.one_hot, self.padded, self.one_hot_fields = one_hot, padded, list(one_hot_fields)
        self.kept_rows = kept_rows
        self.fields = len(self.embedded_fields) + len(self.one_hot_fields)

    @classmethod
    def read(cls, tables, ids, tasks, lists=None):
        """The fields of `tables`: single-valued ones, column j of ids [N, S] an id of tables[j], then (if
        lists = (dynamic, lengths, offsets)) list fields, list j the ids dynamic[:, offsets[j]:offsets[j + 1]]
        of tables[S + j], their first lengths[:, j] counted. A meta-step's tables hold `tasks` tasks' rows.

        Which fields go one-hot is decided on the tables' rows per task (one_hot_count), so a meta-batch
        computes the same way whatever the number of tasks it is split into (tools/utils/run/collectives.py).
        """
        singles = ids.shape[1]
        dim = tables[0].shape[1]
        order = sorted(range(len(tables)), key=lambda j: tables[j].shape[0])
        count = one_hot_count([t.shape[0] / tasks for t in tables], dim)
        one_hot_fields, embedded_fields = sorted(order[:count]), sorted(order[count:])
        parts, sums = [], []  # [N, k*D] each, joined by one concat
        single = [j for j in embedded_fields if j < singles]
        if single:
            looked_up = lookup([tables[j] for j in single], _columns(ids, single))
            parts.append(looked_up.reshape([-1, len(single) * dim]))
            sums.append(looked_up.sum(axis=1))
        listed = [j - singles for j in embedded_fields if j >= singles]
        if listed:
            dynamic, lengths, offsets = lists
            parts.extend(pool_lists([tables[singles + j] for j in listed], dynamic, lengths, offsets, listed))
            sums.extend(parts[-len(listed):])
        embedded = None
        if parts:
            joined = paddle.concat(parts, axis=1) if len(parts) > 1 else parts[0]
            embedded = joined.reshape([-1, len(embedded_fields), dim])
        embedded_sum = paddle.add_n(sums) if sums else None
        one_hot, padded, kept = (_one_hot_rows([tables[j] for j in one_hot_fields],
                                               _field_ids(ids, lists, one_hot_fields), tasks)
                                 if one_hot_fields else (None, None, None))
        return cls(embedded, embedded_fields, embedded_sum, one_hot, padded, one_hot_fields, kept)

    def after(self, first):
        """This input with first [N, D] put before its fields, as an embedded field 0."""
        embedded = first.unsqueeze(1)
        if self.embedded is not None:
            embedded = paddle.concat([embedded, self.embedded], axis=1)
        return FieldInput(embedded, [0] + [f + 1 for f in self.embedded_fields], None,
                          self.one_hot, self.padded, [f + 1 for f in self.one_hot_fields], self.kept_rows)

    def field_sum(self):
        """sum_f x_f, [N, D]."""
        total = 0
        if self.embedded is not None:
            total = self.embedded.sum(axis=1) if self.embedded_sum is None else self.embedded_sum
        if self.one_hot is not None:
            dim = self.padded.shape[3]
            rows = paddle.matmul(self.one_hot[:, :, :-1], self._read(self.padded))                     # [T, B, D]
            total = total + rows.reshape([-1, dim])
        return total

    def linear(self, weight, bias, tasks):
        """x @ weight + bias, feature-major [T, out, B], weight [T, F*D, out] and bias [T, out] (T blocks of B
        consecutive rows). With one-hot fields the bias is one more row of their product, the ones column's
        (no broadcast add, and its gradient comes out of that matmul)."""
        out_dim = weight.shape[2]
        blocks = weight.reshape([tasks, self.fields, -1, out_dim])
        out = 0
        if self.embedded_fields:
            x = self.embedded.reshape([tasks, -1, self.embedded.shape[1] * self.embedded.shape[2]])
            out = paddle.matmul(_field_rows(blocks, self.embedded_fields), x, transpose_x=True, transpose_y=True)
        if not self.one_hot_fields:
            return out + bias.unsqueeze(2)
        premultiplied = paddle.matmul(self.padded, _blocks_of(blocks, self.one_hot_fields))   # [T, n, W, out]
        premultiplied = paddle.concat([self._read(premultiplied), bias.unsqueeze(1)], axis=1)
        return out + paddle.matmul(premultiplied, self.one_hot, transpose_x=True, transpose_y=True)

    def _read(self, windows):
        """[T, K, last] of windows [T, n, W, last]: the window rows one_hot has a column for."""
        tasks, n, width, last = windows.shape
        windows = windows.reshape([tasks, n * width, last])
        return windows if self.kept_rows is None else paddle.gather(windows, self.kept_rows, axis=1)


def _field_ids(ids, lists, fields):
    """For each of `fields` (numbered as FieldInput.read's), its ids [N, w] and their weights [N, w] (NumPy):
    1 for a single-valued field, 1 / length on a list's first `length` ids and 0 past it."""
    singles, out = ids.shape[1], []
    ids = ids.numpy()
    if lists is not None:
        dynamic, lengths, offsets = lists[0].numpy(), lists[1].numpy(), lists[2]
    for f in fields:
        if f < singles:
            out.append((ids[:, f:f + 1], np.ones((len(ids), 1))))
        else:
            j = f - singles
            inside = np.arange(offsets[j + 1] - offsets[j]) < lengths[:, j:j + 1]
            out.append((dynamic[:, offsets[j]:offsets[j + 1]], inside / np.maximum(lengths[:, j:j + 1], 1)))
    return out


def _one_hot_rows(tables, field_ids, tasks):
    """(one_hot [T, B, K + 1], padded [T, n, W, D], kept [K] or None) of FieldInput for tables with (ids, weights)
    each. padded holds each task's window of W rows of each table, from the lowest row it reads; field f's
    columns of one_hot are the first W_f rows of its windows, W_f its widest window over the tasks (W the widest
    of all), and `kept` their positions in the n * W window rows (None when that is every row). The last column
    of one_hot is ones (the bias's, FieldInput.linear)."""
    n, rows = len(tables), field_ids[0][0].shape[0]
    per_task = rows // tasks
    lows, highs = np.zeros((tasks, n), np.int64), np.zeros((tasks, n), np.int64)  # a task reading none: [0, 0]
    for f, (ids, weights) in enumerate(field_ids):
        read = (weights > 0).reshape([tasks, -1])
        by_task = ids.reshape([tasks, -1])
        low, high = np.where(read, by_task, np.iinfo(np.int64).max).min(1), np.where(read, by_task, -1).max(1)
        lows[:, f], highs[:, f] = np.where(high >= 0, low, 0), np.maximum(high, 0)
    field_widths = (highs - lows + 1).max(axis=0)
    width, columns = int(field_widths.max()), int(field_widths.sum())
    first_column = np.cumsum(field_widths) - field_widths
    row = np.arange(rows)[:, None]
    flat, values = [], []
    for f, (ids, weights) in enumerate(field_ids):
        keep = weights > 0
        flat.append((row * columns + first_column[f] - lows[row // per_task, f] + ids)[keep])
        values.append(weights[keep])
    dtype = tables[0].dtype
    one_hot = np.bincount(np.concatenate(flat), np.concatenate(values), minlength=rows * columns)
    one_hot = np.concatenate([one_hot.reshape([rows, columns]), np.ones((rows, 1))], axis=1)
    one_hot = paddle.to_tensor(one_hot.reshape([tasks, per_task, columns + 1]), dtype=dtype)
    starts = np.cumsum([0] + [t.shape[0] for t in tables[:-1]])
    sizes = np.asarray([t.shape[0] for t in tables])
    index = starts[None, :, None] + np.minimum(lows[:, :, None] + np.arange(width), sizes[None, :, None] - 1)
    padded = paddle.gather(paddle.concat(tables), paddle.to_tensor(index.reshape([-1])))
    kept = None if columns == n * width else paddle.to_tensor(
        np.concatenate([f * width + np.arange(w) for f, w in enumerate(field_widths)]))
    return one_hot, padded.reshape([tasks, n, width, tables[0].shape[1]]), kept


def _columns(ids, columns):
    return paddle.gather(ids, paddle.to_tensor(columns, dtype="int64"), axis=1)


def _blocks_of(blocks, fields):
    """[T, len(fields), D, out]: the weight blocks of `fields`, a slice when they lead."""
    if fields == list(range(len(fields))):
        return blocks[:, :len(fields)]
    return paddle.gather(blocks, paddle.to_tensor(fields, dtype="int64"), axis=1)


def _field_rows(blocks, fields):
    """[T, len(fields)*D, out]: the rows of the weight that multiply `fields`."""
    return _blocks_of(blocks, fields).reshape([blocks.shape[0], -1, blocks.shape[3]])


class WideLinear(nn.Layer):
    """A linear model over the user fields' ids: a weight per id of every user field (a list adds the
    weights of its first `length` ids), plus a bias; the logit [B]. Its features are a multi-hot vector of
    the user's ids (an id listed twice counts twice), so a logistic regression fitted on that vector by any
    solver loads into it exactly (dygraph_model.multi_hot builds the vector, fit_wide the regression).

    It is the per-campaign wide part of WideAndDeep, and the look-alike baseline on its own.
    Parameters: `wide_<field>` [rows, 1] per user field of `layout`, `wide_bias` [1]; all start at zero.
    """

    def __init__(self, layout):
        super().__init__()
        self.layout = layout
        zero = nn.initializer.Constant(0.0)
        for field, rows in zip(layout.user_fields, layout.rows):
            self.add_parameter("wide_" + field, self.create_parameter([rows, 1], default_initializer=zero))
        self.add_parameter("wide_bias", self.create_parameter([1], default_initializer=zero))

    def forward(self, feeds):
        tables = [getattr(self, "wide_" + field) for field in self.layout.user_fields]
        n_static, static, dynamic = len(self.layout.static), feeds["static"], feeds["dynamic"]
        logit = lookup(tables[:n_static], static).sum(axis=[1, 2])
        offsets = self.layout.list_offsets
        for j, (table, lo, hi) in enumerate(zip(tables[n_static:], offsets[:-1], offsets[1:])):
            ids = dynamic[:, lo:hi]
            weights = paddle.gather(table, ids.reshape([-1])).reshape(paddle.shape(ids))
            inside = paddle.arange(hi - lo, dtype="int64") < feeds["lengths"][:, j:j + 1]
            logit = logit + (weights * inside.astype(weights.dtype)).sum(axis=1)
        return logit + self.wide_bias


class WideAndDeep(nn.Layer):
    """One campaign's scorer: the probability sigmoid(logit(deep(feeds)) + wide(feeds)), the deep network's
    logit plus a wide linear part over the user's ids (the Wide & Deep form, here with a wide part fitted per
    campaign on its seeds; see dygraph_model.fit_wide). Only scores: nothing is trained through it."""

    def __init__(self, deep, wide):
        super().__init__()
        self.deep, self.wide = deep, wide

    def forward(self, feeds):
        p = self.deep(feeds)
        logit = paddle.log(paddle.clip(p, min=1e-12)) - paddle.log(paddle.clip(1 - p, min=1e-12))
        return paddle.nn.functional.sigmoid(logit + self.wide(feeds))


def _dense(x, weight, bias, rows_first=False):
    """weight^T x + bias, feature-major: [N, out, B] from x [N, in, B] (or [N, B, in] if rows_first).

    weight is [N, in, out] and bias [N, out].
    """
    return paddle.matmul(weight, x, transpose_x=True, transpose_y=rows_first) + bias.unsqueeze(2)
