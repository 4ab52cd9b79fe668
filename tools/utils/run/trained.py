"""A trained model, loaded one way by every tool that reads a checkpoint (tools/infer_meta.py, tools/expand.py,
tools/gates.py): the checkpoint and the data facts it carries first (checkpoint), so that a tool checks its
inputs against them before any Paddle work, then the network holding its weights (load_trained).
"""
import json
import os
import shlex

from . import checkpoint as ckpt
from . import config as cfg
from ..errors import Stopped


def checkpoint(spec, epoch, how_to_make):
    """(config, path, meta): the folder of runner.infer_load_path's finished checkpoint of `epoch` (an int, or
    "best"), its meta.json, and the config the model reads, the run spec with the checkpoint's data facts
    (learn); how_to_make: the command that makes the checkpoint, for the error when it is missing."""
    path = ckpt.require(spec["runner"]["infer_load_path"], epoch, how_to_make)
    meta = ckpt.read_meta(path)
    return learn(spec, meta, path), path, meta


def train_command(spec, epochs, trainer="python tools/trainer.py"):
    """The command that makes runner.infer_load_path's checkpoints of epochs [0, epochs), for an error to show:
    the config, this command's own -o values the trainer reads (its runner keys; the hyper_parameters, or, where
    the folder holds checkpoints already, those they were trained with, so that it resumes them), and
    runner.model_save_path where it is not infer_load_path; quoted for a shell."""
    runner = spec["runner"]
    own = [key for key, source in spec.get(cfg.SOURCES, {}).items() if source == "-o" and key not in (
        "runner.epochs", "runner.model_save_path") and (key.startswith("hyper_parameters.") or (
            key.startswith("runner.") and key[len("runner."):] in cfg.TOOL_KEYS["train"]))]
    items = [f"{key}={_yaml(cfg.get(spec, key))}" for key in own]
    saved = _trained_with(runner["infer_load_path"])
    if saved is not None:
        mine = _flat(spec["hyper_parameters"])
        items = [item for item in items if not item.startswith("hyper_parameters.")] + [
            f"hyper_parameters.{k}={_yaml(v)}" for k, v in _flat(saved).items() if k in mine and k != "max_idxs"
            and mine[k] != v]
    items.append(f"runner.epochs={epochs}")
    if os.path.normpath(runner["infer_load_path"]) != os.path.normpath(runner.get("model_save_path") or ""):
        items.append(f"runner.model_save_path={runner['infer_load_path']}")
    return " ".join([trainer, "-m", shlex.quote(spec["config_path"]), "-o", *map(shlex.quote, items)])


def _trained_with(save_dir):
    """The hyper_parameters a finished checkpoint in save_dir was trained with, or None (none there)."""
    epochs, steps = ckpt.finished(save_dir)
    names = [str(e) for e in epochs] + [ckpt.step_name(e, s) for e, s in steps]
    return ckpt.read_meta(os.path.join(save_dir, names[0])).get("identity", {}).get("hyper_parameters") \
        if names else None


def learn(spec, meta, source):
    """The config the model reads (cfg.with_data): the run spec with what a training learnt from its data, from a
    checkpoint's meta.json read from source: data_schema (the data's schema.json) and train_campaigns."""
    return cfg.with_data(spec, source, schema=ckpt.meta_field(meta, "data_schema", source),
                         train_campaigns=ckpt.meta_field(meta, "train_campaigns", source))


def build(model, config):
    """model.create_model(config), seeded with runner.seed; Paddle's threads and device are set before."""
    from .. import paddle_env
    paddle_env.seed_all(config["runner"]["seed"])
    return model.create_model(config)


def restore(net, path, config, model, trust_pickle=False):
    """Put the weights of the checkpoint `path` into net, built from `config` by `model`; returns them (arrays by
    name), to restore between campaigns. Weights that do not fit are refused naming the hyper-parameters the
    checkpoint was trained with that the config changes and that shape a weight (a fine-tuning learning rate
    does not), and the -o that fits them."""
    params = ckpt.load_arrays(path, ckpt.PARAMS_FILE, trust_pickle)
    try:
        ckpt.restore_params(net, params, os.path.join(path, ckpt.PARAMS_FILE))
    except ckpt.CheckpointError as e:
        trained_with = ckpt.read_meta(path).get("identity", {}).get("hyper_parameters", {})
        changed = {key: value for key, value in _flat(trained_with).items()
                   if key in _flat(config["hyper_parameters"]) and _flat(config["hyper_parameters"])[key] != value}
        mine = {name: tuple(p.shape) for name, p in net.state_dict().items()}  # net is config's network
        changed = {key: value for key, value in changed.items() if _shapes(model, config, key, value) != mine}
        if not changed:
            raise
        raise ckpt.CheckpointError(
            f"{path}: its weights do not fit this network: it was trained with "
            + ", ".join(f"hyper_parameters.{k} {v} (this config: {_flat(config['hyper_parameters'])[k]})"
                        for k, v in changed.items())
            + "; pass -o " + " ".join(f"hyper_parameters.{k}={_yaml(v)}" for k, v in changed.items())) from e
    return params


def _shapes(model, config, key, value):
    """{weight: shape} of the network model builds from config, with hyper_parameters.<key> set to value; the
    error's text when that does not build (so the key counts as one that shapes the network)."""
    config = json.loads(json.dumps(config))  # a plain copy to change
    *parents, last = key.split(".")
    node = config["hyper_parameters"]
    for part in parents:
        node = node[part]
    node[last] = value
    config = cfg.freeze(config)
    try:
        return {name: tuple(p.shape) for name, p in build(model, config).state_dict().items()}
    except Stopped:
        raise
    except Exception as e:  # noqa: BLE001 (only a probe for an error message: any failure is "another network")
        return repr(e)


def _flat(tree, prefix=""):
    """{"optimizer.class": ..., ...}: a nested dict's leaves by dotted key."""
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _yaml(value):
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, bool)) or value is None else value


def load_trained(model, config, path, trust_pickle=False):
    """(net, params): build, then restore the checkpoint `path` into it."""
    net = build(model, config)
    return net, restore(net, path, config, model, trust_pickle)
