"""Shared-Bottom + pre-training: a shared MLP with a head per training campaign.

Field embeddings -> MLP bottom (mlp_dims) -> the campaign's head
Linear(mlp_dims[-1], 1) -> sigmoid. Pre-training trains each pair's rows
through its campaign's head; a test campaign's head starts as the mean of the
trained heads (common.CampaignBlock) and is fine-tuned with the whole network.
"""
import math

from paddle import nn

from models import common


class SharedBottomNet(nn.Layer):
    def __init__(self, max_idxs, embed_dim, mlp_dims, campaigns, init="normal"):
        super().__init__()
        self.campaigns = campaigns
        self.embedding = common.FieldEmbedding(max_idxs, embed_dim, init)
        self.bottom = common.mlp(self.embedding.out_dim, mlp_dims)
        bound = 1.0 / math.sqrt(mlp_dims[-1])
        self.head_w = common.CampaignBlock(len(campaigns), [mlp_dims[-1]], bound)
        self.head_b = common.CampaignBlock(len(campaigns), [1], bound)

    def forward(self, feeds, campaign=None):
        """campaign: index of a training campaign, or None for a new one."""
        hidden = self.bottom(self.embedding(feeds))
        return nn.functional.sigmoid(hidden @ self.head_w(campaign) + self.head_b(campaign))


class DygraphModel(common.CampaignBlockModel):
    def create_model(self, config):
        hp = config["hyper_parameters"]
        return SharedBottomNet(hp["max_idxs"], hp["embed_dim"], hp["mlp_dims"], common.training_campaigns(config),
                               common.embedding_init(config))
