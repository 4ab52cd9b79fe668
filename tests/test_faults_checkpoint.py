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
from tools.utils.run import checkpoint as ckpt
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
    from tools.utils.data import dataset
    data, out = tmp_path / "train", tmp_path / "out"
    shutil.copytree(folder / "data" / "train", data)
    options = (f"runner.train_data_dir={data}", "runner.save_steps=5")
    assert train(folder, out, "runner.epochs=1", *options) == 0
    stage = data / "train_stage1.npz"
    original = stage.read_bytes()
    arrays = dataset.load_stage(str(stage), dataset.read_schema(str(data)))
    keep = np.arange(len(arrays["label"])) % 5 != 0  # 20% of the rows dropped, the labels flipped
    dataset.save_stage(str(stage), {**{k: v[keep] for k, v in arrays.items()}, "label": 1 - arrays["label"][keep]})
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


# ---------------------------------------------------------------- 7: hand-edited checkpoints, consistent checksums
def infer(folder, load, tmp_path):
    from tools import infer_meta
    return cli.run(infer_meta.main, ["-m", str(folder / "config.yaml"), "-o", f"runner.infer_load_path={load}",
                                     "runner.infer_end_epoch=1", f"runner.infer_output_path={tmp_path / 'results'}"])


def edit_checkpoint(path, meta=None, arrays=None, raw=None):
    """Rewrite a checkpoint as a careful hand would: meta(meta dict) -> meta.json content, arrays: {file: {name:
    array}} re-saved, raw: {file: bytes}; the sha256 in meta.json follow every changed file."""
    import hashlib
    import io
    with open(path / ckpt.META_FILE) as f:
        content = json.load(f)
    files = dict(raw or {})
    for name, new in (arrays or {}).items():
        buf = io.BytesIO()
        np.savez(buf, **new)
        files[name] = buf.getvalue()
    for name, data in files.items():
        (path / name).write_bytes(data)
        content["sha256"][name] = hashlib.sha256(data).hexdigest()
    (path / ckpt.META_FILE).write_text(json.dumps(meta(content) if meta else content))


def as_type(dtype, only=None):
    """The checkpoint's parameters (or only those whose name has `only`), re-saved as dtype."""
    def edit(arrays):
        return {k: v.astype(dtype) if only is None or only in k else v for k, v in arrays.items()}
    return edit


META_EDITS = [
    (lambda m: [1], "meta.json: holds [1], not a mapping of keys to values"),
    (lambda m: None, "meta.json: holds None, not a mapping"),
    (lambda m: {**m, "sha256": []}, "meta.json: sha256 must be a map of file names to sha256 digests, got []"),
    (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "meta.json: no sha256"),
    (lambda m: {**m, "data_schema": "x"}, "meta.json: data_schema must be the data's schema (as its schema.json), "
                                          "got 'x'"),
    (lambda m: {**m, "data_schema": {k: v for k, v in m["data_schema"].items() if k != "max_idxs"}},
     "meta.json: data_schema must be the data's schema"),
    (lambda m: {**m, "train_campaigns": "1,2"}, "meta.json: train_campaigns must be a list of campaign ids"),
    (lambda m: {**m, "identity": [1]}, "meta.json: identity must be a mapping"),
    (lambda m: {**m, "epoch": -1}, "meta.json: epoch must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("edit, says", META_EDITS)
def test_a_hand_edited_meta_json_is_one_line_for_the_trainer_and_meta_inference(folder, trained, tmp_path, capsys,
                                                                                 edit, says):
    """Issue 20 #7: meta.json holding [1] or null, "sha256": [], a data_schema of "x" or incomplete were
    tracebacks."""
    out = copy_of(trained, tmp_path)
    edit_checkpoint(out / "0", meta=edit)
    saved = snapshot(out)
    assert train(folder, out, "runner.epochs=2") == 2
    error_line(capsys, f"{out / '0'}/{says}", f"delete the folder {out / '0'} or retrain it")
    assert infer(folder, out, tmp_path) == 2
    error_line(capsys, f"{out / '0'}/{says}")
    assert snapshot(out) == saved and not (tmp_path / "results").exists()


@pytest.mark.parametrize("file, edit, says", [
    (ckpt.PARAMS_FILE, as_type(np.float64), "params.npz: does not fit this network (wrong dtypes ['bias float64 vs "
                                            "float32', 'weight float64 vs float32'])"),
    (ckpt.PARAMS_FILE, as_type(np.int64, "weight"), "params.npz: does not fit this network (wrong dtypes "
                                                    "['weight int64 vs float32'])"),
    (ckpt.OPT_FILE, as_type(np.float64, "moment1"), "optimizer.npz: state 'weight_moment1_0' is float64 [62, 1], "
                                                    "but its parameter weight is float32 [62, 1]"),
    (ckpt.OPT_FILE, lambda a: {**a, "weight_moment2_0": a["weight_moment2_0"][:3]},
     "optimizer.npz: state 'weight_moment2_0' is float32 [3, 1], but its parameter weight is float32 ["),
])
def test_arrays_re_saved_with_other_dtypes_or_shapes_are_one_line(folder, trained, tmp_path, capsys, file, edit,
                                                                  says):
    """Issue 20 #7: parameters re-saved as float64 / int64 (checksums updated) were Paddle tracebacks."""
    out = copy_of(trained, tmp_path)
    edit_checkpoint(out / "0", arrays={file: edit(ckpt.load_arrays(str(out / "0"), file))})
    saved = snapshot(out)
    assert train(folder, out, "runner.epochs=2") == 2
    error_line(capsys, f"{out / '0'}/{says}")
    if file == ckpt.PARAMS_FILE:
        assert infer(folder, out, tmp_path) == 2
        error_line(capsys, says)
    assert snapshot(out) == saved


def test_a_step_checkpoint_with_an_edited_reader_position_is_one_line(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(folder, out, "runner.epochs=1", "runner.save_steps=5") == 0
    step = out / "epoch0-step10"
    shutil.copytree(out / "0", tmp_path / "kept")
    shutil.copytree(tmp_path / "kept", step)  # a step checkpoint of epoch 0 is what a stop leaves; make one
    os.remove(step / ckpt.DONE_FILE)
    shutil.rmtree(out / "0")
    for edit, says in ((lambda m: {**m, "step": 10}, "a step checkpoint without the reader's position"),
                       (lambda m: {**m, "step": 10, "totals": {"samples": 1}, "reader": {"step": 10, "generator": {
                           "bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}}},
                        "reader must be the reader's position")):
        edit_checkpoint(step, meta=edit)
        (step / ckpt.DONE_FILE).write_text("")
        assert train(folder, out, "runner.epochs=1", "runner.save_steps=5") == 2
        error_line(capsys, f"{step}/meta.json: {says}")


# ---------------------------------------------------------------- what held: keep it held
def test_object_arrays_pickles_named_npz_and_truncated_archives_are_refused(folder, trained, tmp_path, capsys):
    import io
    import pickle
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    weights = ckpt.load_arrays(str(trained / "0"), ckpt.PARAMS_FILE)
    objects = io.BytesIO()
    np.savez(objects, **{**weights, "weight": np.array([Payload()], dtype=object)})
    whole = (trained / "0" / ckpt.PARAMS_FILE).read_bytes()
    for data, says in ((objects.getvalue(), "not a checkpoint archive of arrays"),
                       (pickle.dumps(weights), "not a checkpoint archive of arrays"),
                       (whole[:len(whole) // 2], "not a checkpoint archive of arrays")):
        out = copy_of(trained, tmp_path / str(len(data)))
        edit_checkpoint(out / "0", raw={ckpt.PARAMS_FILE: data})
        assert train(folder, out, "runner.epochs=2") == 2
        error_line(capsys, f"{out / '0' / ckpt.PARAMS_FILE}: {says}", "retrain it")
        assert infer(folder, out, tmp_path) == 2
        error_line(capsys, says)
    assert not marker.exists()


# ---------------------------------------------------------------- 6: the disk fills up while a checkpoint is saved
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_while_saving_a_step_is_one_line_and_the_rerun_resumes_bitwise(folder, trained, tmp_path, capsys,
                                                                                   monkeypatch):
    """Issue 20 #6: disk full while saving a step checkpoint was a 40-line `OSError: [Errno 28]` traceback.

    The device is real: once the trainer is past its start-up, the temporary file of a later step checkpoint
    is made a link to /dev/full, where every write fails with ENOSPC, as on a full disk."""
    import threading
    out = copy_of(trained, tmp_path)
    epoch0 = snapshot(out / "0")
    full = out / "epoch1-step4"

    def fill_the_disk():
        while not ckpt.is_finished(str(out / "epoch1-step2")):
            if done.is_set():
                return
            done.wait(0.005)
        full.mkdir()
        os.symlink("/dev/full", full / f"{ckpt.PARAMS_FILE}.tmp{os.getpid()}")

    done = threading.Event()
    filler = threading.Thread(target=fill_the_disk)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.2")  # two meta-steps for the filler to act in
    filler.start()
    try:
        code = train(folder, out, "runner.save_steps=2")
    finally:
        done.set()
        filler.join()
    assert code == 2
    size = (out / "0" / ckpt.PARAMS_FILE).stat().st_size  # the same network: the same bytes to write
    error_line(capsys, f"{full / ckpt.PARAMS_FILE}: no space left on its device (writing it needs {size:,} bytes); "
               f"the checkpoint {full} is unfinished", "the finished ones before it are whole",
               "Free space and rerun the same command to resume")
    assert os.listdir(full) == [] and snapshot(out / "0") == epoch0 and ckpt.finished(str(out)) == ([0], [(1, 2)])
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
    assert train(folder, out, "runner.save_steps=2") == 0
    assert f"resuming from {out / 'epoch1-step2'}" in capsys.readouterr().out
    assert train(folder, tmp_path / "whole") == 0  # uninterrupted
    resumed, whole = (ckpt.load_arrays(str(path / "1"), ckpt.PARAMS_FILE) for path in (out, tmp_path / "whole"))
    assert resumed.keys() == whole.keys() and all(np.array_equal(resumed[k], whole[k]) for k in whole)


# ---------------------------------------------------------------- 5: a place that cannot be written
def test_an_output_place_that_cannot_be_written_is_refused_before_any_work(folder, trained, tmp_path, capsys,
                                                                          unwritable):
    """Issue 20 #5: a read-only model_save_path: the trainer resumed, trained a whole epoch, then died with a
    PermissionError traceback; meta-inference failed the same way after all its work."""
    out = copy_of(trained, tmp_path)
    before = snapshot(out)
    unwritable(out)
    assert train(folder, out, "runner.epochs=2") == 2
    error_line(capsys, f"{out}: cannot be written (Operation not permitted" if os.geteuid() == 0 else
               f"{out}: cannot be written (Permission denied", "give a writable runner.model_save_path")
    assert snapshot(out) == before
    locked = unwritable(tmp_path / "locked")
    assert train(folder, locked / "out") == 2  # a folder that would be made inside it
    error_line(capsys, f"{locked} (where {locked / 'out'} would be made): cannot be written")
    for results in (locked, locked / "results"):
        from tools import infer_meta
        assert cli.run(infer_meta.main, ["-m", str(folder / "config.yaml"), "-o", f"runner.infer_load_path={out}",
                                         "runner.infer_end_epoch=1", f"runner.infer_output_path={results}"]) == 2
        captured = capsys.readouterr()
        assert "test_hot epoch 0" not in captured.err + captured.out  # refused before evaluating
        assert captured.err.strip().startswith("error: ") and "give a writable runner.infer_output_path" in captured.err
