"""PaddleRec-style wrapper of the MetaHeac net: feeds, loss, optimiser and the MAML meta-step.

The meta-step adapts every parameter in the inner step, embedding tables
included, without copying a table: per task, the rows its support and query
batches touch are gathered (differentiably, so the outer gradient reaches the
table), both batches' ids are remapped to positions in those rows, and the
fast rows are rows - local_lr * grad. Rows a support batch does not touch get
a zero inner gradient, so this equals the dense computation
table - local_lr * grad(table) on every row the query batch reads.

All tasks of a meta-batch run as one computation (StackedMetaBatch): the dense
weights are expanded to one copy per task, the support batches stacked into
one batch (the query batches likewise), and the inner gradient of the sum of
the tasks' support losses gives every task its own gradient, since task t's
loss depends only on copy t and on task t's rows. meta_loss_reference is the
same meta-loss written task by task as the paper writes it, to read first.
"""
import contextlib
import functools

import numpy as np
import paddle
from paddle import _C_ops

import net as net_module

LOG_FLOOR = 1e-12  # p and 1 - p are clipped below at this inside the logs (see create_loss)


# The hyper_parameters of this model folder (its readers' too): key -> (kind, default or "required", meaning).
# tools/utils/run/config.py checks a config against them (its kind_check lists the kinds).
HYPER_PARAMETERS = {
    "max_idxs": ("max_idxs", "schema", "vocabulary maxima [static, dynamic, ad], or schema (the data's schema.json)"),
    "embed_dim": ("int >= 1", "required", "embedding width"),
    "embedding_init": ("one of " + " | ".join(net_module.EMBEDDING_INITS), "normal",
                       "start of the tables: N(0, 1) as the official code, or xavier_uniform"),
    "mlp_dims": ("int list >= 1", "required", "widths of the expert MLP layers"),
    "num_expert": ("int >= 1", "required", "experts"),
    "num_output": ("int >= 1", "required", "critics"),
    "task_count": ("int >= 1", "required", "campaigns per meta-batch (reader_train.py)"),
    "sample_method": ("one of normal | sqrt | unit", "normal",
                      "campaign draw: in proportion to rows, to their square root, or uniform (reader_train.py)"),
    "meta_order": ("one of 1 | 2", 2, "2: exact second-order MAML; 1: first order"),
    "local_lr": ("number > 0", "required", "the inner SGD step"),
    "local_test_learning_rate": ("number > 0", "required", "Adam of fine-tuning on a test campaign's seeds"),
    "optimizer.class": ("one of adam | lazy_adam", "adam",
                        "the outer and fine-tuning optimiser (OPTIMIZERS); lazy_adam: LazyAdam"),
    "optimizer.learning_rate": ("number > 0", "required", "the outer Adam step"),
    "wide_weight": ("number >= 0", 2.0, "weight of a campaign's wide part (a logistic regression on its seeds' "
                    "ids) beside the fine-tuned network, in standard deviations; 0: the network alone, the paper's"),
}
WIDE_CS = tuple(np.logspace(-3, 2, 11))  # the inverse regularisations fit_wide chooses from
WIDE_FOLDS = 5


# ---------------------------------------------------------------- the meta-batch's table rows (compact_ids)
def columns(layout, batch, dtype=None):
    """The ids of static | dynamic | ad side by side, [B, columns] (of `dtype`, if given)."""
    return np.concatenate([np.asarray(batch[k]) for k in layout.ID_ARRAYS], axis=1, dtype=dtype)


def split_columns(layout, ids):
    """The inverse of columns: {static, dynamic, ad} of a [B, columns] array."""
    cut = np.cumsum([len(layout.static), layout.list_offsets[-1]])
    return dict(zip(layout.ID_ARRAYS, np.split(ids, cut, axis=1)))


def column_table(layout):
    """The table of every column of columns(layout, batch): [columns] indices into layout.table_names."""
    return np.concatenate([np.arange(len(layout.static)),
                           len(layout.static) + np.repeat(np.arange(len(layout.lists)), layout.list_widths),
                           len(layout.user_fields) + np.arange(len(layout.ad))])


def compact_ids(layout, batches, table_rows, groups=None):
    """Remap the ids of several batches to rows of per-table gathers.

    Returns (remapped batches, row ids per table): table t's gather is
    table_t[row_ids[t]] and a remapped id is a position in that gather.
    Batches in different `groups` (one int per batch, default all 0) get
    separate rows even for the same id: the gather holds group 0's sorted
    unique ids, then group 1's, and so on.

    Each (table, group) pair's ids are shifted past the pairs before it, so
    one presence map gives every pair's unique ids as a contiguous run; it
    does what np.unique(return_inverse=True) does in linear time instead of a
    sort. The shift is one [columns] vector per batch, and each table's
    start in the gathers comes off the presence map's running count, which
    is shorter than the ids (2 x 10 k rows x 63 columns against 334 k rows
    of the Tencent tables).
    """
    groups = np.zeros(len(batches), np.int64) if groups is None else np.asarray(groups, np.int64)
    sizes = np.asarray(table_rows, np.int64)
    spans = sizes * (groups.max() + 1)  # each table's rows times the groups
    offsets = np.concatenate([[0], np.cumsum(spans)])
    table_of_column = column_table(layout)
    rows_of_column = sizes[table_of_column]
    shifted, rows = [], [0]
    for batch, group in zip(batches, groups):
        ids = columns(layout, batch, np.intp)
        _check_ids(layout, ids, rows_of_column, table_of_column, rows[-1])
        rows.append(rows[-1] + len(ids))
        ids += offsets[table_of_column] + group * rows_of_column
        shifted.append(ids)
    shifted = np.concatenate(shifted)
    present = np.zeros(offsets[-1], dtype=bool)
    present[shifted] = True
    unique = np.flatnonzero(present)
    starts = np.searchsorted(unique, offsets)
    local = np.cumsum(present, dtype=np.intp)  # local[i] - 1: the rank of shifted id i among the unique ones,
    local -= np.repeat(starts[:-1] + 1, spans)  # less the rank of its table's first
    local = local[shifted]
    row_ids = [(unique[lo:hi] - off) % size for lo, hi, off, size in zip(starts[:-1], starts[1:], offsets, sizes)]
    remapped = [{**batch, **split_columns(layout, block)} for batch, block in zip(batches, np.split(local, rows[1:-1]))]
    return remapped, row_ids


def _check_ids(layout, ids, rows_of_column, table_of_column, rows_before):
    """Refuse an id outside its table's rows (shifted, it would silently land in the next table or group)."""
    if ids.min(axis=0).min() >= 0 and (ids.max(axis=0) < rows_of_column).all():
        return
    row, col = np.argwhere((ids < 0) | (ids >= rows_of_column))[0]
    raise ValueError(f"id {ids[row, col]} of table {layout.table_names[table_of_column[col]]} (row "
                     f"{rows_before + row} of the stacked batches) is outside the table's rows "
                     f"0..{rows_of_column[col] - 1}")


def gather_rows(tables, row_ids):
    """[table[ids]] for each table, differentiable with respect to the tables."""
    return [paddle.gather(table, paddle.to_tensor(ids)) for table, ids in zip(tables, row_ids)]


def read_rows(net, row_ids):
    """The rows row_ids[t] (sorted, unique) of each of net's tables, as leaf tensors whose gradient goes to the table.

    A gather from the table itself would make backward build a gradient of the
    table's full size (kw1: 263 k x 64) and add it to the table's .grad, the
    rest of it zeros. Here backward stops at the rows, and a hook adds their
    gradient to the table's .grad at those rows only (index_add_): the same
    .grad, without the table-sized temporary. net.grad_rows records the rows
    ({table name: row ids}): the gradient is zero outside them, so a run across
    processes sums only those rows (tools/utils/run/collectives.py).
    """
    names, rows = net.layout.table_names, []
    for name, ids in zip(names, row_ids):
        table, index = getattr(net, name), paddle.to_tensor(ids)
        with paddle.no_grad():
            leaf = paddle.gather(table, index)
        leaf.stop_gradient = False
        leaf.register_hook(functools.partial(_add_to_grad, table, index))
        rows.append(leaf)
    net.grad_rows = dict(zip(names, row_ids))
    return rows


def _add_to_grad(table, index, rows_grad):
    with paddle.no_grad():
        if table.grad is None:
            table.grad = paddle.zeros_like(table)
        paddle.index_add_(table.grad, index, 0, rows_grad)


class StackedMetaBatch:
    """A meta-batch [(support, query), ...] of T tasks as two stacked batches and the rows they touch.

    support, query: every task's batch in task order, each padded to the
    longest task's rows with copies of its first row, ids remapped to
    positions in the task's own rows of each table, plus a row `weight` of
    1/rows on a task's real rows and 0 on padding: the weighted sum of a
    batch's losses is the sum of the tasks' mean losses. Its gradient with
    respect to task t's weights is task t's own inner gradient (support); its
    mean over the T tasks is the meta-loss (query).

    The rows are gathered in two levels: the rows of the whole meta-batch from
    each table (read_rows: backward writes their gradient into the table's
    .grad at those rows, nothing table-sized), then every task's rows from
    those.
    """

    def __init__(self, meta_batch, layout):
        self.layout, self.tasks = layout, len(meta_batch)
        batches = [batch for pair in meta_batch for batch in pair]
        batches, self._meta_row_ids = compact_ids(layout, batches, layout.rows)
        batches, self._task_row_ids = compact_ids(layout, batches, [len(ids) for ids in self._meta_row_ids],
                                                  groups=np.repeat(np.arange(self.tasks), 2))
        self.support, self.query = self._stack(batches[0::2]), self._stack(batches[1::2])

    def _stack(self, batches):
        longest = max(len(b["label"]) for b in batches)
        keys = self.layout.ID_ARRAYS + ("lengths", "label")
        stacked = {k: [] for k in keys + ("weight",)}
        for batch in batches:
            rows = len(batch["label"])
            padded = np.concatenate([np.arange(rows), np.zeros(longest - rows, np.int64)])
            for k in keys:
                stacked[k].append(np.asarray(batch[k])[padded])
            stacked["weight"].append(np.where(np.arange(longest) < rows, 1.0 / rows, 0.0))
        return {k: np.concatenate(v) for k, v in stacked.items()}

    def task_weights(self, net):
        """Every parameter of net as the tasks' copies: a dense weight expanded to [T, *shape], a table as the
        rows the tasks touch (task 0's, then task 1's, ...), both differentiable with respect to net's own."""
        names = self.layout.table_names
        meta_rows = read_rows(net, self._meta_row_ids)
        return {**{name: p.unsqueeze(0).expand([self.tasks] + p.shape)
                   for name, p in net.named_parameters() if name not in names},
                **dict(zip(names, gather_rows(meta_rows, self._task_row_ids)))}


# ---------------------------------------------------------------- feeds, loss, optimiser (the baselines share them)
def create_feeds(batch):
    """Paddle tensors of a batch: ids as int64, label (and row weight, if any) in the default float dtype."""
    feeds = {k: paddle.to_tensor(np.asarray(batch[k], dtype=np.int64))
             for k in net_module.FieldLayout.ID_ARRAYS + ("lengths",)}
    for k in ("label", "weight"):
        if k in batch:
            feeds[k] = paddle.to_tensor(np.asarray(batch[k]), dtype=paddle.get_default_dtype())
    return feeds


def bce(pred, label, weight=None):
    """Binary cross-entropy from clip and log (the fused BCE ops have no double-grad kernel).

    The mean over rows, or the weighted sum when row weights are given.
    Each log's argument, p or 1 - p, is clipped below at LOG_FLOOR
    (1e-12, the floor torch's BCELoss puts under p(1 - p) in its
    gradient): wherever p(1 - p) >= 1e-12 the loss and its first and
    second derivatives equal torch.nn.BCELoss's (the official code's); in
    float32 that is every p but those under 1e-12 and p == 1.
    """
    losses = -(label * paddle.log(paddle.clip(pred, min=LOG_FLOOR))
               + (1 - label) * paddle.log(paddle.clip(1 - pred, min=LOG_FLOOR)))
    return losses.mean() if weight is None else (weight * losses).sum()


def adam(net, learning_rate):
    """Adam over all of net's parameters, torch's defaults (betas 0.9 / 0.999, eps 1e-8)."""
    return paddle.optimizer.Adam(learning_rate=float(learning_rate), parameters=net.parameters())


class LazyAdam(paddle.optimizer.Adam):
    """Adam in which a table moves only at the rows its step's gradient may reach (hyper_parameters.optimizer.class
    lazy_adam); not the official code's optimiser, an option for speed.

    Adam moves every row of every table every step: where a row's gradient is
    zero its moments decay and its weight still moves by momentum. Here a step
    that names its rows (net.grad_rows, which the meta-step records in
    read_rows and a run across processes replaces by every rank's rows)
    updates only those rows of each named table: their moments, and their
    weights by Adam's formula with the step's common bias correction; the
    other rows and their moments stay as they are. The dense weights, and every
    parameter in a step that names no rows (fine-tuning, which reads the
    tables directly), move as in Adam. The work, and the gradients zeroed
    after the step, fall from all the tables' rows to the rows read (at the
    Tencent shapes, on synthetic Zipf ids: 11% of them, tools/bench/model.py).
    The state is Adam's, so a checkpoint resumes under either. Its cost in
    quality: docs/performance.md.
    """

    def __init__(self, net, learning_rate):
        super().__init__(learning_rate=float(learning_rate), parameters=net.parameters())
        self._net, self._rows = net, {}

    def step(self):
        named = dict(self._net.named_parameters())
        self._rows = {named[name]: paddle.to_tensor(ids) for name, ids in
                      (vars(self._net).pop("grad_rows", None) or {}).items()
                      if named[name].grad is not None and len(ids) < named[name].shape[0]}  # all rows: Adam's
        self._create_accumulators(paddle.static.default_main_program().global_block(), list(self._rows))
        for table, index in self._rows.items():
            self._step_rows(table, index)
        with self._rows_held():
            super().step()

    def clear_grad(self, set_to_zero=True):
        with self._rows_held():
            super().clear_grad(set_to_zero)
        with paddle.no_grad():  # a named table's gradient is zero outside its rows
            for table, index in self._rows.items():
                if set_to_zero:
                    paddle.scatter_(table.grad, index, paddle.zeros([len(index)] + table.shape[1:], table.dtype))
                else:
                    table.clear_gradient(False)
        self._rows = {}

    @contextlib.contextmanager
    def _rows_held(self):
        """Adam's own step and clear_grad pass over the tables updated row by row (they skip stop_gradient)."""
        for table in self._rows:
            table.stop_gradient = True
        try:
            yield
        finally:
            for table in self._rows:
                table.stop_gradient = False

    @paddle.no_grad()
    def _step_rows(self, table, index):
        """Adam's update of table's rows `index` and their moments: Adam's own kernel on the gathered rows."""
        moment1, moment2, beta1_pow, beta2_pow = (self._get_accumulator_master(name, table) for name in (
            self._moment1_acc_str, self._moment2_acc_str, self._beta1_pow_acc_str, self._beta2_pow_acc_str))
        rows, m, v, grad = (paddle.gather(x, index) for x in (table, moment1, moment2, table.grad))
        rate = paddle.to_tensor([self.get_lr()], table.dtype)
        # the call paddle.optimizer.Adam._append_optimize_op makes (Paddle 3.3): no master weight, no found_inf,
        # not lazy_mode (that needs a sparse gradient), min_row_size_to_use_multithread, no multi-precision,
        # no global beta pows, no AMSGrad; it also advances the beta pows
        _C_ops.adam_(rows, grad, rate, m, v, None, beta1_pow, beta2_pow, None, None, self._beta1, self._beta2,
                     self._epsilon, False, 1000, False, False, False)
        for target, value in ((table, rows), (moment1, m), (moment2, v)):
            paddle.scatter_(target, index, value)


# hyper_parameters.optimizer.class: the optimiser over a net's parameters at a rate
OPTIMIZERS = {"adam": adam, "lazy_adam": LazyAdam}


def optimizer(net, config, learning_rate=None):
    """The optimiser hyper_parameters.optimizer.class names, over all of net's parameters, at
    optimizer.learning_rate (the outer step's) unless learning_rate is given (fine-tuning's)."""
    chosen = config["hyper_parameters"]["optimizer"]
    return OPTIMIZERS[chosen["class"]](net, chosen["learning_rate"] if learning_rate is None else learning_rate)



def infer_train_forward(net, batch):
    """(loss, metrics) of one fine-tuning batch; the caller runs backward and the optimiser step."""
    feeds = create_feeds(batch)
    loss = bce(net(feeds), feeds["label"])
    return loss, {"loss": float(loss)}


def infer_forward(net, batch):
    """Click probabilities [B] of a batch, a NumPy array."""
    with paddle.no_grad():
        return net(create_feeds(batch)).numpy()


# ---------------------------------------------------------------- test time: a campaign's wide part
def multi_hot(layout, batch):
    """The features net.WideLinear weighs, as a SciPy CSR matrix [B, sum of the user tables' rows]: a 1 in the
    column of each static id and of each list id inside its length (an id listed twice counts 2)."""
    import scipy.sparse
    starts = np.concatenate([[0], np.cumsum(layout.rows[:len(layout.user_fields)])])
    n = len(batch["static"])
    rows = [np.repeat(np.arange(n), len(layout.static))]
    cols = [(np.asarray(batch["static"]) + starts[:len(layout.static)]).ravel()]
    offsets = layout.list_offsets
    for j, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        inside = np.arange(hi - lo) < np.asarray(batch["lengths"])[:, j:j + 1]
        rows.append(np.nonzero(inside)[0])
        cols.append(np.asarray(batch["dynamic"])[:, lo:hi][inside] + starts[len(layout.static) + j])
    rows, cols = np.concatenate(rows).astype(np.int32), np.concatenate(cols).astype(np.int32)  # liblinear's
    return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, starts[-1]))  # repeats add up


def rank_auc(estimator, x, labels):
    """ROC AUC of estimator's decision function on x, from the ranks of the scores (ties share their mean
    rank), as a scikit-learn scorer: roc_auc_score's value without its input checks, which took a fifth of
    fit_wide's time."""
    from scipy.stats import rankdata
    ranks, positive = rankdata(estimator.decision_function(x)), np.asarray(labels) == 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fit_wide(layout, rows, threads=1):
    """net.WideLinear holding a logistic regression of rows' labels on multi_hot(rows) (scikit-learn, liblinear,
    L2), its inverse regularisation C chosen from WIDE_CS by the AUC of stratified WIDE_FOLDS-fold
    cross-validation on the rows (fewer folds when a class has fewer rows; C = 1 when one has a single row).
    None when the rows hold one class only.

    The regression sees only the columns some row has: a column of zeros has weight 0 at the optimum (its
    gradient is the L2 term alone), and liblinear's time grows with the columns, every table's rows. The
    cross-validation's fits run on `threads` threads (held_out_aucs)."""
    labels = np.asarray(rows["label"])
    folds = min(WIDE_FOLDS, int(labels.sum()), int((1 - labels).sum()))
    if folds < 1:
        return None
    features = multi_hot(layout, rows)
    used = np.unique(features.indices)
    x = features[:, used]
    c = WIDE_CS[int(np.argmax(held_out_aucs(x, labels, folds, threads).sum(axis=0)))] if folds >= 2 else 1.0
    fit = _liblinear(x, labels, c)
    wide = net_module.WideLinear(layout)
    coef = np.zeros(features.shape[1], np.float32)
    coef[used] = fit.coef_.ravel()
    starts = np.cumsum([0] + list(layout.rows[:len(layout.user_fields)]))
    for field, lo, hi in zip(layout.user_fields, starts[:-1], starts[1:]):
        getattr(wide, "wide_" + field).set_value(coef[lo:hi, None])
    wide.wide_bias.set_value(np.asarray(fit.intercept_, np.float32).reshape([1]))
    return wide


def held_out_aucs(x, labels, folds, threads=1):
    """[folds, len(WIDE_CS)]: the held-out AUC (rank_auc) of the regression of each C fitted on the other folds
    of StratifiedKFold(folds, shuffle=True, random_state=0). fit_wide takes the C of the best sum, the first of
    equals: scikit-learn's LogisticRegressionCV with those folds, scoring and Cs chooses the same.

    The fits are independent jobs on `threads` threads: liblinear's primal solver for L2 leaves Python's lock
    (a hot campaign of 100 k seeds spends minutes here) and draws no random numbers, so the AUCs do not depend
    on the threads. A stop (SIGTERM, Ctrl-C) or a failed fit drops the fits not yet started."""
    from concurrent.futures import ThreadPoolExecutor
    from sklearn.model_selection import StratifiedKFold
    splits = StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(labels)), labels)
    jobs = [(train, test, c) for train, test in splits for c in WIDE_CS]

    def held_out_auc(job):
        train, test, c = job
        return rank_auc(_liblinear(x[train], labels[train], c), x[test], labels[test])

    with ThreadPoolExecutor(max(1, threads)) as pool:  # map cancels what has not started when it raises
        return np.reshape(list(pool.map(held_out_auc, jobs)), (folds, len(WIDE_CS)))


def _liblinear(x, labels, c):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=c, solver="liblinear", max_iter=1000).fit(x, labels)


def logit(p):
    """log(p / (1 - p)) of probabilities, floored as create_loss floors them."""
    p = np.asarray(p, np.float64)
    return np.log(np.maximum(p, LOG_FLOOR)) - np.log(np.maximum(1 - p, LOG_FLOOR))


# ---------------------------------------------------------------- the meta-loss as the paper writes it
def meta_loss_reference(net, meta_batch, local_lr, second_order=True):
    """The meta-loss of train_forward, one task after another (the paper's Algorithm 1, the official
    metamodel.py's loop), to read and to check the fast version against. With theta every parameter of net,
    the tables whole, and L the loss (bce) of a batch:

        theta_i = theta - local_lr * grad_theta L(theta; support_i)      the inner step of task i
        meta-loss = mean over i of L(theta_i; query_i)                   what the outer step minimises

    second_order False takes the inner gradient as a constant (first-order MAML). train_forward computes the
    same for all tasks at once, on only the table rows they touch (StackedMetaBatch); tests/test_meta_grad.py
    holds the two equal, loss and gradients. This one builds a gradient of every table's full size per task.
    """
    theta = dict(net.named_parameters())
    losses = []
    for support, query in meta_batch:
        support, query = create_feeds(support), create_feeds(query)
        inner = paddle.grad(bce(net(support, theta), support["label"]), list(theta.values()),
                            create_graph=second_order)
        theta_i = {name: w - local_lr * g for (name, w), g in zip(theta.items(), inner)}
        losses.append(bce(net(query, theta_i), query["label"]))
    return paddle.add_n(losses) / len(losses)


class DygraphModel:
    """The model hooks the tools call (tools/utils/run/contract.py: ModelHooks, and the optional campaign_net);
    holds no state.

    Reads hyper_parameters embed_dim, mlp_dims, num_expert, num_output,
    embedding_init, local_lr, meta_order, local_test_learning_rate and
    optimizer.learning_rate, and the data's field layout config["data_schema"]
    (tools/utils/run/config.py validates them all before a model is built).
    """

    HYPER_PARAMETERS = HYPER_PARAMETERS

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return net_module.MetaHeacNet(net_module.FieldLayout.from_schema(config["data_schema"]), hp["embed_dim"],
                                      hp["mlp_dims"], hp["num_expert"], hp["num_output"], hp["embedding_init"])

    def create_feeds(self, batch):
        return create_feeds(batch)

    def create_loss(self, pred, label, weight=None):
        return bce(pred, label, weight)

    def create_optimizer(self, net, config, learning_rate=None):
        return optimizer(net, config, learning_rate)

    def train_forward(self, net, meta_batch, config):
        """Meta-loss of one meta-batch [(support, query), ...]: the mean query loss after one inner SGD step,
        meta_loss_reference computed for all tasks at once (StackedMetaBatch).

        hyper_parameters.meta_order 2 keeps the inner gradient's graph (exact
        MAML, the official code's); 1 treats the inner gradient as a constant.
        """
        hp = config["hyper_parameters"]
        second_order = hp["meta_order"] == 2
        stacked = StackedMetaBatch(meta_batch, net.layout)
        support, query = self.create_feeds(stacked.support), self.create_feeds(stacked.query)
        weights = stacked.task_weights(net)
        # the sum of the tasks' mean support losses: each task's gradient is its own
        support_loss = self.create_loss(net(support, weights, stacked.tasks), support["label"], support["weight"])
        grads = paddle.grad(support_loss, list(weights.values()), create_graph=second_order)
        fast = {name: w - hp["local_lr"] * (g if second_order else g.detach())
                for (name, w), g in zip(weights.items(), grads)}
        # the meta-loss: the mean over tasks of their mean query losses
        loss = self.create_loss(net(query, fast, stacked.tasks), query["label"], query["weight"]) / stacked.tasks
        return loss, {"loss": float(loss)}

    def infer_train_forward(self, net, batch, config):
        return infer_train_forward(net, batch)

    def infer_forward(self, net, batch, config):
        return infer_forward(net, batch)

    def campaign_net(self, net, seeds, reference, config):
        """The network that scores a campaign, once `net` is fine-tuned on its seeds (rows with labels).

        With hyper_parameters.wide_weight w > 0: net.WideAndDeep of `net` and a wide part fitted on the seeds
        (fit_wide), scaled so that on the reference users (rows of users unrelated to the campaign, with its
        ad ids) it has mean 0 and w times the standard deviation of the network's logit. The ranking is then
        that of z(logit) + w z(wide), the two parts standardised on the same users: the seeds' own signal
        beside what the network brings from other campaigns, neither drowning the other whatever the scale
        of the regression's weights. w = 0, or seeds of one class: `net` alone.
        """
        weight = config["hyper_parameters"]["wide_weight"]
        wide = fit_wide(net.layout, seeds, config["runner"]["thread_num"]) if weight > 0 else None
        if wide is None:
            return net
        feeds = self.create_feeds(reference)
        with paddle.no_grad():
            deep_logits, wide_logits = logit(net(feeds).numpy()), wide(feeds).numpy().astype(np.float64)
        spread = wide_logits.std()
        if not spread > 0:  # every weight regularised to zero: the regression ranks nothing
            return net
        scale = weight * (deep_logits.std() or 1.0) / spread
        for p in wide.parameters():
            p.set_value((p.numpy() * scale).astype(np.float32))
        wide.wide_bias.set_value(wide.wide_bias.numpy() - np.float32(scale * wide_logits.mean()))
        scorer = net_module.WideAndDeep(net, wide)
        scorer.eval()
        return scorer
