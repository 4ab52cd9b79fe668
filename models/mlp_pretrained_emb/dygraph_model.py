"""MLP + pre-trained embeddings: a per-campaign MLP over the frozen embeddings of a pre-trained MLP.

Pre-training is MLP + pre-training's (layers.MLPNet on all training
campaigns). A test campaign gets a new tower and head, at the seeded
initialisation saved in the checkpoint (pre-training never touches them), and
trains only those on its seeds: the embeddings are detached, so they stay as
pre-training left them.
"""
from paddle import nn

from models import layers, pretraining


class PretrainedEmbeddingMLPNet(layers.MLPNet):
    def __init__(self, layout, embed_dim, mlp_dims, init):
        super().__init__(layout, embed_dim, mlp_dims, init)
        self.new_tower = layers.mlp(self.embedding.out_dim, mlp_dims)
        self.new_head = layers.linear(mlp_dims[-1], 1)

    def forward(self, feeds, pretraining=False):
        if pretraining:
            return super().forward(feeds)
        frozen = self.embedding(feeds).detach()
        return nn.functional.sigmoid(self.new_head(self.new_tower(frozen)).squeeze(1))


class DygraphModel(pretraining.CampaignModel):
    HYPER_PARAMETERS = pretraining.MLP_HYPER_PARAMETERS

    def create_model(self, config):
        hp = config["hyper_parameters"]
        return PretrainedEmbeddingMLPNet(pretraining.layout(config), hp["embed_dim"], hp["mlp_dims"],
                                         hp["embedding_init"])

    def pretrain_forward(self, net, feeds, aid):
        return net(feeds, pretraining=True)
