"""Scoring predictions on a test day: the metrics of a prediction vector, the constant predictor
and the oracle row, all normalised by one base rate per test day (the VMs' common normaliser)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..contracts import truth_column
from ..data import read_day_attrs, read_day_columns
from ..data.dayfile import column_names
from ..metrics import binary_entropy, evaluate_metrics, logloss
from .records import calibration_bins

EVAL_METRICS = ["AUC", "logloss", "NE", "calibration"]
EVAL_BATCH = 8192


def evaluate_predictions(y: np.ndarray, pred: np.ndarray, group: np.ndarray | None,
                         base_rate: float) -> dict[str, Any]:
    """Metrics of one prediction vector; NE is normalised by ``base_rate``, the common
    normaliser of every row compared on the same test day."""
    metrics = EVAL_METRICS + (["gAUC"] if group is not None else [])
    values = evaluate_metrics(y, pred, metrics, group_id=group, train_label_mean=base_rate)
    return {"metrics": {k: float(v) for k, v in values.items()}, "calibration_bins": calibration_bins(y, pred)}


def constant_metrics(y: np.ndarray, base_rate: float) -> dict[str, float]:
    """The constant predictor at the common normaliser's rate, scored on the same rows."""
    value = logloss(y, np.full(len(y), base_rate))
    return {"logloss": value, "NE": value / binary_entropy(base_rate)}


def labels_and_groups(path: str, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A test day's labels, and its group ids (for gAUC) where the day file has them."""
    names = [label] + (["group_id"] if "group_id" in column_names(read_day_attrs(path)) else [])
    cols = read_day_columns(path, names)
    return cols[label].astype(np.float64), cols.get("group_id")


def oracle_metrics(path: str, label: str, base_rate: float) -> dict[str, Any] | None:
    """The world's true probability scored like a model on the same rows (the ceiling of a
    synthetic test day); None where the day file has no truth column (real data)."""
    column = truth_column(label)
    if column not in column_names(read_day_attrs(path)):
        return None
    y, group = labels_and_groups(path, label)
    truth = read_day_columns(path, [column])[column].astype(np.float64)
    return evaluate_predictions(y, truth, group, base_rate)["metrics"]
