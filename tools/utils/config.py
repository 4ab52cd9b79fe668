"""The YAML config of a model folder: loading, `-o key=value` overrides, checks.

Path rule: relative paths written in the YAML (data folders, model_save_path,
infer_load_path, infer_output_path) are relative to the config file's folder,
so a model folder works from any working directory; paths given with `-o`
are relative to the working directory, like any command-line argument.
"""
import argparse
import difflib
import importlib.util
import os
import re
import sys

import yaml

from .dataset import SCHEMA_FILE, max_idxs_list, read_schema

PATH_KEYS = ("train_data_dir", "test_data_dir", "model_save_path", "infer_load_path", "infer_output_path")
# Keys an override may add although the YAML does not have them.
OPTIONAL_KEYS = {("runner", "infer_output_path")}

# runner keys the tools read: name -> (type, smallest allowed value or None).
RUNNER_KEYS = {
    "train_data_dir": (str, None), "train_reader_path": (str, None),
    "test_data_dir": (str, None), "infer_reader_path": (str, None),
    "model_save_path": (str, None), "infer_load_path": (str, None),
    "use_gpu": (bool, None), "seed": (int, 0), "thread_num": (int, 1),
    "train_batch_size": (int, 1), "infer_batch_size": (int, 1), "epochs": (int, 0),
    "print_interval": (int, 1), "infer_start_epoch": (int, 0), "infer_end_epoch": (int, 0),
    "infer_train_epoch": (int, 0),
}
TRAIN_KEYS = ("train_data_dir", "train_reader_path", "model_save_path", "use_gpu", "seed",
              "thread_num", "train_batch_size", "epochs", "print_interval")
INFER_KEYS = ("test_data_dir", "infer_reader_path", "infer_load_path", "use_gpu", "seed",
              "thread_num", "infer_batch_size", "infer_start_epoch", "infer_end_epoch",
              "infer_train_epoch")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key and the fix."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2 does; PyYAML's YAML 1.1 gives a string)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+.0123456789"))


def argument_parser(description):
    """The -m CONFIG and -o KEY=VALUE options of the tools (PaddleRec's spelling)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-m", "--config_yaml", required=True, metavar="CONFIG",
                        help="the YAML config of a model folder")
    parser.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. -o runner.epochs=2 hyper_parameters.local_lr=1e-4")
    return parser


def parse_value(text):
    """A command-line value typed as YAML: 3 -> int, 1e-3 -> float, False -> bool, [1, 2] -> list."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"-o value {text!r} is not valid YAML ({e}); quote strings with special characters")


def load_config(path, overrides=()):
    """Read a YAML config, resolve its paths and apply `key=value` overrides (dotted keys).

    Adds config_abs_dir (the config's folder, PaddleRec's name) and config_path.
    `hyper_parameters.max_idxs: schema` is replaced by the vocabulary maxima of
    the schema.json of runner.train_data_dir (or test_data_dir when there is
    no train_data_dir), for data whose vocabulary is not known in advance.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file; pass the YAML of a model folder with -m")
    try:
        with open(path) as f:
            config = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    for section in ("runner", "hyper_parameters"):
        if not isinstance(config, dict) or not isinstance(config.get(section), dict):
            raise ConfigError(f"{path}: needs a '{section}:' section (a mapping of keys to values)")
    config_dir = os.path.dirname(os.path.abspath(path))
    _resolve_paths(config["runner"], config_dir)
    for item in overrides:
        apply_override(config, item, path)
    config["config_abs_dir"] = config_dir
    config["config_path"] = os.path.abspath(path)
    if config["hyper_parameters"].get("max_idxs") == "schema":
        data_dir = config["runner"].get("train_data_dir") or config["runner"].get("test_data_dir")
        if not isinstance(data_dir, str):
            raise ConfigError(f"{path}: hyper_parameters.max_idxs is 'schema' but runner has no train_data_dir "
                              "or test_data_dir to read schema.json from")
        config["hyper_parameters"]["max_idxs"] = max_idxs_list(read_schema(data_dir))
    return config


def _resolve_paths(runner, base):
    for key in PATH_KEYS:
        if isinstance(runner.get(key), str):
            runner[key] = os.path.normpath(os.path.join(base, os.path.expanduser(runner[key])))


def apply_override(config, item, path="config"):
    """Set one `section.key=value` in place; the key must exist unless it is an optional one."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"-o {item!r}: expected key=value, e.g. -o runner.epochs=2")
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if part not in node and not (last and tuple(parts) in OPTIONAL_KEYS):
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
            hint = f"; did you mean {'.'.join(parts[:depth] + close)}?" if close else ""
            raise ConfigError(f"-o {key}: {path} has no key {'.'.join(parts[:depth + 1])!r}{hint}")
        if last:
            node[part] = parse_value(text)
        elif not isinstance(node[part], dict):
            raise ConfigError(f"-o {key}: {'.'.join(parts[:depth + 1])} in {path} is a value, not a section")
        else:
            node = node[part]
    if len(parts) == 2 and parts[0] == "runner" and parts[1] in PATH_KEYS and isinstance(node[parts[1]], str):
        node[parts[1]] = os.path.abspath(os.path.expanduser(node[parts[1]]))


def check_runner(config, names):
    """Check that the runner keys a tool reads are present and well typed."""
    runner = config["runner"]
    for name in names:
        kind, low = RUNNER_KEYS[name]
        value = runner.get(name)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if ok and low is not None and value < low:
            ok = False
        if not ok:
            need = {str: "a path or name", bool: "True or False"}.get(kind, f"an integer >= {low}")
            raise ConfigError(f"{config['config_path']}: runner.{name} must be {need}, got {value!r}; "
                              f"fix the YAML or pass -o runner.{name}=...")
    if "infer_end_epoch" in names and runner["infer_end_epoch"] <= runner["infer_start_epoch"]:
        raise ConfigError(f"{config['config_path']}: runner.infer_end_epoch ({runner['infer_end_epoch']}) must be "
                          f"above infer_start_epoch ({runner['infer_start_epoch']}); the range is [start, end)")


def hyper_int(config, name, low=1):
    """hyper_parameters.<name> as an integer >= low, or a ConfigError naming the key."""
    value = config["hyper_parameters"].get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{config['config_path']}: hyper_parameters.{name} must be an integer >= {low}, "
                          f"got {value!r}")
    return value


def check_max_idxs(config, schema, split_dir):
    """The config's vocabulary maxima must equal those of the data's schema.json (the tables depend on them)."""
    want = max_idxs_list(schema)
    got = config["hyper_parameters"].get("max_idxs")
    if got != want:
        raise ConfigError(f"{config['config_path']}: hyper_parameters.max_idxs is {got} but "
                          f"{os.path.join(split_dir, SCHEMA_FILE)} has {want}; the embedding tables need one "
                          "row per id of the data: copy the schema's max_idxs into the config")


def load_module(config, name):
    """Import `<name>.py` from the config's folder, or from a path relative to it (model folders share readers)."""
    path = os.path.normpath(os.path.join(config["config_abs_dir"], name if name.endswith(".py") else name + ".py"))
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not found; {config['config_path']} expects this module "
                          "next to it (check runner.train_reader_path / infer_reader_path)")
    folder = os.path.dirname(path)  # a relative name may point out of the config's folder (../../reader_train)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # lets reader_test import reader_train
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    spec.loader.exec_module(module)
    return module
