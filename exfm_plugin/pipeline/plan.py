"""A grid's declared plan: every step its records need, as objects with their inputs, planned
once after the data steps and before anything is trained.

Per record (job, :mod:`.jobs`) the planner declares, in the protocol's terms (round r, train
day 5+r, test day 6+r):

* VM cell: for each training day (day 5+r; or days 1..5+r for the ``stream`` schedule) its
  input: the unit's own day file, or, when the method is not ``none`` and an FM snapshot of the
  day before (or of the freeze day) exists, the ``das`` step of that FM and day, which depends on
  the ``fm`` step (a ``stream`` FM's day d depends on its day d-1); then one ``vm`` link per
  training day (each on its parent) and the ``vm_eval`` of the last link on the test day.
* FM record: the ``fm`` step through the FM's day for the cell's train day and its ``fm_eval``.

Steps with equal keys are one step (:attr:`GridPlan.steps`, in dependency order): a round's FM,
a day's DAS split, the ``none`` prefix of a stream, are shared by every record that reads them.
A record that cannot be planned (a bad ``vm_drop_features``, a domain without rows) keeps its
error and adds no step; the engines record it as failed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..contracts import fm_pred_column
from ..distill import DistillConfig
from .context import Context
from .das_step import DASStep
from .fm_steps import FMEvalStep, FMStep
from .grid import Cell, Grid
from .jobs import Job, cell_id
from .params import bars_params, student_params, training_options
from .prep_steps import PreparedData, all_labels, data_steps, day_label_mean, domain_day_file
from .steps import Step
from .vm_steps import VMEvalStep, VMLinkStep


@dataclass(frozen=True)
class DayInput:
    """One training day of a VM: its day file, the DAS step augmenting it (None: trained as
    ``none`` that day), the key naming the input's content, and the FM column it carries."""

    day: int
    file: str
    key: str
    fm_column: str | None
    das: DASStep | None
    vm_name: str


@dataclass
class RecordPlan:
    """One record: its job, the step whose output it reports (``vm_eval`` / ``fm_eval``) and what
    it adds to that output (the FM snapshot that supervised it, the oracle's test day, the FM's
    training options); ``error``: why it could not be planned."""

    index: int
    kind: str
    cell: Cell
    cell_id: str
    step: Step | None = None
    snapshot_id: str | None = None
    test_file: str = ""
    label: str = ""
    base_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class GridPlan:
    """The data steps (built before planning), every other step in dependency order (a step after
    the steps it reads), and one :class:`RecordPlan` per job."""

    grid: Grid
    prep: PreparedData
    data: list[Step]
    steps: dict[str, Step]
    records: list[RecordPlan]

    def closure(self, record: RecordPlan) -> list[Step]:
        """The steps ``record`` needs, dependencies first (its own step last); data steps excluded."""
        out: dict[str, Step] = {}

        def visit(step: Step) -> None:
            if step.key in out:
                return
            for dep in step.deps:
                if dep.key in self.steps:
                    visit(dep)
            out[step.key] = self.steps[step.key]

        if record.step is not None:
            visit(record.step)
        return list(out.values())

    def users(self) -> dict[str, list[int]]:
        """Step key -> the records that need it (data steps: every record)."""
        every = [r.index for r in self.records]
        users: dict[str, list[int]] = {s.key: list(every) for s in self.data}
        for record in self.records:
            for step in self.closure(record):
                users.setdefault(step.key, []).append(record.index)
        return users

    def edges(self) -> Iterator[tuple[str, str]]:
        """(dependency key, step key) for every planned step."""
        for step in self.steps.values():
            for dep in step.deps:
                yield dep.key, step.key


class _Planner:
    """Declares the steps of one grid's records (see the module docstring)."""

    def __init__(self, ctx: Context, prep: PreparedData) -> None:
        self.ctx, self.grid, self.prep = ctx, ctx.grid, prep
        self.steps: dict[str, Step] = {}
        self._params: dict[tuple, Any] = {}
        self._fms: dict[tuple, FMStep] = {}
        self._base_rates: dict[tuple[str, str], float] = {}  # (train file, label): read once per plan

    def add(self, step: Step) -> Step:
        """The plan's one step of this key (dependencies added first)."""
        for dep in step.deps:
            self.add(dep)
        return self.steps.setdefault(step.key, step)

    def params(self, model: str, seed: int, cell: Cell | None = None) -> dict:
        key = (model, seed, cell.feature_gap if cell else (), cell.hparams if cell else ())
        if key not in self._params:
            try:
                self._params[key] = (True, student_params(self.grid, self.prep, cell) if cell
                                     else bars_params(self.grid, self.prep, model, seed))
            except Exception as exc:  # noqa: BLE001 - every record needing these params fails with it
                self._params[key] = (False, exc)
        ok, value = self._params[key]
        if not ok:
            raise value
        return value

    # ---------------------------------------------------------------- units, days, labels
    def unit_file(self, cell: Cell, day: int) -> tuple[str, str]:
        """(this VM's day file, the VM's name in the DAS job)."""
        if cell.domain is not None:
            return domain_day_file(self.ctx.store, self.prep, day, cell.domain), f"domain_{cell.domain}"
        if cell.task is not None:
            return self.prep.day_file(day), f"task_{cell.task}"
        return self.prep.day_file(day), "vm"

    def day_vms(self, day: int) -> tuple[tuple[str, str, tuple[str, ...] | None], ...]:
        """Every VM that trains on ``day`` in this grid's mode: DAS serves them in one job."""
        grid, prep = self.grid, self.prep
        if grid.mode == "domains":
            vms = {f"domain_{d}": (domain_day_file(self.ctx.store, prep, day, d), None) for d in grid.domains}
        elif grid.mode == "tasks":
            vms = {f"task_{t}": (prep.day_file(day), (t,)) for t in grid.tasks}
        else:
            vms = {"vm": (prep.day_file(day), None)}
        return tuple((n, p, t) for n, (p, t) in sorted(vms.items()))

    def label(self, cell: Cell) -> str:
        return cell.task if cell.task is not None else all_labels(self.prep)[0]

    def base_rate(self, cell: Cell) -> float:
        """The common normaliser of every row (FM and VMs) compared on the cell's test day: the
        click rate of the VM's training day 5+r (its unit's rows, its task's label). Under the
        ``stream`` schedule the VM has also seen days 1..4+r; the last day's rate is used for both
        schedules so that they, and the FM, share one constant predictor."""
        key = (self.unit_file(cell, cell.train_day)[0], self.label(cell))
        if key not in self._base_rates:
            self._base_rates[key] = day_label_mean(*key)
        return self._base_rates[key]

    # ---------------------------------------------------------------- steps
    def fm(self, teacher: str, seed: int, through_day: int) -> FMStep:
        key = (teacher, seed, through_day)
        if key not in self._fms:
            grid = self.grid
            parent = (self.fm(teacher, seed, through_day - 1)
                      if grid.fm_training == "stream" and through_day > 1 else None)
            self._fms[key] = FMStep(self.prep, teacher, seed, through_day, self.params(teacher, seed),
                                    grid.fm_training, grid.fm_epochs, parent)
        return self._fms[key]

    def day_input(self, cell: Cell, day: int) -> tuple[DayInput, str | None]:
        """What the cell's VM trains on for ``day`` (see the module docstring), and the id of the
        FM snapshot that supervises it (None: none)."""
        day_file, vm_name = self.unit_file(cell, day)
        fm_day = cell.fm_day_for(day)
        if cell.method == "none" or fm_day is None:
            return DayInput(day, day_file, os.path.abspath(day_file), None, None, vm_name), None
        fm = self.fm(cell.teacher, cell.seed, fm_day)
        das = DASStep(fm, day, self.day_vms(day))
        column = fm_pred_column(self.label(cell), cell.multitask_teacher)
        return DayInput(day, day_file, das.input_key(vm_name), column, das, vm_name), fm.snapshot_id

    def link(self, cell: Cell, label: str, inputs: list[DayInput]) -> VMLinkStep:
        """The student after training on ``inputs`` in order (one link per day)."""
        last = inputs[-1]
        parent = self.link(cell, label, inputs[:-1]) if len(inputs) > 1 else None
        fm_column = next((d.fm_column for d in reversed(inputs) if d.fm_column), None)
        supervised = any(d.fm_column is not None for d in inputs)  # the method is in force from then on
        config = cell.distill_config(fm_column) if supervised else DistillConfig(method="none")
        passes = self.grid.vm_epochs if cell.vm_schedule == "day" else 1
        return VMLinkStep(self.prep, cell.student, cell.seed, self.params(cell.student, cell.seed, cell), config,
                          label, last.day, last.key, last.fm_column, passes, last.vm_name, last.file, last.das,
                          parent)

    def vm_record(self, record: RecordPlan) -> None:
        cell = record.cell
        record.label = self.label(cell)
        inputs = []
        for day in cell.train_days:
            item, snapshot = self.day_input(cell, day)
            inputs.append(item)
            record.snapshot_id = snapshot or record.snapshot_id
        link = self.link(cell, record.label, inputs)
        record.test_file = self.unit_file(cell, cell.test_day)[0]
        record.base_rate = self.base_rate(cell)
        record.step = VMEvalStep(self.prep, self.params(cell.student, cell.seed, cell), link, record.test_file,
                                 record.label, record.base_rate)

    def fm_record(self, record: RecordPlan) -> None:
        cell = record.cell
        record.label = self.label(cell)
        record.test_file = self.unit_file(cell, cell.test_day)[0]
        fm = self.fm(cell.teacher, cell.seed, cell.fm_through_day)
        record.base_rate = self.base_rate(cell)
        record.step = FMEvalStep(fm, record.test_file, record.label, record.base_rate)
        record.snapshot_id = fm.snapshot_id
        record.extra = training_options(self.params(cell.teacher, cell.seed))


def plan_grid(ctx: Context, prep: PreparedData, jobs: list[Job]) -> GridPlan:
    """The plan of ``jobs`` (see the module docstring); ``prep`` and the data steps must be built
    (:func:`.prep_steps.prepare_data`). Nothing is built or written."""
    planner = _Planner(ctx, prep)
    records = []
    for index, (kind, cell) in enumerate(jobs):
        record = RecordPlan(index, kind, cell, cell_id(ctx.grid, cell))
        try:
            (planner.vm_record if kind == "vm" else planner.fm_record)(record)
        except Exception as exc:  # noqa: BLE001 - this record fails; the others are planned
            record.step, record.error = None, exc
        else:
            record.step = planner.add(record.step)
        records.append(record)
    return GridPlan(ctx.grid, prep, data_steps(ctx.grid, prep), planner.steps, records)
