"""Test meta-trained weights: python tools/infer_meta.py -m CONFIG [-o key=value ...] [--split hot|cold|both]

For each checkpoint epoch in [runner.infer_start_epoch, infer_end_epoch) and
each test campaign: start from the meta-trained weights (read from disk once
per epoch, restored from memory per campaign), fine-tune with a fresh Adam at
hyper_parameters.local_test_learning_rate for runner.infer_train_epoch passes
over the campaign's seeds (shuffled anew for every pass, then cut into
consecutive batches of infer_batch_size, as the official code does), then
score its candidates (tools/utils/run/campaign.py). Everything random in a
campaign is seeded with (seed, aid), so its result does not depend on the
other campaigns. Prints a
table (one row per split x epoch) and writes metrics_<splits>.json and .csv
(per campaign and overall) to a folder of this run's own under
runner.infer_output_path (default <infer_load_path>/results), named by the
time and a digest of the effective config (kept beside them as
config.json), so runs with other overrides never replace each other's; the
latest run's files are also copied to runner.infer_output_path itself.

The model is built from the checkpoint (its field layout, vocabulary and
training campaigns are in its meta.json), so only the test data is read.

--split: hot and cold are the sibling folders test_hot and test_cold of
runner.test_data_dir (its final folder name is replaced); without --split the
folder runner.test_data_dir itself is tested.

Across processes and machines, with PaddlePaddle's launcher (docs/distributed.md):

    python -m paddle.distributed.launch --nproc_per_node N tools/infer_meta.py -m CONFIG [...]

rank r fine-tunes and scores campaigns r, r + N, ... of each split; rank 0
gathers their labels and scores and computes, prints and writes exactly what
one process does (every rank reads the checkpoint and the test data).
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import csv
import hashlib
import io
import json
import os
import shlex
import time
import warnings

import numpy as np
from tools.utils.run import checkpoint as ckpt
from tools.utils import cli
from tools.utils.run import config as cfg
from tools.utils.data.dataset import load_split, without_uids
from tools.utils.run import campaign, distributed, model_folder, resources, trained
from tools.utils.measure import metrics
from tools.utils.errors import CheckpointError, DataError, TrainingError
from tools.utils.files import atomic_write, npz_bytes, plain, require_writable, write_json, write_text
from tools.utils.progress import progress

EXAMPLES = (
    "python tools/infer_meta.py -m config.yaml --split both   # hot and cold test campaigns",
    "python tools/infer_meta.py -m config.yaml --split cold -o runner.infer_train_epoch=0   # no fine-tuning",
    "python tools/infer_meta.py -m config.yaml --split hot -o runner.infer_load_path=output_2epochs "
    "runner.infer_start_epoch=0 runner.infer_end_epoch=2",
    "python tools/infer_meta.py -m config.yaml -o runner.test_data_dir=data/test_cold "
    "runner.infer_output_path=results_cold",
)
SPLIT_FOLDERS = {"hot": ("test_hot",), "cold": ("test_cold",), "both": ("test_hot", "test_cold")}
CSV_COLUMNS = ("split", "epoch", "campaign", "seeds", "rows", "positives", "auc", "gauc",
               "precision_at_5", "recall_at_5")


def split_dirs(test_data_dir, split=None):
    """The test folders of --split (siblings of test_data_dir), or test_data_dir itself."""
    if split is None:
        return [test_data_dir]
    parent = os.path.dirname(os.path.normpath(test_data_dir))
    return [os.path.join(parent, name) for name in SPLIT_FOLDERS[split]]


def evaluate(model, net, params, dataset, batches, config, label, group=distributed.SINGLE, users=None):
    """Fine-tune and score every campaign of one split from `params`; returns (campaign dicts, overall dict).

    With a distributed group each rank scores its share (group.campaigns) and rank 0 gathers the scores and
    returns the split's results; the other ranks return None.
    """
    scored = score_campaigns(model, net, params, dataset, batches, config, label, group, users)
    if group.size > 1:
        parts = group.gather(pack_scored(scored), f"gathering the scores of {label}")
        if parts is None:
            return None
        scored = sorted((s for part in parts for s in unpack_scored(part)), key=lambda s: s[0])
    campaigns, all_labels, all_scores = [], [], []
    for _, aid, seeds, labels, scores in scored:
        try:
            result = metrics.campaign_metrics(labels, scores)
        except ValueError as e:
            raise TrainingError(f"{label}, campaign {aid}: {e}") from e
        campaigns.append({"campaign": aid, "seeds": seeds, **result})
        all_labels.append(labels)
        all_scores.append(scores)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overall = metrics.overall_metrics(campaigns, np.concatenate(all_labels), np.concatenate(all_scores))
    for w in caught:
        print(f"note: {label}: {w.message}")
    unseeded = [c["campaign"] for c in campaigns if c["seeds"] == 0]
    if unseeded:
        seeds = "positive seeds" if config["runner"]["infer_seeds"] == "positive" else "seeds (stage-1 rows)"
        print(f"note: {label}: {len(unseeded)} of {len(campaigns)} campaigns have no {seeds} and were "
              f"scored without fine-tuning: {unseeded[:10]}")
    return campaigns, overall


def score_campaigns(model, net, params, dataset, batches, config, label, group=distributed.SINGLE, users=None):
    """Fine-tune and score this rank's campaigns of a split: [(position in the split, aid, seeds, labels, scores)].

    users: the checkpoint's background users, for runner.infer_seeds positive (campaign.tuning_rows).
    """
    mine = set(group.campaigns(len(dataset)))
    bar = progress(total=len(mine), desc=label, unit="campaign", disable=not group.main)
    scored = []
    for position, (aid, seeds, candidates) in enumerate(dataset):
        if position in mine:
            seeds = campaign.tuning_rows(seeds, candidates, config, aid, users)
            scorer = campaign.adapt(model, net, params, seeds, config, aid, batches, users)
            scores = campaign.score(model, scorer, candidates, config, batches)
            scored.append((position, aid, len(seeds["label"]), candidates["label"], scores))
            bar.update(1)
    bar.close()
    return scored


def pack_scored(scored):
    """score_campaigns' list as the bytes of an .npz (no pickle): what a rank sends to rank 0."""
    columns = list(zip(*scored)) or [(), (), (), (), ()]
    arrays = {name: np.asarray(column, np.int64) for name, column in zip(("position", "aid", "seeds"), columns)}
    arrays["rows"] = np.asarray([len(labels) for labels in columns[3]], np.int64)
    arrays["label"] = np.concatenate(columns[3]) if scored else np.empty(0, np.int8)
    arrays["score"] = np.concatenate(columns[4]) if scored else np.empty(0, np.float32)
    return npz_bytes(arrays)


def unpack_scored(data):
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        a = {key: archive[key] for key in archive.files}
    bounds = np.cumsum(a["rows"])[:-1]
    return [(int(p), int(aid), int(seeds), labels, scores) for p, aid, seeds, labels, scores in
            zip(a["position"], a["aid"], a["seeds"], np.split(a["label"], bounds), np.split(a["score"], bounds))]


def run_folder(base, config, tag):
    """A new folder under `base` for one run's results: <time>-<digest>, the digest (8 hex digits of a sha256)
    being that of the run's effective config and splits, which the folder keeps as config.json."""
    effective = plain({"splits": tag, "runner": config["runner"], "hyper_parameters": config["hyper_parameters"]})
    digest = hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}"
    path, again = os.path.join(base, name), 2
    while os.path.exists(path):  # the same config within the same second
        path, again = os.path.join(base, f"{name}-{again}"), again + 1
    os.makedirs(path)
    write_json(os.path.join(path, "config.json"), effective)
    return path


def write_results(base, tag, runs, config):
    """The run's own folder under `base` (run_folder) with metrics_<tag>.json (everything) and metrics_<tag>.csv
    (per campaign, then an 'overall' row per run); both copied to `base` too, where the latest run's always are.
    Returns the paths of the run's two files."""
    out_dir = run_folder(base, config, tag)
    files = write_metrics(out_dir, tag, runs)
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        atomic_write(os.path.join(base, os.path.basename(path)), lambda out: out.write(data))
    return files


def write_metrics(out_dir, tag, runs):
    """metrics_<tag>.json and metrics_<tag>.csv in out_dir; returns their paths."""
    json_path, csv_path = (os.path.join(out_dir, f"metrics_{tag}.{ext}") for ext in ("json", "csv"))
    write_json(json_path, runs)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(CSV_COLUMNS)
    for run in runs:
        ov = run["overall"]
        rows = [[c["campaign"], c["seeds"], c["rows"], c["positives"], c["auc"], None, c["precision"], c["recall"]]
                for c in run["campaigns"]]
        rows.append(["overall", sum(c["seeds"] for c in run["campaigns"]), ov["rows"], ov["positives"],
                     ov["auc"], ov["gauc"], ov["precision"], ov["recall"]])
        writer.writerows([run["split"], run["epoch"], *plain(row)] for row in rows)  # NaN, None -> empty cell
    write_text(csv_path, table.getvalue())
    return json_path, csv_path


def checkpoints(config, trainer_command, trust_pickle=False, best=False):
    """(config, {epoch: folder}): the finished checkpoints to test ({"best": folder} with best), and the run spec
    with the data facts of the first (trained.learn).

    A checkpoint of an earlier version (trusted pickles) does not hold them: they come from the training data.
    """
    runner = config["runner"]
    load_dir, epochs = runner["infer_load_path"], range(runner["infer_start_epoch"], runner["infer_end_epoch"])
    make = trained.train_command(config, epochs[-1] + 1, trainer_command)
    if best:
        epochs = ["best"]
    paths = {epoch: ckpt.require(load_dir, epoch, make) for epoch in epochs}
    first = paths[epochs[0]]
    meta = ckpt.read_meta(first)
    if trust_pickle and "data_schema" not in meta:
        train = load_split(runner["train_data_dir"], stages=(1,))
        meta = {"data_schema": train["schema"], "train_campaigns": np.unique(train["stage1"]["aid"]).tolist()}
        first = runner["train_data_dir"]
    return trained.learn(config, meta, first), paths


def infer(config, split=None, trainer_command="python tools/trainer.py", trust_pickle=False, best=False):
    """Meta-inference of runner's checkpoints on the test split(s); returns the runs (split x epoch results),
    on rank 0 of a distributed run ([] on the other ranks, which print and write nothing)."""
    say = print if distributed.world()[0] == 0 else (lambda *args, **kwargs: None)
    model = model_folder.load_model(config)
    config = cfg.validate(config, "infer", model)
    runner = config["runner"]
    if runner["infer_train_epoch"] == 0:
        say("note: fine-tuning is off (runner.infer_train_epoch 0): every campaign is scored by the "
            "checkpoint's weights as they are")
    config, paths = checkpoints(config, trainer_command, trust_pickle, best)
    resources.require_memory(config)
    out_dir = runner.get("infer_output_path") or os.path.join(runner["infer_load_path"], "results")
    if distributed.world()[0] == 0:  # rank 0 writes the results: check before the work
        require_writable(out_dir, "give a writable runner.infer_output_path (-o runner.infer_output_path=...)")
    no_uids = [path for d in split_dirs(runner["test_data_dir"], split) for path in without_uids(d)] \
        if runner["infer_seeds"] == "positive" else []
    if no_uids:
        raise DataError(f"{no_uids[0]}: no uid array; runner.infer_seeds positive keeps the seeds and the candidates "
                        "out of the drawn negatives by uid: use runner.infer_seeds=labelled, or data made by "
                        "tools/preprocess.py from the raw files (it keeps uids)")
    reader = model_folder.test_reader(config)
    datasets = {d: model_folder.test_dataset(reader, config, d) for d in split_dirs(runner["test_data_dir"], split)}
    for data_dir, dataset in datasets.items():
        for aid, reason in dataset.skipped:
            say(f"note: {data_dir}: campaign {aid} skipped: {reason}")

    from tools.utils import paddle_env
    paddle_env.set_threads(runner["thread_num"])
    group = distributed.join(paddle_env.set_device(runner["use_gpu"], quiet=distributed.world()[0] > 0))
    with group.session():
        net = trained.build(model, config)
        runs = []
        for epoch, path in paths.items():
            params = trained.restore(net, path, config, model, trust_pickle)
            users = ckpt.background_users(path)
            if users is None and runner["infer_seeds"] == "positive":
                raise CheckpointError(f"{path}: holds no background users (a checkpoint of an earlier version); "
                                      "runner.infer_seeds positive draws its negatives from them: retrain it")
            for data_dir, dataset in datasets.items():
                name = os.path.basename(os.path.normpath(data_dir))
                result = evaluate(model, net, params, dataset, reader.batches, config, f"{name} epoch {epoch}", group,
                                  users)
                if result is None:  # a rank other than 0: its scores went to rank 0
                    continue
                campaigns, overall = result
                runs.append({"split": name, "data_dir": data_dir, "epoch": epoch, "checkpoint": path,
                             "overall": overall, "campaigns": campaigns,
                             "skipped": [{"campaign": a, "reason": r} for a, r in dataset.skipped]})
        if not group.main:
            return []
        tag = "+".join(os.path.basename(os.path.normpath(d)) for d in datasets)
        files = write_results(out_dir, tag, runs, config)
    print(metrics.format_table(
        ("split", "epoch", "campaigns", "rows", "GAUC", "P@5%", "R@5%", "pooled AUC"),
        [(r["split"], r["epoch"], r["overall"]["campaigns"], r["overall"]["rows"], r["overall"]["gauc"],
          r["overall"]["precision"], r["overall"]["recall"], r["overall"]["auc"]) for r in runs]))
    print(f"results: {os.path.dirname(files[0])} ({', '.join(os.path.basename(f) for f in files)}; "
          f"copied to {out_dir} as the latest run's)")
    return runs


def main(argv=None):
    parser = cli.argument_parser("Fine-tune meta-trained weights on each test campaign and score its candidates.",
                                 EXAMPLES, "runner.infer_load_path=output_2epochs runner.infer_train_epoch=3")
    parser.add_argument("--best", action="store_true",
                        help="test the checkpoint of the best validation GAUC (training with runner.valid_campaigns) "
                             "instead of the epochs [infer_start_epoch, infer_end_epoch)")
    parser.add_argument("--split", choices=sorted(SPLIT_FOLDERS),
                        help="test_hot / test_cold next to runner.test_data_dir (default: test_data_dir itself)")
    parser.add_argument("--trust-pickled-checkpoints", action="store_true",
                        help="read checkpoints of an earlier version (pickled; only ones you made)")
    args = parser.parse_args(argv)
    trainer = os.path.relpath(os.path.join(model_folder.ROOT, "tools", "trainer.py"))
    infer(cfg.load_config(args.config_yaml, args.opt), args.split, f"python {shlex.quote(trainer)}",
          args.trust_pickled_checkpoints, args.best)


if __name__ == "__main__":
    cli.run_and_exit(main, hold_stops=distributed.world()[1] > 1)
