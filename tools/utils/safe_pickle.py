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
"""
import importlib
import os
import pickle
import re

import numpy as np

from . import dataset as D
from . import schema as S

# Global named in a pickle -> where it lives now. Everything here only builds
# values (arrays, dtypes, indexes, the frame itself); nothing calls back into
# arbitrary code. Deliberately absent: builtins other than slice (eval, exec,
# getattr, __import__), copyreg/codecs/functools/operator helpers, and the
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
}

SPLITS = ("train", "test_hot", "test_cold")
PICKLE_NAME = re.compile(r"(train|test_hot|test_cold)_stage([12])\.pkl")
LENGTH_SUFFIX = "_length"
COLUMNS = ("label", "aid", *S.STATIC_FIELDS, *S.DYNAMIC_FIELDS,
           *(f + LENGTH_SUFFIX for f in S.DYNAMIC_FIELDS), *S.AD_FIELDS)
OPTIONAL_COLUMNS = ("uid",)


class UnsafePickleError(D.DataError):
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
        raise D.DataError("reading the published .pkl files needs pandas, which is not installed: "
                          "pip install pandas (or pip install -r requirements-dev.txt)") from e


def read_dataframe(path, progress=None):
    """Unpickle a pandas DataFrame through the allowlist; `progress(nbytes)` is told of each read."""
    pd = import_pandas()
    if not os.path.isfile(path):
        raise D.DataError(f"{path}: file not found; pass an existing .pkl file")
    try:
        with open(path, "rb") as f:
            frame = _DataFrameUnpickler(_CountingReader(f, progress) if progress else f, path).load()
    except D.DataError:
        raise
    except Exception as e:  # any failure while decoding untrusted bytes is a bad file
        raise D.DataError(f"{path}: not a readable pandas pickle ({type(e).__name__}: {e}); "
                          "download the file again") from e
    if not isinstance(frame, pd.DataFrame):
        raise D.DataError(f"{path}: holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame


# ---------------------------------------------------------------- DataFrame -> arrays
def dataframe_arrays(frame, path):
    """Our stage arrays from a DataFrame with the published columns (row order kept, index dropped)."""
    columns = list(frame.columns)
    missing = [c for c in COLUMNS if c not in columns]
    unexpected = [c for c in columns if c not in COLUMNS + OPTIONAL_COLUMNS]
    duplicated = sorted({c for c in columns if columns.count(c) > 1}, key=str)
    for problem, names in (("missing", missing), ("unexpected", unexpected), ("duplicated", duplicated)):
        if names:
            raise D.DataError(f"{path}: {problem} column(s) {names}; a MetaHeac data file has exactly the "
                              f"columns {list(COLUMNS)} (and optionally uid)")
    arrays = {
        "label": _int_column(frame, "label", path, np.int8),
        "aid": _int_column(frame, "aid", path),
        "static": _int_columns(frame, S.STATIC_FIELDS, path),
        "dynamic": np.concatenate([_list_column(frame, f, w, path)
                                   for f, w in zip(S.DYNAMIC_FIELDS, S.DYNAMIC_WIDTHS)], axis=1),
        "lengths": _int_columns(frame, [f + LENGTH_SUFFIX for f in S.DYNAMIC_FIELDS], path),
        "ad": _int_columns(frame, S.AD_FIELDS, path),
    }
    if "uid" in columns:
        arrays["uid"] = _int_column(frame, "uid", path, np.int64)
    return arrays


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
        raise D.DataError(f"{path}: column {name!r} row {i} (index {frame.index[i]}) holds {held}; "
                          f"{name} lists must hold exactly {width} ids (padded), as in the published data")
    block = np.vstack(cells) if len(cells) else np.zeros((0, width), np.int32)
    return _narrow(block, np.int32, path, name)


def _narrow(values, dtype, path, name):
    """values as `dtype`, refusing non-integers and values the cast would wrap."""
    if not np.issubdtype(values.dtype, np.integer):
        raise D.DataError(f"{path}: column {name!r} has dtype {values.dtype}, expected integer ids; "
                          "this is not a processed MetaHeac file (missing values must be label-encoded)")
    limits = np.iinfo(dtype)
    outside = (values < limits.min) | (values > limits.max)
    if outside.any():
        row = int(np.argmax(outside.reshape(len(values), -1).any(axis=1)))
        raise D.DataError(f"{path}: column {name!r} row {row} holds {values[row]}, outside the "
                          f"{np.dtype(dtype).name} range of our format")
    return values.astype(dtype)


def field_maxima(arrays):
    """Largest id per field, as schema max_idxs (0 for an empty file)."""
    def column_max(block):
        return block.max(axis=0) if len(block) else np.zeros(block.shape[1], np.int64)
    dynamic = column_max(arrays["dynamic"])
    return {"static": column_max(arrays["static"]).tolist(),
            "dynamic": [int(dynamic[lo:hi].max()) for lo, hi in zip(S.DYNAMIC_OFFSETS[:-1], S.DYNAMIC_OFFSETS[1:])],
            "ad": column_max(arrays["ad"]).tolist()}


def _check_under_tencent(path, maxima):
    for group, fields in S.GROUP_FIELDS.items():
        for field, value, top in zip(fields, maxima[group], S.TENCENT_MAX_IDXS[group]):
            if value > top:
                raise D.DataError(f"{path}: field {field!r} holds id {value}, above {top}, its maximum in the "
                                  "full processed Tencent data; this file was encoded differently: "
                                  "import it with --max-idxs data")


# ---------------------------------------------------------------- whole imports
def find_pickles(pkl_dir):
    """[(path, split, stage)] for every {train,test_hot,test_cold}_stage{1,2}.pkl in pkl_dir."""
    if not os.path.isdir(pkl_dir):
        raise D.DataError(f"{pkl_dir}: no such folder; pass the folder holding the published .pkl files")
    jobs = [(os.path.join(pkl_dir, name), m.group(1), int(m.group(2)))
            for name in sorted(os.listdir(pkl_dir)) if (m := PICKLE_NAME.fullmatch(name))]
    if not jobs:
        raise D.DataError(f"{pkl_dir}: no {{train,test_hot,test_cold}}_stage{{1,2}}.pkl files; import a file "
                          "named otherwise with --pkl FILE --split SPLIT --stage K")
    return jobs


def stage_output(out_dir, split, stage):
    """Where a split's stage file goes: OUT/train/train_stage1.npz, OUT/test_hot/test_stage2.npz, ..."""
    prefix = "train" if split == "train" else "test"
    return os.path.join(out_dir, split, f"{prefix}_stage{stage}.npz")


def _say(bar, text):
    if bar is not None:
        bar.set_description_str(text)


def convert_pickle(pkl_path, npz_path, tencent_maxima=False, bar=None):
    """Read, check and save one pickle; returns {rows, campaigns, positives, maxima}.

    bar: a tqdm bar (or None) counting the bytes read; its description names the step.
    """
    name = os.path.basename(pkl_path)
    _say(bar, f"reading {name}")
    frame = read_dataframe(pkl_path, bar.update if bar is not None else None)
    _say(bar, f"converting {name}")
    arrays = dataframe_arrays(frame, pkl_path)
    del frame  # the object columns take about 4 KB a row
    maxima = field_maxima(arrays)
    if tencent_maxima:
        _check_under_tencent(pkl_path, maxima)
    # Labels, lengths and negative ids, with errors naming the .pkl file.
    D.validate_stage(pkl_path, arrays, D.make_schema(S.TENCENT_MAX_IDXS if tencent_maxima else maxima))
    _say(bar, f"saving {os.path.basename(npz_path)}")
    os.makedirs(os.path.dirname(npz_path), exist_ok=True)
    D.save_stage(npz_path, arrays)
    return {"rows": len(arrays["label"]), "campaigns": len(np.unique(arrays["aid"])),
            "positives": int(arrays["label"].sum()), "maxima": maxima}


def import_pickles(jobs, out_dir, max_idxs="data", bar=None):
    """Convert [(pkl_path, split, stage)] into OUT/<split>/ folders with one shared schema.json.

    max_idxs="data" sizes the vocabulary by the largest id over the files
    imported here and the schema.json already in the folders written to (so a
    stage 2 imported after its stage 1 keeps stage 1 valid); "tencent" uses
    schema.TENCENT_MAX_IDXS, the maxima of the full processed data, so that a
    model built from a subset still has the table sizes of the full
    vocabulary. bar: as for convert_pickle. Returns {npz_path: summary}.
    """
    if max_idxs not in ("data", "tencent"):
        raise ValueError(f"max_idxs must be 'data' or 'tencent', got {max_idxs!r}")
    _check_jobs(jobs, out_dir)
    split_dirs = sorted({os.path.join(out_dir, split) for _, split, _ in jobs})
    earlier = [D.read_schema(d)["max_idxs"] for d in split_dirs if os.path.isfile(os.path.join(d, D.SCHEMA_FILE))]
    summaries = {}
    for pkl, split, stage in jobs:
        npz = stage_output(out_dir, split, stage)
        summaries[npz] = convert_pickle(pkl, npz, max_idxs == "tencent", bar)
    if max_idxs == "tencent":
        maxima = S.TENCENT_MAX_IDXS
    else:
        found = earlier + [s["maxima"] for s in summaries.values()]
        maxima = {group: np.max([m[group] for m in found], axis=0).tolist() for group in S.GROUPS}
    for split_dir in split_dirs:
        _say(bar, f"checking {split_dir}")
        D.write_schema(split_dir, maxima)
        D.load_split(split_dir)  # the written folder must read back cleanly
    return summaries


def _check_jobs(jobs, out_dir):
    """Refuse, before writing anything, a split/stage given twice or a stage 2 without its stage 1."""
    pairs = [(split, stage) for _, split, stage in jobs]
    for pkl, split, stage in jobs:
        if pairs.count((split, stage)) > 1:
            raise D.DataError(f"{pkl}: several input files are {split} stage {stage}; give each split and "
                              "stage once")
        split_dir = os.path.join(out_dir, split)
        if stage == 2 and (split, 1) not in pairs and not (os.path.isdir(split_dir) and D.stage_path(split_dir, 1)):
            raise D.DataError(f"{pkl}: a stage-2 file alone does not make a data folder; import the stage-1 "
                              f"file of {split} with it (or into an --out that already has it)")
