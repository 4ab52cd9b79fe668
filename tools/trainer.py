"""Meta-train a model folder: python tools/trainer.py -m CONFIG [-o key=value ...] [--overwrite] [--untrained]

Generic like PaddleRec's trainer: the model (dygraph_model.py) and the reader
(runner.train_reader_path) are loaded from the config's folder. After each
epoch a checkpoint goes to runner.model_save_path/<epoch>/; rerunning the same
command resumes after the last finished one (see tools/utils/checkpoint.py).
Epoch e seeds Paddle with (seed, e) and the reader with (seed, e), so a
resumed run trains exactly as an uninterrupted one.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import math
import sys
import time

from tools.utils import checkpoint as ckpt
from tools.utils import cli
from tools.utils import config as cfg
from tools.utils import dataset as D
from tools.utils import model_folder
from tools.utils.progress import progress
from tools.utils.errors import TrainingError


def run_epoch(model, net, optimizer, dataset, config, epoch):
    """One pass over the reader; returns {"meta_batches", "samples", "seconds", <metric>: mean}."""
    from tools.utils import paddle_env
    runner = config["runner"]
    paddle_env.seed_all(paddle_env.derived_seed(runner["seed"], epoch))
    dataset.set_epoch(epoch)
    names = model.create_metrics()
    totals = dict.fromkeys(names, 0.0)
    net.train()
    step, samples, start = 0, 0, time.perf_counter()
    bar = progress(dataset, total=len(dataset), desc=f"epoch {epoch}", unit="step")
    for step, meta_batch in enumerate(bar, 1):
        loss, values = model.train_forward(net, meta_batch, config)
        if not math.isfinite(float(loss)):
            raise TrainingError(f"epoch {epoch}, meta-batch {step}: the loss is {float(loss)}; training diverged. "
                                "Lower hyper_parameters.optimizer.learning_rate or local_lr; finished "
                                f"checkpoints stay in {runner['model_save_path']}")
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        samples += sum(len(support["label"]) + len(query["label"]) for support, query in meta_batch)
        for name in names:
            totals[name] += values[name]
        if step % runner["print_interval"] == 0 or step == len(dataset):
            bar.set_postfix({**{n: f"{totals[n] / step:.4f}" for n in names},
                             "samples/s": f"{samples / (time.perf_counter() - start):.0f}"}, refresh=False)
    bar.close()
    return {"meta_batches": step, "samples": samples, "seconds": time.perf_counter() - start,
            **{n: totals[n] / max(step, 1) for n in names}}


def prepare(config):
    """Load and check everything training needs before anything is written: (model, reader dataset)."""
    runner = config["runner"]
    model = model_folder.model_module(config).DygraphModel()
    cfg.validate(config, "train", model)
    cfg.attach_schema(config, D.read_schema(runner["train_data_dir"]), runner["train_data_dir"])
    reader = model_folder.load_module(runner["train_reader_path"], config["config_path"])
    dataset = reader.RecDataset(config, runner["train_data_dir"])
    config["train_campaigns"] = [int(aid) for aid in dataset.campaigns]
    return model, dataset


def train(config, overwrite=False, untrained=False):
    """Meta-train runner.epochs epochs (resuming after the last finished checkpoint).

    untrained: save the seeded initialisation as epoch 0 and train nothing, the reference a trained model
    must beat (a model whose trains_across_campaigns is False, a one-stage baseline, always does this).
    """
    from tools.utils import paddle_env
    model, dataset = prepare(config)
    runner = config["runner"]
    save_dir = runner["model_save_path"]
    untrained = untrained or not getattr(model, "trains_across_campaigns", True)
    epochs = 1 if untrained else runner["epochs"]
    identity = {**ckpt.run_identity(config), **({"untrained": True} if untrained else {})}
    done = ckpt.prepare(save_dir, identity, overwrite)
    start = done[-1] + 1 if done else 0
    if start >= epochs:
        print(f"nothing to do: {save_dir} holds epochs up to {start - 1} and runner.epochs is {epochs}")
        return
    paddle_env.set_threads(runner["thread_num"])
    paddle_env.set_device(runner["use_gpu"])
    paddle_env.seed_all(runner["seed"])
    net = model.create_model(config)
    optimizer = model.create_optimizer(net, config)
    if done:
        ckpt.resume(ckpt.epoch_dir(save_dir, done[-1]), net, optimizer)
        print(f"resuming after epoch {done[-1]} from {ckpt.epoch_dir(save_dir, done[-1])}")
    meta = {"seed": runner["seed"], "identity": identity, "config_path": config["config_path"],
            "data_schema": config["data_schema"], "train_campaigns": config["train_campaigns"]}
    for epoch in range(start, epochs):
        if untrained:
            path = ckpt.save(save_dir, epoch, net, optimizer, {**meta, "untrained": True})
            print(f"epoch {epoch}: nothing trained across campaigns; saved the initialisation to {path}")
            continue
        stats = run_epoch(model, net, optimizer, dataset, config, epoch)
        path = ckpt.save(save_dir, epoch, net, optimizer, {**meta, "stats": stats})
        print(f"epoch {epoch}: " + ", ".join(f"{n} {stats[n]:.4f}" for n in model.create_metrics())
              + f"; {stats['samples']} samples in {stats['seconds']:.1f} s "
              f"({stats['samples'] / max(stats['seconds'], 1e-9):.0f}/s); saved {path}")


def main(argv=None):
    parser = cli.argument_parser("Meta-train the model of a config's folder; resumes after the last checkpoint.")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the checkpoints in runner.model_save_path and train from scratch")
    parser.add_argument("--untrained", action="store_true",
                        help="save the seeded initialisation as epoch 0 without training (a reference)")
    args = parser.parse_args(argv)
    train(cfg.load_config(args.config_yaml, args.opt), args.overwrite, args.untrained)


if __name__ == "__main__":
    sys.exit(cli.run(main))
