"""tools/benchmark.py at its smallest: 3 methods x 2 seeds on a tiny generated dataset."""
import csv
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from helpers import write_split
from tools import benchmark
from tools.utils.data import dataset

METHODS = ["lr", "lookalike_lr", "mlp_pretrain", "metaheac"]
SEEDS = [2021, 2022]
SMALL = ["hyper_parameters.embed_dim=4", "hyper_parameters.mlp_dims=[8,8]", "runner.train_batch_size=16",
         "runner.infer_batch_size=16"]


def true_probability(stage):
    """The click probability helpers.make_stage draws its labels from."""
    return 1 / (1 + np.exp(-(1.5 * (stage["static"][:, 0] - 1.5) + 0.5 * (stage["ad"][:, 0] - 2))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train (5 campaigns), test_hot and test_cold with stage 2 and the oracle beside it."""
    root = tmp_path_factory.mktemp("bench_data")
    write_split(root / "train", {1: 60, 2: 40, 3: 30, 4: 20, 5: 10}, seed=1)
    write_split(root / "test_hot", {11: 60, 12: 40}, {11: 120, 12: 100}, seed=2)
    write_split(root / "test_cold", {21: 8, 22: 6}, {21: 80, 22: 60}, seed=3)
    for split in ("test_hot", "test_cold"):
        path = dataset.stage_path(str(root / split), 2)
        np.save(dataset.oracle_path(path), true_probability(dataset.load_split(str(root / split))["stage2"]))
    return str(root)


def run(data, out):
    return benchmark.benchmark(METHODS, SEEDS, data, str(out), extra=SMALL, log=lambda line: None)


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    return out, run(data, out)


def test_a_table_per_protocol_leads_with_the_per_campaign_metrics(report):
    out, _ = report
    text = (out / "results.md").read_text()
    tables = [block for block in text.split("\n\n") if block.startswith("| Method")]
    assert len(tables) == 2 and "*labelled seeds:" in text and "*positive seeds only:" in text
    for table in tables:
        rows = table.splitlines()
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        assert head == ["Method", "cold GAUC", "cold P@5%", "hot GAUC", "hot P@5%", "cold pooled AUC",
                        "hot pooled AUC", "train s", "test s"]
        labels = [r.strip("|").split("|")[0].strip() for r in rows[2:]]
        assert labels == [benchmark.METHODS[m][0] for m in METHODS] + ["Oracle (the generator's true probabilities)"]
        for row in rows[2:]:
            for c in [c.strip() for c in row.strip("|").split("|")][1:7]:
                m = re.fullmatch(r"(\d\.\d{4})(?: ± (\d\.\d{4}))?", c)
                assert m and 0 <= float(m.group(1)) <= 1, (row, c)
                assert (m.group(2) is None) == row.startswith("| Oracle"), row  # std for methods, not the oracle
    assert "Seeds: 2021, 2022" in text and "Pinterest" in text
    if importlib.util.find_spec("matplotlib"):  # optional (requirements-dev.txt): no chart without it
        assert (out / "gauc.png").read_bytes()[:4] == b"\x89PNG"


def test_json_and_csv_hold_every_run_and_std_over_seeds(report):
    out, _ = report
    saved = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in saved["methods"]] == METHODS
    csv_rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(csv_rows) == (2 * len(METHODS) + 1) * 2 * 4
    for m in saved["methods"]:
        assert [r["seed"] for r in m["runs"]] == SEEDS
        assert m["summary"]["train_seconds"] >= 0 and m["summary"]["test_seconds"] > 0
        for protocol, split, key in itertools.product(("labelled", "positive"), ("cold", "hot"),
                                                      ("auc", "precision", "recall", "gauc")):
            values = [r["metrics"][protocol][split][key] for r in m["runs"]]
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in values)
            stat = m["summary"][protocol][split][key]
            assert stat["values"] == values
            assert stat["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            row = next(r for r in csv_rows
                       if (r["method"], r["protocol"], r["split"], r["metric"]) == (m["name"], protocol, split, key))
            assert float(row["mean"]) == pytest.approx(stat["mean"]) and row["seeds"] == "2"
    oracle = saved["oracle"]
    assert oracle["hot"]["auc"] > 0.6 and 0 <= oracle["cold"]["precision"] <= 1


def test_one_stage_checkpoint_is_the_initialisation(report):
    out, _ = report
    meta = json.loads((out / "lr" / "seed2021" / "model" / "0" / "meta.json").read_text())
    assert meta["untrained"] and "stats" not in meta
    log = (out / "lr" / "seed2021" / "log.txt").read_text()
    assert "nothing trained across campaigns" in log
    pre = json.loads((out / "mlp_pretrain" / "seed2021" / "model" / "0" / "meta.json").read_text())
    assert pre["stats"]["meta_batches"] > 0


def test_a_rerun_gives_the_same_numbers_and_reuses_finished_runs(report, data, tmp_path):
    out, first = report
    again = benchmark.benchmark(["metaheac"], SEEDS, data, str(tmp_path / "again"), extra=SMALL,
                                log=lambda line: None)  # the method with the most randomness: sampled tasks
    assert again["methods"][0]["summary"] == first["methods"][METHODS.index("metaheac")]["summary"] | {
        key: again["methods"][0]["summary"][key] for key in ("train_seconds", "test_seconds")}
    reused = run(data, out)
    assert all(r.get("reused") for m in reused["methods"] for r in m["runs"])


def test_cli_errors_are_one_line(data, capsys):
    from tools.utils import cli
    assert cli.run(benchmark.main, ["--data", data, "--methods", "lr,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert cli.run(benchmark.main, ["--data", data, "--methods", "lr", "--set", "runner.epoch=2"]) == 2
    assert "no selected method has that key" in capsys.readouterr().err
    assert cli.run(benchmark.main, ["--data", data, "--methods", "lr", "--set", "runner.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "--set ['runner.epochs=2']: the benchmark sets" in err and "--epochs" in err
    assert cli.run(benchmark.main, ["--data", data, "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_a_run_of_other_data_in_the_same_folder_is_not_reused(data, tmp_path):
    """A run is reused only on the data it was made of: the same --data path holding other files is rerun."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = str(tmp_path / "out")

    def hot_gauc():
        record = benchmark.benchmark(["lookalike_centroid"], [2021], str(copy), out, protocols=("labelled",),
                                     log=lambda line: None)["methods"][0]["runs"][0]
        return record.get("reused", False), record["metrics"]["labelled"]["hot"]["gauc"]
    first = hot_gauc()
    assert hot_gauc() == (True, first[1])
    write_split(copy / "test_hot", {11: 60, 12: 40}, {11: 120, 12: 100}, seed=9)  # other rows, same path
    rerun = hot_gauc()
    assert rerun[0] is False and rerun[1] != first[1]


def test_set_leaves_the_setting_that_defines_a_method(data, tmp_path):
    """--set hyper_parameters.num_expert=4 reaches MetaHeac, not the ablation whose row is one expert."""
    keys = {m: {"hyper_parameters.num_expert", "hyper_parameters.embed_dim"} for m in ("metaheac",
                                                                                       "metaheac_one_expert")}
    extra = ["hyper_parameters.num_expert=4", "hyper_parameters.embed_dim=8"]
    runs = {run[0]: run[2] for run in benchmark.plan(["metaheac", "metaheac_one_expert"], [2021], data,
                                                      str(tmp_path), 1, 1, extra, keys)}
    assert "hyper_parameters.num_expert=4" in runs["metaheac"]
    ablation = runs["metaheac_one_expert"]
    assert "hyper_parameters.num_expert=1" in ablation and "hyper_parameters.num_expert=4" not in ablation
    assert "hyper_parameters.embed_dim=8" in ablation
    assert benchmark.set_for("metaheac_one_expert", extra, keys) == (extra[1:], extra[:1])


def test_the_positive_protocol_on_data_without_uids_is_refused_before_any_run(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    stage = dataset.stage_path(str(copy / "test_cold"), 2)
    dataset.save_stage(stage, {k: v for k, v in dataset.load_split(str(copy / "test_cold"))["stage2"].items()
                               if k != "uid"})
    keys = {"lr": set()}
    with pytest.raises(benchmark.BenchmarkError, match=r"test_stage2.npz: no uid array.*--protocols labelled"):
        benchmark.plan(["lr"], [2021], str(copy), str(tmp_path / "out"), 1, 1, [], keys)
    assert benchmark.plan(["lr"], [2021], str(copy), str(tmp_path / "out"), 1, 1, [], keys, ("labelled",))


def test_a_one_class_campaign_of_the_oracle_is_a_note_not_a_python_warning(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    stage = dataset.stage_path(str(copy / "test_hot"), 2)
    rows = dataset.load_split(str(copy / "test_hot"))["stage2"]
    rows["label"] = np.where(rows["aid"] == 12, 0, rows["label"]).astype(rows["label"].dtype)
    dataset.save_stage(stage, rows)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = benchmark.benchmark(["lookalike_centroid"], [2021], str(copy), str(tmp_path / "out"),
                                     protocols=("labelled",), log=lines.append)
    assert any(line.startswith("note: the oracle: 1 of 2 campaigns have candidates of one class only")
               for line in lines), lines
    assert report["oracle"]["hot"]["gauc_campaigns"] == 1


def test_set_reaches_a_runner_key_that_no_config_writes(data, tmp_path):
    """runner.valid_campaigns is in no method's YAML, yet every method's tools read it."""
    keys = {"lr": benchmark.config_keys(os.path.join(benchmark.ROOT, benchmark.METHODS["lr"][1]))}
    train = benchmark.plan(["lr"], [2021], data, str(tmp_path), 1, 1, ["runner.valid_campaigns=2"], keys)[0][2]
    assert "runner.valid_campaigns=2" in train

