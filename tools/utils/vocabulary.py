"""The vocabulary: the raw-id -> index map of every field, kept beside schema.json and in every checkpoint.

tools/preprocess.py label-encodes each field by the rank of its raw values in
their sorted set, with -1 (missing) always in it: index 0 is "missing", and
the vocabulary of a field is that sorted array of raw values. It is stored as
vocabulary.npz, one int64 array per field name, read with allow_pickle=False
(it can never run code); kw1's 263 k ids take 2 MB. Its sha256 (`digest`)
goes into schema.json as "vocabulary_sha256", so two data folders, or a data
folder and a checkpoint, can be checked to share one encoding even when
their maxima agree.

encode() maps new raw values with it: a value never seen in training becomes
index 0, the missing id, and is counted (a new advertiser or campaign is the
normal case, not an error).
"""
import hashlib
import io
import os

import numpy as np

from . import schema as S
from .errors import DataError
from .files import atomic_write

VOCAB_FILE = "vocabulary.npz"
FIELDS = S.STATIC_FIELDS + S.DYNAMIC_FIELDS + S.AD_FIELDS


def to_bytes(vocab):
    """The .npz bytes of {field: sorted raw values}, the same bytes for the same vocabulary."""
    buf = io.BytesIO()
    np.savez(buf, **{field: np.asarray(vocab[field], dtype=np.int64) for field in FIELDS})
    return buf.getvalue()


def digest(vocab):
    """sha256 of the vocabulary's values, field by field (not of a file's bytes)."""
    h = hashlib.sha256()
    for field in FIELDS:
        h.update(field.encode() + b"\0" + np.asarray(vocab[field], dtype="<i8").tobytes())
    return h.hexdigest()


def save(folder, vocab):
    """Write folder/vocabulary.npz; returns its digest."""
    data = to_bytes(vocab)
    atomic_write(os.path.join(folder, VOCAB_FILE), lambda f: f.write(data))
    return digest(vocab)


def load(folder, required=True):
    """{field: sorted raw values} of folder/vocabulary.npz (or None when absent and not required), checked."""
    path = os.path.join(folder, VOCAB_FILE)
    if not os.path.isfile(path):
        if required:
            raise DataError(f"{path}: not found; the raw-id maps are written by tools/preprocess.py (data imported "
                            "from the published pickles has none: raw users cannot be encoded for it)")
        return None
    with open(path, "rb") as f:
        return from_bytes(f.read(), path)


def from_bytes(data, path):
    """The checked vocabulary of vocabulary.npz bytes; `path` names them in errors."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            vocab = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a vocabulary archive ({e}); regenerate it with tools/preprocess.py") from e
    for field in FIELDS:
        values = vocab.get(field)
        if values is None or values.ndim != 1 or not len(values) or values[0] != -1 \
                or not np.all(np.diff(values) > 0):
            raise DataError(f"{path}: field {field!r} is not a sorted array of raw ids starting with -1 (missing); "
                            "regenerate it with tools/preprocess.py")
    return vocab


def encode(values, field_vocab):
    """(indices like values, number of values not in the vocabulary): unseen values get 0, the missing id."""
    values = np.asarray(values, dtype=np.int64)
    pos = np.searchsorted(field_vocab, values)
    pos = np.minimum(pos, len(field_vocab) - 1)
    known = field_vocab[pos] == values
    return np.where(known, pos, 0).astype(np.int32), int((~known).sum())
