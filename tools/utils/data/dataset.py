"""Our on-disk format: one `.npz` per stage, a `schema.json` per split folder.

Why `.npz` and not pickles or memory-mapped `.npy`: an `.npz` is a plain zip of
`.npy` arrays, read with `allow_pickle=False`, so a data file can never run
code; one file per stage keeps a split easy to copy and to name in a YAML; the
largest stage of the full data (about 4.4 M rows x 72 int32) is 1.3 GB in
memory, which fits here, so memory mapping would buy little. Members are
deflated (small ids compress about 4x) and carry fixed zip timestamps, so the
same arrays always give the same bytes (the shipped sample is checked that way).

Layout of a split folder (`data/train`, `data/test_hot`, `data/test_cold`):
    schema.json                 field names, list widths, vocabulary maxima
    <prefix>_stage1.npz         seeds (train.csv rows)
    <prefix>_stage2.npz         candidates (test1_truth.csv rows), optional
    <prefix>_stage{1,2}_oracle.npy  true click probability per row, synthetic
                                data only; never an input feature
"""
import hashlib
import io
import json
import os
import zipfile
import zlib

import numpy as np

from .schema import (AD_FIELDS, ARRAYS, DYNAMIC_FIELDS, DYNAMIC_OFFSETS, DYNAMIC_WIDTHS, GROUP_FIELDS, GROUPS,
                     STATIC_FIELDS, TENCENT_MAX_IDXS)
from ..errors import ConfigError, DataError, quoted
from ..files import atomic_write, stop_signals_held, write_json

SCHEMA_FILE = "schema.json"
FORMAT_VERSION = 1
MAX_ID = 2**31 - 2  # ids are int32 and a table has max + 1 rows


# ---------------------------------------------------------------- writing

def save_stage(path, arrays, compress=True):
    """Write a dict of arrays as a byte-reproducible .npz (deflated unless compress=False)."""
    for name in arrays:
        if name not in ARRAYS:
            raise ValueError(f"{path}: unknown array {name!r}; known: {sorted(ARRAYS)}")

    def write(f):
        # A stop may end the run while an array is written, and atomic_write then drops the file; but inside
        # zipfile's own opening and closing steps it would leave the archive unclosable (a ValueError buries the
        # stop's line under a traceback), so there it waits, and comes where the finally clause still closes all.
        archive = member = None
        try:
            with stop_signals_held():
                archive = zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                                          allowZip64=True)
            for name in sorted(arrays):
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = archive.compression
                with stop_signals_held():
                    member = archive.open(info, "w", force_zip64=True)
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name], dtype=ARRAYS[name][0]),
                                          allow_pickle=False)
                with stop_signals_held():
                    member.close()
                    member = None
        finally:
            with stop_signals_held():
                for opened in (member, archive):
                    if opened is not None:
                        opened.close()

    atomic_write(path, write)


def make_schema(max_idxs, vocabulary_sha256=None):
    """The schema dict for vocabulary maxima {"static": [...], "dynamic": [...], "ad": [...]}, with the digest of
    the raw-id maps (tools/utils/data/vocabulary.py) when the data has them."""
    schema = {
        "format_version": FORMAT_VERSION,
        "static_fields": list(STATIC_FIELDS),
        "dynamic_fields": list(DYNAMIC_FIELDS),
        "dynamic_widths": list(DYNAMIC_WIDTHS),
        "ad_fields": list(AD_FIELDS),
        "max_idxs": {k: [int(v) for v in max_idxs[k]] for k in GROUPS},
    }
    if vocabulary_sha256:
        schema["vocabulary_sha256"] = vocabulary_sha256
    return schema


def write_schema(split_dir, max_idxs, vocabulary_sha256=None):
    write_json(os.path.join(split_dir, SCHEMA_FILE), make_schema(max_idxs, vocabulary_sha256))


# ---------------------------------------------------------------- reading
def read_schema(split_dir):
    """Read and check `schema.json` of a split folder; returns the schema dict."""
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir}: no such data folder; make one with tools/preprocess.py, "
                        "tools/import_pickle.py or tools/make_synthetic.py (see readme.md)")
    path = os.path.join(split_dir, SCHEMA_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no schema file; every data folder needs the schema.json "
                        "written by tools/preprocess.py or tools/import_pickle.py")
    try:
        with open(path, "rb") as f:
            sch = json.load(f)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); check its permissions") from e
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({_reason(e)}); regenerate it with tools/preprocess.py") from e
    problem = schema_problem(sch)
    if problem:
        raise DataError(f"{path}: {problem}; regenerate it with tools/preprocess.py (or tools/import_pickle.py)")
    return sch


def schema_problem(sch):
    """What is wrong with a schema dict (schema.json's, or a checkpoint's copy), or None."""
    if not isinstance(sch, dict):
        return f"holds a JSON {type(sch).__name__}, not the schema object"
    expected = make_schema(TENCENT_MAX_IDXS)  # only its field lists are compared
    for key in ("static_fields", "dynamic_fields", "dynamic_widths", "ad_fields"):
        if sch.get(key) != expected[key]:
            return (f"field {key!r} is {quoted(sch.get(key))}, this code expects {expected[key]!r} (the data was "
                    "made for another field layout)")
    mx = sch.get("max_idxs")
    for group, fields in GROUP_FIELDS.items():
        vals = None if not isinstance(mx, dict) else mx.get(group)
        if not (isinstance(vals, list) and len(vals) == len(fields)
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID for v in vals)):
            return (f"max_idxs.{group} must be {len(fields)} integers in 0..{MAX_ID:,} (one per field "
                    f"{list(fields)}; ids are int32), got {quoted(vals)}")
    if not isinstance(sch.get("vocabulary_sha256", ""), str):
        return f"vocabulary_sha256 must be a text digest, got {quoted(sch['vocabulary_sha256'])}"
    return None


def max_idxs_list(sch):
    """max_idxs as the model config writes them: [static, dynamic, ad]."""
    return [sch["max_idxs"][group] for group in GROUPS]


def require_vocabulary(sch, expected, source, expected_source):
    """The data must be encoded as the model's data was: the same maxima (its tables have one row per id) and,
    where both know it, the same raw-id maps (the same maxima can hide another encoding)."""
    if max_idxs_list(sch) != max_idxs_list(expected):
        raise DataError(f"{os.path.join(source, SCHEMA_FILE)}: vocabulary maxima {max_idxs_list(sch)} differ from "
                        f"{expected_source}'s {max_idxs_list(expected)}; the data must be encoded with the "
                        "vocabulary the model was trained on (preprocess them together)")
    ours, theirs = sch.get("vocabulary_sha256"), expected.get("vocabulary_sha256")
    if ours and theirs and ours != theirs:
        raise DataError(f"{os.path.join(source, SCHEMA_FILE)}: encoded with other raw-id maps than {expected_source}'s "
                        "(vocabulary_sha256 differs, although the maxima agree): the ids mean other users and ads. "
                        "Preprocess the data together with the training data, or encode it with the checkpoint's "
                        "vocabulary (tools/expand.py does)")


def load_stage(path, sch):
    """Load one stage file and validate it against the schema dict.

    Returns a dict of arrays. Every problem raises DataError naming the file,
    the field and what to do.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; check the data path in the config "
                        "(runner.train_data_dir / runner.test_data_dir)")
    try:
        arrays = read_npz(path)
    except ArchiveError as e:
        raise DataError(f"{path}: not a readable .npz file of arrays ({e}); regenerate it "
                        "(pickles: convert them with tools/import_pickle.py)") from e
    validate_stage(path, arrays, sch)
    return arrays


def iter_stage(path, sch, rows=65536):
    """A stage file in chunks of `rows` rows, each a dict of arrays validated as load_stage validates a file.

    The members of the .npz are read side by side, one chunk at a time, so memory
    does not grow with the file (a pool of millions of users).
    """
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            members, layout = {}, {}
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    name = info.filename[:-4]
                    members[name], shape, dtype, fortran = _open_member(archive, info)
                    if fortran:
                        raise ArchiveError(f"member {name!r} is in Fortran order; our files are in C order")
                    layout[name] = shape, dtype
            counts = {shape[0] if shape else 0 for shape, _ in layout.values()}
            if len(counts) > 1:
                raise DataError(f"{path}: its arrays have different numbers of rows ({sorted(counts)}); "
                                "regenerate the file")
            n = counts.pop() if counts else 0
            for start in range(0, n, rows):
                k = min(rows, n - start)
                chunk = {}
                for name, (shape, dtype) in layout.items():
                    width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
                    data = members[name].read(k * width * dtype.itemsize)
                    chunk[name] = np.frombuffer(data, dtype).reshape((k,) + tuple(shape[1:]))
                validate_stage(path, chunk, sch)
                yield chunk
            for member in members.values():
                member.read(1)  # at the end: zipfile checks the member's CRC
    except (ArchiveError, *_READ_ERRORS) as e:
        raise DataError(f"{path}: not a readable .npz file ({_reason(e)}); regenerate it") from e


def stage_rows(path):
    """The rows of a stage file, from the header of its label array (nothing else is read)."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            shape = _open_member(archive, archive.getinfo("label.npy"))[1]
    except (ArchiveError, *_READ_ERRORS) as e:
        raise DataError(f"{path}: not a readable stage file ({_reason(e)}); regenerate it") from e
    return shape[0] if shape else 0


def without_uids(split_dir):
    """The split's stage files that hold no uid array (from their member names; no array is read)."""
    found = []
    for path in filter(None, (stage_path(split_dir, k) for k in (1, 2))):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except _READ_ERRORS as e:
            raise DataError(f"{path}: not a readable stage file ({_reason(e)}); regenerate it") from e
        if "uid.npy" not in names:
            found.append(path)
    return found


# ---------------------------------------------------------------- .npz archives that may lie
class ArchiveError(ValueError):
    """An .npz archive that cannot be read as arrays; the message says why (for the caller's one line)."""


_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, MemoryError)
_DEFLATE_RATIO = 1032  # the most deflate can expand: a member claiming more is damaged or crafted
_CHUNK = 1 << 18  # bytes per read: ZipExtFile joins what one read returns, so large reads cost copies


def _reason(e):
    return " ".join(str(e).split())[:200] or type(e).__name__


def read_npz(file):
    """{name: array} of an .npz archive (a path, or its bytes), read without pickle and without allocating more
    than the archive holds: every member's .npy header is checked against the member's size before its array
    is made, so a header claiming 10^10 rows is refused instead of allocated. An ArchiveError otherwise."""
    try:
        with (open(file, "rb") if isinstance(file, (str, os.PathLike)) else io.BytesIO(file)) as f:
            if f.read(6) == b"\x93NUMPY":
                raise ArchiveError("a single .npy array, not an .npz archive of named arrays")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                infos = archive.infolist()
                others = [i.filename for i in infos if not i.filename.endswith(".npy")]
                if others:
                    raise ArchiveError(f"members {quoted(others)} are not .npy arrays")
                return {info.filename[:-4]: _read_member(archive, info) for info in infos}
    except ArchiveError:
        raise
    except _READ_ERRORS as e:
        raise ArchiveError(_reason(e)) from e


def _open_member(archive, info):
    """(the open member after its header, shape, dtype, fortran order), the header checked against the member."""
    name = info.filename[:-4]
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.file_size > (
            info.compress_size if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO * info.compress_size
            + 4096):
        raise ArchiveError(f"member {name!r} claims {info.file_size:,} bytes from {info.compress_size:,} stored, "
                           "more than its compression can give; the file is damaged")
    member = archive.open(info)
    try:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(member)
        if dtype.hasobject:
            raise ArchiveError(f"member {name!r} holds Python objects (pickled); data holds numbers only")
        need, holds = int(np.prod(shape, dtype=object)) * dtype.itemsize, info.file_size - member.tell()
        if need != holds:
            raise ArchiveError(f"member {name!r} claims shape {shape} of {dtype} ({need:,} bytes) but holds "
                               f"{holds:,} bytes; the file is damaged")
    except BaseException:
        member.close()
        raise
    return member, shape, dtype, fortran


def _read_member(archive, info):
    member, shape, dtype, fortran = _open_member(archive, info)
    with member:
        array = np.empty(shape[::-1] if fortran else shape, dtype)
        view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
        while done < len(view):
            n = member.readinto(view[done:done + _CHUNK])
            if not n:
                raise ArchiveError(f"member {info.filename[:-4]!r} is cut short")
            done += n
        member.read(1)  # at the end: zipfile checks the member's CRC
    return array.T if fortran else array


def validate_stage(path, arrays, sch):
    for name, (dtype, tail, required) in ARRAYS.items():
        if name not in arrays:
            if required:
                raise DataError(f"{path}: array {name!r} is missing; a stage file needs "
                                f"{[n for n, a in ARRAYS.items() if a[2]]}")
            continue
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.integer):
            raise DataError(f"{path}: field {name!r} has dtype {a.dtype}, expected integers "
                            f"({np.dtype(dtype).name}); regenerate the file with our tools")
        if a.ndim != 1 + len(tail) or a.shape[1:] != tail:
            raise DataError(f"{path}: field {name!r} has shape {a.shape}, expected (N, {', '.join(map(str, tail))})"
                            if tail else f"{path}: field {name!r} has shape {a.shape}, expected (N,)")
    n = len(arrays["label"])
    for name, a in arrays.items():
        if name not in ARRAYS:
            raise DataError(f"{path}: unknown array {name!r}; expected only {sorted(ARRAYS)}")
        if len(a) != n:
            raise DataError(f"{path}: field {name!r} has {len(a)} rows but 'label' has {n}; "
                            "all arrays of a stage must have one row per example")
    bad = ~np.isin(arrays["label"], (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: field 'label' row {i} is {arrays['label'][i]}; labels must be 0 or 1 "
                        "(raw -1 labels are mapped to 0 by tools/preprocess.py)")
    mx = sch["max_idxs"]
    _check_ids(path, "static", arrays["static"], STATIC_FIELDS, [(j, j + 1) for j in range(len(STATIC_FIELDS))],
               mx["static"])
    _check_ids(path, "dynamic", arrays["dynamic"], DYNAMIC_FIELDS,
               list(zip(DYNAMIC_OFFSETS[:-1], DYNAMIC_OFFSETS[1:])), mx["dynamic"])
    _check_ids(path, "ad", arrays["ad"], AD_FIELDS, [(j, j + 1) for j in range(len(AD_FIELDS))], mx["ad"])
    lengths = arrays["lengths"]
    for j, (field, width) in enumerate(zip(DYNAMIC_FIELDS, DYNAMIC_WIDTHS)):
        col = lengths[:, j]
        bad = (col < 0) | (col > width)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: field 'lengths' ({field}) row {i} is {col[i]}, outside 0..{width} "
                            f"(the width of the {field} list); lengths count the real ids of each list")


def _check_ids(path, name, a, fields, spans, maxima):
    for field, (lo, hi), top in zip(fields, spans, maxima):
        block = a[:, lo:hi]
        if block.size == 0:
            continue
        low, high = int(block.min()), int(block.max())
        if low < 0 or high > top:
            i = int(np.argmax(((block < 0) | (block > top)).any(axis=1)))
            raise DataError(f"{path}: field {name!r} ({field}) row {i} holds id {high if high > top else low}, "
                            f"outside 0..{top} (max_idxs in schema.json); the data and its schema.json "
                            "do not belong together: regenerate both with the same tool run")


def stage_path(split_dir, stage):
    """The stage file of a split folder: <prefix>_stage<k>.npz (prefix train or test)."""
    names = [f for f in sorted(os.listdir(split_dir)) if f.endswith(f"_stage{stage}.npz")] \
        if os.path.isdir(split_dir) else []
    if len(names) > 1:
        raise DataError(f"{split_dir}: several stage-{stage} files {names}; keep one")
    return os.path.join(split_dir, names[0]) if names else None


def load_split(split_dir, stages=(1, 2)):
    """Read a split folder: {"schema": dict, "stage1": arrays, "stage2": arrays or None}."""
    sch = read_schema(split_dir)
    out = {"schema": sch}
    for k in (1, 2):
        path = stage_path(split_dir, k) if k in stages else None
        if k == 1 and k in stages and path is None:
            raise DataError(f"{split_dir}: no *_stage1.npz file; a data folder needs at least stage 1")
        out[f"stage{k}"] = load_stage(path, sch) if path else None
    return out


def data_digest(split_dir):
    """{file name: sha256 of its bytes} of what a reader of the folder may read: schema.json, vocabulary.npz and
    every stage file (not the oracles). A checkpoint records it so that a resume on changed data is refused."""
    names = [n for n in sorted(os.listdir(split_dir)) if n in (SCHEMA_FILE, "vocabulary.npz")
             or (n.endswith(".npz") and "_stage" in n)]
    digests = {}
    for name in names:
        h = hashlib.sha256()
        with open(os.path.join(split_dir, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digests[name] = h.hexdigest()
    return digests


def oracle_path(stage_file):
    return stage_file[:-len(".npz")] + "_oracle.npy"


def load_oracle(stage_file, n_rows):
    """True click probabilities of a synthetic stage file, or None where the data has none."""
    path = oracle_path(stage_file)
    if not os.path.isfile(path):
        return None
    try:
        p = np.array(np.load(path, mmap_mode="r", allow_pickle=False))  # mapped: a lying header allocates nothing
    except _READ_ERRORS as e:
        raise DataError(f"{path}: not a readable .npy file ({_reason(e)}); regenerate the data with "
                        "tools/make_synthetic.py and tools/preprocess.py") from e
    if p.shape != (n_rows,) or not np.all((p >= 0) & (p <= 1)):
        raise DataError(f"{path}: expected {n_rows} probabilities in [0, 1], got shape {p.shape}; "
                        "regenerate the data with tools/make_synthetic.py and tools/preprocess.py")
    return p


# ---------------------------------------------------------------- rows by campaign
class CampaignIndex:
    """The rows of a stage grouped by campaign: rows_of(i) is a slice, no scan of the table."""

    def __init__(self, aid):
        self.order = np.argsort(aid, kind="stable")  # stable: a campaign's rows keep file order
        self.aids, self.starts, self.counts = np.unique(aid[self.order], return_index=True, return_counts=True)

    def __len__(self):
        return len(self.aids)

    def rows_of(self, i):
        return self.order[self.starts[i]:self.starts[i] + self.counts[i]]


def take(arrays, rows):
    """The given rows of every array of a stage, as a batch dict."""
    return {name: a[rows] for name, a in arrays.items()}


def held_out(data_dir, aids, amount, seed, source="runner.valid_campaigns"):
    """The sorted aids of the validation campaigns among `aids` (the training campaigns of data_dir), or an empty
    array: `amount` (runner.valid_campaigns) drawn with the run's seed among those with candidates (stage 2);
    tools/utils/run/validation.py scores them. source: where the amount was set, for the errors."""
    if not amount:
        return np.empty(0, np.int64)
    stage2 = stage_path(data_dir, 2)
    if stage2 is None:
        raise ConfigError(f"{source} needs candidates (a *_stage2.npz) in {data_dir}; "
                          "set runner.valid_campaigns: 0 or preprocess data with test1_truth.csv")
    with np.load(stage2, allow_pickle=False) as archive:
        candidates = np.unique(archive["aid"])
    eligible = np.intersect1d(np.asarray(aids), candidates)
    count = int(amount) if amount >= 1 else max(1, int(round(amount * len(aids))))
    if amount >= 1 and amount != count:
        raise ConfigError(f"{source} is {amount}; give a whole number of campaigns, or "
                          "a fraction below 1")
    if count >= len(aids) or count > len(eligible):
        asked = f"{amount} of {len(aids)} campaigns rounds to {count}" if amount < 1 else f"asks for {count}"
        raise ConfigError(f"{source}: {asked} validation campaigns, but "
                          f"{data_dir} has {len(aids)} training campaigns, {len(eligible)} of them with candidates; "
                          "ask for fewer")
    return np.sort(np.random.default_rng([seed, 11]).choice(eligible, count, replace=False))
