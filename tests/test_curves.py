"""Training curves (runner.use_visual, tools/utils/measure/curves.py): VisualDL's records and a PNG."""
import os
import struct
import subprocess
import sys

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from helpers import ROOT, fake_model_folder, run
from tools.utils.run import checkpoint as ckpt
from tools.utils.measure import curves


def record_class():
    """VisualDL 2.5's visualdl.Record message (its record.proto, the fields used for scalars), built with
    protobuf's own descriptors, so the files are decoded independently of tools/utils/measure/curves.py."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="test_vdl_record.proto", package="visualdl", syntax="proto3")
    record = proto.message_type.add(name="Record")
    record.field.add(name="values", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".visualdl.Record.Value")
    meta = record.nested_type.add(name="MetaData")
    meta.field.add(name="display_name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value = record.nested_type.add(name="Value")
    for name, number, kind in (("id", 1, F.TYPE_INT64), ("tag", 2, F.TYPE_STRING), ("timestamp", 3, F.TYPE_INT64),
                               ("value", 4, F.TYPE_FLOAT)):
        value.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    value.field.add(name="meta_data", number=10, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".visualdl.Record.MetaData")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("visualdl.Record"))


RECORD = record_class()


def vdl_values(path):
    """Every Value of a VisualDL records file: 8-byte little-endian length, then a Record message."""
    data, at, values = open(path, "rb").read(), 0, []
    while at < len(data):
        (size,) = struct.unpack_from("<Q", data, at)
        assert at + 8 + size <= len(data), "a record cut short"
        values += RECORD.FromString(data[at + 8:at + 8 + size]).values
        at += 8 + size
    return values


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_a_training_run_writes_visualdl_records_and_a_png_and_a_resumed_run_continues_them(tmp_path):
    folder = fake_model_folder(tmp_path / "model")
    done = run("trainer.py", folder, "-o", "runner.use_visual=True")
    assert done.returncode == 0, done.stderr
    logs = folder / "out" / "visualdl"
    assert f"curves: {logs} (view with VisualDL: visualdl --logdir {logs}); {logs / 'curves.png'}" in done.stdout
    files = [name for name in os.listdir(logs) if name.startswith("vdlrecords.")]
    assert len(files) == 1 and files[0].endswith(".log")
    values = vdl_values(logs / files[0])
    assert values[0].tag == "meta_data_tag" and values[0].meta_data.display_name == "train"
    stats = [ckpt.read_meta(str(folder / "out" / str(epoch)))["stats"] for epoch in (0, 1)]
    steps = stats[0]["meta_batches"]
    assert steps >= 2 and stats[1]["meta_batches"] == steps
    loss = values[1:]
    assert [v.tag for v in loss] == ["train/loss"] * 2 * steps
    assert [v.id for v in loss] == list(range(1, 2 * steps + 1))  # meta-steps counted across the epochs
    for epoch in (0, 1):  # the epoch's mean loss in its checkpoint is the mean of its logged steps
        logged = [v.value for v in loss[epoch * steps:(epoch + 1) * steps]]
        np.testing.assert_allclose(np.mean(logged), stats[epoch]["loss"], rtol=1e-6)
    width, height = png_size(logs / "curves.png")
    assert width > 300 and height > 200

    resumed = run("trainer.py", folder, "-o", "runner.use_visual=True", "runner.epochs=3")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(n for n in os.listdir(logs) if n.startswith("vdl")) == files  # one file: VisualDL shows one
    again = vdl_values(logs / files[0])
    assert [v.id for v in again[1:]] == list(range(1, 3 * steps + 1))
    assert [v.value for v in again[1:2 * steps + 1]] == [v.value for v in loss]


def test_a_resumed_run_replaces_the_steps_logged_past_its_checkpoint_and_a_torn_record(tmp_path):
    written = curves.Curves(str(tmp_path))
    for step in range(1, 11):
        written.add("train/loss", 1.0 / step, step)
        if step % 5 == 0:
            written.add("valid/gauc", 0.5 + step / 100, step)
    written.close()
    path = curves.log_file(str(tmp_path))
    with open(path, "ab") as f:
        f.write(curves.encode("train/loss", 11, 0.5)[:-3])  # a killed run's last write
    resumed = curves.Curves(str(tmp_path))  # the stopped run's checkpoint was at step 6
    for step in range(7, 9):
        resumed.add("train/loss", 2.0, step)
    resumed.close()
    values = vdl_values(path)
    assert [(v.tag, v.id) for v in values[1:]] == (
        [("train/loss", s) for s in range(1, 6)] + [("valid/gauc", 5), ("train/loss", 6), ("train/loss", 7),
                                                    ("train/loss", 8)])
    assert [v.value for v in values[-3:]] == [np.float32(1 / 6), 2.0, 2.0]
    afresh = curves.Curves(str(tmp_path))  # a run started over (--overwrite): its first step is 1
    afresh.add("train/loss", 3.0, 1)
    afresh.close()
    assert [(v.tag, v.id, v.value) for v in vdl_values(path)] == [("meta_data_tag", 0, 0.0), ("train/loss", 1, 3.0)]


def test_without_matplotlib_the_curves_say_so_in_one_note(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from tools.utils.measure import curves\n"
            f"c = curves.Curves({str(tmp_path)!r}); c.add('train/loss', 0.5, 1)\n"
            "print(*c.finish(), sep='\\n')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "note: matplotlib is not installed (it is in requirements-dev.txt), so no " \
                                          "curves.png"
    assert not (tmp_path / "curves.png").exists() and len(vdl_values(curves.log_file(str(tmp_path)))) == 2


def test_a_curves_folder_of_another_run_is_refused_before_any_work(tmp_path):
    """Two runs sharing runner.visual_log_path: the second would erase the first's points (it keeps the records
    before its own first step), and a resume of the first would then mix both into one curve."""
    folder = fake_model_folder(tmp_path / "model")
    shared = tmp_path / "shared curves"
    first = run("trainer.py", folder, "-o", "runner.use_visual=True", f"runner.visual_log_path={shared}",
                f"runner.model_save_path={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr
    records = open(curves.log_file(str(shared)), "rb").read()
    second = run("trainer.py", folder, "-o", "runner.use_visual=True", f"runner.visual_log_path={shared}",
                 f"runner.model_save_path={tmp_path / 'b'}", "--overwrite")
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
    assert f"{shared}: holds the curves of the run in {tmp_path / 'a'}" in second.stderr
    assert open(curves.log_file(str(shared)), "rb").read() == records and not (tmp_path / "b").exists()
    more = run("trainer.py", folder, "-o", "runner.use_visual=True", f"runner.visual_log_path={shared}",
               f"runner.model_save_path={tmp_path / 'a'}", "runner.epochs=3")
    assert more.returncode == 0, more.stderr  # its own run goes on
    own = run("trainer.py", folder, "-o", "runner.use_visual=True", f"runner.model_save_path={tmp_path / 'c'}")
    assert own.returncode == 0, own.stderr
    os.rename(tmp_path / "c", tmp_path / "c moved")  # a run folder moved keeps its own curves (the default place)
    resumed = run("trainer.py", folder, "-o", "runner.use_visual=True",
                  f"runner.model_save_path={tmp_path / 'c moved'}", "runner.epochs=3")
    assert resumed.returncode == 0, resumed.stderr
