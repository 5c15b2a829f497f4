"""Turn the streaming pipeline's result records into a leaderboard (markdown, CSV, PNG figures).

The pipeline writes one JSON line per evaluated cell into ``<results>/records.jsonl``
(record version 1, see :data:`REQUIRED_KEYS`). This module reads one or more such files,
aggregates the cells over seeds (mean, sample std with ddof=1, n), computes each method's
relative AUC gain over ``none`` for the same (teacher, student, seed) pairing, puts the paper's
and the BARS leaderboard's numbers beside ours and draws the paper's Figures 9-12 where their
records exist. It never trains or evaluates anything: what it prints is what was measured.

Public API: :func:`load_records`, :func:`build_report`, :class:`ReportPaths`,
:class:`RecordError`, and the CLI hooks :func:`add_report_parser` / :func:`run_report`
(``exfm report --records PATH [PATH ...] --out DIR``).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

log = logging.getLogger(__name__)

RECORD_VERSION = 1
METHODS = ("none", "kd", "ah", "ah_sa")
PAPER_ORDER = ("none", "kd", "ah", "ah_sa")
METRICS = ("AUC", "logloss", "NE", "calibration", "gAUC")
THROUGHPUT = ("train_samples_per_s", "eval_samples_per_s", "wall_time_s")
KNOWN_GRIDS = ("table2", "table3", "table4", "table5", "fig9", "fig12", "fig10_11")
SMOKE_PREFIX = "smoke_"

# Keys every record must carry (schema version 1). Metrics only when status is "ok";
# student/method/scales only for kind "vm" (an FM record has null student/method).
REQUIRED_KEYS = ("record_version", "kind", "status", "grid", "cell_id", "dataset", "data_source",
                 "round", "teacher", "seed")
REQUIRED_VM_KEYS = ("student", "method", "label_scale", "grad_scale", "loss_weight")
REQUIRED_OK_METRICS = ("AUC", "logloss")

# Paper / BARS names of our datasets.
PAPER_DATASET = {"taobaoad": "TaobaoAd", "amazon": "AmazonElectronics", "kuaivideo": "KuaiVideo"}
BARS_DATASET = {"taobaoad": "TaobaoAd_x1", "amazon": "AmazonElectronics_x1", "kuaivideo": "KuaiVideo_x1"}

# One row of the flat records table: column -> polars dtype.
SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String, "source_line": pl.Int64,
    "record_version": pl.Int64, "kind": pl.String, "status": pl.String, "error": pl.String,
    "grid": pl.String, "cell_id": pl.String, "config_hash": pl.String,
    "dataset": pl.String, "data_source": pl.String, "split_note": pl.String,
    "round": pl.Int64, "train_day": pl.Int64, "test_day": pl.Int64,
    "teacher": pl.String, "student": pl.String, "method": pl.String,
    "label_scale": pl.Float64, "grad_scale": pl.Float64, "loss_weight": pl.Float64,
    "seed": pl.Int64, "domain": pl.String, "task": pl.String,
    "fm_frozen_after_day": pl.Int64, "fm_staleness_days": pl.Int64, "snapshot_id": pl.String,
    **{m: pl.Float64 for m in METRICS},
    "calibration_bins": pl.String,  # JSON text: [[mean_pred, mean_label, count], ...]
    **{t: pl.Float64 for t in THROUGHPUT},
}

# What identifies an aggregated cell: everything but the seed and the per-run ids.
CELL_KEY = ("grid", "kind", "dataset", "data_source", "teacher", "student", "method",
            "label_scale", "grad_scale", "loss_weight", "round", "train_day", "test_day",
            "domain", "task", "fm_frozen_after_day", "fm_staleness_days")

FIGURE_FILES = {"fig9": "fig9_staleness.png", "fig10_11": "fig10_11_sweeps.png",
                "fig12": "fig12_scaling_grid.png"}
FIGURE_TITLES = {"fig9": "Figure 9: SA under FM staleness",
                 "fig10_11": "Figures 10-11: LW / LS and GS sweeps",
                 "fig12": "Figure 12: joint LS / GS / LW grid"}


class RecordError(ValueError):
    """A records file line that is not a valid version-1 record; the message names file and line."""


@dataclass
class ReportPaths:
    """Where :func:`build_report` wrote its outputs, and which figures it could not draw (and why)."""

    out_dir: Path
    markdown: Path
    leaderboard_csv: Path
    records_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    missing_figures: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- loading

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate(rec: Any, where: str) -> None:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    if "record_version" not in rec:
        raise RecordError(f"{where}: missing key 'record_version'")
    if rec["record_version"] != RECORD_VERSION:
        raise RecordError(f"{where}: record_version {rec['record_version']!r} is not supported "
                          f"(this report reads version {RECORD_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if rec.get("kind") == "vm":
        missing += [k for k in REQUIRED_VM_KEYS if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing required key(s) {', '.join(missing)}")
    if rec["kind"] not in ("vm", "fm"):
        raise RecordError(f"{where}: kind must be 'vm' or 'fm', got {rec['kind']!r}")
    if rec["status"] not in ("ok", "failed"):
        raise RecordError(f"{where}: status must be 'ok' or 'failed', got {rec['status']!r}")
    for k in ("grid", "cell_id", "dataset", "data_source", "teacher"):
        if not isinstance(rec[k], str) or not rec[k]:
            raise RecordError(f"{where}: {k} must be a non-empty string, got {rec[k]!r}")
    if rec["kind"] == "vm":
        if rec["method"] not in METHODS:
            raise RecordError(f"{where}: method must be one of {METHODS}, got {rec['method']!r}")
        if not isinstance(rec["student"], str):
            raise RecordError(f"{where}: a vm record needs a student name, got {rec['student']!r}")
        for k in ("label_scale", "grad_scale", "loss_weight"):
            if not _is_number(rec[k]):
                raise RecordError(f"{where}: {k} must be a number, got {rec[k]!r}")
    if rec["status"] == "ok":
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict):
            raise RecordError(f"{where}: an ok record needs a 'metrics' object")
        for m in REQUIRED_OK_METRICS:
            if not _is_number(metrics.get(m)):
                raise RecordError(f"{where}: metrics.{m} must be a number, got {metrics.get(m)!r}")
    elif not rec.get("error"):
        raise RecordError(f"{where}: a failed record needs an 'error' string")


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


def _opt_float(x: Any) -> float | None:
    return None if x is None or not _is_number(x) else float(x)


def _opt_str(x: Any) -> str | None:
    return None if x is None else str(x)


def _flatten(rec: dict, path: Path, lineno: int) -> dict:
    metrics = rec.get("metrics") or {}
    bins = rec.get("calibration_bins")
    row = {
        "source_file": str(path), "source_line": lineno,
        "record_version": rec["record_version"], "kind": rec["kind"], "status": rec["status"],
        "error": _opt_str(rec.get("error")), "grid": rec["grid"], "cell_id": rec["cell_id"],
        "config_hash": _opt_str(rec.get("config_hash")), "dataset": rec["dataset"],
        "data_source": rec["data_source"], "split_note": _opt_str(rec.get("split_note")),
        "round": _opt_int(rec.get("round")), "train_day": _opt_int(rec.get("train_day")),
        "test_day": _opt_int(rec.get("test_day")), "teacher": rec["teacher"],
        "student": _opt_str(rec.get("student")), "method": _opt_str(rec.get("method")),
        "label_scale": _opt_float(rec.get("label_scale")), "grad_scale": _opt_float(rec.get("grad_scale")),
        "loss_weight": _opt_float(rec.get("loss_weight")), "seed": _opt_int(rec.get("seed")),
        "domain": _opt_str(rec.get("domain")), "task": _opt_str(rec.get("task")),
        "fm_frozen_after_day": _opt_int(rec.get("fm_frozen_after_day")),
        "fm_staleness_days": _opt_int(rec.get("fm_staleness_days")),
        "snapshot_id": _opt_str(rec.get("snapshot_id")),
        "calibration_bins": json.dumps(bins) if bins else None,
    }
    for m in METRICS:
        row[m] = _opt_float(metrics.get(m))
    for t in THROUGHPUT:
        row[t] = _opt_float(rec.get(t))
    return row


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """A directory stands for its ``records.jsonl`` or, as ``exfm run`` writes them, every
    ``*.jsonl`` in it and in its ``records/`` folder (sorted)."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            out.append(p)
        elif (p / "records.jsonl").exists():
            out.append(p / "records.jsonl")
        else:
            out.extend(sorted(p.glob("*.jsonl")) + sorted((p / "records").glob("*.jsonl")))
    return out


def _load(paths: str | Path | Sequence[str | Path]) -> tuple[pl.DataFrame, int]:
    """The de-duplicated records and how many lines were replaced by a later one."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: dict[str, dict] = {}
    n_lines = 0
    for path in _expand(paths):
        if not path.exists():
            raise FileNotFoundError(f"records file not found: {path}")
        with path.open("r", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if lineno == last:  # a run killed mid-append leaves a torn last line (RecordWriter)
                    log.warning("%s: skipping a torn last line (not valid JSON: %s)", where, e.msg)
                    continue
                raise RecordError(f"{where}: not valid JSON ({e.msg})") from None
            _validate(rec, where)
            n_lines += 1
            rows.pop(rec["cell_id"], None)  # re-insert: the row order is that of the last record
            rows[rec["cell_id"]] = _flatten(rec, path, lineno)
    n_dup = n_lines - len(rows)
    if n_dup:
        log.info("records: %d lines, %d duplicate cell_id(s) replaced by their last record", n_lines, n_dup)
    df = pl.DataFrame(list(rows.values()), schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return df, n_dup


def load_records(paths: str | Path | Sequence[str | Path]) -> pl.DataFrame:
    """Read records.jsonl files into one flat table, the last record of each cell_id winning.

    Later files and later lines override earlier ones, so a re-run cell (e.g. a failed cell
    retried) replaces its old record. A directory stands for its record files. A line
    that is not a valid version-1 record raises :class:`RecordError` naming file and line,
    rather than being skipped: a silently dropped cell would bias the means. Metrics become
    columns (``AUC``, ``logloss``, ``NE``, ``calibration``, ``gAUC``); ``calibration_bins``
    stays JSON text so the table can be written as CSV.
    """
    return _load(paths)[0]


# ----------------------------------------------------------------------------- references

def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        log.warning("reference file missing: %s", path)
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dataclass
class _References:
    table23: dict[tuple, tuple[float, float]]   # (dataset, teacher, student, method) -> (auc, logloss)
    table4: dict[tuple, tuple[float, float]]    # (dataset, student, method, domain) -> ...
    table5: dict[tuple, tuple[float, float]]    # (dataset, student, method, task) -> ...
    bars: dict[tuple, tuple[float, float, float]]  # (bars dataset, model) -> (auc, logloss, gauc)
    found: list[str]

    @classmethod
    def load(cls, ref_dir: Path) -> "_References":
        found = []

        def rows(name: str) -> list[dict[str, str]]:
            r = _read_csv(ref_dir / name)
            if r:
                found.append(name)
            return r

        t23 = {(r["dataset"], r["teacher"], r["student"], r["method"]): (float(r["auc"]), float(r["logloss"]))
               for name in ("table2_taobaoad.csv", "table3_amazonelectronics.csv") for r in rows(name)}
        t4 = {(r["dataset"], r["student"], r["method"], str(r["domain"])): (float(r["auc"]), float(r["logloss"]))
              for r in rows("table4_taobaoad_domains.csv")}
        t5 = {(r["dataset"], r["student"], r["method"], r["task"]): (float(r["auc"]), float(r["logloss"]))
              for r in rows("table5_kuaivideo_tasks.csv")}
        bars = {(r["dataset"], r["model"]): (float(r["auc"]), float(r["logloss"]), float(r["gauc"]))
                for r in rows("bars_leaderboard.csv")}
        return cls(t23, t4, t5, bars, found)

    def paper(self, shape: str, cell: dict) -> tuple[float | None, float | None, float | None]:
        """The paper's (AUC, LogLoss, AUC gain % over none) for a cell, None where it has none."""
        if cell["kind"] != "vm":
            return None, None, None
        ds = PAPER_DATASET.get(cell["dataset"], cell["dataset"])
        if shape in ("table2", "table3"):
            def key(m):
                return (ds, cell["teacher"], cell["student"], m)
            table = self.table23
        elif shape == "table4" and cell["domain"] is not None:
            dom = _paper_domain(cell["domain"])

            def key(m):
                return (ds, cell["student"], m, dom)
            table = self.table4
        elif shape == "table5" and cell["task"] is not None:
            def key(m):
                return (ds, cell["student"], m, _paper_task(cell["task"]))
            table = self.table5
        else:
            return None, None, None
        hit = table.get(key(cell["method"]))
        if hit is None:
            return None, None, None
        base = table.get(key("none"))
        gain = None if base is None or cell["method"] == "none" else (hit[0] - base[0]) / base[0] * 100.0
        return hit[0], hit[1], gain

    def bars_for(self, dataset: str, model: str | None) -> tuple[float | None, float | None, float | None]:
        hit = self.bars.get((BARS_DATASET.get(dataset, dataset), model)) if model else None
        return hit if hit else (None, None, None)


def _paper_domain(domain: str) -> str:
    """Our domains are 0-based ("0", "1", "2"); the paper numbers them 1..3 (matched by position)."""
    try:
        return str(int(domain) + 1)
    except ValueError:
        return domain


def _paper_task(task: str) -> str:
    return task[3:] if task.startswith("is_") else task


# ----------------------------------------------------------------------------- aggregation

def grid_shape(grid: str) -> str:
    """The table/figure shape of a grid name: ``smoke_table2`` is drawn like ``table2``."""
    return grid[len(SMOKE_PREFIX):] if grid.startswith(SMOKE_PREFIX) else grid


def _is_default_scales(row: dict) -> bool:
    return all(row.get(k) in (None, 1.0) for k in ("label_scale", "grad_scale", "loss_weight"))


def _with_gains(ok: pl.DataFrame) -> pl.DataFrame:
    """Add ``auc_gain_pct``: 100 * (AUC - AUC_none) / AUC_none for the same pairing and seed.

    The ``none`` baseline is looked up for the same grid, dataset, data source, teacher,
    student, seed, round, domain and task, first with the same FM freeze day, then any freeze
    day (``none`` never reads the FM), then any teacher (a ``none`` VM recorded once under one
    teacher). Several matching ``none`` records are averaged.
    """
    rows = ok.to_dicts()
    base_cols = ("grid", "dataset", "data_source", "student", "seed", "round", "domain", "task")
    tiers = (base_cols + ("teacher", "fm_frozen_after_day"), base_cols + ("teacher",), base_cols)
    lookup: list[dict[tuple, list[float]]] = [{} for _ in tiers]
    for r in rows:
        if r["kind"] == "vm" and r["method"] == "none" and r["AUC"] is not None:
            for t, cols in enumerate(tiers):
                lookup[t].setdefault(tuple(r[c] for c in cols), []).append(r["AUC"])
    gains: list[float | None] = []
    for r in rows:
        g = None
        if r["kind"] == "vm" and r["method"] != "none" and r["AUC"] is not None:
            for t, cols in enumerate(tiers):
                hit = lookup[t].get(tuple(r[c] for c in cols))
                if hit:
                    base = sum(hit) / len(hit)
                    g = (r["AUC"] - base) / base * 100.0
                    break
        gains.append(g)
    return ok.with_columns(pl.Series("auc_gain_pct", gains, dtype=pl.Float64))


def aggregate(records: pl.DataFrame) -> pl.DataFrame:
    """One row per cell (all seeds): mean, sample std (ddof=1; null for one seed) and n per metric."""
    ok = records.filter(pl.col("status") == "ok")
    if ok.is_empty():
        return pl.DataFrame()
    ok = _with_gains(ok)
    aggs: list[pl.Expr] = [pl.col("seed").n_unique().alias("n_seeds"), pl.len().cast(pl.Int64).alias("n_runs"),
                           pl.col("seed").unique().sort().cast(pl.String).str.join(";").alias("seeds")]
    for m in METRICS + ("auc_gain_pct",):
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std(ddof=1).alias(f"{m}_std"),
                 pl.col(m).count().alias(f"{m}_n")]
    aggs += [pl.col(t).mean().alias(f"{t}_mean") for t in THROUGHPUT]
    cells = ok.group_by(list(CELL_KEY), maintain_order=True).agg(aggs)
    method_rank = {m: i for i, m in enumerate(METHODS)}
    return cells.with_columns(
        pl.col("method").replace_strict(method_rank, default=-1, return_dtype=pl.Int64).alias("_mrank")
    ).sort(["grid", "dataset", "kind", "teacher", "student", "round", "domain", "task", "_mrank",
            "fm_frozen_after_day", "fm_staleness_days", "label_scale", "grad_scale", "loss_weight"],
           nulls_last=True, maintain_order=True).drop("_mrank")


def _add_references(cells: pl.DataFrame, refs: _References) -> pl.DataFrame:
    cols: dict[str, list] = {k: [] for k in ("paper_auc", "paper_logloss", "paper_auc_gain_pct",
                                             "bars_auc", "bars_logloss", "bars_gauc")}
    for c in cells.iter_rows(named=True):
        pa, pl_, pg = refs.paper(grid_shape(c["grid"]), c)
        model = c["student"] if c["kind"] == "vm" else c["teacher"]
        ba, bl, bg = refs.bars_for(c["dataset"], model)
        for k, v in zip(cols, (pa, pl_, pg, ba, bl, bg)):
            cols[k].append(v)
    return cells.with_columns([pl.Series(k, v, dtype=pl.Float64) for k, v in cols.items()])


# ----------------------------------------------------------------------------- markdown helpers

def _f(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int = 4, signed: bool = False) -> str:
    if mean is None:
        return "—"
    m = f"{mean:+.{digits}f}" if signed else _f(mean, digits)
    return m if std is None else f"{m} ± {_f(std, digits)}"


def _gain(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}%"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return out


def _scale_label(c: dict) -> str:
    def s(x):
        return "—" if x is None else (f"{x:g}")
    return f"{s(c['label_scale'])}/{s(c['grad_scale'])}/{s(c['loss_weight'])}"


# ----------------------------------------------------------------------------- markdown sections

def _header(records: pl.DataFrame, cells: pl.DataFrame, n_dup: int, refs: _References) -> list[str]:
    lines = ["# exfm leaderboard", ""]
    if records.is_empty():
        return lines + ["No records were found: nothing to report.", ""]
    sources = records.select("dataset", "data_source").unique().sort("dataset", "data_source").rows()
    kinds = {s for _, s in sources}
    if kinds == {"synthetic"}:
        lines.append("**Data: SYNTHETIC.** Every number below comes from exfm's synthetic world (generated "
                     "data written in the datasets' formats), not from the real TaobaoAd / Amazon Electronics / "
                     "KuaiVideo data. They test the pipeline and the direction of effects; they are not "
                     "comparable with the paper's or BARS' numbers printed beside them.")
    elif "synthetic" in kinds:
        lines.append("**Data: MIXED synthetic and real.** Check the data source of each dataset below; "
                     "only real-data numbers can be compared with the paper's and BARS'.")
    else:
        lines.append("**Data: REAL** (" + ", ".join(sorted(kinds)) + " files of the public datasets).")
    lines.append("")
    lines.append("Data per dataset: " + "; ".join(f"{d} = {s}" for d, s in sources) + ".")
    notes = records.filter(pl.col("split_note").is_not_null()).select("dataset", "split_note").unique().sort(
        "dataset", "split_note").rows()
    for d, note in notes:
        lines.append(f"- ⚠ **{d}: {note}** — the 8 days are not real calendar days, so the streaming "
                     f"protocol's time order is only the files' row order.")
    ok = records.filter(pl.col("status") == "ok")
    seeds = sorted(s for s in ok["seed"].unique().to_list() if s is not None)
    lines.append("")
    if not cells.is_empty():
        ns = cells["n_seeds"]
        n_text = f"every cell has {ns.min()}" if ns.min() == ns.max() else f"cells have {ns.min()} to {ns.max()}"
    else:
        n_text = "no cell finished"
    if seeds:
        lines.append(f"Seeds (ok records): {len(seeds)} ({', '.join(map(str, seeds))}); {n_text} seed(s). "
                     "Numbers are mean ± sample std (ddof=1) over seeds; a single seed shows no ± part.")
    else:
        lines.append("Seeds: none, no cell finished.")
    n_ok = ok.height
    n_failed = records.height - n_ok
    lines.append(f"Records: {records.height} unique cells ({n_ok} ok, {n_failed} failed)"
                 + (f"; {n_dup} duplicate line(s) replaced by the last record of their cell_id." if n_dup else "."))
    if not cells.is_empty():
        pooled = cells.filter(pl.col("n_runs") > pl.col("n_seeds")).height
        if pooled:
            lines.append(f"⚠ {pooled} cell(s) pool more than one run per seed: records that differ only in "
                         "fields a record does not carry (e.g. distill options) were averaged together; "
                         "see n_runs vs n_seeds in leaderboard.csv.")
    lines.append("AUC gain = 100 × (AUC − AUC of `none`) / AUC of `none`, per seed for the same "
                 "(teacher, student, seed) pairing, then averaged over seeds.")
    lines.append("The paper's numbers (Tables 2-5) are from its real-data runs, one inference on day 6; "
                 "several are odd (TaobaoAd log losses above 0.69 at a ~5% CTR, where a constant predictor "
                 "scores about 0.20). They are printed as published.")
    if len(refs.found) < 5:
        lines.append(f"Reference files found: {', '.join(refs.found) or 'none'} (paper/BARS columns are "
                     "empty where a file is missing).")
    lines.append("")
    return lines


def _cells_table(cells: list[dict], extra: Sequence[str], with_paper: bool) -> list[str]:
    show_scales = any(not _is_default_scales(c) for c in cells)
    show_src = len({c["data_source"] for c in cells}) > 1
    headers = ["dataset"] + (["source"] if show_src else []) + ["round", "teacher", "student", "method"]
    headers += (["LS/GS/LW"] if show_scales else []) + list(extra)
    headers += ["n", "AUC", "LogLoss", "NE", "calibration", "AUC gain vs none"]  # n: runs in the mean
    if with_paper:
        headers += ["paper AUC", "paper LogLoss", "paper gain"]
    rows = []
    for c in cells:
        r = [c["dataset"]] + ([c["data_source"]] if show_src else [])
        r += [_f(c["round"], 0) if c["round"] is not None else "—", c["teacher"], c["student"] or "—",
              c["method"] or "—"]
        r += ([_scale_label(c)] if show_scales else []) + ["—" if c[e] is None else c[e] for e in extra]
        gain = "baseline" if c["method"] == "none" else _pm(c["auc_gain_pct_mean"], c["auc_gain_pct_std"], 2, signed=True)
        if c["method"] != "none" and c["auc_gain_pct_mean"] is not None:
            gain += "%"
        r += [c["AUC_n"], _pm(c["AUC_mean"], c["AUC_std"]), _pm(c["logloss_mean"], c["logloss_std"]),
              _pm(c["NE_mean"], c["NE_std"]), _pm(c["calibration_mean"], c["calibration_std"]), gain]
        if with_paper:
            r += [_f(c["paper_auc"]), _f(c["paper_logloss"]),
                  "baseline" if c["method"] == "none" and c["paper_auc"] is not None else _gain(c["paper_auc_gain_pct"])]
        rows.append(r)
    return _md_table(headers, rows)


def _pairing_key(c: dict) -> tuple:
    return (c["dataset"], c["data_source"], c["teacher"], c["student"], c["round"], c["domain"], c["task"],
            c["fm_frozen_after_day"])


def ordering_lines(vm_cells: list[dict]) -> list[str]:
    """Per (teacher, student) pairing: does the paper's AUC order none < kd < ah < ah_sa hold?

    Where a method has several scale settings in one pairing, the (1, 1, 1) cell is used; if
    there is none, the pairing is reported as ambiguous rather than picking one.
    """
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for c in vm_cells:
        groups.setdefault(_pairing_key(c), {}).setdefault(c["method"], []).append(c)
    lines, n_hold, n_judged = [], 0, 0
    for key, by_method in groups.items():
        dataset, _, teacher, student, rnd, domain, task, frozen = key
        label = f"{teacher} → {student} ({dataset}, round {rnd}"
        label += (f", domain {domain}" if domain is not None else "") + (f", task {task}" if task is not None else "")
        label += (f", FM frozen after day {frozen}" if frozen is not None else "") + ")"
        chosen, problem = {}, None
        for m in PAPER_ORDER:
            cands = by_method.get(m, [])
            if len(cands) > 1:
                cands = [c for c in cands if _is_default_scales(c)]
            if not cands:
                problem = problem or f"missing {m}"
            elif len(cands) > 1:
                problem = problem or f"several cells for {m}"
            else:
                chosen[m] = cands[0]
        if problem:
            lines.append(f"- {label}: cannot tell ({problem}).")
            continue
        n_judged += 1
        aucs = [chosen[m]["AUC_mean"] for m in PAPER_ORDER]
        chain = " < ".join(f"{m} {_f(a)}" for m, a in zip(PAPER_ORDER, aucs))
        broken = [(PAPER_ORDER[i], PAPER_ORDER[i + 1]) for i in range(3) if not aucs[i] < aucs[i + 1]]
        if broken:
            what = ", ".join(f"{lo} ≥ {hi}" for lo, hi in broken)
            lines.append(f"- {label}: ordering does not hold ({what}); means: {chain.replace(' < ', ', ')}.")
        else:
            n_hold += 1
            close = [i for i in range(3) if _within_std(chosen[PAPER_ORDER[i]], chosen[PAPER_ORDER[i + 1]])]
            note = " (some adjacent gaps are within one std over seeds)" if close else ""
            lines.append(f"- {label}: ordering holds: {chain}{note}.")
    head = (f"Paper's AUC ordering none < kd < ah < ah_sa holds in {n_hold} of {n_judged} (teacher, student) "
            f"pairing(s) with all four methods.")
    return [head, ""] + lines if lines else []


def _within_std(a: dict, b: dict) -> bool:
    stds = [s for s in (a["AUC_std"], b["AUC_std"]) if s is not None]
    return bool(stds) and abs(b["AUC_mean"] - a["AUC_mean"]) < max(stds)


def fm_vs_vm_lines(fm_cells: list[dict], vm_cells: list[dict]) -> list[str]:
    """Does each FM's AUC beat every VM it supervises (same dataset, teacher, round)?"""
    lines = []
    for f in fm_cells:
        match = [v for v in vm_cells
                 if (v["dataset"], v["data_source"], v["teacher"], v["round"]) ==
                 (f["dataset"], f["data_source"], f["teacher"], f["round"])
                 and (f["domain"] is None or v["domain"] == f["domain"])
                 and (f["task"] is None or v["task"] == f["task"])]
        what = f"FM {f['teacher']} ({f['dataset']}, round {f['round']}" + (
            f", task {f['task']}" if f["task"] else "") + (f", domain {f['domain']}" if f["domain"] else "") + ")"
        if not match:
            lines.append(f"- {what}: AUC {_f(f['AUC_mean'])}; no VM cell to compare with.")
            continue
        best = max(match, key=lambda v: v["AUC_mean"])
        beats = f["AUC_mean"] > best["AUC_mean"]
        lines.append(f"- {what}: AUC {_f(f['AUC_mean'])} vs best VM {_f(best['AUC_mean'])} "
                     f"({best['student']}/{best['method']}): the FM "
                     f"{'beats every VM' if beats else 'does not beat every VM'}.")
    return lines


def _fm_table(fm_cells: list[dict]) -> list[str]:
    headers = ["dataset", "teacher", "round", "train day", "test day", "task", "domain", "n", "AUC", "LogLoss",
               "NE", "calibration", "BARS AUC", "BARS LogLoss"]
    rows = [[c["dataset"], c["teacher"], c["round"], _f(c["train_day"], 0) if c["train_day"] is not None else "—",
             _f(c["test_day"], 0) if c["test_day"] is not None else "—", c["task"] or "—", c["domain"] or "—",
             c["n_seeds"], _pm(c["AUC_mean"], c["AUC_std"]), _pm(c["logloss_mean"], c["logloss_std"]),
             _pm(c["NE_mean"], c["NE_std"]), _pm(c["calibration_mean"], c["calibration_std"]),
             _f(c["bars_auc"]), _f(c["bars_logloss"])] for c in fm_cells]
    return _md_table(headers, rows)


def _bars_table(vm_cells: list[dict], fm_cells: list[dict], refs: _References) -> list[str]:
    """BARS' full-data single-model numbers next to our `none` VMs and our FMs."""
    rows, seen = [], set()
    for c in vm_cells + fm_cells:
        model = c["student"] if c["kind"] == "vm" else c["teacher"]
        if c["kind"] == "vm" and c["method"] != "none":
            continue
        key = (c["dataset"], c["kind"], model)
        if key in seen:
            continue
        seen.add(key)
        ours = [x["AUC_mean"] for x in (vm_cells if c["kind"] == "vm" else fm_cells)
                if x["dataset"] == c["dataset"] and (x["student"] if c["kind"] == "vm" else x["teacher"]) == model
                and (c["kind"] == "fm" or x["method"] == "none")]
        ba, bl, _ = refs.bars_for(c["dataset"], model)
        rows.append([BARS_DATASET.get(c["dataset"], c["dataset"]), model,
                     "VM (`none`)" if c["kind"] == "vm" else "FM", _f(ba), _f(bl),
                     _f(sum(ours) / len(ours)) if ours else "—"])
    if not rows:
        return []
    return ["BARS leaderboard (each model alone, full data) beside our mean AUC over rounds and teachers:", ""] + \
        _md_table(["BARS dataset", "model", "role", "BARS AUC", "BARS LogLoss", "our AUC"], rows)


def _table23_section(cells: list[dict], refs: _References) -> list[str]:
    vm = [c for c in cells if c["kind"] == "vm"]
    fm = [c for c in cells if c["kind"] == "fm"]
    out = []
    if vm:
        out += _cells_table(vm, [], with_paper=True) + [""]
        out += ordering_lines(vm) + [""]
    else:
        out += ["No VM cell finished in this grid.", ""]
    if fm:
        out += ["FM (teacher) AUC per teacher and round:", ""] + _fm_table(fm) + [""]
        out += fm_vs_vm_lines(fm, vm) + [""]
    else:
        out += ["No FM record in this grid.", ""]
    out += _bars_table(vm, fm, refs)
    return out + [""]


def _split_section(cells: list[dict], by: str, label: str) -> list[str]:
    """Tables 4/5: one FM, one VM per domain/task; `none` vs `ah_sa` per domain/task."""
    vm = [c for c in cells if c["kind"] == "vm"]
    fm = [c for c in cells if c["kind"] == "fm"]
    out = _cells_table(vm, [by], with_paper=True) + [""] if vm else ["No VM cell finished in this grid.", ""]
    summary: dict[tuple, dict[str, dict]] = {}
    for c in vm:
        if c["method"] in ("none", "ah_sa") and _is_default_scales(c):
            summary.setdefault((c["dataset"], c["teacher"], c["student"], c["round"], c[by]), {})[c["method"]] = c
    won = [k for k, v in summary.items() if len(v) == 2 and v["ah_sa"]["AUC_mean"] > v["none"]["AUC_mean"]]
    both = [k for k, v in summary.items() if len(v) == 2]
    if both:
        out += [f"`ah_sa` beats `none` in AUC in {len(won)} of {len(both)} {label}(s) "
                f"(the paper: in all of them).", ""]
    if fm:
        out += ["FM (teacher):", ""] + _fm_table(fm) + [""] + fm_vs_vm_lines(fm, vm) + [""]
    return out


def _generic_section(cells: list[dict]) -> list[str]:
    vm = [c for c in cells if c["kind"] == "vm"]
    fm = [c for c in cells if c["kind"] == "fm"]
    out = []
    if vm:
        extra = [k for k in ("fm_frozen_after_day", "fm_staleness_days", "domain", "task")
                 if any(c[k] is not None for c in vm)]
        out += _cells_table(vm, extra, with_paper=False) + [""]
    if fm:
        out += ["FM (teacher):", ""] + _fm_table(fm) + [""]
    return out


def _failed_section(records: pl.DataFrame) -> list[str]:
    failed = records.filter(pl.col("status") == "failed")
    out = ["## Failed cells", ""]
    if failed.is_empty():
        return out + ["None.", ""]
    rows = []
    for r in failed.iter_rows(named=True):
        err = (r["error"] or "").strip().replace("\n", " ")
        err = err if len(err) <= 300 else err[:297] + "..."
        rows.append([r["grid"], r["cell_id"], r["kind"], r["dataset"], r["teacher"], r["student"] or "—",
                     r["method"] or "—", _scale_label(r) if r["kind"] == "vm" else "—", r["seed"], r["round"], err])
    return out + [f"{failed.height} cell(s) failed; they are left out of every mean above.", ""] + _md_table(
        ["grid", "cell_id", "kind", "dataset", "teacher", "student", "method", "LS/GS/LW", "seed", "round", "error"],
        rows) + [""]


# ----------------------------------------------------------------------------- figures

def _new_figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _plot_fig9(ok: pl.DataFrame, path: Path, title: str) -> bool:
    """VM AUC gain over `none` against FM staleness, `ah` (w/o SA) vs `ah_sa` (w/ SA)."""
    rows = [r for r in ok.iter_rows(named=True)
            if r["kind"] == "vm" and r["method"] in ("ah", "ah_sa") and r["auc_gain_pct"] is not None]
    if not rows:
        return False
    from matplotlib.ticker import MaxNLocator

    use_staleness = any(r["fm_staleness_days"] is not None for r in rows)
    xcol = "fm_staleness_days" if use_staleness else "fm_frozen_after_day"
    xlabel = "FM staleness (days)" if use_staleness else "FM frozen after day"
    fig, axes = _new_figure(2)
    ax = axes[0][0]
    for method, name in (("ah", "w/o SA (ah)"), ("ah_sa", "w/ SA (ah_sa)")):
        pts: dict[int, list[float]] = {}
        for r in rows:
            if r["method"] == method and r[xcol] is not None:
                pts.setdefault(r[xcol], []).append(r["auc_gain_pct"])
        if pts:
            xs = sorted(pts)
            ms = [_mean_std(pts[x]) for x in xs]
            ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=name)
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("VM AUC gain over none (%)")
    ax.set_title("gain vs FM staleness")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    series: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        x = r["test_day"] if r["test_day"] is not None else r["round"]
        if x is None:
            continue
        mode = "FM fresh" if r["fm_frozen_after_day"] is None else f"FM frozen after day {r['fm_frozen_after_day']}"
        series.setdefault((mode, r["method"]), {}).setdefault(x, []).append(r["auc_gain_pct"])
    for (mode, method), pts in sorted(series.items()):
        xs = sorted(pts)
        ms = [_mean_std(pts[x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o" if method == "ah_sa" else "s",
                    ls="-" if method == "ah_sa" else "--", capsize=3,
                    label=f"{mode}, {'w/ SA' if method == 'ah_sa' else 'w/o SA'}")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("VM test day")
    ax.set_ylabel("VM AUC gain over none (%)")
    ax.set_title("gain per test day")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return True


SWEEPS = (("loss_weight", "LW (w)", ("label_scale", "grad_scale")),
          ("label_scale", "LS (alpha)", ("loss_weight", "grad_scale")),
          ("grad_scale", "GS (beta)", ("label_scale", "loss_weight")))


def sweep_rows(ok: pl.DataFrame) -> list[dict]:
    """Records of the LW/LS/GS sweeps: method ah/ah_sa with at least two of the three scales at 1."""
    out = []
    for r in ok.iter_rows(named=True):
        if r["kind"] != "vm" or r["method"] not in ("ah", "ah_sa"):
            continue
        if sum(r[k] == 1.0 for k in ("label_scale", "grad_scale", "loss_weight")) >= 2:
            out.append(r)
    return out


def _plot_sweeps(ok: pl.DataFrame, path: Path, title: str) -> bool:
    """Figures 10-11: AUC (and NE where recorded) against LW, LS and GS, the other two at 1."""
    rows = sweep_rows(ok)
    if not rows:
        return False
    none_auc = [r["AUC"] for r in ok.iter_rows(named=True) if r["kind"] == "vm" and r["method"] == "none"]
    none_ne = [r["NE"] for r in ok.iter_rows(named=True)
               if r["kind"] == "vm" and r["method"] == "none" and r["NE"] is not None]
    metrics = [("AUC", none_auc)] + ([("NE", none_ne)] if any(r["NE"] is not None for r in rows) else [])
    fig, axes = _new_figure(3, len(metrics))
    for j, (col, xlabel, fixed) in enumerate(SWEEPS):
        for i, (metric, base) in enumerate(metrics):
            ax = axes[i][j]
            for method in ("ah", "ah_sa"):
                pts: dict[float, list[float]] = {}
                for r in rows:
                    if r["method"] == method and all(r[k] == 1.0 for k in fixed) and r[metric] is not None:
                        pts.setdefault(r[col], []).append(r[metric])
                if pts:
                    xs = sorted(pts)
                    ms = [_mean_std(pts[x]) for x in xs]
                    ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                                label=method)
            if base:
                ax.axhline(statistics.fmean(base), color="grey", ls=":", lw=1, label="none")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (others = 1)")
            ax.set_ylabel(f"VM {metric}")
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return True


def _plot_fig12(ok: pl.DataFrame, path: Path, title: str) -> bool:
    """Figure 12: AUC gain over `none` per (LS, GS, LW) triple, one bar group per method."""
    rows = [r for r in ok.iter_rows(named=True)
            if r["kind"] == "vm" and r["method"] != "none" and r["auc_gain_pct"] is not None]
    if not rows:
        return False
    triples = sorted({(r["label_scale"], r["grad_scale"], r["loss_weight"]) for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = _new_figure(1, width=max(5.0, 0.9 * len(triples) * max(1, len(methods)) + 2.0), height=4.0)
    ax = axes[0][0]
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        means, stds = [], []
        for t in triples:
            vals = [r["auc_gain_pct"] for r in rows
                    if r["method"] == m and (r["label_scale"], r["grad_scale"], r["loss_weight"]) == t]
            mu, sd = _mean_std(vals) if vals else (float("nan"), 0.0)
            means.append(mu)
            stds.append(sd)
        ax.bar([i + (k - (len(methods) - 1) / 2) * width for i in range(len(triples))], means, width,
               yerr=stds, capsize=3, label=m)
    ax.set_xticks(range(len(triples)))
    ax.set_xticklabels([f"LS={a:g}\nGS={b:g}\nLW={c:g}" for a, b, c in triples], fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("VM AUC gain over none (%)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    return True


def _plot_calibration(ok: pl.DataFrame, path: Path, title: str) -> bool:
    """Reliability plot per method: the i-th prediction-quantile bins pooled over records, count-weighted."""
    pooled: dict[str, dict[int, list[float]]] = {}
    for r in ok.iter_rows(named=True):
        if not r["calibration_bins"]:
            continue
        name = r["method"] if r["kind"] == "vm" else f"FM {r['teacher']}"
        for i, b in enumerate(json.loads(r["calibration_bins"])):
            if len(b) < 3 or not b[2]:
                continue
            acc = pooled.setdefault(name, {}).setdefault(i, [0.0, 0.0, 0.0])
            acc[0] += b[0] * b[2]
            acc[1] += b[1] * b[2]
            acc[2] += b[2]
    if not pooled:
        return False
    fig, axes = _new_figure(1, width=5.0, height=4.6)
    ax = axes[0][0]
    hi = 0.0
    order = [m for m in METHODS if m in pooled] + sorted(k for k in pooled if k not in METHODS)
    for name in order:
        bins = [pooled[name][i] for i in sorted(pooled[name])]
        xs = [b[0] / b[2] for b in bins]
        ys = [b[1] / b[2] for b in bins]
        hi = max(hi, *xs, *ys)
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    hi = hi * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], color="grey", ls=":", lw=1, label="ideal")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("mean prediction (per prediction-quantile bin)")
    ax.set_ylabel("mean label")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    return True


def _figure_prefix(grid: str) -> str:
    return SMOKE_PREFIX if grid.startswith(SMOKE_PREFIX) else ""


def _draw_figures(ok: pl.DataFrame, grids: list[str], out_dir: Path,
                  paths: ReportPaths) -> dict[str, list[str]]:
    """Draw every figure whose records exist; returns markdown lines per grid."""
    notes: dict[str, list[str]] = {g: [] for g in grids}
    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
        log.warning("matplotlib is not installed: no figures (pip install 'exfm[plots]')")
    plotters = {"fig9": _plot_fig9, "fig10_11": _plot_sweeps, "fig12": _plot_fig12}
    figure_grids = {grid_shape(g) for g in grids}
    for shape in ("fig9", "fig10_11", "fig12"):
        if shape not in figure_grids:
            name = FIGURE_FILES[shape]
            paths.missing_figures[name] = f"no records of grid {shape} (or {SMOKE_PREFIX}{shape})"
    for g in grids:
        g_ok = ok.filter(pl.col("grid") == g)
        shape = grid_shape(g)
        todo = []
        if shape in plotters:
            todo.append((_figure_prefix(g) + FIGURE_FILES[shape], plotters[shape],
                         f"{FIGURE_TITLES[shape]} ({g})"))
        todo.append((f"calibration_{g}.png", _plot_calibration, f"Reliability per method ({g})"))
        for name, plot, title in todo:
            target = out_dir / name
            if target.exists():
                target.unlink()  # a stale figure from an older run must not outlive its records
            if not have_mpl:
                drawn, why = False, "matplotlib is not installed"
            else:
                drawn = plot(g_ok, target, title) if not g_ok.is_empty() else False
                why = "no calibration_bins in its records" if plot is _plot_calibration else \
                    "no ok records it can plot (needs non-`none` methods with a `none` baseline)"
            if drawn:
                paths.figures[name] = target
                notes[g].append(f"- `{name}`: {title}")
            else:
                paths.missing_figures[name] = why
                notes[g].append(f"- `{name}`: not drawn — {why}.")
    return notes


# ----------------------------------------------------------------------------- report

GRID_TITLES = {"table2": "Table 2 shape: TaobaoAd, teacher × student × method",
               "table3": "Table 3 shape: Amazon Electronics, teacher × student × method",
               "table4": "Table 4 shape: one shared FM, one VM per domain",
               "table5": "Table 5 shape: one multi-task FM, one VM per task",
               "fig9": "Figure 9: FM staleness, with and without SA",
               "fig12": "Figure 12: joint LS / GS / LW grid",
               "fig10_11": "Figures 10-11: LW / LS and GS sweeps"}


def _grid_order(grids: Iterable[str]) -> list[str]:
    def key(g: str) -> tuple:
        shape = grid_shape(g)
        return (g.startswith(SMOKE_PREFIX), KNOWN_GRIDS.index(shape) if shape in KNOWN_GRIDS else 99, g)
    return sorted(set(grids), key=key)


def _resolve_reference_dir(reference_dir: str | Path) -> Path:
    p = Path(reference_dir)
    if p.exists() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[2] / p  # the checkout's benchmarks/reference
    return repo if repo.exists() else p


def build_report(records_paths: str | Path | Sequence[str | Path], out_dir: str | Path = "results",
                 reference_dir: str | Path = "benchmarks/reference") -> ReportPaths:
    """Write leaderboard.md, leaderboard.csv, records.csv and the figures into ``out_dir``.

    Reads the records (see :func:`load_records`), aggregates cells over seeds, joins the
    paper's and BARS' reference numbers and draws the figures whose records exist. Returns
    the paths written and, for every figure not drawn, the reason.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, n_dup = _load(records_paths)
    refs = _References.load(_resolve_reference_dir(reference_dir))
    cells = aggregate(records)
    if not cells.is_empty():
        cells = _add_references(cells, refs)
    paths = ReportPaths(out_dir=out, markdown=out / "leaderboard.md", leaderboard_csv=out / "leaderboard.csv",
                        records_csv=out / "records.csv")

    records.write_csv(paths.records_csv)
    if cells.is_empty():
        pl.DataFrame({k: [] for k in CELL_KEY}).write_csv(paths.leaderboard_csv)
    else:
        cells.write_csv(paths.leaderboard_csv)

    ok = records.filter(pl.col("status") == "ok")
    ok = _with_gains(ok) if not ok.is_empty() else ok.with_columns(pl.lit(None, pl.Float64).alias("auc_gain_pct"))
    grids = _grid_order(records["grid"].to_list())
    fig_notes = _draw_figures(ok, grids, out, paths)

    lines = _header(records, cells, n_dup, refs)
    all_cells = cells.to_dicts() if not cells.is_empty() else []
    for g in grids:
        shape = grid_shape(g)
        g_cells = [c for c in all_cells if c["grid"] == g]
        title = GRID_TITLES.get(shape, f"Grid {g} (not a grid this report knows: plain table)")
        lines += [f"## {g} — {title}", ""]
        if not g_cells:
            lines += ["No cell of this grid finished (see failed cells).", ""]
        elif shape in ("table2", "table3"):
            lines += _table23_section(g_cells, refs)
        elif shape == "table4":
            lines += ["Our domains 0/1/2 are matched to the paper's domains 1/2/3 by position.", ""]
            lines += _split_section(g_cells, "domain", "domain")
        elif shape == "table5":
            lines += ["Our tasks is_click/is_like/is_follow are the paper's click/like/follow.", ""]
            lines += _split_section(g_cells, "task", "task")
        else:
            lines += _generic_section(g_cells)
        lines += [f"Figures for {g}:", ""] + fig_notes[g] + [""]

    lines += ["## Figures", ""]
    for name, p in sorted(paths.figures.items()):
        lines.append(f"- `{name}` ![{name}]({p.name})")
    for name, why in sorted(paths.missing_figures.items()):
        lines.append(f"- `{name}`: missing — {why}.")
    lines.append("")
    lines += _failed_section(records)
    paths.markdown.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("report: %s (%d cells, %d figures)", paths.markdown, len(all_cells), len(paths.figures))
    return paths


# ----------------------------------------------------------------------------- CLI

def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``exfm report --records PATH [PATH ...] --out DIR`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "report", help="records.jsonl -> leaderboard.md / CSV / figures",
        description="Aggregate the pipeline's result records over seeds, put the paper's and BARS' "
                    "numbers beside them and draw Figures 9-12 where their records exist.")
    p.add_argument("--records", nargs="+", required=True, metavar="PATH",
                   help="records.jsonl file(s), or result directories holding one; later ones win per cell_id")
    p.add_argument("--out", default="results", metavar="DIR", help="output directory (default: results)")
    p.add_argument("--reference", default="benchmarks/reference", metavar="DIR",
                   help="directory with the paper's table*.csv and bars_leaderboard.csv")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """CLI body of ``exfm report``: 0 on success, 2 on a bad or missing records file."""
    import sys

    try:
        paths = build_report(args.records, args.out, getattr(args, "reference", "benchmarks/reference"))
    except (RecordError, FileNotFoundError) as e:
        print(f"exfm report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths.markdown}, {paths.leaderboard_csv}, {paths.records_csv}")
    for name in sorted(paths.figures):
        print(f"wrote {paths.figures[name]}")
    for name, why in sorted(paths.missing_figures.items()):
        print(f"skipped {name}: {why}")
    return 0
