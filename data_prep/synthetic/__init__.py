"""Synthetic TaobaoAd, Amazon Electronics and KuaiVideo in their exact public file formats.

Why it exists: the real data cannot be downloaded here, yet the whole pipeline (readers ->
day splits -> FM -> DAS -> VMs) must run end to end. These generators write the raw files
byte-for-byte in the public layouts (headers, blanks, ``NULL``, Python-literal metadata, HDF5
embeddings), so the real readers read them unchanged, and they draw every label from a known
hidden world, so tests can compare a model against the truth.

Why a big teacher beats a small student here (the premise of ExFM), by construction:
  * Sparse ids with a long tail: user, ad/item, category, brand biases are learnt from counts,
    and 4 days hold 4x the evidence of 1 day for each id.
  * Low-rank user x ad interactions (8 factors from favourite categories, city level, brand):
    a factorization/cross model needs many co-occurrences to fit them.
  * Feature crosses (age x category group, gender x category group, pid x price bucket,
    purchasing power x price) that only a model with crosses captures.
  * Shopping intents that change daily and show up only in the behaviour sequence (about
    3x the click rate when the ad's category is a current intent): a sequence model (DMIN)
    sees them, a plain FM/one-hot student does not.
  * Per-domain differences (``new_user_class_level`` shifts base rate, preferences and the
    weight of intents) and, for KuaiVideo, per-task factors (like/follow are rare, correlated
    with click, but with their own user/item/author factors).
And why freshness matters: ``drift`` (0 = stationary) scales a daily random walk of ad and
category popularity and of user tastes, and the share of users and ads that join (or ads that
stop) during the 8 days; a teacher frozen after day k therefore goes stale (Figure 9) while a
student adapter re-fitted on fresh labels can recover part of the loss.

Where the paper's two gaps come from (TaobaoAd; the parameters were fixed when the world was
written, before any ExFM method was run on it, and are not tuned to results):
  * Cross-domain bias (Table 4: one FM over the 3 domains, one VM per domain). A domain is a
    group of ``new_user_class_level`` values (blank / 2 / 1,3,4). Per level, the world shifts
    the base rate (``level_bias`` = [0, 0.25, 0.1, -0.15, -0.3] on the logit), the user's taste
    vector (``D_level``: N(0, 0.6/sqrt(K)) per level and factor, added to every user of the
    level) and the weight of the shopping intent (``intent_gamma`` = [0.6, 1.1, 1.0, 0.9, 1.2]).
    An FM fitted on all domains shares its sequence attention, its DNN and its id embeddings
    across them, so whatever of these per-level effects it does not separate shows up as a bias
    in each domain's supervision; a domain VM trains on its own rows only. The level is an
    input feature, so the bias is limited to what a model does not learn from it; a grid's
    ``vm_drop_features`` widens the gap by withholding features (e.g. the behaviour sequences
    that carry the intents) from the VMs while the FM keeps them.
  * Freshness gap (Figure 9, ``drift`` scales all of it): daily random walks of ad popularity
    (``ad_walk``, N(0, 0.2 drift) a day), category popularity (``cate_walk``, N(0, 0.1 drift))
    and user tastes (``P_walk``, N(0, 0.15 drift) per factor); intents that change every day
    (half carry over); users and ads that join or leave during the 8 days; and a base click
    rate that rises from about 4.6% (day 1) to 5.6% (day 8). A snapshot trained through day
    d-1 misses day d's moves; one frozen after day k misses all moves after k.

Public API: ``generate_raw``, ``generate_bars``, ``make_world``, ``IMPRESSIONS_PER_SIZE``.
"""
from __future__ import annotations

from .amazon import AmazonWorld
from .common import IMPRESSIONS_PER_SIZE, check_dataset, resolve_size
from .kuaivideo import KuaiVideoWorld
from .taobao import TaobaoWorld

World = TaobaoWorld | AmazonWorld | KuaiVideoWorld

__all__ = ["IMPRESSIONS_PER_SIZE", "AmazonWorld", "KuaiVideoWorld", "TaobaoWorld", "World", "generate_bars",
           "generate_raw", "make_world", "write_raw"]


def make_world(dataset: str, size: str | int = "tiny", seed: int = 0, drift: float = 1.0,
               domain_shift: float = 0.0) -> World:
    """The hidden world behind a synthetic dataset; ``world.simulate()`` draws the logs once
    (cached) and ``world.true_prob(frame)`` gives the true probability of generated rows.
    ``drift`` (freshness) and ``domain_shift`` (cross-domain bias, TaobaoAd only) are the
    world's dials (:mod:`data_prep.synthetic.taobao`)."""
    dataset = check_dataset(dataset)
    if drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift}")
    if domain_shift < 0:
        raise ValueError(f"domain_shift must be >= 0, got {domain_shift}")
    if domain_shift and dataset != "taobaoad":
        raise ValueError(f"domain_shift={domain_shift} is defined for taobaoad (its 3 user-level domains), "
                         f"not {dataset}; expected 0")
    n = resolve_size(dataset, size)
    if dataset == "taobaoad":
        return TaobaoWorld(n, seed=seed, drift=drift, domain_shift=domain_shift)
    if dataset == "amazon":
        return AmazonWorld(n, seed=seed, drift=drift)
    return KuaiVideoWorld(n, seed=seed, drift=drift)


def generate_raw(dataset: str, out_dir: str, *, size: str | int = "tiny", seed: int = 0, drift: float = 1.0,
                 with_truth: bool = False, domain_shift: float = 0.0) -> dict[str, str]:
    """Write the raw public files of ``dataset`` into out_dir; returns {name: path}.

    taobaoad: raw_sample.csv, ad_feature.csv, user_profile.csv, behavior_log.csv.
    amazon: reviews_Electronics_5.json.gz, meta_Electronics.json.gz.
    kuaivideo: train.csv, test.csv, item_visual_emb_dim64.h5 (BARS KuaiVideo_x1 is its only form).
    ``with_truth`` adds ground_truth.parquet (row order of the main file + true probabilities).
    Same arguments give byte-identical files.
    """
    return write_raw(make_world(dataset, size, seed, drift, domain_shift), out_dir, with_truth=with_truth)


def write_raw(world: World, out_dir: str, *, with_truth: bool = False) -> dict[str, str]:
    """The raw public files of an existing world (kept by the caller to compute the truth)."""
    if isinstance(world, KuaiVideoWorld):
        return world.write(out_dir, with_truth=with_truth)
    return world.write_raw(out_dir, with_truth=with_truth)


def generate_bars(dataset: str, out_dir: str, *, size: str | int = "tiny", seed: int = 0, drift: float = 1.0,
                  with_truth: bool = False) -> dict[str, str]:
    """Write the BARS split (train.csv, test.csv) of ``dataset`` from the same hidden world as
    generate_raw with the same arguments, so the BARS readers can be tested too."""
    world = make_world(dataset, size, seed, drift)
    if isinstance(world, KuaiVideoWorld):
        return world.write(out_dir, with_truth=with_truth)
    return world.write_bars(out_dir, with_truth=with_truth)
