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


def pool_lists(tables, dynamic, lengths, offsets):
    """Mean of each row's first `length` embeddings, per list: 7 x [B, D]; length 0 gives zeros.

    Only the ids inside the lengths are gathered, then summed into their row
    with one index_add per list and divided by the length. This reads about
    half the ids a masked sum over all 50 columns would, and its
    second-order graph is several times cheaper.
    """
    rows_n = dynamic.shape[0]
    row_of_id = paddle.arange(rows_n, dtype="int64").unsqueeze(1).expand([rows_n, max(np.diff(offsets))])
    pooled = []
    for j, (table, lo, hi) in enumerate(zip(tables, offsets[:-1], offsets[1:])):
        inside = paddle.arange(hi - lo, dtype="int64") < lengths[:, j:j + 1]
        rows = paddle.gather(table, paddle.masked_select(dynamic[:, lo:hi], inside))
        sums = paddle.index_add(paddle.zeros([rows_n, table.shape[1]], dtype=table.dtype),
                                paddle.masked_select(row_of_id[:, :hi - lo], inside), 0, rows)
        pooled.append(sums / paddle.clip(lengths[:, j:j + 1], min=1).astype(table.dtype))
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
        slower than a matmul of the same data; the gate is expanded over H
        before it multiplies the experts for the same reason).
        """
        params = params or {}

        def p(name):
            return params[name] if name in params else getattr(self, name)

        def w(name):  # a dense weight with its task axis
            return p(name).unsqueeze(0) if tasks is None else p(name)

        user, user_mean, ad = embed_fields(self.layout, feeds, p)         # [T*B, 14, D], [T*B, D], [T*B, 6, D]
        n_tasks = tasks or 1
        task = paddle.concat([user_mean, ad.reshape([ad.shape[0], -1])], axis=1)
        task = task.reshape([n_tasks, -1, task.shape[1]])                 # [T, B, 7D]
        experts = self._experts(user.reshape([n_tasks, -1, user.shape[1] * user.shape[2]]), w)  # [T, E, H, B]
        expert_gate = self._gate(task, "expert_gate", w).unsqueeze(2).expand(experts.shape)  # [T, E, H, B]
        mixed = (experts * expert_gate).sum(axis=1)                                          # [T, H, B]
        critics = paddle.nn.functional.sigmoid(_dense(mixed, w("critic_w"), w("critic_b")))  # [T, C, B]
        return (critics * self._gate(task, "critic_gate", w)).sum(axis=1).reshape([-1])

    def _experts(self, user, w):
        """All experts at once, [T, E, H, B]: one GEMM per task for the fused layer 1, then one per (task, expert)."""
        relu = paddle.nn.functional.relu
        tasks, rows = user.shape[0], user.shape[1]
        hidden = relu(_dense(user, w("expert_w0"), w("expert_b0"), rows_first=True))     # [T, E*H, B]
        hidden = hidden.reshape([tasks * self.num_expert, self.mlp_dims[0], rows])
        for k in range(1, len(self.mlp_dims)):
            weight = w(f"expert_w{k}").reshape([tasks * self.num_expert] + self.mlp_dims[k - 1:k + 1])
            hidden = relu(_dense(hidden, weight, w(f"expert_b{k}").reshape([tasks * self.num_expert, -1])))
        return hidden.reshape([tasks, self.num_expert, -1, rows])

    def _gate(self, task, gate, w):
        """Mixing weights [T, width, B] from the task vectors [T, B, 7D]."""
        hidden = paddle.nn.functional.relu(_dense(task, w(f"{gate}_w0"), w(f"{gate}_b0"), rows_first=True))
        return softmax(_dense(hidden, w(f"{gate}_w1"), w(f"{gate}_b1")), axis=1)


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
