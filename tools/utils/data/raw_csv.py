"""The CSV files of the raw competition data: adFeature.csv, train.csv,
test1_truth.csv and the synthetic generator's oracle.csv.

Why no csv module or pandas: train.csv has 8.8 M rows. NumPy checks the
shape of the whole file (only digits, commas, newlines and signs; the right
separators in the right places; no empty cell) and one np.fromstring call
parses every number. Anything else goes to a line-by-line parser, which is the
reference: it accepts everything the fast path accepts, and it names the first
bad line and what is wrong with it. Blank lines are errors, except at the end.
Line breaks are \n or \r\n; a file with only \r (old Mac) is refused, and
file content quoted in a message is cut to a short excerpt of one line.
"""
import re

import numpy as np

from .dataset import DataError

INT = rb"-?[0-9]+"
FLOAT = rb"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
ID_LIMIT = 2 ** 53  # integer cells must stay below this: exact through float64 parsing

ROW_COLUMNS = ("aid", "uid", "label")
ORACLE_COLUMNS = ("aid", "uid", "prob")
AD_ID_COLUMN = "aid"
AD_VALUE_MAX = 2 ** 31 - 1  # ad ids and aids are stored as int32
EXCERPT_CHARS = 60
BOM = b"\xef\xbb\xbf"


def excerpt(data, limit=EXCERPT_CHARS):
    """File content for a message: repr of its first line, cut to `limit` characters ("..." and the length
    when cut), so a message stays one short line whatever the file holds."""
    text = data.decode(errors="replace") if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
    first = text.split("\n", 1)[0].split("\r", 1)[0]
    if len(first) <= limit and len(first) == len(text):
        return repr(first)
    return f"{first[:limit]!r}... ({len(text):,} characters)"


def read_table(path, columns=None, header="required", float_last=False, fill_empty=False):
    """Parse a CSV of integers (the last column a float when float_last).

    columns: the expected column names; None takes them from the header.
    header: "required" (line 1 must be the column names) or "optional" (line 1
    is skipped when it equals the column names; needs `columns`).
    fill_empty: an empty cell reads as -1 (missing), as the official
    preprocessing fills missing values.
    Returns ({column: array}, line) where line[i] is the file line of row i.
    """
    with open(path, "rb") as f:
        text = f.read()
    if text.startswith(BOM):
        raise DataError(f"{path}: starts with a UTF-8 byte-order mark (as Excel's 'CSV UTF-8' writes); save it "
                        f"without one, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n")
        if b"\n" not in text:
            raise DataError(f"{path}: no line breaks found (CR-only line endings?); convert the file to \\n "
                            "line endings (e.g. tr '\\r' '\\n' < old > new)")
    first_end = text.find(b"\n")
    if first_end < 0:
        first_end = len(text)
    first = text[:first_end].strip()
    names = tuple(first.decode(errors="replace").split(",")) if columns is None else tuple(columns)
    if first == ",".join(names).encode():
        body_start, first_line = first_end + 1, 2
    elif header == "required":
        raise DataError(f"{path} line 1: header is {excerpt(first)}, expected "
                        f"{','.join(names)!r}; the file must start with its column names")
    else:
        body_start, first_line = 0, 1
    body_end = len(text)
    while body_end > body_start and text[body_end - 1] == ord("\n"):  # blank lines at the end
        body_end -= 1
    text = b"".join((memoryview(text)[body_start:body_end], b"\n")) if body_end > body_start else b""
    if fill_empty:
        text = re.sub(rb"(?<=,)(?=[,\n])|(?:(?<=\n)|^)(?=,)", b"-1", text)
    table = parse_clean(text, len(names), float_last)
    if table is None:
        table = parse_lines(path, text, names, float_last, first_line)
    arrays = {name: table[:, j].astype(np.int64) for j, name in enumerate(names)}
    if float_last:
        arrays[names[-1]] = table[:, -1]
    return arrays, np.arange(first_line, first_line + len(table), dtype=np.int64)


def parse_clean(text, n_cols, float_last):
    """The (rows, n_cols) table of a plainly well-formed CSV body, else None."""
    allowed = b"0123456789,\n-" + (b".eE+" if float_last else b"")
    if text.translate(None, allowed):
        return None
    buf = np.frombuffer(text, np.uint8)
    sep = np.flatnonzero((buf == ord(",")) | (buf == ord("\n")))
    if len(sep) % n_cols:
        return None
    kinds = buf[sep].reshape(-1, n_cols)
    if (kinds[:, :-1] != ord(",")).any() or (kinds[:, -1] != ord("\n")).any():
        return None
    starts = np.insert(sep[:-1] + 1, 0, 0)
    if (sep == starts).any():  # an empty cell
        return None
    int_cols = n_cols - float_last
    if float_last:  # decimal points, exponents and plus signs only in the float column
        extra = np.flatnonzero(np.isin(buf, np.frombuffer(b".eE+", np.uint8)))
        if (np.searchsorted(sep, extra) % n_cols != n_cols - 1).any():
            return None
    minus = np.flatnonzero(buf == ord("-"))
    cell = np.searchsorted(sep, minus)
    signed = cell % n_cols < int_cols
    minus, cell = minus[signed], cell[signed]  # a minus in an integer cell: first, then a digit
    digit_after = (buf[minus + 1] >= ord("0")) & (buf[minus + 1] <= ord("9"))
    if (minus != starts[cell]).any() or not digit_after.all():
        return None
    try:
        table = np.fromstring(text.replace(b"\n", b","), np.float64 if float_last else np.int64, sep=",")
    except ValueError:
        return None
    table = table.reshape(-1, n_cols)
    return None if (np.abs(table[:, :int_cols]) >= ID_LIMIT).any() else table


def parse_lines(path, text, names, float_last, first_line):
    """The table, line by line; raises DataError at the first bad line."""
    rows = []
    for i, line in enumerate(text.split(b"\n")[:-1]):
        problem = line_problem(line, names, float_last)
        if problem:
            raise DataError(f"{path} line {first_line + i}: {problem}")
        cells = line.split(b",")
        rows.append([int(c) for c in cells[:-1]] + [(float if float_last else int)(cells[-1])])
    return np.array(rows, np.float64 if float_last else np.int64).reshape(-1, len(names))


def line_problem(line, names, float_last):
    """What is wrong with one CSV line, "" when nothing."""
    if not line.strip():
        return "empty line; remove blank lines"
    if b"\r" in line:
        return ("holds a carriage return (\\r) inside the line (mixed or CR-only line endings?); "
                "convert the file to \\n line endings")
    cells = line.split(b",")
    if len(cells) != len(names):
        return (f"has {len(cells)} fields, expected {len(names)} ({','.join(names)}); "
                "fix or remove the line")
    for j, (name, cell) in enumerate(zip(names, cells)):
        is_float = float_last and j == len(names) - 1
        if not re.fullmatch(FLOAT if is_float else INT, cell):
            kind = "a number" if is_float else "an integer"
            return f"{name} is {excerpt(cell)}, expected {kind}; fix the line"
        if not is_float and abs(int(cell)) >= ID_LIMIT:
            return f"{name} is {int(cell)}, too large; ids must be below 2^53"
    return ""


def read_ads(path, fields):
    """adFeature.csv -> (aids sorted, raw values (n, len(fields)) int64 in that row order)."""
    table, line = read_table(path, fill_empty=True)
    missing = [c for c in (AD_ID_COLUMN,) + tuple(fields) if c not in table]
    if missing:
        raise DataError(f"{path} line 1: columns {missing} are missing from the header; "
                        f"adFeature.csv needs {[AD_ID_COLUMN, *fields]}")
    for name in (AD_ID_COLUMN,) + tuple(fields):
        low = 0 if name == AD_ID_COLUMN else -1
        bad = (table[name] < low) | (table[name] > AD_VALUE_MAX)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path} line {line[i]}: {name} is {table[name][i]}, expected an integer "
                            f"from {low} to {AD_VALUE_MAX}; fix the line")
    aid = table[AD_ID_COLUMN]
    order = np.argsort(aid, kind="stable")
    repeated = np.flatnonzero(np.diff(aid[order]) == 0)
    if len(repeated):
        a, b = sorted(line[order[repeated[0]:repeated[0] + 2]])
        raise DataError(f"{path} line {b}: aid {aid[order[repeated[0]]]} already appeared on line {a}; "
                        "each ad needs one row")
    return aid[order], np.stack([table[f][order] for f in fields], axis=1)


def read_rows(path, header):
    """train.csv (header "required") or test1_truth.csv ("optional") -> dict of
    aid, uid (int64), label (int8, 0/1: raw -1 and 0 both mean 0), line."""
    table, line = read_table(path, ROW_COLUMNS, header)
    label = table["label"]
    bad = ~np.isin(label, (-1, 0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path} line {line[i]}: label is {label[i]}, expected 1 or -1 (0 is read as -1); "
                        "fix the line")
    return {"aid": table["aid"], "uid": table["uid"], "label": (label == 1).astype(np.int8), "line": line}


def read_oracle(path, stages):
    """oracle.csv -> one float32 probability array per stage.

    The synthetic generator writes one oracle row per labelled row, train.csv
    rows first, then test1_truth.csv rows, each in file order; the aid and uid
    of every row are checked against the stage rows.
    """
    table, line = read_table(path, ORACLE_COLUMNS, float_last=True)
    n = sum(len(s["aid"]) for s in stages)
    if len(line) != n:
        raise DataError(f"{path}: {len(line)} rows, but train.csv and test1_truth.csv have {n} together; "
                        "oracle.csv needs one row per labelled row, in their order (regenerate it)")
    aid = np.concatenate([s["aid"] for s in stages])
    uid = np.concatenate([s["uid"] for s in stages])
    prob = table["prob"]
    bad = (aid != table["aid"]) | (uid != table["uid"]) | ~((prob >= 0) & (prob <= 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path} line {line[i]}: row (aid {table['aid'][i]}, uid {table['uid'][i]}, "
                        f"prob {prob[i]}) does not match labelled row {i + 1} (aid {aid[i]}, uid {uid[i]}) "
                        "or prob is outside [0, 1]; regenerate oracle.csv with the raw files")
    cuts = np.cumsum([len(s["aid"]) for s in stages])[:-1]
    return [p.astype(np.float32) for p in np.split(prob, cuts)]
