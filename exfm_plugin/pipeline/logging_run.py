"""Runs you can follow: FuxiCTR-style lines per cell on the console and in a per-run log file.

fuxictr's ``set_logger`` writes ``<model_root>/<dataset_id>/<model_id>.log`` and prints
``[Metrics] AUC: ... - logloss: ...`` lines; a grid run here writes one log per grid,
``<results>/logs/<grid>.log``, with a line per trained day (the mean loss terms of the pass) and
a ``[Metrics]`` line per cell. Console lines go through ``tqdm.write`` so progress bars stay intact.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from tqdm import tqdm

#: the logger of the run's follow-along lines (cells, days, metrics)
RUN_LOGGER = "exfm_plugin.run"
LOG_FORMAT = "%(asctime)s P%(process)d %(levelname)s %(message)s"  # fuxictr's set_logger format
METRIC_ORDER = ("AUC", "gAUC", "logloss", "NE", "calibration")

run_log = logging.getLogger(RUN_LOGGER)


def format_list(values: Mapping[str, Any]) -> str:
    """``AUC: 0.712345 - logloss: 0.201234``: fuxictr's ``print_to_list`` format."""
    return " - ".join(f"{k}: {v:.6f}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """The ``[Metrics]`` line of one evaluation (the usual metrics first, numbers only)."""
    ordered = {k: metrics[k] for k in METRIC_ORDER if isinstance(metrics.get(k), (int, float))}
    return "[Metrics] " + format_list({k: float(v) for k, v in ordered.items()})


class _TqdmHandler(logging.StreamHandler):
    """Console lines that do not break tqdm's progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def run_logging(results_dir: str | os.PathLike, grid: str, console: bool = True) -> Iterator[Path]:
    """Log the run's lines to ``<results_dir>/logs/<grid>.log`` (appended: a resumed run keeps
    the earlier attempt's lines) and, with ``console``, to the terminal at INFO."""
    path = Path(results_dir) / "logs" / f"{grid}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="a", encoding="utf-8")]
    if console:
        handlers.append(_TqdmHandler())
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        h.setLevel(logging.INFO)
    old_level, old_propagate = run_log.level, run_log.propagate
    run_log.setLevel(logging.INFO)
    run_log.propagate = False  # the root handler (``-v``) would print every line twice
    for h in handlers:
        run_log.addHandler(h)
    try:
        yield path
    finally:
        for h in handlers:
            run_log.removeHandler(h)
            h.close()
        run_log.setLevel(old_level)
        run_log.propagate = old_propagate


class LossTermMeter:
    """Wraps a loader so the student's loss terms of every step are summed (on the device,
    read once at the end): the mean ``serving``/``kd``/``aux``/``adapter``/``total`` of a pass."""

    def __init__(self, loader, student) -> None:
        self.loader, self.student = loader, student
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            terms = getattr(self.student, "_last_terms", {}) or {}
            for k, v in terms.items():
                self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
            self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}
