"""Importing the published pandas pickles: exact values, refused globals, bad columns, the CLI."""
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tools.utils.data import dataset
from tools.utils.data import safe_pickle
from tools.utils.data import schema

SAMPLE = os.path.join(ROOT, "..", "shared", "data", "paddlerec_sample.pkl")
CLI = os.path.join(ROOT, "tools", "import_pickle.py")
needs_sample = pytest.mark.skipif(not os.path.isfile(SAMPLE), reason="shared/data/paddlerec_sample.pkl not present")


class RenamingUnpickler(pickle.Unpickler):
    """The test's own reader of the trusted sample: pandas 1.x / numpy 1.x names only renamed."""

    def find_class(self, module, name):
        if module == "pandas.core.indexes.numeric":
            return pd.Index
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def frame():
    if not os.path.isfile(SAMPLE):
        pytest.skip("shared/data/paddlerec_sample.pkl not present")
    with open(SAMPLE, "rb") as f:
        return RenamingUnpickler(f).load()


def assert_matches_frame(arrays, df):
    """Every value of every column against the DataFrame, column by column."""
    assert len(arrays["label"]) == len(df)
    np.testing.assert_array_equal(arrays["label"], df["label"].to_numpy())
    np.testing.assert_array_equal(arrays["aid"], df["aid"].to_numpy())
    for j, field in enumerate(schema.STATIC_FIELDS):
        np.testing.assert_array_equal(arrays["static"][:, j], df[field].to_numpy(), err_msg=field)
    for j, field in enumerate(schema.AD_FIELDS):
        np.testing.assert_array_equal(arrays["ad"][:, j], df[field].to_numpy(), err_msg=field)
    for j, field in enumerate(schema.DYNAMIC_FIELDS):
        lo, hi = schema.DYNAMIC_OFFSETS[j], schema.DYNAMIC_OFFSETS[j + 1]
        expected = np.array([list(cell) for cell in df[field]])
        np.testing.assert_array_equal(arrays["dynamic"][:, lo:hi], expected, err_msg=field)
        np.testing.assert_array_equal(arrays["lengths"][:, j], df[field + "_length"].to_numpy(), err_msg=field)


def frame_maxima(df):
    list_max = [max(int(np.max(cell)) for cell in df[f]) for f in schema.DYNAMIC_FIELDS]
    return {"static": [int(df[f].max()) for f in schema.STATIC_FIELDS], "dynamic": list_max,
            "ad": [int(df[f].max()) for f in schema.AD_FIELDS]}


# ---------------------------------------------------------------- the real file
def test_shipped_sample_imports_exactly(frame, tmp_path):
    summaries = safe_pickle.import_pickles([(SAMPLE, "test_hot", 1)], str(tmp_path))
    npz = str(tmp_path / "test_hot" / "test_stage1.npz")
    assert summaries[npz]["rows"] == 586 and summaries[npz]["campaigns"] == 5
    split = dataset.load_split(str(tmp_path / "test_hot"))
    arrays = split["stage1"]
    assert len(arrays["label"]) == 586 and len(np.unique(arrays["aid"])) == 5 and arrays["label"].all()
    assert "uid" not in arrays
    assert_matches_frame(arrays, frame)
    assert split["schema"]["max_idxs"] == frame_maxima(frame)


def test_tencent_maxima_mode_and_a_later_stage2(frame, tmp_path):
    with pytest.raises(dataset.DataError, match="a stage-2 file alone does not make a data folder"):
        safe_pickle.import_pickles([(SAMPLE, "test_cold", 2)], str(tmp_path), max_idxs="tencent")
    assert not os.path.exists(tmp_path / "test_cold")
    for stage in (1, 2):  # stage 2 joins the folder holding stage 1: --force, which keeps stage 1
        safe_pickle.import_pickles([(SAMPLE, "test_cold", stage)], str(tmp_path), max_idxs="tencent",
                                   force=stage == 2)
    split = dataset.load_split(str(tmp_path / "test_cold"))
    assert split["schema"]["max_idxs"] == schema.TENCENT_MAX_IDXS
    assert_matches_frame(split["stage1"], frame)
    assert_matches_frame(split["stage2"], frame)


def test_id_above_the_tencent_vocabulary_is_refused(frame, tmp_path):
    df = frame.copy()
    df["LBS"] = df["LBS"] + 10  # sample max 849 -> 859, above the full data's 855
    path = str(tmp_path / "shifted.pkl")
    df.to_pickle(path)
    with pytest.raises(dataset.DataError, match=r"shifted.pkl: field 'LBS' holds id 859, above 855"):
        safe_pickle.import_pickles([(path, "train", 1)], str(tmp_path / "out"), max_idxs="tencent")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("rebuilt", [False, True])
def test_frame_resaved_by_current_pandas(frame, tmp_path, protocol, rebuilt):
    """A file re-pickled by pandas 3 reads the same: other global names, RangeIndex, protocol 5
    buffers, protocol 2's bytes as latin-1 text, and (for a frame built anew) column names held in a pandas
    string array."""
    df = pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns}) if rebuilt else frame.reset_index(drop=True)
    path = str(tmp_path / "resaved.pkl")
    df.to_pickle(path, protocol=protocol)
    assert_matches_frame(safe_pickle.dataframe_arrays(safe_pickle.read_dataframe(path), path), frame)


def test_progress_reports_every_byte(frame):
    seen = []
    safe_pickle.read_dataframe(SAMPLE, progress=seen.append)
    assert sum(seen) == os.path.getsize(SAMPLE)


def test_later_stage2_keeps_the_maxima_of_stage1(frame, tmp_path):
    """Data-mode maxima also cover the schema already in the folder, so stage 1 stays valid."""
    seeds = frame.copy()
    seeds["topic1"] = [cell + 1 for cell in seeds["topic1"]]
    path = str(tmp_path / "seeds.pkl")
    seeds.to_pickle(path)
    safe_pickle.import_pickles([(path, "test_hot", 1)], str(tmp_path / "out"))
    with pytest.raises(dataset.DataError, match="not empty; choose another --out, or pass --force"):
        safe_pickle.import_pickles([(SAMPLE, "test_hot", 2)], str(tmp_path / "out"))
    safe_pickle.import_pickles([(SAMPLE, "test_hot", 2)], str(tmp_path / "out"), force=True)
    split = dataset.load_split(str(tmp_path / "out" / "test_hot"))
    assert split["schema"]["max_idxs"] == frame_maxima(seeds)
    assert_matches_frame(split["stage1"], seeds)
    assert_matches_frame(split["stage2"], frame)


def test_force_keeps_other_files_and_refuses_inputs_it_would_delete(frame, tmp_path):
    out = tmp_path / "out"
    safe_pickle.import_pickles([(SAMPLE, "test_hot", 1)], str(out))
    (out / "notes.txt").write_text("mine")
    inner = out / "test_hot" / "copy.pkl"  # replacing test_hot would delete it
    shutil.copy(SAMPLE, inner)
    with pytest.raises(dataset.DataError, match=r"copy.pkl: lies inside .*test_hot, which this import replaces"):
        safe_pickle.import_pickles([(str(inner), "test_hot", 1)], str(out), force=True)
    assert inner.exists()
    safe_pickle.import_pickles([(SAMPLE, "test_hot", 1), (SAMPLE, "test_cold", 1)], str(out), force=True)
    assert sorted(os.listdir(out)) == ["notes.txt", "test_cold", "test_hot"]  # no staging folder left
    assert sorted(os.listdir(out / "test_hot")) == ["schema.json", "test_stage1.npz"]  # replaced whole


# ---------------------------------------------------------------- pickles that try to run code
def os_system_opcodes(marker):
    """Protocol-0 opcodes: GLOBAL os.system, MARK, the command string, TUPLE, REDUCE, STOP."""
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


class Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w').close()",)


def eval_via_reduce(marker):
    return pickle.dumps(Eval(marker), protocol=4)


def getattr_chain(marker):
    """getattr(__import__('os'), 'system')(cmd): the classic way around a module allowlist."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
            + f"touch {marker}".encode() + b"\ntR.")


def inside_a_dataframe(marker):
    """A real DataFrame whose object column hides an eval in one cell."""
    df = pd.DataFrame({"label": [1, 0], "kw1": [np.arange(5), Eval(marker)]})
    return pickle.dumps(df, protocol=5)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_an_empty_frame_is_refused_as_empty_at_every_protocol(frame, tmp_path, protocol):
    """Protocol 2 writes an empty array's bytes as __builtin__.bytes(): allowed with no argument only, so the
    frame is read and refused for what it is, not as code."""
    path = str(tmp_path / "empty.pkl")
    frame.iloc[:0].to_pickle(path, protocol=protocol)
    with pytest.raises(dataset.DataError, match="holds an empty DataFrame"):
        safe_pickle.dataframe_arrays(safe_pickle.read_dataframe(path), path)
    sized = tmp_path / "sized.pkl"
    sized.write_bytes(b"c__builtin__\nbytes\n(I1000000000\ntR.")
    with pytest.raises(safe_pickle.UnsafePickleError, match="bytes.. called with 1 argument"):
        safe_pickle.read_dataframe(str(sized))


@pytest.mark.parametrize("encoding", ["rot13", "utf-8"])
def test_codecs_encode_is_latin1_only(tmp_path, encoding):
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vtext\nV" + encoding.encode() + b"\ntR.")
    with pytest.raises(safe_pickle.UnsafePickleError, match="only encodes text as latin1"):
        safe_pickle.read_dataframe(str(path))


PAYLOADS = [(os_system_opcodes, "os.system"), (eval_via_reduce, "builtins.eval"),
            (getattr_chain, "builtins.getattr"), (inside_a_dataframe, "builtins.eval")]


@pytest.mark.parametrize("payload, named", PAYLOADS)
def test_code_running_pickles_are_refused(tmp_path, payload, named):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload(str(marker)))
    with pytest.raises(safe_pickle.UnsafePickleError) as info:
        safe_pickle.read_dataframe(str(path))
    assert not marker.exists()
    assert f"{path}: refers to {named}, which a DataFrame pickle never needs" in str(info.value)
    assert "could run code" in str(info.value)


@pytest.mark.parametrize("payload", [p for p, _ in PAYLOADS])
def test_the_payloads_are_live(tmp_path, payload):
    """Control for the refusals above: plain pickle.loads really runs each of them."""
    marker = tmp_path / "ran"
    pickle.loads(payload(str(marker)))
    assert marker.exists()


def test_cli_refuses_code_and_writes_nothing(tmp_path):
    marker = tmp_path / "ran"
    pkl_dir = tmp_path / "pkl"
    pkl_dir.mkdir()
    (pkl_dir / "train_stage1.pkl").write_bytes(os_system_opcodes(str(marker)))
    run = subprocess.run([sys.executable, CLI, "--pkl-dir", str(pkl_dir), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "refers to os.system" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists() and not (tmp_path / "out" / "train" / "train_stage1.npz").exists()


# ---------------------------------------------------------------- files that are not our DataFrames
def write_frame(tmp_path, df):
    path = str(tmp_path / "bad.pkl")
    df.to_pickle(path)
    return path


def import_error(path, tmp_path):
    with pytest.raises(dataset.DataError) as info:
        safe_pickle.import_pickles([(path, "train", 1)], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "train" / "train_stage1.npz")
    return str(info.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda df: df.drop(columns=["kw2"]), "missing column(s) ['kw2']"),
    (lambda df: df.drop(columns=["topic1_length", "productType"]),
     "missing column(s) ['topic1_length', 'productType']"),
    (lambda df: df.assign(marriageStatus=1), "unexpected column(s) ['marriageStatus']"),
])
def test_missing_or_extra_column(frame, tmp_path, edit, expected):
    path = write_frame(tmp_path, edit(frame))
    message = import_error(path, tmp_path)
    assert message.startswith(path) and expected in message


def test_wrong_list_width(frame, tmp_path):
    df = frame.copy()
    df["kw1"] = [cell[:4] for cell in df["kw1"]]
    message = import_error(write_frame(tmp_path, df), tmp_path)
    assert "column 'kw1' row 0" in message and "holds 4 ids" in message and "exactly 5 ids" in message


def test_list_cell_that_is_not_a_list(frame, tmp_path):
    df = frame.copy()
    df["interest2"] = df["interest2"].astype(object)
    df.iloc[7, df.columns.get_loc("interest2")] = 3.5
    message = import_error(write_frame(tmp_path, df), tmp_path)
    assert f"column 'interest2' row 7 (index {frame.index[7]}) holds a float" in message


def test_length_above_width(frame, tmp_path):
    df = frame.copy()
    df.iloc[11, df.columns.get_loc("kw2_length")] = 6
    message = import_error(write_frame(tmp_path, df), tmp_path)
    assert "bad.pkl" in message and "(kw2) row 11 is 6, outside 0..5" in message


def test_float_and_wrapping_columns(frame, tmp_path):
    message = import_error(write_frame(tmp_path, frame.assign(age=frame["age"] + 0.5)), tmp_path)
    assert "column 'age' has dtype float64" in message
    huge = frame["aid"].copy()
    huge.iloc[3] = 2**31  # would wrap to a negative int32 if cast blindly
    message = import_error(write_frame(tmp_path, frame.assign(aid=huge)), tmp_path)
    assert f"column 'aid' row 3 holds {2**31}" in message


def test_not_a_dataframe_and_truncated(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    assert "holds a list, not a pandas DataFrame" in import_error(str(path), tmp_path)
    if os.path.isfile(SAMPLE):
        path.write_bytes(Path(SAMPLE).read_bytes()[:200_000])
        message = import_error(str(path), tmp_path)
        assert "not a readable pickle, it is truncated" in message and "download the file again" in message


def test_missing_pandas_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(dataset.DataError, match="pip install pandas"):
        safe_pickle.read_dataframe(SAMPLE)


def test_two_files_for_one_output(tmp_path):
    with pytest.raises(dataset.DataError, match="several input files are train stage 1"):
        safe_pickle.import_pickles([(SAMPLE, "train", 1), (SAMPLE, "train", 1)], str(tmp_path))


# ---------------------------------------------------------------- the command line
@needs_sample
def test_cli_imports_a_folder_with_shared_maxima(frame, tmp_path):
    pkl_dir = tmp_path / "pkl"
    pkl_dir.mkdir()
    shutil.copy(SAMPLE, pkl_dir / "test_hot_stage1.pkl")
    train = frame.copy()
    train["kw1"] = [np.where(cell == cell.max(), schema.TENCENT_MAX_IDXS["dynamic"][3], cell) for cell in train["kw1"]]
    train.to_pickle(pkl_dir / "train_stage1.pkl")
    (pkl_dir / "notes.pkl").write_bytes(b"ignored: not a split name")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, CLI, "--pkl-dir", str(pkl_dir), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no progress with --quiet, no warnings
    assert f"{out / 'train' / 'train_stage1.npz'}: 586 rows, 5 campaigns, 586 positives" in run.stdout
    hot, trained = dataset.load_split(str(out / "test_hot")), dataset.load_split(str(out / "train"))
    assert_matches_frame(hot["stage1"], frame)
    assert_matches_frame(trained["stage1"], train)
    expected = frame_maxima(train)  # the larger kw1 of the two files, written to both splits
    assert expected["dynamic"][3] == schema.TENCENT_MAX_IDXS["dynamic"][3]
    assert hot["schema"]["max_idxs"] == trained["schema"]["max_idxs"] == expected


@needs_sample
def test_cli_single_file_needs_split_and_stage(tmp_path):
    run = subprocess.run([sys.executable, CLI, "--pkl", SAMPLE, "--split", "test_hot", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--pkl needs --split and --stage" in run.stderr
