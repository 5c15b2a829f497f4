"""The world's true probability of each row a reader produced from a synthetic world's files.

Why: on synthetic data the ceiling is known; the prepared day files carry it in a column of
their own (``contracts.truth_column(label)``) that no model reads (models read the features and
labels their feature map names), so every test day can show the oracle row beside the
constant. The truth is recomputed from the reader's own columns (ids and times as the files
wrote them), never joined by row position, so it follows the rows through every policy, sort
and split.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from .amazon import AmazonWorld
from .kuaivideo import KuaiVideoWorld
from .taobao import TaobaoWorld


def truth_by_label(world: TaobaoWorld | AmazonWorld | KuaiVideoWorld, frame: pl.DataFrame,
                   labels: list[str]) -> dict[str, np.ndarray]:
    """``{label: true P(label = 1)}`` for the rows of a reader's canonical frame."""
    if isinstance(world, TaobaoWorld):
        raw = frame.select(pl.col("userid").alias("user"), pl.col("time").alias("time_stamp"),
                           "adgroup_id", "pid")
        return {labels[0]: world.true_prob(raw)}
    if isinstance(world, AmazonWorld):
        raw = frame.select(pl.col("user_id").alias("reviewerID"), pl.col("item_id").alias("asin"),
                           pl.col("time").alias("unixReviewTime"), pl.col("item_history").alias("hist_asins"))
        return {labels[0]: world.true_prob(raw)}
    raw = frame.select("user_id", "item_id", pl.col("time").alias("timestamp"))
    probs = world.true_prob(raw)
    return {label: probs[label] for label in labels}
