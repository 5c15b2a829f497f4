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
OWN_METRICS = {"logloss", "binary_crossentropy", "NE", "calibration", "AUC", "gAUC"}


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


def gauc(y_true, y_pred, group_id) -> float:
    """Group AUC as fuxictr defines it (the DIN paper's): the AUC of each group with both a
    positive and a negative, averaged with the group's row count as weight (NaN when no group
    has both). fuxictr scores each group in a worker process, seconds for a test day of tens of
    thousands of users; here every group's Mann-Whitney statistic comes from one sort."""
    y, p = _as_arrays(y_true, y_pred)
    g = np.asarray(group_id).reshape(-1)
    if g.shape != y.shape:
        raise ValueError(f"group_id has {g.size} rows but y_true has {y.size}")
    order = np.lexsort((p, g))  # by group, then score
    g, p, y = g[order], p[order], y[order]
    n = y.size
    group_start = np.r_[True, g[1:] != g[:-1]]
    group_idx = np.cumsum(group_start) - 1
    rank = np.arange(n) - np.flatnonzero(group_start)[group_idx] + 1.0  # 1-based rank within the group
    tie_idx = np.cumsum(group_start | np.r_[True, p[1:] != p[:-1]]) - 1
    mean_rank = (np.bincount(tie_idx, weights=rank) / np.bincount(tie_idx))[tie_idx]  # ties share a rank
    rows = np.bincount(group_idx).astype(np.float64)
    positives = np.bincount(group_idx, weights=y)
    negatives = rows - positives
    mixed = (positives > 0) & (negatives > 0)
    if not mixed.any():
        return float("nan")
    pos_rank_sum = np.bincount(group_idx, weights=mean_rank * y)[mixed]
    pos, neg = positives[mixed], negatives[mixed]
    group_auc = (pos_rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return float(np.sum(group_auc * rows[mixed]) / np.sum(rows[mixed]))


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
        elif metric == "gAUC":
            if group_id is None:
                raise ValueError("metric gAUC needs group ids (the dataset's group_id column)")
            out[metric] = gauc(y_true, y_pred, group_id)
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
