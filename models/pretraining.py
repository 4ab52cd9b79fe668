"""The model hooks of the pre-trained baselines: MetaHeac's (feeds, BCE, Adam, fine-tuning, scoring), with plain
multi-task training in place of the meta-step.

config["train_campaigns"] (the sorted aids of the training campaigns; the
trainer takes them from its reader, meta-inference from the checkpoint) sizes
the per-campaign blocks of Shared-Bottom and MMoE, so a test run needs no
training data.
"""
import numpy as np
import paddle

import dygraph_model as metaheac
import net as net_module
from models import hooks, layers


def layout(config):
    """The field layout of the data the model is built for."""
    return net_module.FieldLayout.from_schema(config["data_schema"])


def train_campaigns(config):
    """The sorted aids of the training campaigns: one block each in Shared-Bottom and MMoE."""
    return np.asarray(config["train_campaigns"], dtype=np.int64)


def mlp_net(config):
    hp = config["hyper_parameters"]
    return layers.MLPNet(layout(config), hp["embed_dim"], hp["mlp_dims"], hp["embedding_init"])


def hyper_parameters(*keys):
    """The declarations (tools/utils/run/config.py's form) of these keys, as MetaHeac's folder declares them."""
    return {key: metaheac.HYPER_PARAMETERS[key] for key in keys}


# The hyper-parameters of the linear per-campaign baselines (one weight per id: no embedding width), and of the
# MLP-based ones (no experts, critics or inner step).
LINEAR_HYPER_PARAMETERS = hyper_parameters("max_idxs", "task_count", "sample_method", "local_test_learning_rate",
                                           "optimizer.class", "optimizer.learning_rate")
MLP_HYPER_PARAMETERS = hyper_parameters("max_idxs", "embed_dim", "embedding_init", "mlp_dims", "task_count",
                                        "sample_method", "local_test_learning_rate", "optimizer.class",
                                        "optimizer.learning_rate")


class CampaignModel(hooks.PerCampaignHooks):
    """MetaHeac's hooks with plain (multi-task) training instead of the meta-step.

    Pre-training reuses the reader's meta-batches: the rows of each (support,
    query) pair are ordinary training rows of their campaign (a row drawn into
    both counts twice), one loss per pair, the meta-batch's loss their mean.
    pretrain_forward scores a pair's rows in pre-training; at test time the
    inherited hooks call net(feeds), a new campaign.
    """

    HYPER_PARAMETERS = {k: v for k, v in metaheac.HYPER_PARAMETERS.items()
                        if k not in ("local_lr", "meta_order", "wide_weight")}

    def pretrain_forward(self, net, feeds, aid):
        return net(feeds)

    def train_forward(self, net, meta_batch, config):
        losses = []
        for support, query in meta_batch:
            rows = {key: np.concatenate([support[key], query[key]]) for key in support}
            feeds = self.create_feeds(rows)
            losses.append(self.create_loss(self.pretrain_forward(net, feeds, rows["aid"][0]), feeds["label"]))
        loss = paddle.add_n(losses) / len(losses)
        return loss, {"loss": float(loss)}


class CampaignBlockModel(CampaignModel):
    """For nets with CampaignBlocks: pre-training passes the pair's training campaign index."""

    def pretrain_forward(self, net, feeds, aid):
        k = int(np.searchsorted(net.campaigns, aid))
        if k == len(net.campaigns) or net.campaigns[k] != aid:
            raise ValueError(f"campaign {aid} is not among the {len(net.campaigns)} training campaigns the "
                             "network was built for")
        return net(feeds, k)
