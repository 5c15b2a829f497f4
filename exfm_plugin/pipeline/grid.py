"""Experiment grids in FuxiCTR's tuner style, expanded into the cells of a table or figure.

A grid file names its data (``dataset``, ``source``, ``size``), the protocol (``mode``,
``rounds``, FM training) and a ``tuner_space`` whose list values are crossed, as in fuxictr's
``autotuner.enumerate_params``. fuxictr's expander is tied to one ``base_expid`` and writes
config files; a cell here crosses a teacher model with a student model, so the expansion is
done here, with the same semantics (scalars are fixed, lists are crossed). ``tuner_space`` may
also be a list of such blocks, whose expansions are concatenated: that is how one-at-a-time
sweeps (Figures 10-11) are written. A ``tuner_space`` key that is not a cell or distillation
key is a hyperparameter of the student (VM) model, crossed like the others
(``embedding_dim: [8, 16]``); the FM's come from ``model_overrides``.

The file's schema is a pydantic model; every error (bad YAML, a tab, a wrong type, an unknown
key, with its close matches) is a :class:`GridError` naming the file and the key.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)

from data_prep.readers import REAL_FILES  # files a real data root must hold: the readers' own names

from ..contracts import (BARS_DATASET_IDS, DATASETS, FM_TRAINING, METHODS, ROUNDS, SIZES, SOURCES, VM_SCHEDULES,
                         WORLD_LEVEL_SEPARATOR, test_day, train_day)
from ..distill.config import DISTILL_FIELDS, DistillConfig
from ..errors import ExfmInputError, check_choice
from ..models import MODEL_REGISTRY
from ..resources import resolve_grid
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


_TYPE_TAGS = ("int", "float", "str", "bool", "none", "list", "dict", "function", "constrained", "literal")


def _clean_loc(loc: tuple) -> tuple:
    """The error's location without pydantic's union-member tags (``int``, ``list[str]``, ...)."""
    return tuple(p for p in loc if isinstance(p, int) or not (p.startswith(_TYPE_TAGS) and
                                                            (p in _TYPE_TAGS or "[" in p or "-" in p)))


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format_errors(path: str, errors: list[Mapping[str, Any]]) -> str:
    """One message per location: ``file: key=value: expected ...`` (union alternatives joined)."""
    grouped: dict[tuple, list[Mapping[str, Any]]] = {}
    for err in errors:
        grouped.setdefault(_clean_loc(err["loc"]), []).append(err)
    lines = []
    for loc, errs in grouped.items():
        where = _where(loc)
        value_errors = [e for e in errs if e["type"] == "value_error"]
        if value_errors:  # our validators' messages already name the key and value
            msg = value_errors[0]["msg"].removeprefix("Value error, ")
            leaf = str(loc[-1]) if loc and not isinstance(loc[-1], int) else ""
            lines.append(f"{path}: {msg}" + (f" (at {where})" if where and leaf not in msg else ""))
        elif errs[0]["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown grid key {where!r}; known: {sorted(FILE_KEYS)}")
        elif errs[0]["type"] == "missing":
            lines.append(f"{path}: missing key {where!r}")
        else:
            expected = " or ".join(dict.fromkeys(
                f"one of [{e['ctx']['expected']}]" if e["type"] == "literal_error"
                else e["msg"].removeprefix("Input should be ") for e in errs))
            lines.append(f"{path}: {where}={errs[0]['input']!r}: expected {expected}")
    return "; ".join(lines)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        hint = " (YAML indents with spaces, not tabs)" if "\\t" in str(exc) or "\t" in str(exc) else ""
        raise GridError(f"{path}:{at}: not valid YAML: {problem}{hint}") from None
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping of keys, got {type(raw).__name__}")
    return raw


LEVEL_KEYS = ("drift", "domain_shift", "data_seed")  # what a grid file may give as a list of levels


def grid_levels(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The levels a grid file asks for: its world dials and its ``data_seed`` given as lists (a
    dose-response, ``world: {domain_shift: [0, 0.5, 1]}``; several worlds, ``data_seed: [0, 1]``)
    are crossed like tuner_space keys, scalars fixed. Each level is ``{"world": ..., "data_seed":
    ..., "varied": {key: value}}``; a file without lists has one level with nothing varied."""
    world = raw.get("world")
    world = dict(world) if isinstance(world, dict) else world
    axes: dict[str, list] = {}
    if isinstance(world, dict):
        axes.update({k: v for k, v in world.items() if isinstance(v, list)})
    if isinstance(raw.get("data_seed"), list):
        axes["data_seed"] = raw["data_seed"]
    levels = []
    for values in itertools.product(*axes.values()):
        varied = dict(zip(axes, values))
        level_world = {k: varied.get(k, v) for k, v in world.items()} if isinstance(world, dict) else world
        levels.append({"world": level_world, "data_seed": varied.get("data_seed", raw.get("data_seed", 0)),
                       "varied": varied})
    return levels


def level_name(grid: str, varied: Mapping[str, Any]) -> str:
    """``science_bias@domain_shift=0.5``: a grid's name at one level of what it varies."""
    if not varied:
        return grid
    return grid + WORLD_LEVEL_SEPARATOR + ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                                   for k, v in varied.items())


def load_grids(path: str, **overrides: Any) -> list[Grid]:
    """Every level of a grid file (:func:`grid_levels`), each a :class:`Grid` named by
    :func:`level_name`; a file without lists gives one grid. ``overrides`` as :func:`load_grid`."""
    try:
        resolved = resolve_grid(path)
    except FileNotFoundError as exc:
        raise GridError(str(exc)) from None
    raw = _read_yaml(resolved)
    levels = grid_levels(raw)
    if len(levels) == 1 and not levels[0]["varied"]:
        return [load_grid(path, **overrides)]
    name = str(raw.get("grid", Path(resolved).stem))
    return [_load(resolved, raw, **overrides, level={"world": lv["world"], "data_seed": lv["data_seed"],
                                                     "name": level_name(name, lv["varied"])})
            for lv in levels]


def load_grid(path: str, *, seeds: int | None = None, data_root: str | None = None,
              size: str | int | None = None, vm_schedule: str | None = None) -> Grid:
    """Read and validate a grid file (a path, or a shipped grid's name such as ``table2``);
    ``seeds`` (a count), ``data_root``, the synthetic ``size`` and ``vm_schedule`` (for every
    cell) override it. A file whose world dials are lists has several levels: :func:`load_grids`."""
    try:
        path = resolve_grid(path)
    except FileNotFoundError as exc:
        raise GridError(str(exc)) from None
    raw = _read_yaml(path)
    if any(lv["varied"] for lv in grid_levels(raw)):
        raise GridError(f"{path}: world dials or data_seed given as lists make several grids (a dose-response "
                        f"or several worlds); load them with load_grids")
    return _load(path, raw, seeds=seeds, data_root=data_root, size=size, vm_schedule=vm_schedule)


def _load(path: str, raw: dict, *, seeds: int | None = None, data_root: str | None = None,
          size: str | int | None = None, vm_schedule: str | None = None, level: dict | None = None) -> Grid:
    unknown = sorted(set(raw) - FILE_KEYS)
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {unknown}; known: {sorted(FILE_KEYS)}")
    if "dataset" not in raw or "tuner_space" not in raw:
        raise GridError(f"{path}: a grid needs 'dataset' and 'tuner_space'")
    kwargs = dict(raw)
    kwargs["name"] = kwargs.pop("grid", Path(path).stem)
    if level is not None:  # one level of a file that varies its world or data_seed
        kwargs["name"], kwargs["data_seed"] = level["name"], level["data_seed"]
        if level["world"] is not None:
            kwargs["world"] = level["world"]
    raw_seeds = raw.get("seeds", [0])
    kwargs["seeds"] = list(range(seeds)) if seeds else \
        (list(range(raw_seeds)) if isinstance(raw_seeds, int) and not isinstance(raw_seeds, bool)
         else _as_list(raw_seeds))
    kwargs["rounds"] = _as_list(raw.get("rounds", [0]))
    space = raw["tuner_space"]
    blocks = _as_list(space)
    if not all(isinstance(b, dict) for b in blocks):
        raise GridError(f"{path}: tuner_space must be a mapping or a list of mappings, got {space!r}")
    kwargs["tuner_space"] = [dict(block) for block in blocks]
    if size is not None:
        kwargs["size"] = int(size) if str(size).isdigit() else size
    if vm_schedule is not None:
        kwargs["vm_schedule"] = vm_schedule
        kwargs["tuner_space"] = [{k: v for k, v in block.items() if k != "vm_schedule"}
                                 for block in kwargs["tuner_space"]]
    if kwargs.get("base_config") is not None and not os.path.isabs(kwargs["base_config"]):
        kwargs["base_config"] = os.path.join(os.path.dirname(os.path.abspath(path)), kwargs["base_config"])
    try:
        grid = Grid(path=path, data_root=data_root, **kwargs)
    except ValidationError as exc:
        raise GridError(_format_errors(path, exc.errors())) from None
    except TypeError as exc:  # a non-string key
        raise GridError(f"{path}: {exc}") from None
    _check_data_root(grid)
    _check_cells(grid)
    return grid


def _check_data_root(grid: Grid) -> None:
    if grid.data_root is None:
        return
    if not os.path.isdir(grid.data_root):
        raise GridError(f"--data-root {grid.data_root!r} is not a directory")
    missing = [" or ".join(group) for group in REAL_FILES[(grid.dataset, grid.real_source)]
               if not any(os.path.isfile(os.path.join(grid.data_root, name)) for name in group)]
    if missing:
        raise GridError(f"--data-root {grid.data_root!r} does not hold {grid.dataset} {grid.real_source} files: "
                        f"missing {missing}")


def _check_cells(grid: Grid) -> None:
    cells = expand_cells(grid)
    if not cells:
        raise GridError(f"{grid.path}: the grid expands to no cell (an empty list in tuner_space, rounds or seeds?)")
    for cell in cells:  # every scale and distill option is valid before any work
        try:
            cell.distill_config("fm_pred")
        except ValueError as exc:
            raise GridError(f"{grid.path}: {exc}") from exc


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
