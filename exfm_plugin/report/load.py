"""Read result records (JSONL, schema version 2) into one flat polars table.

Each line is checked by :func:`exfm_plugin.contracts.records.validate_record`; a line that fails
raises :class:`RecordError` naming file and line, rather than being skipped: a silently dropped
cell would bias the means. The last record of a ``cell_id`` wins (a retried cell replaces its
old record), and a torn last line (a run killed mid-append) is skipped with a warning.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from ..contracts.records import RecordError, validate_record

log = logging.getLogger(__name__)

METRICS = ("AUC", "logloss", "NE", "calibration", "gAUC")
THROUGHPUT = ("train_samples_per_s", "eval_samples_per_s", "wall_time_s")
ORACLE_COLUMNS = tuple(f"oracle_{m}" for m in METRICS)


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
    "vm_schedule": pl.String, "embedding_update": pl.String,
    "feature_gap": pl.String,  # comma-joined, "" for none
    "hparams": pl.String,  # the student hyperparameters a tuner_space crossed, as "k=v, ..."; "" for none
    "train_rows": pl.Int64, "ne_base_rate": pl.Float64,
    **{m: pl.Float64 for m in METRICS},
    "constant_logloss": pl.Float64, "constant_NE": pl.Float64,
    **{f"oracle_{m}": pl.Float64 for m in METRICS},  # the world's truth on the same rows (synthetic)
    "world_drift": pl.Float64, "world_domain_shift": pl.Float64,  # the synthetic world's dials
    "data_seed": pl.Int64,  # which synthetic world (null on real data)
    "vm_artifact": pl.String,  # the evaluated VM link's artifact key: one training run, however many grids name it
    "calibration_bins": pl.String,  # JSON text: [[mean_pred, mean_label, count], ...]
    "data_size": pl.String, "outputs_dir": pl.String,  # the grid's size; the cell's folder under its results
    "train_curve": pl.String,  # JSON text: [{day, pass, passes, method, rows, seconds, <loss terms>}, ...]
    **{t: pl.Float64 for t in THROUGHPUT},
}
_COPIED = [k for k in SCHEMA if k not in ("source_file", "source_line", "feature_gap", "hparams", "calibration_bins",
                                          "constant_logloss", "constant_NE", "data_size", "train_curve", *METRICS,
                                          "vm_artifact", *ORACLE_COLUMNS, "world_drift", "world_domain_shift")]


def flatten(rec: dict[str, Any], path: Path | str, lineno: int) -> dict[str, Any]:
    """One validated record as a row of :data:`SCHEMA` (metrics and constant become columns)."""
    metrics = rec.get("metrics") or {}
    constant = rec.get("constant") or {}
    row = {k: rec.get(k) for k in _COPIED}
    bins = rec.get("calibration_bins")
    row.update({"source_file": str(path), "source_line": lineno, "feature_gap": ",".join(rec["feature_gap"]),
                "hparams": ", ".join(f"{k}={v}" for k, v in sorted((rec.get("hparams") or {}).items())),
                "calibration_bins": json.dumps(bins) if bins else None,
                "data_size": None if rec.get("data_size") is None else str(rec["data_size"]),
                "train_curve": json.dumps(rec["train_curve"]) if rec.get("train_curve") else None,
                "constant_logloss": constant.get("logloss"), "constant_NE": constant.get("NE")})
    row.update({m: metrics.get(m) for m in METRICS})
    oracle = rec.get("oracle") or {}
    row.update({f"oracle_{m}": oracle.get(m) for m in METRICS})
    row["vm_artifact"] = Path(rec["vm_artifact"]).name if rec.get("vm_artifact") else None
    world = rec.get("world") or {}
    row.update({"world_drift": world.get("drift"), "world_domain_shift": world.get("domain_shift")})
    return row


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """A directory stands for its ``records.jsonl`` or, as ``exfm run`` writes them, every
    ``*.jsonl`` in it and in its ``records/`` folder (sorted)."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
        elif (p / "records.jsonl").exists():
            out.append(p / "records.jsonl")
        else:
            out.extend(sorted(p.glob("*.jsonl")) + sorted((p / "records").glob("*.jsonl")))
    return out


def _lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.exists():
        raise FileNotFoundError(f"records file not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == last:  # a run killed mid-append leaves a torn last line (RecordWriter)
                log.warning("%s:%d: skipping a torn last line (not valid JSON: %s)", path, lineno, e.msg)
                continue
            raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        try:
            yield lineno, validate_record(rec)
        except RecordError as e:
            raise RecordError(f"{path}:{lineno}: {e}") from None


def load_with_duplicates(paths: str | Path | Sequence[str | Path]) -> tuple[pl.DataFrame, int]:
    """The de-duplicated records table and how many lines a later record of their cell replaced."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: dict[str, dict] = {}
    n_lines = 0
    for path in expand_paths(paths):
        for lineno, rec in _lines(path):
            n_lines += 1
            rows.pop(rec["cell_id"], None)  # re-insert: the row order is that of the last record
            rows[rec["cell_id"]] = flatten(rec, path, lineno)
    n_dup = n_lines - len(rows)
    if n_dup:
        log.info("records: %d lines, %d duplicate cell_id(s) replaced by their last record", n_lines, n_dup)
    if not rows:
        return pl.DataFrame(schema=SCHEMA), n_dup
    return pl.DataFrame(list(rows.values()), schema=SCHEMA, orient="row"), n_dup


def load_records(paths: str | Path | Sequence[str | Path]) -> pl.DataFrame:
    """Read records files into one flat table (see the module docstring), the last record of a
    cell_id winning. Metrics become columns (``AUC``, ``logloss``, ``NE``, ``calibration``,
    ``gAUC``), the constant predictor ``constant_logloss``/``constant_NE``; ``calibration_bins``
    stays JSON text so the table can be written as CSV."""
    return load_with_duplicates(paths)[0]
