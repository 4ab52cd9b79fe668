"""What the baseline model folders share with MetaHeac (the top-level folder) and with each other.

The top-level dygraph_model.py (feeds, BCE loss, Adam, the fine-tune and
scoring hooks) and net.py (the field tables, their lookup and list pooling)
are loaded by path under their own module names: inside a model folder,
`import dygraph_model` would give that folder's module, which the tools
register under that name.

Campaign-specific parameters (a Shared-Bottom head, an MMoE gate) exist once
per training campaign. A test campaign is new: it gets the mean of the trained
blocks as its initial block (CampaignBlock), then fine-tuning adapts it.
"""
import importlib.util
import math
import os

import numpy as np
import paddle
from paddle import nn

from tools.utils.dataset import load_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_root(module):
    spec = importlib.util.spec_from_file_location(f"metaheac_root_{module}", os.path.join(ROOT, module + ".py"))
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


metaheac = _load_root("dygraph_model")  # the MetaHeac model hooks; .net_module is the top-level net.py
net_module = metaheac.net_module


def uniform(bound):
    """Initializer uniform in +-bound; zeros when bound is 0."""
    return nn.initializer.Uniform(-bound, bound) if bound else nn.initializer.Constant(0.0)


def linear(fan_in, fan_out):
    """nn.Linear with weight and bias uniform in +-1/sqrt(fan_in), as net.py's dense layers (torch's default)."""
    attr = paddle.ParamAttr(initializer=uniform(1.0 / math.sqrt(fan_in)))
    return nn.Linear(fan_in, fan_out, weight_attr=attr, bias_attr=attr)


def mlp(in_dim, dims):
    """The MLP tower: Linear -> ReLU per width in dims (MetaHeac's expert shape when dims is mlp_dims)."""
    layers, width = [], in_dim
    for out in dims:
        layers += [linear(width, out), nn.ReLU()]
        width = out
    return nn.Sequential(*layers)


class FieldEmbedding(nn.Layer):
    """net.py's 20 field tables (same names and initialisation, or zeros) and their lookup.

    forward: [B, 20 * dim], the 14 user fields (lists mean-pooled) then the 6 ad fields.
    init: one of net.EMBEDDING_INITS, or "zeros" (LR's weights).
    """

    def __init__(self, max_idxs, dim, init="normal"):
        super().__init__()
        self.dim = dim
        for name, rows in zip(net_module.TABLE_NAMES, net_module.table_sizes(max_idxs)):
            initializer = uniform(0.0) if init == "zeros" else net_module.embedding_initializer(init, rows, dim)
            self.add_parameter(name, self.create_parameter([rows, dim], default_initializer=initializer))

    @property
    def out_dim(self):
        return len(net_module.TABLE_NAMES) * self.dim

    def forward(self, feeds):
        user, _, ad = net_module.embed_fields(feeds, lambda name: getattr(self, name))
        return paddle.concat([user.reshape([user.shape[0], -1]), ad.reshape([ad.shape[0], -1])], axis=1)


def mlp_net(config):
    hp = config["hyper_parameters"]
    return MLPNet(hp["max_idxs"], hp["embed_dim"], hp["mlp_dims"], embedding_init(config))


def embedding_init(config):
    """hyper_parameters.embedding_init, "normal" (the official N(0, 1)) when absent."""
    return config["hyper_parameters"].get("embedding_init", "normal")


def training_campaigns(config):
    """Sorted aids of the training campaigns (stage 1 of runner.train_data_dir): one block each.

    Read from the data, at training and at test time alike, so the number of
    blocks always matches the training data the checkpoint was made from.
    """
    return np.unique(load_split(config["runner"]["train_data_dir"], stages=(1,))["stage1"]["aid"])


class CampaignBlock(nn.Layer):
    """One parameter block per training campaign, and the block of a new campaign.

    forward(k) is training campaign k's block; forward(None) is a new
    campaign's: mean(trained).detach() + new_offset, with new_offset created
    at zero. new_offset gets no gradient in pre-training (only forward(k)
    runs), so every test campaign starts from the mean of the trained blocks;
    fine-tuning then moves new_offset alone, exactly as Adam on a new block
    initialised at that mean would (Adam's steps do not depend on where the
    parameter starts), while the trained blocks stay as pre-training left them.
    """

    def __init__(self, campaigns, shape, bound):
        super().__init__()
        self.trained = self.create_parameter([campaigns, *shape], default_initializer=uniform(bound))
        self.new_offset = self.create_parameter(list(shape), default_initializer=uniform(0.0))

    def forward(self, campaign=None):
        if campaign is None:
            return self.trained.mean(axis=0).detach() + self.new_offset
        return self.trained[campaign]


class CampaignModel(metaheac.DygraphModel):
    """MetaHeac's hooks with plain (multi-task) training instead of the meta-step.

    Pre-training reuses the reader's meta-batches: the rows of each (support,
    query) pair are ordinary training rows of their campaign (a row drawn into
    both counts twice), one loss per pair, the meta-batch's loss their mean.
    pretrain_forward scores a pair's rows in pre-training; at test time the
    inherited hooks call net(feeds), a new campaign.
    """

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
                             "network was built for (runner.train_data_dir changed?)")
        return net(feeds, k)


class MLPNet(nn.Layer):
    """Field embeddings -> MLP tower (mlp_dims, ReLU) -> Linear(., 1) -> sigmoid: the MLP baselines' network."""

    def __init__(self, max_idxs, embed_dim, mlp_dims, init="normal"):
        super().__init__()
        self.embedding = FieldEmbedding(max_idxs, embed_dim, init)
        self.tower = mlp(self.embedding.out_dim, mlp_dims)
        self.head = linear(mlp_dims[-1], 1)

    def forward(self, feeds):
        return nn.functional.sigmoid(self.head(self.tower(self.embedding(feeds))).squeeze(1))
