"""The .npz stage format: round trips, byte-reproducible saves, and every validation error.

Bad files are written with numpy's own np.savez (not our save_stage), so the
loader is checked against files it did not make.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import make_stage
from tools.utils.data import dataset
from tools.utils.data.schema import AD_FIELDS, ARRAYS, DYNAMIC_FIELDS, DYNAMIC_OFFSETS, DYNAMIC_WIDTHS, STATIC_FIELDS

ROWS = 40
MAXIMA = {"static": [3, 2, 20, 5, 7, 2, 1], "dynamic": [30, 20, 12, 400, 300, 50, 60], "ad": [9, 11, 4, 6, 5, 3]}


def make_arrays(seed=0, with_uid=False):
    """A valid stage of ROWS rows over 5 campaigns, every field's largest id in row 0."""
    arrays = make_stage(np.random.default_rng(seed), {a: ROWS // 5 for a in range(5)}, max_idxs=MAXIMA,
                        hit_maxima=True)
    if not with_uid:
        del arrays["uid"]
    return arrays


def write_split(folder, arrays, name="test_stage1.npz", savez=False):
    """A split folder with our schema and one stage file; returns the stage path."""
    os.makedirs(folder, exist_ok=True)
    dataset.write_schema(str(folder), MAXIMA)
    path = os.path.join(folder, name)
    if savez:
        with open(path, "wb") as f:  # np.savez would append .npz to a str path ending otherwise
            np.savez(f, **arrays)
    else:
        dataset.save_stage(path, arrays)
    return path


def load_error(folder):
    with pytest.raises(dataset.DataError) as info:
        dataset.load_split(str(folder))
    return str(info.value)


# ---------------------------------------------------------------- what must work
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_keeps_every_value_and_dtype(tmp_path, compress):
    arrays = make_arrays(with_uid=True)
    path = str(tmp_path / "train_stage1.npz")
    dataset.save_stage(path, arrays, compress=compress)
    dataset.write_schema(str(tmp_path), MAXIMA)
    split = dataset.load_split(str(tmp_path))
    assert split["stage2"] is None
    assert split["schema"]["max_idxs"] == MAXIMA
    loaded = split["stage1"]
    assert sorted(loaded) == sorted(arrays)
    for name, a in arrays.items():
        assert loaded[name].dtype == ARRAYS[name][0]
        np.testing.assert_array_equal(loaded[name], a)
    assert dataset.max_idxs_list(split["schema"]) == [MAXIMA["static"], MAXIMA["dynamic"], MAXIMA["ad"]]


def test_resave_is_byte_identical(tmp_path):
    arrays = make_arrays()
    first, second, third = (str(tmp_path / f"{k}_stage1.npz") for k in "abc")
    dataset.save_stage(first, arrays)
    os.utime(first, (0, 0))  # a different file time must not leak into the bytes
    dataset.save_stage(second, {k: v.astype(np.int64) for k, v in arrays.items()})
    dataset.save_stage(third, dataset.load_stage(first, dataset.make_schema(MAXIMA)))
    data = [Path(p).read_bytes() for p in (first, second, third)]
    assert data[0] == data[1] == data[2]
    dataset.save_stage(first, make_arrays(seed=1))  # and the bytes do depend on the values
    assert Path(first).read_bytes() != data[0]


def test_numpy_savez_files_are_accepted(tmp_path):
    arrays = make_arrays()
    write_split(tmp_path, arrays, savez=True)
    np.testing.assert_array_equal(dataset.load_split(str(tmp_path))["stage1"]["dynamic"], arrays["dynamic"])


def test_both_stages_and_their_paths(tmp_path):
    write_split(tmp_path, make_arrays(seed=1), "test_stage1.npz")
    write_split(tmp_path, make_arrays(seed=2), "test_stage2.npz")
    split = dataset.load_split(str(tmp_path))
    np.testing.assert_array_equal(split["stage2"]["label"], make_arrays(seed=2)["label"])
    assert dataset.load_split(str(tmp_path), stages=(1,))["stage2"] is None
    assert dataset.stage_path(str(tmp_path), 2) == str(tmp_path / "test_stage2.npz")


# ---------------------------------------------------------------- bad stage files
@pytest.mark.parametrize("name", [n for n, spec in ARRAYS.items() if spec[2]])
def test_missing_array(tmp_path, name):
    arrays = make_arrays()
    del arrays[name]
    path = write_split(tmp_path, arrays, savez=True)
    message = load_error(tmp_path)
    assert path in message and f"array {name!r} is missing" in message


def test_float_array_is_refused(tmp_path):
    arrays = make_arrays()
    arrays["static"] = arrays["static"].astype(np.float32)
    write_split(tmp_path, arrays, savez=True)
    message = load_error(tmp_path)
    assert "'static'" in message and "float32" in message


@pytest.mark.parametrize("name, shape", [("static", (ROWS, 6)), ("dynamic", (ROWS, 49)),
                                         ("label", (ROWS, 1)), ("lengths", (ROWS,))])
def test_wrong_shape(tmp_path, name, shape):
    arrays = make_arrays()
    arrays[name] = np.zeros(shape, np.int32)
    write_split(tmp_path, arrays, savez=True)
    message = load_error(tmp_path)
    assert f"{name!r} has shape {shape}" in message


@pytest.mark.parametrize("name", ["aid", "ad", "uid"])
def test_row_count_mismatch(tmp_path, name):
    arrays = make_arrays(with_uid=True)
    arrays[name] = arrays[name][:-1]
    write_split(tmp_path, arrays, savez=True)
    message = load_error(tmp_path)
    assert f"{name!r} has {ROWS - 1} rows but 'label' has {ROWS}" in message


def test_unknown_array(tmp_path):
    arrays = make_arrays()
    arrays["weights"] = np.ones(ROWS, np.int32)
    write_split(tmp_path, arrays, savez=True)
    assert "unknown array 'weights'" in load_error(tmp_path)


@pytest.mark.parametrize("value", [2, -1])
def test_label_outside_0_1(tmp_path, value):
    arrays = make_arrays()
    arrays["label"][17] = value
    write_split(tmp_path, arrays)
    message = load_error(tmp_path)
    assert "'label' row 17" in message and str(value) in message


@pytest.mark.parametrize("group, field, above", [
    ("static", "LBS", True), ("dynamic", "kw1", True), ("ad", "campaignId", True),
    ("static", "carrier", False), ("dynamic", "topic2", False), ("ad", "productType", False),
])
def test_id_outside_vocabulary(tmp_path, group, field, above):
    """One id of the field set one above its maximum, or to -1, in its last list slot."""
    fields = {"static": STATIC_FIELDS, "dynamic": DYNAMIC_FIELDS, "ad": AD_FIELDS}[group]
    j = fields.index(field)
    top = MAXIMA[group][j]
    column = DYNAMIC_OFFSETS[j + 1] - 1 if group == "dynamic" else j
    bad = top + 1 if above else -1
    arrays = make_arrays()
    arrays[group][23, column] = bad
    write_split(tmp_path, arrays)
    message = load_error(tmp_path)
    assert f"'{group}' ({field}) row 23 holds id {bad}, outside 0..{top}" in message


def test_the_largest_id_itself_is_accepted(tmp_path):
    arrays = make_arrays()
    assert arrays["dynamic"][:, DYNAMIC_OFFSETS[3]:DYNAMIC_OFFSETS[4]].max() == MAXIMA["dynamic"][3]
    write_split(tmp_path, arrays)
    dataset.load_split(str(tmp_path))


@pytest.mark.parametrize("field, value", [("kw2", 6), ("interest1", 11), ("topic1", -1)])
def test_length_outside_width(tmp_path, field, value):
    arrays = make_arrays()
    arrays["lengths"][5, DYNAMIC_FIELDS.index(field)] = value
    write_split(tmp_path, arrays)
    message = load_error(tmp_path)
    width = DYNAMIC_WIDTHS[DYNAMIC_FIELDS.index(field)]
    assert f"'lengths' ({field}) row 5 is {value}, outside 0..{width}" in message


def test_pickled_object_array_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    arrays = make_arrays()
    arrays["aid"] = np.array([MarkerOnUnpickle(str(marker))] * ROWS, dtype=object)
    path = write_split(tmp_path / "split", arrays, savez=True)
    message = load_error(tmp_path / "split")
    assert path in message and "Python objects" in message
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # control: the payload is live
        z["aid"]
    assert marker.exists()


class MarkerOnUnpickle:
    """Unpickling this creates a folder: proof that a loader ran pickled code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("content", [b"not a numpy file at all\n" * 10, b"PK\x03\x04" + b"\x00" * 60, b""])
def test_garbage_file(tmp_path, content):
    write_split(tmp_path, make_arrays())
    (tmp_path / "test_stage1.npz").write_bytes(content)
    message = load_error(tmp_path)
    assert str(tmp_path / "test_stage1.npz") in message


def test_single_npy_array_named_npz(tmp_path):
    write_split(tmp_path, make_arrays())
    with open(tmp_path / "test_stage1.npz", "wb") as f:
        np.save(f, np.zeros((ROWS, 7), np.int32))
    assert "single .npy array" in load_error(tmp_path)


def test_zip_member_that_is_not_an_array(tmp_path):
    write_split(tmp_path, make_arrays())
    with zipfile.ZipFile(tmp_path / "test_stage1.npz", "a") as zf:
        zf.writestr("notes.txt", "hello")
    assert "['notes.txt'] are not .npy arrays" in load_error(tmp_path)


# ---------------------------------------------------------------- folders and schema
def test_missing_folder_and_missing_stage1(tmp_path):
    assert "no such data folder" in load_error(tmp_path / "nowhere")
    write_split(tmp_path, make_arrays(), "test_stage2.npz")
    assert "no *_stage1.npz file" in load_error(tmp_path)


def test_several_stage1_files(tmp_path):
    write_split(tmp_path, make_arrays(), "test_stage1.npz")
    write_split(tmp_path, make_arrays(), "train_stage1.npz")
    assert "several stage-1 files" in load_error(tmp_path)


def test_missing_schema(tmp_path):
    write_split(tmp_path, make_arrays())
    os.remove(tmp_path / "schema.json")
    message = load_error(tmp_path)
    assert str(tmp_path / "schema.json") in message and "no schema file" in message


def edited_schema(edit):
    sch = dataset.make_schema(MAXIMA)
    edit(sch)
    return sch


@pytest.mark.parametrize("schema, expected", [
    (edited_schema(lambda s: s["static_fields"].reverse()), "'static_fields'"),
    (edited_schema(lambda s: s["dynamic_widths"].__setitem__(0, 9)), "'dynamic_widths'"),
    (edited_schema(lambda s: s.pop("ad_fields")), "'ad_fields'"),
    (edited_schema(lambda s: s["max_idxs"]["static"].pop()), "max_idxs.static must be 7"),
    (edited_schema(lambda s: s["max_idxs"]["ad"].append(1)), "max_idxs.ad must be 6"),
    (edited_schema(lambda s: s["max_idxs"]["dynamic"].__setitem__(2, -5)), "max_idxs.dynamic"),
    (edited_schema(lambda s: s["max_idxs"].pop("dynamic")), "max_idxs.dynamic"),
    (edited_schema(lambda s: s["max_idxs"]["ad"].__setitem__(0, "x")), "max_idxs.ad"),
    (edited_schema(lambda s: s.__setitem__("max_idxs", [1, 2, 3])), "max_idxs.static"),
    ([1, 2], "not the schema object"),
])
def test_malformed_schema(tmp_path, schema, expected):
    write_split(tmp_path, make_arrays())
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    message = load_error(tmp_path)
    assert str(tmp_path / "schema.json") in message and expected in message


def test_schema_that_is_not_json(tmp_path):
    write_split(tmp_path, make_arrays())
    (tmp_path / "schema.json").write_text("{static: [1, 2]")
    assert "not valid JSON" in load_error(tmp_path)


def test_oracle_probabilities(tmp_path):
    path = write_split(tmp_path, make_arrays())
    assert dataset.load_oracle(path, ROWS) is None
    p = np.random.default_rng(0).random(ROWS)
    np.save(dataset.oracle_path(path), p)
    np.testing.assert_array_equal(dataset.load_oracle(path, ROWS), p)
    np.save(dataset.oracle_path(path), p * 2)
    with pytest.raises(dataset.DataError, match="probabilities in"):
        dataset.load_oracle(path, ROWS)
