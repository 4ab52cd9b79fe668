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
import os

import numpy as np

from . import schema
from .dataset import ArchiveError, read_npz
from ..errors import DataError
from ..files import atomic_write, npz_bytes

VOCAB_FILE = "vocabulary.npz"
FIELDS = schema.STATIC_FIELDS + schema.DYNAMIC_FIELDS + schema.AD_FIELDS


def to_bytes(vocab):
    """The .npz bytes of {field: sorted raw values}, the same bytes for the same vocabulary."""
    return npz_bytes({field: np.asarray(vocab[field], dtype=np.int64) for field in FIELDS})


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
        vocab = read_npz(data)
    except ArchiveError as e:
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


class UnknownIds:
    """Per field, how many raw ids were looked up and how many were not in the vocabulary."""

    def __init__(self):
        self.seen, self.unknown = dict.fromkeys(FIELDS, 0), dict.fromkeys(FIELDS, 0)

    def add(self, field, present, unknown):
        self.seen[field] += int(present)
        self.unknown[field] += int(unknown)

    def report(self, what):
        """One line: the fields with unknown ids and their share, e.g. 'pool: 3.2% of kw1 ids unknown, ...';
        None when nothing was looked up (inputs already encoded)."""
        if not any(self.seen.values()):
            return None
        shares = [f"{self.unknown[f] / self.seen[f]:.1%} of {f} ids ({self.unknown[f]})"
                  for f in FIELDS if self.unknown[f]]
        if not shares:
            return f"{what}: every id is in the training vocabulary"
        return f"{what}: not in the training vocabulary, so encoded as missing: " + ", ".join(shares)

    def as_dict(self):
        return {f: {"ids": self.seen[f], "unknown": self.unknown[f]} for f in FIELDS}

    def mismatch(self, most=0.5):
        """Why these ids look encoded for another dataset, or None: every ad id unknown (a new campaign keeps
        at least its creative size or product type), or more than `most` of the user ids unknown."""
        problems = []
        ads = [sum(getattr(self, kind)[f] for f in schema.AD_FIELDS) for kind in ("seen", "unknown")]
        if ads[0] and ads[0] == ads[1]:
            problems.append(f"all {ads[0]} of its ad ids")
        user = [sum(getattr(self, kind)[f] for f in schema.STATIC_FIELDS + schema.DYNAMIC_FIELDS)
                for kind in ("seen", "unknown")]
        if user[0] and user[1] > most * user[0]:
            problems.append(f"{user[1] / user[0]:.0%} of its seeds' user ids ({user[1]} of {user[0]})")
        return " and ".join(problems) + " are not in the checkpoint's vocabulary" if problems else None


def encode_users(static, dynamic, vocab, unknown):
    """Encode raw user tables (static [N, 7], dynamic [N, 50]; -1 missing or padding) with the vocabulary."""
    out_static = np.empty(static.shape, np.int32)
    out_dynamic = np.empty(dynamic.shape, np.int32)
    for j, field in enumerate(schema.STATIC_FIELDS):
        out_static[:, j], bad = encode(static[:, j], vocab[field])
        unknown.add(field, (static[:, j] != -1).sum(), bad)
    for j, field in enumerate(schema.DYNAMIC_FIELDS):
        lo, hi = schema.DYNAMIC_OFFSETS[j], schema.DYNAMIC_OFFSETS[j + 1]
        out_dynamic[:, lo:hi], bad = encode(dynamic[:, lo:hi], vocab[field])
        unknown.add(field, (dynamic[:, lo:hi] != -1).sum(), bad)
    return out_static, out_dynamic


def encode_ad(raw_row, vocab, unknown):
    """Encode one raw ad row (its AD_FIELDS values) with the vocabulary."""
    ids = np.empty(len(schema.AD_FIELDS), np.int32)
    for j, field in enumerate(schema.AD_FIELDS):
        encoded, bad = encode([raw_row[j]], vocab[field])
        ids[j] = encoded[0]
        unknown.add(field, raw_row[j] != -1, bad)
    return ids
