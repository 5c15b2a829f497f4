"""The FM's steps: ``fm`` (the teacher trained through a day, published to its lineage's SPD) and
``fm_eval`` (its own metrics on a test day, for "does the FM beat the VMs").

``stream`` FM training (default, the paper's one pass in arrival order): the FM of day d is the
FM of day d-1 plus one pass over day d (weights and optimizer state carried on), so its step
depends on the day before's; ``epochs``: a fresh FM trained ``fm_epochs`` passes over days 1..d.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import build_model
from ..contracts import fm_pred_column
from ..data import H5DataLoader
from .artifacts import step_key
from .context import Context
from .evaluation import EVAL_BATCH, constant_metrics, evaluate_predictions, labels_and_groups
from .logging_run import run_log
from .params import jsonable_params, load_feature_map
from .prep_steps import PreparedData
from .steps import Built, Step
from .training import train_one_pass


@dataclass(frozen=True, eq=False, repr=False)
class FMStep(Step):
    """The FM ``teacher`` (seed ``seed``, BARS ``params``) trained through ``through_day``."""

    kind = "fm"
    prep: PreparedData
    teacher: str
    seed: int
    through_day: int
    params: dict
    fm_training: str
    fm_epochs: int
    parent: "FMStep | None" = None  # the day before's FM (``stream`` training, day > 1)

    @property
    def lineage(self) -> dict[str, Any]:
        """What every day of this FM shares: its SPD (snapshot store) is keyed by it."""
        return {"prep": self.prep.key, "teacher": self.teacher, "params": jsonable_params(self.params),
                "seed": self.seed, "fm_training": self.fm_training, "fm_epochs": self.fm_epochs}

    @property
    def spec(self) -> dict[str, Any]:
        return {**self.lineage, "through_day": self.through_day, "parent": self.parent.key if self.parent else None}

    @property
    def deps(self) -> tuple[Step, ...]:
        return (self.parent,) if self.parent is not None else ()

    @property
    def snapshot_id(self) -> str:
        """The id it is published under in its SPD (the records name it)."""
        return f"{self.teacher}-d{self.through_day}-{self.key}"

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        from ..das.spd import SnapshotExists, SnapshotNotFound, SnapshotStore

        params, seed, through_day, prep = self.params, self.seed, self.through_day, self.prep
        spd_root = str(ctx.store.root / "spd" / step_key("lineage", self.lineage))
        fmap = load_feature_map(prep, params)
        torch.manual_seed(seed)
        model = build_model(dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu), fmap)
        if self.parent is not None:
            parent_dir = inputs[self.parent.key].path
            model.load_state_dict(torch.load(parent_dir / "weights.pt", map_location=model.device))
            model.optimizer.load_state_dict(torch.load(parent_dir / "optimizer.pt", map_location=model.device))
            days, passes = [through_day], 1
        else:
            days = [through_day] if self.fm_training == "stream" else list(range(1, through_day + 1))
            passes = 1 if self.fm_training == "stream" else self.fm_epochs
        rows = secs = 0.0
        for p in range(passes):
            loader = H5DataLoader(fmap, [prep.day_file(d) for d in days], batch_size=params["batch_size"],
                                  shuffle=True, seed=seed * 1000 + through_day * 10 + p)
            r, s = train_one_pass(model, loader, f"FM {self.teacher} day {days[-1]}", ctx.progress)
            rows, secs = rows + r, secs + s
            run_log.info("[Train] FM %s seed %d day %s pass %d/%d: %d rows, %.1f s", self.teacher, seed,
                         ",".join(map(str, days)), p + 1, passes, r, s)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(model.optimizer.state_dict(), tmp / "optimizer.pt")
        spd = SnapshotStore(spd_root)
        try:
            spd.get(self.snapshot_id)  # published by an earlier, interrupted run of this very step
        except SnapshotNotFound:
            try:
                spd.publish(model, model_params=jsonable_params(params), feature_map_dir=prep.data_dir,
                            trained_through_day=through_day, snapshot_id=self.snapshot_id)
            except SnapshotExists:  # another process building this very step published first
                spd.get(self.snapshot_id)
        return {"snapshot_id": self.snapshot_id, "spd_root": spd_root, "train_rows": rows, "train_seconds": secs}


@dataclass(frozen=True, eq=False, repr=False)
class FMEvalStep(Step):
    """The FM's metrics on ``test_file`` (label ``label``), NE on the VMs' common ``base_rate``."""

    kind = "fm_eval"
    fm: FMStep
    test_file: str
    label: str
    base_rate: float

    @property
    def spec(self) -> dict[str, Any]:
        return {"fm": self.fm.key, "test_file": os.path.abspath(self.test_file), "label": self.label,
                "base_rate": self.base_rate}

    @property
    def deps(self) -> tuple[Step, ...]:
        return (self.fm,)

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        from ..das.spd import SnapshotStore

        fm = inputs[self.fm.key].meta
        loaded = SnapshotStore(fm["spd_root"]).load(fm["snapshot_id"], device=ctx.device)
        loader = H5DataLoader(loaded.feature_map, self.test_file, split="test", batch_size=EVAL_BATCH,
                              allow_missing_labels=True)
        column = fm_pred_column(self.label, loaded.info.multitask)
        start = time.perf_counter()
        pred = np.concatenate([loaded.predict_batch(b)[column] for b in loader])
        secs = time.perf_counter() - start
        y, group = labels_and_groups(self.test_file, self.label)
        return {**evaluate_predictions(y, pred, group, self.base_rate),
                "constant": constant_metrics(y, self.base_rate),
                "ne_base_rate": self.base_rate, "eval_samples_per_s": len(y) / max(secs, 1e-9)}
