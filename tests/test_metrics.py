"""Metrics against formulas computed another way."""
import itertools

import numpy as np
import pytest
import torch

from exfm_plugin.metrics import auc, binary_entropy, calibration, evaluate_metrics, gauc, logloss, normalized_entropy
from exfm_plugin.models import FM
from tiny_data import model_kwargs


def pairwise_auc(y, p):
    """Probability a random positive outranks a random negative (ties count half)."""
    pos = [s for s, t in zip(p, y) if t == 1]
    neg = [s for s, t in zip(p, y) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)  # rounding creates ties
    assert auc(y, p) == pytest.approx(pairwise_auc(y, p), abs=1e-12)


def test_logloss_clips_and_matches_definition():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.0, 1.0, 0.9, 0.2])
    expected = -(np.log(1e-7) + np.log(1e-7) + np.log(0.9) + np.log(0.8)) / 4
    assert logloss(y, p) == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(logloss(y, p))


def test_ne_of_base_rate_predictor_is_one_and_calibration_ratio():
    y = np.array([1] * 30 + [0] * 70)
    p_const = np.full(100, 0.3)
    assert normalized_entropy(y, p_const, 0.3) == pytest.approx(1.0, rel=1e-12)
    # a predictor twice the base rate is miscalibrated by exactly 2
    assert calibration(y, np.full(100, 0.6)) == pytest.approx(2.0)
    assert binary_entropy(0.5) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="training label mean"):
        binary_entropy(0.0)
    with pytest.raises(ValueError, match="NE needs"):
        evaluate_metrics(y, p_const, ["NE"])


def test_fuxictr_evaluate_reports_ne_and_calibration(tmp_path, tiny):
    torch.manual_seed(0)
    model = FM(tiny.feature_map, **model_kwargs(tmp_path, metrics=["AUC", "logloss", "NE", "calibration"]))
    model._max_gradient_norm = 10.0
    model.train()
    for batch in tiny.batches(128):
        model.train_step(batch)
    train_mean = tiny.columns["click"].mean()
    assert model.train_label_mean == pytest.approx(train_mean, rel=1e-6)
    logs = model.evaluate(tiny.batches(512))  # metric names come from the model config
    assert list(logs) == ["AUC", "logloss", "NE", "calibration"]
    assert logs["NE"] == pytest.approx(logs["logloss"] / binary_entropy(train_mean), rel=1e-6)
    pred = model.predict(tiny.batches(512))
    assert logs["calibration"] == pytest.approx(pred.sum() / tiny.columns["click"].sum(), rel=1e-6)
    gauc = evaluate_metrics(tiny.columns["click"], pred, ["gAUC", "AUC"], group_id=tiny.columns["user_id"])
    assert list(gauc) == ["gAUC", "AUC"] and 0.0 < gauc["gAUC"] < 1.0


def _pairwise_gauc(y, p, g) -> float:
    """gAUC from its definition: per group, the share of (positive, negative) pairs ordered
    right (ties count one half), weighted by the group's rows; groups with one class skipped."""
    num = den = 0.0
    for group in np.unique(g):
        yg, pg = y[g == group], p[g == group]
        pos, neg = pg[yg == 1], pg[yg == 0]
        if len(pos) and len(neg):
            pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(pos, neg)]
            num += np.mean(pairs) * len(yg)
            den += len(yg)
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 400
    g = rng.integers(0, 40, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.round(rng.random(n) + 0.3 * y, 1)  # rounded: many tied scores inside a group
    assert gauc(y, p, g) == pytest.approx(_pairwise_gauc(y, p, g), abs=1e-12)


def test_gauc_equals_fuxictr_reference():
    from fuxictr.metrics import evaluate_metrics as fuxictr_metrics

    rng = np.random.default_rng(7)
    n = 2000
    g = rng.integers(0, 150, n)
    y = (rng.random(n) < 0.2).astype(float)
    p = rng.random(n) * 0.5 + 0.2 * y
    ours = evaluate_metrics(y, p, ["gAUC"], group_id=g)["gAUC"]
    assert ours == pytest.approx(fuxictr_metrics(y, p, ["gAUC"], g)["gAUC"], abs=1e-12)


def test_gauc_undefined_without_a_mixed_group_and_needs_groups():
    y = np.array([1.0, 1.0, 0.0, 0.0])
    assert np.isnan(gauc(y, np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])))
    with pytest.raises(ValueError, match="group ids"):
        evaluate_metrics(y, y, ["gAUC"])
