"""Speed of the MetaHeac model hooks at the full-data shapes, on synthetic long-tailed ids.

    python tools/bench/model.py [--steps 5] [--batch 1024] [--threads 2] [--optimizer adam] [--model-dir .]

Times one meta-step (train_forward + backward + Adam step; second and first
order), a fine-tune step (infer_train_forward + backward + Adam) and scoring
(infer_forward); prints medians, samples/s and the peak RSS of the process.
The tables have the Tencent vocabulary sizes (tools.utils.data.schema.TENCENT_MAX_IDXS,
21.9 M parameters); user ids are Zipf-distributed like the real fields, and the
ad fields are constant within a task, as they are within a campaign. Other
processes on the machine slow every figure: the header shows the load average
and NumPy's sgemm speed as a check.

The CPU settings that matter here (MKL's AVX2 kernels on AMD CPUs, glibc
malloc options) are made by tools/utils/paddle_env.py before Paddle loads, as
for every tool; LD_PRELOAD=libjemalloc.so.2 is the other allocator to try.
Figures and their history: docs/performance.md.
"""
if not __package__:
    import _root  # noqa: F401  (run as a script: tools/_bootstrap.py's set-up, the project root on sys.path)

import argparse
import os
import resource
import statistics
import time

import numpy as np
from tools.utils import cli
from tools.utils.progress import progress

from tools.utils.paddle_env import paddle, set_threads
from tools.utils.run import model_folder
from tools.utils.data import schema
from tools.utils.data.dataset import make_schema

ZIPF_EXPONENT = 1.2
WARMUP_STEPS = 3  # the first steps page-fault the working set in (tens of thousands of faults each)


def big_config(batch, optimizer="adam"):
    max_idxs = [schema.TENCENT_MAX_IDXS[k] for k in schema.GROUPS]
    return {"hyper_parameters": {
        "max_idxs": max_idxs, "embed_dim": 64, "embedding_init": "normal", "mlp_dims": [64, 64], "num_expert": 8,
        "num_output": 5, "task_count": 5, "local_lr": 0.0002, "meta_order": 2, "local_test_learning_rate": 0.001,
        "optimizer": {"class": optimizer, "learning_rate": 0.001}},
        "runner": {"train_batch_size": batch, "infer_batch_size": batch},
        "data_schema": make_schema(schema.TENCENT_MAX_IDXS)}


def popularity_orders(max_idxs, seed=0):
    """Per user field, a fixed random order of its ids: rank r (0 = most popular) is id order[r]."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(m + 1) for m in max_idxs[0] + max_idxs[1]]


def synthetic_batch(rng, n, orders, ad_row):
    """n rows of one campaign (ad fields = ad_row) with Zipf user ids and random list lengths."""
    def zipf(order, shape):
        return order[(rng.zipf(ZIPF_EXPONENT, shape) - 1) % len(order)]

    n_static = len(schema.STATIC_FIELDS)
    static = np.stack([zipf(order, n) for order in orders[:n_static]], axis=1)
    dynamic = np.concatenate([zipf(order, (n, w)) for order, w in zip(orders[n_static:], schema.DYNAMIC_WIDTHS)],
                             axis=1)
    return {"label": (rng.random(n) < 0.05).astype(np.int8), "aid": np.zeros(n, np.int32),
            "static": static.astype(np.int32), "dynamic": dynamic.astype(np.int32),
            "lengths": np.stack([rng.integers(0, w + 1, n) for w in schema.DYNAMIC_WIDTHS], axis=1).astype(np.int32),
            "ad": np.repeat(np.asarray(ad_row, np.int32)[None, :], n, axis=0)}


def meta_batch(rng, config, orders):
    """task_count (support, query) pairs, each task one synthetic campaign."""
    hp, batch = config["hyper_parameters"], config["runner"]["train_batch_size"]
    tasks = []
    for _ in range(hp["task_count"]):
        ad_row = [rng.integers(0, m + 1) for m in hp["max_idxs"][2]]
        tasks.append(tuple(synthetic_batch(rng, batch, orders, ad_row) for _ in range(2)))
    return tasks


def median_seconds(step, inputs, warmup, desc):
    """Median wall time of step(x) over inputs, after `warmup` untimed calls."""
    times = []
    for i, x in enumerate(progress(inputs, total=len(inputs), desc=desc, leave=False)):
        start = time.perf_counter()
        step(x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_sgemm_gflops(n=1024, k=896, m=512, repeats=10):
    a, b = np.ones((n, k), np.float32), np.ones((k, m), np.float32)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n * k * m * repeats / (time.perf_counter() - start) / 1e9


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run(model_dir, steps, batch, threads, seed=0, optimizer="adam"):
    """Benchmark the model folder's DygraphModel; returns {measure: value}."""
    set_threads(threads)
    dm = model_folder.load_module(os.path.join(os.path.abspath(model_dir), "dygraph_model.py"), "bench_model")
    model, config = dm.DygraphModel(), big_config(batch, optimizer)
    rng = np.random.default_rng(seed)
    paddle.seed(seed)
    net = model.create_model(config)
    result = {"parameters (M)": sum(int(np.prod(p.shape)) for p in net.parameters()) / 1e6}
    warmup = WARMUP_STEPS
    orders = popularity_orders(config["hyper_parameters"]["max_idxs"], seed)
    meta_batches = [meta_batch(rng, config, orders) for _ in range(steps + warmup)]
    rows_per_meta_step = sum(len(s["label"]) + len(q["label"]) for s, q in meta_batches[0])
    for order in (2, 1):
        config["hyper_parameters"]["meta_order"] = order
        optimizer = model.create_optimizer(net, config)

        def meta_step(mb):
            loss, _ = model.train_forward(net, mb, config)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()

        seconds = median_seconds(meta_step, meta_batches, warmup, f"meta-step, order {order}")
        result[f"order-{order} meta-step (s)"] = seconds
        result[f"order-{order} training samples/s"] = rows_per_meta_step / seconds
        result[f"peak RSS after order {order} (GB)"] = peak_rss_gb()

    optimizer = model.create_optimizer(net, config, config["hyper_parameters"]["local_test_learning_rate"])
    batches = [s for mb in meta_batches for s, _ in mb][:4 * steps + warmup]

    def fine_tune_step(b):
        loss, _ = model.infer_train_forward(net, b, config)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()

    result["fine-tune samples/s"] = batch / median_seconds(fine_tune_step, batches, warmup, "fine-tune")
    result["scoring samples/s"] = batch / median_seconds(lambda b: model.infer_forward(net, b, config),
                                                         batches, warmup, "scoring")
    result["peak RSS (GB)"] = peak_rss_gb()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps per order (default 5)")
    parser.add_argument("--batch", type=int, default=1024, help="support = query = fine-tune batch size")
    parser.add_argument("--threads", type=int, default=2, help="Paddle CPU threads (default 2)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lazy_adam"),
                        help="hyper_parameters.optimizer.class (default adam, the official code's)")
    parser.add_argument("--model-dir", default=model_folder.ROOT,
                        help="folder with dygraph_model.py (its `import net` is the project root's net.py: to compare "
                             "two versions of net.py, run each checkout's own tools/bench/model.py)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--steps, --batch and --threads must be at least 1")
    machine = f"load {os.getloadavg()[0]:.2f}, NumPy sgemm {numpy_sgemm_gflops():.0f} GFLOP/s"
    result = run(args.model_dir, args.steps, args.batch, args.threads, optimizer=args.optimizer)
    allocator = os.path.basename(os.environ.get("LD_PRELOAD", "")) or "glibc malloc"
    print(f"MetaHeac model benchmark: 5 tasks x ({args.batch} support + {args.batch} query), "
          f"median of {args.steps} steps after {WARMUP_STEPS} warm-up steps; {args.optimizer}; {args.threads} threads, "
          f"{allocator}, "
          f"MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset')}; {machine}")
    for name, value in result.items():
        print(f"  {name:34s} {value:10.3f}" if value < 100 else f"  {name:34s} {value:10.0f}")


if __name__ == "__main__":
    cli.run_and_exit(main)
