"""Streaming parser of userFeature.data into fixed-width NumPy tables.

The file (11.4 M lines, several GB at full size) is cut into blocks of whole
lines; each block is parsed on its own, by up to `workers` forked processes,
and the users that occur in labelled rows are written straight into tables
shared with the parent (anonymous shared memory): user i (its index in the
sorted labelled uids) owns row i of
    static   (U, 7)  int32  raw value, -1 when the group is missing
    dynamic  (U, 50) int32  the first 10 (interests) or 5 (kw, topic) raw
                            values of each list, -1 padding
    lengths  (U, 7)  int8   values kept per list, 0 when missing
so no per-user Python object ever exists. Groups the model does not use
(marriageStatus, ct, os, appIdAction...) are skipped without being checked.

A line is bad when it has no uid group, a used group twice, a used group
without values, a single-valued group with several values, a value that is
not an integer in range, or a carriage return inside it; and the last line is
bad when the file does not end with a line break (a file cut mid-line: the
last user's groups may be missing). Every line is checked, labelled user or not.
"""
import collections
import mmap
import multiprocessing
import os
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import schema
from .dataset import DataError
from ..files import stop_signals_held
from ..progress import progress as progress_bar
from .raw_csv import BOM, excerpt

SLOTS = ("uid",) + schema.STATIC_FIELDS + schema.DYNAMIC_FIELDS
SLOT_OF = {name.encode(): i for i, name in enumerate(SLOTS)}
N_STATIC = len(schema.STATIC_FIELDS)
VALUE_RANGE = (-1, 2 ** 31 - 1)   # field values: -1 (missing) or a non-negative int32
UID_RANGE = (0, 2 ** 53 - 1)      # same bound as the ids of the CSV files
BLOCK_BYTES = 16 << 20
INT_TOKEN = re.compile(rb"-?[0-9]+")
CLEAN_BYTES = b"0123456789 \n"
HEAD_BYTES = 1 << 16  # a file whose first 64 KB hold no line break is refused before parsing
TRUNCATED = ("the last line does not end with a line break: the file looks cut off mid-line (an interrupted "
             "download or copy?), so this user's line may be incomplete")
CARRIAGE_RETURN = ("holds a carriage return (\\r) inside the line (mixed or CR-only line endings?); "
                   "convert the file to \\n line endings")


@dataclass
class UserTable:
    static: np.ndarray
    dynamic: np.ndarray
    lengths: np.ndarray
    found: np.ndarray        # (U,) bool: the user has exactly one good line
    lines: int               # lines read
    bad_lines: int           # lines skipped (bad, or a repeated labelled uid)
    first_bad: str           # message about the first skipped line, "" when none


def read_users(path, uids, workers=2, skip_bad_lines=False, progress=True):
    """Parse userFeature.data for the users `uids` (sorted, unique int64, at least one)."""
    n = len(uids)
    check_line_breaks(path)
    static = shared_array((n, N_STATIC), np.int32, -1)
    dynamic = shared_array((n, schema.DYNAMIC_WIDTH), np.int32, -1)
    lengths = shared_array((n, len(schema.DYNAMIC_FIELDS)), np.int8, 0)
    ranges = block_ranges(path, BLOCK_BYTES)
    state = dict(path=path, uids=uids, tables=(static, dynamic, lengths), size=os.path.getsize(path))
    lines, users, user_lines, bad_lines, first_bad = 0, [], [], 0, ""
    with progress_bar(disable=not progress, total=state["size"], unit="B", unit_scale=True,
                      desc="userFeature.data", leave=False) as bar, \
            fork_map(parse_range, ranges, workers, state) as results:
        for (start, end), (n_lines, block_users, block_lines, problems) in zip(ranges, results):
            if problems:
                i, message = problems[0]
                where = f"{path} line {lines + i + 1}: {message}"
                if not skip_bad_lines:
                    raise DataError(f"{where}; fix the line, or rerun with --skip-bad-lines to drop it")
                bad_lines += len(problems)
                first_bad = first_bad or where
            users.append(block_users)
            user_lines.append(block_lines + lines + 1)
            lines += n_lines
            bar.update(end - start)
    users, user_lines = np.concatenate(users), np.concatenate(user_lines)
    found, repeated = single_lines(path, uids, users, user_lines, skip_bad_lines)
    static[repeated], dynamic[repeated], lengths[repeated] = -1, -1, 0  # rows mixed from several lines
    if len(repeated):
        bad_lines += int(np.isin(users, repeated).sum())
        first_bad = first_bad or f"{path}: uid {uids[repeated[0]]} appears on several lines"
    return UserTable(static, dynamic, lengths, found, lines, bad_lines, first_bad)


UID_TEXT = re.compile(rb"(?:^|\|)uid ([^|\n]*)", re.MULTILINE)  # a uid group's text, as split_groups cuts it
UID_FIRST = re.compile(rb"^uid ([0-9]{1,15})(?=[|\n])", re.MULTILINE)  # the usual line's: below 2^53 by its digits


def uids_of(data):
    """The uids of a block of userFeature.data lines, in line order, read as parse_block reads them (a uid group
    anywhere on the line, any spacing); a uid group it refuses is left out, and its parse names the line."""
    usual = UID_FIRST.findall(data)
    if len(usual) == data.count(b"\n") + (not data.endswith(b"\n")):  # every line the usual one: 2x faster
        return np.array(usual, dtype=np.int64)
    flat, _, _ = parse_values(UID_TEXT.findall(data), "uid", *UID_RANGE, single=True)
    return flat


def iter_users(path, workers=2, block_bytes=BLOCK_BYTES):
    """Every user of userFeature.data, block by block: (uids [n], static [n, 7], dynamic [n, 50], lengths [n, 7])
    raw values in file order; a bad line or a uid repeated inside a block is a DataError naming the line
    (repeats across blocks are the caller's to find).

    Blocks are parsed by `workers` forked processes while the caller works on the blocks before; at most
    workers + 1 parsed blocks wait at any time, so memory does not grow with the file.
    """
    check_line_breaks(path)
    ranges = block_ranges(path, block_bytes)
    lines = 0
    with fork_map(parse_pool_range, ranges, workers, dict(path=path, size=os.path.getsize(path))) as parsed:
        for n_lines, uids, static, dynamic, lengths, problem in parsed:
            if problem:
                i, message = problem
                raise DataError(f"{path} line {lines + i + 1}: {message}")
            yield uids, static, dynamic, lengths
            lines += n_lines


def parse_pool_range(state, byte_range):
    """Parse every user of one block of state["path"]: (lines, uids, static, dynamic, lengths, the first problem
    or None)."""
    start, end = byte_range
    with open(state["path"], "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    uids = np.unique(uids_of(data))
    static = np.full((len(uids), N_STATIC), -1, np.int32)
    dynamic = np.full((len(uids), schema.DYNAMIC_WIDTH), -1, np.int32)
    lengths = np.zeros((len(uids), len(schema.DYNAMIC_FIELDS)), np.int8)
    n_lines, users, at, problems = parse_block(data, uids, static, dynamic, lengths,
                                               truncated=end == state["size"] and not data.endswith(b"\n"))
    if problems:
        return n_lines, None, None, None, None, (problems[0][0], problems[0][1] + "; fix the line")
    if len(users) != len(uids) or len(np.unique(users)) != len(users):
        seen = np.bincount(users, minlength=len(uids))
        k = int(np.argmax(seen != 1))
        second = at[users == k][1] if seen[k] > 1 else 0
        return n_lines, None, None, None, None, (int(second), f"uid {uids[k]} is on {seen[k]} lines of this block; "
                                                              "a pool lists each user once")
    return n_lines, uids[users], static[users], dynamic[users], lengths[users], None  # users: in line order


def check_line_breaks(path):
    """Refuse a file whose start holds no line break but carriage returns: one "line" of gigabytes otherwise."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith(BOM):
        raise DataError(f"{path}: starts with a UTF-8 byte-order mark (as some editors write); save it without "
                        f"one, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")
    if b"\r" in head and b"\n" not in head:
        raise DataError(f"{path}: no line breaks found (CR-only line endings?) in its first {len(head):,} bytes; "
                        "convert the file to \\n line endings (e.g. tr '\\r' '\\n' < old > new)")


def single_lines(path, uids, users, user_lines, skip_bad_lines):
    """(found mask, users with several lines); raises on a repeat unless skip_bad_lines."""
    counts = np.bincount(users, minlength=len(uids))
    repeated = np.flatnonzero(counts > 1)
    if len(repeated) and not skip_bad_lines:
        first, second = np.sort(user_lines[users == repeated[0]])[:2]
        raise DataError(f"{path} line {second}: uid {uids[repeated[0]]} already appeared on line {first}; "
                        "each user needs one line (remove one, or rerun with --skip-bad-lines "
                        "to drop that user)")
    return counts == 1, repeated


def shared_array(shape, dtype, fill):
    """An array in anonymous shared memory: forked workers write into the parent's copy."""
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    array = np.frombuffer(buf, dtype, count).reshape(shape)
    array.fill(fill)
    return array


def block_ranges(path, block_bytes):
    """(start, end) byte ranges of about block_bytes each, cut after a newline."""
    size = os.path.getsize(path)
    starts = [0]
    with open(path, "rb") as f:
        while starts[-1] + block_bytes < size:
            f.seek(starts[-1] + block_bytes)
            f.readline()
            if f.tell() >= size:
                break
            starts.append(f.tell())
    return list(zip(starts, starts[1:] + [size]))


_FORKED = {}  # fork_map's (func, state) by call, set before its pool forks: the workers inherit them


def quiet_worker_signals():
    """Pool workers die quietly: default SIGTERM (the parent terminates the pool with it, and the CLI's
    handler, inherited through fork, would print a traceback per worker) and no Ctrl-C (the parent
    handles it and ends the pool)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def forked_pool(processes, initializer, initargs=()):
    """A pool of forked workers, terminated and joined however the block ends. Made and ended with the stop
    signals held: a stop inside Pool() once its threads ran left a pool that no one ended, and its worker
    handler forked new workers that outlived the run, waiting forever."""
    pool = None
    try:
        with stop_signals_held():
            pool = multiprocessing.get_context("fork").Pool(processes, initializer, initargs)
        yield pool
    finally:
        with stop_signals_held():
            if pool is not None:
                pool.terminate()
                pool.join()


@contextmanager
def fork_map(func, items, workers, state):
    """Iterator over func(state, item) for the items, in order: in this process when
    workers <= 1, else in a pool of forked processes, at most workers + 1 items
    ahead of the consumer (so results wait in memory a few at a time). The
    workers inherit `state` through the fork (_FORKED), big arrays included (and
    write into shared ones), instead of receiving pickled copies."""
    key = id(state)
    _FORKED[key] = (func, state)
    try:
        if workers <= 1 or len(items) < 2:
            yield (func(state, item) for item in items)
        else:
            with forked_pool(min(workers, len(items)), quiet_worker_signals) as pool:
                yield _ahead(pool, key, items, workers + 1)
    finally:
        del _FORKED[key]


def _forked_call(key, item):
    func, state = _FORKED[key]
    return func(state, item)


def _ahead(pool, key, items, window):
    pending = collections.deque()
    for item in items:
        pending.append(pool.apply_async(_forked_call, (key, item)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def parse_range(state, byte_range):
    """Parse one block of state["path"] into the shared tables of read_users."""
    start, end = byte_range
    with open(state["path"], "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    truncated = end == state["size"] and not data.endswith(b"\n")
    return parse_block(data, state["uids"], *state["tables"], truncated=truncated)


def parse_block(data, uids, static, dynamic, lengths, truncated=False):
    """Parse whole lines and write the users found in `uids` into the tables.

    truncated: data ends the file without a line break, so its last line is bad.
    Returns (lines, user index of each good labelled line, that line's index in
    the block, problems: sorted [(line index, message)] of the bad lines).
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    where, texts = split_groups(lines)
    problems = {}
    parsed = []
    for slot, name in enumerate(SLOTS):
        at = np.array(where[slot], np.int64)
        low, high = UID_RANGE if slot == 0 else VALUE_RANGE
        flat, counts, bad = parse_values(texts[slot], name, low, high, single=slot <= N_STATIC)
        for k, message in bad.items():
            problems.setdefault(int(at[k]), message)
        for k in np.flatnonzero(np.diff(at) == 0):
            problems.setdefault(int(at[k + 1]), f"group '{name}' appears twice")
        parsed.append((at, flat, counts))
    uid_at, uid_values, uid_counts = parsed[0]
    no_uid = np.ones(len(lines), bool)
    no_uid[uid_at] = False
    for i in np.flatnonzero(no_uid):
        if lines[i].strip():
            problems.setdefault(int(i), "no 'uid' group; every line starts with 'uid <id>'")
    if truncated and lines:
        problems[len(lines) - 1] = TRUNCATED
    if b"\r" in data:
        for i, line in enumerate(lines):
            if b"\r" in line:
                problems[i] = CARRIAGE_RETURN

    uid_of_line = np.full(len(lines), -1, np.int64)
    uid_of_line[uid_at[uid_counts == 1]] = uid_values
    user_of_line = np.where((uid_of_line >= 0) & np.isin(uid_of_line, uids), np.searchsorted(uids, uid_of_line), -1)
    user_of_line[list(problems)] = -1
    for slot, (at, flat, counts) in enumerate(parsed[1:], start=1):
        if slot <= N_STATIC:
            scatter(static, slot - 1, 1, None, at, flat, counts, user_of_line)
        else:
            j = slot - 1 - N_STATIC
            scatter(dynamic, schema.DYNAMIC_OFFSETS[j], schema.DYNAMIC_WIDTHS[j], lengths[:, j], at, flat, counts,
                    user_of_line)
    good = np.flatnonzero(user_of_line >= 0)
    return len(lines), user_of_line[good], good, sorted(problems.items())


def split_groups(lines):
    """Per slot: the line index and the value text of each of its groups, in line order."""
    where = [[] for _ in SLOTS]
    texts = [[] for _ in SLOTS]
    slot_of = SLOT_OF.get
    for i, line in enumerate(lines):
        for group in line.split(b"|"):
            name, _, values = group.partition(b" ")
            slot = slot_of(name)
            if slot is not None:
                where[slot].append(i)
                texts[slot].append(values)
    return where, texts


def parse_values(texts, name, low, high, single):
    """The integers of each group text -> (flat int64, count per group, {group: problem}).

    A bad group contributes no values (count 0). Fast path, for texts of
    digits and single spaces only: NumPy counts the values of every group and
    one np.fromstring call parses them all.
    """
    joined = b"\n".join(texts)  # no text holds a newline
    if not joined.translate(None, CLEAN_BYTES):
        buf = np.frombuffer(joined, np.uint8)
        ends = np.flatnonzero(buf == ord("\n"))
        spaces = np.concatenate([[0], np.cumsum(buf == ord(" "))])
        counts = spaces[np.append(ends, len(buf))] - spaces[np.insert(ends + 1, 0, 0)] + 1
        counts = counts[:len(texts)]  # an empty `texts` still joins to one (empty) text
        flat = np.fromstring(joined, np.int64, sep=" ")
        if (len(flat) == counts.sum() and flat.max(initial=low) <= high
                and not (single and counts.max(initial=1) > 1)):
            return flat, counts, {}
    return parse_values_slowly(texts, name, low, high, single)


def parse_values_slowly(texts, name, low, high, single):
    flat, counts, bad = [], np.zeros(len(texts), np.int64), {}
    for k, text in enumerate(texts):
        tokens = text.split()
        problem = token_problem(tokens, name, low, high, single)
        if problem:
            bad[k] = problem
        else:
            flat.extend(map(int, tokens))
            counts[k] = len(tokens)
    return np.array(flat, np.int64), counts, bad


def token_problem(tokens, name, low, high, single):
    if not tokens:
        return f"group '{name}' has no value"
    if single and len(tokens) > 1:
        return f"group '{name}' has {len(tokens)} values, expected 1"
    for token in tokens:
        if not INT_TOKEN.fullmatch(token) or not low <= int(token) <= high:
            return f"group '{name}' has value {excerpt(token)}, expected integers from {low} to {high}"
    return ""


def scatter(table, first_col, width, kept, at, flat, counts, user_of_line):
    """Write the first `width` values of each group of a labelled good line into
    table[user, first_col:first_col + width]; kept[user] = values written."""
    owner = np.repeat(np.arange(len(at)), counts)
    pos = np.arange(len(flat)) - (np.cumsum(counts) - counts)[owner]
    user = user_of_line[at[owner]]
    keep = (user >= 0) & (pos < width)
    table[user[keep], first_col + pos[keep]] = flat[keep]
    if kept is not None:
        group_user = user_of_line[at]
        mine = group_user >= 0
        kept[group_user[mine]] = np.minimum(counts[mine], width)
