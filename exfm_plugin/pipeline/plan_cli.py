"""``exfm plan``: a grid's steps, their keys, which are built and which cells share them, without
training anything.

The steps are the engines' own: :func:`.plan.plan_grid` declares every step of every record,
and both engines execute that plan. A plan needs the prepared data (the feature map, the day
files): the keys of every later step hash it. So when the data steps (``prep``, and ``domains``
for a domains grid) are not built, the plan says so and stops there, unless ``--prepare`` builds
those data steps (data only, seconds for a tiny grid) first. Nothing else is ever written.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ArtifactStore
from .context import Context
from .grid import Grid
from .jobs import cell_id, describe_job, grid_jobs
from .plan import plan_grid
from .prep_steps import DataNotBuilt, prepare_data

#: kinds in pipeline order, with the words the summary uses
KIND_NAMES = {"prep": "prep", "domains": "domain split", "fm": "FM", "das": "DAS", "vm": "VM links",
              "vm_eval": "VM evals", "fm_eval": "FM evals"}


@dataclass
class PlannedStep:
    kind: str
    key: str
    done: bool
    cells: list[int] = field(default_factory=list)  # indexes into PlanView.jobs


@dataclass
class PlanView:
    """One grid's steps in dependency order (a step after the steps it reads), as printed."""

    grid: Grid
    store_root: Path
    jobs: list[tuple[str, Any]]
    steps: dict[str, PlannedStep] = field(default_factory=dict)
    missing_data: DataNotBuilt | None = None  # the data step not built: nothing after it is planned
    errors: dict[int, str] = field(default_factory=dict)  # job index -> why it could not be planned

    def count(self, kind: str | None = None, *, done: bool | None = None, shared: bool | None = None) -> int:
        return sum(1 for s in self.steps.values() if (kind is None or s.kind == kind)
                   and (done is None or s.done == done) and (shared is None or (len(s.cells) > 1) == shared))


def plan_grid_status(grid: Grid, work_dir: str = "work", *, prepare: bool = False) -> PlanView:
    """Every step of ``grid``'s records (done or not) and the records that need each; with
    ``prepare``, builds the data steps first if they are missing (see the module docstring)."""
    store_root = Path(work_dir) / "artifacts"  # as run_grid: the keys of DAS steps hold absolute paths
    result = PlanView(grid, store_root, grid_jobs(grid))
    store = ArtifactStore(store_root)
    ctx = Context(grid, store, progress=False)
    try:
        prep = prepare_data(ctx, build=prepare)
    except DataNotBuilt as missing:
        result.missing_data = missing
        result.steps[missing.key] = PlannedStep(missing.kind, missing.key, False, list(range(len(result.jobs))))
        return result
    plan = plan_grid(ctx, prep, result.jobs)
    users = plan.users()
    for step in [*plan.data, *plan.steps.values()]:
        result.steps[step.key] = PlannedStep(step.kind, step.key, store.is_done(step.kind, step.key),
                                             users.get(step.key, []))
    result.errors = {r.index: f"{type(r.error).__name__}: {r.error}" for r in plan.records if r.error is not None}
    return result


def _kinds(plan: PlanView) -> list[str]:
    present = {s.kind for s in plan.steps.values()}
    return [k for k in KIND_NAMES if k in present] + sorted(present - set(KIND_NAMES))


def _cells_text(plan: PlanView, cells: list[int]) -> str:
    if len(cells) == len(plan.jobs):
        return f"{len(cells)} cells: all"
    return f"{len(cells)} cell{'s' if len(cells) != 1 else ''}: " + " ".join(f"#{i}" for i in cells)


def format_plan(plan: PlanView, listing: bool = False) -> list[str]:
    """The lines ``exfm plan`` prints for one grid: a summary line, a table per kind and, with
    ``listing``, every cell and every step."""
    name, n_vm = plan.grid.name, sum(1 for kind, _ in plan.jobs if kind == "vm")
    cells = f"{len(plan.jobs)} cells ({n_vm} VM, {len(plan.jobs) - n_vm} FM)"
    if plan.missing_data is not None:
        missing = plan.missing_data
        return [f"grid {name}: {cells}; data step {missing.kind} {missing.key} is not built in {plan.store_root}",
                "  the other steps' keys hash the prepared data, so they are not planned yet: rerun with "
                "--prepare (builds the data steps only, no training) or run the grid"]
    counts = ", ".join(f"{plan.count(k)} {KIND_NAMES.get(k, k)}" for k in _kinds(plan))
    lines = [f"grid {name}: {counts}; {plan.count(done=True)} done, {plan.count(done=False)} to build; "
             f"{plan.count(shared=True)} shared by more than one cell",
             f"  {cells}, artifacts in {plan.store_root}",
             f"  {'kind':<13}{'steps':>6}{'done':>6}{'to build':>10}{'shared':>8}  cells per step"]
    for kind in _kinds(plan):
        per = [len(s.cells) for s in plan.steps.values() if s.kind == kind]
        spread = f"{min(per)}-{max(per)}" if min(per) != max(per) else str(per[0])
        lines.append(f"  {KIND_NAMES.get(kind, kind):<13}{len(per):>6}{plan.count(kind, done=True):>6}"
                     f"{plan.count(kind, done=False):>10}{plan.count(kind, shared=True):>8}  {spread}")
    for index, error in plan.errors.items():
        lines.append(f"  cell #{index} could not be planned (its run would fail): {error}")
    if listing:
        lines.append("  cells:")
        lines += [f"    #{i:<4}{cell_id(plan.grid, cell)}  {kind.upper():<3} {describe_job(kind, cell)}"
                  for i, (kind, cell) in enumerate(plan.jobs)]
        lines.append("  steps (dependency order):")
        lines += [f"    {KIND_NAMES.get(s.kind, s.kind):<13}{s.key}  {'done' if s.done else 'to build':<9}"
                  f"{_cells_text(plan, s.cells)}" for s in plan.steps.values()]
    return lines


def run_plan(args: argparse.Namespace) -> int:
    """CLI body of ``exfm plan``: 0, or 1 when a cell could not be planned; a bad grid raises GridError
    (one line, exit 2, from ``exfm_plugin.cli.main``) before anything is planned."""
    from .grid import load_grids

    grids = [grid for path in args.grid
             for grid in load_grids(path, seeds=args.seeds, data_root=args.data_root, size=args.size,
                                    vm_schedule=args.vm_schedule)]
    status = 0
    for grid in grids:
        plan = plan_grid_status(grid, args.work, prepare=args.prepare)
        try:
            print("\n".join(format_plan(plan, listing=args.list or getattr(args, "verbose", False))), flush=True)
        except BrokenPipeError:  # `exfm plan --list | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return status
        status = status or (1 if plan.errors else 0)
    return status
