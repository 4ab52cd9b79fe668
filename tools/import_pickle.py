"""Convert the published MetaHeac pandas pickles into our .npz data folders.

    python tools/import_pickle.py --pkl-dir DIR --out data/tencent
    python tools/import_pickle.py --pkl FILE --split test_hot --stage 1 --out data/sample

--pkl-dir imports every {train,test_hot,test_cold}_stage{1,2}.pkl in DIR to
OUT/train/train_stage1.npz, OUT/test_hot/test_stage1.npz, ... with a
schema.json per split. The pickles are read through an allowlist that refuses
anything able to run code; pandas is needed (pip install pandas).

--max-idxs data (default) sizes every embedding table by the largest id in
the imported files. --max-idxs tencent uses the maxima of the full processed
Tencent data instead: use it when importing a subset (a sample, or only the
test files), which may lack the largest ids, so that the tables match the
full vocabulary and a model trained on the full data can read it.

A non-empty OUT is refused unless --force, which replaces the split folders
written (OUT/train, ...) and leaves everything else in OUT alone; a stage not
imported now is kept from the folder replaced, so a stage 2 can be added to a
folder holding its stage 1 (--pkl FILE --split test_hot --stage 2 --force).
The folders are built beside the old ones (OUT/.import_pickle.tmp<pid>) and
swapped in only when every file was converted and checked: a failed import
changes nothing, and what a killed one left is removed by the next run.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import os

from tools.utils import cli
from tools.utils.data import safe_pickle
from tools.utils.files import remove_dead_leftovers
from tools.utils.progress import progress


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--pkl-dir", help="folder with {train,test_hot,test_cold}_stage{1,2}.pkl")
    source.add_argument("--pkl", help="one pickle of any name; needs --split and --stage")
    ap.add_argument("--split", choices=safe_pickle.SPLITS, help="split of the --pkl file")
    ap.add_argument("--stage", type=int, choices=(1, 2), help="stage of the --pkl file (1 seeds, 2 candidates)")
    ap.add_argument("--out", default=os.path.join("data", "tencent"),
                    help="output folder, gets one subfolder per split (default: data/tencent); "
                         "refused when not empty, unless --force")
    ap.add_argument("--force", action="store_true",
                    help="write into a non-empty --out, replacing the split folders imported "
                         "(nothing else in it is touched)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--max-idxs", choices=("data", "tencent"), default="data",
                    help="vocabulary maxima: the largest ids of these files, or the full Tencent data's")
    args = ap.parse_args(argv)
    if args.pkl and (args.split is None or args.stage is None):
        ap.error("--pkl needs --split and --stage")
    if args.pkl_dir and (args.split or args.stage):
        ap.error("--split and --stage go with --pkl; --pkl-dir takes them from the file names")
    return args


def main(argv=None):
    args = parse_args(argv)
    remove_dead_leftovers(args.out, safe_pickle.STAGING)  # a killed run's staging would make --out "not empty"
    jobs = safe_pickle.find_pickles(args.pkl_dir) if args.pkl_dir else [(args.pkl, args.split, args.stage)]
    total = sum(os.path.getsize(path) for path, _, _ in jobs if os.path.isfile(path))
    with progress(disable=args.quiet, total=total, desc="importing", unit="B", unit_scale=True, leave=False) as bar:
        summaries = safe_pickle.import_pickles(jobs, args.out, args.max_idxs, bar=bar, force=args.force)
    for path, s in summaries.items():
        print(f"{path}: {s['rows']} rows, {s['campaigns']} campaigns, {s['positives']} positives")
    source = "the full Tencent data" if args.max_idxs == "tencent" else "the imported files"
    print(f"vocabulary maxima from {source}; schema.json written and every folder checked")


if __name__ == "__main__":
    cli.run_and_exit(main)
