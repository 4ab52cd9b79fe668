"""Test data and independent reference computations shared by the test modules."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np

from tools.utils.data import dataset
from tools.utils.data.schema import AD_FIELDS, DYNAMIC_FIELDS, DYNAMIC_WIDTHS, GROUPS, STATIC_FIELDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_IDXS = {"static": [3, 2, 9, 5, 7, 2, 1], "dynamic": [12, 8, 6, 30, 20, 10, 10], "ad": [4, 5, 3, 3, 3, 2]}
MAX_IDXS_LIST = [MAX_IDXS[group] for group in GROUPS]
TINY_HP = dict(embed_dim=4, mlp_dims=[5, 6], num_expert=3, num_output=2)  # a MetaHeacNet small enough to check


def schema(max_idxs=MAX_IDXS):
    return dataset.make_schema(max_idxs)


def layout(max_idxs=MAX_IDXS):
    import net
    return net.FieldLayout.from_schema(schema(max_idxs))


def make_stage(rng, rows_by_aid, uid_start=0, max_idxs=MAX_IDXS, hit_maxima=False):
    """Random valid rows for {aid: rows}, shuffled (so a file is not grouped by campaign).

    Labels follow a logistic model of static[:, 0] and the campaign's first
    ad field, so a trained model can beat AUC 0.5. hit_maxima: row 0 holds
    every field's largest id.
    """
    aids = np.array(list(rows_by_aid), dtype=np.int32)
    aid = np.repeat(aids, list(rows_by_aid.values()))[rng.permutation(sum(rows_by_aid.values()))]
    n = len(aid)
    ad_of_campaign = {a: rng.integers(0, np.array(max_idxs["ad"]) + 1) for a in aids}
    static = rng.integers(0, np.array(max_idxs["static"]) + 1, size=(n, len(STATIC_FIELDS)))
    ad = np.array([ad_of_campaign[a] for a in aid]).reshape(n, len(AD_FIELDS))
    dynamic = np.concatenate([rng.integers(0, top + 1, size=(n, width))
                              for top, width in zip(max_idxs["dynamic"], DYNAMIC_WIDTHS)], axis=1)
    lengths = rng.integers(0, np.array(DYNAMIC_WIDTHS) + 1, size=(n, len(DYNAMIC_FIELDS)))
    if hit_maxima and n:
        static[0], ad[0] = max_idxs["static"], max_idxs["ad"]
        dynamic[0] = np.repeat(max_idxs["dynamic"], DYNAMIC_WIDTHS)
    logit = 1.5 * (static[:, 0] - 1.5) + 0.5 * (ad[:, 0] - 2)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return {"label": label, "aid": aid, "static": static.astype(np.int32), "dynamic": dynamic.astype(np.int32),
            "lengths": lengths.astype(np.int32), "ad": ad.astype(np.int32),
            "uid": np.arange(uid_start, uid_start + n, dtype=np.int64)}


def random_batch(rng, n, max_idxs=MAX_IDXS):
    """n rows of random ids and labels (ad ids too, row by row); row 0's lists are all empty and row 1's all
    full (when n allows)."""
    batch = make_stage(rng, {0: n}, max_idxs=max_idxs)
    batch["label"] = rng.integers(0, 2, n).astype(np.int8)
    batch["ad"] = rng.integers(0, np.array(max_idxs["ad"]) + 1, size=(n, len(AD_FIELDS))).astype(np.int32)
    batch["lengths"][:1] = 0
    batch["lengths"][1:2] = DYNAMIC_WIDTHS
    return batch


def write_split(folder, stage1_rows, stage2_rows=None, seed=0, max_idxs=MAX_IDXS):
    """A split folder with schema.json, stage 1 and (if given) stage 2; rows are {aid: count}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    dataset.write_schema(str(folder), max_idxs)
    prefix = "train" if stage2_rows is None else "test"
    stage1 = make_stage(rng, stage1_rows, max_idxs=max_idxs)
    dataset.save_stage(os.path.join(folder, f"{prefix}_stage1.npz"), stage1)
    if stage2_rows is not None:
        dataset.save_stage(os.path.join(folder, f"{prefix}_stage2.npz"),
                     make_stage(rng, stage2_rows, uid_start=len(stage1["label"]), max_idxs=max_idxs))
    return str(folder)


def reader_config(batch_size=8, task_count=2, sample_method="normal", seed=7):
    """What the readers read of a validated config."""
    return {"runner": {"train_batch_size": batch_size, "seed": seed},
            "hyper_parameters": {"max_idxs": MAX_IDXS_LIST, "task_count": task_count,
                                 "sample_method": sample_method},
            "data_schema": schema(), "config_path": "test-config.yaml", "config_abs_dir": ROOT,
            "model_dir": ROOT}


def pairwise_auc(labels, scores):
    """P(score of a positive > score of a negative) + half the ties, over all pairs (Mann-Whitney)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def bce(p, label):
    """Mean binary cross-entropy in NumPy, p clipped at 1e-12 as the model's loss does."""
    p = np.asarray(p, dtype=np.float64)
    return float(-np.mean(label * np.log(np.maximum(p, 1e-12)) + (1 - label) * np.log(np.maximum(1 - p, 1e-12))))


def fake_model_folder(folder):
    """A model folder outside the project: tests/fake_model (a logistic regression following the model contract),
    copies of the real readers, and tiny train / test_hot / test_cold data. Returns the folder (a Path)."""
    shutil.copytree(os.path.join(ROOT, "tests", "fake_model"), folder, dirs_exist_ok=True)
    for reader in ("reader_train.py", "reader_test.py"):
        shutil.copy(os.path.join(ROOT, reader), folder / reader)
    write_split(folder / "data" / "train", {1: 120, 2: 80, 3: 60, 4: 30, 5: 10}, seed=1)
    write_split(folder / "data" / "test_hot", {11: 60, 12: 40, 13: 20, 19: 10}, {11: 200, 12: 150, 13: 100}, seed=2)
    cold = write_split(folder / "data" / "test_cold", {21: 10, 22: 5}, {21: 80, 22: 6}, seed=3)
    stage2 = dataset.load_split(cold)["stage2"]
    stage2["label"][stage2["aid"] == 22] = 0  # a campaign without positive candidates
    dataset.save_stage(os.path.join(cold, "test_stage2.npz"), stage2)
    return folder


def run(tool, model_dir, *args, env=None, **popen):
    """Run tools/<tool> on model_dir's config.yaml from another working directory; the CompletedProcess."""
    command = [sys.executable, os.path.join(ROOT, "tools", tool), "-m", str(model_dir / "config.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=str(model_dir.parent), timeout=300,
                          env={**os.environ, **(env or {})}, **popen)


def assert_one_line_error(proc, *fragments):
    """Exit code 2 and the error as one line, `error: ...`, holding every fragment, after at most some progress
    lines (tools/utils/progress.py off a terminal); no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    *before, line = proc.stderr.strip().splitlines() or [""]
    assert line.startswith("error: "), proc.stderr
    assert all(re.match(r"^[^:]+: \d+(/\d+)? \S+", b) and "error" not in b for b in before), proc.stderr
    for fragment in fragments:
        assert fragment in line, line
