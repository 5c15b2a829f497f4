"""Cells over seeds: mean, sample std and n per metric, each VM's seed-paired gain over ``none``
with its 95% t-interval, and the constant predictor of each test day and unit.

"Beats the constant" is one test, stated once: a cell beats it when its mean log loss over
seeds is below the mean log loss of the constant predictor (at ``ne_base_rate``) on the same
test rows of the same records; since FM, VMs and the constant share one normaliser this is the
same as NE below the constant's NE. ``NE < 1`` (below the entropy of the training click rate,
docs/method.md's competence criterion, Premises) is reported beside it.
"""
from __future__ import annotations

from typing import Any

import polars as pl

from ..contracts import METHODS
from .compare import GAIN_METRICS, SeedIndex, compare
from .load import METRICS, ORACLE_COLUMNS, THROUGHPUT

# What identifies an aggregated cell: everything but the seed and the per-run ids.
CELL_KEY = ("grid", "kind", "dataset", "data_source", "vm_schedule", "embedding_update", "feature_gap",
            "teacher", "student", "hparams", "method", "label_scale", "grad_scale", "loss_weight", "round", "train_day",
            "test_day", "domain", "task", "fm_frozen_after_day", "fm_staleness_days")
# One test day of one unit (a domain's or a task's VM): the rows of one table, one normaliser.
UNIT_KEY = ("grid", "dataset", "data_source", "vm_schedule", "round", "test_day", "domain", "task")
GAIN_COLUMNS = {"AUC": "auc_gain_pct", "logloss": "logloss_diff", "NE": "NE_diff"}
_SORT = ["grid", "dataset", "vm_schedule", "round", "domain", "task", "kind", "teacher", "student", "hparams", "_mrank",
         "fm_frozen_after_day", "fm_staleness_days", "label_scale", "grad_scale", "loss_weight"]


def ok_rows(records: pl.DataFrame) -> pl.DataFrame:
    """The records with status ok."""
    return records.filter(pl.col("status") == "ok")


def aggregate(records: pl.DataFrame) -> pl.DataFrame:
    """One row per cell (all seeds): n, mean/std (ddof=1)/n per metric, the constant's mean log
    loss and NE, how many seeds beat it, and for VMs the gain over ``none`` with its interval."""
    ok = ok_rows(records)
    if ok.is_empty():
        return pl.DataFrame()
    aggs: list[pl.Expr] = [pl.col("seed").n_unique().alias("n_seeds"), pl.len().cast(pl.Int64).alias("n_runs"),
                           pl.col("seed").unique().sort().cast(pl.String).str.join(";").alias("seeds")]
    for m in METRICS:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std(ddof=1).alias(f"{m}_std"),
                 pl.col(m).count().alias(f"{m}_n")]
    aggs += [pl.col(c).mean().alias(f"{c}_mean") for c in ORACLE_COLUMNS]
    aggs += [pl.col("ne_base_rate").mean().alias("ne_base_rate"),
             pl.col("constant_logloss").mean().alias("constant_logloss"),
             pl.col("constant_NE").mean().alias("constant_NE"),
             (pl.col("logloss") < pl.col("constant_logloss")).sum().cast(pl.Int64).alias("seeds_beating_constant"),
             pl.col("train_rows").mean().alias("train_rows_mean"),
             pl.col("vm_artifact").drop_nulls().unique().sort().str.join(";").alias("artifacts")]
    aggs += [pl.col(t).mean().alias(f"{t}_mean") for t in THROUGHPUT]
    cells = ok.group_by(list(CELL_KEY), maintain_order=True).agg(aggs)
    cells = cells.with_columns(
        (pl.col("logloss_mean") < pl.col("constant_logloss")).alias("beats_constant"),
        (pl.col("NE_mean") < 1.0).alias("NE_below_1"))
    cells = _with_gains(cells, SeedIndex(ok.filter(pl.col("kind") == "vm").iter_rows(named=True)))
    rank = {m: i for i, m in enumerate(METHODS)}
    return cells.with_columns(
        pl.col("method").replace_strict(rank, default=-1, return_dtype=pl.Int64).alias("_mrank")
    ).sort(_SORT, nulls_last=True, maintain_order=True).drop("_mrank")


def _with_gains(cells: pl.DataFrame, index: SeedIndex) -> pl.DataFrame:
    """``<gain>_mean/_lo/_hi/_n`` per metric of :data:`GAIN_COLUMNS`: the seed-paired difference to
    ``none`` (AUC relative in %, log loss and NE absolute); null for ``none`` and FM cells."""
    cols: dict[str, list] = {f"{g}_{s}": [] for g in GAIN_COLUMNS.values() for s in ("mean", "lo", "hi", "n")}
    for c in cells.iter_rows(named=True):
        for metric, relative, higher in GAIN_METRICS:
            g = GAIN_COLUMNS[metric]
            comp = None
            if c["kind"] == "vm" and c["method"] != "none":
                scales = (c["label_scale"], c["grad_scale"], c["loss_weight"])
                comp = compare(index, c, "none", c["method"], metric, relative, higher, second_scales=scales)
            iv = comp.interval if comp else None
            cols[f"{g}_mean"].append(iv.mean if iv else None)
            cols[f"{g}_lo"].append(iv.lo if iv else None)
            cols[f"{g}_hi"].append(iv.hi if iv else None)
            cols[f"{g}_n"].append(iv.n if iv else None)
    return cells.with_columns([pl.Series(k, v, dtype=pl.Int64 if k.endswith("_n") else pl.Float64)
                               for k, v in cols.items()])


def constants(records: pl.DataFrame) -> pl.DataFrame:
    """The constant predictor of each test day and unit: its normaliser, log loss and NE (means
    over the unit's ok records) and their spread (max − min; 0 when every record agrees), and the
    oracle (the world's truth on the same rows; null on real data)."""
    ok = ok_rows(records)
    if ok.is_empty():
        return pl.DataFrame()
    return ok.group_by(list(UNIT_KEY), maintain_order=True).agg(
        pl.col("ne_base_rate").mean(), pl.col("constant_logloss").mean(), pl.col("constant_NE").mean(),
        (pl.col("constant_logloss").max() - pl.col("constant_logloss").min()).alias("constant_logloss_spread"),
        (pl.col("ne_base_rate").max() - pl.col("ne_base_rate").min()).alias("ne_base_rate_spread"),
        pl.col("seed").n_unique().alias("n_seeds"),
        *(pl.col(c).mean() for c in ORACLE_COLUMNS))


def unit_of(row: dict[str, Any]) -> tuple:
    """The (test day, unit) key of a cell or record row."""
    return tuple(row[k] for k in UNIT_KEY)


def distinct_artifacts(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells with one row per distinct set of trained VMs: a VM shared by two grids (Table 2's
    round 0 is Figure 9's) is counted once; cells without artifact keys are kept as they are."""
    if cells.is_empty() or "artifacts" not in cells.columns:
        return cells
    keyed = cells.filter(pl.col("artifacts").is_not_null() & (pl.col("artifacts") != ""))
    return pl.concat([keyed.unique(subset=["artifacts"], keep="first", maintain_order=True),
                      cells.filter(pl.col("artifacts").is_null() | (pl.col("artifacts") == ""))])


def shared_grids(cells: list[dict[str, Any]]) -> dict[str, list[str]]:
    """artifacts -> the grids whose cells trained exactly those VMs (where more than one grid did)."""
    out: dict[str, list[str]] = {}
    for c in cells:
        if c.get("artifacts"):
            out.setdefault(c["artifacts"], [])
            if c["grid"] not in out[c["artifacts"]]:
                out[c["artifacts"]].append(c["grid"])
    return {k: v for k, v in out.items() if len(v) > 1}


def none_vs_constant(cells: pl.DataFrame) -> tuple[int, int, int]:
    """(distinct ``none`` VM cells, how many beat the constant, how many have NE < 1); a ``none`` VM
    shared by several grids counts once."""
    if cells.is_empty():
        return 0, 0, 0
    none = distinct_artifacts(cells.filter((pl.col("kind") == "vm") & (pl.col("method") == "none")))
    return none.height, int(none["beats_constant"].sum() or 0), int(none["NE_below_1"].sum() or 0)
