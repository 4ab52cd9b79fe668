"""Writing files so that a crash never leaves a torn one: a temporary file in the same folder, fsync, rename."""
import json
import os


def atomic_write(path, write):
    """Call write(file_object) on a temporary file, then move it over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


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
