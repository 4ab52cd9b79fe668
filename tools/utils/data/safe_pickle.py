"""Import the published MetaHeac pandas pickles into our .npz format, safely.

The processed Tencent files (`train_stage1.pkl`, `test_hot_stage2.pkl`, ...)
are pandas DataFrames pickled by pandas 1.x. Two problems with `pd.read_pickle`:
a pickle may call any importable function while it loads (it is a program, not
data), and pandas 1.x pickles name classes that current pandas and numpy moved
or removed (`pandas.core.indexes.numeric.Int64Index`, `numpy.core.*`).

`read_dataframe` therefore unpickles with a `find_class` that hands out only
the classes and functions a numeric DataFrame is built from, under their
current names, and refuses every other global before anything runs.
pandas is needed by this module only, and imported when a file is read.

`import_pickles` writes nothing in place: the split folders are built in a
staging folder inside the output folder, checked, and swapped in only when
every file was converted (tools/utils/files.py: replace_folders); a non-empty
output folder is refused unless force, which replaces only the split folders
written.
"""
import importlib
import os
import pickle
import re
import shutil

import numpy as np

from . import dataset
from . import schema
from ..files import drop_staging, inside, make_staging, replace_folders, staging_folder
from .raw import check_out_dir

# Global named in a pickle -> where it lives now. Everything here only builds
# values (arrays, dtypes, indexes, the frame itself); nothing calls back into
# arbitrary code. Deliberately absent: builtins other than slice (eval, exec,
# getattr, __import__), copyreg/functools/operator helpers, codecs but for
# protocol 2's latin-1 bytes (latin1_bytes), and the
# pandas extension arrays (categoricals, datetimes, Arrow) that our integer
# columns never use.
ALLOWED_GLOBALS = {
    # pandas 1.x names (the published files).
    ("pandas.core.frame", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas.core.internals.managers", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.indexes.base", "_new_Index"): ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.base", "Index"): ("pandas", "Index"),
    # Removed in pandas 2: a plain Index of the pickled dtype replaces them.
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"): ("pandas", "RangeIndex"),
    # The same objects as pandas 2 and 3 name them (a file re-saved by a user).
    ("pandas", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas", "Index"): ("pandas", "Index"),
    ("pandas", "RangeIndex"): ("pandas", "RangeIndex"),
    ("pandas._libs.internals", "_unpickle_block"): ("pandas._libs.internals", "_unpickle_block"),
    # pandas 3 keeps column names in a string array; the Cython helper only
    # creates an instance of the (allowlisted) class it is handed.
    ("pandas", "StringDtype"): ("pandas", "StringDtype"),
    ("pandas.arrays", "StringArray"): ("pandas.arrays", "StringArray"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    # numpy 2 moved numpy.core to numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("builtins", "slice"): ("builtins", "slice"),  # block placements
    ("__builtin__", "slice"): ("builtins", "slice"),  # protocols 0-2 use Python 2's name
    # Protocol 2 writes an array's bytes as _codecs.encode(text, "latin1"): only that is done (latin1_bytes).
    ("_codecs", "encode"): ("tools.utils.data.safe_pickle", "latin1_bytes"),
    ("__builtin__", "bytes"): ("tools.utils.data.safe_pickle", "empty_bytes"),  # and empty bytes as bytes()
}


def empty_bytes(*args):
    """bytes() as protocol 2 calls it for an empty array, and nothing else (no size to allocate)."""
    if args:
        raise UnsafePickleError(f"bytes() called with {len(args)} argument(s): a DataFrame pickle only makes empty "
                                "bytes this way; refusing to load it")
    return b""


def latin1_bytes(text, encoding="utf-8"):
    """_codecs.encode as protocol 2 calls it, and nothing else: the bytes of a latin-1 string."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}): a DataFrame pickle only "
                                "encodes text as latin1; refusing to load it")
    return text.encode("latin1")

SPLITS = ("train", "test_hot", "test_cold")
PICKLE_NAME = re.compile(r"(train|test_hot|test_cold)_stage([12])\.pkl")
LENGTH_SUFFIX = "_length"
COLUMNS = ("label", "aid", *schema.STATIC_FIELDS, *schema.DYNAMIC_FIELDS,
           *(f + LENGTH_SUFFIX for f in schema.DYNAMIC_FIELDS), *schema.AD_FIELDS)
OPTIONAL_COLUMNS = ("uid",)
STAGING = ".import_pickle.tmp"   # + pid: the staging folder inside the output folder


class UnsafePickleError(dataset.DataError):
    """The pickle names a global outside ALLOWED_GLOBALS; nothing of it was run."""


class _DataFrameUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self._path}: refers to {module}.{name}, which a DataFrame pickle never needs; "
                "refusing to load it (it could run code). Only pickles of the published MetaHeac "
                "DataFrames can be imported")
        return getattr(importlib.import_module(target[0]), target[1])


class _CountingReader:
    """A binary file that reports every byte count it reads to `progress`."""

    def __init__(self, file, progress):
        self._file, self._progress = file, progress

    def read(self, size=-1):
        data = self._file.read(size)
        self._progress(len(data))
        return data

    def readinto(self, buffer):
        count = self._file.readinto(buffer)
        self._progress(count)
        return count

    def readline(self, size=-1):
        line = self._file.readline(size)
        self._progress(len(line))
        return line


def import_pandas():
    try:
        return importlib.import_module("pandas")
    except ImportError as e:
        raise dataset.DataError("reading the published .pkl files needs pandas, which is not installed: "
                          "pip install pandas (or pip install -r requirements-dev.txt)") from e


def _reason(e, limit=120):
    """An exception as a short one-line text for a message."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    text = text[:limit] + "..." if len(text) > limit or len(lines) > 1 else text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _size(n_bytes):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def _memory():
    """'N GB of memory, M GB of it available' of this machine, as far as it tells."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "the memory of this machine"
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return f"{_size(total)} of memory" + (f", {_size(available)} of it available" if available is not None else "")


def out_of_memory(path, step, error):
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    return dataset.DataError(f"{path}: out of memory while {step} it (the file is {_size(size)}; {_reason(error)}; "
                       f"this machine has {_memory()}); a DataFrame pickle takes several times its file size in "
                       "memory while it is converted: close other programs, or import on a machine with more "
                       "memory")


def read_dataframe(path, progress=None):
    """Unpickle a pandas DataFrame through the allowlist; `progress(nbytes)` is told of each read."""
    pd = import_pandas()
    if not os.path.isfile(path):
        raise dataset.DataError(f"{path}: file not found; pass an existing .pkl file")
    try:
        with open(path, "rb") as f:
            frame = _DataFrameUnpickler(_CountingReader(f, progress) if progress else f, path).load()
    except dataset.DataError:
        raise
    except MemoryError as e:
        raise out_of_memory(path, "unpickling", e) from e
    except OSError as e:  # permissions, a disk error
        raise dataset.DataError(f"{path}: cannot be read ({e.strerror or e}); check the file and its permissions"
                                ) from e
    except (EOFError, pickle.UnpicklingError) as e:  # cut short, or not pickle bytes
        raise dataset.DataError(f"{path}: not a readable pickle, it is truncated or not a pickle at all "
                          f"({_reason(e)}); download the file again") from e
    except Exception as e:  # the objects it names do not rebuild a DataFrame here
        raise dataset.DataError(f"{path}: its objects do not rebuild a pandas DataFrame with this pandas "
                          f"{pd.__version__} ({_reason(e)}); it is not a DataFrame pickle of the expected shape, "
                          "or was written by a pandas version this one cannot read: pickle the DataFrame "
                          "again with pandas 1.x or 2.x (DataFrame.to_pickle)") from e
    if not isinstance(frame, pd.DataFrame):
        raise dataset.DataError(f"{path}: holds a {type(frame).__name__}, not a pandas DataFrame")
    try:  # a DataFrame made by a constructor trick (e.g. __new__ without its data) has no columns or rows
        len(frame.index), list(frame.columns)
    except Exception as e:
        raise dataset.DataError(f"{path}: holds a DataFrame object without its data ({_reason(e)}); it is not a "
                          "pickled DataFrame of the published files") from e
    return frame


# ---------------------------------------------------------------- DataFrame -> arrays
def dataframe_arrays(frame, path):
    """Our stage arrays from a DataFrame with the published columns (row order kept, index dropped)."""
    columns = list(frame.columns)
    if not len(frame):
        raise dataset.DataError(f"{path}: holds an empty DataFrame ({len(columns)} columns, no rows); a data file "
                          "needs rows: pass the published file, not an empty one")
    missing = [c for c in COLUMNS if c not in columns]
    unexpected = [c for c in columns if c not in COLUMNS + OPTIONAL_COLUMNS]
    duplicated = sorted({c for c in columns if columns.count(c) > 1}, key=str)
    for problem, names in (("missing", missing), ("unexpected", unexpected), ("duplicated", duplicated)):
        if names:
            raise dataset.DataError(f"{path}: {problem} column(s) {names}; a MetaHeac data file has exactly the "
                              f"columns {list(COLUMNS)} (and optionally uid)")
    arrays = {
        "label": _int_column(frame, "label", path, np.int8),
        "aid": _int_column(frame, "aid", path),
        "static": _int_columns(frame, schema.STATIC_FIELDS, path),
        "dynamic": np.concatenate([_list_column(frame, f, w, path)
                                   for f, w in zip(schema.DYNAMIC_FIELDS, schema.DYNAMIC_WIDTHS)], axis=1),
        "lengths": _int_columns(frame, [f + LENGTH_SUFFIX for f in schema.DYNAMIC_FIELDS], path),
        "ad": _int_columns(frame, schema.AD_FIELDS, path),
    }
    if "uid" in columns:
        arrays["uid"] = _int_column(frame, "uid", path, np.int64)
    _check_published_encoding(arrays, path)
    return arrays


def _check_published_encoding(arrays, path):
    """Labels 0/1 and ids >= 0, with a hint for a pickle (dataset.validate_stage's speaks of schema.json)."""
    bad = ~np.isin(arrays["label"], (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise dataset.DataError(f"{path}: column 'label' row {i} is {arrays['label'][i]}; the published files hold "
                          "labels 0 and 1: map the other values (-1 for a non-click) to 0 before pickling")
    for group, fields, spans in (
            ("static", schema.STATIC_FIELDS, [(j, j + 1) for j in range(len(schema.STATIC_FIELDS))]),
            ("dynamic", schema.DYNAMIC_FIELDS, list(zip(schema.DYNAMIC_OFFSETS[:-1], schema.DYNAMIC_OFFSETS[1:]))),
            ("ad", schema.AD_FIELDS, [(j, j + 1) for j in range(len(schema.AD_FIELDS))])):
        for field, (lo, hi) in zip(fields, spans):
            negative = (arrays[group][:, lo:hi] < 0).any(axis=1)
            if negative.any():
                i = int(np.argmax(negative))
                value = int(arrays[group][i, lo:hi].min())
                raise dataset.DataError(f"{path}: column {field!r} row {i} holds id {value}; the published files are "
                                  "label-encoded with ids from 0 (0 for a missing value and list padding): "
                                  "encode the raw values that way, or make the data from the raw files with "
                                  "tools/preprocess.py")


def _int_columns(frame, names, path):
    return np.stack([_int_column(frame, name, path) for name in names], axis=1)


def _int_column(frame, name, path, dtype=np.int32):
    return _narrow(frame[name].to_numpy(), dtype, path, name)


def _list_column(frame, name, width, path):
    cells = frame[name].to_numpy()
    widths = np.fromiter((len(c) if hasattr(c, "__len__") else -1 for c in cells), np.int64, len(cells))
    bad = np.flatnonzero(widths != width)
    if bad.size:
        i = int(bad[0])
        held = f"{widths[i]} ids" if widths[i] >= 0 else f"a {type(cells[i]).__name__}"
        raise dataset.DataError(f"{path}: column {name!r} row {i} (index {frame.index[i]}) holds {held}; "
                          f"{name} lists must hold exactly {width} ids (padded), as in the published data")
    block = np.vstack(cells) if len(cells) else np.zeros((0, width), np.int32)
    return _narrow(block, np.int32, path, name)


def _narrow(values, dtype, path, name):
    """values as `dtype`, refusing non-integers and values the cast would wrap."""
    if not np.issubdtype(values.dtype, np.integer):
        raise dataset.DataError(f"{path}: column {name!r} has dtype {values.dtype}, expected integer ids; "
                          "this is not a processed MetaHeac file (missing values must be label-encoded)")
    limits = np.iinfo(dtype)
    outside = (values < limits.min) | (values > limits.max)
    if outside.any():
        row = int(np.argmax(outside.reshape(len(values), -1).any(axis=1)))
        raise dataset.DataError(f"{path}: column {name!r} row {row} holds {values[row]}, outside the "
                          f"{np.dtype(dtype).name} range of our format")
    return values.astype(dtype)


def field_maxima(arrays):
    """Largest id per field, as schema max_idxs (0 for an empty file)."""
    def column_max(block):
        return block.max(axis=0) if len(block) else np.zeros(block.shape[1], np.int64)
    dynamic = column_max(arrays["dynamic"])
    return {"static": column_max(arrays["static"]).tolist(),
            "dynamic": [int(dynamic[lo:hi].max())
                        for lo, hi in zip(schema.DYNAMIC_OFFSETS[:-1], schema.DYNAMIC_OFFSETS[1:])],
            "ad": column_max(arrays["ad"]).tolist()}


def _check_under_tencent(path, maxima):
    for group, fields in schema.GROUP_FIELDS.items():
        for field, value, top in zip(fields, maxima[group], schema.TENCENT_MAX_IDXS[group]):
            if value > top:
                raise dataset.DataError(f"{path}: field {field!r} holds id {value}, above {top}, its maximum in the "
                                  "full processed Tencent data; this file was encoded differently: "
                                  "import it with --max-idxs data")


# ---------------------------------------------------------------- whole imports
def find_pickles(pkl_dir):
    """[(path, split, stage)] for every {train,test_hot,test_cold}_stage{1,2}.pkl in pkl_dir."""
    if not os.path.isdir(pkl_dir):
        raise dataset.DataError(f"{pkl_dir}: no such folder; pass the folder holding the published .pkl files")
    jobs = [(os.path.join(pkl_dir, name), m.group(1), int(m.group(2)))
            for name in sorted(os.listdir(pkl_dir)) if (m := PICKLE_NAME.fullmatch(name))]
    if not jobs:
        raise dataset.DataError(f"{pkl_dir}: no {{train,test_hot,test_cold}}_stage{{1,2}}.pkl files; import a file "
                          "named otherwise with --pkl FILE --split SPLIT --stage K")
    return jobs


def stage_output(out_dir, split, stage):
    """Where a split's stage file goes: OUT/train/train_stage1.npz, OUT/test_hot/test_stage2.npz, ..."""
    prefix = "train" if split == "train" else "test"
    return os.path.join(out_dir, split, f"{prefix}_stage{stage}.npz")


def _say(bar, text):
    if bar is not None:
        bar.set_description(text)


def convert_pickle(pkl_path, npz_path, tencent_maxima=False, bar=None):
    """Read, check and save one pickle; returns {rows, campaigns, positives, maxima}.

    bar: a progress bar (tools.utils.progress, or None) counting the bytes read; its description names the step.
    """
    name = os.path.basename(pkl_path)
    _say(bar, f"reading {name}")
    frame = read_dataframe(pkl_path, bar.update if bar is not None else None)
    _say(bar, f"converting {name}")
    try:
        arrays = dataframe_arrays(frame, pkl_path)
    except MemoryError as e:
        raise out_of_memory(pkl_path, "converting", e) from e
    del frame  # the object columns take about 4 KB a row
    maxima = field_maxima(arrays)
    if tencent_maxima:
        _check_under_tencent(pkl_path, maxima)
    # Labels, lengths and negative ids, with errors naming the .pkl file.
    dataset.validate_stage(pkl_path, arrays, dataset.make_schema(schema.TENCENT_MAX_IDXS if tencent_maxima else maxima))
    _say(bar, f"saving {os.path.basename(npz_path)}")
    os.makedirs(os.path.dirname(npz_path), exist_ok=True)
    dataset.save_stage(npz_path, arrays)
    return {"rows": len(arrays["label"]), "campaigns": len(np.unique(arrays["aid"])),
            "positives": int(arrays["label"].sum()), "maxima": maxima}


def import_pickles(jobs, out_dir, max_idxs="data", bar=None, force=False):
    """Convert [(pkl_path, split, stage)] into OUT/<split>/ folders with one shared schema.json.

    All or nothing: every split folder written is built anew in a staging
    folder inside out_dir, checked (dataset.load_split) and swapped in only
    when every file was converted. A non-empty out_dir is refused unless
    force, which replaces the split folders written and touches nothing else;
    a stage not imported now is carried over from the folder it replaces (so
    a stage 2 can be added to a folder that has its stage 1), checked against
    the new schema.json.

    max_idxs="data" sizes the vocabulary by the largest id over the files
    imported here and the schema.json of the carried-over stages (so they stay
    valid); "tencent" uses schema.TENCENT_MAX_IDXS, the maxima of the full
    processed data, so that a model built from a subset still has the table
    sizes of the full vocabulary. bar: as for convert_pickle. Returns
    {npz_path: summary} with the final paths.
    """
    if max_idxs not in ("data", "tencent"):
        raise ValueError(f"max_idxs must be 'data' or 'tencent', got {max_idxs!r}")
    _check_jobs(jobs, out_dir)
    splits = sorted({split for _, split, _ in jobs})
    check_out_dir(out_dir, force, splits)
    _check_inputs_outside(jobs, out_dir, splits)
    staging, created = staging_folder(out_dir, STAGING)
    done = False
    try:
        try:
            make_staging(staging)
        except OSError as e:
            raise dataset.DataError(f"{out_dir}: cannot create the output folder ({e.strerror}); check the path and "
                              "its permissions") from e
        summaries = _build(jobs, out_dir, staging, splits, max_idxs, bar)
        check_out_dir(out_dir, force, splits, staging=staging)  # nothing appeared meanwhile
        replace_folders(staging, out_dir, splits)
        done = True
    except OSError as e:
        raise dataset.DataError(f"{e.filename or out_dir}: cannot write the data folders ({e.strerror or e}); "
                          f"check free space and permissions; {out_dir} is unchanged") from e
    finally:
        if not done:
            drop_staging(staging, out_dir, created)
    return summaries


def _build(jobs, out_dir, staging, splits, max_idxs, bar):
    """Write the split folders into staging; returns {final npz path: summary}."""
    carried, earlier = _carry_over(jobs, out_dir, staging, splits)
    summaries = {}
    for pkl, split, stage in jobs:
        summaries[stage_output(out_dir, split, stage)] = convert_pickle(
            pkl, stage_output(staging, split, stage), max_idxs == "tencent", bar)
    if max_idxs == "tencent":
        maxima = schema.TENCENT_MAX_IDXS
    else:
        found = earlier + [s["maxima"] for s in summaries.values()]
        maxima = {group: np.max([m[group] for m in found], axis=0).tolist() for group in schema.GROUPS}
    for path in carried:  # errors name the file in out_dir, not its staged copy
        dataset.load_stage(path, dataset.make_schema(maxima))
    for split in splits:
        _say(bar, f"checking {os.path.join(out_dir, split)}")
        dataset.write_schema(os.path.join(staging, split), maxima)
        dataset.load_split(os.path.join(staging, split))  # the written folder must read back cleanly
    return summaries


def _carry_over(jobs, out_dir, staging, splits):
    """Copy into staging the stage files (and oracles) of the splits written whose stage is not imported now.

    Returns (the original paths copied, the max_idxs of their schema.json files).
    """
    imported = {(split, stage) for _, split, stage in jobs}
    carried, earlier = [], []
    for split in splits:
        os.makedirs(os.path.join(staging, split))
        old_dir = os.path.join(out_dir, split)
        keep = [dataset.stage_path(old_dir, k) for k in (1, 2) if (split, k) not in imported]
        keep = [path for path in keep if path]
        if keep:
            earlier.append(dataset.read_schema(old_dir)["max_idxs"])
        for path in keep:
            shutil.copy2(path, os.path.join(staging, split, os.path.basename(path)))
            oracle = dataset.oracle_path(path)
            if os.path.isfile(oracle):
                shutil.copy2(oracle, os.path.join(staging, split, os.path.basename(oracle)))
            carried.append(path)
    return carried, earlier


def _check_inputs_outside(jobs, out_dir, splits):
    """Refuse an input pickle inside a split folder about to be replaced: it would be deleted with it."""
    for pkl, _, _ in jobs:
        for split in splits:
            if os.path.exists(os.path.join(out_dir, split)) and inside(pkl, os.path.join(out_dir, split)):
                raise dataset.DataError(f"{pkl}: lies inside {os.path.join(out_dir, split)}, which this import "
                                  "replaces; move the .pkl files out of the output folder first")


def _check_jobs(jobs, out_dir):
    """Refuse, before writing anything, a split/stage given twice or a stage 2 without its stage 1."""
    pairs = [(split, stage) for _, split, stage in jobs]
    for pkl, split, stage in jobs:
        if pairs.count((split, stage)) > 1:
            raise dataset.DataError(f"{pkl}: several input files are {split} stage {stage}; give each split and "
                              "stage once")
        split_dir = os.path.join(out_dir, split)
        if stage == 2 and (split, 1) not in pairs and not (os.path.isdir(split_dir)
                                                           and dataset.stage_path(split_dir, 1)):
            raise dataset.DataError(f"{pkl}: a stage-2 file alone does not make a data folder; import the stage-1 "
                              f"file of {split} with it (or, with --force, into an --out that already has it)")
