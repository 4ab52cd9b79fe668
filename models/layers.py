"""The building blocks the baseline networks share: MetaHeac's field tables, dense layers, campaign blocks.

Dense layers start as MetaHeac's (torch.nn.Linear's default: weight and bias
uniform in +-1/sqrt(fan_in)); the field tables are net.py's (the same names,
layout, lookup and start).
"""
import math

import paddle
from paddle import nn

import net as net_module


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
    """net.py's field tables (same names and start, or zeros) and their lookup.

    forward: [B, tables * dim], the user fields (lists mean-pooled) then the ad fields.
    init: one of net.EMBEDDING_INITS, or "zeros" (LR's weights).
    """

    def __init__(self, layout, dim, init="normal"):
        super().__init__()
        self.layout, self.out_dim = layout, len(layout.table_names) * dim
        for name, rows in zip(layout.table_names, layout.rows):
            initializer = uniform(0.0) if init == "zeros" else net_module.embedding_initializer(init, rows, dim)
            self.add_parameter(name, self.create_parameter([rows, dim], default_initializer=initializer))

    def forward(self, feeds):
        user, _, ad = net_module.embed_fields(self.layout, feeds, lambda name: getattr(self, name))
        return paddle.concat([user.reshape([user.shape[0], -1]), ad.reshape([ad.shape[0], -1])], axis=1)


class MLPNet(nn.Layer):
    """Field embeddings -> MLP tower (mlp_dims, ReLU) -> Linear(., 1) -> sigmoid: the MLP baselines' network."""

    def __init__(self, layout, embed_dim, mlp_dims, init="normal"):
        super().__init__()
        self.embedding = FieldEmbedding(layout, embed_dim, init)
        self.tower = mlp(self.embedding.out_dim, mlp_dims)
        self.head = linear(mlp_dims[-1], 1)

    def forward(self, feeds):
        return nn.functional.sigmoid(self.head(self.tower(self.embedding(feeds))).squeeze(1))


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
