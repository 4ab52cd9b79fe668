"""The contract between a model folder and the tools (tools/utils/run/contract.py): every model folder of the
project keeps it, a folder that does not is one line naming the hook, and a new folder with a hyper-parameter of
its own trains and infers through the tools unchanged."""
import inspect
import json
import os
import re

import numpy as np
import pytest

import reader_test
import reader_train
from helpers import ROOT, assert_one_line_error, fake_model_folder, reader_config, run, write_split
from tools.utils.errors import CheckpointError, ConfigError
from tools.utils.run import config as cfg
from tools.utils.run import contract, model_folder, trained

FOLDERS = [ROOT] + sorted(os.path.join(ROOT, "models", name) for name in os.listdir(os.path.join(ROOT, "models"))
                          if os.path.isfile(os.path.join(ROOT, "models", name, "dygraph_model.py"))) \
    + [os.path.join(ROOT, "tests", "fake_model")]


def folder_config(folder):
    return {"model_dir": folder, "config_path": os.path.join(folder, "config.yaml")}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: os.path.relpath(f, ROOT))
def test_every_model_folder_keeps_the_contract(folder):
    model = model_folder.load_model(folder_config(folder))
    hooks = model.hooks
    inside = os.path.relpath(folder, ROOT)  # a project folder's module has its ordinary name, one module however reached
    assert type(hooks).__module__ == ".".join(([] if inside == "." else inside.split(os.sep)) + ["dygraph_model"])
    for name in contract.REQUIRED_HOOKS:
        if name == "train_forward" and not model.trains_across_campaigns:
            assert model.train_forward is None
            continue
        wanted = [p.name for p in inspect.signature(getattr(contract.ModelHooks, name)).parameters.values()][1:]
        got = [p.name for p in inspect.signature(getattr(hooks, name)).parameters.values()]
        assert got[:len(wanted)] == wanted, (name, got)  # the same parameters, in order (more may follow, defaulted)
    for name in ("fit_campaign", "campaign_net"):  # an optional hook, when given, takes the contract's arguments
        if getattr(model, name) is not None:
            wanted = [p.name for p in inspect.signature(getattr(contract.OptionalHooks, name)).parameters.values()]
            assert [p.name for p in inspect.signature(getattr(model, name)).parameters.values()] == wanted[1:]
    for key, (kind, default, meaning) in model.HYPER_PARAMETERS.items():
        assert isinstance(kind, str) and isinstance(meaning, str) and meaning, key
    assert model.source == os.path.relpath(os.path.join(folder, "dygraph_model.py"))


def test_the_readers_keep_the_contract(tmp_path):
    data = write_split(tmp_path / "train", {1: 30, 2: 20, 3: 10}, {1: 12, 2: 8})
    assert isinstance(reader_train, contract.TrainReaderModule) and isinstance(reader_test, contract.TestReaderModule)
    train = reader_train.RecDataset({**reader_config(), "runner": {"train_batch_size": 8, "seed": 7,
                                                                   "valid_campaigns": 1}}, data)
    assert isinstance(train, contract.TrainReader) and list(train.valid_campaigns) != []
    test = reader_test.RecDataset(reader_config(), data)
    assert isinstance(test, contract.TestReader) and test.skipped == [(3, "no stage-2 rows (candidates) to score")]
    assert not isinstance(object(), contract.TrainReader)


def test_a_model_without_a_hook_or_with_a_wrong_one_is_named():
    class Partial:
        HYPER_PARAMETERS = {}

        def create_model(self, config):
            return None

        def create_loss(self, pred):  # the tools pass (pred, label)
            return pred

    with pytest.raises(ConfigError) as caught:
        contract.Model(Partial(), "mine/dygraph_model.py")
    message = str(caught.value)
    assert message.startswith("mine/dygraph_model.py: DygraphModel: no create_feeds; create_loss must take "
                              "(pred, label); no create_optimizer; no train_forward;")
    assert "tools/utils/run/contract.py (ModelHooks)" in message

    class OneStage(Partial):
        trains_across_campaigns = False  # nothing trained across campaigns: train_forward is not needed

    assert "no train_forward" not in str(pytest.raises(ConfigError, contract.Model, OneStage(), "x").value)
    with pytest.raises(ConfigError, match=r"^reader\.py: has no batches; a reader gives the members of "
                                          r"tools/utils/run/contract.py \(TestReaderModule\)$"):
        contract.require(reader_train, contract.TestReaderModule, "reader.py")


def test_a_folder_that_breaks_the_contract_is_one_line_from_the_trainer(tmp_path):
    folder = fake_model_folder(tmp_path / "broken")
    source = (folder / "dygraph_model.py").read_text()
    (folder / "dygraph_model.py").write_text(source.replace("def infer_forward(self, net, batch, config):",
                                                            "def infer_forward(self, net, batch):"))
    done = run("trainer.py", folder)
    assert_one_line_error(done, "dygraph_model.py: DygraphModel: infer_forward must take (net, batch, config)")
    assert not (folder / "out").exists()


NEW_MODEL = '''

class DygraphModel(FakeModel):
    """The fake model with a hyper-parameter of its own: an L2 penalty on the weights in meta-training."""

    HYPER_PARAMETERS = {**FakeModel.HYPER_PARAMETERS,
                        "l2_penalty": ("number >= 0", 0.0, "L2 penalty on the weights in meta-training")}

    def train_forward(self, net, meta_batch, config):
        loss, metrics = super().train_forward(net, meta_batch, config)
        penalty = config["hyper_parameters"]["l2_penalty"] * (net.weight ** 2).sum()
        return loss + penalty, {**metrics, "penalty": float(penalty)}
'''


def test_a_new_model_folder_with_a_key_of_its_own_runs_through_the_tools_unchanged(tmp_path):
    """The done-when of issue 22: the folder declares l2_penalty, which no folder of the project has; the trainer
    checks it, trains with it and reports its metric, meta-inference tests the checkpoint."""
    for folder in FOLDERS:
        assert "l2_penalty" not in model_folder.load_model(folder_config(folder)).HYPER_PARAMETERS
    folder = fake_model_folder(tmp_path / "mine")
    source = (folder / "dygraph_model.py").read_text().replace("class DygraphModel:", "class FakeModel:")
    (folder / "dygraph_model.py").write_text(source + NEW_MODEL)
    config = (folder / "config.yaml").read_text().replace("hyper_parameters:\n", "hyper_parameters:\n"
                                                                                "  l2_penalty: 0.01\n")
    (folder / "config.yaml").write_text(config)
    bad = run("trainer.py", folder, "-o", "hyper_parameters.l2_penalty=-1")
    assert_one_line_error(bad, "-o hyper_parameters.l2_penalty must be a number >= 0, got -1")
    training = run("trainer.py", folder)
    assert training.returncode == 0, training.stderr
    assert re.search(r"^epoch 1: loss \d\.\d{4}, penalty \d+\.\d{4}; ", training.stdout, re.M), training.stdout
    tested = run("infer_meta.py", folder, "--split", "both")
    assert tested.returncode == 0, tested.stderr
    assert "test_hot" in tested.stdout and "test_cold" in tested.stdout
    meta = json.loads((folder / "out" / "1" / "meta.json").read_text())
    assert meta["identity"]["hyper_parameters"]["l2_penalty"] == 0.01
    assert meta["stats"]["penalty"] > 0 and set(meta["stats"]) >= {"loss", "penalty"}

    # the tools that read a checkpoint load it one way (tools/utils/run/trained.py): its data facts, its weights
    config = cfg.load_config(str(folder / "config.yaml"))
    model = model_folder.load_model(config)
    spec = cfg.validate(config, "infer", model)
    config, path, read = trained.checkpoint(spec, 1, "make it")
    assert path == str(folder / "out" / "1") and read == meta
    assert config["data_schema"] == meta["data_schema"] and config["train_campaigns"] == [1, 2, 3, 4, 5]
    net, params = trained.load_trained(model, config, path)
    with np.load(folder / "out" / "1" / "params.npz") as saved:
        assert sorted(saved.files) == sorted(params) == sorted(net.state_dict())
        for name, value in net.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), saved[name])
    with pytest.raises(CheckpointError, match=r"out/2: no finished checkpoint of epoch 2 .*`make it`"):
        trained.checkpoint(spec, 2, "make it")
