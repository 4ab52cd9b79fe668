"""The folder a training run writes (runner.model_save_path): one writer at a time, resumable, tidy.

- One trainer per folder: `<folder>/.lock` is held with fcntl.flock for the
  whole run; a second trainer is refused, naming the first one's pid. The
  kernel releases the lock when its process dies however it dies, so a lock
  left by a killed run (a stale pid in the file) never blocks the next one.
  The lock file is opened without following links and must be a plain file
  of its own (one link): a `.lock` that is a symbolic or hard link to
  another file is refused, since taking the lock writes the pid into it.
- Checkpoint entries (`<epoch>`, `epoch<E>-step<S>`) that are symbolic links
  are refused: resuming would read, and cleaning up delete, what they point to.
- Before anything is read or trained, the folder must be writable (a real
  try: read-only, immutable and permission-denied folders are refused).
- Under the lock, leftovers of killed writes are removed first: temporary
  files (`*.tmp<pid>`) and checkpoint folders without their done marker.
- Every checkpoint records the sha256 of the training data's files
  (dataset.data_digest); a resume on data that changed under the same path
  is refused, naming the file.
- Checkpoints of another run (another identity) are refused; --overwrite
  deletes them, but only when training is about to start, after the config,
  the data and the model have all been checked.
- Step checkpoints (runner.save_steps) keep the last KEEP_STEPS; those of an
  epoch go when the epoch's own checkpoint lands.
- With validation campaigns, BEST holds the checkpoint of the best
  validation metric so far, replaced whole or not at all.
- In a run across processes only rank 0 opens the RunFolder
  (tools/utils/run/distributed.SharedFolder); the other ranks never touch the
  folder or its lock.
"""
import errno
import fcntl
import os
import re
import shutil
import socket
import stat

from . import checkpoint as ckpt
from ..data import dataset
from ..errors import CheckpointError
from ..files import leftover_pid, require_writable

KEEP_STEPS = 2
LOCK_FILE = ".lock"
BEST = "best"  # the checkpoint with the best validation metric (runner.valid_campaigns)
DATA_KEY = "train_data_sha256"  # meta.json: {file name: sha256} of the training data folder


class RunFolder:
    """path: the folder; identity: the run's (checkpoint.run_identity); files: {name: bytes} every checkpoint
    of the run carries (the training data's vocabulary.npz); data_dir: the training data folder, whose files'
    digests every checkpoint records and a resume must match."""

    def __init__(self, path, identity, files=None, data_dir=None):
        self.path, self.identity, self.files, self.data_dir = path, identity, files or {}, data_dir
        self._lock, self.data = None, None

    # -------------------------------------------------------------- one writer
    def __enter__(self):
        require_writable(self.path, "give a writable runner.model_save_path (-o runner.model_save_path=...) or "
                                    "make this one writable")  # a .lock already there would open anyway
        os.makedirs(self.path, exist_ok=True)
        self._lock = _open_lock(os.path.join(self.path, LOCK_FILE))
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise CheckpointError(f"{self.path}: another trainer is writing this folder ({holder}); wait for it "
                                  "to finish, or give this run another runner.model_save_path") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._lock.flush()
        self._refuse_linked_checkpoints()
        self._remove_leftovers()
        if self.data_dir is not None:
            self.data = dataset.data_digest(self.data_dir)
        return self

    def __exit__(self, *exc):
        self._lock.close()  # closing releases the flock

    def _refuse_linked_checkpoints(self):
        for name in sorted(os.listdir(self.path)):
            path = os.path.join(self.path, name)
            if _is_checkpoint_name(name) and os.path.islink(path):
                raise CheckpointError(f"{path}: a symbolic link among the checkpoints; the trainer would resume from, "
                                      "or delete, what it points to. Remove the link (the checkpoints are folders "
                                      "the trainer writes), or give this run another runner.model_save_path")

    def _remove_leftovers(self):
        best, new, old = (os.path.join(self.path, BEST + suffix) for suffix in ("", "-new", "-old"))
        if not os.path.isdir(best) and ckpt.is_finished(old):  # killed between the two renames of save_best
            os.rename(old, best)
        for stale in (new, old):
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale)
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if leftover_pid(name) is not None:
                os.remove(path)
            elif os.path.isdir(path) and _is_checkpoint_name(name):
                if not ckpt.is_finished(path):
                    shutil.rmtree(path)
                else:
                    for inner in os.listdir(path):
                        if leftover_pid(inner) is not None:
                            os.remove(os.path.join(path, inner))

    # -------------------------------------------------------------- what is there
    def resume_point(self):
        """(finished epochs, the latest step checkpoint after them or None), refusing another run's checkpoints."""
        epochs, steps = ckpt.finished(self.path)
        for name in [str(e) for e in epochs] + [ckpt.step_name(e, s) for e, s in steps]:
            diffs = ckpt.differences(ckpt.read_meta(os.path.join(self.path, name)).get("identity"), self.identity)
            if diffs:
                raise CheckpointError(
                    f"{os.path.join(self.path, name)}: a checkpoint of another run ({'; '.join(diffs)}); "
                    "resuming needs the same hyper_parameters, train data, reader, batch size and seed. "
                    "Use another runner.model_save_path (-o runner.model_save_path=...) or pass --overwrite "
                    "to replace the old checkpoints")
            self._require_same_data(os.path.join(self.path, name))
        last = epochs[-1] if epochs else -1
        later = [(e, s) for e, s in steps if e == last + 1]
        return epochs, (os.path.join(self.path, ckpt.step_name(*later[-1])) if later else None)

    def _require_same_data(self, path):
        saved = ckpt.read_meta(path).get(DATA_KEY)
        if saved is None or self.data is None or saved == self.data:  # older checkpoints did not record it
            return
        name = sorted(n for n in set(saved) | set(self.data) if saved.get(n) != self.data.get(n))[0]
        how = "is new" if name not in saved else "is gone" if name not in self.data else "has other bytes"
        raise CheckpointError(f"{os.path.join(self.data_dir, name)}: {how} since {path} was saved (the sha256 of "
                              "the training data differs from the checkpoint's); resuming needs the same training "
                              "data. Restore it, or pass --overwrite to train anew on this data (or give this run "
                              "another runner.model_save_path)")

    def delete_checkpoints(self):
        for name in os.listdir(self.path):
            if _is_checkpoint_name(name):
                shutil.rmtree(os.path.join(self.path, name))

    # -------------------------------------------------------------- writing
    def save_epoch(self, epoch, net, optimizer, meta):
        path = ckpt.save(os.path.join(self.path, str(epoch)), net, optimizer,
                         {**meta, **self._data_meta(), "identity": self.identity, "epoch": epoch}, self.files)
        for e, s in ckpt.finished(self.path)[1]:
            if e <= epoch:
                shutil.rmtree(os.path.join(self.path, ckpt.step_name(e, s)))
        return path

    def save_best(self, net, optimizer, meta):
        """Write BEST (the checkpoint with the best validation metric so far) in place of the last one: built
        as BEST-new, then swapped in, so a kill at any moment leaves one whole BEST (see _remove_leftovers)."""
        best, new, old = (os.path.join(self.path, BEST + suffix) for suffix in ("", "-new", "-old"))
        for leftover in (new, old):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover)
        path = ckpt.save(new, net, optimizer, {**meta, **self._data_meta(), "identity": self.identity}, self.files)
        if os.path.isdir(best):
            os.rename(best, old)
        os.rename(path, best)
        if os.path.isdir(old):
            shutil.rmtree(old)
        return best

    def _data_meta(self):
        return {DATA_KEY: self.data} if self.data is not None else {}

    def save_step(self, epoch, step, net, optimizer, meta):
        path = ckpt.save(os.path.join(self.path, ckpt.step_name(epoch, step)), net, optimizer,
                         {**meta, **self._data_meta(), "identity": self.identity, "epoch": epoch, "step": step},
                         self.files)
        for e, s in ckpt.finished(self.path)[1][:-KEEP_STEPS]:
            shutil.rmtree(os.path.join(self.path, ckpt.step_name(e, s)))
        return path


def _open_lock(path):
    """The lock file opened for reading and writing, refusing a link (symbolic or hard) to another file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        what = "a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
        raise CheckpointError(f"{path}: {what}; the trainer's lock must be a plain file of its own, since taking "
                              "the lock writes into it. Remove it (rm) and rerun") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise CheckpointError(f"{path}: {what}; the trainer's lock must be a plain file of its own, since taking "
                              "the lock writes into it. Remove it (rm) and rerun")
    return os.fdopen(fd, "r+")


def _is_checkpoint_name(name):
    return name.isdigit() or re.fullmatch(rf"epoch\d+-step\d+|{BEST}(-new|-old)?", name) is not None
