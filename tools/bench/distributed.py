"""Scaling of data-parallel meta-training on this machine, at the full data's shapes, on synthetic ids.

    python tools/bench/distributed.py [--runs 1x1,2x1,1x2] [--steps 5] [--batch 1024] [--tasks 4] [--json FILE]
                                      [--optimizer adam] [--dense-all-reduce]

Each run RxT (R ranks of T threads) starts this script under PaddlePaddle's
launcher (python -m paddle.distributed.launch --nproc_per_node R) in worker
mode. Every rank builds the MetaHeac network with the Tencent vocabulary sizes
(21.9 M parameters, tools/bench/model.py), draws the same synthetic meta-batches
of --tasks tasks (Zipf user ids) and meta-trains on its block of them exactly
as the trainer does (tools/utils/run/training.py: its tasks' meta-loss, backward,
the gradient sum over the ranks, Adam). Printed per run, medians over --steps
meta-steps after warm-up: the meta-step and its parts (forward with the inner
step, backward, the gradient sum with the metrics' agreement, the step of
--optimizer: adam or lazy_adam), samples/s (support + query rows of the whole
meta-batch per second), and the numbers the gradient sum moved per rank.
--dense-all-reduce adds, on several ranks, the all-reduce of every
parameter's whole gradient alone (what the trainer summed
before it summed only the touched table rows), in seconds and GB/s of gradient.
Figures and their reading: docs/performance.md and docs/distributed.md.
"""
if not __package__:
    import _root  # noqa: F401  (run as a script: tools/_bootstrap.py's set-up, the project root on sys.path)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from tools.utils import cli
from tools.utils.run import distributed

WARMUP_STEPS = 2


def worker(args):
    """One rank of a run; rank 0 writes the run's figures to args.json."""
    from tools.utils.paddle_env import set_device, set_threads
    set_threads(args.threads)
    group = distributed.join(set_device(False))
    with group.session():  # where the stops held until the ranks met arrive
        result = measure(group, args)
    if group.main:
        with open(args.json, "w") as f:
            json.dump(result, f)


def measure(group, args):
    """This rank's figures: the median time of each part of a meta-step."""
    from tools.bench.model import big_config, meta_batch, popularity_orders
    from tools.utils.run import model_folder
    from tools.utils.paddle_env import paddle
    dm = model_folder.load_module(os.path.join(model_folder.ROOT, "dygraph_model.py"), "bench")
    model, config = dm.DygraphModel(), big_config(args.batch, args.optimizer)
    config["hyper_parameters"]["task_count"] = args.tasks
    paddle.seed(0)
    net = model.create_model(config)
    optimizer = model.create_optimizer(net, config)
    group.sync_state(net, optimizer)
    rng = np.random.default_rng(0)  # the same meta-batches on every rank
    orders = popularity_orders(config["hyper_parameters"]["max_idxs"], 0)
    parts = ("forward (s)", "backward (s)", "gradient sum (s)", "Adam (s)")
    times = {name: [] for name in parts + ("meta-step (s)",)}
    for i in range(WARMUP_STEPS + args.steps):
        batch = meta_batch(rng, config, orders)
        tasks = group.tasks(batch)
        share, where = len(tasks) / len(batch), f"benchmark step {i}"
        clock = [time.perf_counter()]
        loss, values = model.train_forward(net, tasks, config)
        clock.append(time.perf_counter())
        loss.backward()
        clock.append(time.perf_counter())
        rows = sum(len(ids) for ids in getattr(net, "grad_rows", {}).values())
        group.sum_gradients(net, share, where)
        group.agree(float(loss), values, share, 0, where)
        clock.append(time.perf_counter())
        optimizer.step()
        optimizer.clear_grad()
        clock.append(time.perf_counter())
        if i >= WARMUP_STEPS:
            for name, seconds in zip(parts, np.diff(clock)):
                times[name].append(seconds)
            times["meta-step (s)"].append(clock[-1] - clock[0])
    result = {name: statistics.median(values) for name, values in times.items()}
    result["samples/s"] = sum(len(s["label"]) + len(q["label"]) for s, q in batch) / result["meta-step (s)"]
    result["parameters (M)"] = sum(int(np.prod(p.shape)) for p in net.parameters()) / 1e6
    result["table rows read, this rank"] = rows
    if group.size > 1 and args.dense_all_reduce:
        result.update(dense_all_reduce(paddle, net, args.steps))
    return result


def dense_all_reduce(paddle, net, repeats):
    """Median seconds of summing every parameter's whole gradient over the ranks, parameter by parameter."""
    grads = [paddle.ones_like(p) for p in net.parameters()]
    gigabytes = sum(int(np.prod(g.shape)) for g in grads) * 4 / 1e9
    seconds = []
    with paddle.no_grad():
        for _ in range(repeats + 1):
            paddle.distributed.barrier()
            start = time.perf_counter()
            for g in grads:
                paddle.distributed.all_reduce(g)
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[1:])
    return {"dense all-reduce (s)": median, "dense all-reduce GB/s": gigabytes / median,
            "dense gradient (GB)": gigabytes}


def launch(ranks, threads, args, log_dir):
    """Run the worker on `ranks` processes; the figures of rank 0."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(ranks),
               "--log_dir", os.path.join(log_dir, f"{ranks}x{threads}"), os.path.abspath(__file__), "--worker",
               "--threads", str(threads), "--steps", str(args.steps), "--batch", str(args.batch),
               "--tasks", str(args.tasks), "--optimizer", args.optimizer, "--json", out,
               *(["--dense-all-reduce"] if args.dense_all_reduce else [])]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as done:
        try:
            output, _ = done.communicate()
        except BaseException:  # stopped: the launcher passes SIGTERM to its ranks (subprocess.run's SIGKILL left them)
            done.terminate()
            raise
    try:
        if done.returncode != 0:
            raise SystemExit(f"error: the {ranks}x{threads} run failed (exit {done.returncode}); its logs are in "
                             f"{log_dir}\n{output[-2000:]}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.remove(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="1x1,2x1,1x2", help="RANKSxTHREADS, comma-separated (default 1x1,2x1,1x2)")
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps per run (default 5)")
    parser.add_argument("--batch", type=int, default=1024, help="rows of each support and query batch (default 1024)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch, at least every run's ranks "
                                                             "(default 4)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lazy_adam"),
                        help="hyper_parameters.optimizer.class (default adam, the official code's)")
    parser.add_argument("--dense-all-reduce", action="store_true",
                        help="also time the all-reduce of every parameter's whole gradient (several ranks)")
    parser.add_argument("--json", help="write the figures here (in worker mode: rank 0's figures)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    runs = [tuple(int(x) for x in run.split("x")) for run in args.runs.split(",")]
    if any(args.tasks < ranks for ranks, _ in runs) or args.steps < 1 or args.batch < 1:
        parser.error("--tasks must be at least every run's ranks; --steps and --batch at least 1")
    log_dir = tempfile.mkdtemp(prefix="bench_distributed_")
    print(f"MetaHeac data-parallel benchmark: {args.tasks} tasks x ({args.batch} support + {args.batch} query) per "
          f"meta-step, second order, {args.optimizer}; median of {args.steps} steps after {WARMUP_STEPS}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}")
    results = {}
    for ranks, threads in runs:
        results[f"{ranks}x{threads}"] = figures = launch(ranks, threads, args, log_dir)
        print(f"{ranks} rank(s) x {threads} thread(s):")
        for name, value in figures.items():
            print(f"  {name:32s} {value:10.3f}" if value < 100 else f"  {name:32s} {value:10.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    cli.run_and_exit(main, hold_stops=distributed.world()[1] > 1)  # a worker: until the ranks have met
