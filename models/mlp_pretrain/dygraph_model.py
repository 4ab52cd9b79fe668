"""MLP + pre-training: common.MLPNet trained on all training campaigns as one task, then fine-tuned
per test campaign like MetaHeac (the whole network, from the pre-trained weights)."""
from models import common


class DygraphModel(common.CampaignModel):
    def create_model(self, config):
        return common.mlp_net(config)
