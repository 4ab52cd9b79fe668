"""MLP per campaign (one stage): nothing is trained across campaigns.

The network is layers.MLPNet. The trainer saves its seeded initialisation
without a pass (trains_across_campaigns); each test campaign trains it from
there on its seeds (infer_meta.py).
"""
from models import hooks, pretraining


class DygraphModel(hooks.PerCampaignHooks):
    trains_across_campaigns = False
    HYPER_PARAMETERS = pretraining.MLP_HYPER_PARAMETERS

    def create_model(self, config):
        return pretraining.mlp_net(config)
