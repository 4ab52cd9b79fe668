"""Write synthetic look-alike data in the raw Tencent 2018 competition format.

    python tools/make_synthetic.py --out data/raw_sample --scale sample --seed 2021
    python tools/preprocess.py --raw data/raw_sample --out data/sample --hot-threshold 50

OUT receives adFeature.csv, userFeature.data, train.csv (stage-1 seeds),
test1_truth.csv (stage-2 candidates) and oracle.csv (the true click
probability of every row: for benchmarks, never a feature). The generative
model is described at the top of tools/utils/data/synthetic.py. The same arguments
always give byte-identical files (whatever --jobs).

--hot-cut splits the planned campaign sizes: half the campaigns get fewer
expected positives (over both stages) than it, half more. Pass the same number
as the hot/cold threshold of the preprocessing to get hot and cold test
campaigns in about equal numbers.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from tools.utils import cli
from tools.utils.data import synthetic
from tools.utils.errors import UserError
from tools.utils.files import remove_dead_leftovers

SETTINGS = ("users", "campaigns", "train_rows", "test_rows", "hot_cut", "cold_min")


def presets_table():
    lines = ["presets (users, campaigns, train.csv rows, test1_truth.csv rows, --hot-cut, --cold-min):"]
    for name, cfg in synthetic.PRESETS.items():
        lines.append(f"  {name:7s} " + "  ".join(f"{cfg[k]:>10,}" for k in SETTINGS))
    lines.append("sample: 6 MB once preprocessed, 5 s; small: the preprocessing benchmark, 0.35 GB, "
                 "45 s; full: the real sizes, 4.1 GB, 8-15 min and 1.8 GB of memory on 2 cores")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, epilog=presets_table(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created; its five files are replaced)")
    ap.add_argument("--scale", default="sample", choices=sorted(synthetic.PRESETS),
                    help="preset sizes (default sample); the options below override single values")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--users", type=int, help="users in userFeature.data")
    ap.add_argument("--campaigns", type=int, help="ads (aids)")
    ap.add_argument("--train-rows", type=int, help="rows of train.csv (stage 1)")
    ap.add_argument("--test-rows", type=int, help="rows of test1_truth.csv (stage 2)")
    ap.add_argument("--hot-cut", type=int, help="expected positives splitting cold- from hot-sized campaigns")
    ap.add_argument("--cold-min", type=int, help="expected positives of the smallest campaign")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes writing userFeature.data (default: up to 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    return ap.parse_args(argv)


def summary(out_dir, truth, hot_cut, seconds):
    """A few lines: what was written, positive rates, campaign sizes, the oracle AUC."""
    lines = [f"wrote {out_dir} in {seconds:.0f} s: "
             + ", ".join(f"{name} {os.path.getsize(os.path.join(out_dir, name)) / 1e6:,.1f} MB"
                         for name in synthetic.FILES)]
    positives = np.zeros(len(truth.aids), np.int64)
    for stage, file in (("stage1", "train.csv"), ("stage2", "test1_truth.csv")):
        r = truth.rows[stage]
        positives += np.bincount(r["campaign"], r["label"], len(truth.aids)).astype(np.int64)
        lines.append(f"  {file}: {len(r['label']):,} rows, {r['label'].mean():.2%} positive, "
                     f"oracle AUC {roc_auc_score(r['label'], r['prob']):.3f}")
    hot = int((positives > hot_cut).sum())
    lines.append(f"  {len(truth.aids)} campaigns: {hot} with more than {hot_cut} positives (hot), "
                 f"{len(truth.aids) - hot} cold; positives per campaign {positives.min()}..{positives.max()}")
    lines.append(f"  preprocess with the hot/cold threshold {hot_cut}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; give a folder for the five data files")
    if args.jobs < 1:
        raise UserError(f"--jobs is {args.jobs}; give 1 or more")
    remove_dead_leftovers(args.out, synthetic.STAGING)  # what a killed run left
    try:
        cfg = synthetic.resolve_scale(args.scale, **{k: getattr(args, k) for k in SETTINGS})
        start = time.time()
        truth = synthetic.generate(args.out, **cfg, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    except ValueError as e:  # settings the generator cannot meet
        raise UserError(str(e)) from e
    print(summary(args.out, truth, cfg["hot_cut"], time.time() - start))


if __name__ == "__main__":
    cli.run_and_exit(main)
