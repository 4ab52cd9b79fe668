"""What the ranks of a run exchange when they arrive together (gloo on CPUs, NCCL on GPUs): every meta-step's
gradient and metrics, and the starting state (docs/distributed.md).

The gradient sum is the hot path of a run across processes: two all-reduces
per meta-step. A model may say that a parameter's gradient is zero outside
some rows (net.grad_rows, {parameter name: sorted row ids}, which MetaHeac's
meta-step sets for its embedding tables: dygraph_model.read_rows). The ranks
first learn which rows of every parameter any of them has a gradient on (a
byte per row), then sum the gradients of those rows in one flat buffer, each
rank's weighted by its share of the meta-batch. For 5 tasks x (1024 + 1024)
rows at the Tencent shapes that is about 3 M numbers of 22 M.

Paddle 3.3's gloo ends a collective with an error after 30 s (not configurable
from Python); a peer that died is noticed within about a second (its sockets
close), one that hangs after those 30 s. ReduceOp.AVG fails on CPU, so sums
are taken and scaled.
"""
import numpy as np

from ..errors import restart_calls_on_stop
from .contract import take_grad_rows


class Collectives:
    """Collective calls of one rank of `size`; lost(what, error) turns a failed call into the run's
    DistributedError (tools/utils/run/store_channel.StoreChannel.lost)."""

    def __init__(self, paddle, size, lost):
        self.paddle, self.size, self.lost = paddle, size, lost

    def all_reduce(self, array, what, op="sum"):
        """The element-wise sum (or max) of a NumPy array over the ranks."""
        paddle = self.paddle
        tensor = paddle.to_tensor(array)
        reduce_op = {"sum": paddle.distributed.ReduceOp.SUM, "max": paddle.distributed.ReduceOp.MAX}[op]
        with paddle.no_grad():
            self._call(paddle.distributed.all_reduce, tensor, op=reduce_op, what=what)
        return tensor.numpy()

    def broadcast_bytes(self, data, what, main):
        """Rank 0's bytes `data` on every rank (`main`: this is rank 0)."""
        paddle = self.paddle
        size = paddle.to_tensor(np.array([len(data) if main else 0], np.int64))
        with paddle.no_grad():
            self._call(paddle.distributed.broadcast, size, src=0, what=what)
            buf = paddle.to_tensor(np.frombuffer(data, np.uint8)) if main else \
                paddle.zeros([int(size.numpy()[0])], dtype="uint8")
            self._call(paddle.distributed.broadcast, buf, src=0, what=what)
        return data if main else buf.numpy().tobytes()

    def sum_gradients(self, net, share, what):
        """Every parameter's .grad becomes the sum over the ranks of share x its gradient on that rank.

        A parameter no rank's gradient reached keeps no gradient (as in one process). net.grad_rows
        (contract.Network) becomes every rank's rows: those the sum may be non-zero on, of each parameter some
        rank named (what the optimiser reads: dygraph_model.LazyAdam).
        """
        paddle = self.paddle
        named = list(net.named_parameters())
        named_rows = take_grad_rows(net)
        rows = self._rows_to_sum(named, named_rows, what)
        net.grad_rows = {name: ids for (name, _), ids in zip(named, rows)
                         if name in named_rows and isinstance(ids, np.ndarray)}
        summed = [(p, ids) for (_, p), ids in zip(named, rows) if ids is not None]
        with paddle.no_grad():
            for p, _ in summed:  # a gradient on every rank where any rank has one
                if p.grad is None:
                    p.grad = paddle.zeros_like(p)
            summed = [(p, ids) for p, ids in summed if isinstance(ids, slice) or len(ids)]
            if not summed:
                return
            parts = [(p.grad if isinstance(ids, slice) else paddle.gather(p.grad, paddle.to_tensor(ids))).reshape([-1])
                     for p, ids in summed]
            buffer = paddle.concat(parts)
            if share != 1:
                buffer = buffer * share
            self._call(paddle.distributed.all_reduce, buffer, what=what)
            for (p, ids), part in zip(summed, paddle.split(buffer, [int(np.prod(x.shape)) for x in parts])):
                grad = p.grad
                if isinstance(ids, slice):
                    paddle.assign(part.reshape(p.shape), grad)
                else:  # the other rows are zero on every rank
                    paddle.scatter_(grad, paddle.to_tensor(ids), part.reshape([len(ids)] + p.shape[1:]),
                                    overwrite=True)

    def _rows_to_sum(self, named, named_rows, what):
        """Per parameter of `named` [(name, parameter)]: None if no rank's gradient reached it, else the sorted ids
        of the rows (of its first axis) any rank's gradient may be non-zero on, or slice(None) for all of them.

        One all-reduce (max) of a byte per parameter, 1 if its gradient reached a rank, followed by a byte per
        row, 1 if a rank's gradient may be non-zero there (every row, unless named_rows names some).
        """
        sizes = [1 + (p.shape[0] if p.shape else 1) for _, p in named]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        touched = np.zeros(offsets[-1], np.uint8)
        for (name, p), start, stop in zip(named, offsets, offsets[1:]):
            if p.grad is not None:
                touched[start] = 1
                if name in named_rows:
                    touched[start + 1 + np.asarray(named_rows[name], np.int64)] = 1
                else:
                    touched[start + 1:stop] = 1
        touched = self.all_reduce(touched, what, op="max")
        rows = []
        for start, stop in zip(offsets, offsets[1:]):
            ids = np.flatnonzero(touched[start + 1:stop])
            rows.append(None if not touched[start] else slice(None) if len(ids) == stop - start - 1 else ids)
        return rows

    def _call(self, collective, *args, what, **kwargs):
        restart_calls_on_stop()
        try:
            collective(*args, **kwargs)
        except (RuntimeError, ValueError, OSError) as e:  # gloo: "[.../pair.cc:584] TIMEOUT ..." and the like
            raise self.lost(what, e) from e

