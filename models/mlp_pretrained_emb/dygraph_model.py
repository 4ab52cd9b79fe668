"""MLP + pre-trained embeddings: a per-campaign MLP over the frozen embeddings of a pre-trained MLP.

Pre-training is MLP + pre-training's (common.MLPNet on all training
campaigns). A test campaign gets a new tower and head, at the seeded
initialisation saved in the checkpoint (pre-training never touches them), and
trains only those on its seeds: the embeddings are detached, so they stay as
pre-training left them.
"""
from paddle import nn

from models import common


class PretrainedEmbeddingMLPNet(common.MLPNet):
    def __init__(self, max_idxs, embed_dim, mlp_dims, init):
        super().__init__(max_idxs, embed_dim, mlp_dims, init)
        self.new_tower = common.mlp(self.embedding.out_dim, mlp_dims)
        self.new_head = common.linear(mlp_dims[-1], 1)

    def forward(self, feeds, pretraining=False):
        if pretraining:
            return super().forward(feeds)
        frozen = self.embedding(feeds).detach()
        return nn.functional.sigmoid(self.new_head(self.new_tower(frozen)).squeeze(1))


class DygraphModel(common.CampaignModel):
    def create_model(self, config):
        hp = config["hyper_parameters"]
        return PretrainedEmbeddingMLPNet(hp["max_idxs"], hp["embed_dim"], hp["mlp_dims"], common.embedding_init(config))

    def pretrain_forward(self, net, feeds, aid):
        return net(feeds, pretraining=True)
