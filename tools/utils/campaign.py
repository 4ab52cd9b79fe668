"""What happens to one campaign at test time, the same in meta-inference and in expansion:
start from the meta-trained weights, fine-tune on the campaign's seeds, score rows.

Everything random about a campaign is seeded with (seed, aid), so its result
does not depend on which other campaigns are scored, in which order or by
which process.
"""
import numpy as np

SCORE_ROWS = 4096  # rows per scoring call; scores do not depend on it (eval mode, no batch statistics)


def adapt(model, net, params, seeds, config, aid, batches):
    """Restore `params`, seed with (seed, aid) and fine-tune on the seeds; leaves net in eval mode."""
    from . import paddle_env
    seed = config["runner"]["seed"]
    net.set_state_dict(params)
    paddle_env.seed_all(paddle_env.derived_seed(seed, aid % 2**32))
    fine_tune(model, net, seeds, config, batches, np.random.default_rng([seed, aid % 2**32]))
    net.eval()


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
