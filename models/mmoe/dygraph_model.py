"""MMoE + pre-training: shared experts mixed by a gate per training campaign.

Field embeddings x -> num_expert MLPs (mlp_dims); the campaign's gate
softmax(x @ W + b) mixes them; a shared Linear(mlp_dims[-1], 1) -> sigmoid.
Pre-training routes each pair's rows through its campaign's gate; a test
campaign's gate starts as the mean of the trained gates' W and b
(layers.CampaignBlock) and is fine-tuned with the whole network.
"""
import math

import paddle
from paddle import nn

from models import layers, pretraining


class MMoENet(nn.Layer):
    def __init__(self, layout, embed_dim, mlp_dims, num_expert, campaigns, init="normal"):
        super().__init__()
        self.campaigns = campaigns
        self.embedding = layers.FieldEmbedding(layout, embed_dim, init)
        in_dim = self.embedding.out_dim
        self.experts = nn.LayerList([layers.mlp(in_dim, mlp_dims) for _ in range(num_expert)])
        bound = 1.0 / math.sqrt(in_dim)
        self.gate_w = layers.CampaignBlock(len(campaigns), [in_dim, num_expert], bound)
        self.gate_b = layers.CampaignBlock(len(campaigns), [num_expert], bound)
        self.head = layers.linear(mlp_dims[-1], 1)

    def forward(self, feeds, campaign=None):
        """campaign: index of a training campaign, or None for a new one."""
        x = self.embedding(feeds)
        experts = paddle.stack([expert(x) for expert in self.experts], axis=1)  # [B, E, H]
        gate = nn.functional.softmax(x @ self.gate_w(campaign) + self.gate_b(campaign), axis=1)
        mixed = (experts * gate.unsqueeze(2)).sum(axis=1)
        return nn.functional.sigmoid(self.head(mixed).squeeze(1))


class DygraphModel(pretraining.CampaignBlockModel):
    HYPER_PARAMETERS = {**pretraining.MLP_HYPER_PARAMETERS, **pretraining.hyper_parameters("num_expert")}

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return MMoENet(pretraining.layout(config), hp["embed_dim"], hp["mlp_dims"], hp["num_expert"],
                       pretraining.train_campaigns(config), hp["embedding_init"])
