"""A stop signal inside zipfile's own steps (CI found it: `preprocess` stopped by SIGTERM ended in exit 1 and a
zipfile ValueError traceback, "Can't close the ZIP file while there is an open writing handle on it").

The signal is sent from inside each step of writing a stage (tools/utils/data/dataset.py: save_stage) or an
in-memory .npz (tools/utils/files.py: npz_bytes), the way a scheduler's SIGTERM can land there: the run must
end in the one line and 143 that cli.run gives a stop, leave no file, and a run without the stop must still
write the same bytes."""
import os
import signal
import zipfile

import numpy as np
import pytest

from tools.utils import cli
from tools.utils.data.dataset import save_stage
from tools.utils.files import npz_bytes

STEPS = {  # where the signal is sent: the zipfile step that a stop raised inside of left unclosable
    "archive opening": (zipfile.ZipFile, "__init__"),
    "member opening": (zipfile.ZipFile, "_open_to_write"),
    "member closing": (zipfile._ZipWriteFile, "close"),
    "archive closing": (zipfile.ZipFile, "close"),
}


def signal_inside(monkeypatch, step, signum):
    """Send signum to this process at the first call of `step`, then run the step itself. The handler then
    runs at the next instruction: inside the step, unless the signal is held."""
    owner, name = STEPS[step]
    original, sent = getattr(owner, name), []

    def step_with_signal(*args, **kwargs):
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, step_with_signal)
    return sent


def arrays():
    rng = np.random.default_rng(0)
    return {"label": rng.integers(0, 2, 500).astype(np.int8), "uid": rng.integers(0, 10**6, 500)}


@pytest.mark.parametrize("step", STEPS)
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
