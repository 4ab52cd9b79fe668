"""Meta-train a model folder: python tools/trainer.py -m CONFIG [-o key=value ...] [--overwrite] [--untrained]

Generic like PaddleRec's trainer: the model (dygraph_model.py) and the reader
(runner.train_reader_path) are loaded from the config's folder. After each
epoch a checkpoint goes to runner.model_save_path/<epoch>/ (and every
runner.save_steps meta-steps a step checkpoint); rerunning the same command
resumes after the last one, on exactly the same stream of meta-batches, so a
resumed run ends bitwise equal to an uninterrupted one. SIGTERM or Ctrl-C
finish the current meta-step, save a step checkpoint and exit (143 / 130).
The folder's rules (one trainer at a time, leftovers of killed writes
removed): tools/utils/run/run_folder.py; the epoch's checks:
tools/utils/run/training.py.

Across processes and machines, with PaddlePaddle's launcher (docs/distributed.md):

    python -m paddle.distributed.launch --nproc_per_node N tools/trainer.py -m CONFIG [...]

every rank trains on a block of about task_count / N tasks of each meta-batch
and the gradients are summed (tools/utils/run/distributed.py); rank 0 alone writes
the folder and prints.
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import os

from tools.utils.run import checkpoint as ckpt
from tools.utils import cli
from tools.utils.run import config as cfg
from tools.utils.measure.curves import NO_CURVES, for_run
from tools.utils.data.dataset import read_schema, without_uids
from tools.utils.errors import DataError
from tools.utils.run import distributed, model_folder, resources, validation
from tools.utils.data import background, vocabulary
from tools.utils.run.run_folder import BEST, RunFolder
from tools.utils.run.training import metric_names, require_finite, run_epoch


EXAMPLES = (
    "python tools/trainer.py -m config.yaml                 # the shipped sample; rerun to resume",
    "python tools/trainer.py -m config.yaml -o runner.epochs=2 runner.model_save_path=output_2epochs",
    "python tools/trainer.py -m config.yaml -o hyper_parameters.meta_order=1 runner.use_visual=True "
    "runner.model_save_path=output_order1",
    "python tools/trainer.py -m models/mmoe/config.yaml     # a baseline folder, same trainer",
    "python tools/trainer.py -m config_big.yaml --untrained -o runner.model_save_path=output_untrained",
    "python -m paddle.distributed.launch --nproc_per_node 2 tools/trainer.py -m config_big.yaml "
    "-o hyper_parameters.task_count=4",
)


def prepare(config, untrained=False):
    """Load and check everything training needs before anything is written: (model, reader dataset, the run
    spec with what the training data says, cfg.with_data).

    Under paddle.distributed.launch every rank needs at least one task of each meta-batch (unless nothing
    is trained: untrained, or a model that does not train across campaigns).
    """
    model = model_folder.load_model(config)
    config = cfg.validate(config, "train", model)
    if config["runner"]["valid_campaigns"]:
        config = cfg.validate(config, "validate", model)
        positive = config["runner"]["infer_seeds"] == "positive"
        no_uids = without_uids(config["runner"]["train_data_dir"]) if positive else []
        if no_uids:
            raise DataError(f"{no_uids[0]}: no uid array; validation under runner.infer_seeds positive keeps "
                            "seeds and candidates out of the drawn negatives by uid: use runner.infer_seeds="
                            "labelled, or data with uids")
    if not untrained and model.trains_across_campaigns:
        distributed.require_enough_tasks(config["hyper_parameters"]["task_count"], config["config_path"])
    data_dir = config["runner"]["train_data_dir"]
    config = cfg.with_data(config, data_dir, schema=read_schema(data_dir))
    resources.require_memory(config)
    dataset = model_folder.train_dataset(config, data_dir)
    return model, dataset, cfg.with_data(config, data_dir, train_campaigns=dataset.campaigns)


def train(config, overwrite=False, untrained=False, trust_pickle=False):
    """Meta-train runner.epochs epochs, resuming after the last checkpoint.

    untrained: save the seeded initialisation as epoch 0 and train nothing, the reference a trained model
    must beat (a model whose trains_across_campaigns is False, a one-stage baseline, always does this).
    Under paddle.distributed.launch every rank runs this; rank 0 alone writes and prints.
    """
    from tools.utils import paddle_env
    model, dataset, config = prepare(config, untrained)
    runner = config["runner"]
    untrained = untrained or not model.trains_across_campaigns
    epochs = 1 if untrained else runner["epochs"]
    identity = {**ckpt.run_identity(config), **({"untrained": True} if untrained else {})}
    vocab = vocabulary.load(runner["train_data_dir"], required=False)
    files = {vocabulary.VOCAB_FILE: vocabulary.to_bytes(vocab)} if vocab else {}
    files[background.BACKGROUND_FILE] = background.to_bytes(background.sample(dataset.table, runner["seed"]))
    paddle_env.set_threads(runner["thread_num"])
    group = distributed.join(paddle_env.set_device(runner["use_gpu"], quiet=distributed.world()[0] > 0))
    say = print if group.main else (lambda *args, **kwargs: None)
    curves = for_run(runner, group.main) if not untrained else NO_CURVES  # checked here, before --overwrite acts
    run_folder = RunFolder(runner["model_save_path"], identity, files, runner["train_data_dir"])
    with group.session(), distributed.SharedFolder(group, run_folder) as folder:
        done, step_checkpoint = ([], None) if overwrite else folder.resume_point()
        start = done[-1] + 1 if done else 0
        if start >= epochs:
            say(f"nothing to do: {folder.path} holds epochs up to {start - 1} and runner.epochs is {epochs}")
            return
        group.resume_hint = (f"the finished checkpoints in {folder.path} are whole: rerun the same command "
                             "to resume after the last one")
        paddle_env.seed_all(runner["seed"])
        net = model.create_model(config)
        optimizer = model.create_optimizer(net, config)
        if overwrite:
            folder.delete_checkpoints()  # only now: the config, the data and the model have all been checked
        resume = None
        if step_checkpoint or done:
            path = step_checkpoint or os.path.join(folder.path, str(done[-1]))
            resume = group.on_main(lambda: ckpt.resume(path, net, optimizer, trust_pickle), f"reading {path}")
            say(f"resuming from {path}")
        if resume and resume.get("stopped_early"):
            say(f"nothing to do: {path} is where validation stopped this run (rerun with --overwrite to train "
                "again); its best checkpoint is in " + os.path.join(folder.path, BEST))
            return
        group.sync_state(net, optimizer)  # every rank starts from rank 0's weights and optimizer state
        meta = {"seed": runner["seed"], "config_path": config["config_path"],
                "data_schema": config["data_schema"], "train_campaigns": config["train_campaigns"]}
        validate = None if untrained or not len(dataset.valid_campaigns) else Validate(
            model, net, optimizer, dataset, config, folder, curves, say, resume, meta)
        for epoch in range(start, epochs):
            if untrained:
                require_finite(net, "the initialisation")
                path = folder.save_epoch(epoch, net, optimizer, {**meta, "untrained": True})
                say(f"epoch {epoch}: nothing trained across campaigns; saved the initialisation to {path}")
                continue
            paddle_env.seed_all(paddle_env.derived_seed(runner["seed"], epoch))
            stats = run_epoch(model, net, optimizer, dataset, config, epoch, folder,
                              resume if step_checkpoint and epoch == start else None, group, curves, validate)
            if stats.get("stopped_early", len(dataset)) < len(dataset):
                say(f"epoch {epoch}: stopped early at meta-step {stats['stopped_early']}: "
                    f"{runner['valid_patience']} validations without a better GAUC; {validate.summary()}")
                break
            history = {"validation": validate.validator.history} if validate else {}
            path = folder.save_epoch(epoch, net, optimizer, {**meta, "stats": stats, **history,
                                                             **({"stopped_early": True} if "stopped_early" in stats
                                                                else {}), **group_meta(group)})
            say(f"epoch {epoch}: " + ", ".join(f"{n} {stats[n]:.4f}" for n in metric_names(stats))
                + f"; {stats['samples']} samples in {stats['seconds']:.1f} s "
                f"({stats['samples'] / max(stats['seconds'], 1e-9):.0f}/s"
                + (f" on {group.size} ranks" if group.size > 1 else "") + f"); saved {path}")
            if "stopped_early" in stats:
                say(f"stopped early after epoch {epoch}: {runner['valid_patience']} validations without a better "
                    f"GAUC; {validate.summary()}")
                break
        for line in curves.finish():
            say(line)


class Validate:
    """run_epoch's validate hook: the validation campaigns (tools/utils/run/validation.py) scored when due, the best
    checkpoint saved, the curves fed, and whether to stop."""

    def __init__(self, model, net, optimizer, dataset, config, folder, curves, say, resume, meta):
        runner = config["runner"]
        batches = model_folder.test_reader(config).batches
        users = background.sample(dataset.table, runner["seed"])
        self.validator = validation.Validator(model, config, runner["train_data_dir"], dataset.valid_campaigns,
                                              batches, users, (resume or {}).get("validation", ()))
        self.net, self.optimizer, self.steps = net, optimizer, len(dataset)
        self.folder, self.curves, self.say, self.meta = folder, curves, say, meta
        say(f"validation: {len(dataset.valid_campaigns)} training campaigns held out "
            f"({', '.join(map(str, dataset.valid_campaigns[:8]))}{', ...' if len(dataset.valid_campaigns) > 8 else ''})"
            f", scored every {runner['valid_interval'] or self.steps} meta-steps")

    @property
    def history(self):
        return self.validator.history

    def __call__(self, epoch, step):
        if not self.validator.due(step, self.steps):
            return False
        record = self.validator.evaluate(self.net, epoch, step, epoch * self.steps + step)
        for key in (validation.METRIC, "precision", "auc"):
            self.curves.add(f"valid/{key}", record[key], record["at"])
        if record["improved"]:
            self.folder.save_best(self.net, self.optimizer, {**self.meta, "best_at": {"epoch": epoch, "step": step},
                                                             "validation": self.history})
        self.say(validation.describe(record) + ("; the best so far, saved as " + BEST if record["improved"] else ""))
        return self.validator.stop()

    def summary(self):
        best = self.validator.best()
        return f"the best, {validation.describe(best)}, is {os.path.join(self.folder.path, BEST)}"


def group_meta(group):
    """What a checkpoint records of the processes that trained it (nothing for one process)."""
    return {"ranks": group.size} if group.size > 1 else {}


def main(argv=None):
    parser = cli.argument_parser("Meta-train the model of a config's folder; resumes after the last checkpoint.",
                                 EXAMPLES, "runner.epochs=2 hyper_parameters.local_lr=1e-4")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoints in runner.model_save_path (once everything is checked)")
    parser.add_argument("--untrained", action="store_true",
                        help="save the seeded initialisation as epoch 0 without training (a reference)")
    parser.add_argument("--trust-pickled-checkpoints", action="store_true",
                        help="resume from a checkpoint of an earlier version (pickled; only one you made)")
    args = parser.parse_args(argv)
    train(cfg.load_config(args.config_yaml, args.opt), args.overwrite, args.untrained,
          args.trust_pickled_checkpoints)


if __name__ == "__main__":
    cli.run_and_exit(main, hold_stops=distributed.world()[1] > 1)
