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

Public API: ``generate_raw``, ``generate_bars``, ``make_world``, ``SIZES``.
"""
from __future__ import annotations

from .amazon import AmazonWorld
from .common import SIZES, check_dataset, resolve_size
from .kuaivideo import KuaiVideoWorld
from .taobao import TaobaoWorld

World = TaobaoWorld | AmazonWorld | KuaiVideoWorld

__all__ = ["SIZES", "AmazonWorld", "KuaiVideoWorld", "TaobaoWorld", "World", "generate_bars",
           "generate_raw", "make_world"]


def make_world(dataset: str, size: str | int = "tiny", seed: int = 0, drift: float = 1.0) -> World:
    """The hidden world behind a synthetic dataset; ``world.simulate()`` draws the logs once
    (cached) and ``world.true_prob(frame)`` gives the true probability of generated rows."""
    dataset = check_dataset(dataset)
    if drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift}")
    n = resolve_size(dataset, size)
    if dataset == "taobaoad":
        return TaobaoWorld(n, seed=seed, drift=drift)
    if dataset == "amazon":
        return AmazonWorld(n, seed=seed, drift=drift)
    return KuaiVideoWorld(n, seed=seed, drift=drift)


def generate_raw(dataset: str, out_dir: str, *, size: str | int = "tiny", seed: int = 0, drift: float = 1.0,
                 with_truth: bool = False) -> dict[str, str]:
    """Write the raw public files of ``dataset`` into out_dir; returns {name: path}.

    taobaoad: raw_sample.csv, ad_feature.csv, user_profile.csv, behavior_log.csv.
    amazon: reviews_Electronics_5.json.gz, meta_Electronics.json.gz.
    kuaivideo: train.csv, test.csv, item_visual_emb_dim64.h5 (BARS KuaiVideo_x1 is its only form).
    ``with_truth`` adds ground_truth.parquet (row order of the main file + true probabilities).
    Same arguments give byte-identical files.
    """
    world = make_world(dataset, size, seed, drift)
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
