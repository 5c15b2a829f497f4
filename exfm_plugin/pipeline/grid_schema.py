"""The schema of an experiment grid (pydantic) and its expansion into cells.

A grid names its data (``dataset``, ``source``, ``size``, the synthetic ``world``'s dials), the
protocol (``mode``, ``rounds``, FM training, the VM schedule) and a ``tuner_space`` whose list
values are crossed, as in fuxictr's ``autotuner.enumerate_params``; :func:`expand_cells` turns it
into the evaluated cells, :func:`model_params` gives a model's hyperparameters with the grid's
overrides. Reading a grid file (YAML, error messages, levels) is :mod:`.grid`'s job.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, StrictStr, field_validator,
                      model_validator)

from ..contracts import (BARS_DATASET_IDS, DATASETS, FM_TRAINING, METHODS, ROUNDS, SIZES, SOURCES, VM_SCHEDULES,
                         test_day, train_day)
from ..distill.config import DISTILL_FIELDS, DistillConfig
from ..errors import ExfmInputError, check_choice
from ..models import MODEL_REGISTRY
from .model_keys import describe_unknown, shipped_value, unknown_keys

MODES = ("single", "domains", "tasks")
STUDENTS = ("FM", "FmFM", "DeepFM")
TEACHERS = ("DMIN", "DCN", "DCNv2", "MultiTaskDMIN")
MULTITASK_TEACHERS = frozenset({"MultiTaskDMIN"})
DEFAULT_TASKS = ("is_click", "is_follow", "is_like")

CELL_KEYS = {"teacher", "student", "method", "label_scale", "grad_scale", "loss_weight",
             "fm_frozen_after_day", "vm_schedule"}
# DistillConfig's other knobs (heads, adapter); the FM column is the pipeline's, never a grid's
DISTILL_KEYS = set(DISTILL_FIELDS) - CELL_KEYS - {"fm_pred_column"}


class GridError(ExfmInputError):
    """A grid file that cannot run; raised before any work starts."""


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Cell:
    """One evaluated VM: a (teacher, student, method, scales) choice in one round and seed;
    ``hparams`` are the student's hyperparameters crossed by the tuner_space (sorted pairs)."""

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
    hparams: tuple[tuple[str, Any], ...] = ()

    @property
    def train_day(self) -> int:
        return train_day(self.round)

    @property
    def test_day(self) -> int:
        return test_day(self.round)

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

    @property
    def identity(self) -> dict[str, Any]:
        """The fields that name the cell (its id hashes them); ``hparams`` only when set, so
        the ids of grids without hyperparameter crossing are those they always had."""
        fields = dict(self.__dict__)
        if not self.hparams:
            fields.pop("hparams")
        return fields

    def distill_config(self, fm_pred_column: str) -> DistillConfig:
        return DistillConfig(method=self.method, label_scale=self.label_scale, grad_scale=self.grad_scale,
                             loss_weight=self.loss_weight, fm_pred_column=fm_pred_column, **dict(self.distill))


def _check_choices(name: str, value: Any, choices) -> Any:
    for v in _as_list(value):
        check_choice(name, v, choices)
    return value


Number = float  # strict: an int is accepted (as a float), a string or a bool is refused


class TunerBlock(BaseModel):
    """One ``tuner_space`` block: lists are crossed, scalars fixed; keys beyond the cell and
    distillation keys are the student's hyperparameters (checked in :class:`Grid`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    teacher: Union[StrictStr, list[StrictStr]]
    student: Union[StrictStr, list[StrictStr]]
    method: Union[StrictStr, list[StrictStr]]
    label_scale: Union[Number, list[Number]] = 1.0
    grad_scale: Union[Number, list[Number]] = 1.0
    loss_weight: Union[Number, list[Number]] = 1.0
    fm_frozen_after_day: Union[StrictInt, None, list[Union[StrictInt, None]]] = None
    vm_schedule: Union[StrictStr, list[StrictStr], None] = None
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data, handler):
        block = handler(data)
        block._order = list(data) if isinstance(data, dict) else []
        return block

    @field_validator("teacher", "student", "method")
    @classmethod
    def _known_names(cls, v, info):
        choices = {"teacher": TEACHERS, "student": STUDENTS, "method": METHODS}[info.field_name]
        return _check_choices(info.field_name, v, choices)

    @field_validator("vm_schedule")
    @classmethod
    def _schedule(cls, v):
        return v if v is None else _check_choices("vm_schedule", v, VM_SCHEDULES)

    @field_validator("fm_frozen_after_day")
    @classmethod
    def _frozen(cls, v):
        for d in _as_list(v):
            if d is not None and d not in range(1, 8):
                raise ValueError(f"fm_frozen_after_day={d!r} must be a day in 1..7 or null")
        return v

    @property
    def hparams(self) -> dict[str, Any]:
        """The student hyperparameters of the block (keys not known as cell/distill keys)."""
        return {k: v for k, v in (self.model_extra or {}).items() if k not in DISTILL_KEYS}

    def as_space(self) -> dict[str, Any]:
        """The block as written (defaults left out), in the file's key order."""
        values = self.model_dump(exclude_unset=True)
        return {k: values[k] for k in self._order if k in values}


class WorldDials(BaseModel):
    """The synthetic world's dials (``data_prep.synthetic``): ``drift``, the strength of the daily
    random walks and of users/ads joining and leaving (the freshness gap: 0 = stationary), and
    ``domain_shift``, the strength of each TaobaoAd domain's own taste for ads and categories
    (cross-domain bias: 0 = none). Part of the prep step's key and of every record."""

    model_config = ConfigDict(extra="forbid", strict=True)

    drift: Number = 1.0
    domain_shift: Number = 0.0

    @field_validator("drift", "domain_shift")
    @classmethod
    def _non_negative(cls, v, info):
        if v < 0:
            raise ValueError(f"world.{info.field_name}={v!r} must be >= 0 (0 turns the gap off)")
        return v


class Grid(BaseModel):
    """A validated grid file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr
    path: StrictStr
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    source: Literal[SOURCES] = "synthetic"  # type: ignore[valid-type]
    real_source: Literal["raw", "bars"] = "raw"
    size: Union[StrictStr, StrictInt] = "tiny"
    world: WorldDials = Field(default_factory=WorldDials)
    data_seed: StrictInt = 0
    mode: Literal[MODES] = "single"  # type: ignore[valid-type]
    rounds: list[StrictInt] = Field(default_factory=lambda: [0])
    fm_training: Literal[FM_TRAINING] = "stream"  # type: ignore[valid-type]
    fm_epochs: StrictInt = 1
    vm_epochs: StrictInt = 1
    vm_schedule: Literal[VM_SCHEDULES] = "day"  # type: ignore[valid-type]
    vm_drop_features: list[StrictStr] = Field(default_factory=list)
    seeds: list[StrictInt] = Field(default_factory=lambda: [0])
    base_config: StrictStr | None = None
    model_overrides: dict[StrictStr, dict[StrictStr, Any]] = Field(default_factory=dict)
    tasks: list[StrictStr] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    domains: list[StrictStr] = Field(default_factory=lambda: ["0", "1", "2"])
    tuner_space: list[TunerBlock]
    description: StrictStr = ""
    data_root: StrictStr | None = None

    @field_validator("vm_drop_features", mode="before")
    @classmethod
    def _drop(cls, v):
        if not isinstance(v, list) or not all(isinstance(f, str) for f in v):
            raise ValueError(f"vm_drop_features={v!r} must be a list of feature names")
        return v

    @field_validator("fm_epochs", "vm_epochs", mode="before")
    @classmethod
    def _epochs(cls, v, info):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{info.field_name}={v!r} must be a whole number >= 1")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("seeds gives no seed; a grid needs at least one")
        return v

    @field_validator("rounds")
    @classmethod
    def _rounds(cls, v):
        return _check_choices("round", v, ROUNDS)

    @field_validator("tuner_space")
    @classmethod
    def _space(cls, v):
        if not v:
            raise ValueError("tuner_space is empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Grid":
        if self.source == "synthetic" and isinstance(self.size, str):
            _check_choices("size", self.size, SIZES)
        if isinstance(self.size, int) and self.size < 1:
            raise ValueError(f"size={self.size!r} must be a number of impressions >= 1 or one of {list(SIZES)}")
        if self.world.domain_shift and self.dataset != "taobaoad":
            raise ValueError(f"world.domain_shift={self.world.domain_shift!r} is defined for taobaoad (its user-level "
                             f"domains), not {self.dataset}; expected 0")
        if self.mode == "domains" and self.dataset != "taobaoad":
            raise ValueError(f"mode 'domains' is defined for taobaoad (new_user_class_level), not {self.dataset}")
        if self.mode == "tasks" and self.dataset != "kuaivideo":
            raise ValueError(f"mode 'tasks' is defined for kuaivideo, not {self.dataset}")
        if self.mode == "tasks":
            for t in self.tasks:
                _check_choices("task", t, DEFAULT_TASKS)
        for i, block in enumerate(self.tuner_space):
            empty = [k for k, v in block.as_space().items() if isinstance(v, list) and not v]
            if empty:
                raise ValueError(f"tuner_space[{i}].{empty[0]}=[] is an empty list, so the grid expands to no cell; "
                                 f"expected at least one value")
            for v in _as_list(block.vm_schedule or self.vm_schedule):
                if v == "stream" and self.vm_epochs != 1:
                    raise ValueError("vm_schedule 'stream' trains one pass per day; vm_epochs must be 1")
        self._check_model_keys()
        return self

    def _check_model_keys(self) -> None:
        """Every override and tuner_space hyperparameter is a key its model accepts."""
        used = {t for b in self.tuner_space for t in _as_list(b.teacher)} | \
               {s for b in self.tuner_space for s in _as_list(b.student)}
        for name, overrides in self.model_overrides.items():
            if name != "all" and name not in MODEL_REGISTRY:
                raise ValueError(f"model_overrides names unknown model {name!r}; known: all, {sorted(MODEL_REGISTRY)}")
            models = sorted(used) if name == "all" else [name]
            _check_hparams(f"model_overrides.{name}", models, overrides, crossed=False)
        for i, block in enumerate(self.tuner_space):
            _check_hparams(f"tuner_space[{i}]", _as_list(block.student), block.hparams, crossed=True)

    @property
    def bars_dataset_id(self) -> str:
        return BARS_DATASET_IDS[self.dataset]

    @property
    def effective_source(self) -> str:
        return self.real_source if self.data_root else self.source


def _check_hparams(where: str, models: list[str], values: Mapping[str, Any], crossed: bool) -> None:
    unknown = unknown_keys(models, values)
    if unknown:
        kind = "tuner_space key(s)" if crossed else "model_overrides key(s)"
        known = f"; the cell keys are {sorted(CELL_KEYS)}, the distillation keys {sorted(DISTILL_KEYS)}" \
            if crossed else ""
        raise ValueError(f"{where}: unknown {kind} {describe_unknown(unknown)}: not a hyperparameter of "
                         f"{'/'.join(models)} (its constructor, its BARS configs or fuxictr's Base keys){known}")
    for key, value in values.items():
        for v in (_as_list(value) if crossed else [value]):
            ref = next((r for r in (shipped_value(m, key) for m in models) if r is not None), None)
            if isinstance(ref, (int, float)) and not isinstance(ref, bool) and isinstance(v, str):
                raise ValueError(f"{where}.{key}={v!r}: expected a number like {ref!r} (YAML reads 1e-3 as a "
                                 f"string; write 1.0e-3)")
            if isinstance(ref, list) and not isinstance(v, (list, type(None))) and not crossed:
                raise ValueError(f"{where}.{key}={v!r}: expected a list like {ref!r}")


FILE_KEYS = (set(Grid.model_fields) - {"name", "path", "data_root"}) | {"grid"}
GRID_KEYS = FILE_KEYS


def expand_cells(grid: Grid) -> list[Cell]:
    """Every cell of the grid, de-duplicated: ``none`` ignores scales and the teacher's
    knobs, ``kd`` ignores scales, so equal training runs appear once per teacher."""
    cells: dict[Cell, None] = {}
    units = grid.domains if grid.mode == "domains" else grid.tasks if grid.mode == "tasks" else [None]
    for spec in grid.tuner_space:
        block = spec.as_space()
        keys = list(block)
        for values in itertools.product(*(_as_list(block[k]) for k in keys)):
            choice = dict(zip(keys, values))
            distill = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                   for k, v in choice.items() if k in DISTILL_KEYS))
            hparams = tuple(sorted((k, _hashable(v)) for k, v in choice.items()
                                   if k not in DISTILL_KEYS and k not in CELL_KEYS))
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
                            feature_gap=tuple(grid.vm_drop_features), hparams=hparams, **scales)
                cells[cell] = None
    return list(cells)


def model_params(grid: Grid, model: str, base_params: Mapping[str, Any],
                 hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """BARS hyperparameters of ``model`` with the grid's overrides (``all`` first), then a
    cell's crossed hyperparameters (tuples back to lists, as YAML gave them)."""
    params = dict(base_params)
    params.update(grid.model_overrides.get("all", {}))
    params.update(grid.model_overrides.get(model, {}))
    for k, v in (hparams or {}).items():
        params[k] = _unhashable(v)
    return params


def _unhashable(value: Any) -> Any:
    return [_unhashable(v) for v in value] if isinstance(value, tuple) else value
