"""Teacher margin and premise status: FM − ``none`` per seed with its t-interval, checked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from exfm_plugin.report.premises import (LICENSED, MIN_MARGIN_AUC, NO_TEACHER_ADVANTAGE, NOT_COMPETENT, NOT_MEASURED,
                                         STALE_BY_DESIGN, Premises, headroom_share)

BASE = dict(grid="g", dataset="taobaoad", data_source="synthetic", teacher="DMIN", round=0, test_day=6,
            domain=None, task=None, vm_schedule="day", fm_frozen_after_day=None, hparams="",
            embedding_update="dense", feature_gap="", fm_staleness_days=0)


def rows(fm_auc, none_auc, fm_ne=None, none_ne=None, **over):
    out = []
    for seed, (f, n) in enumerate(zip(fm_auc, none_auc)):
        out.append({**BASE, **over, "kind": "fm", "student": None, "method": None, "seed": seed, "AUC": f,
                    "NE": None if fm_ne is None else fm_ne[seed]})
        out.append({**BASE, **over, "kind": "vm", "student": "DeepFM", "method": "none", "seed": seed, "AUC": n,
                    "NE": None if none_ne is None else none_ne[seed]})
    return out


def none_cell(beats=True, **over):
    return {**BASE, **over, "kind": "vm", "student": "DeepFM", "method": "none", "beats_constant": beats}


def test_margin_is_the_seed_paired_t_interval_by_hand():
    fm, none = [0.70, 0.69, 0.71], [0.66, 0.665, 0.672]
    p = Premises(rows(fm, none, [0.95, 0.96, 0.94], [0.98, 0.985, 0.97]), [none_cell()])
    m = p.margin(none_cell())
    d = np.array(fm) - np.array(none)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert m.auc.mean == pytest.approx(d.mean()) and m.auc.n == 3
    assert (m.auc.lo, m.auc.hi) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    ne = np.array([0.95, 0.96, 0.94]) - np.array([0.98, 0.985, 0.97])
    assert m.ne.mean == pytest.approx(ne.mean())
    assert m.resolved and m.sufficient and d.mean() >= MIN_MARGIN_AUC
    assert p.status(none_cell()) == LICENSED


def test_an_unresolved_or_negative_margin_is_no_teacher_advantage():
    cells = [none_cell()]
    assert Premises(rows([0.70, 0.65, 0.72], [0.68, 0.68, 0.68]), cells).status(none_cell()) == NO_TEACHER_ADVANTAGE
    assert Premises(rows([0.60, 0.61, 0.60], [0.68, 0.68, 0.69]), cells).status(none_cell()) == NO_TEACHER_ADVANTAGE
    # resolved but small: licensed, yet not sufficient for the shipped grids' target
    m = Premises(rows([0.682, 0.683, 0.6825], [0.68, 0.68, 0.68]), cells).margin(none_cell())
    assert m.resolved and not m.sufficient


def test_competence_comes_first_and_a_deliberately_stale_fm_is_named():
    fm, none = [0.70, 0.69, 0.71], [0.66, 0.665, 0.672]
    assert Premises(rows(fm, none), [none_cell(beats=False)]).status(none_cell()) == NOT_COMPETENT
    stale = dict(fm_frozen_after_day=2, fm_staleness_days=3)
    p = Premises(rows(none, fm, **stale), [none_cell(**stale)])  # the stale FM is weaker
    assert p.status(none_cell(**stale)) == STALE_BY_DESIGN


def test_a_pairing_without_fm_records_is_not_measured():
    none_only = [r for r in rows([0.70, 0.69, 0.71], [0.66, 0.665, 0.672]) if r["kind"] == "vm"]
    p = Premises(none_only, [none_cell()])
    assert p.margin(none_cell()) is None and p.status(none_cell()) == NOT_MEASURED


def test_headroom_share():
    assert headroom_share(0.65, 0.8) == pytest.approx(0.5)
    assert headroom_share(0.8, 0.8) == pytest.approx(1.0)
    assert headroom_share(0.6, None) is None
