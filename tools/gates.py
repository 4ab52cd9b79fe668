"""Which experts and critics each campaign uses: python tools/gates.py -m CONFIG [--epoch E] [--out DIR]

For a checkpoint (runner.infer_load_path, epoch runner.infer_end_epoch - 1
unless --epoch), the expert and critic gate weights of every campaign of the
training data (runner.train_data_dir) and of the hot and cold test data (the
folders test_hot and test_cold beside runner.test_data_dir). A campaign's
gate is the mean of its rows' gate weights (its training rows, stage 1 of
the training data, the rows the trainer reads; a test campaign's seeds and
candidates, both stages), with the checkpoint's weights before any
fine-tuning: tools/utils/measure/gates.py says why a mean.

Writes DIR/gates_epoch<E>.csv (split, campaign, rows, expert_0.., critic_0..;
each gate's weights sum to 1 on every line) and DIR/gates_epoch<E>.png (a
heatmap, campaigns grouped by split; needs matplotlib), DIR being --out or
<infer_load_path>/gates, and prints each split's mean gate.

Examples:
    python tools/gates.py -m config.yaml
    python tools/gates.py -m config_big.yaml --epoch 0 --out gates_big
    python tools/gates.py -m config.yaml -o runner.infer_load_path=output_model_metaheac_order1
"""
if not __package__:
    import _bootstrap  # noqa: F401  (run as a script: the project root on sys.path)

import os

import numpy as np

from tools.infer_meta import split_dirs
from tools.utils import cli
from tools.utils.run import config as cfg
from tools.utils.data import dataset
from tools.utils.measure.gates import GATES, campaign_gates, write_csv, write_heatmap
from tools.utils.run import model_folder, trained
from tools.utils.measure import metrics
from tools.utils.errors import ConfigError
from tools.utils.progress import progress


def gates(config, epoch=None, out_dir=None, trust_pickle=False):
    """Write the CSV and the heatmap of a checkpoint's per-campaign gates; returns [(split, aid, rows, experts,
    critics)]."""
    model = model_folder.load_model(config)
    config = cfg.validate(config, "infer", model)
    runner = config["runner"]
    if not runner.get("train_data_dir"):
        raise ConfigError(f"{config['config_path']}: runner.train_data_dir is missing (the training campaigns); "
                          "add it to the YAML or pass -o runner.train_data_dir=...")
    epoch = runner["infer_end_epoch"] - 1 if epoch is None else epoch
    config, path, _ = trained.checkpoint(config, epoch, trained.train_command(config, epoch + 1 if epoch != "best"
                                                                              else 1))
    folders = {"train": runner["train_data_dir"], **dict(zip(("hot", "cold"), split_dirs(runner["test_data_dir"],
                                                                                        "both")))}
    schemas = {split: dataset.read_schema(folder) for split, folder in folders.items()}
    for split, folder in folders.items():
        dataset.require_vocabulary(schemas[split], config["data_schema"], folder, "the checkpoint")

    from tools.utils import paddle_env
    paddle_env.set_threads(runner["thread_num"])
    paddle_env.set_device(False)
    net, _ = trained.load_trained(model, config, path, trust_pickle)
    if not all(hasattr(net, f"{gate}_w0") for gate in GATES):
        raise ConfigError(f"{config['config_path']}: the model of this folder has no expert and critic gates "
                          "(expert_gate_*, critic_gate_* parameters); tools/gates.py reads MetaHeac's")
    net.eval()
    table = []
    for split, folder in folders.items():
        stages = [p for p in (dataset.stage_path(folder, stage) for stage in ((1,) if split == "train" else (1, 2)))
                  if p]
        chunks = progress((chunk for p in stages for chunk in dataset.iter_stage(p, schemas[split])), desc=split,
                          unit="chunk")
        for aid, (rows, experts, critics) in campaign_gates(net, chunks).items():
            table.append((split, aid, rows, experts, critics))
    if not table:
        raise ConfigError(f"{config['config_path']}: no rows in {', '.join(folders.values())}; nothing to show")
    out_dir = out_dir or os.path.join(runner["infer_load_path"], "gates")
    os.makedirs(out_dir, exist_ok=True)
    csv_path, png_path = (os.path.join(out_dir, f"gates_epoch{epoch}.{ext}") for ext in ("csv", "png"))
    write_csv(csv_path, table)
    drawn = write_heatmap(png_path, table, f"gate weights per campaign, checkpoint {path}")

    def weights(values):
        return " ".join(f"{v:.3f}" for v in values)

    print(metrics.format_table(
        ("split", "campaigns", "rows", "expert weights (mean over campaigns)", "critic weights"),
        [(split, len(rows), sum(r[2] for r in rows), weights(np.mean([r[3] for r in rows], axis=0)),
          weights(np.mean([r[4] for r in rows], axis=0)))
         for split in folders for rows in [[r for r in table if r[0] == split]] if rows]))
    print(f"gates: {csv_path}" + (f", {png_path}" if drawn else "")
          + ("" if drawn else "\nnote: matplotlib is not installed (it is in requirements-dev.txt), so no heatmap"))
    return table


def main(argv=None):
    parser = cli.argument_parser("The expert and critic gate weights of every campaign (train, hot, cold) of a "
                                 "checkpoint, as a CSV and a heatmap.", [line.strip() for line in
                                                                          __doc__.split("Examples:\n")[1].splitlines()],
                                 "runner.infer_load_path=output_order1")
    parser.add_argument("--epoch", type=cli.epoch_arg, help="checkpoint epoch, or best (the best on validation "
                        "campaigns; default: runner.infer_end_epoch - 1)")
    parser.add_argument("--out", help="output folder (default: <infer_load_path>/gates)")
    parser.add_argument("--trust-pickled-checkpoints", action="store_true",
                        help="read a checkpoint of an earlier version (pickled; only one you made)")
    args = parser.parse_args(argv)
    gates(cfg.load_config(args.config_yaml, args.opt), args.epoch, args.out, args.trust_pickled_checkpoints)


if __name__ == "__main__":
    cli.run_and_exit(main)
