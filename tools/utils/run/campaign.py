"""What happens to one campaign at test time, the same in meta-inference and in expansion:
start from the meta-trained weights, fine-tune on the campaign's seeds, score rows.

Everything random about a campaign is seeded with (seed, aid), so its result
does not depend on which other campaigns are scored, in which order or by
which process.
"""
import numpy as np

from ..data import background

SCORE_ROWS = 4096  # rows per scoring call; scores depend on it by float32 rounding only (eval: no batch statistics)


def tuning_rows(seeds, candidates, config, aid, users):
    """The rows a test campaign is fine-tuned on under runner.infer_seeds: its labelled seeds, or (positive) its
    clicking seeds and NEGATIVES_PER_SEED of the background users per seed, none of them a candidate (expand.py's
    protocol; without a clicking seed, no rows: the campaign is scored without fine-tuning)."""
    if config["runner"]["infer_seeds"] != "positive":
        return seeds
    rng = np.random.default_rng([config["runner"]["seed"], aid % 2**32, 1])
    return background.with_negatives(seeds, users, background.NEGATIVES_PER_SEED, candidates["uid"], rng)[0]


def adapt(model, net, params, seeds, config, aid, batches, users=None):
    """Restore `params`, seed with (seed, aid), fine-tune on the seeds; returns the network that scores the
    campaign: net in eval mode, or what the model's campaign_net hook makes of it (MetaHeac adds a wide part
    fitted on the seeds, put on the network's scale on reference users drawn from `users`, the background
    users of tools/utils/data/background.py, or on the seeds themselves without them). model: a contract.Model;
    its fit_campaign, when it has one, fits the net in place of fine-tuning."""
    from .. import paddle_env
    seed = config["runner"]["seed"]
    net.set_state_dict(params)
    paddle_env.seed_all(paddle_env.derived_seed(seed, aid % 2**32))
    if model.fit_campaign is not None:  # a model fitted by its own rule (the look-alike baselines)
        model.fit_campaign(net, seeds, config)
    else:
        fine_tune(model, net, seeds, config, batches, np.random.default_rng([seed, aid % 2**32]))
    net.eval()
    if model.campaign_net is None or not len(seeds["label"]):
        return net
    if users is None:
        reference = seeds
    else:
        picked = background.reference(users, np.random.default_rng([seed, aid % 2**32, 2]))
        reference = background.rows_for(picked, aid, seeds["ad"][0])
    return model.campaign_net(net, seeds, reference, config)


def fine_tune(model, net, seeds, config, batches, rng):
    """runner.infer_train_epoch passes of a fresh Adam over the seeds, reshuffled by `rng` every pass
    (the official test_train: sample(frac=1), then consecutive batches of infer_batch_size)."""
    runner = config["runner"]
    optimizer = model.create_optimizer(net, config,
                                       learning_rate=config["hyper_parameters"]["local_test_learning_rate"])
    net.train()
    for _ in range(runner["infer_train_epoch"]):
        order = rng.permutation(len(seeds["label"]))
        for batch in batches({name: a[order] for name, a in seeds.items()}, runner["infer_batch_size"]):
            loss, _ = model.infer_train_forward(net, batch, config)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()


def score(model, net, rows, config, batches):
    """The click probability of every row, [N] float32."""
    if not len(rows["label"]):
        return np.empty(0, np.float32)
    return np.concatenate([model.infer_forward(net, b, config) for b in batches(rows, SCORE_ROWS)])
