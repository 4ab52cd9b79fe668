"""Training curves (runner.use_visual): scalars by tag and step for VisualDL, PaddlePaddle's board, and a PNG.

    curves = for_run(config["runner"])       # Curves, or NO_CURVES when runner.use_visual is off
    curves.add("train/loss", 0.31, step)     # any tag: "valid/gauc", ...
    print(*curves.finish(), sep="\n")        # closes it and draws <folder>/curves.png

The records are VisualDL 2.5's, written without the visualdl package (which
only the board needs): `<folder>/vdlrecords.<time>.log` is a sequence of
records, each an unsigned 64-bit little-endian length and that many bytes
of a protobuf `visualdl.Record` message:
    Record   { repeated Value values = 1; }
    Value    { int64 id = 1 (the step); string tag = 2; int64 timestamp = 3 (ms);
               float value = 4 | MetaData meta_data = 10; }
    MetaData { string display_name = 1; }
The first record is the meta data VisualDL's own LogWriter writes first.

VisualDL reads one file per folder (the newest by name), so a run keeps one:
training resumed from a checkpoint appends to the folder's file, after
dropping the records at and after its first new step (a resumed run's steps
replace what the stopped run logged past its checkpoint; a run started
afresh replaces them all). Each record is flushed when added, so a killed
run loses nothing it logged.
"""
import os
import shlex
import struct
import time

from ..errors import ConfigError
from ..files import atomic_write, inside

META_TAG = "meta_data_tag"
PNG = "curves.png"
_PREFIX = "vdlrecords."


# ---------------------------------------------------------------- protobuf, the few fields used
def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, wire, payload):
    if wire == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def encode(tag, step, value=None, display_name=None, timestamp_ms=None):
    """One framed record: a scalar, or (value None) the meta data record."""
    stamp = round(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    body = _field(1, 0, _varint(step)) + _field(2, 2, tag.encode()) + _field(3, 0, _varint(stamp))
    if value is None:
        body += _field(10, 2, _field(1, 2, (display_name or "").encode()))
    else:
        body += _field(4, 5, struct.pack("<f", value))
    record = _field(1, 2, body)
    return struct.pack("<Q", len(record)) + record


def _fields(data):
    """(number, value) of a protobuf message: int for varints, bytes for the others."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 2:
            size, at = _read_varint(data, at)
            value, at = data[at:at + size], at + size
        else:
            size = {1: 8, 5: 4}[wire]
            value, at = data[at:at + size], at + size
        yield number, value


def _read_varint(data, at):
    n = shift = 0
    while True:
        byte = data[at]
        n, shift, at = n | (byte & 0x7F) << shift, shift + 7, at + 1
        if not byte & 0x80:
            return n, at


def read_records(path):
    """[(frame bytes, tag, step, value or None)] of a records file, up to its last whole record."""
    with open(path, "rb") as f:
        data = f.read()
    records, at = [], 0
    while at + 8 <= len(data):
        size = struct.unpack_from("<Q", data, at)[0]
        if at + 8 + size > len(data):
            break  # a record cut short by a killed run
        frame = data[at:at + 8 + size]
        for number, value in _fields(frame[8:]):
            if number == 1:
                fields = dict(_fields(value))
                scalar = struct.unpack("<f", fields[4])[0] if 4 in fields else None
                records.append((frame, fields.get(2, b"").decode(), fields.get(1, 0), scalar))
        at += 8 + size
    return records


def log_file(folder):
    """The records file VisualDL shows for the folder (the newest by name), or None."""
    names = sorted(n for n in os.listdir(folder) if n.startswith(_PREFIX) and n.endswith(".log")) \
        if os.path.isdir(folder) else []
    return os.path.join(folder, names[-1]) if names else None


def read_scalars(folder):
    """{tag: [(step, value), ...] in file order} of the folder's records file."""
    path, scalars = log_file(folder), {}
    for _, tag, step, value in read_records(path) if path else ():
        if value is not None:
            scalars.setdefault(tag, []).append((step, value))
    return scalars


# ---------------------------------------------------------------- writing
OWNER = "run.txt"  # the checkpoint folder of the run whose curves the folder holds


class Curves:
    """Scalars of one training run, appended to `folder`'s records file (see the module docstring).

    owner: the run's checkpoint folder. A folder outside it that holds another run's curves is refused: the
    records of steps from this run's first on are replaced when it writes, so a second run would erase or mix
    them. One inside it is the run's own, wherever the run folder was moved."""

    def __init__(self, folder, run_name="train", owner=None):
        self.folder, self.run_name, self.owner, self._file = folder, run_name, owner, None
        path = os.path.join(folder, OWNER)
        mine = not owner or not os.path.isfile(path) or inside(folder, owner)
        other = owner if mine else open(path).read().strip()
        if other != owner:
            raise ConfigError(f"{folder}: holds the curves of the run in {other}; give runner.visual_log_path a "
                              "folder of this run's own (by default <model_save_path>/visualdl)")

    def add(self, tag, value, step):
        """Record `value` of `tag` at `step` (a meta-step, counted from 1 across epochs)."""
        if self._file is None:
            self._open(step)
        self._file.write(encode(tag, int(step), float(value)))
        self._file.flush()

    def _open(self, first_step):
        os.makedirs(self.folder, exist_ok=True)
        for name in os.listdir(self.folder):
            if name.startswith(_PREFIX) and ".tmp" in name:  # a killed rewrite's leftover
                os.remove(os.path.join(self.folder, name))
        path = log_file(self.folder)
        if path is None:
            path = os.path.join(self.folder, f"{_PREFIX}{int(time.time()):010d}.log")
            atomic_write(path, lambda f: f.write(encode(META_TAG, 0, display_name=self.run_name)))
        else:
            kept = [frame for frame, tag, step, _ in read_records(path) if tag == META_TAG or step < first_step]
            atomic_write(path, lambda f: f.write(b"".join(kept)))
        if self.owner:
            atomic_write(os.path.join(self.folder, OWNER), lambda f: f.write(f"{self.owner}\n".encode()))
        self._file = open(path, "ab")

    def close(self):
        if self._file is not None:
            self._file.close()

    def finish(self):
        """Close, draw the PNG and say where both are: the lines to print."""
        self.close()
        png = self.plot()
        lines = [f"curves: {self.folder} (view with VisualDL: visualdl --logdir {shlex.quote(self.folder)})"
                 + (f"; {png}" if png else "")]
        if png is None:
            lines.append(f"note: matplotlib is not installed (it is in requirements-dev.txt), so no {PNG}")
        return lines

    def plot(self):
        """Write <folder>/curves.png of every tag over the steps; returns its path, or None when matplotlib (a
        development requirement) is missing."""
        try:
            import matplotlib
        except ImportError:
            return None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        scalars = read_scalars(self.folder)
        if not scalars:
            return None
        columns = min(3, len(scalars))
        rows = -(-len(scalars) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
        for ax, (tag, points) in zip(axes.flat, sorted(scalars.items())):
            steps, values = zip(*sorted(dict(points).items()))
            ax.plot(steps, values, lw=0.8, alpha=0.5 if len(steps) > 20 else 1.0, marker="" if len(steps) > 20
                    else "o", label=tag)
            if len(steps) > 20:
                ax.plot(steps, _smoothed(values), lw=1.6, label=f"{tag}, smoothed (0.8)")
            ax.set_title(tag)
            ax.set_xlabel("meta-step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(scalars):]:
            ax.axis("off")
        figure.tight_layout()
        path = os.path.join(self.folder, PNG)
        atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))
        plt.close(figure)
        return path


def _smoothed(values, weight=0.8):
    """The exponential moving average VisualDL and TensorBoard draw (bias-corrected at the start)."""
    out, average = [], 0.0
    for i, v in enumerate(values, 1):
        average = weight * average + (1 - weight) * v
        out.append(average / (1 - weight ** i))
    return out


class NoCurves:
    """What run_epoch adds to when runner.use_visual is off: nothing."""

    def add(self, tag, value, step):
        pass

    def finish(self):
        return []


NO_CURVES = NoCurves()


def for_run(runner, main=True):
    """The curves of a training run: Curves in runner.visual_log_path (default <model_save_path>/visualdl) when
    runner.use_visual, else NO_CURVES; NO_CURVES on the ranks other than 0 of a distributed run (main False)."""
    if not (runner.get("use_visual") and main):
        return NO_CURVES
    return Curves(runner.get("visual_log_path") or os.path.join(runner["model_save_path"], "visualdl"),
                  owner=os.path.abspath(runner["model_save_path"]))
