"""Runs across processes and machines under PaddlePaddle's own launcher: which process this is, and what it shares
with the others (docs/distributed.md).

    python -m paddle.distributed.launch --nproc_per_node 2 tools/trainer.py -m config_big.yaml
    python -m paddle.distributed.launch --master HOST:PORT --nnodes 2 --nproc_per_node 4 tools/trainer.py -m ...

The launcher starts the processes (ranks) and gives each its rank in the
environment (PADDLE_TRAINER_ID of PADDLE_TRAINERS_NUM). join() connects them
(paddle.distributed.init_parallel_env: gloo on CPUs, NCCL on GPUs) and returns
a Group; outside the launcher, or with one process, a Single, which has the
same methods and exchanges nothing, so the trainer and meta-inference have one
path and a one-process run is what it always was.

Meta-training (tools/utils/run/training.py): every rank draws the same meta-batch
and keeps a contiguous block of its tasks (tasks(): blocks of task_count /
ranks, the first task_count % ranks of them one task longer); it
back-propagates the mean meta-loss of its tasks, and sum_gradients() sums the
gradients over the ranks, each weighted by its share of the tasks: every rank
then holds the gradient of the mean over all task_count tasks and takes the
same Adam step; agree() does the same for the loss and metrics and tells every
rank whether any was asked to stop. Rank 0 alone opens, locks and writes the
run folder (SharedFolder); it decides where to resume and broadcasts its
weights and optimizer state (sync_state), so no other rank reads the folder or
needs it on its machine. Meta-inference (tools/infer_meta.py): rank r scores
test campaigns r, r + ranks, ... (campaigns()) and rank 0 gathers their
results (gather()).

Two channels, for two kinds of waiting: collectives where the ranks arrive
together (tools/utils/run/collectives.py: the gradient sum of every meta-step, the
starting state), and the launcher's TCP store where they wait for one another
for long (tools/utils/run/store_channel.py: rank 0 deciding or writing, a slower
rank's share of campaigns; a rank's failure posted to the others). The
launcher, seeing a process end non-zero, stops the others (SIGTERM, then
SIGKILL 3 s later) and exits non-zero. Checkpoints are written by
files.atomic_write and marked done last, so a rank killed at any moment leaves
the last finished checkpoint whole.
"""
import contextlib
import hashlib
import io
import os

import numpy as np

from .collectives import Collectives
from ..errors import ConfigError, TrainingError
from .store_channel import StoreChannel


def world():
    """(rank, ranks) as the launcher set them (PADDLE_TRAINER_ID, PADDLE_TRAINERS_NUM); (0, 1) outside it."""
    return int(os.environ.get("PADDLE_TRAINER_ID") or 0), int(os.environ.get("PADDLE_TRAINERS_NUM") or 1)


def require_enough_tasks(task_count, config_path):
    """A ConfigError unless every launched rank gets at least one of the meta-batch's task_count tasks."""
    ranks = world()[1]
    if task_count < ranks:
        raise ConfigError(f"{config_path}: hyper_parameters.task_count {task_count} is less than the {ranks} ranks "
                          f"of this run (every rank trains on at least one task of each meta-batch); use -o "
                          f"hyper_parameters.task_count={ranks} or more (a different run), or launch at most "
                          f"{task_count} ranks")


def task_block(rank, ranks, count):
    """The positions [start, stop) of rank's tasks among `count`: contiguous blocks in rank order, the first
    count % ranks of them one task longer."""
    base, longer = divmod(count, ranks)
    start = rank * base + min(rank, longer)
    return start, start + base + (rank < longer)


def join(device):
    """The group of this process: a Group under the launcher with several ranks (after init_parallel_env,
    on `device`, paddle_env.set_device's answer), else a Single.

    The stop signals a rank held until the ranks had met (cli.run's hold_stops) arrive as the Group's session
    starts (StoreChannel.session): by then every rank has left init_parallel_env, whose C++ wait for the
    others no signal ends."""
    rank, ranks = world()
    if ranks == 1:
        return Single()
    from ..paddle_env import paddle
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

    def sum_gradients(self, net, share, what):
        """After loss.backward() of this rank's mean meta-loss over its tasks: every parameter's .grad becomes the
        sum over the ranks of share x its gradient (share: this rank's tasks / task_count), the gradient of the
        whole meta-batch's mean meta-loss, the same on every rank. what: the meta-step, for messages."""

    def agree(self, loss, values, share, stop, what):
        """(loss, values, stop) of the whole meta-batch, the same on every rank: the share-weighted sums of this
        rank's loss and metric values (its means over its tasks), and the largest stop signal of any rank (0:
        none; stop is this rank's), so that all ranks stop after the same meta-step."""
        return loss, values, stop

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
    """This process as rank `rank` of `size`, after init_parallel_env: the store channel for waiting and
    failures, the collectives for what the ranks exchange together."""

    def __init__(self, rank, size):
        from ..paddle_env import paddle
        self.rank, self.size, self.main = rank, size, rank == 0
        self.channel = StoreChannel(paddle, rank, size)
        self.collectives = Collectives(paddle, size, self.channel.lost)

    @property
    def resume_hint(self):
        return self.channel.resume_hint

    @resume_hint.setter
    def resume_hint(self, hint):
        self.channel.resume_hint = hint

    def tasks(self, meta_batch):
        start, stop = task_block(self.rank, self.size, len(meta_batch))
        return meta_batch[start:stop]

    def campaigns(self, count):
        return range(self.rank, count, self.size)

    def sum_gradients(self, net, share, what):
        self.collectives.sum_gradients(net, share, what)

    def agree(self, loss, values, share, stop, what):
        names = sorted(values)
        stops = np.zeros(self.size)
        stops[self.rank] = stop
        summed = self.collectives.all_reduce(np.array([loss * share, *(values[n] * share for n in names), *stops],
                                                      np.float64), what)
        return float(summed[0]), dict(zip(names, summed[1:1 + len(names)].tolist())), int(summed[-self.size:].max())

    def on_main(self, run, what):
        return self.channel.on_main(run, what)

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
        self.channel.barrier(what)  # rank 0's bytes are ready: the broadcast will not wait
        params, opt = (self.collectives.broadcast_bytes(blob, what, self.main) for blob in blobs)
        if not self.main:
            arrays = [dict(np.load(io.BytesIO(b), allow_pickle=False)) for b in (params, opt)]
            ckpt.restore_state(net, optimizer, *arrays, "rank 0's state")

    def gather(self, data, what):
        return self.channel.gather(data, what)

    def session(self):
        return self.channel.session()


class SharedFolder:
    """A run folder (tools/utils/run/run_folder.RunFolder) that rank 0 alone opens, locks, reads and writes; every
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

    def save_best(self, net, optimizer, meta):
        return self.group.save(lambda: self.folder.save_best(net, optimizer, meta), net,
                               "saving the best checkpoint")

    def save_step(self, epoch, step, net, optimizer, meta):
        return self.group.save(lambda: self.folder.save_step(epoch, step, net, optimizer, meta), net,
                               f"saving the checkpoint of epoch {epoch}, meta-step {step}")
