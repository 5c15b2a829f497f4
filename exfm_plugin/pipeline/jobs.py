"""A grid's jobs: one per record it writes (a VM cell, or an FM paired with VM cells), and their ids."""
from __future__ import annotations

from .artifacts import step_key
from .grid import Cell, Grid, expand_cells

Job = tuple[str, Cell]  # ("vm" | "fm", cell): one record


def cell_id(grid: Grid, cell: Cell) -> str:
    """A record's id (also its ``config_hash``): the grid's name and the cell's identity, hashed."""
    return step_key("cell", {"grid": grid.name, **cell.identity})


def grid_jobs(grid: Grid) -> list[Job]:
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
