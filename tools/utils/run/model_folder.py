"""Loading a model folder's modules: its dygraph_model.py and the readers its config names, checked against the
contract (tools/utils/run/contract.py).

Inside this project a module is imported by its ordinary name (net.py at the
top is `net`, models/mmoe/dygraph_model.py is `models.mmoe.dygraph_model`),
so a file is one module however it is reached. A folder outside the project
(a model of the user's own) is imported as a package of its own, named after
its path: its modules import each other relatively (`from . import net`) and
the project's modules by name.
"""
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys

from . import contract
from ..errors import ConfigError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # the project, above tools/utils/run


def load_module(path, config_path):
    """The module of the file `path` (.py may be left out); config_path names who asked for it in errors."""
    path = os.path.abspath(path if path.endswith(".py") else path + ".py")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not found; {config_path} expects this module "
                          "(check runner.train_reader_path / infer_reader_path, or the model folder)")
    folder, stem = os.path.split(path)
    inside = os.path.relpath(folder, ROOT)
    parts = [] if inside == "." else inside.split(os.sep)
    if parts and parts[0] != ".." and all(p.isidentifier() for p in parts + [stem[:-3]]):
        return importlib.import_module(".".join(parts + [stem[:-3]]))
    if not parts:
        return importlib.import_module(stem[:-3])
    return importlib.import_module(f"{_folder_package(folder)}.{stem[:-3]}")


def _folder_package(folder):
    """A package whose __path__ is `folder`, registered once under a name made from the path."""
    name = "model_folder_" + hashlib.sha1(folder.encode()).hexdigest()[:12]
    if name not in sys.modules:
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None, is_package=True))
        package.__path__ = [folder]
        sys.modules[name] = package
    return name


def model_module(config):
    """The model folder's dygraph_model module (config["model_dir"]), after Paddle's environment is set
    (tools/utils/paddle_env.py)."""
    from .. import paddle_env
    paddle_env.load()  # Paddle's environment, before any model module imports paddle
    if config.get("model_dir") is None:
        raise ConfigError(f"{config['config_path']}: no dygraph_model.py beside it or beside any of its base "
                          "configs; keep the config in its model folder, or give it `base: <model folder>/config.yaml`"
                          " to use that folder's model")
    return load_module(os.path.join(config["model_dir"], "dygraph_model.py"), config["config_path"])


def load_model(config):
    """The model folder's DygraphModel as the tools call it (contract.Model)."""
    module = model_module(config)
    source = os.path.relpath(module.__file__)
    if not isinstance(getattr(module, "DygraphModel", None), type):
        raise ConfigError(f"{source}: no class DygraphModel; a model folder's dygraph_model.py defines it with the "
                          "hooks of tools/utils/run/contract.py (ModelHooks)")
    return contract.Model(module.DygraphModel(), source)


def train_dataset(config, data_dir):
    """RecDataset(config, data_dir) of the reader runner.train_reader_path names: the meta-batches of the training
    data (contract.TrainReader)."""
    reader = _reader(config, "train_reader_path", contract.TrainReaderModule)
    return contract.require(reader.RecDataset(config, data_dir), contract.TrainReader,
                            f"{os.path.relpath(reader.__file__)}: RecDataset")


def test_reader(config):
    """The module runner.infer_reader_path names (contract.TestReaderModule): test_dataset and its batches."""
    return _reader(config, "infer_reader_path", contract.TestReaderModule)


def test_dataset(reader, config, data_dir):
    """reader.RecDataset(config, data_dir): the campaigns of one test folder (contract.TestReader)."""
    return contract.require(reader.RecDataset(config, data_dir), contract.TestReader,
                            f"{os.path.relpath(reader.__file__)}: RecDataset")


def _reader(config, key, protocol):
    module = load_module(config["runner"][key], config["config_path"])
    return contract.require(module, protocol, os.path.relpath(module.__file__))
