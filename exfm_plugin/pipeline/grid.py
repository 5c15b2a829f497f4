"""Experiment grids in FuxiCTR's tuner style, expanded into the cells of a table or figure.

A grid file names its data (``dataset``, ``source``, ``size``), the protocol (``mode``,
``rounds``, FM training) and a ``tuner_space`` whose list values are crossed, as in fuxictr's
``autotuner.enumerate_params``. fuxictr's expander is tied to one ``base_expid`` and writes
config files; a cell here crosses a teacher model with a student model, so the expansion is
done here, with the same semantics (scalars are fixed, lists are crossed). ``tuner_space`` may
also be a list of such blocks, whose expansions are concatenated: that is how one-at-a-time
sweeps (Figures 10-11) are written.
"""
from __future__ import annotations

from ..errors import ExfmInputError

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..contracts import BARS_DATASET_IDS, DATASETS, FM_TRAINING, METHODS, SIZES, SOURCES, VM_SCHEDULES
from ..distill.config import DistillConfig
from ..models import MODEL_REGISTRY

MODES = ("single", "domains", "tasks")
STUDENTS = ("FM", "FmFM", "DeepFM")
TEACHERS = ("DMIN", "DCN", "DCNv2", "MultiTaskDMIN")
MULTITASK_TEACHERS = frozenset({"MultiTaskDMIN"})
DEFAULT_TASKS = ("is_click", "is_follow", "is_like")
# files a real data root must hold, per (dataset, format): one name per alternative group
REAL_FILES = {
    ("taobaoad", "raw"): [("raw_sample.csv",), ("ad_feature.csv",), ("user_profile.csv",)],
    ("taobaoad", "bars"): [("train.csv",), ("test.csv",)],
    ("amazon", "raw"): [("reviews_Electronics_5.json", "reviews_Electronics_5.json.gz"),
                        ("meta_Electronics.json", "meta_Electronics.json.gz")],
    ("amazon", "bars"): [("train.csv",), ("test.csv",)],
    ("kuaivideo", "raw"): [("train.csv",), ("test.csv",), ("item_visual_emb_dim64.h5",)],
    ("kuaivideo", "bars"): [("train.csv",), ("test.csv",), ("item_visual_emb_dim64.h5",)],
}

GRID_KEYS = {
    "grid", "description", "dataset", "source", "real_source", "size", "drift", "data_seed", "mode",
    "rounds", "fm_training", "fm_epochs", "vm_epochs", "vm_schedule", "vm_drop_features", "seeds",
    "base_config", "model_overrides", "tasks", "domains", "tuner_space",
}
CELL_KEYS = {"teacher", "student", "method", "label_scale", "grad_scale", "loss_weight",
             "fm_frozen_after_day", "vm_schedule"}
DISTILL_KEYS = {"head_hidden_units", "head_activation", "adapter_hidden_units", "adapter_input",
                "adapter_residual", "adapter_lr", "adapter_eps"}


class GridError(ExfmInputError):
    """A grid file that cannot run; raised before any work starts."""


@dataclass(frozen=True)
class Cell:
    """One evaluated VM: a (teacher, student, method, scales) choice in one round and seed."""

    teacher: str
    student: str
    method: str
    label_scale: float
    grad_scale: float
    loss_weight: float
    round: int
    seed: int
    fm_frozen_after_day: int | None = None
    domain: str | None = None
    task: str | None = None
    distill: tuple[tuple[str, Any], ...] = ()
    vm_schedule: str = "day"
    feature_gap: tuple[str, ...] = ()

    @property
    def train_day(self) -> int:
        return 5 + self.round

    @property
    def test_day(self) -> int:
        return 6 + self.round

    @property
    def train_days(self) -> list[int]:
        """The days the VM trains on, in order: day 5+r alone (``day``), or days 1..5+r (``stream``)."""
        return [self.train_day] if self.vm_schedule == "day" else list(range(1, self.train_day + 1))

    def fm_day_for(self, day: int) -> int | None:
        """The last day of the FM snapshot that labels ``day`` (trained through day-1, or its
        freeze day); None before the first snapshot (day 1), where the VM trains as ``none``."""
        fresh = day - 1
        if fresh < 1:
            return None
        return fresh if self.fm_frozen_after_day is None else min(fresh, self.fm_frozen_after_day)

    @property
    def fm_through_day(self) -> int:
        """The last day the FM snapshot that labels the cell's train day has trained on."""
        return self.fm_day_for(self.train_day)

    @property
    def multitask_teacher(self) -> bool:
        return self.teacher in MULTITASK_TEACHERS

    def distill_config(self, fm_pred_column: str) -> DistillConfig:
        return DistillConfig(method=self.method, label_scale=self.label_scale, grad_scale=self.grad_scale,
                             loss_weight=self.loss_weight, fm_pred_column=fm_pred_column, **dict(self.distill))


@dataclass
class Grid:
    """A validated grid file."""

    name: str
    path: str
    dataset: str
    source: str = "synthetic"
    real_source: str = "raw"
    size: str = "tiny"
    drift: float = 1.0
    data_seed: int = 0
    mode: str = "single"
    rounds: list[int] = field(default_factory=lambda: [0])
    fm_training: str = "stream"
    fm_epochs: int = 1
    vm_epochs: int = 1
    vm_schedule: str = "day"
    vm_drop_features: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    base_config: str = "yaml_configs/models"
    model_overrides: dict[str, dict] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    domains: list[str] = field(default_factory=lambda: ["0", "1", "2"])
    tuner_space: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    data_root: str | None = None

    @property
    def bars_dataset_id(self) -> str:
        return BARS_DATASET_IDS[self.dataset]

    @property
    def effective_source(self) -> str:
        return self.real_source if self.data_root else self.source


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_choice(name: str, value: Any, choices, path: str) -> None:
    if value not in choices:
        raise GridError(f"{path}: {name}={value!r} is not one of {list(choices)}")


def load_grid(path: str, *, seeds: int | None = None, data_root: str | None = None,
              size: str | int | None = None, vm_schedule: str | None = None) -> Grid:
    """Read and validate a grid file; ``seeds`` (a count), ``data_root``, the synthetic
    ``size`` and ``vm_schedule`` (for every cell) override it."""
    if not os.path.isfile(path):
        raise GridError(f"grid file {path!r} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {unknown}; known: {sorted(GRID_KEYS)}")
    if "dataset" not in raw or "tuner_space" not in raw:
        raise GridError(f"{path}: a grid needs 'dataset' and 'tuner_space'")
    kwargs = dict(raw)
    kwargs["name"] = kwargs.pop("grid", Path(path).stem)
    kwargs["seeds"] = list(range(seeds)) if seeds else \
        (list(range(raw["seeds"])) if isinstance(raw.get("seeds"), int) else _as_list(raw.get("seeds", [0])))
    kwargs["rounds"] = _as_list(raw.get("rounds", [0]))
    space = raw["tuner_space"]
    kwargs["tuner_space"] = [dict(block) for block in _as_list(space)]
    if size is not None:
        kwargs["size"] = int(size) if str(size).isdigit() else size
    if vm_schedule is not None:
        kwargs["vm_schedule"] = vm_schedule
        kwargs["tuner_space"] = [{k: v for k, v in block.items() if k != "vm_schedule"}
                                 for block in kwargs["tuner_space"]]
    grid = Grid(path=path, data_root=data_root, **kwargs)
    _validate(grid)
    return grid


def _validate(grid: Grid) -> None:
    p = grid.path
    _check_choice("dataset", grid.dataset, DATASETS, p)
    _check_choice("source", grid.source, SOURCES, p)
    _check_choice("real_source", grid.real_source, ("raw", "bars"), p)
    _check_choice("mode", grid.mode, MODES, p)
    _check_choice("fm_training", grid.fm_training, FM_TRAINING, p)
    _check_choice("vm_schedule", grid.vm_schedule, VM_SCHEDULES, p)
    if not isinstance(grid.vm_drop_features, list) or not all(isinstance(f, str) for f in grid.vm_drop_features):
        raise GridError(f"{p}: vm_drop_features={grid.vm_drop_features!r} must be a list of feature names")
    for name in ("fm_epochs", "vm_epochs"):
        value = getattr(grid, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GridError(f"{p}: {name}={value!r} must be a whole number >= 1")
    if not grid.seeds:
        raise GridError(f"{p}: seeds gives no seed; a grid needs at least one")
    if grid.source == "synthetic" and not isinstance(grid.size, int):
        _check_choice("size", grid.size, SIZES, p)
    for r in grid.rounds:
        _check_choice("round", r, (0, 1, 2), p)
    if grid.mode == "domains" and grid.dataset != "taobaoad":
        raise GridError(f"{p}: mode 'domains' is defined for taobaoad (new_user_class_level), not {grid.dataset}")
    if grid.mode == "tasks" and grid.dataset != "kuaivideo":
        raise GridError(f"{p}: mode 'tasks' is defined for kuaivideo, not {grid.dataset}")
    if grid.data_root is not None:
        if not os.path.isdir(grid.data_root):
            raise GridError(f"--data-root {grid.data_root!r} is not a directory")
        missing = [" or ".join(group) for group in REAL_FILES[(grid.dataset, grid.real_source)]
                   if not any(os.path.isfile(os.path.join(grid.data_root, name)) for name in group)]
        if missing:
            raise GridError(f"--data-root {grid.data_root!r} does not hold {grid.dataset} {grid.real_source} files: "
                            f"missing {missing}")
    for name in grid.model_overrides:
        if name != "all" and name not in MODEL_REGISTRY:
            raise GridError(f"{p}: model_overrides names unknown model {name!r}")
    if not grid.tuner_space:
        raise GridError(f"{p}: tuner_space is empty")
    for block in grid.tuner_space:
        unknown = sorted(set(block) - CELL_KEYS - DISTILL_KEYS)
        if unknown:
            raise GridError(f"{p}: unknown tuner_space key(s) {unknown}; known: {sorted(CELL_KEYS | DISTILL_KEYS)}")
        for key in ("teacher", "student", "method"):
            if key not in block:
                raise GridError(f"{p}: every tuner_space block needs {key!r}")
        for t in _as_list(block["teacher"]):
            _check_choice("teacher", t, TEACHERS, p)
        for s in _as_list(block["student"]):
            _check_choice("student", s, STUDENTS, p)
        for m in _as_list(block["method"]):
            _check_choice("method", m, METHODS, p)
        for v in _as_list(block.get("vm_schedule", grid.vm_schedule)):
            _check_choice("vm_schedule", v, VM_SCHEDULES, p)
            if v == "stream" and grid.vm_epochs != 1:
                raise GridError(f"{p}: vm_schedule 'stream' trains one pass per day; vm_epochs must be 1")
        for d in _as_list(block.get("fm_frozen_after_day", None)):
            if d is not None and d not in range(1, 8):
                raise GridError(f"{p}: fm_frozen_after_day={d!r} must be a day in 1..7 or null")
    if grid.mode == "tasks":
        for t in grid.tasks:
            _check_choice("task", t, DEFAULT_TASKS, p)
    cells = expand_cells(grid)
    if not cells:
        raise GridError(f"{p}: the grid expands to no cell (an empty list in tuner_space, rounds or seeds?)")
    for cell in cells:  # every scale and distill option is valid before any work
        try:
            cell.distill_config("fm_pred")
        except ValueError as exc:
            raise GridError(f"{p}: {exc}") from exc


def expand_cells(grid: Grid) -> list[Cell]:
    """Every cell of the grid, de-duplicated: ``none`` ignores scales and the teacher's
    knobs, ``kd`` ignores scales, so equal training runs appear once per teacher."""
    cells: dict[Cell, None] = {}
    units = grid.domains if grid.mode == "domains" else grid.tasks if grid.mode == "tasks" else [None]
    for block in grid.tuner_space:
        keys = list(block)
        for values in itertools.product(*(_as_list(block[k]) for k in keys)):
            choice = dict(zip(keys, values))
            distill = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                   for k, v in choice.items() if k in DISTILL_KEYS))
            method = choice["method"]
            scales = {k: float(choice.get(k, 1.0)) for k in ("label_scale", "grad_scale", "loss_weight")}
            if method in ("none", "kd"):
                scales = dict.fromkeys(scales, 1.0)
                distill = ()
            for rnd, seed, unit in itertools.product(grid.rounds, grid.seeds, units):
                cell = Cell(teacher=choice["teacher"], student=choice["student"], method=method,
                            round=int(rnd), seed=int(seed), fm_frozen_after_day=choice.get("fm_frozen_after_day"),
                            domain=unit if grid.mode == "domains" else None,
                            task=unit if grid.mode == "tasks" else None, distill=distill,
                            vm_schedule=choice.get("vm_schedule", grid.vm_schedule),
                            feature_gap=tuple(grid.vm_drop_features), **scales)
                cells[cell] = None
    return list(cells)


def model_params(grid: Grid, model: str, base_params: Mapping[str, Any]) -> dict[str, Any]:
    """BARS hyperparameters of ``model`` with the grid's overrides (``all`` first)."""
    params = dict(base_params)
    params.update(grid.model_overrides.get("all", {}))
    params.update(grid.model_overrides.get(model, {}))
    return params
