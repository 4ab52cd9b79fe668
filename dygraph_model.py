"""PaddleRec-style wrapper of the MetaHeac net: feeds, loss, optimiser and the MAML meta-step.

The meta-step adapts every parameter in the inner step, embedding tables
included, without copying a table: per task, the rows the support and query
batches touch are gathered (differentiably, so the outer gradient reaches the
table), both batches' ids are remapped to positions in those rows, and the
fast rows are rows - local_lr * grad. Rows a support batch does not touch get
a zero inner gradient, so this equals the dense computation
table - local_lr * grad(table) on every row the query batch reads.

The gather runs in two levels: once per table for the whole meta-batch, then
every task's rows from those. The backward of a gather from a table writes a
table-sized gradient (kw1: 67 MB), so gathering from the tables once makes one
such write per table per meta-step instead of one per task.

All tasks of a meta-batch run as one computation: the dense weights are
expanded to one copy per task, the support batches into one batch (the query
batches likewise), and the inner gradient of the sum of the tasks' support
losses gives every task its own gradient, since task t's loss depends only on
copy t and on task t's rows. Batches shorter than the longest (campaigns with
fewer rows than train_batch_size) are padded with rows of weight 0.
"""
import importlib.util
import os

import numpy as np
import paddle

from tools.utils import schema as S
from tools.utils.config import ConfigError


def _load_sibling(module):
    """Load `module`.py from this file's folder under a name tied to this module.

    The tools load a model folder by path; a plain `import net` could pick up
    another folder's net.py already imported in the same process.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), module + ".py")
    spec = importlib.util.spec_from_file_location(f"{__name__}_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


net_module = _load_sibling("net")

ID_ARRAYS = ("static", "dynamic", "ad")
# Table index (position in net_module.TABLE_NAMES) of every column of static | dynamic | ad.
COLUMN_TABLE = np.concatenate([
    np.arange(len(S.STATIC_FIELDS)),
    len(S.STATIC_FIELDS) + np.repeat(np.arange(len(S.DYNAMIC_FIELDS)), S.DYNAMIC_WIDTHS),
    len(net_module.USER_FIELDS) + np.arange(len(S.AD_FIELDS)),
])
_ID_SPLITS = np.cumsum([len(S.STATIC_FIELDS), S.DYNAMIC_WIDTH])  # where static | dynamic | ad meet
LOG_FLOOR = 1e-12  # p and 1 - p are clipped below at this inside the logs (see create_loss)


def compact_ids(batches, table_rows, groups=None):
    """Remap the ids of several batches to rows of per-table gathers.

    Returns (remapped batches, row ids per table): table t's gather is
    table_t[row_ids[t]] and a remapped id is a position in that gather.
    Batches in different `groups` (one int per batch, default all 0) get
    separate rows even for the same id: the gather holds group 0's sorted
    unique ids, then group 1's, and so on.

    Each (table, group) pair's ids are shifted past the pairs before it, so
    one presence map gives every pair's unique ids as a contiguous run; it
    does what np.unique(return_inverse=True) does in linear time instead of a
    sort.
    """
    groups = np.zeros(len(batches), np.int64) if groups is None else np.asarray(groups, np.int64)
    sizes = np.asarray(table_rows, np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes * (groups.max() + 1))])
    id_blocks = [np.concatenate([b[k] for k in ID_ARRAYS], axis=1).astype(np.int64) for b in batches]
    ids = np.concatenate(id_blocks)
    rows_of_column = sizes[COLUMN_TABLE]
    outside = (ids < 0) | (ids >= rows_of_column)
    if outside.any():  # a shifted id would silently land in the next table or group
        row, col = np.argwhere(outside)[0]
        field = net_module.TABLE_FIELDS[COLUMN_TABLE[col]]
        raise ConfigError(f"id {ids[row, col]} of field {field!r} (row {row} of the stacked batches) is outside "
                          f"its table 0..{rows_of_column[col] - 1}; hyper_parameters.max_idxs must equal "
                          "max_idxs in the schema.json of the data")
    group_of_row = np.repeat(groups, [len(block) for block in id_blocks])[:, None]
    shifted = ids + offsets[COLUMN_TABLE] + group_of_row * rows_of_column
    present = np.zeros(offsets[-1], dtype=bool)
    present[shifted] = True
    unique = np.flatnonzero(present)
    rank = np.cumsum(present) - 1  # rank[i] = position of shifted id i in `unique`
    starts = np.searchsorted(unique, offsets)
    local = rank[shifted] - starts[COLUMN_TABLE]
    row_ids = [(unique[lo:hi] - off) % size for lo, hi, off, size in zip(starts[:-1], starts[1:], offsets, sizes)]
    remapped, first = [], 0
    for batch, block in zip(batches, id_blocks):
        columns = np.split(local[first:first + len(block)], _ID_SPLITS, axis=1)
        remapped.append({**batch, **dict(zip(ID_ARRAYS, columns))})
        first += len(block)
    return remapped, row_ids


def stack_tasks(batches):
    """One batch of the tasks' batches, each padded to the longest with copies of its first row.

    weight is 1/rows on a task's own rows and 0 on padding, so the weighted
    sum of the losses over the stacked batch is the sum of the tasks' mean
    losses.
    """
    longest = max(len(b["label"]) for b in batches)
    keys = ID_ARRAYS + ("lengths", "label")
    stacked = {k: [] for k in keys + ("weight",)}
    for batch in batches:
        rows = len(batch["label"])
        padded = np.concatenate([np.arange(rows), np.zeros(longest - rows, np.int64)])
        for k in keys:
            stacked[k].append(np.asarray(batch[k])[padded])
        stacked["weight"].append(np.where(np.arange(longest) < rows, 1.0 / rows, 0.0))
    return {k: np.concatenate(v) for k, v in stacked.items()}


def gather_rows(tables, row_ids):
    """[table[ids]] for each table, differentiable with respect to the tables."""
    return [paddle.gather(table, paddle.to_tensor(ids)) for table, ids in zip(tables, row_ids)]


class DygraphModel:
    """Model hooks called by tools/trainer.py and tools/infer_meta.py; holds no state."""

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return net_module.MetaHeacNet(hp["max_idxs"], hp["embed_dim"], hp["mlp_dims"],
                                      hp["num_expert"], hp["num_output"], hp.get("embedding_init", "normal"))

    def create_feeds(self, batch):
        """Paddle tensors of a batch: ids as int64, label (and row weight, if any) in the default float dtype."""
        feeds = {k: paddle.to_tensor(np.asarray(batch[k], dtype=np.int64)) for k in ID_ARRAYS + ("lengths",)}
        for k in ("label", "weight"):
            if k in batch:
                feeds[k] = paddle.to_tensor(np.asarray(batch[k]), dtype=paddle.get_default_dtype())
        return feeds

    def create_loss(self, pred, label, weight=None):
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

    def create_optimizer(self, net, config, learning_rate=None):
        """Adam over all parameters; lr from hyper_parameters.optimizer unless given."""
        opt = config["hyper_parameters"].get("optimizer", {})
        if str(opt.get("class", "adam")).lower() != "adam":
            raise ConfigError(f"{config['config_path']}: hyper_parameters.optimizer.class is "
                              f"{opt.get('class')!r}; MetaHeac's outer and fine-tune optimiser is Adam: set class: adam")
        lr = opt.get("learning_rate", 0.001) if learning_rate is None else learning_rate
        return paddle.optimizer.Adam(learning_rate=float(lr), parameters=net.parameters())

    def create_metrics(self):
        return ["loss"]

    def train_forward(self, net, meta_batch, config):
        """Meta-loss of one meta-batch [(support, query), ...]: the mean query loss after one inner SGD step.

        hyper_parameters.meta_order 2 (default) keeps the inner gradient's
        graph (exact MAML); 1 treats the inner gradient as a constant.
        """
        hp = config["hyper_parameters"]
        order = hp.get("meta_order", 2)
        if order not in (1, 2):
            raise ConfigError(f"{config['config_path']}: hyper_parameters.meta_order is {order!r}; "
                              "use 2 (second-order MAML, the paper's) or 1 (first order)")
        local_lr = float(hp["local_lr"])
        names, tasks = net_module.TABLE_NAMES, len(meta_batch)
        tables = [getattr(net, name) for name in names]
        dense = {name: p for name, p in net.named_parameters() if name not in names}
        batches, meta_ids = compact_ids([b for pair in meta_batch for b in pair], [t.shape[0] for t in tables])
        meta_rows = gather_rows(tables, meta_ids)
        batches, task_ids = compact_ids(batches, [len(ids) for ids in meta_ids], np.repeat(np.arange(tasks), 2))
        weights = {**{name: p.unsqueeze(0).expand([tasks] + p.shape) for name, p in dense.items()},
                   **dict(zip(names, gather_rows(meta_rows, task_ids)))}
        support, query = (self.create_feeds(stack_tasks(batches[i::2])) for i in (0, 1))
        support_loss = self.create_loss(net(support, weights), support["label"], support["weight"])
        grads = paddle.grad(support_loss, list(weights.values()), create_graph=order == 2)
        fast = {name: w - local_lr * (g if order == 2 else g.detach()) for (name, w), g in zip(weights.items(), grads)}
        loss = self.create_loss(net(query, fast), query["label"], query["weight"]) / tasks
        return loss, {"loss": float(loss)}

    def infer_train_forward(self, net, batch, config):
        """Plain loss on one fine-tune batch; the caller runs backward and the optimiser step."""
        feeds = self.create_feeds(batch)
        loss = self.create_loss(net(feeds), feeds["label"])
        return loss, {"loss": float(loss)}

    def infer_forward(self, net, batch, config):
        """Click probabilities [B] as a NumPy array."""
        with paddle.no_grad():
            return net(self.create_feeds(batch)).numpy()
