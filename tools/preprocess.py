"""Preprocess the raw Tencent 2018 Look-alike files (preliminary round) into our data folders.

    python tools/preprocess.py --raw DIR --out data/big [--seed 2021] [--hot-threshold 2000]
                               [--train-fraction 0.5] [--skip-bad-lines] [--force] [--workers 2]

DIR holds adFeature.csv, userFeature.data, train.csv (stage-1 seeds),
test1_truth.csv (stage-2 candidates) and, for synthetic data only, oracle.csv.
Writes OUT/train/train_stage1.npz (+ train_stage2.npz),
OUT/test_hot/test_stage{1,2}.npz, OUT/test_cold/test_stage{1,2}.npz and a
schema.json in each folder (+ *_oracle.npy beside each stage file when
oracle.csv exists). How ids are encoded and campaigns split: see
tools/utils/data/raw.py.

OUT must not hold DIR (nor lie inside it). A non-empty OUT is refused unless
--force, which replaces OUT/train, OUT/test_hot and OUT/test_cold and leaves
every other file and folder of OUT alone. The new folders are built beside
them (OUT/.preprocess.tmp<pid>) and swapped in only when all were written: a
failed run changes nothing, and what a killed one left is removed by the next
run once its process is gone.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import os

from tools.utils import cli
from tools.utils.data import schema
from tools.utils.files import remove_dead_leftovers
from tools.utils.data.raw import SPLITS, STAGING, preprocess


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="folder with the raw competition files")
    ap.add_argument("--out", required=True,
                    help="output folder (refused when not empty, unless --force); must not hold --raw")
    ap.add_argument("--seed", type=int, default=2021, help="seed of the train/test campaign split (2021)")
    ap.add_argument("--hot-threshold", type=int, default=2000,
                    help="a test campaign is hot when its positives over both stages are > this, "
                         "cold when <= (2000)")
    ap.add_argument("--train-fraction", type=float, default=0.5,
                    help="share of campaigns used for training, rounded down (0.5)")
    ap.add_argument("--skip-bad-lines", action="store_true",
                    help="skip malformed userFeature.data lines and drop rows whose user has no line, "
                         "instead of stopping at the first one")
    ap.add_argument("--force", action="store_true",
                    help="write into a non-empty --out, replacing its train, test_hot and test_cold folders "
                         "(nothing else in it is touched)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes parsing userFeature.data (default: up to 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if not 0 < args.train_fraction < 1:
        ap.error(f"--train-fraction is {args.train_fraction}; it must be between 0 and 1 (exclusive)")
    if args.hot_threshold < 0:
        ap.error(f"--hot-threshold is {args.hot_threshold}; it must be a non-negative number of positives")
    if args.workers < 1:
        ap.error(f"--workers is {args.workers}; at least 1")
    return args


def format_summary(summary, out_dir):
    lines = [f"{'split':<10} {'campaigns':>9} {'stage-1 rows':>12} {'stage-2 rows':>12} {'positives':>10}"]
    for folder, _ in SPLITS:
        c = summary.splits[folder]
        lines.append(f"{folder:<10} {c['campaigns']:>9} {c['stage1']:>12} {c['stage2']:>12} {c['positives']:>10}")
    for group, fields in schema.GROUP_FIELDS.items():
        sizes = ", ".join(f"{f} {m + 1}" for f, m in zip(fields, summary.max_idxs[group]))
        lines.append(f"vocabulary ({group}): {sizes}")
    rate = summary.lines / max(summary.user_seconds, 1e-9)
    lines.append(f"userFeature.data: {summary.lines} lines read in {summary.user_seconds:.1f} s "
                 f"({rate:,.0f} lines/s)")
    if summary.bad_lines:
        lines.append(f"skipped {summary.bad_lines} bad line{'s' * (summary.bad_lines != 1)} of userFeature.data "
                     f"(the first: {summary.first_bad})")
    if summary.dropped_rows:
        lines.append(f"dropped {summary.dropped_rows} labelled row{'s' * (summary.dropped_rows != 1)} whose user "
                     "has no good line in userFeature.data")
    if not summary.splits["train"]["campaigns"]:
        lines.append("note: no training campaign (--train-fraction of this many campaigns rounds to 0): train/ is "
                     "empty, so this folder can only be tested on with a model trained on other data")
    oracle = " with oracle probabilities" if summary.oracle else ""
    lines.append(f"wrote {out_dir}{oracle} in {summary.seconds:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    remove_dead_leftovers(args.out, STAGING)  # a killed run's staging folder would make --out "not empty"
    summary = preprocess(args.raw, args.out, seed=args.seed, hot_threshold=args.hot_threshold,
                         train_fraction=args.train_fraction, skip_bad_lines=args.skip_bad_lines,
                         force=args.force, workers=args.workers, progress=not args.quiet)
    print(format_summary(summary, args.out))


if __name__ == "__main__":
    cli.run_and_exit(main)
