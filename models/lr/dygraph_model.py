"""Logistic regression per campaign (one stage): nothing is trained across campaigns.

A weight per id of every field (a list field adds the mean of its ids'
weights) plus a bias, through a sigmoid. All weights start at zero and the
trainer saves that initialisation without a pass (trains_across_campaigns);
each test campaign then trains it from scratch on its seeds (infer_meta.py).
"""
from paddle import nn

from models import hooks, layers, pretraining


class LRNet(nn.Layer):
    def __init__(self, layout):
        super().__init__()
        self.weights = layers.FieldEmbedding(layout, 1, init="zeros")
        self.bias = self.create_parameter([1], default_initializer=layers.uniform(0.0))

    def forward(self, feeds):
        return nn.functional.sigmoid(self.weights(feeds).sum(axis=1) + self.bias)


class DygraphModel(hooks.PerCampaignHooks):
    trains_across_campaigns = False
    HYPER_PARAMETERS = pretraining.LINEAR_HYPER_PARAMETERS

    def create_model(self, config):
        return LRNet(pretraining.layout(config))
