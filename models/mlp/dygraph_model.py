"""MLP per campaign (one stage): nothing is trained across campaigns.

The network is common.MLPNet. The trainer saves its seeded initialisation
without a pass (trains_across_campaigns); each test campaign trains it from
there on its seeds (infer_meta.py).
"""
from models import common


class DygraphModel(common.metaheac.DygraphModel):
    trains_across_campaigns = False

    def create_model(self, config):
        return common.mlp_net(config)
