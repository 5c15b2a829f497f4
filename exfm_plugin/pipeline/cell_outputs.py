"""FuxiCTR-style per-cell outputs: ``<results>/<grid>/<cell_id>/`` for every evaluated VM cell.

fuxictr keeps, per experiment, its config, its log and its checkpoint side by side; a grid cell
here gets the same::

    params.yaml        everything that ran: model params, distill config, schedule, days, passes, seed, size
    train.log          the cell's lines of ``<results>/logs/<grid>.log`` (its [Train] and [Metrics] lines)
    losses.csv         one row per training pass of every day of the VM's chain (rows, seconds, loss terms)
    serving_model.pt   the exported serving model of the last link (a hard link, or a copy across devices)

The per-pass losses come from the chain of VM links: the last link's spec names its ``parent``
link, whose meta holds that day's ``pass_terms`` (or, for links built before they were kept, the
last pass's ``loss_terms`` and the day's ``day_rows``). A day shared with other cells (the
unsupervised prefix of a stream) was trained once; its rows appear in every cell that continues it.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..contracts import SERVING_WEIGHTS
from .artifacts import ArtifactStore
from .grid import Grid

logger = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
LOG_FILE = "train.log"
LOSSES_FILE = "losses.csv"
#: the loss terms of a pass, in the order a reader expects them; unknown ones follow, sorted
TERM_ORDER = ("serving", "kd", "aux", "adapter_head", "adapter", "model_aux", "total")
CURVE_FIELDS = ("day", "pass", "passes", "method", "rows", "seconds")
VM_KIND = "vm"


def cell_output_dir(results_dir: str | os.PathLike, grid: str, cell_id: str) -> Path:
    """Where a cell's outputs live: ``<results>/<grid>/<cell_id>``."""
    return Path(results_dir) / grid / cell_id


def results_dir_of(records_file: str | os.PathLike) -> Path:
    """The results folder of a records file ``<results>/records/<grid>.jsonl`` (its parent otherwise)."""
    parent = Path(records_file).parent
    return parent.parent if parent.name == "records" else parent


def link_chain(store: ArtifactStore, last_key: str) -> list[dict[str, Any]]:
    """The metas of a VM's links, first day first, following each spec's ``parent`` key."""
    chain, key = [], last_key
    while key is not None:
        meta = store.meta(VM_KIND, key)
        chain.append(meta)
        key = meta["spec"].get("parent")
    return chain[::-1]


def training_curve(chain: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per training pass of the chain: day, pass (1-based), passes that day, the method
    in force, rows, seconds and the pass's mean loss terms."""
    curve = []
    for meta in chain:
        spec = meta["spec"]
        passes = int(spec.get("passes", 1))
        per_pass = meta.get("pass_terms") or [{"rows": meta.get("day_rows"), "seconds": meta.get("train_seconds"),
                                               **(meta.get("loss_terms") or {})}]
        first = passes - len(per_pass) + 1  # an old link kept only its last pass
        for i, terms in enumerate(per_pass):
            entry = {"day": int(spec["day"]), "pass": first + i, "passes": passes,
                     "method": meta.get("method_in_force") or spec["distill"].get("method")}
            entry.update(terms)
            curve.append(entry)
    return curve


def loss_columns(curve: list[Mapping[str, Any]]) -> list[str]:
    """The loss-term columns of a curve: :data:`TERM_ORDER` first, any others sorted."""
    terms = {k for e in curve for k in e if k not in CURVE_FIELDS}
    return [t for t in TERM_ORDER if t in terms] + sorted(terms - set(TERM_ORDER))


def write_losses_csv(path: Path, curve: list[Mapping[str, Any]]) -> None:
    """``losses.csv``: the curve with one column per loss term (empty where a pass has no such term)."""
    columns = list(CURVE_FIELDS) + loss_columns(curve)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(curve)


def cell_log_lines(log_path: str | os.PathLike, cell_id: str) -> list[str]:
    """The lines of the grid log from the cell's last start line to its ``[Metrics]`` line."""
    if not os.path.exists(log_path):
        return []
    lines = Path(log_path).read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if f" cell {cell_id}: " in line]
    if not starts:
        return []
    section = lines[starts[-1]:]
    end = next((i for i, line in enumerate(section) if f" cell {cell_id} [Metrics]" in line), len(section) - 1)
    return section[:end + 1]


def _params(grid: Grid, record: Mapping[str, Any], chain: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What ran, as one YAML document: the cell, the data, the schedule and the last link's spec."""
    last = chain[-1]["spec"]
    keep = ("grid", "cell_id", "kind", "dataset", "data_source", "teacher", "student", "method", "label_scale",
            "grad_scale", "loss_weight", "seed", "round", "train_day", "test_day", "domain", "task",
            "fm_frozen_after_day", "fm_staleness_days", "vm_schedule", "feature_gap", "hparams", "snapshot_id",
            "embedding_update", "precision", "torch_compile")
    out: dict[str, Any] = {k: record[k] for k in keep if k in record}
    out.update({"data_size": grid.size, "data_seed": grid.data_seed, "grid_seeds": grid.seeds,
                "label": last.get("label"),
                "train_days": [int(m["spec"]["day"]) for m in chain],
                "passes_per_day": {int(m["spec"]["day"]): int(m["spec"].get("passes", 1)) for m in chain},
                "supervised_days": [int(m["spec"]["day"]) for m in chain if m["spec"].get("fm_column")],
                "fm_column": next((m["spec"]["fm_column"] for m in reversed(chain) if m["spec"].get("fm_column")),
                                  None),
                "batch_size": last["params"].get("batch_size"), "distill": last["distill"],
                "model_params": last["params"], "train_rows": chain[-1].get("train_rows"),
                "vm_artifact": str(record.get("vm_artifact"))})
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(src, dst)


def write_cell_outputs(results_dir: str | os.PathLike, grid: Grid, record: Mapping[str, Any],
                       store: ArtifactStore, log_path: str | os.PathLike) -> dict[str, Any]:
    """Write ``record``'s per-cell folder; returns the fields the record gains: ``outputs_dir``
    (relative to ``results_dir``), ``data_size`` and ``train_curve``. FM records get nothing (their
    snapshots live in the SPD). A file-system error is logged and leaves the record unchanged:
    the cell's measurement stands without its side files."""
    if record.get("kind") != VM_KIND or not record.get("vm_artifact"):
        return {}
    link_dir = Path(record["vm_artifact"])
    try:
        chain = link_chain(store, link_dir.name)
        curve = training_curve(chain)
        out = cell_output_dir(results_dir, record["grid"], record["cell_id"])
        out.mkdir(parents=True, exist_ok=True)
        params = _params(grid, record, chain)
        (out / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        (out / LOG_FILE).write_text("".join(line + "\n" for line in cell_log_lines(log_path, record["cell_id"])),
                                    encoding="utf-8")
        write_losses_csv(out / LOSSES_FILE, curve)
        _link_or_copy(link_dir / SERVING_WEIGHTS, out / SERVING_WEIGHTS)
    except OSError as e:
        logger.warning("cell %s: per-cell outputs not written (%s)", record["cell_id"], e)
        return {}
    # the record keeps the curve without timings, so two engines' records of one cell stay equal
    return {"outputs_dir": out.relative_to(results_dir).as_posix(), "data_size": grid.size,
            "train_curve": [{k: v for k, v in e.items() if k != "seconds"} for e in curve]}
