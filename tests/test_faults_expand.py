"""Fault injection on tools/expand.py (issue 20): seeds with nothing to expand from, output places that cannot
take the outputs, arguments that are not numbers, and the unknown ids counted twice.

expand runs in this process (tools/utils/cli.run, as its command line does) on the model the shipped config
trains on the sample (tests/conftest.py: sample_model, shared with test_expand.py).
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from helpers import ROOT
from tools import expand
from tools.utils.run import checkpoint as ckpt
from tools.utils import cli
from tools.utils.data import dataset
from tools.utils.data import vocabulary
from tools.utils.serving.outputs import Outputs

CONFIG = os.path.join(ROOT, "config.yaml")
HOT = os.path.join(ROOT, "data", "test_hot")


@pytest.fixture(scope="module")
def hot(tmp_path_factory):
    """One hot campaign of the sample: (its seeds folder, a pool of its candidates, the seeds)."""
    split, out = dataset.load_split(HOT), tmp_path_factory.mktemp("expand_faults")
    aid = np.unique(split["stage1"]["aid"])[0]
    seeds = {k: v[split["stage1"]["aid"] == aid] for k, v in split["stage1"].items()}
    pool = {k: v[split["stage2"]["aid"] == aid] for k, v in split["stage2"].items()}
    return stage(out / "campaign", "test_stage1.npz", seeds), stage(out / "pool", "pool_stage2.npz", pool), seeds


def stage(folder, name, rows):
    """A data-folder stage: the hot split's schema.json and vocabulary, and one stage file; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for f in (dataset.SCHEMA_FILE, vocabulary.VOCAB_FILE):
        shutil.copy(os.path.join(HOT, f), folder)
    dataset.save_stage(os.path.join(folder, name), rows)
    return str(folder)


def run(sample_model, *argv):
    return cli.run(expand.main, ["-m", CONFIG, "-o", f"runner.infer_load_path={sample_model[0]}", "--top-k", "5",
                                 *map(str, argv)])


def error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err[-5:]
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


def listing(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- 3: nothing to expand from
def test_seeds_without_a_positive_are_refused(sample_model, hot, tmp_path, capsys):
    """Issue 20 #3: only negative seeds ranked the pool anyway and exited 0."""
    campaign, pool, seeds = hot
    negatives = stage(tmp_path / "negatives", "test_stage1.npz", {k: v[seeds["label"] == 0] for k, v in seeds.items()})
    assert run(sample_model, "--campaign", negatives, "--pool", os.path.join(pool, "pool_stage2.npz"),
               "--out", tmp_path / "out") == 2
    error_line(capsys, f"{negatives}: the seeds hold no positive (label 1) user, so there is nothing to expand from")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 4, 13, 18, 5: the output places
@pytest.mark.parametrize("case", ["export is a file", "out is a file", "out not empty", "export not empty",
                                  "out inside export", "export is out", "negatives inf", "negatives nan",
                                  "out cannot be written"])
def test_output_places_and_arguments_are_checked_before_any_work(sample_model, hot, tmp_path, capsys, unwritable,
                                                                 case):
    """Issue 20 #4, #13, #18, #5: `--export FILE` was a traceback after the whole run, leaving a top_k.csv without
    expand.json; `--out FILE` a FileExistsError after the whole run; a non-empty --out or --export was written
    into in silence; --negatives inf / nan were OverflowError / ValueError tracebacks; an --out that cannot be
    written failed after all the work."""
    campaign, pool, _ = hot
    out, model = tmp_path / "out", tmp_path / "model"
    options = ["--out", out, "--export", model]
    says = {"export is a file": f"{model}: exists and is not a folder; give --export a folder",
            "out is a file": f"{out}: exists and is not a folder; give --out a folder",
            "out not empty": f"{out}: not empty; choose another --out, or pass --force (its top_k.csv, expand.json, "
                             "expand.png, all_scores.npy are replaced, nothing else)",
            "export not empty": f"{model}: not empty; choose another --export, or pass --force (it is replaced whole)",
            "out inside export": f"{model / 'out'}: lies inside --export {model}, which is replaced whole",
            "export is out": f"{out}: lies inside --export {out}",
            "negatives inf": "--negatives is inf; give a finite number above 0",
            "negatives nan": "--negatives is nan; give a finite number above 0",
            "out cannot be written": f"{out}: cannot be written ("}[case]
    if case == "export is a file":
        model.write_text("mine")
    elif case == "out is a file":
        out.write_text("mine")
    elif case == "out not empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "export not empty":
        model.mkdir()
        (model / "notes.txt").write_text("mine")
    elif case == "out inside export":
        options = ["--out", model / "out", "--export", model]
    elif case == "export is out":
        options = ["--out", out, "--export", out]
    elif case.startswith("negatives"):
        options += ["--negatives", case.split()[1]]
    else:
        unwritable(out)
    before = {p: listing(p) if p.is_dir() else p.read_text() for p in (out, model) if p.exists()}
    assert run(sample_model, "--campaign", campaign, "--pool", os.path.join(pool, "pool_stage2.npz"), *options) == 2
    error_line(capsys, says)
    assert {p: listing(p) if p.is_dir() else p.read_text() for p in (out, model) if p.exists()} == before


def test_force_replaces_expands_own_outputs_and_keeps_the_rest(sample_model, hot, tmp_path, capsys):
    """Issue 20 #18: with --force, top_k.csv, expand.json (and an old all_scores.npy) are replaced together,
    the export folder is replaced whole, and foreign files in --out stay."""
    campaign, pool, _ = hot
    out = tmp_path / "out"
    argv = ("--campaign", campaign, "--pool", os.path.join(pool, "pool_stage2.npz"), "--out", out)
    assert run(sample_model, *argv, "--all-scores", "--export", out / "model") == 0
    png = ["expand.png"] if importlib.util.find_spec("matplotlib") else []  # the chart needs matplotlib
    assert listing(out) == ["all_scores.npy", "expand.json", *png, "model", "top_k.csv"]
    (out / "notes.txt").write_text("mine")
    (out / "model" / "old.txt").write_text("an old export's")
    first = (out / "top_k.csv").read_text()
    assert run(sample_model, *argv, "--export", out / "model") == 2
    assert run(sample_model, *argv, "--export", out / "model", "--force", "-o", "runner.seed=7") == 0
    assert listing(out) == ["expand.json", *png, "model", "notes.txt", "top_k.csv"]  # the old all_scores.npy went
    assert (out / "notes.txt").read_text() == "mine" and not (out / "model" / "old.txt").exists()
    assert (out / "top_k.csv").read_text() != first and json.loads((out / "expand.json").read_text())["top_k"] == 5


def test_outputs_land_together_or_not_at_all(tmp_path):
    """The outputs are staged beside their places: a failure before the end leaves every place as it was."""
    out, model = tmp_path / "out", tmp_path / "elsewhere" / "model"
    out.mkdir()
    (out / "top_k.csv").write_text("old")
    outputs = Outputs(force=True)
    outputs.files(out, ("top_k.csv", "expand.json"), "--out")
    outputs.folder(model, "--export")
    outputs.check()
    with pytest.raises(RuntimeError):
        with outputs:
            (open(outputs.staged(out / "top_k.csv"), "w")).write("new")
            os.makedirs(outputs.staged(model))
            raise RuntimeError("the export failed")
    assert listing(out) == ["top_k.csv"] and (out / "top_k.csv").read_text() == "old"
    assert not (tmp_path / "elsewhere").exists()
    with outputs:
        open(outputs.staged(out / "top_k.csv"), "w").write("new")
        open(outputs.staged(out / "expand.json"), "w").write("{}")
        os.makedirs(outputs.staged(model))
    assert listing(out) == ["expand.json", "top_k.csv"] and (out / "top_k.csv").read_text() == "new"
    assert listing(tmp_path / "elsewhere") == ["model"]


# ---------------------------------------------------------------- 16: unknown ids counted once
def test_unknown_pool_ids_are_counted_once_with_positive_only_seeds(sample_model, hot, tmp_path, capsys):
    """Issue 20 #16: with positive-only seeds the raw pool was encoded twice (negatives, then scoring) and
    expand.json counted its unknown ids twice ("4.2% of kw1 ids (12812)" against 6,406)."""
    campaign, _, seeds = hot
    positives = stage(tmp_path / "positives", "test_stage1.npz", {k: v[seeds["label"] == 1] for k, v in seeds.items()})
    vocab = ckpt.vocabulary(str(sample_model[0] / "0"))
    rng = np.random.default_rng(5)
    lines, seen, unknown = [], dict.fromkeys(vocabulary.FIELDS, 0), dict.fromkeys(vocabulary.FIELDS, 0)
    for user in range(300):
        groups = []
        for field, count in (("age", 1), ("LBS", 1), ("kw1", 3), ("interest2", 2)):
            known = rng.choice(vocab[field][1:], count)
            ids = np.where(rng.random(count) < 0.3, vocab[field][-1] + 1 + rng.integers(0, 50, count), known)
            groups.append(f"{field} " + " ".join(map(str, ids)))
            seen[field] += count
            unknown[field] += int((~np.isin(ids, vocab[field])).sum())
        lines.append(f"uid {10**8 + user}|" + "|".join(groups))
    pool = tmp_path / "userFeature.data"
    pool.write_text("\n".join(lines) + "\n")
    assert unknown["kw1"] > 100
    out = tmp_path / "out"
    assert run(sample_model, "--campaign", positives, "--pool", pool, "--out", out, "--negatives", "1") == 0
    assert "negatives drawn from background users" in capsys.readouterr().out
    counted = json.loads((out / "expand.json").read_text())["unknown_ids"]["pool"]
    assert counted == {f: {"ids": seen[f], "unknown": unknown[f]} for f in vocabulary.FIELDS}


def test_background_users_that_are_all_seeds_leave_the_quality_unestimated_and_say_why(sample_model, hot, tmp_path,
                                                                                         capsys):
    """The background users the quality estimate compares held-out seeds with exclude the seeds; when none is
    left (found with tools/bench/expand.py speed, whose training users are all among the campaign's seeds),
    np.quantile of nothing was an IndexError traceback. Now the expansion is made, and says why it has no
    quality estimate."""
    campaign, pool, _ = hot
    out, pool = tmp_path / "out", os.path.join(pool, "pool_stage2.npz")
    background = os.path.join(campaign, "test_stage1.npz")  # every background user is a seed
    assert run(sample_model, "--campaign", campaign, "--pool", pool, "--out", out, "--background", background) == 0
    said = capsys.readouterr()
    assert "quality: not estimated: every background user is a seed or a drawn negative" in said.out, said.out
    assert "--background FILE" in said.out and "Traceback" not in said.err and "rror" not in said.err
    summary = json.loads((out / "expand.json").read_text())
    assert summary["quality"] is None and "every background user" in summary["quality_not_estimated"]
    assert len(np.loadtxt(out / "top_k.csv", delimiter=",", skiprows=1, ndmin=2)) == 5
    assert run(sample_model, "--campaign", campaign, "--pool", pool, "--out", tmp_path / "other", "--background",
               pool) == 0  # other users: estimated
    summary = json.loads((tmp_path / "other" / "expand.json").read_text())
    assert summary["quality"]["folds"] == 5 and summary["quality_not_estimated"] is None
