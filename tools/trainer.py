"""Meta-train a model folder: python tools/trainer.py -m CONFIG [-o key=value ...] [--overwrite]

Generic like PaddleRec's trainer: the model (dygraph_model.py) and the reader
(runner.train_reader_path) are loaded from the config's folder. After each
epoch a checkpoint goes to runner.model_save_path/<epoch>/; rerunning the same
command resumes after the last finished one (see tools/utils/checkpoint.py).
Epoch e seeds Paddle with (seed, e) and the reader with (seed, e), so a
resumed run trains exactly as an uninterrupted one.
"""
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tqdm import tqdm  # noqa: E402

from tools.utils import checkpoint as ckpt  # noqa: E402
from tools.utils import config as cfg  # noqa: E402
from tools.utils.dataset import DataError  # noqa: E402


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged); the message says what to change."""


def run_epoch(model, net, optimizer, dataset, config, epoch):
    """One pass over the reader; returns {"meta_batches", "samples", "seconds", <metric>: mean}.

    A model whose trains_across_campaigns is False (a one-stage baseline, which
    learns on each test campaign's seeds only) makes no pass: its checkpoint
    is its seeded initialisation.
    """
    from tools.utils import paddle_env
    if not getattr(model, "trains_across_campaigns", True):
        return {"meta_batches": 0, "samples": 0, "seconds": 0.0, **dict.fromkeys(model.create_metrics(), 0.0)}
    runner = config["runner"]
    paddle_env.seed_all(paddle_env.derived_seed(runner["seed"], epoch))
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    names = model.create_metrics()
    totals = dict.fromkeys(names, 0.0)
    net.train()
    step, samples, start = 0, 0, time.perf_counter()
    bar = tqdm(dataset, total=len(dataset), desc=f"epoch {epoch}", unit="step", mininterval=0.5)
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


def train(config, overwrite=False):
    runner = config["runner"]
    save_dir, epochs = runner["model_save_path"], runner["epochs"]
    identity = ckpt.run_identity(config)
    done = ckpt.prepare(save_dir, identity, overwrite)
    start = done[-1] + 1 if done else 0
    if start >= epochs:
        print(f"nothing to do: {save_dir} holds epochs up to {start - 1} and runner.epochs is {epochs}")
        return
    dataset = cfg.load_module(config, runner["train_reader_path"]).RecDataset(
        config, runner["train_data_dir"], runner["seed"])
    from tools.utils import paddle_env  # after the checks above, which need no Paddle
    paddle_env.set_threads(runner["thread_num"])
    paddle_env.set_device(runner["use_gpu"])
    model = cfg.load_module(config, "dygraph_model").DygraphModel()
    paddle_env.seed_all(runner["seed"])
    net = model.create_model(config)
    optimizer = model.create_optimizer(net, config)
    if done:
        ckpt.resume(ckpt.epoch_dir(save_dir, done[-1]), net, optimizer)
        print(f"resuming after epoch {done[-1]} from {ckpt.epoch_dir(save_dir, done[-1])}")
    names = model.create_metrics()
    for epoch in range(start, epochs):
        stats = run_epoch(model, net, optimizer, dataset, config, epoch)
        path = ckpt.save(save_dir, epoch, net, optimizer, {
            "seed": runner["seed"], "next_reader_epoch": epoch + 1, "identity": identity,
            "config_path": config["config_path"], "stats": stats})
        if not getattr(model, "trains_across_campaigns", True):
            print(f"epoch {epoch}: one-stage model, nothing trained across campaigns; "
                  f"saved its initialisation to {path}")
            continue
        print(f"epoch {epoch}: " + ", ".join(f"{n} {stats[n]:.4f}" for n in names)
              + f"; {stats['samples']} samples in {stats['seconds']:.1f} s "
              f"({stats['samples'] / max(stats['seconds'], 1e-9):.0f}/s); saved {path}")


def main(argv=None):
    parser = cfg.argument_parser("Meta-train the model of a config's folder; resumes after the last checkpoint.")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the checkpoints in runner.model_save_path and train from scratch")
    args = parser.parse_args(argv)
    try:
        config = cfg.load_config(args.config_yaml, args.opt)
        cfg.check_runner(config, cfg.TRAIN_KEYS)
        train(config, args.overwrite)
    except (cfg.ConfigError, DataError, ckpt.CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
