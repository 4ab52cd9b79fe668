"""Validation campaigns: training campaigns kept out of meta-training and scored with the test protocol while it
runs, so that settings are chosen, and training stopped, on campaigns that are neither trained on nor tested.

runner.valid_campaigns holds them out (a count, or a fraction of the training
campaigns below 1; 0: none, the paper's protocol). They are drawn with the
run's seed among the training campaigns that have both seeds (stage 1) and
candidates (stage 2) in the training folder; reader_train.py leaves their rows
out. Every runner.valid_interval meta-steps (0: at the end of each epoch) each
is adapted to its seeds under runner.infer_seeds (its stage-1 rows, or its
clicking ones and background negatives) and scores its stage-2 rows exactly as
tools/infer_meta.py does a test campaign (tools/utils/run/campaign.py), from the
weights of that moment, which are then restored. The run folder keeps the
checkpoint of the best GAUC so far as `best` (tools/utils/run/run_folder.py);
runner.valid_patience > 0 stops training after that many validations without a
better GAUC (early stopping). The history travels in every checkpoint's meta.json, so a
resumed run decides as an uninterrupted one.
"""
import math
import warnings

import numpy as np

from . import campaign
from ..measure import metrics
from ..data import dataset

METRIC = "gauc"  # the mean per-campaign AUC: the ranking an advertiser gets


class Validator:
    """Scores the validation campaigns, keeps the best checkpoint and decides early stopping."""

    def __init__(self, model, config, data_dir, aids, batches, users, history=()):
        split = dataset.load_split(data_dir)  # uids under runner.infer_seeds positive: checked by the trainer
        seeds, candidates = (list(_rows_of(split[f"stage{k}"], aids)) for k in (1, 2))
        self.campaigns = [{"aid": int(a), "seeds": s, "candidates": c} for a, s, c in zip(aids, seeds, candidates)]
        self.model, self.config, self.batches, self.users = model, config, batches, users
        runner = config["runner"]
        self.interval, self.patience = runner["valid_interval"], runner["valid_patience"]
        self.history = list(history)

    def due(self, step, steps):
        return step == steps or (self.interval > 0 and step % self.interval == 0)

    def best(self):
        return max(self.history, key=lambda h: (h[METRIC], -h["at"]), default=None)

    def evaluate(self, net, epoch, step, at):
        """Score every validation campaign from net's weights (restored afterwards); returns the record added
        to the history: {"epoch", "step", "at", "gauc", "precision", "auc", "improved"}."""
        params = {name: p.numpy() for name, p in net.state_dict().items()}
        found, labels, scores = [], [], []
        for c in self.campaigns:
            rows = campaign.tuning_rows(c["seeds"], c["candidates"], self.config, c["aid"], self.users)
            scorer = campaign.adapt(self.model, net, params, rows, self.config, c["aid"], self.batches, self.users)
            s = campaign.score(self.model, scorer, c["candidates"], self.config, self.batches)
            found.append({"campaign": c["aid"], **metrics.campaign_metrics(c["candidates"]["label"], s)})
            labels.append(c["candidates"]["label"])
            scores.append(s)
        net.set_state_dict(params)
        net.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a one-class campaign: left out of GAUC, as infer_meta reports
            overall = metrics.overall_metrics(found, np.concatenate(labels), np.concatenate(scores))
        best = self.best()
        record = {"epoch": epoch, "step": step, "at": at, **{k: overall[k] for k in (METRIC, "precision", "auc")}}
        record["improved"] = best is None or (not math.isnan(record[METRIC]) and record[METRIC] > best[METRIC])
        self.history.append(record)
        return record

    def stop(self):
        """Whether valid_patience validations in a row have not improved on the best."""
        if not self.patience:
            return False
        since = len(self.history) - 1 - max(i for i, h in enumerate(self.history) if h["improved"])
        return since >= self.patience


def _rows_of(stage, aids):
    index = dataset.CampaignIndex(stage["aid"])
    for aid in aids:
        i = int(np.searchsorted(index.aids, aid))
        found = i < len(index) and index.aids[i] == aid
        yield dataset.take(stage, index.rows_of(i) if found else np.empty(0, np.int64))


def describe(history_record):
    return (f"validation at epoch {history_record['epoch']}, meta-step {history_record['step']}: "
            f"GAUC {history_record['gauc']:.4f}, P@5% {history_record['precision']:.4f}, "
            f"pooled AUC {history_record['auc']:.4f}")

