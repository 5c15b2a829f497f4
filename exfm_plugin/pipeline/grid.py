"""Reading experiment grid files (FuxiCTR's tuner style) into validated grids, and their levels.

A grid file names its data (``dataset``, ``source``, ``size``), the protocol (``mode``,
``rounds``, FM training) and a ``tuner_space`` whose list values are crossed, as in fuxictr's
``autotuner.enumerate_params``. fuxictr's expander is tied to one ``base_expid`` and writes
config files; a cell here crosses a teacher model with a student model, so the expansion is
done here, with the same semantics (scalars are fixed, lists are crossed). ``tuner_space`` may
also be a list of such blocks, whose expansions are concatenated: that is how one-at-a-time
sweeps (Figures 10-11) are written. A ``tuner_space`` key that is not a cell or distillation
key is a hyperparameter of the student (VM) model, crossed like the others
(``embedding_dim: [8, 16]``); the FM's come from ``model_overrides``.

The file's schema is a pydantic model (:mod:`.grid_schema`, re-exported here with the
expansion into cells); every error (bad YAML, a tab, a wrong type, an unknown key, with its close
matches) is a :class:`GridError` naming the file and the key. A file whose world dials or
``data_seed`` are lists is several grids, one per level (:func:`load_grids`).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from data_prep.readers import REAL_FILES  # files a real data root must hold: the readers' own names

from ..contracts import WORLD_LEVEL_SEPARATOR
from ..resources import resolve_grid
from .grid_schema import (CELL_KEYS, DEFAULT_TASKS, DISTILL_KEYS, FILE_KEYS, GRID_KEYS, MODES,  # noqa: F401
                          MULTITASK_TEACHERS, STUDENTS, TEACHERS, Cell, Grid, GridError, TunerBlock, WorldDials,
                          _as_list, expand_cells, model_params)

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
