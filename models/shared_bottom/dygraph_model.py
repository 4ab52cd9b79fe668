"""Shared-Bottom + pre-training: a shared MLP with a head per training campaign.

Field embeddings -> MLP bottom (mlp_dims) -> the campaign's head
Linear(mlp_dims[-1], 1) -> sigmoid. Pre-training trains each pair's rows
through its campaign's head; a test campaign's head starts as the mean of the
trained heads (layers.CampaignBlock) and is fine-tuned with the whole network.
"""
import math

from paddle import nn

from models import layers, pretraining


class SharedBottomNet(nn.Layer):
    def __init__(self, layout, embed_dim, mlp_dims, campaigns, init="normal"):
        super().__init__()
        self.campaigns = campaigns
        self.embedding = layers.FieldEmbedding(layout, embed_dim, init)
        self.bottom = layers.mlp(self.embedding.out_dim, mlp_dims)
        bound = 1.0 / math.sqrt(mlp_dims[-1])
        self.head_w = layers.CampaignBlock(len(campaigns), [mlp_dims[-1]], bound)
        self.head_b = layers.CampaignBlock(len(campaigns), [1], bound)

    def forward(self, feeds, campaign=None):
        """campaign: index of a training campaign, or None for a new one."""
        hidden = self.bottom(self.embedding(feeds))
        return nn.functional.sigmoid(hidden @ self.head_w(campaign) + self.head_b(campaign))


class DygraphModel(pretraining.CampaignBlockModel):
    HYPER_PARAMETERS = pretraining.MLP_HYPER_PARAMETERS

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return SharedBottomNet(pretraining.layout(config), hp["embed_dim"], hp["mlp_dims"],
                               pretraining.train_campaigns(config), hp["embedding_init"])
