"""The paper's Tables 2 and 4 on one dataset, and the look-alike baselines: every method, several seeds, one command.

    python tools/benchmark.py [--data data] [--methods lr,mlp,...] [--seeds 3] [--epochs 1] [--protocols P,...]
                              [--jobs 1] [--threads 1] [--out output_benchmark] [--set KEY=VALUE ...] [--quick]

Every method is a model folder (models/<name>/, MetaHeac is the top level;
its ablations and the paper's protocol are -o overrides of the top-level
config) run exactly as its command lines run it: tools/trainer.py, then
tools/infer_meta.py --split both once per protocol, once per seed
(runner.seed = 2021, 2022, ...), each run in its own folder
OUT/<method>/seed<S>/. The protocols (runner.infer_seeds): "labelled", each
test campaign adapted to its labelled stage-1 rows (the paper's), and
"positive", to its positive seeds and background negatives (what
tools/expand.py does with a seed list). The data folder (train, test_hot,
test_cold) is passed to every config with -o, as are runner.epochs (methods
that train across campaigns; the checkpoint of the last epoch is tested) and
runner.thread_num. --set adds overrides to every method that has that key
(any runner key but those the benchmark sets; a hyper-parameter where the
model folder declares it; e.g. --set runner.train_batch_size=64), except a
key that defines a method (num_expert=1 of metaheac_one_expert stays; a note
says so).

Writes OUT/results.md (a table per protocol: per campaign AUC (GAUC) and P@5%
of the cold and hot campaigns first, what an advertiser gets, then the pooled
AUC; mean ± sample standard deviation over the seeds; the oracle row when the
data has the generator's true probabilities), results.csv, results.json and
gauc.png (tools/utils/measure/benchmark_report.py). A run whose run.json records the
same commands and the same data files (their sha256) is not repeated, so an
interrupted benchmark resumes; delete OUT to rerun everything.

Runs execute in --jobs worker processes (Paddle is imported once per worker);
each run seeds everything it uses, so the numbers do not depend on --jobs.
Wall times are per run (train and test), so they do depend on what else runs.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
import warnings

import numpy as np

from tools.utils import cli
from tools.utils.measure import benchmark_report, metrics
from tools.utils.data import dataset
from tools.utils.errors import Stopped, UserError
from tools.utils.files import write_json
from tools.utils.run.model_folder import ROOT
from tools.utils.data.raw_users import quiet_worker_signals

# name: (row label, config relative to ROOT, extra overrides, trains across campaigns)
METHODS = {
    "lr": ("LR (per campaign)", "models/lr/config.yaml", (), False),
    "mlp": ("MLP, one stage (per campaign)", "models/mlp/config.yaml", (), False),
    "mlp_pretrained_emb": ("MLP + pre-trained embeddings", "models/mlp_pretrained_emb/config.yaml", (), True),
    "mlp_pretrain": ("MLP + pre-training", "models/mlp_pretrain/config.yaml", (), True),
    "shared_bottom": ("Shared-Bottom + pre-training", "models/shared_bottom/config.yaml", (), True),
    "mmoe": ("MMoE + pre-training", "models/mmoe/config.yaml", (), True),
    "lookalike_lr": ("Look-alike LR (scikit-learn, C by cross-validation)", "models/lookalike_lr/config.yaml", (),
                     False),
    "lookalike_centroid": ("Seed centroid (cosine)", "models/lookalike_centroid/config.yaml", (), False),
    "metaheac": ("MetaHeac", "config.yaml", (), True),
    "metaheac_paper": ("MetaHeac, the paper's (no wide part)", "config.yaml", ("hyper_parameters.wide_weight=0",),
                       True),
    "metaheac_one_critic": ("MetaHeac without hybrid critics", "config.yaml",
                            ("hyper_parameters.num_output=1",), True),
    "metaheac_one_expert": ("MetaHeac without hybrid experts", "config.yaml",
                            ("hyper_parameters.num_expert=1",), True),
    "metaheac_no_meta": ("MetaHeac without meta-learning", "models/metaheac_no_meta/config.yaml", (), True),
}
QUICK = {"methods": ["lr", "mlp_pretrain", "metaheac"], "seeds": 2, "set": ["hyper_parameters.embed_dim=8"]}
FIRST_SEED = 2021
PROTOCOLS = ("labelled", "positive")
OWN_KEYS = {f"runner.{key}" for key in ("seed", "thread_num", "train_data_dir", "test_data_dir", "epochs",
                                        "model_save_path", "infer_seeds", "infer_start_epoch", "infer_end_epoch",
                                        "infer_load_path", "infer_output_path")}  # what plan() sets


def results_file(protocol):
    return os.path.join(f"results_{protocol}", "metrics_test_hot+test_cold.json")


class BenchmarkError(UserError):
    """A run failed or the options cannot work; the message says which and where its log is."""


# ---------------------------------------------------------------- planning the runs
def config_keys(config_path):
    """The keys a method's commands may set: every runner key (the tools declare them) and the hyper_parameters its
    model folder declares. --set applies to the methods that have the key. Imports the model (and Paddle): run it
    in a worker."""
    from tools.utils.run import config as cfg
    from tools.utils.run import model_folder
    config = cfg.load_config(config_path)
    model = model_folder.load_model(config)
    return set(cfg.KEYS) | set(cfg.hyper_parameters_of(model))


def set_for(method, extra, keys):
    """(the --set items a method takes, those it leaves: keys its definition fixes, as num_expert=1 does for
    metaheac_one_expert, so that its row stays what its label says)."""
    fixed = {item.partition("=")[0] for item in METHODS[method][2]}
    has = [item for item in extra if item.partition("=")[0] in keys[method]]
    return [item for item in has if item.partition("=")[0] not in fixed], \
        [item for item in has if item.partition("=")[0] in fixed]


def plan(methods, seeds, data_dir, out_dir, epochs, threads, extra, keys, protocols=PROTOCOLS):
    """[(method, seed, trainer argv, {protocol: infer_meta argv}, run folder, data digests)] for every method x
    seed; keys: config_keys of every method."""
    data_dir = os.path.abspath(data_dir)
    dataset.read_schema(os.path.join(data_dir, "train"))  # a data folder, before any run starts
    ours = [item for item in extra if item.partition("=")[0] in OWN_KEYS]
    if ours:
        raise BenchmarkError(f"--set {ours}: the benchmark sets {', '.join(sorted(OWN_KEYS))} itself (--data, "
                             "--seeds, --epochs, --threads, --protocols, --out)")
    unused = [item for item in extra if item not in QUICK["set"]  # --quick's settings apply where they can
              and not any(item.partition("=")[0] in keys[m] for m in methods)]
    if unused:
        raise BenchmarkError(f"--set {unused}: no selected method has that key")
    no_uids = [path for split in ("test_hot", "test_cold")
               for path in dataset.without_uids(os.path.join(data_dir, split))]
    if "positive" in protocols and no_uids:
        raise BenchmarkError(f"{no_uids[0]}: no uid array, which the positive protocol needs to keep seeds and "
                             "candidates out of the drawn negatives: give --protocols labelled")
    data = {split: dataset.data_digest(os.path.join(data_dir, split)) for split in ("train", "test_hot", "test_cold")}
    runs = []
    for method in methods:
        label, config, overrides, trains = METHODS[method]
        for seed in seeds:
            folder = os.path.join(os.path.abspath(out_dir), method, f"seed{seed}")
            common = [f"runner.seed={seed}", f"runner.thread_num={threads}",
                      f"runner.train_data_dir={os.path.join(data_dir, 'train')}",
                      f"runner.test_data_dir={os.path.join(data_dir, 'test_hot')}",
                      *overrides, *set_for(method, extra, keys)[0]]
            last = epochs if trains else 1
            train = ["-m", config, "-o", *common, f"runner.epochs={last}",
                     f"runner.model_save_path={os.path.join(folder, 'model')}"]
            infer = {protocol: ["-m", config, "--split", "both", "-o", *common, f"runner.infer_seeds={protocol}",
                                f"runner.infer_start_epoch={last - 1}", f"runner.infer_end_epoch={last}",
                                f"runner.infer_load_path={os.path.join(folder, 'model')}",
                                f"runner.infer_output_path={os.path.join(folder, f'results_{protocol}')}"]
                     for protocol in protocols}
            runs.append((method, seed, train, infer, folder, data))
    return runs


def fine_tune_protocol(method, extra, keys):
    """(passes, Adam learning rate, batch) of a method's fine-tuning on each test campaign's seeds."""
    from tools.utils.run.config import load_config
    config = load_config(os.path.join(ROOT, METHODS[method][1]),
                         [*METHODS[method][2], *set_for(method, extra, keys)[0]])
    return (config["runner"]["infer_train_epoch"], config["hyper_parameters"]["local_test_learning_rate"],
            config["runner"]["infer_batch_size"])


# ---------------------------------------------------------------- running one (in a worker process)
def _tool(name, argv, log):
    """Run tools/<name>.py's main(argv) with its output in `log`; returns (exit code, seconds)."""
    import importlib
    module = importlib.import_module(f"tools.{name}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli.run(module.main, argv)
    return code, time.perf_counter() - start


def _start_worker():
    """Worker start-up: the parent ends the workers (an idle one dies quietly on SIGTERM, a busy one's run stops
    with one line in its log), and Ctrl-C is the parent's; then Paddle is imported once, so no run's wall time
    includes it."""
    quiet_worker_signals()
    from tools.utils import paddle_env
    paddle_env.load()


def run_one(method, seed, train, infer, folder, data):
    """Train and test one method with one seed under each protocol of `infer` (or reuse a finished run.json of
    the same commands on the same data: `data`, the data folder's dataset.data_digest per split)."""
    record_path = os.path.join(folder, "run.json")
    commands = [["tools/trainer.py", *train]] + [["tools/infer_meta.py", *argv] for argv in infer.values()]
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("commands") == commands and record.get("data") == data:
            return {**record, "reused": True}
    os.makedirs(folder, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs' names are relative to the project folder
    seconds = {"train": 0.0, "test": 0.0}
    try:
        with open(os.path.join(folder, "log.txt"), "w") as log:
            for name, argv in [("trainer", train)] + [("infer_meta", argv) for argv in infer.values()]:
                code, took = _tool(name, argv, log)
                seconds["train" if name == "trainer" else "test"] += took
                if code != 0:
                    break
    finally:
        os.chdir(cwd)
    if code != 0:
        with open(os.path.join(folder, "log.txt")) as f:
            tail = [line for line in f.read().replace("\r", "\n").splitlines() if line.strip()][-3:]
        raise BenchmarkError(f"{method} seed {seed}: tools/{name}.py failed; log {folder}/log.txt ends: "
                             + " | ".join(tail))
    found = {}
    for protocol in infer:
        with open(os.path.join(folder, results_file(protocol))) as f:
            results = {run["split"]: run["overall"] for run in json.load(f)}
        found[protocol] = {short: results[split] for short, split in benchmark_report.SPLITS}
    record = {"method": method, "seed": seed, "commands": commands, "data": data, "train_seconds": seconds["train"],
              "test_seconds": seconds["test"], "metrics": found}
    write_json(record_path, record)
    return record


# ---------------------------------------------------------------- aggregating
def mean_std(values):
    """(mean, sample standard deviation over seeds (ddof 1; None for one seed)); None values count as NaN."""
    a = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def summarise(records, protocols):
    """{protocol: {split: {metric: {"mean", "std", "values"}}}, "train_seconds": mean, "test_seconds": mean}."""
    records = sorted(records, key=lambda r: r["seed"])
    out = {}
    for protocol in protocols:
        out[protocol] = {}
        for short, _ in benchmark_report.SPLITS:
            out[protocol][short] = {}
            for key, _ in benchmark_report.METRICS:
                values = [r["metrics"][protocol][short][key] for r in records]
                mean, std = mean_std(values)
                out[protocol][short][key] = {"mean": mean, "std": std, "values": values}
    for key in ("train_seconds", "test_seconds"):
        out[key] = float(np.mean([r[key] for r in records]))
    return out


def oracle(data_dir):
    """Metrics of the generator's true probabilities per split, or None where the data has none."""
    out = {}
    for short, split in benchmark_report.SPLITS:
        split_dir = os.path.join(data_dir, split)
        stage2 = dataset.load_split(split_dir, stages=(1, 2))["stage2"]
        probs = dataset.load_oracle(dataset.stage_path(split_dir, 2), len(stage2["label"]))
        if probs is None:
            return None
        index = dataset.CampaignIndex(stage2["aid"])
        campaigns = [{"campaign": int(index.aids[i]),
                      **metrics.campaign_metrics(stage2["label"][index.rows_of(i)], probs[index.rows_of(i)])}
                     for i in range(len(index))]
        out[short] = metrics.overall_metrics(campaigns, stage2["label"], probs)
    return out


def data_summary(data_dir):
    """Rows and campaigns of each split's stages."""
    out = {}
    for split in ("train", "test_hot", "test_cold"):
        loaded = dataset.load_split(os.path.join(data_dir, split))
        out[split] = {f"stage{k}": {"rows": int(len(loaded[f"stage{k}"]["label"])),
                                    "campaigns": int(len(np.unique(loaded[f"stage{k}"]["aid"])))}
                      for k in (1, 2) if loaded[f"stage{k}"] is not None}
    return out


# ---------------------------------------------------------------- the whole benchmark
def benchmark(methods, seeds, data_dir, out_dir, epochs=1, jobs=1, threads=1, extra=(), command="", log=print,
              note=None, protocols=PROTOCOLS):
    """Run (or reuse) every method x seed, write the four result files; returns the report dict.

    note: a line the tables and the chart show first (--quick: benchmark_report.quick_note)."""
    start = time.perf_counter()
    records = {}
    # fork: the workers inherit sys.path; the parent never imports Paddle, so forking it is safe
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_start_worker)
    try:
        configs = {os.path.join(ROOT, METHODS[m][1]) for m in methods}
        config_keys_of = dict(zip(configs, pool.map(config_keys, configs)))
        keys = {m: config_keys_of[os.path.join(ROOT, METHODS[m][1])] for m in methods}
        for m in methods:
            for item in set_for(m, extra, keys)[1]:
                log(f"note: --set {item} is not applied to {m}, which is defined by "
                    + next(o for o in METHODS[m][2] if o.partition("=")[0] == item.partition("=")[0]))
        runs = plan(methods, seeds, data_dir, out_dir, epochs, threads, list(extra), keys, protocols)
        futures = {pool.submit(run_one, *run): run[:2] for run in runs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            record = future.result()
            records[futures[future]] = record
            log(f"[{done}/{len(runs)}] {record['method']} seed {record['seed']}: "
                + ("reused" if record.get("reused") else
                   f"train {record['train_seconds']:.0f} s, test {record['test_seconds']:.0f} s")
                + ", " + ", ".join(f"{protocol} {short} GAUC {record['metrics'][protocol][short]['gauc']:.4f}"
                                   for protocol in protocols for short, _ in benchmark_report.SPLITS))
    except (Stopped, KeyboardInterrupt):  # stop the runs too (each saves what it can), then start no other
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)  # after a failed run, start no other
    with warnings.catch_warnings(record=True) as caught:  # one-class campaigns: a note, not a Python warning
        warnings.simplefilter("always")
        truth = oracle(data_dir)
    for w in caught:
        log(f"note: the oracle: {w.message}")
    report = {
        "command": command, "note": note, "data": data_dir, "data_summary": data_summary(data_dir),
        "seeds": list(seeds), "protocols": list(protocols), "epochs": epochs, "threads": threads, "jobs": jobs,
        "oracle": truth,
        "methods": [{"name": m, "label": METHODS[m][0], "config": METHODS[m][1], "overrides": list(METHODS[m][2]),
                     "trains_across_campaigns": METHODS[m][3],
                     "fine_tune": dict(zip(("passes", "learning_rate", "batch"),
                                           fine_tune_protocol(m, extra, keys))),
                     "runs": [records[(m, s)] for s in seeds],
                     "summary": summarise([records[(m, s)] for s in seeds], protocols)} for m in methods],
    }
    report["total_seconds"] = time.perf_counter() - start
    report["run_seconds"] = sum(r["train_seconds"] + r["test_seconds"] for r in records.values())
    report["reused"] = sum(bool(r.get("reused")) for r in records.values())
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), report)
    benchmark_report.write_csv(os.path.join(out_dir, "results.csv"), report)
    benchmark_report.write_markdown(os.path.join(out_dir, "results.md"), report)
    if not benchmark_report.write_chart(os.path.join(out_dir, "gauc.png"), report):
        log("note: matplotlib is not installed; gauc.png not written")
    return report


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "data"),
                    help="dataset folder with train, test_hot and test_cold (default: the shipped data/)")
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    ap.add_argument("--seeds", type=int, help=f"seeds per method: {FIRST_SEED}, {FIRST_SEED + 1}, ... (default 3)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the methods that train across "
                    "campaigns (default 1); the last epoch's checkpoint is tested")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help=f"comma-separated test protocols, of {','.join(PROTOCOLS)} (default: both)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="Paddle threads per run (default 1)")
    ap.add_argument("--out", default="output_benchmark", help="output folder (default output_benchmark)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="extra -o override for every method that reads KEY (any runner key but the "
                         "benchmark's own; a hyper-parameter its model folder declares)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smallest version: methods {','.join(QUICK['methods'])}, {QUICK['seeds']} seeds, "
                         f"{' '.join(QUICK['set'])} (explicit options win)")
    return ap.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    methods = args.methods.split(",") if args.methods else (QUICK["methods"] if args.quick else list(METHODS))
    unknown = [m for m in methods if m not in METHODS]
    seeds = args.seeds if args.seeds is not None else (QUICK["seeds"] if args.quick else 3)
    extra = (QUICK["set"] if args.quick else []) + args.set
    protocols = args.protocols.split(",")
    problems = [f"--methods: unknown {unknown}; choose from {','.join(METHODS)}"] if unknown else []
    if not protocols or set(protocols) - set(PROTOCOLS):
        problems.append(f"--protocols {args.protocols}: choose from {','.join(PROTOCOLS)}")
    counts = {"seeds": seeds, "epochs": args.epochs, "jobs": args.jobs, "threads": args.threads}
    problems += [f"--{name} must be >= 1" for name, value in counts.items() if value < 1]
    if problems:
        raise BenchmarkError("; ".join(problems))
    command = "python tools/benchmark.py " + " ".join(argv)
    report = benchmark(methods, [FIRST_SEED + i for i in range(seeds)], os.path.abspath(args.data), args.out,
                       args.epochs, args.jobs, args.threads, extra, command,
                       note=benchmark_report.quick_note(extra, seeds, args.epochs) if args.quick else None,
                       protocols=protocols)
    print("\n\n".join(benchmark_report.markdown_table(report, protocol) for protocol in protocols))
    print(f"results: {', '.join(os.path.join(args.out, n) for n in ('results.md', 'results.csv', 'results.json'))}"
          f"; total {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    cli.run_and_exit(main)
