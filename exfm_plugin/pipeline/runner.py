"""``exfm run``: a grid's records through the streaming protocol, in this process, resumable.

Round r: the FM has trained through day 4+r (or stopped at its freeze day), DAS labels day
5+r with that snapshot, each VM trains on day 5+r with its method and is evaluated on day 6+r.
The grid is planned once (:mod:`.plan`: every step, its inputs and its key); this engine then
walks the records in order and builds each record's steps, dependencies first, through the
content-addressed store (:mod:`.artifacts`: a step done by an earlier run or another record is
read, not rebuilt). A record is appended (one fsync'd line) as soon as its steps are done, so a
run stopped by Ctrl-C or a crash restarts where it was, and a failed step fails the records that
need it without stopping the others.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .artifacts import ArtifactStore
from .cell_outputs import write_cell_outputs
from .context import Context
from .evaluation import oracle_metrics
from .grid import Cell, Grid, GridError
from .jobs import cell_id, describe_job, grid_jobs
from .logging_run import metrics_line, run_log, run_logging
from .plan import GridPlan, RecordPlan, plan_grid
from .prep_steps import PreparedData, prepare_data
from .records import RecordWriter
from .steps import run_step

logger = logging.getLogger(__name__)
ARTIFACT_KEYS = {"kind", "key", "spec"}  # an artifact's bookkeeping, not a measurement


@dataclass
class RunSummary:
    grid: str
    records_path: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def check_device(device: str) -> None:
    """Refuse a device that does not exist before any work starts."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise GridError(f"--device {device!r}: expected 'cpu' or 'cuda:N'")
    index = int(device.split(":")[1]) if ":" in device else 0
    if not torch.cuda.is_available():
        raise GridError(f"--device {device!r}: CUDA is not available on this machine")
    if index >= torch.cuda.device_count():
        raise GridError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")


def record_base(grid: Grid, prep: PreparedData, cell: Cell, kind: str) -> dict:
    """A record's fields that describe the cell (before anything is measured)."""
    return {
        "kind": kind, "grid": grid.name, "dataset": grid.dataset, "data_source": grid.effective_source,
        "split_note": prep.split_note, "round": cell.round, "train_day": cell.train_day, "test_day": cell.test_day,
        "teacher": cell.teacher, "student": cell.student if kind == "vm" else None,
        "method": cell.method if kind == "vm" else None,
        "label_scale": cell.label_scale, "grad_scale": cell.grad_scale, "loss_weight": cell.loss_weight,
        "distill": dict(cell.distill), "seed": cell.seed, "domain": cell.domain, "task": cell.task,
        "fm_frozen_after_day": cell.fm_frozen_after_day,
        "fm_staleness_days": cell.train_day - 1 - cell.fm_through_day,
        "vm_schedule": cell.vm_schedule, "feature_gap": list(cell.feature_gap),
        "world": grid.world.model_dump() if grid.effective_source == "synthetic" else None,
        "data_seed": grid.data_seed if grid.effective_source == "synthetic" else None,
        **({"hparams": dict(cell.hparams)} if cell.hparams and kind == "vm" else {}),
    }


def record_fields(ctx: Context, record: RecordPlan, meta: dict[str, Any]) -> dict[str, Any]:
    """A record's measured fields: its step's output ``meta`` (less the artifact's bookkeeping),
    the FM snapshot that supervised it, the oracle row of its test day (synthetic data; once per
    process) and, for an FM record, the FM's training options."""
    path = record.test_file
    oracle = ctx.memo(("oracle", os.path.abspath(path), record.label, record.base_rate),
                      lambda: oracle_metrics(path, record.label, record.base_rate))
    fields = {**meta, "snapshot_id": record.snapshot_id, "oracle": oracle, **record.extra}
    return {k: v for k, v in fields.items() if k not in ARTIFACT_KEYS}


def run_record(ctx: Context, plan: GridPlan, record: RecordPlan, failed: dict[str, BaseException],
               finished: set[str]) -> dict[str, Any]:
    """Build ``record``'s steps not built yet (dependencies first) and return its measured fields.
    ``failed`` (key -> error) and ``finished`` (keys) carry over between the records of one run:
    a step that failed fails every record that needs it, without a second attempt."""
    if record.error is not None:
        raise record.error
    steps = plan.closure(record)
    for step in steps:
        if step.key in failed:
            raise failed[step.key]
        if step.key in finished and step is not steps[-1]:
            continue
        try:
            built, _ = run_step(ctx, step)
        except Exception as exc:  # noqa: BLE001 - remembered for the other records, then raised
            failed[step.key] = exc
            raise
        finished.add(step.key)
    return record_fields(ctx, record, built.meta)


def run_grid(grid: Grid, work_dir: str = "work", results_dir: str = "results", *, device: str = "cpu",
             das_engine: str = "inproc", progress: bool = True, follow: bool = True) -> RunSummary:
    """Run every cell of ``grid`` not yet recorded, in this process; returns counts and the
    records path. ``das_engine``: how DAS steps run FM inference (``inproc`` or ``ray``).
    Each cell's lines go to ``<results_dir>/logs/<grid>.log`` and, with ``follow``, the console."""
    check_device(device)
    if das_engine not in ("inproc", "ray"):
        raise GridError(f"--das-engine {das_engine!r}: expected 'inproc' or 'ray'")
    start = time.perf_counter()
    ctx = Context(grid, ArtifactStore(Path(work_dir) / "artifacts"), device, das_engine, progress)
    writer = RecordWriter(Path(results_dir) / "records" / f"{grid.name}.jsonl")
    summary = RunSummary(grid.name, str(writer.path))
    done = writer.done_cells()
    jobs = grid_jobs(grid)
    with run_logging(results_dir, grid.name, console=follow) as log_path:
        run_log.info("grid %s: %s %s, %s -> %s (log %s)", grid.name, grid.dataset, grid.effective_source,
                     grid.path, writer.path, log_path)
        if all(cell_id(grid, cell) in done for _, cell in jobs):  # resumed after the end: no data prepared
            summary.skipped = len(jobs)
            run_log.info("grid %s: all %d cells already done", grid.name, len(jobs))
            summary.seconds = time.perf_counter() - start
            return summary
        prep = prepare_data(ctx)
        plan = plan_grid(ctx, prep, jobs)
        failed: dict[str, BaseException] = {}
        finished: set[str] = set()
        for record in tqdm(plan.records, desc=f"grid {grid.name}", unit="cell", disable=not progress):
            kind, cell, cid = record.kind, record.cell, record.cell_id
            if cid in done:
                summary.skipped += 1
                continue
            base = {**record_base(grid, prep, cell, kind), "cell_id": cid, "config_hash": cid}
            cell_start = time.perf_counter()
            run_log.info("%s cell %s: %s", kind.upper(), cid, describe_job(kind, cell))
            try:
                measured = run_record(ctx, plan, record, failed, finished)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the others go on
                logger.error("cell %s failed", cid, exc_info=exc)
                error = f"{type(exc).__name__}: {exc}"
                run_log.error("%s cell %s failed: %s", kind.upper(), cid, error)
                writer.append({**base, "status": "failed", "error": error})
                summary.failed += 1
                summary.failures.append(f"{kind} {cell.teacher}/{cell.student or '-'}/{cell.method}: {error}")
                continue
            run_log.info("%s cell %s %s", kind.upper(), cid, metrics_line(measured.get("metrics") or {}))
            measured.update(write_cell_outputs(results_dir, grid, {**base, **measured}, ctx.store, log_path))
            writer.append({**base, **measured, "status": "ok", "error": None,
                           "wall_time_s": time.perf_counter() - cell_start})
            summary.ok += 1
        run_log.info("grid %s: %d cells ok, %d failed, %d already done", grid.name, summary.ok, summary.failed,
                     summary.skipped)
    summary.seconds = time.perf_counter() - start
    return summary
