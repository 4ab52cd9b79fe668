"""PaddleRec-style wrapper of the MetaHeac net: feeds, loss, optimiser and the MAML meta-step.

The meta-step adapts every parameter in the inner step, embedding tables
included, without copying a table: per task, the rows the support and query
batches touch are gathered (differentiably, so the outer gradient reaches the
table), both batches' ids are remapped to positions in those rows, and the
fast rows are rows - local_lr * grad. Rows a support batch does not touch get
a zero inner gradient, so this equals the dense computation
table - local_lr * grad(table) on every row the query batch reads.

The gather runs in two levels: once per table for the whole meta-batch, then
per task from those rows. The backward of a gather from a table writes a
table-sized gradient (kw1: 67 MB), so gathering from the tables once makes one
such write per table per meta-step instead of one per task.
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
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] inside the log


def compact_ids(batches, table_rows):
    """Remap the ids of several batches to rows of per-table gathers.

    Returns (remapped batches, row ids per table): table t's gather is
    table_t[row_ids[t]] (sorted unique ids) and a remapped id is a position in
    that gather. Each table's ids are shifted by the rows of the tables before
    it, so one presence map over all tables gives every table's unique ids as
    a contiguous run; it does what np.unique(return_inverse=True) does in
    linear time instead of a sort.
    """
    offsets = np.concatenate([[0], np.cumsum(table_rows)]).astype(np.int64)
    id_blocks = [np.concatenate([b[k] for k in ID_ARRAYS], axis=1).astype(np.int64) for b in batches]
    ids = np.concatenate(id_blocks)
    rows_of_column = np.diff(offsets)[COLUMN_TABLE]
    outside = (ids < 0) | (ids >= rows_of_column)
    if outside.any():  # a shifted id would silently land in the next table
        row, col = np.argwhere(outside)[0]
        field = net_module.TABLE_FIELDS[COLUMN_TABLE[col]]
        raise ConfigError(f"id {ids[row, col]} of field {field!r} (row {row} of the stacked batches) is outside "
                          f"its table 0..{rows_of_column[col] - 1}; hyper_parameters.max_idxs must equal "
                          "max_idxs in the schema.json of the data")
    shifted = ids + offsets[COLUMN_TABLE]
    present = np.zeros(offsets[-1], dtype=bool)
    present[shifted] = True
    unique = np.flatnonzero(present)
    rank = np.cumsum(present) - 1  # rank[i] = position of shifted id i in `unique`
    starts = np.searchsorted(unique, offsets)
    local = rank[shifted] - starts[COLUMN_TABLE]
    row_ids = [unique[lo:hi] - off for lo, hi, off in zip(starts[:-1], starts[1:], offsets)]
    remapped, first = [], 0
    for batch, block in zip(batches, id_blocks):
        columns = np.split(local[first:first + len(block)], _ID_SPLITS, axis=1)
        remapped.append({**batch, **dict(zip(ID_ARRAYS, columns))})
        first += len(block)
    return remapped, row_ids


def gather_rows(tables, row_ids):
    """[table[ids]] for each table, differentiable with respect to the tables."""
    return [paddle.gather(table, paddle.to_tensor(ids)) for table, ids in zip(tables, row_ids)]


class DygraphModel:
    """Model hooks called by tools/trainer.py and tools/infer_meta.py; holds no state."""

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return net_module.MetaHeacNet(hp["max_idxs"], hp["embed_dim"], hp["mlp_dims"],
                                      hp["num_expert"], hp["num_output"])

    def create_feeds(self, batch):
        """Paddle tensors of a batch: ids as int64, label in the default float dtype."""
        feeds = {k: paddle.to_tensor(np.asarray(batch[k], dtype=np.int64)) for k in ID_ARRAYS + ("lengths",)}
        feeds["label"] = paddle.to_tensor(np.asarray(batch["label"]), dtype=paddle.get_default_dtype())
        return feeds

    def create_loss(self, pred, label):
        """Mean binary cross-entropy from clip and log (the fused BCE ops have no double-grad kernel)."""
        pred = paddle.clip(pred, EPS, 1 - EPS)
        return -(label * paddle.log(pred) + (1 - label) * paddle.log(1 - pred)).mean()

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
        names = net_module.TABLE_NAMES
        tables = [getattr(net, name) for name in names]
        dense = {name: p for name, p in net.named_parameters() if name not in names}
        batches, meta_ids = compact_ids([b for pair in meta_batch for b in pair], [t.shape[0] for t in tables])
        meta_rows = gather_rows(tables, meta_ids)
        query_losses = []
        for support, query in zip(batches[::2], batches[1::2]):
            (support, query), task_ids = compact_ids([support, query], [len(ids) for ids in meta_ids])
            rows = dict(zip(names, gather_rows(meta_rows, task_ids)))
            fast = self._inner_step(net, support, {**dense, **rows}, local_lr, order == 2)
            query = self.create_feeds(query)
            query_losses.append(self.create_loss(net(query, fast), query["label"]))
        loss = paddle.add_n(query_losses) / len(query_losses)
        return loss, {"loss": float(loss)}

    def _inner_step(self, net, support, weights, local_lr, second_order):
        """Fast weights {name: w - local_lr * d support_loss / d w} for the given weights."""
        feeds = self.create_feeds(support)
        support_loss = self.create_loss(net(feeds, weights), feeds["label"])
        grads = paddle.grad(support_loss, list(weights.values()), create_graph=second_order)
        return {name: w - local_lr * (g if second_order else g.detach())
                for (name, w), g in zip(weights.items(), grads)}

    def infer_train_forward(self, net, batch, config):
        """Plain loss on one fine-tune batch; the caller runs backward and the optimiser step."""
        feeds = self.create_feeds(batch)
        loss = self.create_loss(net(feeds), feeds["label"])
        return loss, {"loss": float(loss)}

    def infer_forward(self, net, batch, config):
        """Click probabilities [B] as a NumPy array."""
        with paddle.no_grad():
            return net(self.create_feeds(batch)).numpy()
