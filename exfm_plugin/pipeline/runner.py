"""``exfm run``: a grid's cells through the streaming protocol, resumable, one record per cell.

Round r: the FM has trained through day 4+r (or stopped at its freeze day), DAS labels day
5+r with that snapshot, each VM trains on day 5+r with its method and is evaluated on day 6+r.
Steps are content-addressed (:mod:`.artifacts`), records are appended one fsync'd line per cell,
so a run stopped by Ctrl-C or a crash restarts where it was, and a failed cell is recorded as
failed without stopping the others.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .artifacts import ArtifactStore, step_key
from .grid import Cell, Grid, GridError
from .records import RecordWriter
from .stages import (Context, PreparedData, all_labels, das_stage, day_label_mean, domain_day_file, fm_eval_stage,
                     fm_stage, prep_stage, vm_stage)

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


def cell_id(grid: Grid, cell: Cell) -> str:
    return step_key("cell", {"grid": grid.name, **cell.__dict__})


def _unit_files(ctx: Context, prep: PreparedData, cell: Cell, day: int) -> tuple[str, str]:
    """(this VM's day file, the VM's name in the DAS job)."""
    if cell.domain is not None:
        return domain_day_file(ctx, prep, day, cell.domain), f"domain_{cell.domain}"
    if cell.task is not None:
        return prep.day_file(day), f"task_{cell.task}"
    return prep.day_file(day), "vm"


def _day_vms(ctx: Context, prep: PreparedData, day: int) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """Every VM that trains on ``day`` in this grid's mode: DAS serves them in one job."""
    grid = ctx.grid
    if grid.mode == "domains":
        return {f"domain_{d}": (domain_day_file(ctx, prep, day, d), None) for d in grid.domains}
    if grid.mode == "tasks":
        return {f"task_{t}": (prep.day_file(day), (t,)) for t in grid.tasks}
    return {"vm": (prep.day_file(day), None)}


def _label(prep: PreparedData, cell: Cell) -> str:
    return cell.task if cell.task is not None else all_labels(prep)[0]


def run_cell(ctx: Context, prep: PreparedData, cell: Cell) -> dict:
    """Train and evaluate one VM cell; returns the record's measured fields."""
    label = _label(prep, cell)
    train_file, vm_name = _unit_files(ctx, prep, cell, cell.train_day)
    test_file, _ = _unit_files(ctx, prep, cell, cell.test_day)
    fm = None
    if cell.method == "none":
        fm_column, train_key = None, os.path.abspath(train_file)
    else:
        fm = fm_stage(ctx, prep, cell.teacher, cell.seed, cell.fm_through_day)
        splits = das_stage(ctx, fm, cell.train_day, _day_vms(ctx, prep, cell.train_day))
        train_file, train_key = splits[vm_name], f"{fm.key}/{cell.train_day}/{vm_name}"
        fm_column = f"fm_pred/{label}" if cell.teacher == "MultiTaskDMIN" else "fm_pred"
    result = vm_stage(ctx, prep, cell, train_file, test_file, label, fm_column, train_key)
    return {**result, "snapshot_id": fm.snapshot_id if fm else None}


def run_fm_record(ctx: Context, prep: PreparedData, cell: Cell) -> dict:
    """The FM's metrics on the cell's test day (its domain's rows, its task's label)."""
    label = _label(prep, cell)
    test_file, _ = _unit_files(ctx, prep, cell, cell.test_day)
    fm = fm_stage(ctx, prep, cell.teacher, cell.seed, cell.fm_through_day)
    train_mean = sum(day_label_mean(prep.day_file(d), label) for d in range(1, fm.through_day + 1)) / fm.through_day
    return {**fm_eval_stage(ctx, fm, test_file, label, train_mean), "snapshot_id": fm.snapshot_id}


def _record_base(grid: Grid, prep: PreparedData, cell: Cell, kind: str) -> dict:
    return {
        "kind": kind, "grid": grid.name, "dataset": grid.dataset, "data_source": grid.effective_source,
        "split_note": prep.split_note, "round": cell.round, "train_day": cell.train_day, "test_day": cell.test_day,
        "teacher": cell.teacher, "student": cell.student if kind == "vm" else None,
        "method": cell.method if kind == "vm" else None,
        "label_scale": cell.label_scale, "grad_scale": cell.grad_scale, "loss_weight": cell.loss_weight,
        "distill": dict(cell.distill), "seed": cell.seed, "domain": cell.domain, "task": cell.task,
        "fm_frozen_after_day": cell.fm_frozen_after_day,
        "fm_staleness_days": cell.train_day - 1 - cell.fm_through_day,
    }


def run_grid(grid: Grid, work_dir: str = "work", results_dir: str = "results", *, device: str = "cpu",
             engine: str = "inproc", progress: bool = True) -> RunSummary:
    """Run every cell of ``grid`` not yet recorded; returns counts and the records path."""
    check_device(device)
    if engine not in ("inproc", "ray"):
        raise GridError(f"--engine {engine!r}: expected 'inproc' or 'ray'")
    start = time.perf_counter()
    ctx = Context(grid, ArtifactStore(Path(work_dir) / "artifacts"), device, engine, progress)
    writer = RecordWriter(Path(results_dir) / "records" / f"{grid.name}.jsonl")
    summary = RunSummary(grid.name, str(writer.path))
    done = writer.done_cells()
    from .grid import expand_cells

    cells = expand_cells(grid)
    fm_cells = list({(c.teacher, c.seed, c.round, c.fm_frozen_after_day, c.domain, c.task):
                     Cell(c.teacher, "", "fm", 1.0, 1.0, 1.0, c.round, c.seed, c.fm_frozen_after_day,
                          c.domain, c.task) for c in cells if c.method != "none"}.values())
    prep = prep_stage(ctx)
    jobs = [("vm", c) for c in cells] + [("fm", c) for c in fm_cells]
    for kind, cell in tqdm(jobs, desc=f"grid {grid.name}", unit="cell", disable=not progress):
        cid = cell_id(grid, cell)
        if cid in done:
            summary.skipped += 1
            continue
        base = {**_record_base(grid, prep, cell, kind), "cell_id": cid, "config_hash": cid}
        cell_start = time.perf_counter()
        try:
            measured = run_cell(ctx, prep, cell) if kind == "vm" else run_fm_record(ctx, prep, cell)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the others go on
            logger.exception("cell %s failed", cid)
            error = f"{type(exc).__name__}: {exc}"
            writer.append({**base, "status": "failed", "error": error})
            summary.failed += 1
            summary.failures.append(f"{kind} {cell.teacher}/{cell.student or '-'}/{cell.method}: {error}")
            continue
        measured = {k: v for k, v in measured.items() if k not in ARTIFACT_KEYS}
        writer.append({**base, **measured, "status": "ok", "error": None,
                       "wall_time_s": time.perf_counter() - cell_start})
        summary.ok += 1
    summary.seconds = time.perf_counter() - start
    return summary
