"""Runs across processes and machines under PaddlePaddle's own launcher: which process this is, and what the
processes exchange (docs/distributed.md).

    python -m paddle.distributed.launch --nproc_per_node 2 tools/trainer.py -m config_big.yaml
    python -m paddle.distributed.launch --master HOST:PORT --nnodes 2 --nproc_per_node 4 tools/trainer.py -m ...

The launcher starts the processes (ranks) and gives each its rank in the
environment (PADDLE_TRAINER_ID of PADDLE_TRAINERS_NUM). join() connects them
(paddle.distributed.init_parallel_env: gloo on CPUs, NCCL on GPUs) and returns
a Group; outside the launcher, or with one process, a Single, which has the
same methods and exchanges nothing, so the trainer and meta-inference have one
path and a one-process run is what it always was.

Meta-training (tools/utils/training.py): every rank draws the same meta-batch
and keeps a contiguous block of task_count / ranks tasks (tasks()); it
back-propagates its share of the meta-loss, the sum of its tasks' query losses
divided by task_count, and the gradients are summed over the ranks by an
all-reduce (backward()): every rank then holds the gradient of the mean over
all task_count tasks and takes the same Adam step. Rank 0 alone opens, locks
and writes the run folder (SharedFolder); it decides where to resume and
broadcasts its weights and optimizer state (sync_state), so no other rank
reads the folder or needs it on its machine. Meta-inference
(tools/infer_meta.py): rank r scores test campaigns r, r + ranks, ...
(campaigns()) and rank 0 gathers their results (gather()).

Two channels, for two kinds of waiting:
- collectives (gloo or NCCL) where the ranks arrive together: the gradient
  all-reduce of every meta-step and the broadcast of the starting state.
  Paddle 3.3's gloo ends a collective with an error after 30 s (not
  configurable from Python); a peer that died is noticed within about a second
  (its sockets close), one that hangs after those 30 s.
- the launcher's TCP store (a key-value server in rank 0's process) where
  ranks wait for one another for long: rank 0 writing a checkpoint or deciding
  where to resume, the ranks finishing their share of test campaigns. Polled,
  for at most WAIT_SECONDS; if rank 0 dies, the store's connection breaks at once.
  (Every rank makes the same exchanges in the same order, so the n-th one of
  every rank uses the same keys.)

Failure: an exception on one rank is posted to the store before it ends
(session), so a rank that waits for it stops with that rank's message;
a lost collective or store connection becomes a DistributedError (one line,
exit 2) naming what was being done. The launcher, seeing a process end
non-zero, stops the others (SIGTERM, then SIGKILL 3 s later) and exits non-zero.
Checkpoints are written by files.atomic_write and marked done last, so a rank
killed at any moment leaves the last finished checkpoint whole.
"""
import contextlib
import hashlib
import io
import json
import os
import time

import numpy as np

from . import errors
from .errors import ConfigError, DistributedError, Stopped, TrainingError, UserError

# The longest one rank waits for another through the store (rank 0 writing a checkpoint, a slower rank's share
# of test campaigns): 6 hours, or METAHEAC_WAIT_SECONDS. A rank that dies is noticed at once; this bounds a hang.
WAIT_SECONDS = float(os.environ.get("METAHEAC_WAIT_SECONDS") or 6 * 3600)
# How long rank 0 waits at its end for the others to finish reading from the store: {after success, after a failure}
# (after a failure another rank may sit in a collective until rank 0's exit ends it).
FAREWELL_SECONDS = {False: 120.0, True: 10.0}
_PREFIX = "metaheac"


def world():
    """(rank, ranks) as the launcher set them (PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM); (0, 1) outside it."""
    return int(os.environ.get("PADDLE_TRAINER_ID") or 0), int(os.environ.get("PADDLE_TRAINERS_NUM") or 1)


def require_divisible(task_count, config_path):
    """A ConfigError unless the meta-batch's task_count tasks split evenly among the launched ranks."""
    ranks = world()[1]
    if task_count % ranks:
        lower, upper = task_count // ranks * ranks, (task_count // ranks + 1) * ranks
        raise ConfigError(f"{config_path}: hyper_parameters.task_count {task_count} is not divisible by the {ranks} "
                          f"ranks of this run (every rank takes task_count / ranks tasks of each meta-batch); use "
                          f"-o hyper_parameters.task_count={upper}" + (f" or {lower}" if lower else "")
                          + " (a different run), or launch a number of ranks that divides it")


def join(device):
    """The group of this process: a Group under the launcher with several ranks (after init_parallel_env,
    on `device`, paddle_env.set_device's answer), else a Single."""
    rank, ranks = world()
    if ranks == 1:
        return Single()
    from .paddle_env import paddle
    if device == "cpu":  # a CUDA build would otherwise pick NCCL for a CPU run
        os.environ["PADDLE_DISTRI_BACKEND"] = "gloo"
    with contextlib.redirect_stderr(io.StringIO()):  # init_parallel_env lists "Modified FLAGS" on stderr
        paddle.distributed.init_parallel_env()
    return Group(rank, ranks)


def params_digest(net):
    """sha256 of every parameter's bytes, in order: equal on ranks that hold the same weights."""
    digest = hashlib.sha256()
    for p in net.parameters():
        digest.update(np.ascontiguousarray(p.numpy()).tobytes())
    return digest.hexdigest()


class Single:
    """One process: every exchange is the identity."""

    rank, size, main = 0, 1, True
    resume_hint = ""  # said after a lost rank (the trainer: where the finished checkpoints are)

    def tasks(self, meta_batch):
        """This rank's tasks of a meta-batch [(support, query), ...]: a contiguous block (all of it here)."""
        return meta_batch

    def campaigns(self, count):
        """The positions of this rank's test campaigns among `count`: r, r + ranks, ... (all of them here)."""
        return range(count)

    def backward(self, net, loss, values, tasks, task_count, stop, what):
        """loss.backward() of this rank's share of the meta-loss, the gradients summed over ranks.

        loss, values: the model's train_forward of this rank's `tasks` tasks (the mean over them); stop: the
        signal number this rank was stopped by, or 0. Returns (the meta-loss, values, stop) of the whole
        meta-batch, the same on every rank: the means over all task_count tasks, and the largest stop signal
        of any rank (0: none), so that all ranks stop after the same meta-step.
        """
        loss.backward()
        return float(loss), values, stop

    def on_main(self, run, what):
        """run() on rank 0 alone (it writes, it decides); every rank returns its result (JSON-able) or raises
        its error. what: what run does, for messages."""
        return run()

    def save(self, write, net, what):
        """write() (a checkpoint) on rank 0 once every rank holds the same weights; returns its path."""
        return write()

    def sync_state(self, net, optimizer):
        """Every rank takes rank 0's weights and optimizer state."""

    def gather(self, data, what):
        """Every rank's bytes, in rank order, on rank 0; None on the others."""
        return [data]

    def session(self):
        """Around a rank's whole run: an exception is posted to the other ranks before it propagates, and rank 0
        (whose process serves the store) leaves only once the others are done reading from it."""
        return contextlib.nullcontext()


SINGLE = Single()


class Group(Single):
    """This process as rank `rank` of `size`, after init_parallel_env."""

    def __init__(self, rank, size):
        from .paddle_env import paddle
        self.paddle, self.rank, self.size, self.main = paddle, rank, size, rank == 0
        self.store = paddle.base.core.create_or_get_global_tcp_store()
        self.calls, self.resume_hint = 0, ""

    # ------------------------------------------------------------------ shares
    def tasks(self, meta_batch):
        n = len(meta_batch) // self.size
        return meta_batch[self.rank * n:(self.rank + 1) * n]

    def campaigns(self, count):
        return range(self.rank, count, self.size)

    # ------------------------------------------------------------------ meta-training
    def backward(self, net, loss, values, tasks, task_count, stop, what):
        paddle = self.paddle
        share = tasks / task_count  # the sum of this rank's task losses, divided by task_count
        (loss * share).backward()
        params, names = list(net.parameters()), sorted(values)
        small = np.array([float(loss) * share, *(values[n] * share for n in names),
                          *(p.grad is not None for p in params)], np.float64)
        small = self._all_reduce_array(small, what)
        stop = int(self._all_reduce_array(np.array([stop], np.int64), what, paddle.distributed.ReduceOp.MAX)[0])
        with paddle.no_grad():
            for p, reached in zip(params, small[1 + len(names):]):
                if reached:  # some rank's tasks reach this parameter: every rank needs the sum
                    if p.grad is None:
                        p.grad = paddle.zeros_like(p)
                    self._collective(paddle.distributed.all_reduce, p.grad, what=what)
        return float(small[0]), dict(zip(names, small[1:1 + len(names)].tolist())), stop

    def _all_reduce_array(self, array, what, op=None):
        tensor = self.paddle.to_tensor(array)
        with self.paddle.no_grad():
            self._collective(self.paddle.distributed.all_reduce, tensor,
                             op=self.paddle.distributed.ReduceOp.SUM if op is None else op, what=what)
        return tensor.numpy()

    def save(self, write, net, what):
        digests = self.gather(params_digest(net).encode(), what)

        def checked_write():
            if len(set(digests)) > 1:
                differ = [r for r, d in enumerate(digests) if d != digests[0]]
                raise TrainingError(f"{what}: the weights of rank(s) {differ} differ from rank 0's although every "
                                    "rank applied the same summed gradient (a non-deterministic kernel?); nothing "
                                    "was saved. Report this with the launch command")
            return write()
        return self.on_main(checked_write, what)

    def sync_state(self, net, optimizer):
        from . import checkpoint as ckpt
        what = "taking rank 0's weights and optimizer state"
        blobs = ckpt.state_bytes(net, optimizer) if self.main else (None, None)
        self.barrier(what)  # rank 0's bytes are ready: the broadcast will not wait
        params, opt = (self._broadcast_bytes(blob, what) for blob in blobs)
        if not self.main:
            arrays = [dict(np.load(io.BytesIO(b), allow_pickle=False)) for b in (params, opt)]
            ckpt.restore_state(net, optimizer, *arrays, "rank 0's state")

    def _broadcast_bytes(self, data, what):
        paddle = self.paddle
        size = paddle.to_tensor(np.array([len(data) if self.main else 0], np.int64))
        with paddle.no_grad():
            self._collective(paddle.distributed.broadcast, size, src=0, what=what)
            buf = paddle.to_tensor(np.frombuffer(data, np.uint8)) if self.main else \
                paddle.zeros([int(size.numpy()[0])], dtype="uint8")
            self._collective(paddle.distributed.broadcast, buf, src=0, what=what)
        return data if self.main else buf.numpy().tobytes()

    def _collective(self, collective, *args, what, **kwargs):
        try:
            collective(*args, **kwargs)
        except (RuntimeError, ValueError, OSError) as e:  # gloo: "[.../pair.cc:584] TIMEOUT ..." and the like
            raise self._lost(what, e) from e

    # ------------------------------------------------------------------ through the store
    def _key(self):
        self.calls += 1  # every rank makes the same exchanges in the same order
        return f"{_PREFIX}/{self.calls}"

    def on_main(self, run, what):
        key = self._key()
        if self.main:
            try:
                result = run()
            except UserError as e:
                self._post(key, {"error": str(e), "class": type(e).__name__})
                raise
            except BaseException as e:
                self._post(key, {"error": f"rank 0 failed while {what}: {_first_line(e)}",
                                 "class": DistributedError.__name__})
                raise
            self._post(key, {"result": result})
            return result
        self._wait(key, 1, what)
        reply = json.loads(self._store(self.store.get, f"{key}/0", what=what))
        if "error" in reply:
            error = getattr(errors, reply["class"], UserError)
            raise (error if isinstance(error, type) and issubclass(error, UserError) else UserError)(reply["error"])
        return reply["result"]

    def _post(self, key, obj):
        self._store(self.store.set, f"{key}/0", json.dumps(obj), what="telling the other ranks")
        self._store(self.store.add, f"{key}/count", 1, what="telling the other ranks")

    def gather(self, data, what):
        key = self._key()
        self._store(self.store.set, f"{key}/{self.rank}", data, what=what)
        self._store(self.store.add, f"{key}/count", 1, what=what)
        if not self.main:
            return None
        self._wait(key, self.size, what)
        return [self._store(self.store.get, f"{key}/{r}", what=what) for r in range(self.size)]

    def barrier(self, what):
        key = self._key()
        self._store(self.store.add, f"{key}/count", 1, what=what)
        self._wait(key, self.size, what)

    def _wait(self, key, count, what):
        """Until `count` ranks have posted under key; stops on another rank's posted failure or after WAIT_SECONDS."""
        start, pause = time.monotonic(), 0.005
        while self._store(self.store.add, f"{key}/count", 0, what=what) < count:
            failure = self._posted_failure()
            if failure:
                raise DistributedError(f"rank {self.rank} of {self.size}: {what}: {failure}")
            if time.monotonic() - start > WAIT_SECONDS:
                raise DistributedError(f"rank {self.rank} of {self.size}: {what}: waited {WAIT_SECONDS:.0f} s for "
                                       f"the other ranks; one of them hangs (see the launcher's log)" + self._hint())
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _store(self, op, *args, what):
        try:
            return op(*args)
        except (RuntimeError, ValueError, OSError) as e:  # "TCP send error ... Broken pipe": rank 0 is gone
            raise self._lost(what, e) from e

    # ------------------------------------------------------------------ failure
    def session(self):
        return self._session()

    @contextlib.contextmanager
    def _session(self):
        failed = True
        try:
            yield
            failed = False
        except Stopped:
            failed = False  # every rank stops after the same meta-step
            raise
        except DistributedError:  # another rank's failure: nothing to post, and no one left to wait for
            failed = None
            raise
        except BaseException as e:
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {_first_line(e)}"
            try:
                self.store.set(f"{_PREFIX}/failure/{self.rank}", message)
                self.store.add(f"{_PREFIX}/failed/{self.rank}", 1)
            except Exception:  # noqa: BLE001  (rank 0 and its store are gone: the launcher reports it)
                pass
            raise
        finally:
            if failed is not None:
                self._farewell(FAREWELL_SECONDS[failed])

    def _farewell(self, seconds):
        """The other ranks say they are done; rank 0 waits (at most `seconds`) for all of them, so that none loses
        the store (served by rank 0's process) while it still reads a result or an error from it."""
        try:
            if not self.main:
                self.store.add(f"{_PREFIX}/done", 1)
                return
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                gone = self.store.add(f"{_PREFIX}/done", 0) + sum(
                    self.store.add(f"{_PREFIX}/failed/{r}", 0) > 0 for r in range(1, self.size))
                if gone >= self.size - 1:
                    return
                time.sleep(0.02)
        except Exception:  # noqa: BLE001  (the store is gone with rank 0: nothing to wait for)
            pass

    def _posted_failure(self):
        """'rank r: <its error>' of the first rank that posted a failure, or None."""
        try:
            for r in range(self.size):
                if r != self.rank and self.store.add(f"{_PREFIX}/failed/{r}", 0):
                    return f"rank {r} failed: {self.store.get(f'{_PREFIX}/failure/{r}').decode()}"
        except Exception:  # noqa: BLE001  (the store is gone with rank 0)
            return None
        return None

    def _lost(self, what, error):
        cause = self._posted_failure() or (f"another rank died or stopped answering ({_first_line(error)}); the "
                                           "launcher's output names it, and its log is in the launcher's --log_dir "
                                           "(workerlog.N)")
        return DistributedError(f"rank {self.rank} of {self.size}: {what}: {cause}" + self._hint())

    def _hint(self):
        return f"; {self.resume_hint}" if self.resume_hint else ""


def _first_line(error):
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class SharedFolder:
    """A run folder (tools/utils/run_folder.RunFolder) that rank 0 alone opens, locks, reads and writes; every
    rank makes the same calls and gets rank 0's answers, so the other ranks never touch the folder."""

    def __init__(self, group, folder):
        self.group, self.folder, self.path = group, folder, folder.path
        self._entered = False

    def __enter__(self):
        def enter():
            self.folder.__enter__()
            self._entered = True
        self.group.on_main(enter, f"locking {self.path}")
        return self

    def __exit__(self, *exc):
        if self._entered:
            self.folder.__exit__(*exc)

    def resume_point(self):
        epochs, step = self.group.on_main(self.folder.resume_point, f"reading the checkpoints in {self.path}")
        return list(epochs), step

    def delete_checkpoints(self):
        self.group.on_main(self.folder.delete_checkpoints, f"deleting the checkpoints in {self.path}")

    def save_epoch(self, epoch, net, optimizer, meta):
        return self.group.save(lambda: self.folder.save_epoch(epoch, net, optimizer, meta), net,
                               f"saving the checkpoint of epoch {epoch}")

    def save_step(self, epoch, step, net, optimizer, meta):
        return self.group.save(lambda: self.folder.save_step(epoch, step, net, optimizer, meta), net,
                               f"saving the checkpoint of epoch {epoch}, meta-step {step}")
