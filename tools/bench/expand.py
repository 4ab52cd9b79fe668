"""Benchmarks of tools/expand.py (print figures; not tests).

    python tools/bench/expand.py speed [--pool-users 11420039] [--work DIR]
    python tools/bench/expand.py negatives --data data/medium --checkpoint DIR [--ratios 1,4,19]

speed: the config_big.yaml shapes (the Tencent vocabulary, 22 M parameters)
and a pool of --pool-users users (default: the full Tencent pool) with
long-tailed synthetic ids (tools/bench/model.py's); the model is the seeded
initialisation (speed does not depend on training) of a checkpoint made by
`trainer.py --untrained`. Runs tools/expand.py --export as a child process,
then tools/score.py on the same pool with the exported model (Paddle
Inference), and prints for both the pool users scored per second, the wall
time and the peak memory (the largest resident set, from wait4).

negatives: how fine-tuning on positive seeds plus negatives drawn from a
pool (tools/utils/serving/expansion.py's rule, R per seed) compares with fine-tuning
on a test campaign's true labelled seeds: pooled AUC and mean P@5% of every
test campaign's candidates, per split. The pool of a split is its users
(both stages, each once), the campaign's own seeds left out by the rule.
"""
if not __package__:
    import _root  # noqa: F401  (run as a script: tools/_bootstrap.py's set-up, the project root on sys.path)

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tools.utils import cli
from tools.bench import model as bench_model
from tools.utils.data import dataset
from tools.utils.data import schema
from tools.utils.data import vocabulary
from tools.utils.run.model_folder import ROOT
from tools.utils.progress import progress

FULL_POOL = 11_420_039


# ---------------------------------------------------------------- speed
def tencent_folder(folder, rows, rng, orders):
    """A data folder with the Tencent vocabulary sizes (schema.json, vocabulary.npz) and one stage of `rows`
    {aid: n} rows; the vocabulary maps raw value v to id v + 1 (raw ids 0..max - 1)."""
    os.makedirs(folder, exist_ok=True)
    vocab = {f: np.arange(-1, m, dtype=np.int64) for g in schema.GROUPS
             for f, m in zip(schema.GROUP_FIELDS[g], schema.TENCENT_MAX_IDXS[g])}
    dataset.write_schema(folder, schema.TENCENT_MAX_IDXS, vocabulary.save(folder, vocab))
    parts = []
    for aid, n in rows.items():
        ad_row = [rng.integers(0, m + 1) for m in schema.TENCENT_MAX_IDXS["ad"]]
        batch = bench_model.synthetic_batch(rng, n, orders, ad_row)
        parts.append({**batch, "aid": np.full(n, aid, np.int32), "label": (rng.random(n) < 0.3).astype(np.int8)})
    stage = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    stage["uid"] = np.arange(len(stage["label"]), dtype=np.int64) + 10 ** 9
    dataset.save_stage(os.path.join(folder, "train_stage1.npz"), stage)
    return folder


def write_pool(path, users, orders, seed=0, chunk=1 << 18):
    """A stage file of `users` pool users, generated chunk by chunk into memory-mapped .npy files and
    stored from them (memory stays small whatever the size)."""
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path))
    try:
        arrays = {name: np.lib.format.open_memmap(os.path.join(tmp, name + ".npy"), "w+", np.dtype(dtype),
                                                  (users,) + tail)
                  for name, (dtype, tail, _) in schema.ARRAYS.items()}
        for start in progress(range(0, users, chunk), total=-(-users // chunk), desc="generating the pool",
                              unit="chunk"):
            n = min(chunk, users - start)
            batch = bench_model.synthetic_batch(np.random.default_rng([seed, start]), n, orders, [0] * 6)
            batch["uid"] = np.arange(start, start + n, dtype=np.int64)
            for name, a in arrays.items():
                a[start:start + n] = batch[name]
        dataset.save_stage(path, arrays, compress=False)
    finally:
        shutil.rmtree(tmp)


def speed(args):
    work = args.work or tempfile.mkdtemp(prefix="bench_expand_")
    rng, orders = np.random.default_rng(0), bench_model.popularity_orders(
        [schema.TENCENT_MAX_IDXS[g] for g in schema.GROUPS], 0)
    train = tencent_folder(os.path.join(work, "data", "train"), {a: 40 for a in range(1, 6)}, rng, orders)
    campaign = tencent_folder(os.path.join(work, "campaign"), {7: 1000}, rng, orders)
    pool = os.path.join(work, "pool", "pool_stage2.npz")
    if not os.path.isfile(pool):
        os.makedirs(os.path.dirname(pool), exist_ok=True)
        for f in (dataset.SCHEMA_FILE, vocabulary.VOCAB_FILE):
            shutil.copy(os.path.join(train, f), os.path.dirname(pool))
        # in a child: a process's peak memory counts what its parent held when it forked, so this one stays small
        subprocess.run([sys.executable, os.path.abspath(__file__), "pool", pool, str(args.pool_users)], check=True)
    model = os.path.join(work, "model")
    python, config = sys.executable, os.path.join(ROOT, "config_big.yaml")
    subprocess.run([python, os.path.join(ROOT, "tools", "trainer.py"), "-m", config, "--untrained", "-o",
                    f"runner.train_data_dir={train}", f"runner.model_save_path={model}"], check=True,
                   capture_output=True)
    out, exported, scored = (os.path.join(work, name) for name in ("out", "exported", "scored"))
    expand, expand_wall, expand_rss = timed_child([
        python, os.path.join(ROOT, "tools", "expand.py"), "-m", config, "-o", f"runner.infer_load_path={model}",
        f"runner.thread_num={args.threads}", "--campaign", campaign, "--pool", pool, "--top-k", "10000", "--out", out,
        "--export", exported], os.path.join(out, "expand.json"))
    served, served_wall, served_rss = timed_child([
        python, os.path.join(ROOT, "tools", "score.py"), "--model", exported, "--pool", pool, "--out", scored,
        "--threads", str(args.threads)], os.path.join(scored, "score.json"))
    print(f"config_big shapes, {expand['pool_users']:,} pool users, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.1f} at the end:")
    print(f"  expand.py (dygraph): scored the pool in {expand['seconds']['score_pool']:.1f} s "
          f"({expand['pool_users_per_second']:,.0f}/s); wall time {expand_wall:.1f} s in all (fine-tuning on "
          f"1,000 seeds {expand['seconds']['fine_tune']:.1f} s); peak memory {expand_rss:.2f} GB")
    print(f"  exported model (Paddle Inference, tools/score.py): scored the pool in {served['seconds']:.1f} s "
          f"({served['pool_users_per_second']:,.0f}/s); wall time {served_wall:.1f} s in all; "
          f"peak memory {served_rss:.2f} GB")
    if not args.work:
        shutil.rmtree(work)


def timed_child(command, summary_path):
    """Run a tool as a child process: (its summary JSON, wall seconds, peak resident memory in GB from wait4)."""
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a child never blocks on a full pipe
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if status:
            stderr.seek(0)
            sys.exit(f"error: {os.path.basename(command[1])} failed: {stderr.read().strip().splitlines()[-1:]}")
    with open(summary_path) as f:
        return json.load(f), wall, usage.ru_maxrss / 2**20


# ---------------------------------------------------------------- negatives
def negatives(args):
    from tools.utils.run.campaign import adapt, score
    from tools.utils.run import checkpoint as ckpt
    from tools.utils.run import config as cfg
    from tools.utils.data import background
    from tools.utils import paddle_env
    from tools.utils.run import model_folder, trained
    from tools.utils.measure import metrics
    config = cfg.load_config(os.path.join(ROOT, "config.yaml"), [f"runner.thread_num={args.threads}"])
    model = model_folder.load_model(config)
    config = trained.learn(cfg.validate(config, "expand", model), ckpt.read_meta(args.checkpoint), args.checkpoint)
    paddle_env.set_threads(args.threads)
    net, params = trained.load_trained(model, config, args.checkpoint)
    import reader_test
    ratios = [float(r) for r in args.ratios.split(",")]
    users = ckpt.background_users(args.checkpoint)
    rows = []
    for split in ("test_hot", "test_cold"):
        folder = os.path.join(args.data, split)
        results = {name: ([], [], []) for name in ["true negatives"] + [f"R = {r:g}" for r in ratios]}
        for aid, seeds, candidates in progress(reader_test.RecDataset(config, folder), desc=split, unit="campaign"):
            if not seeds["label"].sum() or not len(candidates["label"]):
                continue
            for name in results:
                tuned = seeds
                if name != "true negatives":  # expand.py's rule: background users, never a candidate
                    rng = np.random.default_rng([config["runner"]["seed"], aid % 2**32, 1])
                    tuned, _ = background.with_negatives(seeds, users, float(name[4:]), candidates["uid"], rng)
                scorer = adapt(model, net, params, tuned, config, aid, reader_test.batches, users)
                scores = score(model, scorer, candidates, config, reader_test.batches)
                campaigns, labels, all_scores = results[name]
                campaigns.append({"campaign": aid, **metrics.campaign_metrics(candidates["label"], scores)})
                labels.append(candidates["label"])
                all_scores.append(scores)
        for name, (campaigns, labels, all_scores) in results.items():
            overall = metrics.overall_metrics(campaigns, np.concatenate(labels), np.concatenate(all_scores))
            rows.append((split, name, overall["campaigns"], overall["gauc"], overall["precision"], overall["auc"]))
    print(metrics.format_table(("split", "fine-tuned on", "campaigns", "GAUC", "P@5%", "pooled AUC"), rows))



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="scoring speed and memory on a large pool")
    s.add_argument("--pool-users", type=int, default=FULL_POOL)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--work", help="keep the generated data here (reused when rerun)")
    p = sub.add_parser("pool", help="(used by speed) write a synthetic pool file")
    p.add_argument("path")
    p.add_argument("users", type=int)
    n = sub.add_parser("negatives", help="sampled negatives against true ones")
    n.add_argument("--data", required=True, help="a data folder with test_hot and test_cold")
    n.add_argument("--checkpoint", required=True, help="a checkpoint folder (<model_save_path>/<epoch>)")
    n.add_argument("--ratios", default="1,4,19", help="negatives per seed to compare (default 1,4,19)")
    n.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "pool":
        orders = bench_model.popularity_orders([schema.TENCENT_MAX_IDXS[g] for g in schema.GROUPS], 0)
        write_pool(args.path, args.users, orders)
    else:
        speed(args) if args.what == "speed" else negatives(args)


if __name__ == "__main__":
    cli.run_and_exit(main)
