"""AUC, LogLoss, NE and calibration, with the names FuxiCTR configs use.

``evaluate_metrics`` extends fuxictr's function of the same name with ``NE`` and
``calibration``; models plug it in through :class:`ExFMMetricsMixin`, so a model config
can list ``metrics: [AUC, logloss, NE, calibration]`` and fuxictr's ``evaluate`` reports them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from fuxictr.metrics import evaluate_metrics as fuxictr_evaluate_metrics
from sklearn.metrics import roc_auc_score

PROB_EPS = 1e-7
OWN_METRICS = {"logloss", "binary_crossentropy", "NE", "calibration", "AUC"}


def _as_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} rows but y_pred has {p.size}")
    if y.size == 0:
        raise ValueError("cannot compute a metric on zero rows")
    return y, p


def auc(y_true, y_pred) -> float:
    y, p = _as_arrays(y_true, y_pred)
    return float(roc_auc_score(y, p))


def logloss(y_true, y_pred) -> float:
    """Mean BCE on probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _as_arrays(y_true, y_pred)
    p = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def binary_entropy(p: float) -> float:
    """H(p) of a Bernoulli(p), the log loss of the constant predictor p."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"the training label mean must be strictly between 0 and 1 for NE, got {p}")
    return float(-(p * np.log(p) + (1.0 - p) * np.log1p(-p)))


def normalized_entropy(y_true, y_pred, train_label_mean: float) -> float:
    """NE (He et al. 2014): LogLoss divided by the entropy of the training split's CTR."""
    return logloss(y_true, y_pred) / binary_entropy(train_label_mean)


def calibration(y_true, y_pred) -> float:
    """Sum of predictions over sum of labels; 1.0 is ideal."""
    y, p = _as_arrays(y_true, y_pred)
    positives = y.sum()
    if positives == 0:
        raise ValueError("calibration is undefined on data without positive labels")
    return float(p.sum() / positives)


def evaluate_metrics(y_true, y_pred, metrics: Sequence[str], group_id=None,
                     train_label_mean: float | None = None) -> OrderedDict:
    """fuxictr's metric names plus ``NE`` and ``calibration``, in the order asked."""
    out: OrderedDict = OrderedDict()
    delegated = [m for m in metrics if m not in OWN_METRICS]
    for metric in metrics:
        if metric in ("logloss", "binary_crossentropy"):
            out[metric] = logloss(y_true, y_pred)
        elif metric == "AUC":
            out[metric] = auc(y_true, y_pred)
        elif metric == "NE":
            if train_label_mean is None:
                raise ValueError("metric NE needs the training split's mean label: train the model "
                                 "first or set model.train_label_mean")
            out[metric] = normalized_entropy(y_true, y_pred, train_label_mean)
        elif metric == "calibration":
            out[metric] = calibration(y_true, y_pred)
        else:
            out[metric] = None  # keeps the requested order; filled from fuxictr below
    if delegated:
        out.update(fuxictr_evaluate_metrics(np.asarray(y_true), np.asarray(y_pred), delegated, group_id))
    return out


class ExFMMetricsMixin:
    """Gives a fuxictr model ``NE`` and ``calibration``; NE's denominator is the mean label
    of the batches the model was trained on, unless ``train_label_mean`` is set explicitly."""

    _label_sum: float | torch.Tensor = 0.0  # a device tensor while training: no sync per step
    _label_count: int = 0
    _train_label_mean: float | None = None

    @property
    def train_label_mean(self) -> float | None:
        if self._train_label_mean is not None:
            return self._train_label_mean
        return float(self._label_sum) / self._label_count if self._label_count else None

    @train_label_mean.setter
    def train_label_mean(self, value: float | None) -> None:
        self._train_label_mean = value

    def observe_training_labels(self, y_true: torch.Tensor) -> None:
        self._label_sum = self._label_sum + y_true.detach().sum().double()
        self._label_count += int(y_true.numel())

    def evaluate_metrics(self, y_true, y_pred, metrics, group_id=None):
        return evaluate_metrics(y_true, y_pred, metrics, group_id, self.train_label_mean)
