"""Every command line, stopped by SIGTERM or Ctrl-C at several moments (issue 20 #14): one line on stderr, exit
143 / 130, nothing half-written.

One test starts all the cases side by side and signals each at its moment, seen from outside the process:
- start-up: SIGTERM and SIGINT are held (blocked) from tools/_bootstrap.py until tools/utils/cli.run has its
  handlers, while the tool's modules load; a sitecustomize.py of the test's (PAUSES) pauses that loading
  where tools.utils.cli is imported and says so with a marker file;
- importing Paddle: they are held again while Paddle loads (tools/utils/paddle_env.py); /proc/<pid>/maps shows
  libpaddle mapped while they are blocked;
- mid-work: a staging folder has appeared (the data tools, which then pause: PAUSES), a run's log (the
  benchmark), or the fake model's FAKE_PAUSE hook has created its marker file (the trainer building its
  network, meta-inference fine-tuning, expand scoring the pool), or the trainer's loop has saved a step
  checkpoint.
SIGTERM goes to the process (as a scheduler sends it), SIGINT to its process group (as Ctrl-C does).
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, fake_model_folder, make_stage
from tools.utils.run import checkpoint as ckpt
from tools.utils import cli
from tools.utils.data import dataset

AT_ONCE = 18  # runs at a time: half of them import Paddle (about 300 MB each)
STOP_BITS = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
PROGRESS = r"^[^:]+: \d+(/\d+)? \S+"  # a plain progress line (tools/utils/progress.py off a terminal)


def held(pid):
    """SIGTERM and SIGINT are blocked in the process (tools/_bootstrap.py, or paddle_env while Paddle loads)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return mask & STOP_BITS == STOP_BITS


def paddle_loaded(pid):
    with open(f"/proc/{pid}/maps") as f:
        return "libpaddle" in f.read()


def steadily(condition, seconds=0.05):
    """A moment that has come once condition(pid) held at every poll for `seconds` (libraries block signals
    for microseconds while they start threads; the tools hold them for the whole start-up or import)."""
    since = []

    def moment(pid):
        if not condition(pid):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= seconds
    return moment


def importing_paddle():
    return steadily(lambda pid: held(pid) and paddle_loaded(pid))


PAUSES = """
import importlib.abc, importlib.machinery, os, sys, time


class PauseBeforeCli(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tools.utils.cli" and os.environ.get("PAUSE_FILE") and not os.path.exists(os.environ["PAUSE_FILE"]):
            open(os.environ["PAUSE_FILE"], "w").close()
            time.sleep(1.5)
        return None


class PauseAfterStaging(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tools.utils.files" or not os.environ.get("STAGING_PAUSE"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            made = module.make_staging

            def make_staging(*args, **kwargs):
                made(*args, **kwargs)
                time.sleep(float(os.environ["STAGING_PAUSE"]))
            module.make_staging = make_staging
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path[:0] = [PauseBeforeCli(), PauseAfterStaging()]
"""


def default_interrupt():
    """In the child before it starts: Ctrl-C's default disposition, even where the tests run with it ignored
    (a background job of a shell), or Python would ignore SIGINT too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Case:
    """One tool run, signalled once its moment has come; checks its end."""

    def __init__(self, name, tool, args, signum, moment, written, tmp, env=None):
        self.name, self.signum = f"{name} {signal.Signals(signum).name}", signum
        self.moment, self.written = moment, written
        self.out, self.err = (open(tmp / f"{signum}.{kind}", "w+") for kind in ("out", "err"))
        self.command, self.env, self.proc, self.sent = [sys.executable, os.path.join(ROOT, "tools", tool),
                                                        *map(str, args)], {**os.environ, **(env or {})}, None, False

    def start(self):
        self.proc = subprocess.Popen(self.command, stdout=self.out, stderr=self.err, env=self.env,
                                     start_new_session=True, preexec_fn=default_interrupt)

    def poll(self):
        """Signal the process once its moment has come; True once it has ended."""
        if self.proc.poll() is not None:
            return True
        if not self.sent:
            try:
                ready = self.moment(self.proc.pid)
            except OSError:  # the process is ending
                return False
            if ready:
                if self.signum == signal.SIGINT:
                    os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group
                else:
                    self.proc.send_signal(signal.SIGTERM)
                self.sent = True
        return False

    def problems(self):
        """What went wrong, as text ([] when the case held)."""
        self.err.seek(0)
        lines = self.err.read().strip().splitlines()
        last = lines[-1] if lines else ""
        said = "stopped by SIGTERM" if self.signum == signal.SIGTERM else ("interrupted", "stopped by SIGINT")
        found = []
        if not self.sent:
            found.append(f"ended (exit {self.proc.returncode}) before its moment came")
        if self.proc.returncode != 128 + self.signum:
            found.append(f"exit {self.proc.returncode}, not {128 + self.signum}")
        if not last.startswith(said) or any(not re.match(PROGRESS, line) or "rror" in line for line in lines[:-1]):
            found.append("stderr is not one line saying so: " + " | ".join(lines[-6:]))
        found += [f"half-written: {what}" for what in self.written()]
        return found


def finished_run(path):
    """Whether a benchmark's run.json is a whole record: a run that ended before the stop came (on a loaded
    machine the fake model's run can) is kept for the resume, as it should be."""
    try:
        with open(path) as f:
            return "metrics" in json.load(f)
    except ValueError:
        return False


def leftovers(folder):
    """Temporary files and staging folders under folder."""
    return [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files if ".tmp" in n]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A fake model folder with two trained epochs; an expand campaign and pool; raw files; a pickle."""
    from test_faults_data import frame_of
    from tools import trainer
    from tools.utils.data import synthetic
    root = tmp_path_factory.mktemp("signals")
    folder = fake_model_folder(root / "model")
    assert cli.run(trainer.main, ["-m", str(folder / "config.yaml")]) == 0
    hot = dataset.load_split(str(folder / "data" / "test_hot"))["stage1"]
    campaign = root / "campaign"
    campaign.mkdir()
    dataset.write_schema(str(campaign), dataset.read_schema(str(folder / "data" / "test_hot"))["max_idxs"])
    dataset.save_stage(str(campaign / "test_stage1.npz"), {k: v[hot["aid"] == 11] for k, v in hot.items()})
    synthetic.generate(str(root / "raw"), users=20_000, campaigns=20, train_rows=20_000, test_rows=5_000, hot_cut=60,
                       cold_min=12, seed=1)
    pytest.importorskip("pandas")
    frame_of(make_stage(np.random.default_rng(0), {7: 40_000, 8: 30_000})).to_pickle(str(root / "big.pkl"))
    return folder, campaign, root


def plans(inputs, tmp, tag):
    """(name, tool, arguments, moments {moment: (when, environment)}, what it left half-written) per tool."""
    folder, campaign, root = inputs
    config, data = str(folder / "config.yaml"), folder / "data"

    def marker(path):
        return lambda pid: os.path.exists(path)

    def pause(hook, name):
        """The moment the fake model's hook is reached (tests/fake_model), and the environment that pauses it."""
        mark = tmp / f"{name}-{tag}.{hook}"
        return marker(mark), {"FAKE_PAUSE": hook, "FAKE_PAUSE_FILE": str(mark)}

    def staging(out, prefix):
        """The moment the staging folder appears; the tool then pauses (PAUSES), so that a signal sent as it
        is seen lands before the work is done (without it, a poll that saw the folder as the tool swapped it in
        signalled a finished run once, which rightly ignored it: exit 0)."""
        return lambda pid: bool(glob.glob(os.path.join(out, f"{prefix}*"))), {"STAGING_PAUSE": "0.5"}

    paddle = (importing_paddle(), {})  # a fresh moment: it keeps state
    out = {name: tmp / f"{name}-{tag}" for name in ("trainer", "infer_meta", "expand", "preprocess", "import_pickle",
                                                    "make_synthetic", "benchmark")}

    def absent(path):
        return lambda: os.listdir(path) if os.path.isdir(path) else []

    return [
        ("trainer", "trainer.py", ["-m", config, "-o", f"runner.model_save_path={out['trainer']}", "runner.epochs=1",
                                   "runner.save_steps=2"],
         {"paddle": paddle, "build": pause("create_model", "trainer"),
          "loop": (lambda pid: ckpt.finished(str(out["trainer"]))[1] != [], {"FAKE_STEP_SECONDS": "0.2"})},
         lambda: [p for p in glob.glob(str(out["trainer"] / "*")) if not ckpt.is_finished(p)]
         + leftovers(out["trainer"])),
        ("infer_meta", "infer_meta.py", ["-m", config, "--split", "both", "-o",
                                         f"runner.infer_output_path={out['infer_meta']}"],
         {"paddle": paddle, "fine-tuning": pause("infer_train_forward", "infer_meta")}, absent(out["infer_meta"])),
        ("expand", "expand.py", ["-m", config, "--campaign", campaign, "--pool", data / "test_hot" / "test_stage2.npz",
                                 "--top-k", 5, "--out", out["expand"]],
         {"paddle": paddle, "scoring": pause("infer_forward", "expand")}, absent(out["expand"])),
        ("preprocess", "preprocess.py", ["--raw", root / "raw", "--out", out["preprocess"], "--quiet",
                                         "--hot-threshold", 60],
         {"work": staging(out["preprocess"], ".preprocess.tmp")}, absent(out["preprocess"])),
        ("import_pickle", "import_pickle.py", ["--pkl", root / "big.pkl", "--split", "train", "--stage", 1, "--out",
                                               out["import_pickle"], "--quiet"],
         {"work": staging(out["import_pickle"], ".import_pickle.tmp")}, absent(out["import_pickle"])),
        ("make_synthetic", "make_synthetic.py", ["--out", out["make_synthetic"], "--users", 20_000, "--campaigns", 20,
                                                 "--train-rows", 20_000, "--test-rows", 5_000, "--quiet"],
         {"work": staging(out["make_synthetic"], ".make_synthetic.tmp")},
         lambda: [n for n in absent(out["make_synthetic"])() if len(os.listdir(out["make_synthetic"])) != 5]),
        ("benchmark", "benchmark.py", ["--data", data, "--methods", "lr", "--seeds", 1, "--out", out["benchmark"]],
         {"run": (marker(out["benchmark"] / "lr" / "seed2021" / "log.txt"), {})},
         lambda: leftovers(out["benchmark"]) + glob.glob(str(out["benchmark"] / "results.*"))
         + [p for p in glob.glob(str(out["benchmark"] / "*" / "*" / "run.json")) if not finished_run(p)]),
    ]


def test_every_tool_stops_with_one_line_at_every_moment(inputs, tmp_path):
    """Issue 20 #14: Ctrl-C while Paddle loaded was a 31-line ImportError traceback and exit 1; SIGTERM outside
    the training loop Paddle's C++ "FatalError: Termination signal" dump. Now: every tool, every moment."""
    (tmp_path / "pauses").mkdir()
    (tmp_path / "pauses" / "sitecustomize.py").write_text(PAUSES)
    pauses = os.pathsep.join([str(tmp_path / "pauses"), os.environ.get("PYTHONPATH", "")])
    start, cases = time.monotonic(), []
    for signum in (signal.SIGTERM, signal.SIGINT):
        tag = signal.Signals(signum).name
        for name, *_, moments, _ in plans(inputs, tmp_path, tag):
            for moment in ("start-up", *moments):
                folder = tmp_path / tag / f"{name}-{moment}"  # a fresh plan: its own paths and moment
                folder.mkdir(parents=True)
                _, tool, args, moments, written = next(p for p in plans(inputs, folder, tag) if p[0] == name)
                moments["start-up"] = (lambda pid, mark=folder / "start": mark.exists(),
                                       {"PAUSE_FILE": str(folder / "start")})
                when, env = moments[moment]
                cases.append(Case(f"{name} {moment}", tool, args, signum, when, written, folder,
                                  {**env, "PYTHONPATH": pauses}))
    waiting, running = list(cases), []
    try:
        while waiting or running:
            while waiting and len(running) < AT_ONCE:
                waiting[0].start()
                running.append(waiting.pop(0))
            running = [case for case in running if not case.poll()]
            assert time.monotonic() - start < 240, "timed out: " + ", ".join(case.name for case in running)
            time.sleep(0.01)
    finally:
        for case in running:
            case.proc.kill()
    failed = {case.name: found for case in cases for found in [case.problems()] if found}
    assert not failed, f"{len(failed)} of {len(cases)} runs:\n" + "\n".join(f"{name}: {'; '.join(found)}"
                                                                         for name, found in failed.items())


@pytest.mark.parametrize("bench", [["distributed.py"], ["expand.py", "speed"], ["model.py"], ["preprocess.py"],
                                   ["stops.py"]])
def test_a_benchmark_takes_the_stop_signals_once_it_runs(bench, tmp_path):
    """The benchmarks imported tools/_bootstrap.py (the stop signals held) but never reached cli.run to take
    them: Ctrl-C and SIGTERM did nothing for a whole benchmark, and the processes it started (the launcher
    of tools/bench/stops.py's 2-rank runs) inherited the block and could not be stopped either."""
    script = os.path.join(ROOT, "tools", "bench", bench[0])
    proc = subprocess.Popen([sys.executable, script, *bench[1:]], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        for moment in (steadily(held), steadily(lambda pid: not held(pid), 0.2)):  # _bootstrap's hold, then run's
            while not moment(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err.strip().splitlines()[-1:]) == (143, ["stopped by SIGTERM"]), err[-2000:]


def stat(pid):
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid):
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


def children(pid):
    """The live processes whose parent is pid."""
    return [int(entry) for entry in filter(str.isdigit, os.listdir("/proc"))
            if alive(entry) and int(stat(entry)[1]) == pid]


def test_a_stopped_distributed_benchmark_leaves_no_rank_running():
    """tools/bench/distributed.py ran the launcher with subprocess.run, which SIGKILLs it when stopped: its two
    ranks (in sessions of their own) ran on, orphaned. Now the launcher gets SIGTERM and stops them first."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "bench", "distributed.py"), "--runs", "2x1",
                             "--steps", "500", "--tasks", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ranks, deadline = [], time.monotonic() + 120
    try:
        while len(ranks) < 2 and time.monotonic() < deadline and proc.poll() is None:
            ranks = [rank for launcher in children(proc.pid) for rank in children(launcher)]
            time.sleep(0.05)
        assert len(ranks) == 2, "the launcher did not start its 2 ranks"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [rank for rank in ranks if alive(rank)]
    for rank in left:
        os.kill(rank, signal.SIGKILL)
    assert (proc.returncode, err.strip().splitlines()[-1:], left) == (143, ["stopped by SIGTERM"], [])
