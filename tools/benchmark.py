"""The paper's Tables 2 and 4 on one dataset: every method, several seeds, one command.

    python tools/benchmark.py [--data data] [--methods lr,mlp,...] [--seeds 3] [--epochs 1]
                              [--jobs 1] [--threads 1] [--out output_benchmark] [--set KEY=VALUE ...] [--quick]

Every method is a model folder (models/<name>/, MetaHeac is the top level;
its ablations are -o overrides of the top-level config) run exactly as its
command lines run it: tools/trainer.py, then tools/infer_meta.py --split both,
once per seed (runner.seed = 2021, 2022, ...), each run in its own folder
OUT/<method>/seed<S>/. The data folder (train, test_hot, test_cold) and its
vocabulary maxima are passed to every config with -o, as are runner.epochs
(methods that train across campaigns; the checkpoint of the last epoch is
tested) and runner.thread_num. --set adds overrides to every method whose
config has that key (e.g. --set runner.train_batch_size=64).

Writes OUT/results.md (the table: cold and hot AUC, P@5%, R@5% and GAUC, mean
± sample standard deviation over the seeds, the oracle row when the data has
the generator's true probabilities), results.csv, results.json and auc.png.
A run whose run.json records the same commands is not repeated, so an
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

import numpy as np

from tools.utils import cli, metrics
from tools.utils import dataset as D
from tools.utils.errors import Stopped, UserError
from tools.utils.files import write_json, write_text
from tools.utils.model_folder import ROOT
from tools.utils.raw_users import quiet_worker_signals

# name: (row label, config relative to ROOT, extra overrides, trains across campaigns)
METHODS = {
    "lr": ("LR (per campaign)", "models/lr/config.yaml", (), False),
    "mlp": ("MLP, one stage (per campaign)", "models/mlp/config.yaml", (), False),
    "mlp_pretrained_emb": ("MLP + pre-trained embeddings", "models/mlp_pretrained_emb/config.yaml", (), True),
    "mlp_pretrain": ("MLP + pre-training", "models/mlp_pretrain/config.yaml", (), True),
    "shared_bottom": ("Shared-Bottom + pre-training", "models/shared_bottom/config.yaml", (), True),
    "mmoe": ("MMoE + pre-training", "models/mmoe/config.yaml", (), True),
    "metaheac": ("MetaHeac", "config.yaml", (), True),
    "metaheac_one_critic": ("MetaHeac without hybrid critics", "config.yaml",
                            ("hyper_parameters.num_output=1",), True),
    "metaheac_one_expert": ("MetaHeac without hybrid experts", "config.yaml",
                            ("hyper_parameters.num_expert=1",), True),
    "metaheac_no_meta": ("MetaHeac without meta-learning", "models/metaheac_no_meta/config.yaml", (), True),
}
QUICK = {"methods": ["lr", "mlp_pretrain", "metaheac"], "seeds": 2, "set": ["hyper_parameters.embed_dim=8"]}
SPLITS = (("cold", "test_cold"), ("hot", "test_hot"))
METRICS = (("auc", "AUC"), ("precision", "P@5%"), ("recall", "R@5%"), ("gauc", "GAUC"))
FIRST_SEED = 2021
RESULTS = "results/metrics_test_hot+test_cold.json"


class BenchmarkError(UserError):
    """A run failed or the options cannot work; the message says which and where its log is."""


# ---------------------------------------------------------------- planning the runs
def config_keys(config_path):
    """The keys a method's commands may set: the runner keys its config sets and the hyper_parameters its model
    folder declares. --set applies to the methods that have the key. Imports the model (and Paddle): run it in a
    worker."""
    from tools.utils import config as cfg
    from tools.utils import model_folder
    config = cfg.load_config(config_path)
    model = model_folder.model_module(config).DygraphModel()
    return {key for key in cfg.KEYS if cfg.get(config, key) is not None} | set(cfg.hyper_parameters_of(model))


def plan(methods, seeds, data_dir, out_dir, epochs, threads, extra, keys):
    """[(method, seed, trainer argv, infer_meta argv, run folder)] for every method x seed; keys: config_keys of
    every method."""
    data_dir = os.path.abspath(data_dir)
    D.read_schema(os.path.join(data_dir, "train"))  # a data folder, before any run starts
    unused = [item for item in extra if item not in QUICK["set"]  # --quick's settings apply where they can
              and not any(item.partition("=")[0] in keys[m] for m in methods)]
    if unused:
        raise BenchmarkError(f"--set {unused}: no selected method has that key")
    runs = []
    for method in methods:
        label, config, overrides, trains = METHODS[method]
        for seed in seeds:
            folder = os.path.join(os.path.abspath(out_dir), method, f"seed{seed}")
            common = [f"runner.seed={seed}", f"runner.thread_num={threads}",
                      f"runner.train_data_dir={os.path.join(data_dir, 'train')}",
                      f"runner.test_data_dir={os.path.join(data_dir, 'test_hot')}",
                      *overrides, *[item for item in extra if item.partition("=")[0] in keys[method]]]
            last = epochs if trains else 1
            train = ["-m", config, "-o", *common, f"runner.epochs={last}",
                     f"runner.model_save_path={os.path.join(folder, 'model')}"]
            infer = ["-m", config, "--split", "both", "-o", *common,
                     f"runner.infer_start_epoch={last - 1}", f"runner.infer_end_epoch={last}",
                     f"runner.infer_load_path={os.path.join(folder, 'model')}",
                     f"runner.infer_output_path={os.path.join(folder, 'results')}"]
            runs.append((method, seed, train, infer, folder))
    return runs


def fine_tune_protocol(method, extra, keys):
    """(passes, Adam learning rate, batch) of a method's fine-tuning on each test campaign's seeds."""
    from tools.utils.config import load_config
    config = load_config(os.path.join(ROOT, METHODS[method][1]),
                         [*METHODS[method][2], *[i for i in extra if i.partition("=")[0] in keys]])
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
    import tools.utils.paddle_env  # noqa: F401


def run_one(method, seed, train, infer, folder):
    """Train and test one method with one seed (or reuse a finished run.json of the same commands)."""
    record_path = os.path.join(folder, "run.json")
    commands = [["tools/trainer.py", *train], ["tools/infer_meta.py", *infer]]
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("commands") == commands:
            return {**record, "reused": True}
    os.makedirs(folder, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs' names are relative to the project folder
    try:
        with open(os.path.join(folder, "log.txt"), "w") as log:
            seconds = {}
            for (name, argv), key in zip((("trainer", train), ("infer_meta", infer)), ("train", "test")):
                code, seconds[key] = _tool(name, argv, log)
                if code != 0:
                    break
    finally:
        os.chdir(cwd)
    if code != 0:
        with open(os.path.join(folder, "log.txt")) as f:
            tail = [line for line in f.read().replace("\r", "\n").splitlines() if line.strip()][-3:]
        raise BenchmarkError(f"{method} seed {seed}: tools/{name}.py failed; log {folder}/log.txt ends: "
                             + " | ".join(tail))
    with open(os.path.join(folder, RESULTS)) as f:
        results = {run["split"]: run["overall"] for run in json.load(f)}
    record = {"method": method, "seed": seed, "commands": commands, "train_seconds": seconds["train"],
              "test_seconds": seconds["test"], "metrics": {short: results[split] for short, split in SPLITS}}
    write_json(record_path, record)
    return record


# ---------------------------------------------------------------- aggregating
def mean_std(values):
    """(mean, sample standard deviation over seeds (ddof 1; None for one seed)); None values count as NaN."""
    a = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def summarise(records):
    """{split: {metric: {"mean", "std", "values"}}, "train_seconds": mean, "test_seconds": mean}."""
    records = sorted(records, key=lambda r: r["seed"])
    out = {}
    for short, _ in SPLITS:
        out[short] = {}
        for key, _ in METRICS:
            values = [r["metrics"][short][key] for r in records]
            mean, std = mean_std(values)
            out[short][key] = {"mean": mean, "std": std, "values": values}
    for key in ("train_seconds", "test_seconds"):
        out[key] = float(np.mean([r[key] for r in records]))
    return out


def oracle(data_dir):
    """Metrics of the generator's true probabilities per split, or None where the data has none."""
    out = {}
    for short, split in SPLITS:
        split_dir = os.path.join(data_dir, split)
        stage2 = D.load_split(split_dir, stages=(1, 2))["stage2"]
        probs = D.load_oracle(D.stage_path(split_dir, 2), len(stage2["label"]))
        if probs is None:
            return None
        index = D.CampaignIndex(stage2["aid"])
        campaigns = [{"campaign": int(index.aids[i]),
                      **metrics.campaign_metrics(stage2["label"][index.rows_of(i)], probs[index.rows_of(i)])}
                     for i in range(len(index))]
        out[short] = metrics.overall_metrics(campaigns, stage2["label"], probs)
    return out


def data_summary(data_dir):
    """Rows and campaigns of each split's stages."""
    out = {}
    for split in ("train", "test_hot", "test_cold"):
        loaded = D.load_split(os.path.join(data_dir, split))
        out[split] = {f"stage{k}": {"rows": int(len(loaded[f"stage{k}"]["label"])),
                                    "campaigns": int(len(np.unique(loaded[f"stage{k}"]["aid"])))}
                      for k in (1, 2) if loaded[f"stage{k}"] is not None}
    return out


# ---------------------------------------------------------------- writing
def cell(stat):
    if stat["mean"] is None or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4f}" + ("" if stat["std"] is None else f" ± {stat['std']:.4f}")


def quick_note(extra, seeds, epochs):
    """What a --quick table and chart say about themselves: a smoke test, with the embedding width it ran at."""
    widths = [item.partition("=")[2] for item in extra if item.partition("=")[0] == "hyper_parameters.embed_dim"]
    dim = widths[-1] if widths else "as configured"
    return (f"SMOKE TEST (--quick): embed_dim {dim}, {seeds} seeds, {epochs} epoch(s); it checks that the methods run, "
            "its numbers are not results (docs/results.md has those)")


def markdown_table(report):
    head = ["Method"] + [f"{short} {name}" for short, _ in SPLITS for _, name in METRICS] + ["train s", "test s"]
    lines = ([f"**{report['note']}**", ""] if report.get("note") else []) + \
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in report["methods"]:
        s = m["summary"]
        lines.append("| " + " | ".join([m["label"]] + [cell(s[short][key]) for short, _ in SPLITS
                                                       for key, _ in METRICS]
                                       + [f"{s['train_seconds']:.0f}", f"{s['test_seconds']:.0f}"]) + " |")
    if report["oracle"]:
        lines.append("| Oracle (the generator's true probabilities) | " + " | ".join(
            cell({"mean": report["oracle"][short][key], "std": None}) for short, _ in SPLITS for key, _ in METRICS)
            + " | - | - |")
    return "\n".join(lines)


def write_markdown(path, report):
    seeds = report["seeds"]
    data = report["data_summary"]
    lines = [
        "# Look-alike benchmark (the paper's Tables 2 and 4)", "",
        f"Command: `{report['command']}`", "",
        f"Data: `{report['data']}`: " + "; ".join(
            f"{split} {v['stage1']['campaigns']} campaigns, {v['stage1']['rows']} stage-1 rows"
            + (f", {v['stage2']['rows']} stage-2 rows" if "stage2" in v else "") for split, v in data.items()) + ".",
        f"Seeds: {', '.join(map(str, seeds))}; epochs (methods trained across campaigns): {report['epochs']}; "
        f"threads per run: {report['threads']}; parallel runs: {report['jobs']}.", "",
        "Each cell: mean ± sample standard deviation (ddof 1) over the seeds. AUC pooled over a split's "
        "candidates; P@5% and R@5% per campaign (top 5% by score), averaged; GAUC the mean per-campaign AUC. "
        "Wall times: mean seconds per run (train, then fine-tune and score both splits).", "",
        markdown_table(report), "",
        "Fine-tuning on each test campaign's seeds (Adam, from the checkpoint): " + "; ".join(
            f"{p} passes, lr {lr:g}, batch {b}: " + ", ".join(m["label"] for m in report["methods"]
                                                          if tuple(m["fine_tune"].values()) == (p, lr, b))
            for p, lr, b in dict.fromkeys(tuple(m["fine_tune"].values()) for m in report["methods"])) + ".", "",
        f"Sum of the runs' wall times: {report['run_seconds']:.0f} s; this invocation: "
        f"{report['total_seconds']:.0f} s ({report['reused']} finished runs reused). Pinterest (KDD'19) and Hubble (KDD'20) need systems "
        "outside this project and are not run.",
    ]
    write_text(path, "\n".join(lines) + "\n")


def write_csv(path, report):
    import csv
    import io
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["method", "label", "split", "metric", "mean", "std", "seeds"])
    for m in report["methods"]:
        for short, _ in SPLITS:
            for key, _ in METRICS:
                stat = m["summary"][short][key]
                writer.writerow([m["name"], m["label"], short, key, stat["mean"], stat["std"], len(stat["values"])])
    for short, _ in SPLITS:
        for key, _ in METRICS:
            if report["oracle"]:
                writer.writerow(["oracle", "Oracle", short, key, report["oracle"][short][key], "", ""])
    write_text(path, table.getvalue())


def write_chart(path, report):
    """auc.png: AUC per method (mean, std as error bar), cold and hot side by side; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = report["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(methods) + 1.8), sharey=True)
    y = np.arange(len(methods))
    for ax, (short, _) in zip(axes, SPLITS):
        stats = [m["summary"][short]["auc"] for m in methods]
        ax.barh(y, [s["mean"] for s in stats], xerr=[s["std"] or 0.0 for s in stats], color="tab:blue", alpha=0.8)
        right = max(s["mean"] for s in stats) + 0.05
        if report["oracle"]:
            ax.axvline(report["oracle"][short]["auc"], color="tab:red", linestyle="--", label="oracle")
            ax.legend(loc="lower right")
            right = max(right, report["oracle"][short]["auc"] + 0.02)
        ax.axvline(0.5, color="grey", linewidth=0.8)
        ax.set_xlim(0.45, min(1.0, max(0.8, right)))
        ax.set_title(f"{short} campaigns: AUC")
    axes[0].set_yticks(y, [m["label"] for m in methods])
    axes[0].invert_yaxis()
    if report.get("note"):
        fig.suptitle(report["note"], color="tab:red", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Description": report.get("note") or "look-alike benchmark: AUC"})
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the whole benchmark
def benchmark(methods, seeds, data_dir, out_dir, epochs=1, jobs=1, threads=1, extra=(), command="", log=print,
              note=None):
    """Run (or reuse) every method x seed, write the four result files; returns the report dict.

    note: a line the table and the chart show first (--quick: quick_note)."""
    start = time.perf_counter()
    records = {}
    # fork: the workers inherit sys.path; the parent never imports Paddle, so forking it is safe
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_start_worker)
    try:
        configs = {os.path.join(ROOT, METHODS[m][1]) for m in methods}
        config_keys_of = dict(zip(configs, pool.map(config_keys, configs)))
        keys = {m: config_keys_of[os.path.join(ROOT, METHODS[m][1])] for m in methods}
        runs = plan(methods, seeds, data_dir, out_dir, epochs, threads, list(extra), keys)
        futures = {pool.submit(run_one, *run): run[:2] for run in runs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            record = future.result()
            records[futures[future]] = record
            log(f"[{done}/{len(runs)}] {record['method']} seed {record['seed']}: "
                + ("reused" if record.get("reused") else
                   f"train {record['train_seconds']:.0f} s, test {record['test_seconds']:.0f} s")
                + ", " + ", ".join(f"{short} AUC {record['metrics'][short]['auc']:.4f}" for short, _ in SPLITS))
    except (Stopped, KeyboardInterrupt):  # stop the runs too (each saves what it can), then start no other
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)  # after a failed run, start no other
    report = {
        "command": command, "note": note, "data": data_dir, "data_summary": data_summary(data_dir), "seeds": list(seeds),
        "epochs": epochs, "threads": threads, "jobs": jobs, "oracle": oracle(data_dir),
        "methods": [{"name": m, "label": METHODS[m][0], "config": METHODS[m][1], "overrides": list(METHODS[m][2]),
                     "trains_across_campaigns": METHODS[m][3],
                     "fine_tune": dict(zip(("passes", "learning_rate", "batch"),
                                           fine_tune_protocol(m, extra, keys[m]))),
                     "runs": [records[(m, s)] for s in seeds],
                     "summary": summarise([records[(m, s)] for s in seeds])} for m in methods],
    }
    report["total_seconds"] = time.perf_counter() - start
    report["run_seconds"] = sum(r["train_seconds"] + r["test_seconds"] for r in records.values())
    report["reused"] = sum(bool(r.get("reused")) for r in records.values())
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), report)
    write_csv(os.path.join(out_dir, "results.csv"), report)
    write_markdown(os.path.join(out_dir, "results.md"), report)
    if not write_chart(os.path.join(out_dir, "auc.png"), report):
        log("note: matplotlib is not installed; auc.png not written")
    return report


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "data"),
                    help="dataset folder with train, test_hot and test_cold (default: the shipped data/)")
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    ap.add_argument("--seeds", type=int, help=f"seeds per method: {FIRST_SEED}, {FIRST_SEED + 1}, ... (default 3)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of the methods that train across "
                    "campaigns (default 1); the last epoch's checkpoint is tested")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="Paddle threads per run (default 1)")
    ap.add_argument("--out", default="output_benchmark", help="output folder (default output_benchmark)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="extra -o override for every method whose config has KEY")
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
    problems = [f"--methods: unknown {unknown}; choose from {','.join(METHODS)}"] if unknown else []
    counts = {"seeds": seeds, "epochs": args.epochs, "jobs": args.jobs, "threads": args.threads}
    problems += [f"--{name} must be >= 1" for name, value in counts.items() if value < 1]
    if problems:
        raise BenchmarkError("; ".join(problems))
    command = "python tools/benchmark.py " + " ".join(argv)
    report = benchmark(methods, [FIRST_SEED + i for i in range(seeds)], os.path.abspath(args.data), args.out,
                       args.epochs, args.jobs, args.threads, extra, command,
                       note=quick_note(extra, seeds, args.epochs) if args.quick else None)
    print(markdown_table(report))
    print(f"results: {', '.join(os.path.join(args.out, n) for n in ('results.md', 'results.csv', 'results.json'))}"
          f"; total {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(cli.run(main))
