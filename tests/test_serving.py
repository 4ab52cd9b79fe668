"""The exported campaign model (tools/utils/serving/exported.py, export_net.py) and its shipped encoder
(tools/score.py)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import net as net_module
from helpers import ROOT, TINY_HP, layout, random_batch
from models import layers
from tools.utils.run import checkpoint as ckpt
from tools.utils.data import dataset
from tools.utils.data import schema
from tools.utils.serving import exported
from tools.utils.data import vocabulary
from tools.utils.paddle_env import paddle
from tools.utils.serving.export_net import MetaHeacCampaign

HOT = os.path.join(ROOT, "data", "test_hot")
USER_INPUTS = ("static", "dynamic", "lengths")


def feeds_of(batch, ad_ids):
    ad = np.tile(np.asarray(ad_ids, np.int64), (len(batch["label"]), 1))
    return {**{k: paddle.to_tensor(batch[k].astype(np.int64)) for k in USER_INPUTS}, "ad": paddle.to_tensor(ad)}


def batches(rng):
    """Random users (row 0: every list empty, row 1: every list full), padding past the lengths filled with
    other valid ids (never read), a batch of one user and a batch where no user has a list."""
    mixed = random_batch(rng, 64)
    past = np.arange(schema.DYNAMIC_WIDTH)[None] >= np.repeat(mixed["lengths"], schema.DYNAMIC_WIDTHS, axis=1)
    mixed["dynamic"] = np.where(past, random_batch(rng, 64)["dynamic"], mixed["dynamic"])
    empty = random_batch(rng, 5)
    empty["lengths"][:] = 0
    return [mixed, random_batch(rng, 3), {k: v[:1] for k, v in mixed.items()}, empty]


def test_the_exported_metaheac_scorer_equals_the_training_network(tmp_path):
    paddle.seed(5)
    net = net_module.MetaHeacNet(layout(), **TINY_HP)
    net.eval()
    rng = np.random.default_rng(4)
    ad_ids = random_batch(rng, 1)["ad"][0]
    program, _ = exported.export(net, ad_ids, str(tmp_path), {"campaign": 7, "data_schema": {}})
    predictor = exported.predictor(str(tmp_path))
    scorer = MetaHeacCampaign(net, ad_ids)
    for batch in batches(rng):
        with paddle.no_grad():
            expected = net(feeds_of(batch, ad_ids)).numpy()
            rearranged = scorer(*(paddle.to_tensor(batch[k].astype(np.int64)) for k in USER_INPUTS)).numpy()
        served = exported.predict(predictor, *(batch[k] for k in USER_INPUTS))
        np.testing.assert_allclose(rearranged, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    ops = json.dumps(json.load(open(program)))
    assert '"1.less_than"' in ops and '"1.clip"' in ops  # the lists are pooled by net.py's own code (its mask)


def test_another_network_is_exported_as_it_is(tmp_path):
    paddle.seed(6)
    net = layers.MLPNet(layout(), 4, [5])
    net.eval()
    rng = np.random.default_rng(8)
    ad_ids = random_batch(rng, 1)["ad"][0]
    exported.export(net, ad_ids, str(tmp_path), {"data_schema": {}})
    batch = batches(rng)[0]
    with paddle.no_grad():
        expected = net(feeds_of(batch, ad_ids)).numpy()
    served = exported.predict(exported.predictor(str(tmp_path)), *(batch[k] for k in USER_INPUTS))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def raw_line(uid, static, dynamic, lengths, vocab):
    """A userFeature.data line for encoded ids: each id turned back into its raw value; id 0 of a single-valued
    field (missing) and an empty list are left out, as in the raw data."""
    groups = [f"uid {uid}"]
    groups += [f"{f} {vocab[f][i]}" for f, i in zip(schema.STATIC_FIELDS, static) if i]
    for j, f in enumerate(schema.DYNAMIC_FIELDS):
        ids = dynamic[schema.DYNAMIC_OFFSETS[j]:schema.DYNAMIC_OFFSETS[j] + lengths[j]]
        if len(ids):
            groups.append(f + " " + " ".join(str(vocab[f][i]) for i in ids))
    return "|".join(groups) + "\n"


def test_the_exported_model_through_the_shipped_encoder_gives_expand_scores(sample_model, tmp_path):
    """Raw users in (the sample's hot candidates written back as raw lines, plus a user with no field at all,
    one with raw ids never seen in training, one with a list longer than its width): tools/score.py with the
    exported model gives tools/expand.py's scores, user for user."""
    model_dir, _ = sample_model
    vocab = ckpt.vocabulary(str(model_dir / "0"))
    split = dataset.load_split(HOT)
    aid = int(np.unique(split["stage2"]["aid"])[0])
    campaign = tmp_path / "campaign"
    campaign.mkdir()
    for f in (dataset.SCHEMA_FILE, vocabulary.VOCAB_FILE):
        shutil.copy(os.path.join(HOT, f), campaign)
    dataset.save_stage(str(campaign / "test_stage1.npz"), {k: v[split["stage1"]["aid"] == aid]
                                                     for k, v in split["stage1"].items()})
    users = split["stage2"]
    first = np.sort(np.unique(users["uid"], return_index=True)[1])[:1500]
    lines = [raw_line(users["uid"][i], users["static"][i], users["dynamic"][i], users["lengths"][i], vocab)
             for i in first]
    interests = " ".join(str(v) for v in vocab["interest1"][1:16])
    lines += ["uid 900000001\n", f"uid 900000002|LBS 987654321|kw1 {vocab['kw1'][1]} 999999999|age 77\n",
              f"uid 900000003|interest1 {interests}|gender {vocab['gender'][1]}\n"]
    pool = tmp_path / "userFeature.data"
    pool.write_text("".join(lines))

    def tool(name, *args):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    export_dir, out, scored = tmp_path / "exported", tmp_path / "out", tmp_path / "scored"
    tool("expand.py", "-m", os.path.join(ROOT, "config.yaml"), "-o", f"runner.infer_load_path={model_dir}",
         "--campaign", str(campaign), "--pool", str(pool), "--top-k", "10", "--out", str(out), "--all-scores",
         "--export", str(export_dir))
    done = tool("score.py", "--model", str(export_dir), "--pool", str(pool), "--out", str(scored))
    expected = np.load(out / "all_scores.npy")
    assert expected.shape == (len(lines),)
    np.testing.assert_allclose(np.load(scored / "scores.npy"), expected, rtol=0, atol=1e-6)
    table = np.loadtxt(scored / "scores.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 0].astype(np.int64), [int(line[4:].split("|")[0]) for line in lines])
    np.testing.assert_allclose(table[:, 1], expected, rtol=0, atol=1e-6)
    summary = json.load(open(scored / "score.json"))
    assert summary["pool_users"] == len(lines)
    assert summary["unknown_ids"] == json.load(open(out / "expand.json"))["unknown_ids"]["pool"]
    assert summary["unknown_ids"]["kw1"]["unknown"] == 1 and summary["unknown_ids"]["LBS"]["unknown"] == 1
    assert f"scored {len(lines)} users" in done.stdout and "of kw1 ids (1)" in done.stdout
    rules = json.load(open(export_dir / "inputs.json"))
    assert rules["input_rules"] == exported.INPUT_RULES and rules["data_schema"]["vocabulary_sha256"]

    def refused(out, *fragments):  # exit 2, one line, before any scoring (no progress line)
        done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "score.py"), "--model", str(export_dir),
                               "--pool", str(pool), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, \
            done.stderr
        assert all(f in done.stderr for f in fragments), done.stderr
    before = {name: (scored / name).read_bytes() for name in ("scores.csv", "scores.npy", "score.json")}
    refused(scored, f"{scored}: not empty", "--force")
    assert {name: (scored / name).read_bytes() for name in before} == before
    (tmp_path / "a_file").write_text("x")
    refused(tmp_path / "a_file", "exists and is not a folder")
    (scored / "mine.txt").write_text("kept")
    tool("score.py", "--model", str(export_dir), "--pool", str(pool), "--out", str(scored), "--force")
    assert (scored / "mine.txt").read_text() == "kept" and (scored / "scores.csv").read_bytes() == before["scores.csv"]


@pytest.mark.parametrize("missing", ["inputs.json", "model.pdiparams"])
def test_a_folder_that_is_not_an_export_is_one_line(tmp_path, missing):
    folder = tmp_path / "exported"
    folder.mkdir()
    for name in ("inputs.json", "model.json", "model.pdiparams"):
        if name != missing:
            (folder / name).write_text("{}")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "score.py"), "--model", str(folder),
                           "--pool", os.path.join(HOT, "test_stage2.npz"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert f"{folder / missing}: not found" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_raw_pool_is_read_as_preprocess_reads_users(tmp_path):
    """A uid group anywhere on the line, with any spacing, as the parser (and tools/preprocess.py) reads it: the
    pool's uids, which keep pool users out of the drawn negatives, and its parsed users hold every line. A uid
    beyond the ids' range is a DataError naming its line, not an OverflowError."""
    from tools.utils.data import raw_users
    from tools.utils.errors import DataError
    from tools.utils.serving import expansion
    pool = tmp_path / "pool.data"
    pool.write_text("uid 5|age 1|gender 2\nage 3|uid 7|gender 1\nuid  9|age 2\nuid 11\n")
    assert expansion.pool_uids(str(pool)).tolist() == [5, 7, 9, 11]
    assert np.concatenate([u for u, *_ in raw_users.iter_users(str(pool), workers=1)]).tolist() == [5, 7, 9, 11]
    for name, text, line in (("big.data", "uid 5|age 1\nuid 18446744073709551615|age 1\n", 2),
                             ("only.data", "uid 18446744073709551615|age 1\n", 1)):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name} line {line}: group 'uid' has value"):
            list(raw_users.iter_users(str(tmp_path / name), workers=1))
    bom = tmp_path / "bom.data"
    bom.write_bytes(b"\xef\xbb\xbf" + pool.read_bytes())
    with pytest.raises(DataError, match="starts with a UTF-8 byte-order mark"):
        list(raw_users.iter_users(str(bom), workers=1))


def test_background_users_from_a_stage_file_are_each_drawn_once(tmp_path):
    """A stage file holds a user once per campaign; as --background its users are distinct, so no user is two
    negatives."""
    from tools.utils.serving import expansion
    stage = dataset.load_split(HOT)["stage1"]
    assert len(np.unique(stage["uid"])) < len(stage["uid"])  # the shipped seeds repeat users across campaigns
    users = expansion.read_users(os.path.join(HOT, "test_stage1.npz"), dataset.read_schema(HOT), None,
                                 10 ** 9, vocabulary.UnknownIds())
    _, first = np.unique(stage["uid"], return_index=True)
    np.testing.assert_array_equal(users["uid"], stage["uid"][np.sort(first)])
    np.testing.assert_array_equal(users["static"], stage["static"][np.sort(first)])
    limited = expansion.read_users(os.path.join(HOT, "test_stage1.npz"), dataset.read_schema(HOT), None, 100,
                                   vocabulary.UnknownIds())
    assert len(limited["uid"]) == len(np.unique(limited["uid"])) == 100
