"""tools/gates.py: per campaign, the mean expert and critic gate weights of a checkpoint, against NumPy."""
import csv
import os
import subprocess
import sys

import numpy as np

from helpers import ROOT
from tools.utils.data import dataset
from tools.utils.data import schema

TINY = ["runner.thread_num=1", "hyper_parameters.embed_dim=8", "hyper_parameters.mlp_dims=[16]",
        "hyper_parameters.num_expert=2", "hyper_parameters.num_output=3"]


def numpy_gates(w, rows):
    """Each row's (expert, critic) gate weights from the paper's equations: the task vector is the mean of the
    14 user-field embeddings (lists mean-pooled over their lengths) beside the 6 ad embeddings."""
    fields = [w["emb_" + f][rows["static"][:, j]] for j, f in enumerate(schema.STATIC_FIELDS)]
    for j, f in enumerate(schema.DYNAMIC_FIELDS):
        lo, hi = schema.DYNAMIC_OFFSETS[j], schema.DYNAMIC_OFFSETS[j + 1]
        inside = np.arange(hi - lo)[None] < rows["lengths"][:, j:j + 1]
        summed = (w["emb_" + f][rows["dynamic"][:, lo:hi]] * inside[:, :, None]).sum(axis=1)
        fields.append(summed / np.maximum(rows["lengths"][:, j:j + 1], 1))
    ad = [w["emb_" + f][rows["ad"][:, j]] for j, f in enumerate(schema.AD_FIELDS)]
    task = np.concatenate([np.mean(fields, axis=0)] + ad, axis=1)

    def gate(name):
        z = np.maximum(task @ w[name + "_w0"] + w[name + "_b0"], 0) @ w[name + "_w1"] + w[name + "_b1"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return gate("expert_gate"), gate("critic_gate")


def test_the_gates_of_every_campaign_equal_a_numpy_recomputation_from_the_checkpoint(tmp_path):
    model = tmp_path / "model"
    trained = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "trainer.py"), "-m",
                              os.path.join(ROOT, "config.yaml"), "--untrained", "-o", f"runner.model_save_path={model}",
                              *TINY], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gates.py"), "-m",
                           os.path.join(ROOT, "config.yaml"), "-o", f"runner.infer_load_path={model}", *TINY,
                           "--out", str(tmp_path / "gates")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    csv_path, png_path = tmp_path / "gates" / "gates_epoch0.csv", tmp_path / "gates" / "gates_epoch0.png"
    assert f"gates: {csv_path}, {png_path}" in done.stdout
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(csv_path) as f:
        lines = list(csv.DictReader(f))
    experts = np.array([[float(line[f"expert_{i}"]) for i in range(2)] for line in lines])
    critics = np.array([[float(line[f"critic_{i}"]) for i in range(3)] for line in lines])
    np.testing.assert_allclose(experts.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(critics.sum(axis=1), 1, atol=1e-6)

    with np.load(model / "0" / "params.npz", allow_pickle=False) as archive:
        weights = {k: archive[k].astype(np.float64) for k in archive.files}
    expected = []
    for split, folder, stages in (("train", "train", ("stage1",)), ("hot", "test_hot", ("stage1", "stage2")),
                                  ("cold", "test_cold", ("stage1", "stage2"))):
        data = dataset.load_split(os.path.join(ROOT, "data", folder))
        rows = {k: np.concatenate([data[s][k] for s in stages]) for k in data["stage1"]}
        e, c = numpy_gates(weights, rows)
        for aid in np.unique(rows["aid"]):
            mine = rows["aid"] == aid
            expected.append((split, int(aid), int(mine.sum()), e[mine].mean(axis=0), c[mine].mean(axis=0)))
    assert [(line["split"], int(line["campaign"]), int(line["rows"])) for line in lines] == \
        [row[:3] for row in expected]
    assert len({row[0] for row in expected}) == 3 and len(lines) == 50  # the sample's 25 + 14 + 11 campaigns
    np.testing.assert_allclose(experts, [row[3] for row in expected], rtol=0, atol=1e-6)
    np.testing.assert_allclose(critics, [row[4] for row in expected], rtol=0, atol=1e-6)
    assert np.ptp(experts[:, 0]) > 0.01  # the campaigns' gates differ: the test can tell them apart
