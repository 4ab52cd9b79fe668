"""Bytes of the raw competition text files (userFeature.data and the CSVs),
rendered with NumPy; render_tokens says how."""
import numpy as np


def render_tokens(values, prefix_ids, prefixes, eol):
    """Bytes of a token stream: token i is prefixes[prefix_ids[i]][0] then the digits of
    values[i] (>= 0, zero-padded to prefixes[...][1] digits), then "\\n" where eol[i].

    Vectorised (Python string formatting would take an hour on the full 4 GB
    userFeature.data): each token is laid out in a fixed-width row (prefix
    left-aligned, digits right-aligned, newline) and a mask keeps the used bytes
    in row order.
    """
    values = np.asarray(values, np.int64)
    texts = [text for text, _ in prefixes]
    prefix_width = max(len(t) for t in texts)
    prefix_table = np.zeros((len(texts), prefix_width), np.uint8)
    for i, text in enumerate(texts):
        prefix_table[i, :len(text)] = np.frombuffer(text, np.uint8)
    prefix_len = np.array([len(t) for t in texts])[prefix_ids]
    min_digits = np.array([w for _, w in prefixes])[prefix_ids]
    n_digits = np.maximum(np.searchsorted(10 ** np.arange(1, 19), values, side="right") + 1, min_digits)
    digit_width = int(n_digits.max(initial=1))
    rows = np.empty((len(values), prefix_width + digit_width + 1), np.uint8)
    rows[:, :prefix_width] = prefix_table[prefix_ids]
    rest = values.astype(np.uint32 if values.max(initial=0) < 2 ** 32 else np.uint64)  # faster division
    for k in range(digit_width):
        quotient = rest // 10
        rows[:, prefix_width + digit_width - 1 - k] = 48 + (rest - quotient * 10)
        rest = quotient
    rows[:, -1] = ord("\n")
    keep = np.empty(rows.shape, bool)
    keep[:, :prefix_width] = np.arange(prefix_width) < prefix_len[:, None]
    keep[:, prefix_width:-1] = np.arange(digit_width, 0, -1) <= n_digits[:, None]
    keep[:, -1] = eol
    return rows.ravel()[np.flatnonzero(keep)].tobytes()  # faster than rows[keep]


def user_lines(uids, groups):
    """Text of userFeature.data lines. groups: (name, lengths, flat values) in line order;
    a group with length 0 is left out of that user's line."""
    names = [name for name, _, _ in groups]
    prefixes = [(b" ", 0), (b"uid ", 0)] + [(f"|{name} ".encode(), 0) for name in names[1:]]
    counts = np.stack([lengths for _, lengths, _ in groups], axis=1).astype(np.int64)
    per_user = counts.sum(axis=1)
    user_start = np.cumsum(per_user) - per_user
    group_start = user_start[:, None] + np.cumsum(counts, axis=1) - counts
    total = int(per_user.sum())
    values = np.empty(total, np.int64)
    prefix_ids = np.zeros(total, np.int16)
    for g, (_, lengths, flat) in enumerate(groups):
        owner = np.repeat(np.arange(len(uids)), lengths)
        first = np.cumsum(lengths) - lengths
        pos = np.arange(len(flat)) - first[owner]
        at = group_start[owner, g] + pos
        values[at] = flat
        prefix_ids[at[pos == 0]] = g + 1
    eol = np.zeros(total, bool)
    eol[user_start + per_user - 1] = True
    return render_tokens(values, prefix_ids, prefixes, eol)


# CSV prefixes: none (first column), ",", ",-" (label -1 is written as ",-" + "1"),
# ",0." + 8 digits (a probability scaled by 1e8).
CSV_PREFIXES = [(b"", 0), (b",", 0), (b",-", 0), (b",0.", 8)]
PROB_DIGITS = 8
CSV_CHUNK = 1_000_000


def write_csv(f, columns, prefix_ids, progress=None):
    """Write CSV rows of non-negative int columns to f in chunks; prefix_ids[j] is an
    index into CSV_PREFIXES for column j, a scalar or one per row; progress(n_rows)
    after each chunk."""
    n = len(columns[0])
    for lo in range(0, n, CSV_CHUNK):
        hi = min(n, lo + CSV_CHUNK)
        values = np.stack([c[lo:hi] for c in columns], axis=1).ravel()
        ids = np.stack([np.broadcast_to(p, (n,))[lo:hi] for p in prefix_ids], axis=1).ravel()
        eol = np.zeros((hi - lo, len(columns)), bool)
        eol[:, -1] = True
        f.write(render_tokens(values, ids, CSV_PREFIXES, eol.ravel()))
        if progress:
            progress(hi - lo)
