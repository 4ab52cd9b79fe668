"""Synthetic look-alike data in the raw Tencent 2018 competition format.

The generative model, and why:
- Every user u has a latent taste z_u ~ N(0, I_8). It drives both the user's
  features and their clicks, so features carry the click signal, but only as a
  noisy view: a feature value is a random draw whose odds z_u merely tilts.
- Small-vocabulary fields (age, gender, interests...) pick values by a
  Plackett-Luce draw: log-popularity (Zipf) + beta * <e_value, z_u> + Gumbel.
  Large ones (LBS, kw, topic) pick a taste cluster (odds tilted by z_u), then
  an id of that cluster by Zipf popularity; so most single ids are rare and
  informative only through the company they keep, as real keywords are.
- Campaigns (aids) fall into families that share advertisers, ad categories,
  products and product types. A campaign's preference is
  w_a = scale * (shared part + family part + own part), variance split
  0.4 / 0.35 / 0.25: learning across all campaigns helps, knowing the family
  (through the ad features) helps more, and only the seed set reveals the
  campaign's own part.
- Click probability p = sigmoid(b_a + <w_a, z_u>), b_a set so the campaign's
  rows click at its own base rate (about 5% on average); labels are Bernoulli(p)
  and p is written to oracle.csv: an AUC ceiling near 0.8, not 1.
- Campaign sizes: half are cold-sized (expected positives log-uniform from
  cold_min to hot_cut), half hot-sized (from hot_cut up to what the row total
  allows); the candidates of a campaign are users drawn uniformly at random.
Extra groups the model does not use (marriageStatus, interest4/5, kw3, topic3,
appIdInstall, appIdAction, ct, os) are noise independent of the taste.
Same arguments give byte-identical files on the same NumPy.
"""
import os
import shutil
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from tools.utils.data.raw_text import PROB_DIGITS, user_lines, write_csv
from tools.utils.progress import progress as progress_bar
from tools.utils.files import make_staging
from tools.utils.data.raw_users import forked_pool, quiet_worker_signals

LATENT_DIM = 8
USER_CHUNK = 100_000         # users per chunk of userFeature.data; each chunk has its own seed
TARGET_RATE = 0.048          # real train.csv: 421,961 / 8,798,814
COLD_FRACTION = 0.5
WEIGHT_SCALE = 1.25          # std of <w_a, z_u>: sets the oracle AUC near 0.8
WEIGHT_SPLIT = (0.4, 0.35, 0.25)  # variance of shared / family / own preference
CAMPAIGNS_PER_FAMILY = 7

STAGING = ".make_synthetic.tmp"  # + pid: the staging folder inside out_dir
PRESETS = {
    # name: users, campaigns, train_rows, test_rows, hot_cut, cold_min
    "sample": dict(users=50_000, campaigns=50, train_rows=64_000, test_rows=16_000, hot_cut=60, cold_min=12),
    "small": dict(users=1_000_000, campaigns=173, train_rows=770_000, test_rows=198_000, hot_cut=200,
                  cold_min=10),
    "full": dict(users=11_420_039, campaigns=173, train_rows=8_798_814, test_rows=2_265_989, hot_cut=2000,
                 cold_min=30),
}

# How a field picks its values: RANK = distinct values by a Plackett-Luce draw
# over the whole (small) vocabulary; DRAW = draws with replacement from taste
# clusters, duplicates removed (clusters=1 and beta=0: plain popularity).
RANK, DRAW = "rank", "draw"
Field = namedtuple("Field", "name n_values raw_low raw_high how beta missing mean_len max_len zipf clusters")
# Columns: distinct raw values (with the "-1" id that label encoding adds for
# missing values and padding, the used fields give the Tencent vocabulary
# maxima at full scale), raw ids drawn from [raw_low, raw_high), how, beta (how
# strongly z_u tilts the odds), share of users missing the group, mean and
# maximum list length, Zipf exponent of popularity, taste clusters (DRAW).
# Order of the groups in a userFeature.data line (uid first, house last).
USER_FIELDS = (
    Field("age", 6, 0, 6, RANK, 0.8, 0.0, 1, 1, 0.5, 1),
    Field("gender", 3, 0, 3, RANK, 0.6, 0.0, 1, 1, 1.5, 1),
    Field("marriageStatus", 13, 0, 16, DRAW, 0.0, 0.0, 1.3, 3, 1.0, 1),
    Field("education", 8, 0, 8, RANK, 0.6, 0.0, 1, 1, 0.7, 1),
    Field("consumptionAbility", 3, 0, 3, RANK, 0.8, 0.0, 1, 1, 0.5, 1),
    Field("LBS", 855, 0, 1000, DRAW, 1.0, 0.03, 1, 1, 1.0, 16),
    Field("interest1", 124, 1, 130, RANK, 1.0, 0.10, 12, 40, 0.8, 1),
    Field("interest2", 82, 1, 85, RANK, 1.0, 0.35, 6, 30, 0.8, 1),
    Field("interest3", 12, 1, 13, RANK, 0.8, 0.95, 2, 8, 0.8, 1),
    Field("interest4", 12, 1, 13, DRAW, 0.0, 0.95, 2, 8, 0.8, 1),
    Field("interest5", 136, 1, 140, DRAW, 0.0, 0.25, 14, 40, 0.8, 1),
    Field("kw1", 263_312, 0, 800_000, DRAW, 1.0, 0.10, 4, 6, 1.0, 32),
    Field("kw2", 49_780, 0, 800_000, DRAW, 1.0, 0.05, 4, 6, 1.0, 32),
    Field("kw3", 20_000, 0, 800_000, DRAW, 0.0, 0.95, 2, 5, 1.0, 1),
    Field("topic1", 10_002, 0, 10_010, DRAW, 1.0, 0.08, 4, 6, 1.0, 32),
    Field("topic2", 9_984, 0, 10_010, DRAW, 1.0, 0.05, 4, 6, 1.0, 32),
    Field("topic3", 6_000, 0, 10_010, DRAW, 0.0, 0.95, 2, 5, 1.0, 1),
    Field("appIdInstall", 60_000, 0, 1_000_000, DRAW, 0.0, 0.93, 20, 60, 1.0, 1),
    Field("appIdAction", 6_000, 0, 1_000_000, DRAW, 0.0, 0.97, 5, 20, 1.0, 1),
    Field("ct", 5, 0, 5, DRAW, 0.0, 0.0, 1.5, 3, 0.5, 1),
    Field("os", 3, 0, 3, DRAW, 0.0, 0.0, 1.2, 2, 0.5, 1),
    Field("carrier", 4, 0, 4, RANK, 0.3, 0.0, 1, 1, 0.7, 1),
)
HOUSE_RATE = 0.15            # house is "1" for about this share of users, missing otherwise
HOUSE_BETA = 0.8

AD_COLUMNS = ("aid", "advertiserId", "campaignId", "creativeId", "creativeSize",
              "adCategoryId", "productId", "productType")
# Ad field: distinct values at 173 campaigns, raw id range, parent in the hierarchy.
AdField = namedtuple("AdField", "name n_real raw_low raw_high parent")
AD_FIELDS = (
    AdField("advertiserId", 79, 1, 200_000, "family"),
    AdField("campaignId", 138, 1, 400_000, "advertiserId"),
    AdField("creativeSize", 15, 1, 120, None),
    AdField("adCategoryId", 40, 1, 300, "family"),
    AdField("productId", 33, 0, 30_000, "family"),
    AdField("productType", 4, 1, 12, "family"),
)
REAL_CAMPAIGNS = 173

FILES = ("adFeature.csv", "userFeature.data", "train.csv", "test1_truth.csv", "oracle.csv")


@dataclass
class Truth:
    """What the generator knows and a model must not see (for tests and benchmarks)."""
    uids: np.ndarray        # raw uid of user index i (line i of userFeature.data)
    z: np.ndarray           # latent taste per user index, float32 (users, LATENT_DIM)
    aids: np.ndarray        # raw aid per campaign index
    family: np.ndarray      # family per campaign index
    weights: np.ndarray     # preference w_a per campaign index
    bias: np.ndarray        # b_a per campaign index
    rows: dict              # "stage1"/"stage2" -> dict(campaign, user, label, prob) in file order


# ----------------------------------------------------------------- small helpers
def spread(rng, n_items, n_values):
    """Random assignment of n_items to n_values codes using every code at least once."""
    codes = np.concatenate([np.arange(n_values), rng.integers(0, n_values, n_items - n_values)])
    return rng.permutation(codes)


def nested_codes(rng, parent, n_values):
    """Codes for items grouped by `parent`: each code belongs to one parent and every
    parent and code is used when n_parents <= n_values <= n_items; with fewer codes
    than parents, parents share codes (all items of a parent get its code)."""
    n_parents = int(parent.max()) + 1
    if n_values > len(parent):
        raise ValueError(f"{n_values} codes cannot all be used by {len(parent)} items")
    if n_values < n_parents:
        return spread(rng, n_parents, n_values)[parent]
    sizes = np.bincount(parent, minlength=n_parents)
    share = 1 + largest_remainder((sizes - 1) / max(1, (sizes - 1).sum()) * (n_values - n_parents))
    share = np.minimum(share, sizes)
    while share.sum() < n_values:  # capped parents hand their surplus on
        room = np.flatnonzero(share < sizes)
        share[room[: n_values - share.sum()]] += 1
    first_code = np.cumsum(share) - share
    codes = np.empty(len(parent), np.int64)
    for p in range(n_parents):
        members = np.flatnonzero(parent == p)
        codes[members] = first_code[p] + spread(rng, len(members), share[p])
    return codes


def largest_remainder(x):
    """Round non-negative reals to integers keeping the (rounded) total."""
    base = np.floor(x).astype(np.int64)
    short = int(round(x.sum())) - base.sum()
    base[np.argsort(base - x, kind="stable")[:short]] += 1
    return base


def raw_ids(rng, n, low, high):
    """n distinct raw ids from [low, high), sorted (contiguous when the range is exact)."""
    if high - low == n:
        return np.arange(low, high)
    return low + np.sort(rng.choice(high - low, n, replace=False))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------- ads and campaigns
def make_ads(rng, n_campaigns):
    """adFeature columns (raw ids) and the family of each campaign."""
    n_families = max(2, round(n_campaigns / CAMPAIGNS_PER_FAMILY))
    codes = {"family": spread(rng, n_campaigns, n_families)}
    for f in AD_FIELDS:
        k = min(n_campaigns, max(round(f.n_real * n_campaigns / REAL_CAMPAIGNS), min(f.n_real, 4)))
        if f.parent is None:
            codes[f.name] = spread(rng, n_campaigns, k)
        else:
            codes[f.name] = nested_codes(rng, codes[f.parent], k)
    columns = {"aid": rng.permutation(raw_ids(rng, n_campaigns, 1, 2500)),
               "creativeId": rng.permutation(raw_ids(rng, n_campaigns, 1, 1_500_000))}
    for f in AD_FIELDS:
        k = int(codes[f.name].max()) + 1
        columns[f.name] = raw_ids(rng, k, f.raw_low, f.raw_high)[codes[f.name]]
    return {c: columns[c] for c in AD_COLUMNS}, codes["family"]


def campaign_weights(rng, family):
    """w_a = scale * (shared + family + own), each part N(0, share * I / d)."""
    parts = [rng.standard_normal((n, LATENT_DIM)) * np.sqrt(share / LATENT_DIM)
             for n, share in zip((1, family.max() + 1, len(family)), WEIGHT_SPLIT)]
    return WEIGHT_SCALE * (parts[0] + parts[1][family] + parts[2])


def plan_sizes(rng, n_campaigns, total_rows, hot_cut, cold_min):
    """Rows and base click rate per campaign: rows add up to total_rows and click at
    TARGET_RATE overall.

    Planned positives: cold-sized campaigns cold_min..hot_cut, hot-sized ones
    hot_cut..p_max, log-uniform (stratified), p_max solved so the rows add up;
    each campaign's rate is then TARGET_RATE times its own factor (row-weighted
    mean 1), which jitters its positives around the plan.
    """
    n_cold = round(n_campaigns * COLD_FRACTION)
    n_hot = n_campaigns - n_cold
    q_cold = (np.arange(n_cold) + rng.random(n_cold)) / n_cold
    q_hot = (np.arange(n_hot) + rng.random(n_hot)) / n_hot
    cold = cold_min * (hot_cut / cold_min) ** q_cold
    which = np.argsort(rng.permutation(n_campaigns))  # which campaigns are cold-sized: random
    need = TARGET_RATE * total_rows

    def planned(p_max):
        return np.concatenate([cold, hot_cut * (p_max / hot_cut) ** q_hot])[which]

    if planned(hot_cut).sum() > need:
        raise ValueError(f"--hot-cut {hot_cut} needs at least {int(planned(hot_cut).sum() / TARGET_RATE)} rows "
                         f"for {n_campaigns} campaigns but train + test rows are {total_rows}: lower --hot-cut "
                         "(or --cold-min) or ask for more rows")
    lo, hi = np.log(hot_cut), np.log(hot_cut) + 1.0
    while planned(np.exp(hi)).sum() < need:
        hi += 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if planned(np.exp(mid)).sum() < need else (lo, mid)
    rows = largest_remainder(planned(np.exp(hi)) * total_rows / planned(np.exp(hi)).sum())
    factor = np.exp(0.35 * rng.standard_normal(n_campaigns))
    return rows, TARGET_RATE * factor * rows.sum() / (factor * rows).sum()


def stage1_counts(rows, train_rows):
    """Split each campaign's rows into stage 1 and 2 with totals train_rows and the rest,
    at least one row in each stage."""
    n1 = largest_remainder(rows * train_rows / rows.sum())
    n1 = np.clip(n1, 1, rows - 1)
    gap = train_rows - n1.sum()
    step = 1 if gap > 0 else -1
    while gap != 0:
        room = np.flatnonzero((n1 < rows - 1) if step > 0 else (n1 > 1))
        take = room[: abs(gap)]
        n1[take] += step
        gap -= step * len(take)
    return n1


def solve_bias(score, campaign, rate):
    """b_a with mean(sigmoid(b_a + score)) over campaign a's rows = rate[a] (bisection)."""
    n = np.bincount(campaign, minlength=len(rate))
    lo, hi = np.full(len(rate), -30.0), np.full(len(rate), 10.0)
    for _ in range(36):  # bracket 40 wide: 6e-10 at the end
        mid = (lo + hi) / 2
        mean = np.bincount(campaign, sigmoid(mid[campaign] + score), len(rate)) / np.maximum(n, 1)
        low = mean < rate
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return (lo + hi) / 2


def make_rows(rng, z, weights, rate, rows, n_stage1):
    """Candidate users, oracle probabilities and labels of every campaign, per stage,
    each stage shuffled into file order."""
    campaign = np.repeat(np.arange(len(rows)), rows)
    users = [rng.choice(len(z), n, replace=False) for n in rows]
    score = np.concatenate([z[u].astype(np.float64) @ w for u, w in zip(users, weights)])
    user = np.concatenate(users)
    bias = solve_bias(score, campaign, rate)
    prob = sigmoid(bias[campaign] + score)
    label = (rng.random(len(prob)) < prob).astype(np.int8)
    rank_in_campaign = np.arange(len(campaign)) - np.repeat(np.cumsum(rows) - rows, rows)
    in_stage1 = rank_in_campaign < n_stage1[campaign]
    stages = {}
    for name, sel in (("stage1", in_stage1), ("stage2", ~in_stage1)):
        idx = np.flatnonzero(sel)
        idx = idx[rng.permutation(len(idx))]
        stages[name] = dict(campaign=campaign[idx], user=user[idx], label=label[idx], prob=prob[idx])
    return stages, bias


# ----------------------------------------------------------------- user features
def field_tables(rng, field):
    """Per-field constants: raw ids, popularity and taste vectors."""
    raw = raw_ids(rng, field.n_values, field.raw_low, field.raw_high)
    popularity_rank = rng.permutation(field.n_values)
    log_pop = -field.zipf * np.log1p(popularity_rank)
    if field.how == RANK:
        return dict(raw=raw, log_pop=log_pop,
                    taste=rng.standard_normal((field.n_values, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    cluster = spread(rng, field.n_values, field.clusters) if field.clusters > 1 else np.zeros(field.n_values, int)
    order = np.lexsort((popularity_rank, cluster))  # ids grouped by cluster, most popular first
    weight = np.exp(log_pop[order])
    members = np.bincount(cluster, minlength=field.clusters)
    ends = np.cumsum(members)
    within = np.cumsum(weight)
    within = within - np.repeat(np.concatenate([[0.0], within[ends[:-1] - 1]]), members)
    cum = cluster[order] + within / np.repeat(within[ends - 1], members)  # cluster t spans (t, t+1]
    cum[ends - 1] = np.arange(1, field.clusters + 1)  # exact upper edges
    return dict(raw=raw, ids_by_cluster=order, cum=cum,
                cluster_logit=0.5 * rng.standard_normal(field.clusters),
                taste=rng.standard_normal((field.clusters, LATENT_DIM)) / np.sqrt(LATENT_DIM))


def list_lengths(rng, n, field):
    """0 for missing, else 1 + negative binomial (long right tail), capped at max_len."""
    extra = field.mean_len - 1
    length = 1 + (rng.negative_binomial(3, 3 / (3 + extra), n) if extra > 0 else np.zeros(n, np.int64))
    length = np.minimum(length, min(field.max_len, field.n_values))
    length[rng.random(n) < field.missing] = 0
    return length


def rank_values(rng, z, field, tables, width):
    """Plackett-Luce draw of `width` distinct codes per user, most likely first."""
    logit = tables["log_pop"] + field.beta * (z @ tables["taste"].T) + rng.gumbel(size=(len(z), field.n_values))
    top = np.argpartition(-logit, width - 1, axis=1)[:, :width] if width < field.n_values \
        else np.broadcast_to(np.arange(field.n_values), logit.shape)
    top_logit = np.take_along_axis(logit, top, axis=1)
    return np.take_along_axis(top, np.argsort(-top_logit, axis=1), axis=1)


def draw_values(rng, z, field, tables, width):
    """`width` codes per user with replacement: a taste cluster, then an id of it."""
    n = len(z)
    if field.clusters > 1:
        logit = tables["cluster_logit"] + field.beta * (z @ tables["taste"].T)
        prob = np.exp(logit - logit.max(axis=1, keepdims=True))
        cdf = np.cumsum(prob, axis=1)
        cdf /= cdf[:, -1:]
        u = rng.random((n, width))
        cluster = (cdf[:, None, :-1] < u[:, :, None]).sum(axis=2)
    else:
        cluster = np.zeros((n, width), np.int64)
    pos = np.searchsorted(tables["cum"], cluster + (1.0 - rng.random((n, width))))  # in (t, t + 1]
    return tables["ids_by_cluster"][np.minimum(pos, field.n_values - 1)]


def drop_repeats(codes, lengths):
    """Remove repeated codes within each row (keeping the first) and pack the rest left."""
    width = codes.shape[1]
    live = np.arange(width) < lengths[:, None]
    keyed = np.where(live, codes, -1)
    order = np.argsort(keyed, axis=1, kind="stable")
    sorted_codes = np.take_along_axis(keyed, order, axis=1)
    repeat = np.zeros_like(live)
    np.put_along_axis(repeat, order[:, 1:], (sorted_codes[:, 1:] == sorted_codes[:, :-1]), axis=1)
    keep = live & ~repeat
    packed = np.take_along_axis(codes, np.argsort(~keep, axis=1, kind="stable"), axis=1)
    return packed, keep.sum(axis=1)


def field_values(rng, z, field, tables):
    """(lengths, flat raw values in line order) of one field for a chunk of users."""
    lengths = list_lengths(rng, len(z), field)
    present = np.flatnonzero(lengths)
    width = int(lengths.max(initial=0))
    if width == 0:
        return lengths, np.zeros(0, np.int64)
    zp, lp = z[present], lengths[present]
    if field.how == RANK:
        codes = rank_values(rng, zp, field, tables, width)
    else:
        codes, lp = drop_repeats(draw_values(rng, zp, field, tables, width), lp)
        lengths[present] = lp
    flat = codes[np.arange(width) < lp[:, None]]
    return lengths, tables["raw"][flat]


def user_chunk_text(rng, uids, z, tables, house_taste):
    """userFeature.data lines of a chunk of users."""
    groups = [("uid", np.ones(len(uids), np.int64), uids)]
    for field in USER_FIELDS:
        lengths, flat = field_values(rng, z, field, tables[field.name])
        groups.append((field.name, lengths, flat))
    house_prob = sigmoid(np.log(HOUSE_RATE / (1 - HOUSE_RATE)) + HOUSE_BETA * (z @ house_taste))
    has_house = (rng.random(len(z)) < house_prob).astype(np.int64)
    groups.append(("house", has_house, np.ones(int(has_house.sum()), np.int64)))
    return user_lines(uids, groups)


# ----------------------------------------------------------------- driver
def resolve_scale(scale="sample", **overrides):
    """The preset `scale` with any non-None overrides; checks the numbers."""
    if scale not in PRESETS:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[scale])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(cfg) - set(PRESETS[scale])
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(PRESETS[scale])}")
    if cfg["campaigns"] < 2:
        raise ValueError(f"--campaigns is {cfg['campaigns']}; at least 2 are needed (one cold-, one hot-sized)")
    if min(cfg["train_rows"], cfg["test_rows"]) < cfg["campaigns"]:
        raise ValueError(f"--train-rows {cfg['train_rows']} and --test-rows {cfg['test_rows']} must each be "
                         f"at least --campaigns ({cfg['campaigns']}): every campaign needs rows in both stages")
    if not 0 < cfg["cold_min"] < cfg["hot_cut"]:
        raise ValueError(f"need 0 < --cold-min ({cfg['cold_min']}) < --hot-cut ({cfg['hot_cut']})")
    return cfg


def generate(out_dir, users, campaigns, train_rows, test_rows, hot_cut, cold_min, seed=0, jobs=1,
             progress=False):
    """Write the five raw files into out_dir; returns the Truth behind them.

    The five files go to a staging folder inside out_dir and replace the old ones only once all are
    complete, so an interrupted run never leaves a cut-off file. jobs: processes formatting
    userFeature.data (the output does not depend on it). progress: report the lines written.
    """
    total = train_rows + test_rows
    streams = np.random.SeedSequence(seed).spawn(5)
    rng_ads, rng_rows, rng_users, rng_tables = (np.random.default_rng(s) for s in streams[:4])
    rows, rate = plan_sizes(rng_rows, campaigns, total, hot_cut, cold_min)
    if rows.max() > users:
        raise ValueError(f"the largest campaign needs {rows.max()} distinct users but --users is {users}: "
                         "raise --users or lower the row counts")
    staging = os.path.join(out_dir, f"{STAGING}{os.getpid()}")
    try:
        make_staging(staging)  # inside the try: a stop signal as it appears still finds the finally
        with progress_bar(disable=not progress, total=total + users, unit="line", unit_scale=True,
                          desc="raw files", leave=False) as bar:
            ads, family = make_ads(rng_ads, campaigns)
            weights = campaign_weights(rng_ads, family)
            uids = rng_users.permutation(np.cumsum(rng_users.integers(1, 14, users)))
            z = rng_users.standard_normal((users, LATENT_DIM), dtype=np.float32)
            stages, bias = make_rows(rng_rows, z, weights, rate, rows, stage1_counts(rows, train_rows))
            write_ads(os.path.join(staging, "adFeature.csv"), ads)
            write_rows(staging, stages, ads["aid"], uids, bar.update)
            tables = {f.name: field_tables(rng_tables, f) for f in USER_FIELDS}
            house_taste = rng_tables.standard_normal(LATENT_DIM) / np.sqrt(LATENT_DIM)
            chunk_seeds = streams[4].spawn((users + USER_CHUNK - 1) // USER_CHUNK)
            write_users(os.path.join(staging, "userFeature.data"), (uids, z, tables, house_taste), chunk_seeds,
                        jobs, bar.update)
        for name in FILES:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Truth(uids=uids, z=z, aids=ads["aid"], family=family, weights=weights, bias=bias, rows=stages)


_WORKER = {}


def _init_worker(context, pool=False):
    _WORKER["context"] = context
    if pool:
        quiet_worker_signals()  # the parent ends the pool with SIGTERM: die quietly


def _chunk_text(task):
    index, seed = task
    uids, z, tables, house_taste = _WORKER["context"]
    lo, hi = index * USER_CHUNK, min(len(uids), (index + 1) * USER_CHUNK)
    return hi - lo, user_chunk_text(np.random.default_rng(seed), uids[lo:hi], z[lo:hi], tables, house_taste)


def write_users(path, context, chunk_seeds, jobs, progress):
    """Stream userFeature.data chunk by chunk; with jobs > 1 forked workers format
    chunks in parallel (each chunk has its own seed, so the bytes are the same)."""
    tasks = list(enumerate(chunk_seeds))
    with open(path, "wb") as f:
        if jobs > 1 and len(tasks) > 1:
            with forked_pool(jobs, _init_worker, (context, True)) as pool:
                results = pool.imap(_chunk_text, tasks)
                write_chunks(f, results, progress)
        else:
            _init_worker(context)
            write_chunks(f, map(_chunk_text, tasks), progress)


def write_chunks(f, results, progress):
    for n_users, text in results:
        f.write(text)
        progress(n_users)


def write_ads(path, ads):
    with open(path, "wb") as f:
        f.write(",".join(AD_COLUMNS).encode() + b"\n")
        write_csv(f, [ads[c] for c in AD_COLUMNS], [0] + [1] * (len(AD_COLUMNS) - 1))


def write_rows(out_dir, stages, aids, uids, progress):
    """train.csv (header), test1_truth.csv (no header), oracle.csv (both, in that order)."""
    for name, stage, header in (("train.csv", "stage1", True), ("test1_truth.csv", "stage2", False)):
        r = stages[stage]
        label_prefix = np.where(r["label"] == 1, 1, 2)  # "," + "1" or ",-" + "1"
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(b"aid,uid,label\n" if header else b"")
            write_csv(f, [aids[r["campaign"]], uids[r["user"]], np.ones(len(label_prefix), np.int64)],
                      [0, 1, label_prefix], progress)
    with open(os.path.join(out_dir, "oracle.csv"), "wb") as f:
        f.write(b"aid,uid,prob\n")
        for stage in ("stage1", "stage2"):
            r = stages[stage]
            scaled = np.minimum(np.rint(r["prob"] * 10 ** PROB_DIGITS), 10 ** PROB_DIGITS - 1).astype(np.int64)
            write_csv(f, [aids[r["campaign"]], uids[r["user"]], scaled], [0, 1, 3])
