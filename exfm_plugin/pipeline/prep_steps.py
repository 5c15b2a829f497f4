"""The data steps: ``prep`` (the 8 day files and the feature map of a grid's dataset) and, for a
``domains`` grid, ``domains`` (each TaobaoAd domain's rows of each day as a day file of its own).

They are built before a grid is planned (:func:`prepare_data`): every later step's spec names
the prepared data (its key, its feature names, its day files), so a plan needs them done.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..contracts import DAYS, day_file_name
from ..data import read_day_attrs, read_day_columns, write_day_file
from ..data.dayfile import extra_attrs
from .artifacts import ArtifactStore, step_key
from .context import Context
from .grid import Grid
from .steps import Built, Step, read_built, run_step


@dataclass(frozen=True)
class PreparedData:
    """The output of the ``prep`` step, as the steps after it read it."""

    key: str
    data_dir: str
    dataset_id: str
    split_note: str | None

    def day_file(self, day: int) -> str:
        return os.path.join(self.data_dir, day_file_name(day))


@dataclass(frozen=True, eq=False, repr=False)
class PrepStep(Step):
    """The grid's dataset prepared (synthetic world, or the real files of ``data_root``)."""

    kind = "prep"
    grid: Grid

    @property
    def spec(self) -> dict[str, Any]:
        grid = self.grid
        spec: dict[str, Any] = {"dataset": grid.dataset, "source": grid.effective_source, "data_seed": grid.data_seed}
        if grid.effective_source == "synthetic":
            spec.update(size=grid.size, world=grid.world.model_dump(), truth=1)
        else:
            spec["data_root"] = os.path.abspath(grid.data_root)
        return spec

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        from data_prep.prepare import prepare

        grid, synthetic = self.grid, self.grid.effective_source == "synthetic"
        summary = prepare(grid.dataset, grid.effective_source, None if synthetic else grid.data_root, str(tmp),
                          seed=grid.data_seed, size=grid.size if synthetic else "tiny",
                          drift=grid.world.drift, domain_shift=grid.world.domain_shift)
        return {"data_dir": os.path.relpath(summary.data_dir, tmp), "dataset_id": summary.dataset_id}

    @staticmethod
    def prepared(built: Built) -> PreparedData:
        data_dir = str(built.path / built.meta["data_dir"])
        note = read_day_attrs(os.path.join(data_dir, day_file_name(DAYS[0]))).get("split_note")
        return PreparedData(built.key, data_dir, built.meta["dataset_id"], note or None)


@dataclass(frozen=True, eq=False, repr=False)
class DomainSplitStep(Step):
    """Every day's rows of each domain as ``day_<d>.domain_<domain>.h5`` (a domain VM's data)."""

    kind = "domains"
    prep_step: PrepStep
    prep: PreparedData

    @property
    def spec(self) -> dict[str, Any]:
        return _split_spec(self.prep)

    @property
    def deps(self) -> tuple[Step, ...]:
        return (self.prep_step,)

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        for d in DAYS:
            attrs = read_day_attrs(self.prep.day_file(d))
            cols = read_day_columns(self.prep.day_file(d))
            for dom in np.unique(cols["domain"]):
                keep = cols["domain"] == dom
                extra = {**extra_attrs(attrs), "domain": str(int(dom))}
                write_day_file(tmp / f"day_{d}.domain_{int(dom)}.h5", {k: v[keep] for k, v in cols.items()},
                               dataset_id=attrs["dataset_id"], day=d, time_range=attrs.get("time_range"), attrs=extra)
        return {}


def _split_spec(prep: PreparedData) -> dict[str, Any]:
    return {"prep": prep.key}


class DataNotBuilt(Exception):
    """A data step is not built and the caller asked not to build it (``exfm plan`` without --prepare)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind}/{key}")
        self.kind, self.key = kind, key


def data_steps(grid: Grid, prep: PreparedData | None = None) -> list[Step]:
    """The grid's data steps: ``prep``, then (``domains`` grid, once ``prep`` is known) the split."""
    steps: list[Step] = [PrepStep(grid)]
    if prep is not None and grid.mode == "domains":
        steps.append(DomainSplitStep(steps[0], prep))
    return steps


def _done(store: ArtifactStore, step: Step) -> Built:
    if not store.is_done(step.kind, step.key):
        raise DataNotBuilt(step.kind, step.key)
    return read_built(store, step)


def prepare_data(ctx: Context, *, build: bool = True) -> PreparedData:
    """Build (or, with ``build=False``, only read: :class:`DataNotBuilt` when missing) the data
    steps; returns the prepared data every later step reads."""
    def get(step: Step) -> Built:
        return run_step(ctx, step)[0] if build else _done(ctx.store, step)

    prep = PrepStep.prepared(get(PrepStep(ctx.grid)))
    for step in data_steps(ctx.grid, prep)[1:]:
        get(step)
    return prep


def domain_day_file(store: ArtifactStore, prep: PreparedData, day: int, domain: str) -> str:
    """One domain's day file in the (built) domain split of ``prep``."""
    path = store.path(DomainSplitStep.kind, step_key(DomainSplitStep.kind, _split_spec(prep)))
    path = path / f"day_{day}.domain_{domain}.h5"
    if not path.exists():
        raise FileNotFoundError(f"{path}: domain {domain!r} has no rows on day {day}")
    return str(path)


@functools.lru_cache(maxsize=None)
def _feature_map_json(data_dir: str) -> dict:
    """The prepared feature_map.json, read once per process (every cell asks for it)."""
    with open(os.path.join(data_dir, "feature_map.json")) as f:
        return json.load(f)


def feature_specs(prep: PreparedData) -> dict[str, dict]:
    """Feature name -> spec of the prepared feature map, in its order."""
    return {k: v for feat in _feature_map_json(prep.data_dir)["features"] for k, v in feat.items()}


def all_labels(prep: PreparedData) -> list[str]:
    return list(_feature_map_json(prep.data_dir)["labels"])


def day_label_mean(path: str, label: str) -> float:
    return float(read_day_columns(path, [label])[label].astype(np.float64).mean())
