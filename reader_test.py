"""Test-time reader: one campaign at a time, its seeds (stage 1) and its candidates (stage 2).

Iterating yields (aid, stage-1 rows, stage-2 rows) per campaign, in ascending
aid, both stages in file order (fine-tuning shuffles the seeds itself, once
per pass, as the official code does). A campaign with seeds but no candidates
has nothing to score: it is skipped and listed in `skipped` with the reason.
A campaign with candidates but no seeds is kept (its stage-1 batch is empty:
it is scored without fine-tuning).
"""
import numpy as np

from tools.utils.data.dataset import CampaignIndex, load_split, require_vocabulary, take
from tools.utils.errors import DataError


def batches(batch, size):
    """Cut a batch dict into consecutive batches of `size` rows (the last may be shorter)."""
    n = len(batch["label"])
    for start in range(0, n, size):
        yield {name: a[start:start + size] for name, a in batch.items()}


class RecDataset:
    """Iterable over test campaigns; len() counts the campaigns it yields."""

    def __init__(self, config, data_dir):
        split = load_split(data_dir)
        require_vocabulary(split["schema"], config["data_schema"], data_dir, "the model")
        if split["stage2"] is None or len(split["stage2"]["label"]) == 0:
            raise DataError(f"{data_dir}: no candidates to score (no *_stage2.npz, or one with 0 rows); a test folder "
                            "needs stage-2 rows (test1_truth.csv of the raw data)")
        self.stage1, self.stage2 = split["stage1"], split["stage2"]
        self.index1, self.index2 = CampaignIndex(self.stage1["aid"]), CampaignIndex(self.stage2["aid"])
        self.skipped = [(int(aid), "no stage-2 rows (candidates) to score")
                        for aid in np.setdiff1d(self.index1.aids, self.index2.aids)]

    def __len__(self):
        return len(self.index2)

    def __iter__(self):
        for j, aid in enumerate(self.index2.aids):
            i = np.searchsorted(self.index1.aids, aid)
            seeds = self.index1.rows_of(i) if i < len(self.index1) and self.index1.aids[i] == aid \
                else np.empty(0, dtype=np.int64)
            yield int(aid), take(self.stage1, seeds), take(self.stage2, self.index2.rows_of(j))
