"""The network a campaign model is exported as: net.py's forward for one campaign, arranged for Paddle Inference.

net.MetaHeacNet.forward keeps its activations feature-major ([T, features,
B]) and applies every dense weight as a batched matmul with transpose flags:
the fastest arrangement in dygraph, where it runs the meta-step's tasks at
once. Paddle Inference runs matmuls on the CPU through oneDNN (on by default),
and its kernel for those transposed batched matmuls took 97% of an exported
model's time: 1,480 users/s on one thread where the dygraph net scores about
50 k/s (docs/expand.md). MetaHeacCampaign computes the same function
row-major: the fused first expert layer, the gates and the critics are plain
[B, in] @ [in, out] matmuls, the experts' later layers one batched matmul
[E, B, H] @ [E, H, H'], and the campaign's ad embeddings and their share of
the gates' first layer are computed once per call on one row. The embeddings
are net.py's own embed_fields. tests/test_serving.py checks it equals
net.py's forward to 1e-6.

Other networks (the baselines under models/) are exported as they are, with
the ad ids repeated on every row (CampaignNet).
"""
import numpy as np

from ..paddle_env import paddle

import net as net_module


def campaign_scorer(net, ad_ids):
    """The layer that scores users for one campaign: (static, dynamic, lengths) -> click probability [N]."""
    if isinstance(net, net_module.WideAndDeep):
        return WideAndDeepCampaign(campaign_scorer(net.deep, ad_ids), net.wide)
    if isinstance(net, net_module.MetaHeacNet):
        return MetaHeacCampaign(net, ad_ids)
    return CampaignNet(net, ad_ids)


class CampaignNet(paddle.nn.Layer):
    """Any network of the project, its feeds' ad ids fixed to one campaign's."""

    def __init__(self, net, ad_ids):
        super().__init__()
        self.net = net
        self.register_buffer("ad_row", paddle.to_tensor(np.asarray(ad_ids, np.int64)[None]))

    def forward(self, static, dynamic, lengths):
        ad = self.ad_row.expand([paddle.shape(static)[0], self.ad_row.shape[1]])
        return self.net({"static": static, "dynamic": dynamic, "lengths": lengths, "ad": ad})


class MetaHeacCampaign(CampaignNet):
    """net.MetaHeacNet's forward for one campaign, row-major (see the module docstring)."""

    def forward(self, static, dynamic, lengths):
        net, relu = self.net, paddle.nn.functional.relu

        def p(name):
            return getattr(net, name)

        feeds = {"static": static, "dynamic": dynamic, "lengths": lengths, "ad": self.ad_row}
        user, user_mean, ad = net_module.embed_fields(net.layout, feeds, p)   # [B, U, D], [B, D], [1, A, D]
        dim, experts, dims = user.shape[2], net.num_expert, net.mlp_dims
        ad = ad.reshape([1, -1])

        def gate(name):  # [B, width]; the task vector is [user_mean, ad], so its first layer splits in two
            w0 = p(f"{name}_w0")
            hidden = relu(paddle.matmul(user_mean, w0[:dim]) + (paddle.matmul(ad, w0[dim:]) + p(f"{name}_b0")))
            return net_module.softmax(paddle.matmul(hidden, p(f"{name}_w1")) + p(f"{name}_b1"), axis=1)

        hidden = relu(paddle.matmul(user.reshape([-1, user.shape[1] * dim]), p("expert_w0")) + p("expert_b0"))
        hidden = hidden.reshape([-1, experts, dims[0]]).transpose([1, 0, 2])             # [E, B, H]
        for k in range(1, len(dims)):
            hidden = relu(paddle.matmul(hidden, p(f"expert_w{k}")) + p(f"expert_b{k}"))
        mixed = (hidden * gate("expert_gate").transpose([1, 0]).unsqueeze(2)).sum(axis=0)  # [B, H]
        critics = paddle.nn.functional.sigmoid(paddle.matmul(mixed, p("critic_w")) + p("critic_b"))
        return (critics * gate("critic_gate")).sum(axis=1)


class WideAndDeepCampaign(paddle.nn.Layer):
    """net.WideAndDeep for one campaign: its deep network's campaign scorer, its logit plus the wide part."""

    def __init__(self, deep, wide):
        super().__init__()
        self.deep, self.wide = deep, wide

    def forward(self, static, dynamic, lengths):
        p = self.deep(static, dynamic, lengths)
        logit = paddle.log(paddle.clip(p, min=1e-12)) - paddle.log(paddle.clip(1 - p, min=1e-12))
        return paddle.nn.functional.sigmoid(logit + self.wide({"static": static, "dynamic": dynamic,
                                                                 "lengths": lengths}))
