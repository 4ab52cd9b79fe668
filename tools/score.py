"""Score users with an exported campaign model: raw userFeature.data lines (or a stage .npz) in, scores out.

    python tools/score.py --model DIR --pool POOL --out OUT [--threads N] [--force]

DIR is the folder `tools/expand.py ... --export DIR` wrote (the program, its
weights, vocabulary.npz and inputs.json). POOL is read and encoded exactly as
tools/expand.py reads its pool (tools/utils/serving/exported.py's Scorer), so the
scores equal expand.py's --all-scores for the same users; DIR/inputs.json
states the input rules for a server that encodes users itself.

Writes OUT/scores.csv (uid,score in pool order), OUT/scores.npy (the scores,
float32, pool order) and OUT/score.json (the model, the pool, the unknown
ids, users per second). OUT is checked before the scoring: a file or a
non-empty folder is refused unless --force (then those three files are
replaced, nothing else), and the three land together or not at all
(tools/utils/serving/outputs.py).

Examples:
    python tools/score.py --model served --pool userFeature.data --out scored
    python tools/score.py --model served --pool new_users.data --out scored_new --threads 8
    python tools/score.py --model served --pool pool_stage2.npz --out scored_stage
  (served: the folder of `python tools/expand.py -m config.yaml ... --export served`)
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import csv
import io
import os
import time

import numpy as np

from tools.utils import cli
from tools.utils.serving import exported
from tools.utils.data import vocabulary
from tools.utils.errors import UserError
from tools.utils.files import atomic_write, write_json, write_text
from tools.utils.progress import progress
from tools.utils.serving.outputs import Outputs


OUTPUT_FILES = ("scores.csv", "scores.npy", "score.json")


def score(model_dir, pool, out_dir, threads=1, force=False):
    """Score every user of the pool with the exported model; writes OUT's files and returns the summary dict."""
    outputs = Outputs(force)
    outputs.files(out_dir, OUTPUT_FILES, "--out")
    outputs.check()
    from tools.utils import paddle_env
    paddle_env.set_threads(threads)
    if not os.path.exists(pool):
        raise UserError(f"{pool}: no such pool; give a userFeature.data file or a stage .npz (with uid)")
    scorer = exported.Scorer(model_dir, threads)
    unknown, uids, scores = vocabulary.UnknownIds(), [], []
    started = time.perf_counter()
    bar = progress(total=None, desc="scoring", unit="user", unit_scale=True)
    for chunk_uids, chunk_scores in scorer.score_pool(pool, unknown):
        uids.append(chunk_uids)
        scores.append(chunk_scores)
        bar.update(len(chunk_uids))
    bar.close()
    seconds = time.perf_counter() - started
    uids = np.concatenate(uids) if uids else np.empty(0, np.int64)
    scores = np.concatenate(scores).astype(np.float32) if scores else np.empty(0, np.float32)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(("uid", "score"))
    writer.writerows(zip(uids.tolist(), (f"{s:.9g}" for s in scores.tolist())))
    summary = {"model": model_dir, "campaign": scorer.inputs.get("campaign"), "pool": pool,
               "pool_users": len(uids), "threads": threads, "seconds": seconds,
               "pool_users_per_second": len(uids) / max(seconds, 1e-9), "unknown_ids": unknown.as_dict()}
    with outputs:  # all three in place, or none
        write_text(outputs.staged(os.path.join(out_dir, "scores.csv")), table.getvalue())
        atomic_write(outputs.staged(os.path.join(out_dir, "scores.npy")), lambda f: np.save(f, scores))
        write_json(outputs.staged(os.path.join(out_dir, "score.json")), summary)
    lines = [unknown.report("pool"), f"scored {len(uids)} users in {seconds:.1f} s "
             f"({summary['pool_users_per_second']:.0f}/s); wrote {os.path.join(out_dir, 'scores.csv')}"]
    print("\n".join(line for line in lines if line))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="examples:\n" + __doc__.split("Examples:\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR", help="the folder of tools/expand.py --export DIR")
    parser.add_argument("--pool", required=True, help="the users: a userFeature.data file or a stage .npz with uid")
    parser.add_argument("--out", required=True, help="output folder: scores.csv, scores.npy, score.json")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the predictor (default 1)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out (its scores.csv, scores.npy and score.json are replaced)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise UserError(f"--threads is {args.threads}; give 1 or more")
    score(args.model, args.pool, args.out, args.threads, args.force)


if __name__ == "__main__":
    cli.run_and_exit(main)
