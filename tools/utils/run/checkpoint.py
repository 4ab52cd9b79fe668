"""Trainer checkpoints: a folder per finished epoch or saved meta-step, written atomically, read without pickle.

    <model_save_path>/<name>/          name: the epoch ("0", "1", ...) or "epoch<E>-step<S>"
        params.npz        the network's parameters, by structured name (net.state_dict() keys)
        optimizer.npz     the optimizer's state (Adam's moments and powers), by parameter name + suffix
        meta.json         name, epoch, step, run identity, data schema, training campaigns, sha256 of both
        checkpoint.done   written last; a folder without it is an interrupted save and is never read

Both arrays files are plain .npz archives read with allow_pickle=False: a
checkpoint, like a data file, can never run code. Checkpoints written by the
earlier versions (rec.pdparams / rec.pdopt, pickles read by paddle.load) are
refused unless the caller says they are trusted. Every file goes to a
temporary name in the same folder, is fsynced and renamed
(files.atomic_write), so a crash leaves the old file or the new one, never a
torn one; the sha256 in meta.json catches corruption inside a file.
"""
import hashlib
import io
import json
import os
import re

import numpy as np

from ..errors import CheckpointError, DiskFull, quoted
from ..files import atomic_write, npz_bytes, write_json

PARAMS_FILE = "params.npz"
OPT_FILE = "optimizer.npz"
META_FILE = "meta.json"
DONE_FILE = "checkpoint.done"
PICKLED = {PARAMS_FILE: "rec.pdparams", OPT_FILE: "rec.pdopt"}  # the earlier versions' files


def run_identity(config):
    """What a resumed run must share with the saved one: the model, the data and the sampling."""
    runner = config["runner"]
    return {
        "hyper_parameters": config["hyper_parameters"],
        "train_data_dir": os.path.relpath(runner["train_data_dir"], config["config_abs_dir"]),
        "train_reader_path": os.path.relpath(runner["train_reader_path"], config["config_abs_dir"]),
        "train_batch_size": runner["train_batch_size"],
        "seed": runner["seed"],
        **({"valid_campaigns": runner["valid_campaigns"]} if runner.get("valid_campaigns") else {}),
        **({"valid_infer_seeds": "positive"} if runner.get("valid_campaigns") and runner.get("infer_seeds") ==
           "positive" else {}),  # the validation protocol chooses `best` and the stop
    }


def step_name(epoch, step):
    return f"epoch{epoch}-step{step}"


def is_finished(path):
    return os.path.isfile(os.path.join(path, DONE_FILE))


def finished(save_dir):
    """(epochs, steps): the finished epoch checkpoints [epoch, ...] and step checkpoints [(epoch, step), ...],
    both ascending."""
    epochs, steps = [], []
    names = os.listdir(save_dir) if os.path.isdir(save_dir) else []
    for name in names:
        if not is_finished(os.path.join(save_dir, name)):
            continue
        if name.isdigit():
            epochs.append(int(name))
        elif name.startswith("epoch") and "-step" in name:
            epoch, _, step = name[len("epoch"):].partition("-step")
            if epoch.isdigit() and step.isdigit():
                steps.append((int(epoch), int(step)))
    return sorted(epochs), sorted(steps)


def read_meta(path):
    """The checkpoint's meta.json, checked against META_SHAPE (a CheckpointError names the key that is wrong)."""
    meta_path = os.path.join(path, META_FILE)
    try:
        with open(meta_path, "rb") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({quoted(str(e), 200)}); delete the folder {path} or retrain "
                              "it") from e
    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"{meta_path}: {problem}; the file was edited or damaged: delete the folder {path} "
                              "or retrain it")
    return meta


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _digests(v):
    return isinstance(v, dict) and all(isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) for x in v.values())


def _reader_state(v):
    """A reader's position (its state()): a mapping; the project's readers keep a NumPy generator's state in it
    ("generator"), which is tried on a generator of that kind."""
    if not isinstance(v, dict):
        return False
    if "generator" not in v:
        return True
    kind = v["generator"].get("bit_generator") if isinstance(v["generator"], dict) else None
    if kind not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        return False
    try:
        getattr(np.random, kind)().state = v["generator"]
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return _count(v.get("step", 0))


def _schema(v):
    from ..data.dataset import schema_problem
    return schema_problem(v) is None


# meta.json: key -> (check, what it must be). Keys not listed are kept and not read by the tools.
META_SHAPE = {
    "sha256": (_digests, "a map of file names to sha256 digests"),
    "train_data_sha256": (_digests, "a map of file names to sha256 digests"),
    "epoch": (_count, "an integer >= 0"),
    "step": (_count, "an integer >= 0"),
    "seed": (_count, "an integer >= 0"),
    "identity": (lambda v: isinstance(v, dict), "a mapping of what the run was"),
    "data_schema": (_schema, "the data's schema (as its schema.json)"),
    "train_campaigns": (lambda v: isinstance(v, list) and all(isinstance(a, int) and not isinstance(a, bool)
                                                              for a in v), "a list of campaign ids"),
    "reader": (_reader_state, "the reader's position (a mapping; its generator state one NumPy takes)"),
    "totals": (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()), "a map of totals to numbers"),
    "param_names": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                    "a map of parameter names"),
}


def meta_problem(meta):
    """What does not follow META_SHAPE in a meta.json's content, or None."""
    if not isinstance(meta, dict):
        return f"holds {quoted(meta)}, not a mapping of keys to values"
    if "sha256" not in meta:
        return "no sha256 (the checksums of the checkpoint's files)"
    if "step" in meta and not ("reader" in meta and "totals" in meta):
        return "a step checkpoint without the reader's position (reader, totals)"
    for key, (check, what) in META_SHAPE.items():
        if key in meta and not check(meta[key]):
            return f"{key} must be {what}, got {quoted(meta[key])}"
    return None


def meta_field(meta, key, path):
    """meta.json's `key`, or a CheckpointError for a checkpoint made before it was recorded."""
    if key not in meta:
        raise CheckpointError(f"{os.path.join(path, META_FILE)}: no {key!r}; the checkpoint was made by an older "
                              "version of the trainer: retrain it (tools/trainer.py --overwrite)")
    return meta[key]


# identity keys present only when set: their value when absent, and what sets them
OPTIONAL_IDENTITY = {"untrained": (False, "--untrained"), "valid_campaigns": (0, "runner.valid_campaigns"),
                     "valid_infer_seeds": ("labelled", "runner.infer_seeds, with validation campaigns")}


def differences(saved, now, prefix=""):
    """'key was X, now Y' for every difference between two run identities."""
    if isinstance(saved, dict) and isinstance(now, dict):
        absent = {k: OPTIONAL_IDENTITY[k][0] for k in OPTIONAL_IDENTITY} if not prefix else {}
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in differences(saved.get(k, absent.get(k)), now.get(k, absent.get(k)), f"{prefix}{k}.")]
    key = prefix[:-1]
    option = f" ({OPTIONAL_IDENTITY[key][1]})" if key in OPTIONAL_IDENTITY else ""
    return [] if saved == now else [f"{key} was {quoted(saved)}, now {quoted(now)}{option}"]


def _owner(key, names):
    """The parameter name a state key belongs to: the longest name that key starts with, then "_"."""
    owners = [name for name in names if key.startswith(name + "_")]
    return max(owners, key=len) if owners else None


# ---------------------------------------------------------------- writing
def _structured_optimizer_state(optimizer, net):
    """The optimizer's state keyed by structured parameter names.

    Paddle keys it by internal parameter names ("linear_0.w_0" + "_moment1_0"),
    which come from a process-wide counter: the same network built after
    another one gets other names. Structured names do not depend on that.
    """
    internal = {p.name: key for key, p in net.named_parameters()}
    state = {}
    for key, value in optimizer.state_dict().items():
        owner = _owner(key, internal)
        if owner is None or not (hasattr(value, "numpy") or isinstance(value, np.ndarray)):
            raise CheckpointError(f"optimizer state {key!r} belongs to no parameter of the network; "
                                  "only optimizers over the network's own parameters can be saved")
        # a tensor; or, after set_state_dict and before the next step, the array it was given
        state[internal[owner] + key[len(owner):]] = value.numpy() if hasattr(value, "numpy") else value
    return state


def state_bytes(net, optimizer):
    """(params.npz, optimizer.npz) as bytes: the network's and the optimizer's state as a checkpoint holds them."""
    params = {key: value.numpy() for key, value in net.state_dict().items()}
    return npz_bytes(params), npz_bytes(_structured_optimizer_state(optimizer, net))


def _write(path, data):
    atomic_write(path, lambda f: f.write(data), len(data))
    return hashlib.sha256(data).hexdigest()


def save(path, net, optimizer, meta, files=None):
    """Write a checkpoint folder; meta (a JSON-able dict) is stored with the checksums. Returns path.

    files: {name: bytes} written beside the arrays (the data's vocabulary.npz), checksummed alike.
    """
    os.makedirs(path, exist_ok=True)
    if is_finished(path):
        os.remove(os.path.join(path, DONE_FILE))  # the folder is incomplete until the new marker lands
    params, opt = state_bytes(net, optimizer)
    try:
        sha = {PARAMS_FILE: _write(os.path.join(path, PARAMS_FILE), params),
               OPT_FILE: _write(os.path.join(path, OPT_FILE), opt),
               **{name: _write(os.path.join(path, name), data) for name, data in (files or {}).items()}}
        write_json(os.path.join(path, META_FILE), {**meta, "sha256": sha})
        _write(os.path.join(path, DONE_FILE), b"")
    except DiskFull as e:
        raise DiskFull(e.path, e.needed, f"the checkpoint {path} is unfinished (removed at the next start) and the "
                       "finished ones before it are whole", "Free space and rerun the same command to resume") from None
    return path


# ---------------------------------------------------------------- reading
def require(save_dir, epoch, how_to_make):
    """The folder of a finished epoch checkpoint (epoch "best": the best one on validation campaigns), or a
    CheckpointError naming it and the command that makes it."""
    path = os.path.join(save_dir, str(epoch))
    if epoch == "best" and not is_finished(path):
        raise CheckpointError(f"{path}: no best checkpoint; the trainer keeps one when it holds out validation "
                              "campaigns (-o runner.valid_campaigns=N): retrain with it, or test an epoch")
    if not is_finished(path):
        stop = _stopped_early(save_dir)
        if stop and stop[0] <= epoch:
            raise CheckpointError(
                f"{path}: no checkpoint of epoch {epoch}: the training stopped early on its validation campaigns "
                f"{stop[1]}; test its best checkpoint, {os.path.join(save_dir, 'best')} (tools/infer_meta.py --best; "
                "tools/expand.py or tools/gates.py --epoch best)")
        raise CheckpointError(f"{path}: no finished checkpoint of epoch {epoch} (no {DONE_FILE}); "
                              f"make it with `{how_to_make}`")
    return path


def _stopped_early(save_dir):
    """(epoch, where in words) of the checkpoint at which a training in save_dir stopped early, or None."""
    epochs, steps = finished(save_dir)
    for epoch, name, where in [(e, str(e), f"at the end of epoch {e}") for e in epochs] + [
            (e, step_name(e, s), f"in epoch {e}, at meta-step {s}") for e, s in steps]:
        if read_meta(os.path.join(save_dir, name)).get("stopped_early"):
            return epoch, where
    return None


def read_file(path, name):
    """The bytes of one checkpoint file, checked against the sha256 in meta.json."""
    file_path = os.path.join(path, name)
    want = read_meta(path).get("sha256", {}).get(name)
    try:
        with open(file_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{file_path}: unreadable ({e}); retrain this checkpoint") from e
    if hashlib.sha256(data).hexdigest() != want:
        raise CheckpointError(f"{file_path}: checksum differs from {META_FILE}; the file is corrupt, "
                              f"delete {path} and retrain it")
    return data


def vocabulary(path):
    """The raw-id maps the checkpoint's training data was encoded with, or None (data without them)."""
    from ..data.vocabulary import VOCAB_FILE, from_bytes
    if VOCAB_FILE not in read_meta(path).get("sha256", {}):
        return None
    return from_bytes(read_file(path, VOCAB_FILE), os.path.join(path, VOCAB_FILE))


def background_users(path):
    """The background users stored with the checkpoint (tools/utils/data/background.py), or None (an older one)."""
    from ..data import background
    if background.BACKGROUND_FILE not in read_meta(path).get("sha256", {}):
        return None
    return background.from_bytes(read_file(path, background.BACKGROUND_FILE),
                                 os.path.join(path, background.BACKGROUND_FILE))


def load_arrays(path, name, trust_pickle=False):
    """The arrays of one checkpoint file ({name: np.ndarray}), checked against the sha256 in meta.json.

    A folder of the earlier pickled format is read (with paddle.load) only when trust_pickle is set.
    """
    file_path = os.path.join(path, name)
    if not os.path.isfile(file_path) and os.path.isfile(os.path.join(path, PICKLED[name])):
        if not trust_pickle:
            raise CheckpointError(f"{os.path.join(path, PICKLED[name])}: a checkpoint of an earlier version, "
                                  "pickled (reading it can run code); retrain, or if you made it yourself pass "
                                  "--trust-pickled-checkpoints")
        name, file_path = PICKLED[name], os.path.join(path, PICKLED[name])
    data = read_file(path, name)
    if name in PICKLED.values():
        from ..paddle_env import paddle
        return {k: np.asarray(v) for k, v in paddle.load(io.BytesIO(data)).items()}
    from ..data.dataset import ArchiveError, read_npz
    try:
        return read_npz(data)
    except ArchiveError as e:
        raise CheckpointError(f"{file_path}: not a checkpoint archive of arrays ({e}); retrain it") from e


def _dtype(tensor):
    """The NumPy dtype of a Paddle tensor (its name without "paddle."), without copying it."""
    return np.dtype(str(tensor.dtype).rpartition(".")[2])


def restore_params(net, params, source):
    """net.set_state_dict(params) after checking names, shapes and dtypes (Paddle only warns on a name or shape
    mismatch, and fails with a traceback on a dtype)."""
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    common = sorted(set(own) & set(params))
    wrong = [f"{k} {list(params[k].shape)} vs {list(own[k].shape)}" for k in common
             if list(params[k].shape) != list(own[k].shape)]
    types = [f"{k} {params[k].dtype} vs {_dtype(own[k])}" for k in common if params[k].dtype != _dtype(own[k])]
    problems = [f"{what} {names[:3]}" for what, names in
                (("missing", missing), ("unexpected", extra), ("wrong shapes", wrong), ("wrong dtypes", types))
                if names]
    if problems:
        raise CheckpointError(f"{source}: does not fit this network ({', '.join(problems)}); the config's "
                              "hyper_parameters differ from those it was trained with, or the file was re-saved "
                              "by other code")
    net.set_state_dict(params)


def resume(path, net, optimizer, trust_pickle=False):
    """Load a checkpoint folder into net and optimizer; returns its meta dict."""
    meta = read_meta(path)
    params, saved = (load_arrays(path, name, trust_pickle) for name in (PARAMS_FILE, OPT_FILE))
    restore_state(net, optimizer, params, saved, path, meta.get("param_names"))
    return meta


def restore_state(net, optimizer, params, saved, source, param_names=None):
    """Load arrays into net and optimizer: params by structured name (net.state_dict() keys), saved (the
    optimizer's state) by structured parameter name + suffix; param_names: the pickled format's map of
    structured to internal names. source names where the arrays come from in errors."""
    restore_params(net, params, os.path.join(source, PARAMS_FILE))
    if param_names:  # the pickled format kept Paddle's internal names and this map
        structured = {internal: key for key, internal in param_names.items()}
        saved = {structured[o] + k[len(o):] if o else k: v for k, v in saved.items() for o in [_owner(k, structured)]}
    parameters = dict(net.named_parameters())
    state = {}
    for key, value in saved.items():
        owner = _owner(key, parameters)
        if owner is None:
            raise CheckpointError(f"{os.path.join(source, OPT_FILE)}: state {quoted(key)} of no parameter of this "
                                  "network")
        p = parameters[owner]
        if value.dtype != _dtype(p) or list(value.shape) not in (list(p.shape), [1]):
            raise CheckpointError(f"{os.path.join(source, OPT_FILE)}: state {quoted(key)} is {value.dtype} "
                                  f"{list(value.shape)}, but its parameter {owner} is {_dtype(p)} {list(p.shape)} "
                                  "(the state is the parameter's shape, or [1]); the file was re-saved by other "
                                  "code: delete the checkpoint or retrain it")
        state[p.name + key[len(owner):]] = value
    optimizer.set_state_dict(state)
