"""Fault injection on the trainer's folder and checkpoints (issue 20): links where the trainer writes, training
data changed under a resume, hand-edited checkpoints, a full disk, a folder that cannot be written.

The trainer runs in this process (tools/utils/cli.run, as its command line does) on the fake model folder of
tests/helpers.py, so a case costs no Paddle start-up; each checks the exit code, the one line on stderr, and that
nothing already saved was lost.
"""
import json
import os
import shutil

import numpy as np
import pytest

from helpers import fake_model_folder
from tools.utils import checkpoint as ckpt
from tools.utils import cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The fake model folder (its data; nothing trained)."""
    return fake_model_folder(tmp_path_factory.mktemp("faults_checkpoint"))


def train(folder, out, *options):
    """tools/trainer.py on the fake model folder, writing `out`; its exit code."""
    from tools import trainer
    return cli.run(trainer.main, ["-m", str(folder / "config.yaml"), "-o", f"runner.model_save_path={out}",
                                  *options])


def error_line(capsys, *fragments):
    """The one line `error: ...` the command printed last on stderr (progress lines may come before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1], (fragment, err[-1])
    return err[-1]


def snapshot(path):
    """Every file under path with its bytes."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """A folder holding the finished epoch 0 of the fake model (runner.epochs=1)."""
    out = tmp_path_factory.mktemp("trained") / "out"
    assert train(folder, out, "runner.epochs=1") == 0
    return out


def copy_of(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out, symlinks=True)
    return out


# ---------------------------------------------------------------- 1, 8: links
def test_a_lock_that_is_a_link_is_refused_and_the_file_it_names_is_untouched(folder, tmp_path, capsys):
    """Issue 20 #1: a symbolic-link .lock made the trainer overwrite the file it pointed to with its pid."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    for kind, make in (("a symbolic link", os.symlink), ("a hard link to another file", os.link)):
        out = tmp_path / kind.replace(" ", "_")
        out.mkdir()
        make(victim, out / ".lock")
        assert train(folder, out) == 2
        error_line(capsys, f"{out / '.lock'}: {kind}", "Remove it")
        assert victim.read_text() == "keep me" and sorted(os.listdir(out)) == [".lock"]


def test_a_checkpoint_entry_that_is_a_link_is_refused_in_one_line(folder, trained, tmp_path, capsys):
    """Issue 20 #8: a link named like a checkpoint was an `OSError: Cannot call rmtree on a symbolic link`."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(trained / "0", elsewhere)
    before = snapshot(elsewhere)
    for name in ("5", "epoch1-step3"):
        out = copy_of(trained, tmp_path / name)
        os.symlink(elsewhere, out / name)
        for options in ((), ("--overwrite",)):
            assert train(folder, out, *options) == 2
            error_line(capsys, f"{out / name}: a symbolic link among the checkpoints", "Remove the link")
            assert snapshot(elsewhere) == before and (out / name).is_symlink() and ckpt.is_finished(str(out / "0"))


# ---------------------------------------------------------------- 2: the training data changed
def test_a_resume_on_changed_training_data_is_refused_naming_the_file(folder, tmp_path, capsys):
    """Issue 20 #2: train_stage1.npz rewritten with rows dropped and labels flipped; the rerun resumed on it."""
    from tools.utils import dataset as D
    data, out = tmp_path / "train", tmp_path / "out"
    shutil.copytree(folder / "data" / "train", data)
    options = (f"runner.train_data_dir={data}", "runner.save_steps=5")
    assert train(folder, out, "runner.epochs=1", *options) == 0
    stage = data / "train_stage1.npz"
    original = stage.read_bytes()
    arrays = D.load_stage(str(stage), D.read_schema(str(data)))
    keep = np.arange(len(arrays["label"])) % 5 != 0  # 20% of the rows dropped, the labels flipped
    D.save_stage(str(stage), {**{k: v[keep] for k, v in arrays.items()}, "label": 1 - arrays["label"][keep]})
    saved = snapshot(out)
    assert train(folder, out, "runner.epochs=2", *options) == 2
    error_line(capsys, f"{stage}: has other bytes since {out / '0'} was saved", "needs the same training data",
               "--overwrite")
    (data / "train_stage2.npz").write_bytes(original)  # a file the reader could read, added
    stage.write_bytes(original)
    assert train(folder, out, "runner.epochs=2", *options) == 2
    error_line(capsys, f"{data / 'train_stage2.npz'}: is new since")
    assert snapshot(out) == saved
    os.remove(data / "train_stage2.npz")
    assert train(folder, out, "runner.epochs=2", *options) == 0  # the same data again: resumed
    assert "resuming from" in capsys.readouterr().out and ckpt.finished(str(out)) == ([0, 1], [])
    assert train(folder, out, "runner.epochs=2", *options, "--overwrite") == 0  # and --overwrite trains anew
