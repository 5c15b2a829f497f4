"""VM training under the two schedules, as a chain of content-addressed links, and its evaluation.

``day`` (the paper's public protocol): a fresh VM makes ``vm_epochs`` passes over day 5+r.
``stream`` (the paper's Figure 1(c)): one VM trained one pass per day in time order, days
1..5+r, weights and optimizer state carried from day to day; day d is supervised by the FM
snapshot trained through day d-1 and day 1 (no snapshot yet) is trained as ``none``.

Each link (the VM after one more day) is an artifact keyed by its parent's key, its day's
input and the method *in force so far*: the unsupervised prefix of a stream (day 1) is the
same training run for every method, so it is built once and shared, like the FM's own chain.
The evaluation of the last link is an artifact of its own.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import build_model
from ..contracts import SERVING_WEIGHTS
from ..data import H5DataLoader
from ..distill import DistillConfig, ExFMStudent, export_serving_model
from .grid import Cell, model_params
from .logging_run import LossTermMeter, format_list, run_log
from .stages import (EVAL_BATCH, Context, PreparedData, bars_params, constant_metrics, evaluate_predictions,
                     jsonable_params, labels_and_groups, load_feature_map, train_one_pass,
                     training_options)

STATE = "student.pt"
SERVING = SERVING_WEIGHTS


@dataclass(frozen=True)
class DayInput:
    """One day of a VM's training: the file it reads (an FM-augmented split when supervised),
    a key naming that file's content, and the FM column (None: trained as ``none`` that day)."""

    day: int
    file: str
    key: str
    fm_column: str | None


def student_params(ctx: Context, prep: PreparedData, cell: Cell) -> dict[str, Any]:
    """The VM's BARS hyperparameters with the grid's overrides and the cell's crossed ones."""
    params = bars_params(ctx, prep, cell.student, cell.seed, drop_features=cell.feature_gap)
    return model_params(ctx.grid, cell.student, params, dict(cell.hparams)) if cell.hparams else params


def _optimizers(student: ExFMStudent) -> dict[str, torch.optim.Optimizer]:
    return {name: opt for name, opt in (("vm", student.optimizer), ("adapter", student.adapter_optimizer))
            if opt is not None}


def _named_optimizer_state(student: ExFMStudent) -> dict[str, dict[str, Any]]:
    """Optimizer state keyed by parameter name, so it carries over to a student whose parameter
    set differs (the ``none`` prefix of a stream continued by a method with extra heads)."""
    names = {id(p): n for n, p in student.named_parameters()}
    return {opt_name: {names[id(p)]: state for p, state in opt.state.items()}
            for opt_name, opt in _optimizers(student).items()}


def _load_named_optimizer_state(student: ExFMStudent, saved: dict[str, dict[str, Any]]) -> None:
    params = dict(student.named_parameters())
    for opt_name, opt in _optimizers(student).items():
        for name, state in saved.get(opt_name, {}).items():
            if name in params:
                opt.state[params[name]] = state


def _config_in_force(cell: Cell, inputs: list[DayInput], fm_column: str | None) -> DistillConfig:
    """The cell's method once any day so far was supervised; ``none`` before that."""
    supervised = any(d.fm_column is not None for d in inputs)
    return cell.distill_config(fm_column) if supervised else DistillConfig(method="none")


def vm_link_stage(ctx: Context, prep: PreparedData, cell: Cell, label: str, inputs: list[DayInput]) -> tuple[str, Path, dict]:
    """The student after training on ``inputs`` in order (one link per day, shared prefixes
    built once); returns the last link's ``(key, dir, meta)``."""
    last = inputs[-1]
    parent = vm_link_stage(ctx, prep, cell, label, inputs[:-1]) if len(inputs) > 1 else None
    fm_column = next((d.fm_column for d in reversed(inputs) if d.fm_column), None)
    config = _config_in_force(cell, inputs, fm_column)
    params = student_params(ctx, prep, cell)
    passes = ctx.grid.vm_epochs if cell.vm_schedule == "day" else 1
    spec = {"prep": prep.key, "student": cell.student, "params": jsonable_params(params), "seed": cell.seed,
            "distill": config.as_dict(), "label": label, "day": last.day, "input": last.key,
            "fm_column": last.fm_column, "passes": passes, "parent": parent[0] if parent else None}

    def build(tmp: Path) -> dict:
        fmap = load_feature_map(prep, params, labels=[label])
        torch.manual_seed(cell.seed)
        vm = build_model(dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu), fmap)
        student = ExFMStudent(vm, config)
        if parent is not None:
            saved = torch.load(parent[1] / STATE, map_location=student.device, weights_only=True)
            student.load_state_dict(saved["student"], strict=False)  # heads new to this method start fresh
            _load_named_optimizer_state(student, saved["optimizers"])
        extra = [last.fm_column] if last.fm_column else []
        rows = secs = 0.0
        terms: dict[str, float] = {}
        pass_terms: list[dict[str, float]] = []  # every pass's rows, seconds and mean loss terms
        for p in range(passes):
            loader = H5DataLoader(fmap, last.file, batch_size=params["batch_size"], shuffle=True,
                                  seed=cell.seed * 1000 + last.day * 10 + p, extra_columns=extra)
            meter = LossTermMeter(loader, student)
            r, s = train_one_pass(student, meter, f"VM {cell.student}/{config.method} day {last.day}",
                                  ctx.progress)
            rows, secs = rows + r, secs + s
            terms = meter.means()
            pass_terms.append({"rows": int(r), "seconds": s, **terms})
            run_log.info("[Train] VM %s/%s day %d pass %d/%d: %d rows, %.1f s - loss %s", cell.student,
                         config.method, last.day, p + 1, passes, r, s, format_list(terms))
        torch.save({"student": student.state_dict(), "optimizers": _named_optimizer_state(student)}, tmp / STATE)
        torch.save(export_serving_model(student).state_dict(), tmp / SERVING)
        total = rows + (parent[2]["train_rows"] if parent else 0)
        return {"train_rows": int(total), "day_rows": int(rows), "train_seconds": secs,
                "train_samples_per_s": rows / max(secs, 1e-9), "method_in_force": config.method,
                "loss_terms": terms, "pass_terms": pass_terms}

    return ctx.store.build("vm", spec, build)


def vm_eval_stage(ctx: Context, prep: PreparedData, cell: Cell, label: str, link: tuple[str, Path, dict],
                  test_file: str, base_rate: float) -> dict:
    """The exported serving model of ``link`` on ``test_file``; NE normalised by ``base_rate``."""
    params = student_params(ctx, prep, cell)
    spec = {"link": link[0], "test_file": os.path.abspath(test_file), "label": label, "base_rate": base_rate}

    def build(tmp: Path) -> dict:
        fmap = load_feature_map(prep, params, labels=[label])
        vm = build_model(dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu), fmap)
        vm.load_state_dict(torch.load(link[1] / SERVING, map_location=vm.device, weights_only=True))
        vm.eval()
        start = time.perf_counter()
        pred = vm.predict(H5DataLoader(fmap, test_file, split="test", batch_size=EVAL_BATCH))
        eval_secs = time.perf_counter() - start
        y, group = labels_and_groups(test_file, label)
        return {**evaluate_predictions(y, pred, group, base_rate), "constant": constant_metrics(y, base_rate),
                "ne_base_rate": base_rate, "train_rows": link[2]["train_rows"],
                "train_samples_per_s": link[2]["train_samples_per_s"],
                "eval_samples_per_s": len(y) / max(eval_secs, 1e-9), "train_seconds": link[2]["train_seconds"],
                "vm_artifact": str(link[1]), **training_options(params)}

    return ctx.store.build("vm_eval", spec, build)[2]
