"""A test double of a model folder outside the project: logistic regression over the static and ad ids,
following the model contract of dygraph_model.py.

FAKE_STEP_SECONDS (environment) makes every meta-step sleep that long, so that a
test can signal or kill a trainer in the middle of an epoch. FAKE_PAUSE=<hook>
(create_model, infer_train_forward or infer_forward) makes the first call of
that hook create the file FAKE_PAUSE_FILE and sleep FAKE_PAUSE_SECONDS (60), so
that a test can signal a tool at that moment (start-up, fine-tuning, scoring);
FAKE_PAUSE=import pauses as the module loads, before the ranks of a launched run
meet, and only on rank FAKE_PAUSE_RANK when that is set.
"""
import os
import time

import numpy as np
import paddle


class LogisticNet(paddle.nn.Layer):
    def __init__(self, max_idxs):
        super().__init__()
        sizes = [m + 1 for m in max_idxs[0] + max_idxs[2]]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.weight = self.create_parameter([sum(sizes), 1],
                                            default_initializer=paddle.nn.initializer.Normal(0, 0.1))
        self.bias = self.create_parameter([1], is_bias=True)

    def forward(self, ids):
        ids = ids + paddle.to_tensor(self.offsets)
        logit = paddle.gather(self.weight, ids.flatten()).reshape(ids.shape).sum(axis=1) + self.bias
        return paddle.nn.functional.sigmoid(logit)


_paused = set()


def pause(hook):
    if os.environ.get("FAKE_PAUSE") == hook and hook not in _paused:
        _paused.add(hook)
        open(os.environ["FAKE_PAUSE_FILE"], "w").close()
        time.sleep(float(os.environ.get("FAKE_PAUSE_SECONDS", 60)))


if os.environ.get("FAKE_PAUSE_RANK", os.environ.get("PADDLE_TRAINER_ID")) == os.environ.get("PADDLE_TRAINER_ID"):
    pause("import")


class DygraphModel:
    # What this folder's config may set (tools/utils/run/config.py reads it): key -> (kind, default, meaning).
    HYPER_PARAMETERS = {
        "task_count": ("int >= 1", "required", "campaigns per meta-batch"),
        "sample_method": ("one of normal | sqrt | unit", "normal", "how campaigns are drawn"),
        "local_test_learning_rate": ("number > 0", "required", "Adam of fine-tuning"),
        "optimizer.class": ("one of adam", "adam", "the optimiser"),
        "optimizer.learning_rate": ("number > 0", "required", "the outer Adam step"),
    }

    def create_model(self, config):
        pause("create_model")
        return LogisticNet(config["hyper_parameters"]["max_idxs"])

    def create_feeds(self, batch):
        ids = np.concatenate([batch["static"], batch["ad"]], axis=1).astype(np.int64)
        return {"ids": paddle.to_tensor(ids), "label": paddle.to_tensor(batch["label"].astype(np.float32))}

    def create_loss(self, pred, label):
        pred = paddle.clip(pred, 1e-7, 1 - 1e-7)
        return -(label * paddle.log(pred) + (1 - label) * paddle.log(1 - pred)).mean()

    def create_optimizer(self, net, config, learning_rate=None):
        lr = config["hyper_parameters"]["optimizer"]["learning_rate"] if learning_rate is None else learning_rate
        return paddle.optimizer.Adam(learning_rate=lr, parameters=net.parameters())

    def _loss(self, net, batch):
        feeds = self.create_feeds(batch)
        return self.create_loss(net(feeds["ids"]), feeds["label"])

    def train_forward(self, net, meta_batch, config):
        time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", 0)))
        loss = paddle.add_n([self._loss(net, q) for _, q in meta_batch]) / len(meta_batch)
        return loss, {"loss": float(loss)}

    def infer_train_forward(self, net, batch, config):
        pause("infer_train_forward")
        loss = self._loss(net, batch)
        return loss, {"loss": float(loss)}

    def infer_forward(self, net, batch, config):
        pause("infer_forward")
        with paddle.no_grad():
            return net(self.create_feeds(batch)["ids"]).numpy()
