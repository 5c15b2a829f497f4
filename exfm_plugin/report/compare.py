"""Seed-paired comparisons between methods: gains over ``none``, the paper's ordering, the
adapter's own effect (``ah_sa`` − ``ah_sa_frozen``) and AH vs KD (``ah`` − ``kd``).

Two VM records are paired when they differ only in method (and, for gains over ``none``, in
the scales): same grid, dataset, teacher, student and its crossed hyperparameters, round, test
day, domain/task, schedule, embedding update, feature gap, FM freeze day, and seed. The ``none`` VM never reads the FM, so
it is shared by teachers and freeze days: when no ``none`` record carries the same teacher (or
freeze day), the one recorded under another teacher is used. Several records of one key and
seed are averaged before the seeds are compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..contracts import ADAPTER_CONTROL, PAPER_METHODS
from .stats import Interval, paired_differences, t_interval, verdict

PAIR_KEY = ("grid", "dataset", "data_source", "teacher", "student", "hparams", "round", "test_day", "domain",
            "task", "vm_schedule", "embedding_update", "feature_gap", "fm_frozen_after_day")
SCALES = ("label_scale", "grad_scale", "loss_weight")
# the `none` baseline's key, from exact to shared (freeze day dropped, then teacher too)
_NONE_TIERS = (PAIR_KEY, tuple(k for k in PAIR_KEY if k != "fm_frozen_after_day"),
               tuple(k for k in PAIR_KEY if k not in ("fm_frozen_after_day", "teacher")))
# (metric, relative?, higher is better) of each compared quantity
GAIN_METRICS = (("AUC", True, True), ("logloss", False, False), ("NE", False, False))
ADJACENT = tuple(zip(PAPER_METHODS[:-1], PAPER_METHODS[1:]))


def is_default_scales(row: dict[str, Any]) -> bool:
    """LS = GS = LW = 1 (or unset): the setting the paper's tables use."""
    return all(row.get(k) in (None, 1.0) for k in SCALES)


class SeedIndex:
    """Per-seed metric values of the ok VM records, keyed for pairing."""

    def __init__(self, ok_vm_rows: Iterable[dict[str, Any]]) -> None:
        acc: dict[tuple, dict[int, dict[str, list[float]]]] = {}
        self._none: list[dict[tuple, dict[int, dict[str, list[float]]]]] = [{} for _ in _NONE_TIERS]
        for r in ok_vm_rows:
            per_seed = acc.setdefault(self.key(r, r["method"]), {}).setdefault(r["seed"], {})
            for m, *_ in GAIN_METRICS:
                if r[m] is not None:
                    per_seed.setdefault(m, []).append(r[m])
            if r["method"] == "none":
                for tier, cols in zip(self._none, _NONE_TIERS):
                    seed_acc = tier.setdefault(tuple(r[c] for c in cols), {}).setdefault(r["seed"], {})
                    for m, *_ in GAIN_METRICS:
                        if r[m] is not None:
                            seed_acc.setdefault(m, []).append(r[m])
        self._cells = {k: _means(v) for k, v in acc.items()}
        self._none_means = [{k: _means(v) for k, v in tier.items()} for tier in self._none]

    @staticmethod
    def key(row: dict[str, Any], method: str, scales: tuple | None = None) -> tuple:
        """The pairing key of ``row`` for ``method`` at ``scales`` (default: the row's scales)."""
        scales = tuple(row.get(k) for k in SCALES) if scales is None else scales
        return tuple(row[k] for k in PAIR_KEY) + (method, scales)

    def values(self, row: dict[str, Any], method: str, metric: str,
               scales: tuple | None = None) -> dict[int, float]:
        """{seed: metric} of ``method`` paired with ``row``; ``none`` falls back to a shared baseline."""
        if method == "none":
            for tier, cols in zip(self._none_means, _NONE_TIERS):
                hit = tier.get(tuple(row[c] for c in cols))
                if hit:
                    return {s: v[metric] for s, v in hit.items() if metric in v}
            return {}
        hit = self._cells.get(self.key(row, method, scales), {})
        return {s: v[metric] for s, v in hit.items() if metric in v}


def _means(per_seed: dict[int, dict[str, list[float]]]) -> dict[int, dict[str, float]]:
    return {s: {m: sum(v) / len(v) for m, v in ms.items() if v} for s, ms in per_seed.items()}


@dataclass(frozen=True)
class Comparison:
    """``second`` − ``first`` for one pairing, per seed and as a t-interval, with its verdict."""

    pair: dict[str, Any]
    first: str
    second: str
    metric: str
    relative: bool
    diffs: dict[int, float]
    interval: Interval
    verdict: str


def compare(index: SeedIndex, row: dict[str, Any], first: str, second: str, metric: str = "AUC",
            relative: bool = False, higher_is_better: bool = True,
            second_scales: tuple | None = None) -> Comparison | None:
    """The seed-paired comparison of two methods for ``row``'s pairing; None without a common seed.
    ``first`` is looked up at the default scales (1, 1, 1) unless it is ``none``."""
    default = (1.0, 1.0, 1.0)
    a = index.values(row, first, metric, default)
    b = index.values(row, second, metric, default if second_scales is None else second_scales)
    diffs = paired_differences(a, b, relative=relative)
    if not diffs:
        return None
    iv = t_interval(diffs.values())
    return Comparison({k: row[k] for k in PAIR_KEY}, first, second, metric, relative, diffs, iv,
                      verdict(iv, higher_is_better))


def pairings(ok_vm_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One representative row per pairing key (order of first appearance)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in ok_vm_rows:
        seen.setdefault(tuple(r[k] for k in PAIR_KEY), r)
    return list(seen.values())


def methods_at_default(ok_vm_rows: list[dict[str, Any]], row: dict[str, Any]) -> set[str]:
    """Methods recorded at scales (1, 1, 1) in ``row``'s pairing (``none`` counts at any scale)."""
    key = tuple(row[k] for k in PAIR_KEY)
    return {r["method"] for r in ok_vm_rows if tuple(r[k] for k in PAIR_KEY) == key
            and (r["method"] == "none" or is_default_scales(r))}


def ordering(index: SeedIndex, ok_vm_rows: list[dict[str, Any]]) -> list[tuple[dict, list[Comparison | None]]]:
    """For each pairing with all of the paper's methods: the AUC comparison of each adjacent pair
    of none < kd < ah < ah_sa (``None`` where no seed is common)."""
    out = []
    for row in pairings(ok_vm_rows):
        have = methods_at_default(ok_vm_rows, row)
        if index.values(row, "none", "AUC"):
            have.add("none")  # a baseline shared by teachers counts
        if set(PAPER_METHODS) <= have:
            out.append((row, [compare(index, row, lo, hi) for lo, hi in ADJACENT]))
    return out


def method_pair(index: SeedIndex, ok_vm_rows: list[dict[str, Any]], first: str,
                second: str) -> list[tuple[dict, list[Comparison | None]]]:
    """``second`` − ``first`` per pairing where both exist at scales (1, 1, 1), for AUC (absolute),
    log loss and NE (a loss: lower is better)."""
    out = []
    for row in pairings(ok_vm_rows):
        if {first, second} <= methods_at_default(ok_vm_rows, row):
            out.append((row, [compare(index, row, first, second, m, False, hib) for m, _, hib in GAIN_METRICS]))
    return out


def adapter_effect(index: SeedIndex, ok_vm_rows: list[dict[str, Any]]) -> list[tuple[dict, list]]:
    """The Student Adapter's own effect: ``ah_sa`` − ``ah_sa_frozen`` (docs/method.md, The methods)."""
    return method_pair(index, ok_vm_rows, ADAPTER_CONTROL, "ah_sa")


def ah_vs_kd(index: SeedIndex, ok_vm_rows: list[dict[str, Any]]) -> list[tuple[dict, list]]:
    """The Auxiliary Head against one-head KD: ``ah`` − ``kd``."""
    return method_pair(index, ok_vm_rows, "kd", "ah")
