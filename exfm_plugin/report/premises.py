"""The premises of a method comparison, measured beside it (docs/method.md, "Premises").

A comparison between distillation methods says something about ExFM only where the condition
the methods are for exists. Per pairing (a teacher, a student and everything but the method):

- **a competent student**: the ``none`` VM beats the constant predictor on its test rows;
- **a stronger teacher**: the FM's own prediction beats the ``none`` VM on the same test rows,
  seed-paired (FM − ``none`` per seed, 95% t-interval). A margin is *resolved* when its AUC
  interval lies above 0, and *sufficient* when it is also at least :data:`MIN_MARGIN_AUC`; an FM
  frozen on purpose (staleness grids) is exempt, its fresh twin is not;
- **the ceiling** (synthetic data): the world's true probability scored on the same rows, and
  each model's share of the headroom, (AUC − 0.5) / (AUC_oracle − 0.5).

:meth:`Premises.status` is the one place that decides whether a pairing licenses a claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .stats import HOLDS, Interval, format_interval, paired_differences, t_interval, verdict

# the smallest teacher margin (FM − none AUC, mean over seeds) the shipped grids are built to have
MIN_MARGIN_AUC = 0.01
# what identifies the FM that a VM pairing is read against (its test rows and its snapshot)
FM_KEY = ("grid", "dataset", "data_source", "teacher", "round", "test_day", "domain", "task", "vm_schedule",
          "fm_frozen_after_day")
# the `none` VM of a pairing (the pairing key without the method and the scales)
NONE_KEY = FM_KEY + ("student", "hparams", "embedding_update", "feature_gap")
LICENSED = "premises hold"
NO_TEACHER_ADVANTAGE = "no teacher advantage"
NOT_COMPETENT = "student not competent"
STALE_BY_DESIGN = "FM stale by design"
NOT_MEASURED = "teacher margin not measured"  # no FM record shares a seed with the `none` VM


@dataclass(frozen=True)
class Margin:
    """FM − ``none`` on one pairing's test rows: per-seed AUC differences and both intervals."""

    pairing: dict[str, Any]
    auc: Interval
    ne: Interval | None
    diffs: dict[int, float]

    @property
    def resolved(self) -> bool:
        return verdict(self.auc) == HOLDS

    @property
    def sufficient(self) -> bool:
        return self.resolved and self.auc.mean >= MIN_MARGIN_AUC

    def describe(self) -> str:
        """``+0.0123 [+0.0050, +0.0196]`` with the verdict in words."""
        text = format_interval(self.auc)
        if self.sufficient:
            return text + " (resolved, ≥ 0.01)"
        if self.resolved:
            return text + " (resolved, < 0.01)"
        return text + f" ({NO_TEACHER_ADVANTAGE})"


def _per_seed(rows: Iterable[dict[str, Any]], key: tuple[str, ...], metric: str) -> dict[tuple, dict[int, float]]:
    out: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        if r.get(metric) is not None:
            out.setdefault(tuple(r[k] for k in key), {}).setdefault(r["seed"], []).append(r[metric])
    return {k: {s: sum(v) / len(v) for s, v in seeds.items()} for k, seeds in out.items()}


def headroom_share(auc: float | None, oracle_auc: float | None) -> float | None:
    """(AUC − 0.5) / (AUC_oracle − 0.5): how much of the ranking headroom a model took."""
    if auc is None or oracle_auc is None or oracle_auc <= 0.5:
        return None
    return (auc - 0.5) / (oracle_auc - 0.5)


class Premises:
    """Teacher margins and competence of every pairing in a set of ok records."""

    def __init__(self, ok_rows: list[dict[str, Any]], cells: list[dict[str, Any]]) -> None:
        fm_rows = [r for r in ok_rows if r["kind"] == "fm"]
        none_rows = [r for r in ok_rows if r["kind"] == "vm" and r["method"] == "none"]
        fm_auc, fm_ne = _per_seed(fm_rows, FM_KEY, "AUC"), _per_seed(fm_rows, FM_KEY, "NE")
        none_auc, none_ne = _per_seed(none_rows, NONE_KEY, "AUC"), _per_seed(none_rows, NONE_KEY, "NE")
        self.margins: dict[tuple, Margin] = {}
        self._reps: dict[tuple, dict[str, Any]] = {}
        for r in none_rows:
            self._reps.setdefault(tuple(r[k] for k in NONE_KEY), r)
        for key, row in self._reps.items():
            fm_key = key[:len(FM_KEY)]
            diffs = paired_differences(none_auc[key], fm_auc.get(fm_key, {}))
            if not diffs:
                continue
            ne_diffs = paired_differences(none_ne.get(key, {}), fm_ne.get(fm_key, {}))
            self.margins[key] = Margin({k: row[k] for k in NONE_KEY}, t_interval(diffs.values()),
                                       t_interval(ne_diffs.values()) if ne_diffs else None, diffs)
        self._competent = {tuple(c[k] for k in NONE_KEY): bool(c["beats_constant"]) for c in cells
                           if c["kind"] == "vm" and c["method"] == "none"}

    def margin(self, row: dict[str, Any]) -> Margin | None:
        """The teacher margin of ``row``'s pairing (None without FM and ``none`` records of a common seed)."""
        return self.margins.get(tuple(row[k] for k in NONE_KEY))

    def status(self, row: dict[str, Any]) -> str:
        """:data:`LICENSED` when the pairing's student is competent and its teacher margin is
        resolved and positive; otherwise what is missing (a stale-by-design FM is named as such,
        a pairing without an FM record of a common seed is "not measured")."""
        key = tuple(row[k] for k in NONE_KEY)
        if not self._competent.get(key, False):
            return NOT_COMPETENT
        margin = self.margins.get(key)
        if margin is None:
            return NOT_MEASURED
        if margin.resolved:
            return LICENSED
        stale = row.get("fm_frozen_after_day") is not None and (row.get("fm_staleness_days") or 0) > 0
        return STALE_BY_DESIGN if stale else NO_TEACHER_ADVANTAGE
