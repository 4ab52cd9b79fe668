"""One epoch of meta-training, with the checks that keep a run from failing in silence.

run_epoch drives the model's train_forward over the reader's meta-batches and:
- stops on a loss that is not finite (the run diverged);
- stops when a stretch of print_interval meta-steps changed no weight (every
  gradient was zero, e.g. a sigmoid saturated by huge learning rates), instead
  of saving an untrained model as trained;
- checks that every weight is finite before any checkpoint is written, so a
  checkpoint marked finished is always usable;
- writes a step checkpoint every runner.save_steps meta-steps with the
  reader's position, so a resumed run continues the same stream;
- on SIGTERM or Ctrl-C finishes the current meta-step, writes a step
  checkpoint and raises Stopped (exit code 128 + signal).

Across processes (tools/utils/run/distributed.py, under paddle.distributed.launch)
the same loop runs on every rank: each draws the whole meta-batch (the reader
stream, and so a step checkpoint, is the same on every rank) and trains on its
share of the tasks; the group sums the gradients (weighted by each rank's
share of the tasks), the metrics and the stop requests, so every check above
sees the whole meta-batch and every rank decides alike; rank 0 writes the
checkpoints. In one process those sums are the identity.
"""
import math
import signal
import time

from ..measure.curves import NO_CURVES
from .distributed import SINGLE
from ..errors import STOP_SIGNALS, Stopped, TrainingError
from ..progress import progress

COUNTS = ("meta_batches", "samples", "seconds", "stopped_early")  # what an epoch's statistics hold besides metrics


class StopRequests:
    """While active, SIGTERM and SIGINT are recorded (self.signal) instead of ending the process; the ranks'
    calls to one another restart after them (errors.restart_calls_on_stop)."""

    def __enter__(self):
        self.signal, self._previous, self._ending = None, {s: signal.getsignal(s) for s in STOP_SIGNALS}, False
        for s in STOP_SIGNALS:
            signal.signal(s, self._record)
        return self

    def _record(self, signum, frame):
        self.signal = signum

    def ending(self):
        """The run is stopping: keep recording (not acting on) these signals after the block too, until the
        command line's end restores them; the launcher's repeated SIGTERM must not cut the last line short."""
        self._ending = True

    def __exit__(self, *exc):
        if self._ending:
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _weights(net):
    from ..paddle_env import paddle
    with paddle.no_grad():
        return [p.detach().clone() for p in net.parameters()]


def _unchanged(net, snapshot):
    from ..paddle_env import paddle
    return all(bool(paddle.equal_all(p, s)) for p, s in zip(net.parameters(), snapshot))


def require_finite(net, what):
    """A TrainingError naming the first parameter holding NaN or infinity."""
    from ..paddle_env import paddle
    for name, p in net.named_parameters():
        if not bool(paddle.isfinite(p).all()):
            raise TrainingError(f"{what}: parameter {name} holds NaN or infinity; training diverged. Lower "
                                "hyper_parameters.optimizer.learning_rate or local_lr; the finished "
                                "checkpoints before it are kept")


def run_epoch(model, net, optimizer, dataset, config, epoch, folder, resume=None, group=SINGLE, curves=NO_CURVES,
              validate=None):
    """One pass over the reader (or the rest of one, from a step checkpoint's meta `resume`).

    group: this process's rank in a distributed run (tools/utils/run/distributed.py); folder: a RunFolder, or the
    group's SharedFolder; curves: where each meta-step's metrics go, as train/<metric> at the meta-step counted
    across epochs (tools/utils/measure/curves.py); validate(epoch, step) after a meta-step: True to stop training there
    (tools/trainer.py's validation campaigns). Returns the epoch's statistics {"meta_batches", "samples",
    "seconds", <metric>: mean}, with "stopped_early": the meta-step, when validate stopped it; the metrics are
    the values train_forward returns (metric_names).
    """
    runner, hp = config["runner"], config["hyper_parameters"]
    dataset.set_epoch(epoch, resume and resume["reader"])
    totals = dict(resume["totals"]) if resume else {"samples": 0, "seconds": 0.0}
    net.train()
    start, snapshot, checked = time.perf_counter() - totals["seconds"], _weights(net), dataset.step
    bar = progress(dataset, total=len(dataset), desc=f"epoch {epoch}", unit="step", initial=dataset.step,
                   disable=not group.main)

    def save_step(step, **meta):
        totals["seconds"] = time.perf_counter() - start
        require_finite(net, f"epoch {epoch}, meta-step {step}")
        history = {"validation": validate.history} if validate is not None else {}
        return folder.save_step(epoch, step, net, optimizer, {"reader": dataset.state(), "totals": totals,
                                                              **history, **meta})

    with StopRequests() as stop:
        for meta_batch in bar:
            step = dataset.step
            where = f"epoch {epoch}, meta-step {step}"
            tasks = group.tasks(meta_batch)
            share = len(tasks) / len(meta_batch)
            loss, values = model.train_forward(net, tasks, config)
            loss.backward()
            group.sum_gradients(net, share, where)
            loss, values, stopping = group.agree(float(loss), values, share, stop.signal or 0, where)
            if not math.isfinite(loss):
                raise TrainingError(f"{where}: the loss is {loss}; training diverged. "
                                    "Lower hyper_parameters.optimizer.learning_rate or local_lr; finished "
                                    f"checkpoints stay in {folder.path}")
            optimizer.step()
            optimizer.clear_grad()
            totals["samples"] += sum(len(support["label"]) + len(query["label"]) for support, query in meta_batch)
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value
                curves.add(f"train/{name}", value, epoch * len(dataset) + step)
            if step % runner["print_interval"] == 0 or step == len(dataset):
                bar.set_postfix({**{n: f"{totals[n] / step:.4f}" for n in metric_names(totals)},
                                 "samples/s": f"{totals['samples'] / (time.perf_counter() - start):.0f}"})
                if _unchanged(net, snapshot):
                    raise TrainingError(
                        f"epoch {epoch}, meta-steps {checked + 1}-{step} changed no weight: every gradient was zero. "
                        "The usual cause is a saturated sigmoid (probabilities exactly 0 or 1) from learning "
                        f"rates far too large (optimizer.learning_rate {hp['optimizer']['learning_rate']}, "
                        f"local_lr {hp.get('local_lr')}); lower them. Nothing of this epoch was saved")
                snapshot, checked = _weights(net), step
            if stopping:  # the signal, here or (distributed) on another rank
                stop.ending()
                path = save_step(step)
                raise Stopped(f"stopped by {signal.Signals(stopping).name} after epoch {epoch}, meta-step {step}: "
                              f"saved {path}; rerun the same command to resume there", 128 + stopping)
            if validate is not None and validate(epoch, step):
                bar.close()
                if step < len(dataset):
                    save_step(step, stopped_early=True)
                return {"stopped_early": step, "meta_batches": step, "samples": totals["samples"],
                        "seconds": time.perf_counter() - start, **{n: totals[n] / step for n in metric_names(totals)}}
            if runner["save_steps"] and step % runner["save_steps"] == 0 and step < len(dataset):
                save_step(step)
    bar.close()
    totals["seconds"] = time.perf_counter() - start
    require_finite(net, f"epoch {epoch}")
    steps = len(dataset)
    return {"meta_batches": steps, "samples": totals["samples"], "seconds": totals["seconds"],
            **{n: totals[n] / max(steps, 1) for n in metric_names(totals)}}


def metric_names(counts):
    """The metrics among an epoch's totals or statistics: every value train_forward returned, in its order."""
    return [name for name in counts if name not in COUNTS]
