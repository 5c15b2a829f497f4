"""Result records: one JSON line per evaluated cell (``<results>/records/<grid>.jsonl``),
checked against the schema in :mod:`exfm_plugin.contracts.records` before it is written.

Lines are appended and fsync'd one at a time, so a crash or Ctrl-C loses at most the cell
that was running; a restarted run reads the file and skips cells already recorded as ok.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..contracts.records import RECORD_VERSION, validate_record


def calibration_bins(y_true: np.ndarray, y_pred: np.ndarray, bins: int = 10) -> list[list[float]]:
    """[mean prediction, mean label, count] in prediction-quantile bins (reliability plot)."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(order))):
        if len(chunk):
            out.append([float(p[chunk].mean()), float(y[chunk].mean()), int(len(chunk))])
    return out


class RecordWriter:
    """Appends records to a JSONL file, one fsync'd line each."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any]) -> None:
        checked = validate_record({"record_version": RECORD_VERSION, **record})
        line = json.dumps(checked, sort_keys=True, default=float)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done_cells(self) -> set[str]:
        """cell_ids already recorded with status ok (a torn last line is ignored)."""
        return {r["cell_id"] for r in read_records([self.path]) if r.get("status") == "ok"}


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """All complete records of the files, in order; a torn final line (crash) is skipped."""
    records = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if number == len(lines):
                    continue  # a run killed mid-append leaves at most a torn last line
                raise ValueError(f"{path}: line {number} is not a JSON record: {e}") from e
    return records
