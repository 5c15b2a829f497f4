"""The paper's published numbers (Tables 2-5) and the BARS leaderboard, shipped as package data
(``exfm_plugin/reference``; ``benchmarks/reference`` in a checkout links there).

They are printed beside ours, never mixed into our means: the paper ran on real data with one
inference, and several of its numbers are odd (docs/method.md, Statistics).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..contracts import BARS_DATASET_NAMES, PAPER_DATASET_NAMES
from ..resources import reference_dir as reference_dir_shipped

log = logging.getLogger(__name__)

REFERENCE_FILES = ("table2_taobaoad.csv", "table3_amazonelectronics.csv", "table4_taobaoad_domains.csv",
                   "table5_kuaivideo_tasks.csv", "bars_leaderboard.csv")
NONE3 = (None, None, None)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        log.warning("reference file missing: %s", path)
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(row: dict[str, str], key: str, path: Path) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: column {key!r} must be a number, got {row.get(key)!r} in {row}") from None


def paper_domain(domain: str) -> str:
    """Our domains are 0-based ("0", "1", "2"); the paper numbers them 1..3 (matched by position)."""
    try:
        return str(int(domain) + 1)
    except ValueError:
        return domain


def paper_task(task: str) -> str:
    """Our task ``is_click`` is the paper's ``click``."""
    return task[3:] if task.startswith("is_") else task


@dataclass
class References:
    """Reference numbers keyed as our cells are; ``found`` lists the files that were read."""

    table23: dict[tuple, tuple[float, float]] = field(default_factory=dict)  # (ds, teacher, student, method)
    table4: dict[tuple, tuple[float, float]] = field(default_factory=dict)   # (ds, student, method, domain)
    table5: dict[tuple, tuple[float, float]] = field(default_factory=dict)   # (ds, student, method, task)
    bars: dict[tuple, tuple[float, float, float]] = field(default_factory=dict)  # (bars ds, model)
    found: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, ref_dir: str | Path) -> "References":
        """Read every reference CSV of ``ref_dir``; a missing file leaves its columns empty."""
        ref_dir = Path(ref_dir)
        refs = cls()
        for name in REFERENCE_FILES:
            path = ref_dir / name
            rows = _read_csv(path)
            if rows:
                refs.found.append(name)
            for r in rows:
                auc_ll = (_num(r, "auc", path), _num(r, "logloss", path))
                if name.startswith(("table2", "table3")):
                    refs.table23[(r["dataset"], r["teacher"], r["student"], r["method"])] = auc_ll
                elif name.startswith("table4"):
                    refs.table4[(r["dataset"], r["student"], r["method"], str(r["domain"]))] = auc_ll
                elif name.startswith("table5"):
                    refs.table5[(r["dataset"], r["student"], r["method"], r["task"])] = auc_ll
                else:
                    refs.bars[(r["dataset"], r["model"])] = auc_ll + (_num(r, "gauc", path),)
        return refs

    def paper(self, shape: str, cell: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
        """The paper's (AUC, LogLoss, AUC gain % over none) for a VM cell; None where it has none."""
        if cell["kind"] != "vm":
            return NONE3
        ds = PAPER_DATASET_NAMES.get(cell["dataset"], cell["dataset"])
        if shape in ("table2", "table3"):
            table, key = self.table23, (lambda m: (ds, cell["teacher"], cell["student"], m))
        elif shape == "table4" and cell.get("domain") is not None:
            table, key = self.table4, (lambda m: (ds, cell["student"], m, paper_domain(cell["domain"])))
        elif shape == "table5" and cell.get("task") is not None:
            table, key = self.table5, (lambda m: (ds, cell["student"], m, paper_task(cell["task"])))
        else:
            return NONE3
        hit = table.get(key(cell["method"]))
        if hit is None:
            return NONE3
        base = table.get(key("none"))
        gain = None if base is None or cell["method"] == "none" else (hit[0] - base[0]) / base[0] * 100.0
        return hit[0], hit[1], gain

    def bars_for(self, dataset: str, model: str | None) -> tuple[float | None, float | None, float | None]:
        """BARS' (AUC, LogLoss, gAUC) of ``model`` alone on ``dataset``; Nones where it has none."""
        hit = self.bars.get((BARS_DATASET_NAMES.get(dataset, dataset), model)) if model else None
        return hit if hit else NONE3


LEGACY_DEFAULT = "benchmarks/reference"  # the CLI's default name, from before the tables shipped


def resolve_reference_dir(reference_dir: str | Path | None = None) -> Path:
    """``None`` or the legacy default name is the shipped tables (found through the package,
    not the working directory); any other path is used as given."""
    if reference_dir is None:
        return reference_dir_shipped()
    p = Path(reference_dir)
    if not p.exists() and str(reference_dir).rstrip("/") == LEGACY_DEFAULT:
        return reference_dir_shipped()
    return p
