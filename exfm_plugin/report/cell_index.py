"""``cells_<grid>.md``: every evaluated VM cell of a grid with links to its per-cell outputs
(``<results>/<grid>/<cell_id>/``: params.yaml, train.log, losses.csv, serving weights), so a
leaderboard number leads to the run behind it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..contracts import METHODS
from ..pipeline.cell_outputs import LOG_FILE, LOSSES_FILE, PARAMS_FILE, results_dir_of
from .markdown import fmt, md_table, scale_label

INDEX_NAME = "cells_{grid}.md"


def cell_folder(row: dict[str, Any]) -> Path | None:
    """The per-cell folder of a flat report row: its records file's results folder + ``outputs_dir``."""
    if not row.get("outputs_dir"):
        return None
    return results_dir_of(row["source_file"]) / row["outputs_dir"]


def write_cell_index(grid: str, rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Write the grid's index into ``out`` (links relative to it); None when no record names a folder."""
    cells = sorted((r for r in rows if r["kind"] == "vm" and cell_folder(r) is not None),
                   key=lambda r: (r["teacher"], r["student"], METHODS.index(r["method"]) if r["method"] in METHODS
                                  else len(METHODS), r["method"], r["round"], str(r["domain"]),
                                  str(r["task"]), scale_label(r), r["seed"]))
    if not any(cell_folder(r).is_dir() for r in cells):
        return None  # records copied without their folders (e.g. docs/science_check): no dead links
    table = []
    for r in cells:
        folder = cell_folder(r)
        rel = Path(os.path.relpath(folder, out)).as_posix()
        links = (f"[params]({rel}/{PARAMS_FILE}) · [log]({rel}/{LOG_FILE}) · [losses]({rel}/{LOSSES_FILE})"
                 if folder.is_dir() else f"`{rel}` (not found from here)")
        unit = r["domain"] if r["domain"] is not None else r["task"]
        name = f"[`{r['cell_id']}`]({rel}/)" if folder.is_dir() else f"`{r['cell_id']}`"
        table.append([name, r["teacher"], r["student"], r["method"], scale_label(r),
                      r["round"], unit, r["seed"], fmt(r["AUC"]), fmt(r["logloss"]), links])
    path = out / INDEX_NAME.format(grid=grid)
    lines = [f"# {grid}: per-cell outputs", "",
             "Each VM cell's folder holds `params.yaml` (what ran), `train.log` (its lines of the grid log), "
             "`losses.csv` (one row per training pass of every day) and the serving weights.", ""]
    lines += md_table(["cell", "teacher", "student", "method", "LS/GS/LW", "round", "domain/task", "seed", "AUC",
                       "LogLoss", "files"], table)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
