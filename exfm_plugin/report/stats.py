"""Paired differences over seeds and their 95% t-intervals, and the verdict an interval gives.

A comparison between two methods is made seed by seed on records that differ only in the
method (same teacher, student, round, domain/task, schedule, seed), so the variation the seeds
share (data order, initialisation) cancels. Over the n per-seed differences the interval is
mean ± t_{0.975, n-1} · sd / sqrt(n) (sd with ddof=1); with one seed there is no interval.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

from scipy.stats import t as student_t

CONFIDENCE = 0.95
HOLDS, REVERSED, NOT_RESOLVED = "holds", "reversed", "not resolved"


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided 95% t-interval (``lo``/``hi`` None when n < 2)."""

    mean: float
    n: int
    lo: float | None = None
    hi: float | None = None

    @property
    def half_width(self) -> float | None:
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / 2.0

    @property
    def contains_zero(self) -> bool | None:
        return None if self.lo is None or self.hi is None else self.lo <= 0.0 <= self.hi


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its t-interval; raises on no values (nothing to report)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(mean, len(xs))
    half = student_t.ppf(0.5 + confidence / 2.0, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, len(xs), mean - half, mean + half)


def verdict(iv: Interval, higher_is_better: bool = True) -> str:
    """``holds`` when the interval of (second − first) lies above 0 (below 0 for a loss),
    ``reversed`` when it lies on the other side, ``not resolved`` when it contains 0 or when
    there is a single seed (then ``not resolved (n=1)``)."""
    if iv.lo is None or iv.hi is None:
        return f"{NOT_RESOLVED} (n={iv.n})"
    lo, hi = (iv.lo, iv.hi) if higher_is_better else (-iv.hi, -iv.lo)
    if lo > 0.0:
        return HOLDS
    if hi < 0.0:
        return REVERSED
    return NOT_RESOLVED


def paired_differences(first: Mapping[int, float], second: Mapping[int, float],
                       relative: bool = False) -> dict[int, float]:
    """Per seed present in both: ``second − first``, or ``100 · (second − first) / first``."""
    out = {}
    for seed in sorted(set(first) & set(second)):
        a, b = first[seed], second[seed]
        if a is None or b is None:
            continue
        out[seed] = 100.0 * (b - a) / a if relative else b - a
    return out


def format_interval(iv: Interval | None, digits: int = 4, suffix: str = "") -> str:
    """``+0.0123 [+0.0050, +0.0196]`` (signed: these are differences), or just the mean for n=1."""
    if iv is None:
        return "—"
    text = f"{iv.mean:+.{digits}f}{suffix}"
    if iv.lo is None:
        return f"{text} (n=1)"
    return f"{text} [{iv.lo:+.{digits}f}, {iv.hi:+.{digits}f}]"
