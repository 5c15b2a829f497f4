"""The VM's steps: ``vm`` (a link: the student after one more day of training) and ``vm_eval``
(the exported serving model of a cell's last link on its test day).

``day`` schedule (the paper's public protocol): one link, a fresh VM making ``vm_epochs`` passes
over day 5+r. ``stream`` (the paper's Figure 1(c)): one link per day 1..5+r, each one pass,
weights and optimizer state carried from its parent link; day d is supervised by the FM snapshot
trained through day d-1 (its ``das`` step's split) and day 1 (no snapshot yet) is trained as ``none``.

A link's key hashes its parent's key, its day's input and the method *in force so far*: the
unsupervised prefix of a stream (day 1) is the same training run for every method, so it is one
step shared by every cell, like the FM's own chain.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import build_model
from ..contracts import SERVING_WEIGHTS
from ..data import H5DataLoader
from ..distill import DistillConfig, ExFMStudent, export_serving_model
from .context import Context
from .das_step import DASStep, split_file
from .evaluation import EVAL_BATCH, constant_metrics, evaluate_predictions, labels_and_groups
from .logging_run import LossTermMeter, format_list, run_log
from .params import jsonable_params, load_feature_map, training_options
from .prep_steps import PreparedData
from .steps import Built, Step
from .training import train_one_pass

STATE = "student.pt"


def _optimizers(student: ExFMStudent) -> dict[str, torch.optim.Optimizer]:
    return {name: opt for name, opt in (("vm", student.optimizer), ("adapter", student.adapter_optimizer))
            if opt is not None}


def named_optimizer_state(student: ExFMStudent) -> dict[str, dict[str, Any]]:
    """Optimizer state keyed by parameter name, so it carries over to a student whose parameter
    set differs (the ``none`` prefix of a stream continued by a method with extra heads)."""
    names = {id(p): n for n, p in student.named_parameters()}
    return {opt_name: {names[id(p)]: state for p, state in opt.state.items()}
            for opt_name, opt in _optimizers(student).items()}


def load_named_optimizer_state(student: ExFMStudent, saved: dict[str, dict[str, Any]]) -> None:
    params = dict(student.named_parameters())
    for opt_name, opt in _optimizers(student).items():
        for name, state in saved.get(opt_name, {}).items():
            if name in params:
                opt.state[params[name]] = state


@dataclass(frozen=True, eq=False, repr=False)
class VMLinkStep(Step):
    """The student ``student`` after training on ``day``: from ``parent`` (or fresh), with
    ``config`` (the method in force), ``passes`` passes over the day's input: the split of
    ``vm_name`` in ``das`` when supervised, else ``day_file``."""

    kind = "vm"
    prep: PreparedData
    student: str
    seed: int
    params: dict
    config: DistillConfig
    label: str
    day: int
    input_key: str  # names the input's content: "<FM key>/<day>/<VM name>", or the day file's path
    fm_column: str | None  # the FM's prediction column (None: trained as ``none`` that day)
    passes: int
    vm_name: str
    day_file: str
    das: DASStep | None = None
    parent: "VMLinkStep | None" = None

    @property
    def spec(self) -> dict[str, Any]:
        return {"prep": self.prep.key, "student": self.student, "params": jsonable_params(self.params),
                "seed": self.seed, "distill": self.config.as_dict(), "label": self.label, "day": self.day,
                "input": self.input_key, "fm_column": self.fm_column, "passes": self.passes,
                "parent": self.parent.key if self.parent else None}

    @property
    def deps(self) -> tuple[Step, ...]:
        return tuple(s for s in (self.parent, self.das) if s is not None)

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        params, config, seed, day = self.params, self.config, self.seed, self.day
        file = split_file(inputs[self.das.key], self.vm_name) if self.das is not None else self.day_file
        parent = inputs[self.parent.key] if self.parent is not None else None
        fmap = load_feature_map(self.prep, params, labels=[self.label])
        torch.manual_seed(seed)
        vm = build_model(dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu), fmap)
        student = ExFMStudent(vm, config)
        if parent is not None:
            saved = torch.load(parent.path / STATE, map_location=student.device, weights_only=True)
            student.load_state_dict(saved["student"], strict=False)  # heads new to this method start fresh
            load_named_optimizer_state(student, saved["optimizers"])
        extra = [self.fm_column] if self.fm_column else []
        rows = secs = 0.0
        terms: dict[str, float] = {}
        pass_terms: list[dict[str, float]] = []  # every pass's rows, seconds and mean loss terms
        for p in range(self.passes):
            loader = H5DataLoader(fmap, file, batch_size=params["batch_size"], shuffle=True,
                                  seed=seed * 1000 + day * 10 + p, extra_columns=extra)
            meter = LossTermMeter(loader, student)
            r, s = train_one_pass(student, meter, f"VM {self.student}/{config.method} day {day}", ctx.progress)
            rows, secs = rows + r, secs + s
            terms = meter.means()
            pass_terms.append({"rows": int(r), "seconds": s, **terms})
            run_log.info("[Train] VM %s/%s day %d pass %d/%d: %d rows, %.1f s - loss %s", self.student,
                         config.method, day, p + 1, self.passes, r, s, format_list(terms))
        torch.save({"student": student.state_dict(), "optimizers": named_optimizer_state(student)}, tmp / STATE)
        torch.save(export_serving_model(student).state_dict(), tmp / SERVING_WEIGHTS)
        total = rows + (parent.meta["train_rows"] if parent else 0)
        return {"train_rows": int(total), "day_rows": int(rows), "train_seconds": secs,
                "train_samples_per_s": rows / max(secs, 1e-9), "method_in_force": config.method,
                "loss_terms": terms, "pass_terms": pass_terms}


@dataclass(frozen=True, eq=False, repr=False)
class VMEvalStep(Step):
    """The serving model of ``link`` on ``test_file`` (label ``label``); NE normalised by ``base_rate``."""

    kind = "vm_eval"
    prep: PreparedData
    params: dict
    link: VMLinkStep
    test_file: str
    label: str
    base_rate: float

    @property
    def spec(self) -> dict[str, Any]:
        return {"link": self.link.key, "test_file": os.path.abspath(self.test_file), "label": self.label,
                "base_rate": self.base_rate}

    @property
    def deps(self) -> tuple[Step, ...]:
        return (self.link,)

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        link, params, label = inputs[self.link.key], self.params, self.label
        fmap = load_feature_map(self.prep, params, labels=[label])
        vm = build_model(dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu), fmap)
        vm.load_state_dict(torch.load(link.path / SERVING_WEIGHTS, map_location=vm.device, weights_only=True))
        vm.eval()
        start = time.perf_counter()
        pred = vm.predict(H5DataLoader(fmap, self.test_file, split="test", batch_size=EVAL_BATCH))
        eval_secs = time.perf_counter() - start
        y, group = labels_and_groups(self.test_file, label)
        return {**evaluate_predictions(y, pred, group, self.base_rate),
                "constant": constant_metrics(y, self.base_rate), "ne_base_rate": self.base_rate,
                "train_rows": link.meta["train_rows"], "train_samples_per_s": link.meta["train_samples_per_s"],
                "eval_samples_per_s": len(y) / max(eval_secs, 1e-9), "train_seconds": link.meta["train_seconds"],
                "vm_artifact": str(link.path), **training_options(params)}
