"""Trainer checkpoints: one folder per finished epoch, written atomically.

    <model_save_path>/<epoch>/
        rec.pdparams      the network's state dict (paddle.save)
        rec.pdopt         the optimizer's state dict
        meta.json         epoch, seed, run identity, sha256 of both files, parameter names
        checkpoint.done   written last; a folder without it is an interrupted save and is ignored

Every file goes to a temporary name in the same folder, is fsynced and renamed
(files.atomic_write), so a crash leaves the old file or the new one, never a
torn one. The sha256 in meta.json catches corruption that paddle.load would
read silently (a flipped byte inside tensor data).
"""
import hashlib
import io
import json
import os
import shutil
import warnings

from .errors import CheckpointError
from .files import atomic_write

MODEL_FILE = "rec.pdparams"
OPT_FILE = "rec.pdopt"
META_FILE = "meta.json"
DONE_FILE = "checkpoint.done"


def run_identity(config):
    """What a resumed run must share with the saved one: the model, the data and the sampling."""
    runner = config["runner"]
    return {
        "hyper_parameters": config["hyper_parameters"],
        "train_data_dir": os.path.relpath(runner["train_data_dir"], config["config_abs_dir"]),
        "train_reader_path": runner["train_reader_path"],
        "train_batch_size": runner["train_batch_size"],
        "seed": runner["seed"],
    }


def epoch_dir(save_dir, epoch):
    return os.path.join(save_dir, str(epoch))


def complete_epochs(save_dir):
    """Epochs with a finished checkpoint in save_dir, ascending."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(int(name) for name in os.listdir(save_dir)
                  if name.isdigit() and os.path.isfile(os.path.join(save_dir, name, DONE_FILE)))


def read_meta(path):
    meta_path = os.path.join(path, META_FILE)
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e}); delete the folder {path} or retrain") from e


def meta_field(meta, key, path):
    """meta.json's `key`, or a CheckpointError for a checkpoint made before it was recorded."""
    if key not in meta:
        raise CheckpointError(f"{os.path.join(path, META_FILE)}: no {key!r}; the checkpoint was made by an older "
                              "version of the trainer: retrain it (tools/trainer.py --overwrite)")
    return meta[key]


def _differences(saved, now, prefix=""):
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differences(saved.get(k), now.get(k), f"{prefix}{k}.")]
    return [] if saved == now else [f"{prefix[:-1]} was {saved!r}, now {now!r}"]


def prepare(save_dir, identity, overwrite=False):
    """The finished epochs a run with this identity can resume from.

    Refuses checkpoints of another run unless overwrite, which deletes them.
    """
    epochs = complete_epochs(save_dir)
    if overwrite:
        for epoch in epochs:
            shutil.rmtree(epoch_dir(save_dir, epoch))
        return []
    for epoch in epochs:
        diffs = _differences(read_meta(epoch_dir(save_dir, epoch)).get("identity"), identity)
        if diffs:
            raise CheckpointError(
                f"{epoch_dir(save_dir, epoch)}: a checkpoint of another run ({'; '.join(diffs)}); "
                "resuming needs the same hyper_parameters, train data, reader, batch size and seed. "
                "Use another runner.model_save_path (-o runner.model_save_path=...) or pass --overwrite "
                "to delete the old checkpoints")
    return epochs


def _paddle_bytes(obj):
    from .paddle_env import paddle
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # A one-stage model saves its optimizer before any step: an empty state, saved and loaded fine.
        warnings.filterwarnings("ignore", message="The input state dict is empty")
        paddle.save(obj, buf)
    return buf.getvalue()


def _write(path, data):
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def save(save_dir, epoch, net, optimizer, meta):
    """Write the checkpoint of `epoch`; meta (a JSON-able dict) is stored with the checksums."""
    path = epoch_dir(save_dir, epoch)
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, DONE_FILE)):
        os.remove(os.path.join(path, DONE_FILE))  # the folder is incomplete until the new marker lands
    sha = {MODEL_FILE: _write(os.path.join(path, MODEL_FILE), _paddle_bytes(net.state_dict())),
           OPT_FILE: _write(os.path.join(path, OPT_FILE), _paddle_bytes(optimizer.state_dict()))}
    names = {key: p.name for key, p in net.named_parameters()}
    _write(os.path.join(path, META_FILE), (json.dumps({**meta, "epoch": epoch, "sha256": sha, "param_names": names},
                                                      indent=1) + "\n").encode())
    _write(os.path.join(path, DONE_FILE), b"")
    return path


def require(save_dir, epoch, how_to_make):
    """The folder of a finished checkpoint, or a CheckpointError naming it and the command that makes it."""
    path = epoch_dir(save_dir, epoch)
    if not os.path.isfile(os.path.join(path, DONE_FILE)):
        raise CheckpointError(f"{path}: no finished checkpoint of epoch {epoch} (no {DONE_FILE}); "
                              f"make it with `{how_to_make}`")
    return path


def load_file(path, name):
    """paddle.load of one checkpoint file after checking it against the sha256 in meta.json."""
    from .paddle_env import paddle
    file_path = os.path.join(path, name)
    want = read_meta(path).get("sha256", {}).get(name)
    try:
        with open(file_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{file_path}: unreadable ({e}); retrain this epoch") from e
    if hashlib.sha256(data).hexdigest() != want:
        raise CheckpointError(f"{file_path}: checksum differs from {META_FILE}; the file is corrupt, "
                              f"delete {path} and retrain that epoch")
    return paddle.load(io.BytesIO(data))


def restore_params(net, params, source):
    """net.set_state_dict(params) after checking names and shapes (Paddle only warns on a mismatch)."""
    own = net.state_dict()
    missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
    wrong = [f"{k} {list(params[k].shape)} vs {list(own[k].shape)}" for k in sorted(set(own) & set(params))
             if list(params[k].shape) != list(own[k].shape)]
    problems = [f"{what} {names[:3]}" for what, names in
                (("missing", missing), ("unexpected", extra), ("wrong shapes", wrong)) if names]
    if problems:
        raise CheckpointError(f"{source}: does not fit this network ({', '.join(problems)}); the config's "
                              "hyper_parameters differ from those it was trained with")
    net.set_state_dict(params)


def _renamed_optimizer_state(opt_state, saved_names, net):
    """Optimizer state keyed by this process's parameter names.

    Paddle keys optimizer state by internal parameter names ("linear_0.w_0" +
    "_moment1_0"), which come from a process-wide counter: the same network
    built after another one gets other names. meta.json maps structured names
    to the saved internal ones, so the keys can be moved over.
    """
    now = {saved_names[key]: p.name for key, p in net.named_parameters() if key in saved_names}
    renamed = {}
    for key, value in opt_state.items():
        old = next((o for o in now if key.startswith(o + "_")), None)
        renamed[now[old] + key[len(old):] if old else key] = value
    return renamed


def resume(path, net, optimizer):
    """Load a checkpoint folder into net and optimizer; returns its meta dict."""
    meta = read_meta(path)
    restore_params(net, load_file(path, MODEL_FILE), os.path.join(path, MODEL_FILE))
    optimizer.set_state_dict(_renamed_optimizer_state(load_file(path, OPT_FILE), meta["param_names"], net))
    return meta
