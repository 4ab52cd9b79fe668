"""Meta-training reader: meta-batches of (support, query) batches, one pair per campaign.

Each meta-batch draws hyper_parameters.task_count distinct campaigns, with
probability proportional to their stage-1 row count (sample_method normal),
to its square root (sqrt) or uniformly (unit), without replacement: one
after another, each in proportion to the weights left. Support and query are
drawn independently from the campaign's rows, each without replacement:
min(train_batch_size, rows) distinct rows.

Small campaigns: a campaign with fewer rows than train_batch_size gives all
its rows, shuffled, to both support and query. That is the same rule capped
at the rows there are, so it needs no special case; splitting such a campaign
in two halves would instead make its support and query disjoint only because
it is small, and halve the little data it has.

Rows are grouped by campaign once (one argsort); drawing a batch then costs
O(batch): a slice of the grouped row numbers and k distinct draws from it
(Generator.choice without replacement; its cost: docs/performance.md).
One epoch is ceil(stage-1 rows / train_batch_size) meta-batches; epoch e
draws from a generator seeded with (seed, e), so a resumed run repeats it.
state() is the position in the epoch (meta-batches drawn and the generator's
state): set_epoch(e, state) continues the same stream from there, so a run
resumed from a step checkpoint draws exactly what it would have drawn.
"""
import math

import numpy as np

from tools.utils.data.dataset import CampaignIndex, held_out, load_split, require_vocabulary, take
from tools.utils.errors import DataError

SAMPLE_METHODS = {"normal": lambda rows: rows, "sqrt": np.sqrt, "unit": np.ones_like}


class RecDataset:
    """Iterable over the meta-batches of one epoch; len() is the number of meta-batches.

    campaigns: the sorted aids of the training campaigns; valid_campaigns: those held out of meta-training as
    validation campaigns (runner.valid_campaigns, tools/utils/run/validation.py), whose rows are not drawn.
    """

    def __init__(self, config, data_dir):
        runner, hp = config["runner"], config["hyper_parameters"]
        split = load_split(data_dir, stages=(1,))
        require_vocabulary(split["schema"], config["data_schema"], data_dir, "the config")
        by_option = config.get("value_sources", {}).get("runner.valid_campaigns") == "-o"  # config._where's words
        source = ("-o " if by_option else f"{config.get('config_path', 'config')}: ") + "runner.valid_campaigns"
        self.valid_campaigns = held_out(data_dir, np.unique(split["stage1"]["aid"]), runner.get("valid_campaigns", 0),
                                        runner["seed"], source)
        self.table = take(split["stage1"], np.flatnonzero(~np.isin(split["stage1"]["aid"], self.valid_campaigns)))
        self.index = CampaignIndex(self.table["aid"])
        self.campaigns = self.index.aids
        self.batch_size, self.task_count = runner["train_batch_size"], hp["task_count"]
        held = f" once {source} holds {len(self.valid_campaigns)} out" if len(self.valid_campaigns) else ""
        if len(self.index) < self.task_count:
            raise DataError(f"{data_dir}: {len(self.index)} campaigns in the stage-1 data{held} but "
                            f"hyper_parameters.task_count is {self.task_count}; lower task_count "
                            f"(-o hyper_parameters.task_count={max(len(self.index), 1)})"
                            + (f" or hold out fewer ({source})" if held else " or use more campaigns")
                            if len(self.index) else f"{data_dir}: the stage-1 data has no rows to train on{held}")
        self.task_weights = SAMPLE_METHODS[hp["sample_method"]](self.index.counts.astype(np.float64))
        self.seed = runner["seed"]
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(len(self.table["label"]) / self.batch_size)

    def set_epoch(self, epoch, state=None):
        """Draw the meta-batches of `epoch` next: from its start, or after `state` (a state() of that epoch)."""
        self.epoch, self.step = epoch, 0
        self.rng = np.random.default_rng([self.seed, epoch])
        if state is not None:
            self.step = state["step"]
            self.rng.bit_generator.state = state["generator"]

    def state(self):
        """The position in the epoch: {"step": meta-batches drawn, "generator": the generator's state} (JSON-able)."""
        return {"step": self.step, "generator": self.rng.bit_generator.state}

    def __iter__(self):
        """The epoch's remaining meta-batches; afterwards the next epoch is set."""
        while self.step < len(self):
            self.step += 1
            yield self.draw_meta_batch(self.rng)
        self.set_epoch(self.epoch + 1)

    def draw_tasks(self, rng):
        """Positions (into index.aids) of task_count distinct campaigns, drawn by weight.

        The task_count largest keys u ** (1 / weight), u uniform, are a weighted
        draw without replacement, one after another in proportion to the
        weights left (Efraimidis and Spirakis, 2006); in logs for precision.
        O(campaigns), faster than Generator.choice with p (docs/performance.md).
        """
        keys = np.log(rng.random(len(self.index))) / self.task_weights
        return np.argpartition(keys, -self.task_count)[-self.task_count:]

    def draw_batch(self, rng, task):
        rows = self.index.rows_of(task)
        return take(self.table, rows[rng.choice(len(rows), min(self.batch_size, len(rows)), replace=False)])

    def draw_meta_batch(self, rng):
        """[(support, query), ...], one pair per drawn campaign."""
        return [(self.draw_batch(rng, t), self.draw_batch(rng, t)) for t in self.draw_tasks(rng)]
