"""Expand one campaign: its seeds in, the pool's K most similar users out, and optionally a servable model.

    python tools/expand.py -m config.yaml --campaign DIR --pool POOL --top-k K --out OUT
                           [--epoch E] [--negatives R] [--keep-seeds] [--all-scores] [--export DIR] [--force]

The model is the meta-trained checkpoint meta-inference would test last
(runner.infer_load_path, epoch runner.infer_end_epoch - 1; --epoch picks
another). It is fine-tuned on the campaign's seeds exactly as
tools/infer_meta.py fine-tunes a test campaign, then scores every user of the
pool. DIR is a data-folder stage of one campaign's seeds or raw files
(adFeature.csv, train.csv with aid,uid,label, userFeature.data); POOL a stage
.npz with uid or a raw userFeature.data (tools/utils/expansion.py). Seeds that
are all positive get R negatives per seed from the pool (--negatives, default
DEFAULT_NEGATIVES; the rule: tools/utils/expansion.py). Seeds in the pool are
left out of the ranking unless --keep-seeds.

Writes OUT/top_k.csv (uid, score, rank), OUT/expand.json (what was done:
the checkpoint, seeds, negatives, unknown ids, timings) and, with
--all-scores, OUT/all_scores.npy (every pool user's score, in pool order);
--export DIR writes the fine-tuned model for Paddle Inference
(tools/utils/serving.py). Every output place is checked before any work (a
non-empty OUT or DIR is refused unless --force), and the outputs land
together or not at all (tools/utils/outputs.py).
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import csv
import io
import math
import os
import sys
import time

import numpy as np

from tools.utils import checkpoint as ckpt
from tools.utils import cli
from tools.utils import config as cfg
from tools.utils import expansion as E
from tools.utils import campaign, model_folder, resources, serving
from tools.utils import vocabulary as V
from tools.utils.errors import UserError
from tools.utils.files import atomic_write, write_json, write_text
from tools.utils.outputs import Outputs

EXAMPLES = (
    "python tools/expand.py -m config.yaml --campaign CAMPAIGN --pool userFeature.data --top-k 1000 --out audience",
    "python tools/expand.py -m config.yaml --campaign CAMPAIGN --pool pool_stage2.npz --top-k 5000 --out audience "
    "--all-scores --export audience/model",
    "python tools/expand.py -m config.yaml -o runner.infer_load_path=output_2epochs runner.infer_train_epoch=3 "
    "--epoch 1 --campaign CAMPAIGN --pool userFeature.data --top-k 1000 --out audience --negatives 9",
    "  (CAMPAIGN: adFeature.csv + train.csv + userFeature.data of one campaign's seeds, or a data-folder stage)",
)
OUTPUT_FILES = ("top_k.csv", "expand.json", "all_scores.npy")  # what expand writes into --out
DEFAULT_NEGATIVES = 19.0  # 5% positives, the share in the Tencent seed file (421,961 of 8,798,814 rows of train.csv)


def expand(config, campaign_dir, pool, top_k, out_dir, epoch=None, negatives=DEFAULT_NEGATIVES, keep_seeds=False,
           all_scores=False, export_dir=None, trust_pickle=False, force=False):
    """Fine-tune the checkpoint on the campaign's seeds and rank the pool; returns the summary dict.

    The outputs are checked before any work and land together or not at all (tools/utils/outputs.py); a
    non-empty out_dir or export_dir is refused unless force.
    """
    started = time.perf_counter()
    outputs = Outputs(force)
    outputs.files(out_dir, OUTPUT_FILES, "--out")
    if export_dir:
        outputs.folder(export_dir, "--export")
    outputs.check()
    runner = config["runner"]
    model = model_folder.model_module(config).DygraphModel()
    cfg.validate(config, "expand", model)
    epoch = runner["infer_end_epoch"] - 1 if epoch is None else epoch
    path = ckpt.require(runner["infer_load_path"], epoch,
                        f"python tools/trainer.py -m {config['config_path']} -o runner.epochs={epoch + 1}")
    meta = ckpt.read_meta(path)
    cfg.attach_schema(config, ckpt.meta_field(meta, "data_schema", path), path)
    config["train_campaigns"] = ckpt.meta_field(meta, "train_campaigns", path)
    resources.require_memory(config)
    vocab = ckpt.vocabulary(path)
    camp = E.read_campaign(campaign_dir, config["data_schema"], vocab)
    if not (camp.seeds["label"] == 1).any():
        raise UserError(f"{campaign_dir}: the seeds hold no positive (label 1) user, so there is nothing to expand "
                        "from; give the campaign's positive seeds (negatives are optional)")
    if not os.path.exists(pool):
        raise UserError(f"{pool}: no such pool; give a stage .npz (with uid) or a userFeature.data file")

    from tools.utils import paddle_env
    paddle_env.set_threads(runner["thread_num"])
    paddle_env.set_device(runner["use_gpu"])
    paddle_env.seed_all(runner["seed"])
    net = model.create_model(config)
    params = ckpt.load_arrays(path, ckpt.PARAMS_FILE, trust_pickle)
    ckpt.restore_params(net, params, os.path.join(path, ckpt.PARAMS_FILE))
    batches = model_folder.load_module(runner["infer_reader_path"], config["config_path"]).batches

    pool_unknown = V.UnknownIds()
    rng = np.random.default_rng([runner["seed"], camp.aid % 2**32, 1])  # the negatives' draw
    rows, drawn = E.with_negatives(camp, pool, config["data_schema"], vocab, negatives, rng,
                                   V.UnknownIds())  # the pool's unknown ids are counted once, while scoring
    tuned = time.perf_counter()
    campaign.adapt(model, net, params, rows, config, camp.aid, batches)
    scoring = time.perf_counter()
    ranked, scores, n_pool = E.score_pool(model, net, camp, pool, config["data_schema"], vocab, config, batches,
                                          top_k, keep_seeds, pool_unknown, all_scores)
    done = time.perf_counter()

    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(("uid", "score", "rank"))
    writer.writerows((uid, f"{score:.7g}", rank) for rank, (uid, score) in enumerate(ranked, 1))
    summary = {
        "campaign": camp.aid, "checkpoint": path, "seed_positives": int((camp.seeds["label"] == 1).sum()), "seed_negatives": int((camp.seeds["label"] == 0).sum()),
        "negatives_drawn": drawn, "negatives_rule": E.NEGATIVES_RULE if drawn else None,
        "pool": pool, "pool_users": n_pool, "top_k": len(ranked), "seeds_ranked": keep_seeds,
        "unknown_ids": {"campaign": camp.unknown.as_dict(), "pool": pool_unknown.as_dict()},
        "seconds": {"load_and_negatives": tuned - started, "fine_tune": scoring - tuned, "score_pool": done - scoring},
        "pool_users_per_second": n_pool / max(done - scoring, 1e-9),
    }
    with outputs:  # all of them in place, or none
        write_text(outputs.staged(os.path.join(out_dir, "top_k.csv")), table.getvalue())
        if scores is not None:
            atomic_write(outputs.staged(os.path.join(out_dir, "all_scores.npy")),
                         lambda f: np.save(f, scores.astype(np.float32)))
        if export_dir:
            serving.export(net, camp.ad, outputs.staged(export_dir),
                           {"campaign": camp.aid, "checkpoint": path,
                            "vocabulary_sha256": config["data_schema"].get("vocabulary_sha256")},
                           V.to_bytes(vocab) if vocab else None)
            summary["export"] = export_dir
        write_json(outputs.staged(os.path.join(out_dir, "expand.json")), summary)
    lines = [f"campaign {camp.aid}: {summary['seed_positives']} positive and {summary['seed_negatives']} negative "
             f"seeds" + (f", {drawn} negatives drawn from the pool" if drawn else "") + f"; checkpoint {path}",
             camp.unknown.report("campaign"), pool_unknown.report("pool"),
             f"scored {n_pool} pool users in {done - scoring:.1f} s ({summary['pool_users_per_second']:.0f}/s); "
             f"wrote the top {len(ranked)} to {os.path.join(out_dir, 'top_k.csv')}"
             + (f"; exported the model to {export_dir}" if export_dir else "")]
    print("\n".join(line for line in lines if line))
    return summary


def main(argv=None):
    parser = cli.argument_parser("Rank a pool of users by their likeness to a campaign's seeds.", EXAMPLES,
                                 "runner.infer_load_path=output_2epochs runner.infer_train_epoch=3")
    parser.add_argument("--campaign", required=True, metavar="DIR",
                        help="the campaign: a data-folder stage of its seeds, or adFeature.csv + train.csv + "
                             "userFeature.data")
    parser.add_argument("--pool", required=True, help="the users to rank: a stage .npz with uid, or userFeature.data")
    parser.add_argument("--top-k", type=int, required=True, metavar="K", help="how many users to return")
    parser.add_argument("--out", required=True, help="output folder: top_k.csv, expand.json, all_scores.npy")
    parser.add_argument("--epoch", type=int, help="checkpoint epoch (default: runner.infer_end_epoch - 1)")
    parser.add_argument("--negatives", type=float, default=DEFAULT_NEGATIVES, metavar="R",
                        help=f"negatives per seed drawn from the pool when the seeds are all positive "
                             f"(default {DEFAULT_NEGATIVES:g})")
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
    if not math.isfinite(args.negatives) or args.negatives < 0:
        raise UserError(f"--negatives is {args.negatives}; give a finite number, 0 or more")
    expand(cfg.load_config(args.config_yaml, args.opt), args.campaign, args.pool, args.top_k, args.out, args.epoch,
           args.negatives, args.keep_seeds, args.all_scores, args.export, args.trust_pickled_checkpoints, args.force)


if __name__ == "__main__":
    sys.exit(cli.run(main))
