"""Dose-responses: a claim's per-level effect (units averaged within a seed, then a t-interval over
seeds) and the premises beside it, checked by hand on constructed records."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from exfm_plugin.report.dose import dose_table, families, plot_dose

SEEDS, DOMAINS = (0, 1, 2), ("0", "1", "2")
BASE = dict(dataset="taobaoad", data_source="synthetic", teacher="DMIN", round=0, test_day=6, task=None,
            vm_schedule="stream", fm_frozen_after_day=None, fm_staleness_days=0, hparams="",
            embedding_update="dense", feature_gap="", label_scale=1.0, grad_scale=1.0, loss_weight=1.0,
            world_drift=1.0, data_seed=0)


def level_rows(shift: float, gap: float) -> list[dict]:
    """One level: `ah` − `kd` = gap + a seed/domain pattern; the FM's NE above the oracle grows with shift."""
    grid = f"science_bias@domain_shift={shift:g}"
    rows = []
    for s in SEEDS:
        calib = []
        for k, d in enumerate(DOMAINS):
            common = dict(BASE, grid=grid, world_domain_shift=shift, seed=s, domain=d)
            wiggle = 0.001 * (s - 1) + 0.0005 * k
            for method, auc in (("none", 0.60), ("kd", 0.62), ("ah", 0.62 + gap + wiggle)):
                rows.append(dict(common, kind="vm", student="DeepFM", method=method, AUC=auc, NE=1.0 - auc / 10,
                                 constant_NE=1.0 - 0.001 * s))
            c = 1.0 + 0.05 * shift * (k - 1) + 0.01 * s
            calib.append(c)
            rows.append(dict(common, kind="fm", student=None, method=None, AUC=0.65 + 0.001 * s, NE=0.97,
                             oracle_NE=0.97 - 0.01 - 0.02 * shift, calibration=c))
    return rows


def test_level_effects_by_hand():
    rows = level_rows(0.0, 0.002) + level_rows(2.0, -0.004)
    fam = families(sorted({r["grid"] for r in rows}))
    assert list(fam) == ["science_bias"]
    dial, table = dose_table(fam["science_bias"], rows)
    assert dial == "domain_shift" and [r["dial"] for r in table] == [0.0, 2.0]
    for r, gap in zip(table, (0.002, -0.004)):
        per_seed = [np.mean([gap + 0.001 * (s - 1) + 0.0005 * k for k in range(3)]) for s in SEEDS]
        half = stats.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / math.sqrt(3)
        iv = r["ΔAUC"]
        assert iv.mean == pytest.approx(np.mean(per_seed))
        assert (iv.lo, iv.hi) == (pytest.approx(np.mean(per_seed) - half), pytest.approx(np.mean(per_seed) + half))
        assert r["teacher margin ΔAUC"].mean == pytest.approx(0.051)
    # the `none` students' NE against the constant's: 0.94 - (1 - 0.001 s), averaged over seeds
    assert table[0]["none NE − constant NE"].mean == pytest.approx(-0.06 + 0.001)
    assert table[0]["FM NE above oracle"].mean == pytest.approx(0.01)
    assert table[1]["FM NE above oracle"].mean == pytest.approx(0.05)
    # calibration spread over the domains: 0.05 * shift * 2 in every seed
    assert table[1]["FM calibration spread"].mean == pytest.approx(0.2)


def test_the_dose_figure_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    rows = level_rows(0.0, 0.002) + level_rows(1.0, 0.0) + level_rows(2.0, -0.004)
    fam = families(sorted({r["grid"] for r in rows}))["science_bias"]
    for r in rows:
        r.update(data_size="600000")
    target = tmp_path / "dose.png"
    assert plot_dose(fam, rows, target, "Dose-response (test)")
    assert target.stat().st_size > 10_000
