"""Fault injection on the files the trainer, meta-inference and expansion read (issue 20): data files that lie
about their sizes or are damaged, and configs that ask for a network larger than the machine.

The trainer runs in this process (tools/utils/cli.run) on the fake model folder of tests/helpers.py; every case
checks exit code 2, one line naming the file and the fix, and that nothing was allocated or written.
"""
import os
import shutil
import zipfile

import numpy as np
import pytest

from helpers import MAX_IDXS, fake_model_folder
from tools.utils import cli
from tools.utils.data import dataset
from tools.utils.data.schema import ARRAYS, GROUPS
from tools.utils.data import vocabulary


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fake_model_folder(tmp_path_factory.mktemp("faults_inputs"))


def train(folder, out, *options):
    from tools import trainer
    return cli.run(trainer.main, ["-m", str(folder / "config.yaml"), "-o", f"runner.model_save_path={out}",
                                  *options])


def error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err[:5]
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def data_copy(folder, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(folder / "data" / "train", data)
    return data


def with_header(path, member, shape):
    """Rewrite one member of an .npz so that its .npy header claims `shape`; its data stays as it was."""
    with zipfile.ZipFile(path) as archive:
        members = {info: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members.items():
            if info.filename == f"{member}.npy":
                header_end = data.index(b"\n") + 1
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(ARRAYS[member][0])), "fortran_order": False,
                          "shape": shape}
                import io
                buf = io.BytesIO()
                np.lib.format.write_array_header_2_0(buf, header)
                data = buf.getvalue() + data[header_end:]
            archive.writestr(info, data)


# ---------------------------------------------------------------- 12: data files that lie or are damaged
def test_a_header_claiming_more_rows_than_the_file_holds_is_refused_before_allocating(folder, tmp_path, capsys):
    """Issue 20 #12: a .npy header claiming (10^10, 50) was `_ArrayMemoryError: 1.82 TiB`."""
    data = data_copy(folder, tmp_path)
    stage = data / "train_stage1.npz"
    with_header(stage, "dynamic", (10**10, 50))
    assert train(folder, tmp_path / "out", f"runner.train_data_dir={data}") == 2
    error_line(capsys, f"{stage}: not a readable .npz file of arrays (member 'dynamic' claims shape (10000000000, 50) "
               "of int32 (2,000,000,000,000 bytes) but holds 60,000 bytes", "regenerate it")
    assert not (tmp_path / "out").exists()
    with pytest.raises(dataset.DataError, match="member 'dynamic' claims shape"):  # the pool's reader
        next(dataset.iter_stage(str(stage), dataset.read_schema(str(data))))
    with_header(stage, "label", (10**10,))  # the rows a pool is sized by
    with pytest.raises(dataset.DataError,
                       match=r"not a readable stage file \(member 'label' claims shape \(10000000000,\)"):
        dataset.stage_rows(str(stage))


def test_flipped_bytes_in_a_compressed_member_are_one_line(folder, tmp_path, capsys):
    """Issue 20 #12: flipped bytes in a deflated member were a zlib.error traceback."""
    data = data_copy(folder, tmp_path)
    stage = data / "train_stage1.npz"
    with zipfile.ZipFile(stage) as archive:
        info = archive.getinfo("dynamic.npy")
    raw = bytearray(stage.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the local header, then the data
    for i in range(start + 100, start + 140):
        raw[i] ^= 0xFF
    stage.write_bytes(bytes(raw))
    assert train(folder, tmp_path / "out", f"runner.train_data_dir={data}") == 2
    error_line(capsys, f"{stage}: not a readable .npz file of arrays (", "regenerate it")
    with pytest.raises(dataset.DataError, match=f"{stage}: not a readable .npz file"):
        list(dataset.iter_stage(str(stage), dataset.read_schema(str(data))))


def test_a_truncated_vocabulary_is_one_line(folder, tmp_path, capsys):
    """Issue 20 #12: a truncated vocabulary.npz was a BadZipFile traceback."""
    data = data_copy(folder, tmp_path)
    maxima = dict(zip(GROUPS, [MAX_IDXS[g] for g in GROUPS]))
    sizes = dict(zip(vocabulary.FIELDS, maxima["static"] + maxima["dynamic"] + maxima["ad"]))
    vocabulary.save(str(data), {field: np.r_[-1, np.arange(1, sizes[field] + 1) * 7] for field in vocabulary.FIELDS})
    assert vocabulary.load(str(data))["kw1"][-1] == MAX_IDXS["dynamic"][3] * 7
    whole = (data / vocabulary.VOCAB_FILE).read_bytes()
    for cut in (len(whole) // 2, len(whole) - 30):
        (data / vocabulary.VOCAB_FILE).write_bytes(whole[:cut])
        assert train(folder, tmp_path / "out", f"runner.train_data_dir={data}") == 2
        error_line(capsys, f"{data / vocabulary.VOCAB_FILE}: not a vocabulary archive (", "regenerate it")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("maximum", [10**12, 2**31 - 1, -1])
def test_vocabulary_maxima_beyond_int32_ids_are_refused(folder, tmp_path, capsys, maximum):
    """Issue 20 #12: a schema.json maximum of 10^12 was `IndexError ... exceeds int32 range`."""
    import json
    data = data_copy(folder, tmp_path)
    schema = json.loads((data / dataset.SCHEMA_FILE).read_text())
    schema["max_idxs"]["dynamic"][3] = maximum
    (data / dataset.SCHEMA_FILE).write_text(json.dumps(schema))
    assert train(folder, tmp_path / "out", f"runner.train_data_dir={data}") == 2
    error_line(capsys, f"{data / dataset.SCHEMA_FILE}: max_idxs.dynamic must be 7 integers in 0..2,147,483,646")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 11: a network larger than the machine
TINY = ("runner.thread_num=1", "hyper_parameters.embed_dim=8", "hyper_parameters.mlp_dims=[16]",
        "hyper_parameters.num_expert=2", "hyper_parameters.num_output=2", "runner.train_batch_size=16")


@pytest.fixture(scope="module")
def tiny_metaheac(tmp_path_factory):
    """The top-level MetaHeac, tiny, trained one epoch on tiny data: (data folder, checkpoint folder)."""
    from helpers import ROOT, write_split
    root = tmp_path_factory.mktemp("tiny_metaheac")
    write_split(root / "train", {1: 60, 2: 50, 3: 40, 4: 30, 5: 20}, seed=4)
    write_split(root / "test_hot", {1: 20, 6: 10}, {1: 40, 6: 30}, seed=5)
    seeds = dataset.load_split(str(root / "test_hot"))["stage1"]
    write_split(root / "campaign", {})  # schema.json; the seeds: campaign 1's of test_hot
    dataset.save_stage(str(root / "campaign" / "train_stage1.npz"), {k: v[seeds["aid"] == 1] for k, v in seeds.items()})
    out = root / "out"
    from tools import trainer
    assert cli.run(trainer.main, ["-m", os.path.join(ROOT, "config.yaml"), "-o", *TINY,
                                  f"runner.train_data_dir={root / 'train'}", f"runner.model_save_path={out}"]) == 0
    return root, out


@pytest.mark.parametrize("hp", [dict(embed_dim=8, mlp_dims=[16], num_expert=2, num_output=2),
                                dict(embed_dim=5, mlp_dims=[7, 3, 4], num_expert=3, num_output=1)])
def test_the_parameter_estimate_is_the_networks_count(hp):
    from helpers import ROOT, schema
    from tools.utils.run import config as cfg
    from tools.utils.run import model_folder, resources
    config = cfg.load_config(os.path.join(ROOT, "config.yaml"), [f"hyper_parameters.{k}={v}" for k, v in hp.items()])
    config = cfg.with_data(config, "test", schema=schema())
    net = model_folder.model_module(config).DygraphModel().create_model(config)
    assert resources.parameter_estimate(config["hyper_parameters"]) == sum(int(np.prod(p.shape))
                                                                           for p in net.parameters())


def huge_schema_rows():
    """A kw1 maximum whose table alone (embed_dim 64) needs twice this machine's memory (within int32 ids)."""
    from tools.utils.run import resources
    return min(2 * resources.memory_limit() // (resources.BYTES_PER_PARAMETER * 64), dataset.MAX_ID)


@pytest.mark.parametrize("option", ["hyper_parameters.embed_dim=10000000", "hyper_parameters.num_expert=1000000000",
                                    "huge schema"])
def test_a_network_that_cannot_fit_is_refused_before_anything_is_built(tiny_metaheac, tmp_path, capsys, option):
    """Issue 20 #11: embed_dim=10^7 or num_expert=10^9 was Paddle's MemoryError traceback and a .lock left behind
    (the trainer; meta-inference and expand alike); a schema maximum of 3 * 10^8 tried to allocate a 9.6 GB table."""
    import json
    from helpers import ROOT
    from tools import infer_meta, trainer
    from tools.utils.run import config as cfg
    from tools.utils.run import resources
    data, trained = tiny_metaheac
    if option == "huge schema":
        shutil.copytree(data / "train", tmp_path / "train")
        data, option = tmp_path, "hyper_parameters.embed_dim=64"
        schema = json.loads((data / "train" / dataset.SCHEMA_FILE).read_text())
        schema["max_idxs"]["dynamic"][3] = huge_schema_rows()
        (data / "train" / dataset.SCHEMA_FILE).write_text(json.dumps(schema))
    config = os.path.join(ROOT, "config.yaml")
    options = [*TINY, f"runner.train_data_dir={data / 'train'}", option]
    hp = cfg.with_data({"hyper_parameters": cfg.load_config(config, options)["hyper_parameters"], "config_path": config},
                       "x", schema=dataset.read_schema(str(data / "train")))["hyper_parameters"]
    count = resources.parameter_estimate(hp)
    assert count * resources.BYTES_PER_PARAMETER > resources.memory_limit()
    out = tmp_path / "out"
    assert cli.run(trainer.main, ["-m", config, "-o", *options, f"runner.model_save_path={out}"]) == 2
    error_line(capsys, f"{config}: the network would have about {count:,} parameters", "more than the ",
               "lower hyper_parameters.embed_dim, num_expert or mlp_dims")
    assert not out.exists()
    if data != tiny_metaheac[0]:
        return  # meta-inference takes the schema from the checkpoint
    assert cli.run(infer_meta.main, ["-m", config, "-o", *options, f"runner.infer_load_path={trained}",
                                     f"runner.test_data_dir={data / 'test_hot'}", "runner.infer_end_epoch=1",
                                     f"runner.infer_output_path={out}"]) == 2
    error_line(capsys, f"the network would have about {count:,} parameters")
    assert not out.exists()
    from tools import expand
    assert cli.run(expand.main, ["-m", config, "-o", *options, f"runner.infer_load_path={trained}",
                                 "runner.infer_end_epoch=1", "--campaign", str(data / "campaign"), "--pool",
                                 str(data / "test_hot" / "test_stage2.npz"), "--top-k", "5", "--out", str(out)]) == 2
    error_line(capsys, f"the network would have about {count:,} parameters")
    assert not out.exists()
