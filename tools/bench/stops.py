"""Stop every command line at random moments and check how it ended (prints a table; not a test).

    python tools/bench/stops.py                         # 20 stops per tool, on the shipped sample
    python tools/bench/stops.py --tools preprocess,expand --runs 50 --seed 3

tests/test_faults_signals.py stops each tool at a few chosen moments; this
stops it anywhere. Each tool first runs once uninterrupted (its time T); then
each run gets SIGTERM (to the process, as a scheduler sends it) or SIGINT (to
its process group, as Ctrl-C does) after a delay drawn uniformly from [0, T].
A run passes when it finished (exit 0) or said so in one line after progress
lines (exit 143 / 130), left no temporary file or staging folder in its
output, and left no process of its session alive (an orphaned pool worker).
The `-2ranks` runs are the trainer and meta-inference under
`paddle.distributed.launch --nproc_per_node 2`, the signal sent to the
launcher (which passes SIGTERM on to the ranks): there each rank's log must end
in the one line (the same on both) with no traceback, whatever the launcher's
own exit code says.
Finds timing faults that fixed moments miss: a stop inside zipfile's closing
steps, inside multiprocessing's Pool(), caught by an `except Exception`, or
killing a finished run during Python's shutdown (all fixed; stop 29 in the
issue log); on 2 ranks, a stop landing in the ranks' store calls, repeated
inside the first one's handling, or before the ranks had met (fixed; stop
30). The trainer, meta-inference and expand run MetaHeac on data/ for one
epoch; preprocess and make_synthetic on small synthetic raw files;
import_pickle on the shared sample pickle's rows repeated (about 117 k rows).
"""
if not __package__:
    import _root  # noqa: F401  (run as a script: tools/_bootstrap.py's set-up, the project root on sys.path)

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tools.utils import cli
from tools.utils.data import dataset, synthetic
from tools.utils.run.model_folder import ROOT

SMALL = {"users": 20_000, "campaigns": 20, "train_rows": 20_000, "test_rows": 5_000}
PROGRESS = r"^[^:]+: \d+(/\d+)? \S+"  # a plain progress line (tools/utils/progress.py off a terminal)
TOOLS = ("trainer", "infer_meta", "expand", "preprocess", "make_synthetic", "benchmark", "import_pickle",
         "trainer-2ranks", "infer_meta-2ranks")
SAMPLE_PICKLE = os.path.join(ROOT, "..", "shared", "data", "paddlerec_sample.pkl")  # the published format, 586 rows
PICKLE_COPIES = 200  # import_pickle's input: the sample's rows this many times (about 117 k rows)
LAUNCHED = "-2ranks"


def commands(work, out):
    """Each tool's arguments (its script under tools/ first), writing under `out`."""
    config, model = os.path.join(ROOT, "config.yaml"), os.path.join(work, "model")
    cold = os.path.join(ROOT, "data", "test_cold")
    aid = int(dataset.load_split(cold)["stage1"]["aid"][0])
    small = [f"--{key.replace('_', '-')}={value}" for key, value in SMALL.items()]
    return {
        "trainer": ["trainer.py", "-m", config, "-o", f"runner.model_save_path={out}", "runner.epochs=1"],
        "infer_meta": ["infer_meta.py", "-m", config, "--split", "both", "-o", f"runner.infer_load_path={model}",
                       "runner.infer_end_epoch=1", f"runner.infer_output_path={out}"],
        "expand": ["expand.py", "-m", config, "-o", f"runner.infer_load_path={model}", "runner.infer_end_epoch=1",
                   "--campaign", cold, "--aid", str(aid), "--pool", os.path.join(work, "pool", "test_stage2.npz"),
                   "--top-k", "100", "--out", out],
        "preprocess": ["preprocess.py", "--raw", os.path.join(work, "raw"), "--out", out, "--quiet",
                       "--hot-threshold", "60"],
        "make_synthetic": ["make_synthetic.py", "--out", out, *small, "--quiet"],
        "benchmark": ["benchmark.py", "--data", os.path.join(ROOT, "data"), "--methods", "lr", "--seeds", "1",
                      "--out", out],
        "import_pickle": ["import_pickle.py", "--pkl", os.path.join(work, "train_stage1.pkl"), "--split", "train",
                          "--stage", "1", "--out", out, "--quiet"],
    }


def write_pickle(path):
    """import_pickle's input: a DataFrame pickle of the published format, the shared sample's rows repeated (read
    through the project's allowlist unpickler, written by pandas)."""
    from tools.utils.data import safe_pickle
    frame = safe_pickle.read_dataframe(SAMPLE_PICKLE)
    safe_pickle.import_pandas().concat([frame] * PICKLE_COPIES, ignore_index=True).to_pickle(path)


def command(name, work, out):
    """The command line of one run of `name`: the tool's script, or the launcher's 2 ranks of it."""
    script, *args = commands(work, out)[name.removesuffix(LAUNCHED)]
    script = os.path.join(ROOT, "tools", script)
    if name.endswith(LAUNCHED):
        return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                out + ".log", script, *args]
    return [sys.executable, script, *args]


def write_pool(folder):
    """expand's pool: a data folder of the cold test candidates, each user once."""
    cold = os.path.join(ROOT, "data", "test_cold")
    shutil.copytree(cold, folder, ignore=lambda _, names: [n for n in names if n.endswith((".npz", ".npy"))])
    shutil.copy(os.path.join(cold, "vocabulary.npz"), folder)
    candidates = dataset.load_split(cold)["stage2"]
    first = np.unique(candidates["uid"], return_index=True)[1]
    dataset.save_stage(os.path.join(folder, "test_stage2.npz"), {name: a[first] for name, a in candidates.items()})


def start(argv):
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def session_alive(sid):
    """Processes still in the session the run started (its pid is the session id)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(pid))
    return alive


def said_faults(lines, said):
    """What is wrong with a stopped run's stderr lines: they must be progress lines and then one line that
    starts with one of `said`."""
    if lines and lines[-1].startswith(said) and not any(not re.match(PROGRESS, line) or "rror" in line
                                                         for line in lines[:-1]):
        return []
    return ["stderr: " + " | ".join(lines[-4:])]


def naming(text):
    """Processes whose command line holds `text` (a launched run's ranks run in sessions of their own)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def rank_logs(out):
    paths = [os.path.join(out + ".log", f"workerlog.{rank}") for rank in (0, 1)]
    return [open(path, errors="replace").read() if os.path.exists(path) else "" for path in paths]


def rank_faults(launcher, out, ended):
    """What is wrong with the ranks' logs of a launched run: a traceback, or not the same line of a finished
    run (launcher exit 0) or of a stop on every rank. The launcher passes SIGTERM on, also after a Ctrl-C. A rank
    other than 0 prints nothing when it finishes; a rank the launcher killed, 30 s after its signal, nothing
    either: `ended` (seconds from the signal to the launcher's end) tells them apart."""
    logs = rank_logs(out)
    if not any(logs):
        return []  # stopped before the launcher started the ranks
    found = [f"rank {rank}: traceback" for rank, log in enumerate(logs) if "Traceback" in log]
    if ended > 25:
        found.append(f"ended {ended:.0f} s after the signal (the launcher's kill)")
    last = [log.strip().splitlines()[-1] if log.strip() else "" for log in logs]
    last = [line for rank, line in enumerate(last) if line or rank == 0]  # a rank > 0 that finished said nothing
    if launcher.returncode != 0 and not all(line.startswith(("stopped by", "interrupted")) for line in last):
        found.append("rank lines: " + " | ".join(last))
    elif launcher.returncode != 0 and len({line.replace(str(out), "OUT") for line in last}) > 1:
        found.append("ranks disagree: " + " | ".join(last))
    return found


def faults(proc, err, signum, out, launched, ended):
    """What went wrong with one stopped run, as text ([] when it held); ended: seconds from the signal to its
    end."""
    found, lines = [], err.strip().splitlines()
    if proc.returncode == -signum and not err and not os.path.exists(out):
        return found  # killed by the signal's default before Python ran the tool's first line: nothing written
    if launched:
        if proc.returncode not in (0, signum, 128 + signum) and (proc.returncode != -signum or any(rank_logs(out))):
            found.append(f"launcher exit {proc.returncode}")  # (-signum: its default, before it started a rank)
        found += rank_faults(proc, out, ended)
    else:
        if proc.returncode not in (0, 128 + signum):
            found.append(f"exit {proc.returncode}")
        said = "stopped by SIGTERM" if signum == signal.SIGTERM else ("interrupted", "stopped by SIGINT")
        if proc.returncode:
            found += said_faults(lines, said)
    found += [f"left {path}" for path in (os.path.join(d, n) for d, dirs, files in os.walk(out)
                                          for n in dirs + files) if ".tmp" in path]
    orphans = session_alive(proc.pid) + (naming(out) if launched else [])
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    found += [f"process {pid} left alive" for pid in orphans]
    return found


def stress(name, work, runs, rng):
    """(T, stopped, finished, [(delay, signal, faults)]) for `runs` stops of one tool."""
    began = time.monotonic()
    launched = name.endswith(LAUNCHED)
    base = start(command(name, work, os.path.join(work, f"{name}-base")))
    _, err = base.communicate()
    if base.returncode:
        sys.exit(f"{name} failed before any stop (exit {base.returncode}): {err.strip().splitlines()[-1:]}")
    took, stopped, bad = time.monotonic() - began, 0, []
    for run in range(runs):
        signum, delay = rng.choice([signal.SIGTERM, signal.SIGINT]), rng.uniform(0, took)
        out = os.path.join(work, f"{name}-{run}")
        proc = start(command(name, work, out))
        time.sleep(delay)
        signalled = time.monotonic()
        try:
            os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
        except ProcessLookupError:
            pass
        try:
            _, err = proc.communicate(timeout=max(120, 4 * took))
        except subprocess.TimeoutExpired:
            proc.kill()
            err = "(did not end: killed)"
        stopped += proc.returncode != 0
        found = faults(proc, err, signum, out, launched, time.monotonic() - signalled)
        if found:
            bad.append((delay, signal.Signals(signum).name, found))
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out + ".log", ignore_errors=True)
    return took, stopped, runs - stopped, bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of: %(default)s")
    ap.add_argument("--runs", type=int, default=20, help="stops per tool (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the delays and signals")
    args = ap.parse_args(argv)
    names = args.tools.split(",")
    unknown = sorted(set(names) - set(TOOLS))
    if unknown:
        ap.error(f"--tools: unknown {unknown}; known: {', '.join(TOOLS)}")
    if "import_pickle" in names and not os.path.isfile(SAMPLE_PICKLE):
        names.remove("import_pickle")
        print(f"import_pickle left out: its input is made from {SAMPLE_PICKLE}, which is not here", flush=True)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_stops") as work:
        print(f"inputs in {work}: small synthetic raw files, the model trained on data/ for one epoch", flush=True)
        synthetic.generate(os.path.join(work, "raw"), **SMALL, hot_cut=60, cold_min=12, seed=1)
        write_pool(os.path.join(work, "pool"))
        if "import_pickle" in names:
            write_pickle(os.path.join(work, "train_stage1.pkl"))
        if {"infer_meta", "expand", "infer_meta" + LAUNCHED} & set(names):
            trained = start(command("trainer", work, os.path.join(work, "model")))
            _, err = trained.communicate()
            if trained.returncode:
                sys.exit(f"training the model failed: {err.strip().splitlines()[-1:]}")
        rows = []
        for name in names:
            print(f"{name}: {args.runs} stops ...", flush=True)
            rows.append((name, *stress(name, work, args.runs, rng)))
    print(f"\n{'tool':<19}{'T (s)':>7}{'stopped':>9}{'finished':>10}{'faults':>8}")
    for name, took, stopped, finished, bad in rows:
        print(f"{name:<19}{took:>7.1f}{stopped:>9}{finished:>10}{len(bad):>8}")
    for name, _, _, _, bad in rows:
        for delay, signame, found in bad:
            print(f"  {name} {signame} after {delay:.2f} s: {'; '.join(found)}")
    return 1 if any(bad for *_, bad in rows) else 0


if __name__ == "__main__":
    cli.run_and_exit(main)
