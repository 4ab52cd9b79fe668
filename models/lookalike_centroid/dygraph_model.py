"""Seed-centroid similarity: a user's score is the cosine between the multi-hot vector of their ids and the
mean of the positive seeds' vectors. Nothing is trained across campaigns, and nothing is learnt from the
negative seeds.

The centroid c, divided by its norm, is held in a net.WideLinear, so x . c / |c| is its output; a user's norm
|x| is the square root of the number of ids (a 1 per static field and per list id inside the length; exact
for lists without repeated ids, which the Tencent data's and the generator's are).
"""
import numpy as np
import paddle
from paddle import nn

import dygraph_model as metaheac
import net as net_module
from models import hooks, pretraining


class CentroidNet(nn.Layer):
    def __init__(self, layout):
        super().__init__()
        self.layout, self.wide = layout, net_module.WideLinear(layout)

    def forward(self, feeds):
        ids = len(self.layout.static) + feeds["lengths"].sum(axis=1).astype("float32")
        return self.wide(feeds) / paddle.sqrt(ids)


class DygraphModel(hooks.PerCampaignHooks):
    trains_across_campaigns = False
    HYPER_PARAMETERS = pretraining.LINEAR_HYPER_PARAMETERS

    def create_model(self, config):
        return CentroidNet(pretraining.layout(config))

    def fit_campaign(self, net, seeds, config):
        """The positive seeds' mean multi-hot vector, normalised, as the weights (zero without positives)."""
        layout, positives = net.layout, np.asarray(seeds["label"]) == 1
        centroid = np.asarray(metaheac.multi_hot(layout, seeds)[positives].mean(axis=0)).ravel() \
            if positives.any() else np.zeros(sum(layout.rows[:len(layout.user_fields)]))
        centroid = (centroid / max(np.linalg.norm(centroid), 1e-12)).astype(np.float32)
        starts = np.cumsum([0] + list(layout.rows[:len(layout.user_fields)]))
        for field, lo, hi in zip(layout.user_fields, starts[:-1], starts[1:]):
            getattr(net.wide, "wide_" + field).set_value(centroid[lo:hi, None])
        net.wide.wide_bias.set_value(np.zeros(1, np.float32))
