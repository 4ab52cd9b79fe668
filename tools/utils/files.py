"""Writing files so that a crash never leaves a torn one: a temporary file in the same folder, fsync, rename."""
import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import threading

import numpy as np

from .errors import STOP_SIGNALS, DiskFull, UserError


def atomic_write(path, write, size=None):
    """Call write(file_object) on a temporary file, then move it over `path`.

    A full device (or spent quota) is a DiskFull naming the file and `size`, the bytes being written (when the
    caller knows them; else how many were written when the device filled): the old file was not touched.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        written = os.path.getsize(tmp) if os.path.isfile(tmp) else 0
        needed = f"{size:,} bytes" if size is not None else f"more than the {written:,} bytes written"
        raise DiskFull(path, needed) from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def stop_signals_held():
    """SIGTERM and SIGINT that come inside the block reach their handlers as it ends. For short steps that an
    exception raised halfway would leave broken rather than unfinished: zipfile's opening and closing of a
    member (a stop inside one leaves the archive unclosable, and its ValueError buried the stop's one line
    under a traceback). Handlers run in the main thread only, so only there is anything held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    handlers = {signum: signal.signal(signum, lambda signum, frame: came.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)


def npz_bytes(arrays):
    """The bytes of np.savez(arrays), made with the stop signals held (see stop_signals_held)."""
    buf = io.BytesIO()
    with stop_signals_held():
        np.savez(buf, **arrays)
    return buf.getvalue()


def require_writable(folder, fix):
    """A UserError naming `folder` and `fix` unless a file can be made in it (or, when it does not exist yet, in
    the nearest folder above it, where it would be created): a real try, so read-only mounts, immutable folders
    and permissions all count, before any work whose result would be lost."""
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{existing}: not a folder, and {folder} must be one (or be made inside one); {fix}")
    probe = os.path.join(existing, f".write-test.tmp{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except FileNotFoundError:  # made, then removed by a trainer cleaning leftovers (*.tmp<pid>): writable
        pass
    except OSError as e:
        what = folder if existing == os.path.abspath(folder) else f"{existing} (where {folder} would be made)"
        raise UserError(f"{what}: cannot be written ({e.strerror}); {fix}") from None


def write_text(path, text):
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), len(data))


def write_json(path, obj):
    """obj as indented JSON (NaN -> null, NumPy scalars -> numbers; see plain)."""
    write_text(path, json.dumps(plain(obj), indent=1) + "\n")


def plain(value):
    """A JSON-able copy: NaN -> None (JSON has no NaN), NumPy scalars and arrays -> Python numbers and lists."""
    import numpy as np
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if value != value else float(value)
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- leftovers of killed writes
def leftover_pid(name, prefix=None):
    """The pid in a temporary name: `<anything>.tmp<pid>` (atomic_write's), or, given a prefix, exactly
    `<prefix><pid>` (a staging folder, e.g. `.preprocess.tmp<pid>`); None for any other name."""
    found = re.fullmatch(re.escape(prefix) + r"(\d+)" if prefix else r".*\.tmp(\d+)", name, re.DOTALL)
    return int(found.group(1)) if found else None


def process_alive(pid):
    """Whether a process of that pid runs on this machine (a leftover's pid from another one looks gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_leftovers(folder, prefix):
    """Remove the entries of folder named `<prefix><pid>` whose process is gone: what a killed run (kill -9,
    a crash) left of its staging. Those of a live process are kept."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        pid = leftover_pid(name, prefix)
        if pid is not None and not process_alive(pid):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


# ---------------------------------------------------------------- replacing whole folders
def inside(path, folder):
    """path is folder or lies inside it (both resolved: symbolic links, '..', relative paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def staging_folder(out_dir, prefix):
    """(this process's staging folder inside out_dir, whether out_dir is still to be made), nothing made yet.

    Take it before the try whose finally drops it (drop_staging) and make it inside that try (make_staging): a
    stop signal that arrives as the folder appears then still finds the finally that removes it.
    """
    return os.path.join(out_dir, f"{prefix}{os.getpid()}"), not os.path.isdir(out_dir)


def make_staging(staging):
    """Make a fresh staging folder (and the folder it lies in, if needed)."""
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging)


def drop_staging(staging, out_dir, created):
    """Remove the staging folder after a failure, and out_dir when this run created it (and it is empty)."""
    shutil.rmtree(staging, ignore_errors=True)
    if created:
        try:
            os.rmdir(out_dir)
        except OSError:
            pass


def replace_folders(staging, out_dir, names):
    """Move staging/<name> to out_dir/<name> for every name, replacing what is there; all or nothing.

    The folders replaced go into staging first and are deleted (with staging)
    only once every new one is in place; a failure puts them back.
    """
    old = os.path.join(staging, ".replaced")
    os.mkdir(old)
    moved, placed = [], []
    try:
        for name in names:
            target = os.path.join(out_dir, name)
            if os.path.lexists(target):
                os.rename(target, os.path.join(old, name))
                moved.append(name)
            os.rename(os.path.join(staging, name), target)
            placed.append(name)
    except BaseException:
        for name in reversed(placed):
            _try_rename(os.path.join(out_dir, name), os.path.join(staging, name))
        for name in reversed(moved):
            _try_rename(os.path.join(old, name), os.path.join(out_dir, name))
        raise
    shutil.rmtree(staging, ignore_errors=True)  # the swap is done: a leftover must not fail the run


def _try_rename(src, dst):
    try:
        os.rename(src, dst)
    except OSError:
        pass
