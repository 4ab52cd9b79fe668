"""Checkpoints, and the trainer / meta-inference command lines (the config's loading: test_config.py).

The command lines run as subprocesses on a fake model folder made here: its own
dygraph_model.py (a logistic regression following the model contract), copies
of the readers, a config and tiny generated data. That the tools train and test
it proves they are generic over model folders.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import MAX_IDXS, ROOT, assert_one_line_error, fake_model_folder, pairwise_auc, run
from tools.utils.run import checkpoint as ckpt
from tools.utils.run import config as cfg
from tools.utils.data import dataset
from tools.utils.run import model_folder
from tools.utils.run.run_folder import RunFolder


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def paddle():
    from tools.utils.paddle_env import paddle
    return paddle


def trained_net(paddle, seed):
    paddle.seed(seed)
    net = paddle.nn.Linear(4, 3)
    opt = paddle.optimizer.Adam(0.1, parameters=net.parameters())
    net(paddle.ones([2, 4])).sum().backward()
    opt.step()
    opt.clear_grad()
    return net, opt


def state(obj):
    return {k: np.array(v) for k, v in obj.state_dict().items()}


def optimizer_state(opt, net):
    """Optimizer state keyed by structured parameter names (Paddle's keys hold per-process names)."""
    out = {}
    for key, p in net.named_parameters():
        out.update({key + k[len(p.name):]: np.array(v) for k, v in opt.state_dict().items()
                    if k.startswith(p.name + "_")})
    assert len(out) == len(opt.state_dict()) > 0
    return out


def same_state(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


IDENTITY = {"hyper_parameters": {"task_count": 3, "embed_dim": 8}, "seed": 1}


def test_checkpoint_round_trip_and_resume_refusal(paddle, tmp_path):
    save_dir = str(tmp_path / "ckpt")
    net, opt = trained_net(paddle, 1)
    with RunFolder(save_dir, IDENTITY) as folder:
        for epoch in (0, 1):
            folder.save_epoch(epoch, net, opt, {})
        folder.save_step(2, 5, net, opt, {"reader": {"step": 5}, "totals": {"samples": 80}})
        os.makedirs(os.path.join(save_dir, "3"))  # an interrupted save: no marker
        assert folder.resume_point() == ([0, 1], os.path.join(save_dir, "epoch2-step5"))
    with np.load(os.path.join(save_dir, "1", ckpt.PARAMS_FILE), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["bias", "weight"]  # plain arrays by structured name

    fresh, fresh_opt = trained_net(paddle, 2)
    assert not same_state(state(fresh), state(net))
    meta = ckpt.resume(os.path.join(save_dir, "1"), fresh, fresh_opt)
    assert meta["epoch"] == 1 and meta["identity"] == IDENTITY
    assert same_state(state(fresh), state(net))
    assert same_state(optimizer_state(fresh_opt, fresh), optimizer_state(opt, net))

    other = {**IDENTITY, "hyper_parameters": {"task_count": 5, "embed_dim": 8}}
    with RunFolder(save_dir, other) as folder:
        with pytest.raises(ckpt.CheckpointError, match=r"hyper_parameters.task_count was 3, now 5.*--overwrite"):
            folder.resume_point()
        assert ckpt.finished(save_dir) == ([0, 1], [(2, 5)])  # refused: nothing deleted
        assert not os.path.exists(os.path.join(save_dir, "3"))  # the unfinished folder is gone
        folder.delete_checkpoints()
        assert ckpt.finished(save_dir) == ([], [])


def test_step_checkpoints_keep_the_last_two_and_go_with_their_epoch(paddle, tmp_path):
    net, opt = trained_net(paddle, 1)
    with RunFolder(str(tmp_path), IDENTITY) as folder:
        for step in (10, 20, 30):
            folder.save_step(0, step, net, opt, {})
        assert ckpt.finished(str(tmp_path))[1] == [(0, 20), (0, 30)]
        folder.save_epoch(0, net, opt, {})
        assert ckpt.finished(str(tmp_path)) == ([0], [])


def test_one_trainer_per_folder_and_leftovers_of_killed_writes_are_removed(paddle, tmp_path):
    net, opt = trained_net(paddle, 1)
    with RunFolder(str(tmp_path), IDENTITY) as folder:
        folder.save_epoch(0, net, opt, {})
        with pytest.raises(ckpt.CheckpointError, match=rf"another trainer is writing this folder \(pid {os.getpid()}"):
            RunFolder(str(tmp_path), IDENTITY).__enter__()
    (tmp_path / "0" / "params.npz.tmp4242").write_bytes(b"x" * 100)  # a write killed before its rename
    (tmp_path / "1").mkdir()                                          # a save killed before its marker
    (tmp_path / "1" / "params.npz").write_bytes(b"half")
    (tmp_path / "results").mkdir()                                    # not ours: kept
    with RunFolder(str(tmp_path), IDENTITY):
        assert sorted(os.listdir(tmp_path)) == [".lock", "0", "results"]
        assert ".tmp" not in " ".join(os.listdir(tmp_path / "0"))


def test_interrupted_save_leaves_no_finished_checkpoint_and_no_temp_files(paddle, tmp_path, monkeypatch):
    net, opt = trained_net(paddle, 1)
    path = str(tmp_path / "0")
    ckpt.save(path, net, opt, {})
    real = ckpt.npz_bytes

    def crash_on_optimizer(arrays):
        if "weight" not in arrays:  # the optimizer's state, written after the parameters
            raise KeyboardInterrupt("killed while saving")
        return real(arrays)

    monkeypatch.setattr(ckpt, "npz_bytes", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, net, opt, {})
    assert not ckpt.is_finished(path)
    assert not [f for f in os.listdir(path) if ".tmp" in f]


def test_corrupt_mismatched_or_pickled_checkpoints_are_refused(paddle, tmp_path):
    net, opt = trained_net(paddle, 1)
    path = ckpt.save(str(tmp_path / "0"), net, opt, {})
    params = ckpt.load_arrays(path, ckpt.PARAMS_FILE)
    with pytest.raises(ckpt.CheckpointError, match=r"x: does not fit this network \(wrong shapes "
                                                   r"\['bias \[3\] vs \[5\]', 'weight \[4, 3\] vs \[4, 5\]'\]\)"):
        ckpt.restore_params(paddle.nn.Linear(4, 5), params, "x")
    with pytest.raises(ckpt.CheckpointError, match=r"\(unexpected \['bias'\]\)"):
        ckpt.restore_params(paddle.nn.Linear(4, 3, bias_attr=False), params, "x")
    model_file = os.path.join(path, ckpt.PARAMS_FILE)
    data = bytearray(open(model_file, "rb").read())
    data[-200] ^= 1  # a flipped bit inside the file
    open(model_file, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"params.npz: checksum differs"):
        ckpt.load_arrays(path, ckpt.PARAMS_FILE)
    with pytest.raises(ckpt.CheckpointError, match=r"/3: no finished checkpoint .*make it with `train me`"):
        ckpt.require(str(tmp_path), 3, "train me")
    legacy = tmp_path / "legacy"  # the earlier versions' format: pickles, refused unless trusted
    legacy.mkdir()
    paddle.save(net.state_dict(), str(legacy / "rec.pdparams"))
    import hashlib
    sha = hashlib.sha256((legacy / "rec.pdparams").read_bytes()).hexdigest()
    (legacy / "meta.json").write_text(json.dumps({"sha256": {"rec.pdparams": sha}}))
    with pytest.raises(ckpt.CheckpointError, match=r"rec.pdparams: a checkpoint of an earlier version, pickled .*"
                                                   r"--trust-pickled-checkpoints"):
        ckpt.load_arrays(str(legacy), ckpt.PARAMS_FILE)
    trusted = ckpt.load_arrays(str(legacy), ckpt.PARAMS_FILE, trust_pickle=True)
    assert same_state(trusted, state(net))


# ---------------------------------------------------------------- the command lines on a fake model folder
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fake_model_folder(tmp_path_factory.mktemp("fake_model"))


@pytest.fixture(scope="module")
def trained(model_dir):
    """Train 2 epochs in one run into `out`; returns the trainer's output."""
    proc = run("trainer.py", model_dir)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_trainer_saves_each_epoch_and_resumes_exactly(paddle, model_dir, trained):
    out = str(model_dir / "out")
    assert ckpt.finished(out) == ([0, 1], [])
    assert "epoch 1: loss" in trained.stdout and "samples" in trained.stdout
    meta = ckpt.read_meta(os.path.join(out, "1"))
    assert meta["stats"]["meta_batches"] == 19  # ceil(300 rows / 16)
    from tools import trainer
    _, reader, _ = trainer.prepare(cfg.load_config(str(model_dir / "config.yaml")))
    reader.set_epoch(1)  # the trainer's epoch 1 draws from (seed, 1)
    assert meta["stats"]["samples"] == sum(len(s["label"]) + len(q["label"]) for mb in reader for s, q in mb)

    split = str(model_dir / "split_run")
    first = run("trainer.py", model_dir, "-o", "runner.epochs=1", f"runner.model_save_path={split}")
    resumed = run("trainer.py", model_dir, "-o", f"runner.model_save_path={split}")
    assert first.returncode == 0 and resumed.returncode == 0, first.stderr + resumed.stderr
    assert f"resuming from {split}/0" in resumed.stdout
    params = {path: ckpt.load_arrays(path, ckpt.PARAMS_FILE) for path in (f"{out}/0", f"{out}/1", f"{split}/1")}
    assert same_state(params[f"{out}/1"], params[f"{split}/1"])
    assert not same_state(params[f"{out}/0"], params[f"{out}/1"])

    again = run("trainer.py", model_dir)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_trainer_refuses_another_runs_checkpoints_and_bad_data(model_dir, trained):
    out = model_dir / "out"
    before = (out / "1" / ckpt.PARAMS_FILE).read_bytes()
    refused = run("trainer.py", model_dir, "-o", "hyper_parameters.task_count=2")
    assert_one_line_error(refused, "hyper_parameters.task_count was 3, now 2", "--overwrite")
    assert (out / "1" / ckpt.PARAMS_FILE).read_bytes() == before
    untrained = run("trainer.py", model_dir, "--untrained")
    assert_one_line_error(untrained, "untrained was False, now True (--untrained)")
    missing = run("trainer.py", model_dir, "-o", "runner.train_data_dir=nowhere", "runner.model_save_path=o2")
    assert_one_line_error(missing, "nowhere: no such data folder")
    bad_config = run("trainer.py", model_dir, "-o", "runner.train_batch_size=0")
    assert_one_line_error(bad_config, "runner.train_batch_size must be an integer >= 1, got 0")


def numpy_scores(params, batch):
    """The fake model's probabilities, computed from the checkpoint's arrays with NumPy only."""
    sizes = [m + 1 for m in MAX_IDXS["static"] + MAX_IDXS["ad"]]
    ids = np.concatenate([batch["static"], batch["ad"]], axis=1) + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    logit = params["weight"][ids, 0].sum(axis=1) + params["bias"][0]
    return 1 / (1 + np.exp(-logit))


def test_infer_meta_without_fine_tuning_scores_the_checkpoint(paddle, model_dir, trained):
    proc = run("infer_meta.py", model_dir, "--split", "both", "-o", "runner.infer_train_epoch=0")
    assert proc.returncode == 0, proc.stderr
    assert "campaign 19 skipped: no stage-2 rows" in proc.stdout
    assert "1 of 2 campaigns have candidates of one class only" in proc.stdout
    assert "note: fine-tuning is off (runner.infer_train_epoch 0)" in proc.stdout
    assert "have no seeds" not in proc.stdout
    with open(model_dir / "out" / "results" / "metrics_test_hot+test_cold.json") as f:
        runs = json.load(f)
    assert [(r["split"], r["epoch"]) for r in runs] == [("test_hot", 0), ("test_cold", 0),
                                                         ("test_hot", 1), ("test_cold", 1)]
    for r in runs:
        params = ckpt.load_arrays(r["checkpoint"], ckpt.PARAMS_FILE)
        stage2 = dataset.load_split(r["data_dir"])["stage2"]
        defined = []
        for c in r["campaigns"]:
            rows = stage2["aid"] == c["campaign"]
            labels = stage2["label"][rows]
            assert (c["rows"], c["positives"]) == (rows.sum(), labels.sum())
            if labels.min() == labels.max():
                assert c["auc"] is None
            else:
                expected = pairwise_auc(labels, numpy_scores(params, {k: v[rows] for k, v in stage2.items()}))
                assert c["auc"] == pytest.approx(expected, abs=1e-6)
                defined.append(c["auc"])
        assert r["overall"]["gauc"] == pytest.approx(np.mean(defined))
        assert r["overall"]["auc"] == pytest.approx(pairwise_auc(stage2["label"], numpy_scores(params, stage2)),
                                                    abs=1e-6)
    with open(model_dir / "out" / "results" / "metrics_test_hot+test_cold.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("split,epoch,campaign") and len(lines) == 1 + 2 * (3 + 1 + 2 + 1)
    assert "test_cold,0,22,5,6,0,,,0.0," in lines  # AUC and recall undefined, GAUC per run only: empty


def test_infer_meta_restores_the_weights_for_every_campaign(model_dir, trained, tmp_path):
    only = str(tmp_path / "test_only_13")
    os.makedirs(only)
    dataset.write_schema(only, MAX_IDXS)
    split = dataset.load_split(str(model_dir / "data" / "test_hot"))
    for stage in ("stage1", "stage2"):
        keep = split[stage]["aid"] == 13
        dataset.save_stage(os.path.join(only, f"test_{stage}.npz"), {k: v[keep] for k, v in split[stage].items()})
    results = {}
    for data_dir in (str(model_dir / "data" / "test_hot"), only):
        proc = run("infer_meta.py", model_dir, "-o", "runner.infer_start_epoch=1", f"runner.test_data_dir={data_dir}",
                   f"runner.infer_output_path={tmp_path / 'res'}")
        assert proc.returncode == 0, proc.stderr
        assert "AUC" in proc.stdout and "GAUC" in proc.stdout
        with open(tmp_path / "res" / f"metrics_{os.path.basename(data_dir)}.json") as f:
            results[data_dir] = {c["campaign"]: c for c in json.load(f)[0]["campaigns"]}
    after_others, alone = results[str(model_dir / "data" / "test_hot")][13], results[only][13]
    assert after_others == alone


def test_infer_meta_says_which_campaigns_had_no_seeds_to_fine_tune_on(model_dir, trained, tmp_path):
    folder = str(tmp_path / "test_unseeded")
    os.makedirs(folder)
    dataset.write_schema(folder, MAX_IDXS)
    split = dataset.load_split(str(model_dir / "data" / "test_hot"))
    dataset.save_stage(os.path.join(folder, "test_stage1.npz"), {k: v[split["stage1"]["aid"] == 11]
                                                             for k, v in split["stage1"].items()})
    dataset.save_stage(os.path.join(folder, "test_stage2.npz"), split["stage2"])
    proc = run("infer_meta.py", model_dir, "-o", f"runner.test_data_dir={folder}", "runner.infer_start_epoch=1",
               f"runner.infer_output_path={tmp_path / 'res'}")
    assert proc.returncode == 0, proc.stderr
    assert "2 of 3 campaigns have no seeds (stage-1 rows) and were scored without fine-tuning: [12, 13]" in proc.stdout


def test_infer_meta_refuses_the_positive_protocol_on_data_without_uids(model_dir, trained, tmp_path):
    """Stage files need uid only where known (tools/import_pickle.py writes none); the positive protocol keeps
    seeds and candidates out of the drawn negatives by uid, so it is refused in one line, not a KeyError."""
    folder = str(tmp_path / "test_no_uids")
    os.makedirs(folder)
    dataset.write_schema(folder, MAX_IDXS)
    split = dataset.load_split(str(model_dir / "data" / "test_hot"))
    for k in (1, 2):
        dataset.save_stage(os.path.join(folder, f"test_stage{k}.npz"),
                           {name: a for name, a in split[f"stage{k}"].items() if name != "uid"})
    out = tmp_path / "res"
    proc = run("infer_meta.py", model_dir, "-o", f"runner.test_data_dir={folder}", "runner.infer_start_epoch=1",
               "runner.infer_seeds=positive", f"runner.infer_output_path={out}")
    assert_one_line_error(proc, f"{folder}/test_stage1.npz: no uid array", "runner.infer_seeds=labelled")
    assert not out.exists()
    labelled = run("infer_meta.py", model_dir, "-o", f"runner.test_data_dir={folder}", "runner.infer_start_epoch=1",
                   f"runner.infer_output_path={out}")
    assert labelled.returncode == 0, labelled.stderr


def test_infer_meta_names_a_missing_checkpoint_and_how_to_make_it(model_dir, trained):
    proc = run("infer_meta.py", model_dir, "-o", "runner.infer_end_epoch=4")
    assert_one_line_error(proc, f"{model_dir}/out/2: no finished checkpoint", "trainer.py -m",
                          "-o runner.epochs=4")


def test_the_command_that_makes_a_missing_checkpoint_works_as_printed(tmp_path):
    """Paths with spaces are quoted, the command's own training settings and its checkpoint folder are kept: the
    printed command, pasted into a shell, makes what infer_meta asked for."""
    folder = fake_model_folder(tmp_path / "my models")
    out = folder / "out dir"
    proc = run("infer_meta.py", folder, "-o", f"runner.infer_load_path={out}", "runner.infer_end_epoch=1",
               "hyper_parameters.optimizer.learning_rate=0.02", "runner.train_batch_size=8")
    assert_one_line_error(proc, "no finished checkpoint of epoch 0")
    command = re.search(r"make it with `(.+)`$", proc.stderr.strip()).group(1)
    assert "hyper_parameters.optimizer.learning_rate=0.02" in command and "runner.train_batch_size=8" in command
    made = subprocess.run(["bash", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)],
                          cwd=str(folder.parent), capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert ckpt.finished(str(out)) == ([0], [])
    meta = ckpt.read_meta(str(out / "0"))
    assert meta["identity"]["hyper_parameters"]["optimizer"]["learning_rate"] == 0.02
    # with epoch 0 there, the command resumes it: the hyper-parameters it was trained with, not this command's
    later = run("infer_meta.py", folder, "-o", f"runner.infer_load_path={out}", "runner.infer_start_epoch=1",
                "runner.infer_end_epoch=2", "hyper_parameters.local_test_learning_rate=0.9",
                "runner.train_batch_size=8")
    command = re.search(r"make it with `(.+)`$", later.stderr.strip()).group(1)
    assert "local_test_learning_rate=0.5" in command and "optimizer.learning_rate=0.02" in command, command
    made = subprocess.run(["bash", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)],
                          cwd=str(folder.parent), capture_output=True, text=True, timeout=300)
    assert made.returncode == 0 and ckpt.finished(str(out)) == ([0, 1], []), made.stderr


def test_infer_meta_needs_only_the_checkpoint_and_the_test_data(model_dir, trained, tmp_path):
    """The field layout, vocabulary and training campaigns come from the checkpoint, not the training data."""
    with_train = run("infer_meta.py", model_dir, "-o", f"runner.infer_output_path={tmp_path / 'a'}")
    without = run("infer_meta.py", model_dir, "-o", "runner.train_data_dir=/nonexistent",
                  f"runner.infer_output_path={tmp_path / 'b'}")
    assert with_train.returncode == 0 and without.returncode == 0, without.stderr
    assert (tmp_path / "a" / "metrics_test_hot.json").read_text() == (tmp_path / "b" / "metrics_test_hot.json").read_text()


def test_fine_tuning_reshuffles_the_seeds_every_pass_into_consecutive_batches(paddle):
    """As the official test_train: sample(frac=1) once per pass, then consecutive batches."""
    import reader_test
    from tools.utils.run import campaign

    class Recording:  # the model hooks fine_tune calls, recording each batch's uids
        def __init__(self):
            self.batches = []

        def create_optimizer(self, net, config, learning_rate):
            return paddle.optimizer.Adam(learning_rate, parameters=net.parameters())

        def infer_train_forward(self, net, batch, config):
            self.batches.append(batch["uid"].copy())
            return net(paddle.ones([1, 1])).sum(), {}

    config = {"runner": {"infer_train_epoch": 3, "infer_batch_size": 4},
              "hyper_parameters": {"local_test_learning_rate": 0.1}}
    seeds = {"uid": np.arange(10) * 7, "label": np.zeros(10)}
    runs = []
    for seed in (5, 5, 6):
        model = Recording()
        campaign.fine_tune(model, paddle.nn.Linear(1, 1), seeds, config, reader_test.batches,
                             np.random.default_rng(seed))
        assert [len(b) for b in model.batches] == [4, 4, 2] * 3
        passes = [np.concatenate(model.batches[i:i + 3]) for i in (0, 3, 6)]
        assert all(sorted(p) == list(seeds["uid"]) for p in passes)  # every seed once per pass
        assert len({tuple(p) for p in passes}) == 3                   # a new order every pass
        runs.append(passes)
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_importing_paddle_before_paddle_env_is_named_and_the_tools_never_do():
    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stderr
    assert "paddle was imported before tools.utils.paddle_env" in stderr_of(
        "import paddle\nfrom tools.utils import paddle_env\npaddle_env.load()")
    untouched = ("import os, sys\nkeys = set(os.environ)\nfrom tools.utils import paddle_env\n"
                 "assert 'paddle' not in sys.modules and set(os.environ) == keys\n"
                 "from tools.utils.paddle_env import paddle\nassert os.environ['GLOG_minloglevel'] == '2'\n"
                 "assert paddle is sys.modules['paddle'] is paddle_env.load()")
    assert stderr_of(untouched) == ""  # importing the module sets nothing; asking for paddle sets it all
    loads = ("from tools.utils.run import model_folder\nmodel_folder.model_module({'model_dir': '.', "
             "'config_path': 'x'})")
    assert stderr_of(loads) == ""  # the model module imports paddle, after the environment is set


def test_config_big_is_the_sample_config_on_the_full_data():
    """config_big.yaml sets only what the full data changes (base: config.yaml): the same model and
    hyper_parameters, PaddleRec's batch of 1024, its own data and output folders."""
    sample, big = (cfg.load_config(os.path.join(ROOT, name)) for name in ("config.yaml", "config_big.yaml"))
    for config in (sample, big):
        cfg.validate(config, "train", model_folder.load_model(config))
    assert big["model_dir"] == sample["model_dir"] == ROOT and big["hyper_parameters"] == sample["hyper_parameters"]
    changed = {key: value for key, value in big["runner"].items() if sample["runner"].get(key) != value}
    assert changed == {"train_data_dir": os.path.join(ROOT, "data", "big", "train"),
                       "test_data_dir": os.path.join(ROOT, "data", "big", "test_hot"), "train_batch_size": 1024,
                       "infer_batch_size": 1024, "print_interval": 20,
                       "model_save_path": os.path.join(ROOT, "output_model_metaheac_big"),
                       "infer_load_path": os.path.join(ROOT, "output_model_metaheac_big")}
