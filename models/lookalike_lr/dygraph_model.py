"""The look-alike a practitioner tries first: a logistic regression per campaign on its seeds' multi-hot ids.

Nothing is trained across campaigns. Each test campaign gets a logistic
regression of its seeds' labels on the multi-hot vector of their user ids
(scikit-learn, its L2 regularisation chosen on the seeds by cross-validation:
the top-level dygraph_model.fit_wide, MetaHeac's wide part on its own), held
in a net.WideLinear, so that it scores, exports and serves like every model.
"""
from paddle import nn

import dygraph_model as metaheac
import net as net_module
from models import hooks, pretraining


class LookalikeLR(nn.Layer):
    """sigmoid of a net.WideLinear: the click probability of a logistic regression over the user's ids."""

    def __init__(self, layout):
        super().__init__()
        self.layout, self.wide = layout, net_module.WideLinear(layout)

    def forward(self, feeds):
        return nn.functional.sigmoid(self.wide(feeds))


class DygraphModel(hooks.PerCampaignHooks):
    trains_across_campaigns = False
    HYPER_PARAMETERS = pretraining.LINEAR_HYPER_PARAMETERS

    def create_model(self, config):
        return LookalikeLR(pretraining.layout(config))

    def fit_campaign(self, net, seeds, config):
        """The regression of the seeds; all weights zero (every user ties) when they hold one class."""
        wide = metaheac.fit_wide(net.layout, seeds, config["runner"]["thread_num"]) or net_module.WideLinear(net.layout)
        net.wide.set_state_dict(wide.state_dict())
