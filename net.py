"""The MetaHeac network (Zhu et al., KDD 2021) as a function of explicit parameters.

`net(feeds, params)` computes with `params[name]` where the mapping has that
name and with the layer's own parameter otherwise, so a task's fast weights are
passed in (like torch.func.functional_call) instead of being attached to the
parameters. An embedding table's entry may be the full table or only the rows a
batch touches, with the batch's ids remapped to positions in those rows: a
lookup is a gather of the given ids from the given 2-D tensor either way.

Several tasks run as one computation: a dense weight given with a leading task
axis ([T, *shape]) splits the batch into T equal blocks of consecutive rows,
and block t is computed with weight t (matched-batch matmuls). The layer's own
weights are one task (T = 1).

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

from tools.utils import schema as S

USER_FIELDS = S.STATIC_FIELDS + S.DYNAMIC_FIELDS
TABLE_FIELDS = USER_FIELDS + S.AD_FIELDS
TABLE_NAMES = tuple("emb_" + field for field in TABLE_FIELDS)
_GROUPS = (("static", S.STATIC_FIELDS), ("dynamic", S.DYNAMIC_FIELDS), ("ad", S.AD_FIELDS))
EMBEDDING_INITS = ("normal", "xavier_uniform")


def embedding_initializer(init, rows, dim):
    """The initializer of a [rows, dim] table: N(0, 1) (the official code's) or xavier-uniform."""
    if init == "normal":
        return nn.initializer.Normal(0.0, 1.0)
    if init == "xavier_uniform":
        bound = math.sqrt(6.0 / (rows + dim))
        return nn.initializer.Uniform(-bound, bound)
    raise ValueError(f"hyper_parameters.embedding_init is {init!r}; use one of {list(EMBEDDING_INITS)} "
                     "(normal is the official code's N(0, 1))")


def table_sizes(max_idxs):
    """Rows of each embedding table (max id + 1), in TABLE_FIELDS order.

    `max_idxs` is the config's [[7 static], [7 dynamic], [6 ad]] list.
    """
    if not (isinstance(max_idxs, (list, tuple)) and len(max_idxs) == len(_GROUPS)):
        raise ValueError(f"hyper_parameters.max_idxs must be 3 lists [static, dynamic, ad], got {max_idxs!r}; "
                         "copy max_idxs from the schema.json of the data")
    sizes = []
    for (group, fields), maxima in zip(_GROUPS, max_idxs):
        if not (isinstance(maxima, (list, tuple)) and len(maxima) == len(fields)
                and all(isinstance(m, int) and m >= 0 for m in maxima)):
            raise ValueError(f"hyper_parameters.max_idxs {group} entry must be {len(fields)} non-negative "
                             f"integers (one per field {list(fields)}), got {maxima!r}")
        sizes.extend(m + 1 for m in maxima)
    return sizes


def softmax(x, axis):
    """Softmax along `axis` from exp/sum (F.softmax has no double-grad kernel).

    The row maximum is subtracted as a constant: softmax does not depend on a
    per-row shift, so this changes no value and no gradient.
    """
    e = paddle.exp(x - x.max(axis=axis, keepdim=True).detach())
    return e / e.sum(axis=axis, keepdim=True)


def pool_lists(tables, dynamic, lengths):
    """Mean of each row's first `length` embeddings, per list: 7 x [B, D]; length 0 gives zeros.

    Only the ids inside the lengths are gathered, then summed into their row
    with one index_add per list and divided by the length. This reads about
    half the ids a masked sum over all 50 columns would, and its
    second-order graph is several times cheaper.
    """
    rows_n = dynamic.shape[0]
    row_of_id = paddle.arange(rows_n, dtype="int64").unsqueeze(1).expand([rows_n, max(S.DYNAMIC_WIDTHS)])
    pooled = []
    for j, (table, lo, hi) in enumerate(zip(tables, S.DYNAMIC_OFFSETS[:-1], S.DYNAMIC_OFFSETS[1:])):
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


def embed_fields(feeds, p):
    """The user-field embeddings [B, 14, D] (static fields, then pooled lists), their mean over
    the fields [B, D], and the ad embeddings [B, 6, D].

    p(name) gives the table `name` (models/common.py reuses this with its own tables).
    The mean is summed from the parts before they are joined: a mean over
    the middle axis of [B, 14, D] costs more than the rest of this function.
    """
    n_static, n_user = len(S.STATIC_FIELDS), len(USER_FIELDS)
    single = lookup([p(name) for name in TABLE_NAMES[:n_static]], feeds["static"])
    lists = pool_lists([p(name) for name in TABLE_NAMES[n_static:n_user]], feeds["dynamic"], feeds["lengths"])
    user = paddle.concat([single] + [pooled.unsqueeze(1) for pooled in lists], axis=1)
    user_mean = (single.sum(axis=1) + paddle.add_n(lists)) / n_user
    return user, user_mean, lookup([p(name) for name in TABLE_NAMES[n_user:]], feeds["ad"])


class MetaHeacNet(nn.Layer):
    """Embeddings -> hybrid experts (mixed by a task gate) -> hybrid critics (mixed by a second gate).

    Parameter names: `emb_<field>` for the 20 tables; `expert_w0/b0` (all
    experts' first layer fused into one [user_dim, E*H] matrix), `expert_wK/bK`
    for K >= 1 ([E, H, H'] per-expert stacks); `expert_gate_w0/b0/w1/b1`;
    `critic_w/b` (the critic heads side by side, [H, C]); `critic_gate_w0/b0/w1/b1`.
    """

    def __init__(self, max_idxs, embed_dim=64, mlp_dims=(64, 64), num_expert=8, num_output=5,
                 embedding_init="normal"):
        super().__init__()
        self.embed_dim, self.num_expert = embed_dim, num_expert
        self.mlp_dims = list(mlp_dims)
        for name, rows in zip(TABLE_NAMES, table_sizes(max_idxs)):
            init = embedding_initializer(embedding_init, rows, embed_dim)
            self.add_parameter(name, self.create_parameter([rows, embed_dim], default_initializer=init))
        user_dim = len(USER_FIELDS) * embed_dim
        task_dim = (1 + len(S.AD_FIELDS)) * embed_dim
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

    def forward(self, feeds, params=None):
        """Click probability [T*B] for feeds {static, dynamic, lengths, ad} (int64, T*B rows each).

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
            value = p(name)
            return value if value.ndim > getattr(self, name).ndim else value.unsqueeze(0)

        user, user_mean, ad = embed_fields(feeds, p)                      # [T*B, 14, D], [T*B, D], [T*B, 6, D]
        tasks = w("expert_w0").shape[0]
        task = paddle.concat([user_mean, ad.reshape([ad.shape[0], -1])], axis=1)
        task = task.reshape([tasks, -1, task.shape[1]])                   # [T, B, 7D]
        experts = self._experts(user.reshape([tasks, -1, user.shape[1] * user.shape[2]]), w)  # [T, E, H, B]
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


def _dense(x, weight, bias, rows_first=False):
    """weight^T x + bias, feature-major: [N, out, B] from x [N, in, B] (or [N, B, in] if rows_first).

    weight is [N, in, out] and bias [N, out].
    """
    return paddle.matmul(weight, x, transpose_x=True, transpose_y=rows_first) + bias.unsqueeze(2)
