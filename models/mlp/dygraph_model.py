"""MLP per campaign (one stage): nothing is trained across campaigns.

The network is layers.MLPNet. The trainer saves its seeded initialisation
without a pass (trains_across_campaigns); each test campaign trains it from
there on its seeds (infer_meta.py).
"""
import dygraph_model as metaheac
from models import pretraining


class DygraphModel(metaheac.DygraphModel):
    trains_across_campaigns = False
    HYPER_PARAMETERS = pretraining.MLP_HYPER_PARAMETERS

    def create_model(self, config):
        return pretraining.mlp_net(config)
