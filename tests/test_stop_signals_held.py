"""A stop signal inside a library's own steps, where an exception raised halfway leaves an object broken
(tools/utils/files.py: stop_signals_held holds the signal there).

- zipfile: CI found `preprocess` stopped by SIGTERM ending in exit 1 and zipfile's ValueError traceback, "Can't
  close the ZIP file while there is an open writing handle on it". The signal is sent inside each step of
  writing a stage (tools/utils/data/dataset.py: save_stage) or an in-memory .npz (files.npz_bytes).
- multiprocessing.Pool: a stop inside Pool() once its threads ran left a pool no one ended; a stress run of
  preprocess found one of its workers alive, orphaned and waiting forever, 25 minutes after the run had ended.

Each run must end in the one line and exit code that cli.run gives a stop, and leave no file or process. And
a stop is never caught as a library's failure (tools/utils/errors.py: Stopped is a BaseException), nor broken
by the stops that follow it (tools/utils/cli.py: _stop acts once)."""
import multiprocessing
import multiprocessing.util
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from helpers import ROOT
from tools.utils import cli
from tools.utils.data.dataset import save_stage
from tools.utils.data.raw_users import fork_map
from tools.utils.data.safe_pickle import read_dataframe
from tools.utils.files import npz_bytes

STEPS = {  # where the signal is sent: the step that a stop raised inside of left broken
    "archive opening": (zipfile.ZipFile, "__init__"),
    "member opening": (zipfile.ZipFile, "_open_to_write"),
    "member closing": (zipfile._ZipWriteFile, "close"),
    "archive closing": (zipfile.ZipFile, "close"),
    "pool's finaliser": (multiprocessing.util, "Finalize"),  # the last step of Pool(), after its threads start
}
ZIP_STEPS = [step for step, (owner, _) in STEPS.items() if owner is not multiprocessing.util]


def signal_inside(monkeypatch, step, signum, when=lambda *args, **kwargs: True):
    """Send signum to this process at the first call of `step` (where when(its arguments) holds), then run the
    step itself. The handler then runs at the next instruction: inside the step, unless the signal is held."""
    owner, name = STEPS[step]
    original, sent = getattr(owner, name), []

    def step_with_signal(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, step_with_signal)
    return sent


def arrays():
    rng = np.random.default_rng(0)
    return {"label": rng.integers(0, 2, 500).astype(np.int8), "uid": rng.integers(0, 10**6, 500)}


@pytest.mark.parametrize("step", ZIP_STEPS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_inside_a_zip_step_is_one_line_and_leaves_no_file(step, signum, tmp_path, monkeypatch, capsys):
    path = tmp_path / "train_stage1.npz"
    sent = signal_inside(monkeypatch, step, signum)

    def main(argv):
        save_stage(str(path), arrays())
        raise AssertionError("the stop did not end the run")

    assert cli.run(main, []) == 128 + signum
    assert sent == [signum]
    assert capsys.readouterr().err.splitlines() == \
        ["stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("step", ["member opening", "member closing", "archive closing"])
def test_a_stop_while_making_npz_bytes_is_one_line(step, monkeypatch, capsys):
    sent = signal_inside(monkeypatch, step, signal.SIGTERM)
    assert cli.run(lambda argv: npz_bytes(arrays()), []) == 143
    assert sent == [signal.SIGTERM]
    assert capsys.readouterr().err.splitlines() == ["stopped by SIGTERM"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_a_pool_is_made_ends_the_pool(signum, monkeypatch, capsys):
    sent = signal_inside(monkeypatch, "pool's finaliser", signum,
                         when=lambda obj, callback, *args, **kwargs: getattr(callback, "__name__", "") == "_terminate_pool")

    def main(argv):
        with fork_map(lambda state, item: item * 2, list(range(6)), 2, {}) as doubled:
            assert list(doubled) == [0, 2, 4, 6, 8, 10]
        raise AssertionError("the stop did not end the run")

    assert cli.run(main, []) == 128 + signum
    assert sent == [signum]
    assert capsys.readouterr().err.splitlines() == \
        ["stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"]
    assert multiprocessing.active_children() == []


def test_a_stop_while_a_pickle_is_read_is_a_stop_not_a_data_error(tmp_path, capsys):
    """Stress-found: import_pickle stopped while unpickling said the pickle did not rebuild a DataFrame, exit 2."""
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"uid": [1, 2, 3]}).to_pickle(tmp_path / "frame.pkl")
    assert cli.run(lambda argv: read_dataframe(str(tmp_path / "frame.pkl"),
                                               progress=lambda n: os.kill(os.getpid(), signal.SIGTERM)), []) == 143
    assert capsys.readouterr().err.splitlines() == ["stopped by SIGTERM"]


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_more_stops_while_the_first_makes_its_way_out_change_nothing(first, capsys):
    """Stress-found on 2 ranks: the launcher's repeated SIGTERM (after the SIGINT of a Ctrl-C, or its own first
    one) raised again inside run()'s handling of the first stop, and a rank printed a Stopped traceback. Here
    the repeats come inside the cleanup the first stop runs through, which must finish, and the run ends in the
    first stop's one line."""
    cleaned = []

    def main(argv):
        try:
            os.kill(os.getpid(), first)
            time.sleep(5)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), signum)
            cleaned.append("done")

    assert cli.run(main, []) == 128 + first
    assert cleaned == ["done"]
    assert capsys.readouterr().err.splitlines() == ["stopped by SIGTERM" if first == signal.SIGTERM else "interrupted"]
    assert cli.run(lambda argv: os.kill(os.getpid(), signal.SIGTERM), []) == 143  # the next run stops again
    assert capsys.readouterr().err.splitlines() == ["stopped by SIGTERM"]


def test_a_child_forked_while_a_stop_makes_its_way_out_still_stops():
    """CI hung in test_a_stop_while_a_pool_is_made_ends_the_pool: as the stopped run ended its pool, the pool's
    thread forked a new worker, which inherited a stop on its way out (cli._stop acts once) and so ignored the
    SIGTERM of Pool.terminate(), which waited for it forever. A forked child starts with no stop of its own."""
    codes = []

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            child = os.fork()
            if child == 0:  # what a pool's worker does: wait for work
                try:
                    time.sleep(10)
                    os._exit(0)
                except BaseException:
                    os._exit(7)
            time.sleep(0.2)
            os.kill(child, signal.SIGTERM)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))

    assert cli.run(main, []) == 143
    assert codes == [7]


def test_without_a_stop_the_files_read_back_and_the_handlers_are_restored(tmp_path):
    """The held steps change nothing else: the stage and the .npz bytes read back equal, and the handlers held
    are the ones there before."""
    handlers = [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)]
    path = tmp_path / "stage.npz"
    save_stage(str(path), arrays())
    (tmp_path / "bytes.npz").write_bytes(npz_bytes(arrays()))
    for written in (path, tmp_path / "bytes.npz"):
        with np.load(written, allow_pickle=False) as archive:
            assert {name: archive[name].tolist() for name in archive.files} == \
                {name: a.tolist() for name, a in arrays().items()}
    assert [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)] == handlers


SHUTDOWN = """
import atexit, os, signal, sys, time
sys.path.insert(0, {root!r})
from tools.utils import cli

def main(argv):
    def stopped_while_shutting_down():  # Python's shutdown, after the tool's work
        os.kill(os.getpid(), signal.{signal})
        time.sleep(0.2)
        open({marker!r}, "w").close()
    atexit.register(stopped_while_shutting_down)
    return 0

cli.run_and_exit(main)
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_stop_while_python_shuts_down_after_the_work_leaves_a_finished_run(signum, tmp_path):
    """Stress-found: make_synthetic and preprocess, stopped after their outputs were in place, died by the
    signal's default (exit -15 / -2, no line): the run is reported as finished instead."""
    marker = tmp_path / "shut down"
    script = SHUTDOWN.format(root=ROOT, signal=signum, marker=str(marker))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stderr) == (0, "")
    assert marker.exists()


BETWEEN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tools.utils import cli

done, real_signal = [], signal.signal

def signal_then_stop(signum, handler):  # a stop right after run() sets a SIGTERM handler once the work is done
    previous = real_signal(signum, handler)
    if done and signum == signal.SIGTERM:
        os.kill(os.getpid(), signal.SIGTERM)
    return previous

signal.signal = signal_then_stop
cli.run_and_exit(lambda argv: done.append(True))
"""


def test_a_stop_as_run_ends_its_handlers_leaves_a_finished_run():
    """The launcher's repeated SIGTERM can land between run() handing back its handlers and run_and_exit
    ignoring the stops; there the default handler killed a rank that had finished (exit -15)."""
    done = subprocess.run([sys.executable, "-c", BETWEEN.format(root=ROOT)], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
