"""Benchmark of tools/preprocess.py (prints figures; not a test).

    python tools/bench/preprocess.py                      # 1 M synthetic users in a temporary folder
    python tools/bench/preprocess.py --users 2000000 --work /tmp/bench --keep
    python tools/bench/preprocess.py --raw data/raw_small --workers 1

Without --raw, tools/make_synthetic.py (preset "small") writes the raw files
first. The preprocessing then runs in a forked child process so that its
memory is measured alone: peak RSS of its largest process (os.wait4) and the
peak total PSS of the child and its workers (sampled from /proc every 0.2 s;
PSS counts shared pages once). Prints userFeature.data lines/s, wall times,
memory and the time projected for the full data (11.4 M lines, 11.1 M rows).
"""
if not __package__:
    import _root  # noqa: F401  (run as a script: tools/_bootstrap.py's set-up, the project root on sys.path)

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tools.utils import cli
from tools.utils.data.raw import preprocess
from tools.utils.run.model_folder import ROOT

FULL_LINES = 11_420_039
FULL_ROWS = 8_798_814 + 2_265_989


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", help="an existing raw folder (default: generate one)")
    ap.add_argument("--users", type=int, default=1_000_000, help="users to generate (default 1,000,000)")
    ap.add_argument("--work", help="folder for the generated and preprocessed data (default: a temporary one)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary work folder (a --work folder is always kept)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--hot-threshold", type=int, default=200, help="as for tools/preprocess.py (200 suits 'small')")
    return ap.parse_args(argv)


def generate(raw_dir, users):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "make_synthetic.py"),
           "--out", raw_dir, "--scale", "small", "--users", str(users), "--seed", "0"]
    started = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def tree_pss_kb(pid):
    """Sum of Pss over pid and its descendants, in kB (0 for processes that are gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(raw_dir, out_dir, workers, hot_threshold):
    """Run preprocess in a forked child; returns (summary dict, wall seconds, peak RSS kB, peak PSS kB)."""
    read_end, write_end = os.pipe()
    started = time.time()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            result = dataclasses.asdict(preprocess(raw_dir, out_dir, hot_threshold=hot_threshold,
                                                   workers=workers, progress=False))
        except BaseException as e:  # report anything to the parent, then leave without cleanup handlers
            result = {"error": f"{type(e).__name__}: {e}"}
        with os.fdopen(write_end, "w") as f:
            json.dump(result, f)
        os._exit(0)
    os.close(write_end)
    peak_pss, done = [0], threading.Event()

    def sample():
        while not done.wait(0.2):
            peak_pss[0] = max(peak_pss[0], tree_pss_kb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with os.fdopen(read_end) as f:
        result = json.load(f)
    _, _, usage = os.wait4(pid, 0)
    done.set()
    sampler.join()
    return result, time.time() - started, usage.ru_maxrss, peak_pss[0]


def main(argv=None):
    args = parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="bench_preprocess_")
    os.makedirs(work, exist_ok=True)
    try:
        raw_dir = args.raw
        if raw_dir is None:
            raw_dir = os.path.join(work, "raw")
            print(f"generating {args.users:,} users into {raw_dir} ...", flush=True)
            print(f"  generated in {generate(raw_dir, args.users):.0f} s")
        out_dir = os.path.join(work, "out")
        shutil.rmtree(out_dir, ignore_errors=True)
        load = os.getloadavg()[0]
        summary, wall, peak_rss, peak_pss = run_measured(raw_dir, out_dir, args.workers, args.hot_threshold)
        if "error" in summary:
            sys.exit(f"error: {summary['error']}")
        user_bytes = os.path.getsize(os.path.join(raw_dir, "userFeature.data"))
        rows = sum(c["stage1"] + c["stage2"] for c in summary["splits"].values())
        rest = summary["seconds"] - summary["user_seconds"]
        projected = summary["user_seconds"] * FULL_LINES / summary["lines"] + rest * FULL_ROWS / rows
        print(f"workers {args.workers}, load average before the run {load:.1f} on {os.cpu_count()} cores")
        print(f"userFeature.data: {summary['lines']:,} lines, {user_bytes / 1e6:,.0f} MB, "
              f"{summary['user_seconds']:.1f} s = {summary['lines'] / summary['user_seconds']:,.0f} lines/s "
              f"({user_bytes / 1e6 / summary['user_seconds']:.1f} MB/s)")
        print(f"labelled rows: {rows:,}; CSV reading, encoding and writing: {rest:.1f} s")
        print(f"total wall time {wall:.1f} s; peak RSS {peak_rss / 1e6:.2f} GB (largest process), "
              f"peak PSS {peak_pss / 1e6:.2f} GB (all processes)")
        print(f"projected for the full data ({FULL_LINES:,} lines, {FULL_ROWS:,} rows): {projected / 60:.1f} min "
              f"(userFeature.data scaled by lines, the rest by rows); memory grows with the labelled users "
              f"and rows: about {peak_pss / 1e6 * FULL_ROWS / rows:.1f} GB if linear")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    cli.run_and_exit(main)
