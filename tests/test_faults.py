"""Fault injection: every failure found by trying to break the training and test tools, and what held.

Each case makes the bad input or the interruption, runs the real command line
and asserts its outcome: the exit code, one line that names the problem, and
that nothing already saved was lost. The data tools' cases are in
test_faults_data.py.
"""
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, assert_one_line_error, fake_model_folder, run, write_split
from tools.utils.run import checkpoint as ckpt
from tools.utils import cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The fake model folder with two trained epochs in `out`."""
    model_dir = fake_model_folder(tmp_path_factory.mktemp("faults"))
    trained = run("trainer.py", model_dir)
    assert trained.returncode == 0, trained.stderr
    return model_dir


def params(path):
    return ckpt.load_arrays(str(path), ckpt.PARAMS_FILE)


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def snapshot(path):
    """Every file under path with its bytes."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


# ---------------------------------------------------------------- data loss
def test_overwrite_checks_everything_before_deleting_anything(folder):
    before = snapshot(folder / "out")
    for bad in ("runner.train_data_dir=/nonexistent", "hyper_parameters.task_count=50", "runner.epochs=0"):
        assert run("trainer.py", folder, "--overwrite", "-o", bad).returncode == 2
        assert snapshot(folder / "out") == before, bad


def test_a_second_trainer_on_the_same_folder_is_refused(folder):
    target = folder / "busy"
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "trainer.py"), "-m",
                              str(folder / "config.yaml"), "-o", f"runner.model_save_path={target}"],
                             env={**os.environ, "FAKE_STEP_SECONDS": "0.3"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (target / ".lock").exists() and (target / ".lock").read_text())
        second = run("trainer.py", folder, "-o", f"runner.model_save_path={target}")
        assert_one_line_error(second, f"{target}: another trainer is writing this folder (pid {first.pid}")
    finally:
        first.kill()
        first.wait()
    resumed = run("trainer.py", folder, "-o", f"runner.model_save_path={target}")  # the killed one held no lock
    assert resumed.returncode == 0, resumed.stderr


def test_leftovers_of_killed_writes_are_removed_on_the_next_start(folder, tmp_path):
    target = tmp_path / "out"
    assert run("trainer.py", folder, "-o", f"runner.model_save_path={target}", "runner.epochs=1").returncode == 0
    (target / "0" / "params.npz.tmp999").write_bytes(os.urandom(1000))
    (target / "1").mkdir()
    (target / "1" / "params.npz").write_bytes(b"torn")
    (target / "epoch1-step3").mkdir()
    done = run("trainer.py", folder, "-o", f"runner.model_save_path={target}")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(target)) == [".lock", "0", "1"] and ckpt.finished(str(target)) == ([0, 1], [])
    assert not [f for d in ("0", "1") for f in os.listdir(target / d) if ".tmp" in f]


# ---------------------------------------------------------------- silent misconfiguration
BAD_VALUES = [
    ("hyper_parameters.embed_dim=abc", "hyper_parameters.embed_dim must be an integer >= 1, got 'abc'"),
    ("hyper_parameters.embed_dim=0", "hyper_parameters.embed_dim must be an integer >= 1, got 0"),
    ("hyper_parameters.embed_dim=8.5", "hyper_parameters.embed_dim must be an integer >= 1, got 8.5"),
    ("hyper_parameters.mlp_dims=[]", "hyper_parameters.mlp_dims must be a non-empty list of integers >= 1"),
    ("hyper_parameters.mlp_dims=abc", "hyper_parameters.mlp_dims must be a non-empty list"),
    ("hyper_parameters.num_expert=0", "hyper_parameters.num_expert must be an integer >= 1, got 0"),
    ("hyper_parameters.local_lr=abc", "hyper_parameters.local_lr must be a number > 0, got 'abc'"),
    ("hyper_parameters.optimizer.learning_rate=abc", "optimizer.learning_rate must be a number > 0, got 'abc'"),
    ("hyper_parameters.optimizer.learning_rate=-1", "optimizer.learning_rate must be a number > 0, got -1"),
    ("hyper_parameters.local_test_learning_rate=0", "local_test_learning_rate must be a number > 0, got 0"),
    ("hyper_parameters.optimizer=0.1", "hyper_parameters.optimizer: a section, not a value"),
    ("runner.epochs=0", "runner.epochs must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_every_bad_value_is_one_line_before_anything_runs(override, message, capsys):
    from tools import trainer
    assert cli.run(trainer.main, ["-m", os.path.join(ROOT, "config.yaml"), "-o", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


@pytest.mark.parametrize("yaml_text, message", [
    ("runner: 5\nhyper_parameters: {}\n", "runner must be a section (a mapping of keys to values), got 5"),
    ("base: BASE\nhyper_parameters:\n  optimizer:\n    learning_rat: 0.5\n",
     "unknown key 'hyper_parameters.optimizer.learning_rat'; did you mean hyper_parameters.optimizer.learning_rate?"),
    ("base: BASE\nhyper_parameters:\n  meta_ordr: 1\n",
     "unknown key 'hyper_parameters.meta_ordr'; did you mean hyper_parameters.meta_order?"),
    ("base: BASE\nhyper_parameters:\n  optimizer: 0.1\n",
     "hyper_parameters.optimizer must be a section"),
])
def test_yaml_mistakes_are_one_line_with_a_hint(yaml_text, message, tmp_path, capsys):
    from tools import trainer
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text.replace("BASE", os.path.join(ROOT, "config.yaml")))
    assert cli.run(trainer.main, ["-m", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_a_missing_needed_key_is_named(tmp_path, capsys):
    from tools import trainer
    text = open(os.path.join(ROOT, "config.yaml")).read().replace("  local_lr: 0.0002", "")
    (tmp_path / "config.yaml").write_text(text)
    (tmp_path / "dygraph_model.py").write_text(open(os.path.join(ROOT, "dygraph_model.py")).read())
    out = tmp_path / "out"
    assert cli.run(trainer.main, ["-m", str(tmp_path / "config.yaml"), "-o", f"runner.model_save_path={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hyper_parameters.local_lr is missing (the inner SGD step)" in err and "\n" not in err
    assert not out.exists()


# ---------------------------------------------------------------- silent training failure
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Real MetaHeac on a tiny split: 200 rows of 5 campaigns."""
    data = tmp_path_factory.mktemp("tiny")
    write_split(data / "train", {1: 60, 2: 50, 3: 40, 4: 30, 5: 20}, seed=4)
    return data


def metaheac(tiny_data, out, *options):
    """tools/trainer.py on the top-level config.yaml, small and on tiny_data."""
    return run("trainer.py", Path(ROOT), "-o", f"runner.train_data_dir={tiny_data / 'train'}",
               f"runner.model_save_path={out}", "runner.train_batch_size=16", "runner.print_interval=5",
               "hyper_parameters.embed_dim=16", "hyper_parameters.mlp_dims=[16,16]", *options)


def test_training_that_learns_nothing_stops_and_says_why(tiny_data, tmp_path):
    proc = metaheac(tiny_data, tmp_path / "out", "hyper_parameters.optimizer.learning_rate=1e3",
                    "hyper_parameters.local_lr=1e3")
    assert_one_line_error(proc, "epoch 0, meta-steps 1-5 changed no weight: every gradient was zero",
                          "saturated sigmoid", "optimizer.learning_rate 1000.0, local_lr 1000.0")
    assert ckpt.finished(str(tmp_path / "out")) == ([], [])


def test_weights_that_are_not_finite_are_never_saved_as_finished(tiny_data, tmp_path):
    proc = metaheac(tiny_data, tmp_path / "out", "runner.train_batch_size=1000",  # one meta-step per epoch
                    "hyper_parameters.optimizer.learning_rate=1e39")
    assert_one_line_error(proc, "holds NaN or infinity; training diverged")
    assert ckpt.finished(str(tmp_path / "out")) == ([], [])


# ---------------------------------------------------------------- inference
def test_a_test_split_without_candidates_is_one_line(folder, tmp_path):
    split = tmp_path / "test_empty"
    write_split(split, {11: 5}, {11: 0})
    proc = run("infer_meta.py", folder, "-o", f"runner.test_data_dir={split}")
    assert_one_line_error(proc, f"{split}: no candidates to score")


def test_campaigns_without_seeds_are_named_per_split(folder, tmp_path):
    split = tmp_path / "test_unseeded"
    write_split(split, {11: 5}, {11: 30, 12: 20, 13: 10})
    proc = run("infer_meta.py", folder, "-o", f"runner.test_data_dir={split}", "runner.infer_start_epoch=1",
               f"runner.infer_output_path={tmp_path / 'res'}")
    assert proc.returncode == 0, proc.stderr
    assert "test_unseeded epoch 1: 2 of 3 campaigns have no seeds (stage-1 rows) and were scored without " \
           "fine-tuning: [12, 13]" in proc.stdout


def test_a_pickled_checkpoint_is_refused_and_runs_no_code(folder, tmp_path):
    """An earlier version's checkpoint is a pickle: a crafted one with a matching sha256 must not run."""
    load = tmp_path / "legacy"
    os.makedirs(load / "0")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps({"weight": Payload()})
    (load / "0" / "rec.pdparams").write_bytes(data)
    meta = ckpt.read_meta(str(folder / "out" / "0"))
    meta["sha256"] = {"rec.pdparams": hashlib.sha256(data).hexdigest()}
    (load / "0" / "meta.json").write_text(json.dumps(meta))
    (load / "0" / ckpt.DONE_FILE).write_text("")
    proc = run("infer_meta.py", folder, "-o", f"runner.infer_load_path={load}", "runner.infer_end_epoch=1")
    assert_one_line_error(proc, "rec.pdparams: a checkpoint of an earlier version, pickled",
                          "--trust-pickled-checkpoints")
    assert not marker.exists()


# ---------------------------------------------------------------- output and long runs
def test_logs_get_plain_progress_lines_not_carriage_returns(folder, tmp_path):
    proc = run("trainer.py", folder, "-o", f"runner.model_save_path={tmp_path}", "runner.epochs=3")
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and len(proc.stderr.splitlines()) <= 3 * 2, proc.stderr
    assert "epoch 2: 19/19 step (100%)" in proc.stderr


def wait_for(condition, timeout=120):
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def train_in_background(folder, out, *options, seconds_per_step="0.1"):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "trainer.py"), "-m",
                             str(folder / "config.yaml"), "-o", f"runner.model_save_path={out}", *options],
                            env={**os.environ, "FAKE_STEP_SECONDS": seconds_per_step},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def uninterrupted(folder):
    return params(folder / "out" / "1")


def test_kill_9_mid_epoch_then_rerun_resumes_from_the_step_checkpoint_bitwise(folder, tmp_path, uninterrupted):
    out = tmp_path / "out"
    trainer = train_in_background(folder, out, "runner.save_steps=4")
    wait_for(lambda: ckpt.finished(str(out))[1][-1:] == [(1, 8)])  # mid-epoch 1
    trainer.kill()
    trainer.wait()
    resumed = run("trainer.py", folder, "-o", f"runner.model_save_path={out}", "runner.save_steps=4")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "epoch1-step" in resumed.stdout
    assert same(params(out / "1"), uninterrupted)
    assert ckpt.finished(str(out)) == ([0, 1], [])  # the step checkpoints went with their epoch


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_step_and_exits_with_one_line(folder, tmp_path, uninterrupted, signum):
    out = tmp_path / "out"
    trainer = train_in_background(folder, out)
    wait_for(lambda: ckpt.finished(str(out))[0] == [0])
    time.sleep(0.5)
    trainer.send_signal(signum)
    stdout, stderr = trainer.communicate(timeout=60)
    assert trainer.returncode == 128 + signum, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal.Signals(signum).name} after epoch 1, meta-step ") and \
        "rerun the same command to resume there" in last
    assert "FatalError" not in stderr and "Traceback" not in stderr
    assert ckpt.finished(str(out))[1], "a step checkpoint"
    resumed = run("trainer.py", folder, "-o", f"runner.model_save_path={out}")
    assert resumed.returncode == 0 and same(params(out / "1"), uninterrupted)


def test_kills_at_random_moments_never_leave_a_checkpoint_that_breaks_the_rerun(folder, tmp_path, uninterrupted):
    out = tmp_path / "out"
    rng = np.random.default_rng(13)
    for _ in range(12):
        trainer = train_in_background(folder, out, "runner.save_steps=1", seconds_per_step="0.02")
        time.sleep(rng.uniform(1.5, 4.0))  # the start-up takes about 1.5 s; then checkpoints are written all the time
        trainer.kill()
        trainer.wait()
    finished = run("trainer.py", folder, "-o", f"runner.model_save_path={out}", "runner.save_steps=1")
    assert finished.returncode == 0, finished.stderr
    assert same(params(out / "1"), uninterrupted)
