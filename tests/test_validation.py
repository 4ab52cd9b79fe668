"""Validation campaigns during meta-training (tools/utils/run/validation.py): held out of training, scored with the
test protocol, the best checkpoint kept and early stopping, checked on the fake model folder."""
import json
import os

import numpy as np
import pytest

from helpers import fake_model_folder, run, write_split
from tools.utils.data import dataset

VALID = ["runner.valid_campaigns=2", "runner.valid_interval=2", "runner.valid_patience=3", "runner.epochs=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = fake_model_folder(tmp_path_factory.mktemp("valid_model"))
    train = folder / "data" / "train"
    for name in os.listdir(train):
        os.remove(train / name)
    rows = {1: 120, 2: 80, 3: 60, 4: 50, 5: 40, 6: 60}
    write_split(train, rows, {aid: 80 for aid in rows}, seed=1)  # training campaigns with candidates
    done = run("trainer.py", folder, "-o", *VALID)
    assert done.returncode == 0, done.stderr
    return folder, done


def validation_split(folder, best, out):
    """The validation campaigns of a checkpoint's meta (the training campaigns it was not trained on) as a test
    folder at `out`; returns their aids."""
    held = sorted(set(range(1, 7)) - set(best["train_campaigns"]))
    split = dataset.load_split(str(folder / "data" / "train"))
    out.mkdir()
    dataset.write_schema(str(out), split["schema"]["max_idxs"])
    for k in (1, 2):
        rows = np.flatnonzero(np.isin(split[f"stage{k}"]["aid"], held))
        dataset.save_stage(str(out / f"test_stage{k}.npz"), dataset.take(split[f"stage{k}"], rows))
    return held


def test_early_stopping_keeps_the_checkpoint_of_the_best_validation_gauc(trained, tmp_path):
    folder, done = trained
    best = json.loads((folder / "out" / "best" / "meta.json").read_text())
    history = best["validation"]
    gaucs = [h["gauc"] for h in history]
    top = int(np.argmax(gaucs))  # the first of the best
    assert best["best_at"] == {"epoch": history[top]["epoch"], "step": history[top]["step"]}
    final = json.loads(max((folder / "out").glob("*/meta.json"), key=os.path.getmtime).read_text())["validation"]
    assert final[:len(history)] == history
    assert "stopped early" in done.stdout  # this run (seeded) stops: 3 validations after the best, none better
    assert len(final) - 1 - int(np.argmax([h["gauc"] for h in final])) == 3 and max(gaucs) == max(
        h["gauc"] for h in final)
    # the saved weights give that GAUC again when meta-inference tests them on the validation campaigns
    held = validation_split(folder, best, tmp_path / "valid")
    assert len(held) == 2
    again = run("infer_meta.py", folder, "--best", "-o", f"runner.test_data_dir={tmp_path / 'valid'}",
                f"runner.infer_output_path={tmp_path / 'results'}")
    assert again.returncode == 0, again.stderr
    result = json.loads((tmp_path / "results" / "metrics_valid.json").read_text())[0]
    assert result["overall"]["gauc"] == pytest.approx(history[top]["gauc"], abs=1e-12)


def test_validation_follows_the_test_protocol_of_infer_seeds(trained, tmp_path):
    """With runner.infer_seeds positive, the validation campaigns are adapted as infer_meta adapts a test campaign
    under it (clicking seeds, background negatives): the best checkpoint's recorded GAUC is what infer_meta
    --best gives on them with the same protocol, and differs from the labelled protocol's."""
    folder, _ = trained
    out = tmp_path / "positive"
    done = run("trainer.py", folder, "-o", *VALID, "runner.infer_seeds=positive", f"runner.model_save_path={out}")
    assert done.returncode == 0, done.stderr
    best = json.loads((out / "best" / "meta.json").read_text())
    top = max(best["validation"], key=lambda h: (h["gauc"], -h["at"]))
    validation_split(folder, best, tmp_path / "valid")
    gauc = {}
    for protocol in ("positive", "labelled"):
        again = run("infer_meta.py", folder, "--best", "-o", f"runner.infer_load_path={out}",
                    f"runner.test_data_dir={tmp_path / 'valid'}", f"runner.infer_seeds={protocol}",
                    f"runner.infer_output_path={tmp_path / protocol}")
        assert again.returncode == 0, again.stderr
        gauc[protocol] = json.loads((tmp_path / protocol / "metrics_valid.json").read_text())[0]["overall"]["gauc"]
    assert gauc["positive"] == pytest.approx(top["gauc"], abs=1e-12) and gauc["labelled"] != gauc["positive"]
    refused = run("trainer.py", folder, "-o", *VALID, f"runner.model_save_path={out}", "runner.epochs=5")
    assert refused.returncode == 2 and "valid_infer_seeds" in refused.stderr, refused.stderr


def test_a_rerun_after_early_stopping_trains_nothing_and_best_needs_validation(trained):
    folder, _ = trained
    again = run("trainer.py", folder, "-o", *VALID)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    missing = run("infer_meta.py", folder, "--best", "-o", "runner.infer_load_path=elsewhere")
    assert missing.returncode == 2 and "no best checkpoint" in missing.stderr


def test_after_early_stopping_a_missing_epoch_points_to_the_best_checkpoint(trained):
    """The epochs after an early stop are never made, and retraining them is refused: the tools say to test
    the best checkpoint instead of giving a trainer command that cannot work."""
    folder, _ = trained
    out = folder / "out"
    for argv in (["infer_meta.py", folder, "-o", "runner.infer_start_epoch=3", "runner.infer_end_epoch=4"],
                 ["gates.py", folder, "--epoch", "3"]):
        done = run(*argv)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert f"{out / '3'}: no checkpoint of epoch 3: the training stopped early" in done.stderr, done.stderr
        assert f"test its best checkpoint, {out / 'best'}" in done.stderr and "--best" in done.stderr
    best = run("gates.py", folder, "--epoch", "best")  # taken: the fake model then has no gates to show
    assert best.returncode == 2 and "has no expert and critic gates" in best.stderr, best.stderr



def test_a_fraction_of_validation_campaigns_that_leaves_none_to_train_names_the_option_and_the_rounding(trained,
                                                                                                       tmp_path):
    folder, _ = trained
    done = run("trainer.py", folder, "-o", "runner.valid_campaigns=0.999", f"runner.model_save_path={tmp_path}")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "error: -o runner.valid_campaigns: 0.999 of 6 campaigns rounds to 6 validation campaigns" in done.stderr


def test_holding_out_too_many_campaigns_for_task_count_names_the_hold_out(trained, tmp_path):
    folder, _ = trained
    done = run("trainer.py", folder, "-o", "runner.valid_campaigns=4", f"runner.model_save_path={tmp_path}")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "2 campaigns in the stage-1 data once -o runner.valid_campaigns holds 4 out" in done.stderr
    assert "or hold out fewer (-o runner.valid_campaigns)" in done.stderr



@pytest.mark.parametrize("stage", [1, 2])
def test_positive_validation_on_data_without_uids_is_refused_before_overwrite_deletes_anything(trained, tmp_path,
                                                                                                stage):
    folder, _ = trained
    copy = tmp_path / "train"
    copy.mkdir()
    split = dataset.load_split(str(folder / "data" / "train"))
    dataset.write_schema(str(copy), split["schema"]["max_idxs"])
    for k in (1, 2):
        rows = split[f"stage{k}"]
        dataset.save_stage(str(copy / f"train_stage{k}.npz"),
                           {n: a for n, a in rows.items() if n != "uid" or k != stage})
    before = sorted(os.listdir(folder / "out"))
    done = run("trainer.py", folder, "--overwrite", "-o", *VALID, "runner.infer_seeds=positive",
               f"runner.train_data_dir={copy}")
    assert done.returncode == 2 and f"train_stage{stage}.npz: no uid array" in done.stderr, done.stderr
    assert sorted(os.listdir(folder / "out")) == before  # --overwrite deleted nothing
