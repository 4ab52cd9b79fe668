"""Expand one campaign: its seeds in, the pool's K most similar users out, and optionally a servable model.

    python tools/expand.py -m config.yaml --campaign DIR [--aid A] --pool POOL --top-k K --out OUT
                           [--epoch E] [--negatives R] [--background FILE] [--folds F] [--allow-unknown]
                           [--keep-seeds] [--all-scores] [--export DIR]

The model is the meta-trained checkpoint meta-inference would test last
(runner.infer_load_path, epoch runner.infer_end_epoch - 1; --epoch picks
another). It is adapted to the campaign's seeds exactly as tools/infer_meta.py
adapts a test campaign (tools/utils/run/campaign.py: fine-tuned, and for MetaHeac
given a wide part fitted on the seeds), then scores every user of the pool.
DIR is a data-folder stage or raw files (adFeature.csv, train.csv with
aid,uid,label, userFeature.data) holding the campaign's seeds; --aid picks one
campaign where DIR holds several. POOL is a stage .npz with uid or a raw
userFeature.data (tools/utils/serving/expansion.py). Seeds that are all positive get R
negatives per seed (--negatives) drawn from background users, never a user of
the pool (tools/utils/data/background.py: the checkpoint's, or --background). Seeds
in the pool are left out of the ranking unless --keep-seeds. A campaign whose
ad ids, or most of whose seeds' ids, the checkpoint has never seen is refused
(the wrong model) unless --allow-unknown.

Writes OUT/top_k.csv (uid, score, rank), OUT/expand.json (what was done: the
checkpoint, seeds, negatives and where they came from, the fine-tuning, the
quality estimated on held-out seeds (tools/utils/serving/quality.py), the score at rank
K and a histogram of the pool's scores, unknown ids, timings), OUT/expand.png
(the histogram and the quality, with matplotlib) and, with --all-scores,
OUT/all_scores.npy (every pool user's score, in pool order); --export DIR
writes the adapted model for Paddle Inference (tools/utils/serving/exported.py).
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import argparse
import csv
import io
import math
import os
import time

import numpy as np

from tools.utils.run import checkpoint as ckpt
from tools.utils import cli
from tools.utils.run import config as cfg
from tools.utils.serving import expansion
from tools.utils.serving import exported, quality
from tools.utils.run import campaign, model_folder, resources, trained
from tools.utils.measure import charts
from tools.utils.data import background
from tools.utils.data import vocabulary
from tools.utils.errors import UserError
from tools.utils.files import atomic_write, write_json, write_text
from tools.utils.serving.outputs import Outputs

EXAMPLES = (
    "python tools/expand.py -m config.yaml --campaign CAMPAIGN --pool userFeature.data --top-k 1000 --out audience",
    "python tools/expand.py -m config.yaml --campaign CAMPAIGN --pool pool_stage2.npz --top-k 5000 --out audience "
    "--all-scores --export audience/model",
    "python tools/expand.py -m config.yaml -o runner.infer_load_path=output_2epochs runner.infer_train_epoch=3 "
    "--epoch 1 --campaign CAMPAIGN --pool userFeature.data --top-k 1000 --out audience --negatives 9",
    "  (CAMPAIGN: adFeature.csv + train.csv + userFeature.data of one campaign's seeds, or a data-folder stage)",
)
OUTPUT_FILES = ("top_k.csv", "expand.json", "expand.png", "all_scores.npy")  # what expand writes into --out


def expand(config, campaign_dir, pool, top_k, out_dir, epoch=None, negatives=background.NEGATIVES_PER_SEED,
           keep_seeds=False, all_scores=False, export_dir=None, trust_pickle=False, aid=None, background_file=None,
           allow_unknown=False, folds=quality.FOLDS, force=False):
    """Adapt the checkpoint to the campaign's seeds and rank the pool; returns the summary dict.

    The outputs are checked before any work and land together or not at all (tools/utils/serving/outputs.py); a
    non-empty out_dir or export_dir is refused unless force.
    """
    started = time.perf_counter()
    outputs = Outputs(force)
    outputs.files(out_dir, OUTPUT_FILES, "--out")
    if export_dir:
        outputs.folder(export_dir, "--export")
    outputs.check()
    model = model_folder.load_model(config)
    config = cfg.validate(config, "expand", model)
    runner = config["runner"]
    epoch = runner["infer_end_epoch"] - 1 if epoch is None else epoch
    make = trained.train_command(config, epoch + 1 if epoch != "best" else runner["infer_end_epoch"])
    config, path, meta = trained.checkpoint(config, epoch, make)
    resources.require_memory(config)
    vocab = ckpt.vocabulary(path)
    camp = expansion.read_campaign(campaign_dir, config["data_schema"], vocab, aid)
    if not (camp.seeds["label"] == 1).any():
        raise UserError(f"{campaign_dir}: the seeds hold no positive (label 1) user, so there is nothing to expand "
                        f"from (campaign {camp.aid}); give the campaign's positive seeds (negatives are optional)")
    mismatch = camp.unknown.mismatch()
    if mismatch and not allow_unknown:
        raise UserError(f"{campaign_dir}: {mismatch}; the checkpoint {path} was most likely trained on another "
                        "dataset: use a checkpoint trained on this campaign's data, or pass --allow-unknown")
    if not os.path.exists(pool):
        raise UserError(f"{pool}: no such pool; give a stage .npz (with uid) or a userFeature.data file")
    users, users_from = _background(path, background_file, config["data_schema"], vocab)
    positive_only = not (camp.seeds["label"] == 0).any()
    if positive_only and round(negatives * len(camp.seeds["label"])) == 0:
        raise UserError(f"--negatives {negatives:g} x {len(camp.seeds['label'])} positive seeds rounds to 0 negatives "
                        f"to fine-tune against; give --negatives {1 / len(camp.seeds['label']):.3g} or more (the "
                        f"default is {background.NEGATIVES_PER_SEED})")
    if positive_only and users is None:
        raise UserError(f"{path}: the seeds are all positive and this checkpoint holds no background users to draw "
                        "negatives from (a checkpoint of an earlier version): retrain it, or give --background FILE "
                        "(users in the pool's formats)")

    from tools.utils import paddle_env
    paddle_env.set_threads(runner["thread_num"])
    paddle_env.set_device(runner["use_gpu"])
    net, params = trained.load_trained(model, config, path, trust_pickle)
    batches = model_folder.test_reader(config).batches

    rows, drawn = camp.seeds, 0
    if positive_only:
        rng = np.random.default_rng([runner["seed"], camp.aid % 2**32, 1])  # the negatives' draw
        rows, drawn = background.with_negatives(camp.seeds, users, negatives, expansion.pool_uids(pool), rng)
        if not drawn:
            raise UserError(f"{users_from}: every background user is a seed or a user of the pool, so no negative "
                            "can be drawn without telling the model that users it ranks are negatives; give "
                            "--background FILE with users outside the pool")
    loaded = time.perf_counter()
    not_estimated = quality.unavailable(rows, users, folds)
    estimate = None if not_estimated else quality.estimate(
        model, net, params, rows, config, camp.aid, batches, users,
        np.random.default_rng([runner["seed"], camp.aid % 2**32, 3]), not positive_only, folds)
    estimated = time.perf_counter()
    scorer = campaign.adapt(model, net, params, rows, config, camp.aid, batches, users)
    scoring = time.perf_counter()
    pool_unknown = vocabulary.UnknownIds()
    ranked, scores, n_pool, histogram = expansion.score_pool(model, scorer, camp, pool, config["data_schema"], vocab,
                                                     config, batches, top_k, keep_seeds, pool_unknown, all_scores)
    done = time.perf_counter()

    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(("uid", "score", "rank"))
    writer.writerows((uid, f"{score:.7g}", rank) for rank, (uid, score) in enumerate(ranked, 1))
    seeds_in_pool = int(np.isin(camp.seeds["uid"], expansion.pool_uids(pool)).sum()) if "uid" in camp.seeds else 0
    summary = {
        "campaign": camp.aid,
        "checkpoint": {"path": path, "epoch": epoch, "params_sha256": meta.get("sha256", {}).get(ckpt.PARAMS_FILE),
                       "vocabulary_sha256": config["data_schema"].get("vocabulary_sha256")},
        "seeds": {"positive": int((camp.seeds["label"] == 1).sum()), "negative": int((camp.seeds["label"] == 0).sum()),
                  "in_pool": seeds_in_pool, "ranked": keep_seeds},
        "negatives": {"drawn": drawn, "per_seed": negatives if drawn else None, "from": users_from if drawn else None,
                      "rule": expansion.NEGATIVES_RULE if drawn else None},
        "random_seed": runner["seed"],
        "fine_tuning": {"passes": runner["infer_train_epoch"], "batch": runner["infer_batch_size"],
                        "learning_rate": config["hyper_parameters"].get("local_test_learning_rate"),
                        "wide_weight": config["hyper_parameters"].get("wide_weight")},
        "quality": estimate, "quality_not_estimated": not_estimated,
        "pool": pool, "pool_users": n_pool, "top_k": len(ranked),
        "score_at_rank_k": ranked[-1][1] if ranked else None,
        "score_histogram": histogram,
        "unknown_ids": {"campaign": camp.unknown.as_dict(), "pool": pool_unknown.as_dict()},
        "seconds": {"load_and_negatives": loaded - started, "quality_estimate": estimated - loaded,
                    "fine_tune": scoring - estimated, "score_pool": done - scoring},
        "pool_users_per_second": n_pool / max(done - scoring, 1e-9),
    }
    with outputs:  # all of them in place, or none
        write_text(outputs.staged(os.path.join(out_dir, "top_k.csv")), table.getvalue())
        if scores is not None:
            atomic_write(outputs.staged(os.path.join(out_dir, "all_scores.npy")),
                         lambda f: np.save(f, scores.astype(np.float32)))
        if export_dir:
            exported.export(scorer, camp.ad, outputs.staged(export_dir),
                           {"campaign": camp.aid, "checkpoint": path,
                            "vocabulary_sha256": config["data_schema"].get("vocabulary_sha256"),
                            "data_schema": config["data_schema"]},
                           vocabulary.to_bytes(vocab) if vocab else None)
            summary["export"] = export_dir
        write_json(outputs.staged(os.path.join(out_dir, "expand.json")), summary)
        chart = None if charts.pyplot() is None else os.path.join(out_dir, "expand.png")
        if chart:
            charts.expansion(outputs.staged(chart), summary)
    print("\n".join(line for line in _report(summary, camp, pool_unknown, out_dir, chart) if line))
    return summary


def _background(path, background_file, schema, vocab):
    """(users, where they came from): --background's first BACKGROUND_USERS users, or the checkpoint's."""
    if background_file:
        if not os.path.exists(background_file):
            raise UserError(f"{background_file}: no such file; --background takes users in the pool's formats "
                            "(a stage .npz with uid, or a userFeature.data)")
        users = expansion.read_users(background_file, schema, vocab, background.BACKGROUND_USERS,
                                     vocabulary.UnknownIds())
        return users, background_file
    return ckpt.background_users(path), f"{path}/{background.BACKGROUND_FILE}"


def _report(summary, camp, pool_unknown, out_dir, chart):
    seeds, drawn, q = summary["seeds"], summary["negatives"]["drawn"], summary["quality"]
    yield (f"campaign {camp.aid}: {seeds['positive']} positive and {seeds['negative']} negative seeds"
           + (f", {drawn} negatives drawn from background users" if drawn else "")
           + f"; checkpoint {summary['checkpoint']['path']}")
    yield camp.unknown.report("campaign")
    yield pool_unknown.report("pool")
    if summary["quality_not_estimated"]:
        yield f"quality: not estimated: {summary['quality_not_estimated']}"
    if q:
        yield (f"quality, {q['folds']}-fold on the seeds: held-out seeds against background users AUC "
               f"{q['auc']['mean']:.3f} +- {q['auc']['std']:.3f}, lift in the top 5% "
               f"{q['lift_at_5']['mean']:.1f} +- {q['lift_at_5']['std']:.1f} (1 is chance)")
    yield (f"scored {summary['pool_users']} pool users in {summary['seconds']['score_pool']:.1f} s "
           f"({summary['pool_users_per_second']:.0f}/s); wrote the top {summary['top_k']} to "
           f"{os.path.join(out_dir, 'top_k.csv')}" + (f" and {chart}" if chart else "")
           + (f"; exported the model to {summary['export']}" if "export" in summary else ""))


def main(argv=None):
    parser = cli.argument_parser("Rank a pool of users by their likeness to a campaign's seeds.", EXAMPLES,
                                 "runner.infer_load_path=output_2epochs runner.infer_train_epoch=3")
    parser.add_argument("--campaign", required=True, metavar="DIR",
                        help="the campaign: a data-folder stage of its seeds, or adFeature.csv + train.csv + "
                             "userFeature.data (of this campaign only, or of many with --aid)")
    parser.add_argument("--aid", type=int, help="the campaign to take from DIR when it holds several")
    parser.add_argument("--pool", required=True, help="the users to rank: a stage .npz with uid, or userFeature.data")
    parser.add_argument("--top-k", type=int, required=True, metavar="K", help="how many users to return")
    parser.add_argument("--out", required=True,
                        help="output folder: top_k.csv, expand.json, expand.png, all_scores.npy")
    parser.add_argument("--epoch", type=cli.epoch_arg, help="checkpoint epoch, or best (the best on validation "
                        "campaigns; default: runner.infer_end_epoch - 1)")
    parser.add_argument("--negatives", type=float, default=background.NEGATIVES_PER_SEED, metavar="R",
                        help=f"negatives per seed drawn from background users when the seeds are all positive "
                             f"(default {background.NEGATIVES_PER_SEED})")
    parser.add_argument("--background", metavar="FILE",
                        help="users to draw those negatives from (a stage .npz with uid or a userFeature.data; "
                             "default: the checkpoint's sample of its training users)")
    parser.add_argument("--folds", type=int, default=quality.FOLDS, metavar="F",
                        help=f"folds of the quality estimate on the seeds (default {quality.FOLDS}; 0: none)")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="expand even when the campaign's ids are mostly unknown to the checkpoint")
    parser.add_argument("--keep-seeds", action="store_true", help="rank the seeds found in the pool too")
    parser.add_argument("--all-scores", action="store_true", help="also write every pool user's score")
    parser.add_argument("--export", metavar="DIR", help="write the fine-tuned model for Paddle Inference")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out (replacing the files expand writes, nothing else) and "
                             "replace a non-empty --export folder")
    parser.add_argument("--trust-pickled-checkpoints", action="store_true",
                        help="read a checkpoint of an earlier version (pickled; only one you made)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k is {args.top_k}; give 1 or more")
    if not (args.negatives > 0 and math.isfinite(args.negatives)):
        raise UserError(f"--negatives is {args.negatives}; give a finite number above 0")
    if args.folds < 0 or args.folds == 1:
        raise UserError(f"--folds is {args.folds}; give 0 (no quality estimate) or 2 or more")
    expand(cfg.load_config(args.config_yaml, args.opt), args.campaign, args.pool, args.top_k, args.out, args.epoch,
           args.negatives, args.keep_seeds, args.all_scores, args.export, args.trust_pickled_checkpoints, args.aid,
           args.background, args.allow_unknown, args.folds, args.force)


if __name__ == "__main__":
    cli.run_and_exit(main)
