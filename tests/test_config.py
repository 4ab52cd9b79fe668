"""Config loading (tools/utils/run/config.py): typed -o overrides, `base:` inheritance with paths relative to the
file that wrote them, the runner keys declared by the tools and the hyper_parameters by the model folder, the
schema's vocabulary maxima, and a validated config that is read-only."""
import json
import os
import pickle

import pytest

from helpers import ROOT
from tools.utils.run import config as cfg
from tools.utils.data import dataset
from tools.utils.run import model_folder


@pytest.mark.parametrize("text, value", [("3", 3), ("1e-3", 0.001), ("-2.5E+2", -250.0), ("1.5", 1.5),
                                         ("False", False), ("[64, 32]", [64, 32]), ("data/x", "data/x"),
                                         ("'007'", "007"), ("{class: adam}", {"class": "adam"})])
def test_override_values_are_typed_as_yaml(text, value):
    got = cfg.parse_value(text)
    assert got == value and type(got) is type(value)


YAML = """\
runner:
  train_data_dir: data/train
  test_data_dir: data/test_hot
  model_save_path: out
  epochs: 1
hyper_parameters:
  local_lr: 2e-4
  optimizer: {class: adam, learning_rate: 0.001}
"""


def test_load_config_resolves_paths_and_applies_dotted_overrides(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.yaml").write_text(YAML)
    monkeypatch.chdir(tmp_path)
    config = cfg.load_config("model/config.yaml", ["runner.test_data_dir=elsewhere/test_cold",
                                                   "hyper_parameters.optimizer.learning_rate=5e-4",
                                                   "runner.infer_output_path=res", "runner.epochs=3"])
    runner = config["runner"]
    assert runner["train_data_dir"] == str(tmp_path / "model" / "data" / "train")  # YAML: config's folder
    assert runner["test_data_dir"] == str(tmp_path / "elsewhere" / "test_cold")    # -o: working directory
    assert runner["infer_output_path"] == str(tmp_path / "res") and runner["epochs"] == 3
    assert config["hyper_parameters"]["local_lr"] == 2e-4
    assert config["hyper_parameters"]["optimizer"] == {"class": "adam", "learning_rate": 5e-4}
    assert config["config_abs_dir"] == str(tmp_path / "model")


@pytest.mark.parametrize("text, path", [("2021", "2021"), ("runs #1", "runs #1"), ("'2022'", "2022"),
                                        ("a: b", "a: b"), ("[x]", "[x]")])
def test_an_overridden_path_is_taken_as_written(tmp_path, monkeypatch, text, path):
    """A folder named 2021 is a path, not a number, and '#' is part of a name, not a YAML comment."""
    monkeypatch.chdir(tmp_path)
    config = cfg.load_config(os.path.join(ROOT, "config.yaml"), [f"runner.infer_output_path={text}"])
    assert config["runner"]["infer_output_path"] == str(tmp_path / path)


@pytest.mark.parametrize("item, message", [
    ("runner.epoch=2", r"runner.epoch: no such key; did you mean runner.epochs\?"),
    ("hyper_parameters.optimizer=2", r"hyper_parameters.optimizer: a section, not a value"),
    ("runner.epochs", r"expected key=value"),
    ("runner.epochs=[1", r"not valid YAML"),
])
def test_bad_overrides_are_clear_errors(tmp_path, item, message):
    (tmp_path / "config.yaml").write_text(YAML)
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(str(tmp_path / "config.yaml"), [item])


YAML_KEYS = ("local_lr", "optimizer.class", "optimizer.learning_rate")  # the hyper_parameters YAML sets


class Needs:
    """A model (contract.Model) that declares these hyper_parameters as MetaHeac does, from this file."""

    source = os.path.relpath(__file__)

    def __init__(self, *keys):
        import dygraph_model
        self.HYPER_PARAMETERS = {key: dygraph_model.HYPER_PARAMETERS[key] for key in keys}


def test_values_are_checked_on_load_and_needed_keys_by_tool(tmp_path):
    (tmp_path / "config.yaml").write_text(YAML)
    path = str(tmp_path / "config.yaml")
    with pytest.raises(cfg.ConfigError, match=r"^-o runner.epochs must be an integer >= 1, got -1 .*; pass -o"):
        cfg.load_config(path, ["runner.epochs=-1"])  # blamed on -o, not on the file
    (tmp_path / "bad.yaml").write_text(YAML.replace("epochs: 1", "epochs: True"))
    with pytest.raises(cfg.ConfigError, match=r"bad.yaml: runner.epochs must be an integer >= 1, got True .*fix the"):
        cfg.load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(cfg.ConfigError, match=r"runner.seed is missing \(the seed of everything\)"):
        cfg.validate(cfg.load_config(path, ["runner.train_reader_path=r"]), "train", Needs())
    with pytest.raises(cfg.ConfigError, match=r"hyper_parameters.embed_dim is missing"):
        cfg.validate(cfg.load_config(path, ["runner.seed=1", "runner.train_batch_size=4",
                                            "runner.train_reader_path=r"]), "train", Needs(*YAML_KEYS, "embed_dim"))
    config = cfg.validate(cfg.load_config(path, ["runner.seed=1", "runner.train_batch_size=4",
                                                 "runner.train_reader_path=r"]), "train",
                          Needs(*YAML_KEYS, "meta_order"))
    assert config["hyper_parameters"]["meta_order"] == 2 and config["runner"]["thread_num"] == 2  # defaults
    with pytest.raises(cfg.ConfigError, match=r"no such config file"):
        cfg.load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(cfg.ConfigError, match=r"reader_x.py: not found"):
        model_folder.load_module(str(tmp_path / "reader_x"), path)


def test_hyper_parameters_are_the_model_folders(tmp_path):
    """The model declares its keys: its kinds are checked, a key it does not declare is refused where the config or
    -o sets it and left out where a base sets it."""
    (tmp_path / "config.yaml").write_text(YAML)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("base: ../config.yaml\nhyper_parameters:\n  embed_dim: 4\n")
    runner = ["runner.seed=1", "runner.train_batch_size=4", "runner.train_reader_path=r"]
    model = Needs("embed_dim", "optimizer.learning_rate")
    config = cfg.validate(cfg.load_config(str(tmp_path / "m" / "config.yaml"), runner), "train", model)
    assert config["hyper_parameters"] == {"embed_dim": 4, "optimizer": {"learning_rate": 0.001}}  # base's dropped
    with pytest.raises(cfg.ConfigError, match=r"^-o hyper_parameters.local_lr: no such key; .*this model's "
                                              r"hyper_parameters are declared in tests/test_config.py "
                                              r"\(HYPER_PARAMETERS: embed_dim, optimizer.learning_rate\)$"):
        cfg.validate(cfg.load_config(str(tmp_path / "m" / "config.yaml"), runner + ["hyper_parameters.local_lr=1"]),
                     "train", model)
    (tmp_path / "m" / "config.yaml").write_text("base: ../config.yaml\nhyper_parameters:\n  embed_dims: 4\n")
    with pytest.raises(cfg.ConfigError, match=r"m/config.yaml: unknown key 'hyper_parameters.embed_dims'; "
                                              r"did you mean hyper_parameters.embed_dim\?"):
        cfg.validate(cfg.load_config(str(tmp_path / "m" / "config.yaml"), runner), "train", model)
    with pytest.raises(cfg.ConfigError, match=r"^-o hyper_parameters.embed_dim must be an integer >= 1, got 0.5"):
        cfg.validate(cfg.load_config(str(tmp_path / "config.yaml"), runner + ["hyper_parameters.embed_dim=0.5"]),
                     "train", Needs(*YAML_KEYS, "embed_dim"))
    with pytest.raises(cfg.ConfigError, match=r"must be one of 1 \| 2, got 3"):
        cfg.validate(cfg.load_config(str(tmp_path / "config.yaml"), runner + ["hyper_parameters.meta_order=3"]),
                     "train", Needs(*YAML_KEYS, "meta_order"))


def test_a_config_kept_elsewhere_names_its_model_folder_by_its_base(tmp_path):
    (tmp_path / "mine.yaml").write_text(f"base: {ROOT}/models/lr/config.yaml\nrunner:\n  epochs: 3\n")
    config = cfg.load_config(str(tmp_path / "mine.yaml"))
    assert config["model_dir"] == os.path.join(ROOT, "models", "lr") and config["runner"]["epochs"] == 3
    assert config["runner"]["train_data_dir"] == os.path.join(ROOT, "data", "train")  # the base's paths stay its own
    (tmp_path / "copy.yaml").write_text((tmp_path / "mine.yaml").read_text().split("\n", 1)[1])
    with pytest.raises(cfg.ConfigError, match=r"copy.yaml: no dygraph_model.py beside it .* `base: <model folder>"):
        model_folder.model_module(cfg.load_config(str(tmp_path / "copy.yaml")))


@pytest.mark.parametrize("kind, good, bad", [
    ("int >= 0", [0, 7], [-1, 1.5, True, "3"]), ("number > 0", [1e-4, 3], [0, -1, float("nan"), float("inf"), True]),
    ("number >= 0", [0, 0.5], [-1e-9]), ("one of a | 2", ["a", 2], ["b", 3, True]), ("bool", [True], [1, "True"]),
    ("int list >= 1", [[1], [64, 64]], [[], [0], [1.5], 3]), ("text", ["x"], ["", 3]),
])
def test_declared_kinds(kind, good, bad):
    check = cfg.kind_check(kind)
    assert all(check(v) is None for v in good) and all(check(v) for v in bad)


def test_base_configs_are_inherited_with_paths_relative_to_the_file_that_wrote_them(tmp_path):
    (tmp_path / "config.yaml").write_text(YAML)
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.yaml").write_text(
        "base: ../../config.yaml\nrunner:\n  model_save_path: out_m\nhyper_parameters:\n  optimizer:\n"
        "    learning_rate: 0.01\n")
    config = cfg.load_config(str(tmp_path / "models" / "m" / "config.yaml"))
    assert config["runner"]["train_data_dir"] == str(tmp_path / "data" / "train")
    assert config["runner"]["model_save_path"] == str(tmp_path / "models" / "m" / "out_m")
    assert config["hyper_parameters"]["optimizer"] == {"class": "adam", "learning_rate": 0.01}
    assert config["hyper_parameters"]["local_lr"] == 2e-4


def test_schema_gives_max_idxs_and_explicit_lists_must_match(tmp_path):
    split = tmp_path / "data" / "train"
    split.mkdir(parents=True)
    dataset.write_schema(str(split), {"static": [5] * 7, "dynamic": [9] * 7, "ad": [3] * 6})
    (tmp_path / "config.yaml").write_text(YAML.replace("  local_lr:", "  max_idxs: schema\n  local_lr:"))
    loaded = cfg.load_config(str(tmp_path / "config.yaml"), ["runner.seed=1", "runner.train_batch_size=4",
                                                             "runner.train_reader_path=r"])
    spec = cfg.validate(loaded, "train", Needs(*YAML_KEYS, "max_idxs"))
    assert "thread_num" not in loaded["runner"] and spec["runner"]["thread_num"] == 2  # filled in the spec only
    config = cfg.with_data(spec, str(split), schema=dataset.read_schema(str(split)), train_campaigns=[3, 1])
    assert config["hyper_parameters"]["max_idxs"] == [[5] * 7, [9] * 7, [3] * 6]
    assert config["data_schema"]["dynamic_widths"] == [10, 10, 10, 5, 5, 5, 5] and config["train_campaigns"] == [3, 1]
    # the run spec stays as validated, and neither it nor the config made from it can be changed in place
    assert spec["hyper_parameters"]["max_idxs"] == "schema" and "data_schema" not in spec
    for change in (lambda: spec["runner"].update(seed=3), lambda: config["hyper_parameters"]["max_idxs"][0].append(1),
                   lambda: config.__setitem__("train_campaigns", []), lambda: config["data_schema"].pop("ad_fields")):
        with pytest.raises(TypeError, match=r"a validated config is read-only .*\(with_data\)"):
            change()
    assert json.loads(json.dumps(config)) == config and pickle.loads(pickle.dumps(config)) == config
    other = cfg.load_config(str(tmp_path / "config.yaml"), ["hyper_parameters.max_idxs=[[4,4,4,4,4,4,4],"
                                                           "[9,9,9,9,9,9,9],[3,3,3,3,3,3]]"])
    with pytest.raises(cfg.ConfigError, match=r"max_idxs is \[\[4, 4, .* but .*train has \[\[5, 5"):
        cfg.with_data(other, str(split), schema=dataset.read_schema(str(split)))
