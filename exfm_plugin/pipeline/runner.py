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

from ..contracts import fm_pred_column
from .artifacts import ArtifactStore, step_key
from .cell_outputs import write_cell_outputs
from .grid import Cell, Grid, GridError, expand_cells
from .logging_run import metrics_line, run_log, run_logging
from .records import RecordWriter
from .stages import (Context, PreparedData, all_labels, bars_params, das_stage, day_label_mean, domain_day_file,
                     fm_eval_stage, fm_stage, oracle_metrics, prep_stage, training_options)
from .vm_stages import DayInput, vm_eval_stage, vm_link_stage

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
    return step_key("cell", {"grid": grid.name, **cell.identity})


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


def day_input(ctx: Context, prep: PreparedData, cell: Cell, day: int) -> tuple[DayInput, str | None]:
    """What the cell's VM trains on for ``day``: its own rows, augmented by DAS with the FM
    snapshot of the day before (or its freeze day) unless the method is ``none`` or no
    snapshot exists yet; also returns that snapshot's id."""
    day_file, vm_name = _unit_files(ctx, prep, cell, day)
    fm_day = cell.fm_day_for(day)
    if cell.method == "none" or fm_day is None:
        return DayInput(day, day_file, os.path.abspath(day_file), None), None
    fm = fm_stage(ctx, prep, cell.teacher, cell.seed, fm_day)
    splits = das_stage(ctx, fm, day, _day_vms(ctx, prep, day))
    column = fm_pred_column(_label(prep, cell), cell.multitask_teacher)
    return DayInput(day, splits[vm_name], f"{fm.key}/{day}/{vm_name}", column), fm.snapshot_id


def ne_base_rate(ctx: Context, prep: PreparedData, cell: Cell) -> float:
    """The common normaliser of every row (FM and VMs) compared on the cell's test day: the
    click rate of the VM's training day 5+r (its unit's rows, its task's label). Under the
    ``stream`` schedule the VM has also seen days 1..4+r; the last day's rate is used for both
    schedules so that they, and the FM, share one constant predictor."""
    train_file, _ = _unit_files(ctx, prep, cell, cell.train_day)
    return day_label_mean(train_file, _label(prep, cell))


def run_cell(ctx: Context, prep: PreparedData, cell: Cell) -> dict:
    """Train and evaluate one VM cell under its schedule; returns the record's measured fields."""
    label = _label(prep, cell)
    inputs, snapshot_id = [], None
    for day in cell.train_days:
        item, snapshot = day_input(ctx, prep, cell, day)
        inputs.append(item)
        snapshot_id = snapshot or snapshot_id
    link = vm_link_stage(ctx, prep, cell, label, inputs)
    test_file, _ = _unit_files(ctx, prep, cell, cell.test_day)
    base_rate = ne_base_rate(ctx, prep, cell)
    result = vm_eval_stage(ctx, prep, cell, label, link, test_file, base_rate)
    return {**result, "snapshot_id": snapshot_id, "oracle": test_day_oracle(ctx, test_file, label, base_rate)}


def test_day_oracle(ctx: Context, test_file: str, label: str, base_rate: float) -> dict | None:
    """The oracle row of a test day (the world's truth, synthetic data only), once per process."""
    return ctx.memo(("oracle", os.path.abspath(test_file), label, base_rate),
                    lambda: oracle_metrics(test_file, label, base_rate))


def run_fm_record(ctx: Context, prep: PreparedData, cell: Cell) -> dict:
    """The FM's metrics on the cell's test day (its domain's rows, its task's label)."""
    label = _label(prep, cell)
    test_file, _ = _unit_files(ctx, prep, cell, cell.test_day)
    fm = fm_stage(ctx, prep, cell.teacher, cell.seed, cell.fm_through_day)
    base_rate = ne_base_rate(ctx, prep, cell)
    return {**fm_eval_stage(ctx, fm, test_file, label, base_rate), "snapshot_id": fm.snapshot_id,
            "oracle": test_day_oracle(ctx, test_file, label, base_rate),
            **training_options(bars_params(ctx, prep, cell.teacher, cell.seed))}


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
        "vm_schedule": cell.vm_schedule, "feature_gap": list(cell.feature_gap),
        "world": grid.world.model_dump() if grid.effective_source == "synthetic" else None,
        "data_seed": grid.data_seed if grid.effective_source == "synthetic" else None,
        **({"hparams": dict(cell.hparams)} if cell.hparams and kind == "vm" else {}),
    }


def grid_jobs(grid: Grid) -> list[tuple[str, Cell]]:
    """Every record the grid produces, as (kind, cell): one per VM cell, then one per FM (teacher,
    seed, round, freeze day, unit, schedule) that a VM is paired with (the teacher margin is a
    premise of every pairing, ``none`` included); both engines run this list."""
    cells = expand_cells(grid)
    fm_cells = list({(c.teacher, c.seed, c.round, c.fm_frozen_after_day, c.domain, c.task, c.vm_schedule):
                     Cell(c.teacher, "", "fm", 1.0, 1.0, 1.0, c.round, c.seed, c.fm_frozen_after_day,
                          c.domain, c.task, vm_schedule=c.vm_schedule)
                     for c in cells}.values())
    return [("vm", c) for c in cells] + [("fm", c) for c in fm_cells]


def describe_job(kind: str, cell: Cell) -> str:
    """``teacher DMIN -> student DeepFM, method ah (LS 1, GS 1, LW 1), round 0, seed 0``."""
    unit = f", domain {cell.domain}" if cell.domain is not None else f", task {cell.task}" if cell.task else ""
    if kind == "fm":
        return f"FM {cell.teacher} through day {cell.fm_through_day}, test day {cell.test_day}, seed {cell.seed}{unit}"
    scales = f" (LS {cell.label_scale:g}, GS {cell.grad_scale:g}, LW {cell.loss_weight:g})" \
        if cell.method not in ("none", "kd") else ""
    hp = f", {dict(cell.hparams)}" if cell.hparams else ""
    return (f"teacher {cell.teacher} -> student {cell.student}, method {cell.method}{scales}{hp}, "
            f"{cell.vm_schedule} schedule, days {cell.train_days[0]}..{cell.train_day}, test day {cell.test_day}, "
            f"seed {cell.seed}{unit}")


def run_job(ctx: Context, prep: PreparedData, kind: str, cell: Cell) -> dict:
    """One record's measured fields (its steps built on the way, or read when done)."""
    return run_cell(ctx, prep, cell) if kind == "vm" else run_fm_record(ctx, prep, cell)


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
    with run_logging(results_dir, grid.name, console=follow) as log_path:
        run_log.info("grid %s: %s %s, %s -> %s (log %s)", grid.name, grid.dataset, grid.effective_source,
                     grid.path, writer.path, log_path)
        prep = prep_stage(ctx)
        jobs = grid_jobs(grid)
        for kind, cell in tqdm(jobs, desc=f"grid {grid.name}", unit="cell", disable=not progress):
            cid = cell_id(grid, cell)
            if cid in done:
                summary.skipped += 1
                continue
            base = {**_record_base(grid, prep, cell, kind), "cell_id": cid, "config_hash": cid}
            cell_start = time.perf_counter()
            run_log.info("%s cell %s: %s", kind.upper(), cid, describe_job(kind, cell))
            try:
                measured = run_job(ctx, prep, kind, cell)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the others go on
                logger.exception("cell %s failed", cid)
                error = f"{type(exc).__name__}: {exc}"
                run_log.error("%s cell %s failed: %s", kind.upper(), cid, error)
                writer.append({**base, "status": "failed", "error": error})
                summary.failed += 1
                summary.failures.append(f"{kind} {cell.teacher}/{cell.student or '-'}/{cell.method}: {error}")
                continue
            measured = {k: v for k, v in measured.items() if k not in ARTIFACT_KEYS}
            run_log.info("%s cell %s %s", kind.upper(), cid, metrics_line(measured.get("metrics") or {}))
            measured.update(write_cell_outputs(results_dir, grid, {**base, **measured}, ctx.store, log_path))
            writer.append({**base, **measured, "status": "ok", "error": None,
                           "wall_time_s": time.perf_counter() - cell_start})
            summary.ok += 1
        run_log.info("grid %s: %d cells ok, %d failed, %d already done", grid.name, summary.ok, summary.failed,
                     summary.skipped)
    summary.seconds = time.perf_counter() - start
    return summary
