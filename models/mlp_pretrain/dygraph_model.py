"""MLP + pre-training: layers.MLPNet trained on all training campaigns as one task, then fine-tuned
per test campaign like MetaHeac (the whole network, from the pre-trained weights)."""
from models import pretraining


class DygraphModel(pretraining.CampaignModel):
    HYPER_PARAMETERS = pretraining.MLP_HYPER_PARAMETERS

    def create_model(self, config):
        return pretraining.mlp_net(config)
