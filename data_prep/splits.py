"""The paper's 8 time splits ("days"), TaobaoAd's 3 user domains and KuaiVideo's 3 tasks.

Days:

- TaobaoAd raw (UNIX seconds): calendar days in Beijing time (UTC+8). When every row falls in
  2017-05-06 .. 2017-05-13 those are days 1..8 exactly; 23:59:59 CST belongs to the earlier
  day, 00:00:00 CST to the next. Other dates spanning at most 8 days start at the first date;
  a span over 8 days falls back to equal-count splits (and says so in ``split_note``).
- Amazon raw and KuaiVideo (the span is years / unknown, not 8 days): 8 equal-count splits in
  time order (row i of n goes to day ``i * 8 // n + 1``; rows are already in time order).
- BARS TaobaoAd_x1 / AmazonElectronics_x1 (no timestamp): file order. TaobaoAd_x1's
  ``test.csv`` is exactly 2017-05-13, so it is day 8 and ``train.csv`` is cut into 7
  equal-count days; AmazonElectronics_x1's test rows are "last item per user", not a day, so
  both files together are cut into 8 equal-count days. ``split_note`` carries the warning.

Domains (TaobaoAd, Table 4): the levels of ``new_user_class_level`` (1..4 and missing) are
merged into 3 domains of near-equal impression count by an exhaustive search over every
assignment of levels to domains (3^5 = 243), minimising the largest minus the smallest domain
size; ties go to the smaller largest domain, then to the first assignment in a fixed order,
so the mapping is deterministic. Domain ids are numbered by their first level.
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS
from exfm_plugin.fsutil import atomic_file

from .readers.common import ReadResult

logger = logging.getLogger(__name__)

BEIJING = timezone(timedelta(hours=8))
TAOBAO_FIRST_DAY = date(2017, 5, 6)
DOMAIN_COLUMN = "new_user_class_level"
DOMAIN_LEVELS = ("1", "2", "3", "4", "missing")
KUAIVIDEO_TASKS = ("is_click", "is_like", "is_follow")
_EPOCH = date(1970, 1, 1)


@dataclass
class DaySplit:
    """Day of every row (1..8, aligned with the frame) and how it was obtained."""

    day: np.ndarray
    method: str
    split_note: str | None = None
    first_day: str | None = None


def beijing_date_index(seconds: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of each UNIX second, in Beijing time (UTC+8)."""
    return (np.asarray(seconds, dtype=np.int64) + 8 * 3600) // 86400


def calendar_days(seconds: np.ndarray, first_day: date | None = None) -> np.ndarray:
    """1-based Beijing calendar day of each UNIX second, day 1 being ``first_day``."""
    origin = (first_day or TAOBAO_FIRST_DAY) - _EPOCH
    return beijing_date_index(seconds) - origin.days + 1


def equal_count_days(n: int, n_days: int = N_DAYS) -> np.ndarray:
    """Day of each of ``n`` rows in time order: consecutive blocks whose sizes differ by <= 1."""
    return (np.arange(n, dtype=np.int64) * n_days // max(n, 1) + 1).astype(np.int8)


def assign_days(result: ReadResult, n_days: int = N_DAYS) -> DaySplit:
    """The day of every row of ``result.frame`` following the rules of this module."""
    frame = result.frame
    n = frame.height
    if result.time_kind == "unix_seconds" and result.dataset == "taobaoad":
        seconds = frame["time"].to_numpy()
        dates = beijing_date_index(seconds)
        first, last = _EPOCH + timedelta(days=int(dates.min())), _EPOCH + timedelta(days=int(dates.max()))
        paper = TAOBAO_FIRST_DAY + timedelta(days=n_days - 1)
        if first >= TAOBAO_FIRST_DAY and last <= paper:
            return DaySplit(calendar_days(seconds).astype(np.int8), "calendar_beijing",
                            first_day=TAOBAO_FIRST_DAY.isoformat())
        span = (last - first).days + 1
        if span <= n_days:
            note = f"dates {first}..{last} are not the paper's 2017-05-06..13: day 1 is {first} (Beijing time)"
            logger.warning(note)
            return DaySplit(calendar_days(seconds, first).astype(np.int8), "calendar_beijing", note,
                            first.isoformat())
        note = f"timestamps span {span} Beijing days, not {n_days}: {n_days} equal-count splits in time order"
        logger.warning(note)
        return DaySplit(equal_count_days(n, n_days), "equal_count_time", note)
    if result.time_kind in ("unix_seconds", "relative"):
        return DaySplit(equal_count_days(n, n_days), "equal_count_time",
                        f"{n_days} equal-count splits in time order (the span is not {n_days} calendar days)")
    # file order: no timestamp
    if result.dataset == "taobaoad" and "part" in frame.columns and result.extra.get("test_part") is not None:
        is_test = (frame["part"] == result.extra["test_part"]).to_numpy()
        day = np.empty(n, dtype=np.int8)
        day[~is_test] = equal_count_days(int((~is_test).sum()), n_days - 1)
        day[is_test] = n_days
        note = ("no timestamp in BARS TaobaoAd_x1: test.csv (2017-05-13) is day 8, train.csv is cut into "
                "7 equal-count days in FILE ORDER, which need not be time order")
    else:
        day = equal_count_days(n, n_days)
        note = (f"no timestamp in BARS {result.dataset} files: {n_days} equal-count days in FILE ORDER "
                "(train then test), which need not be time order")
    logger.warning(note)
    return DaySplit(day, "file_order", note)


# ------------------------------------------------------------------------------- domains
def level_counts(frame: pl.DataFrame, column: str = DOMAIN_COLUMN) -> dict[str, int]:
    """Impressions per level of ``column`` (null as ``"missing"``); levels 1..4 always listed."""
    levels = level_tokens(frame[column])
    counts = levels.value_counts()
    out = {lvl: 0 for lvl in DOMAIN_LEVELS}
    for lvl, cnt in counts.iter_rows():
        out[lvl] = int(cnt)
    return out


def level_tokens(series: pl.Series) -> pl.Series:
    """Level of each row as a string token, ``"missing"`` for null."""
    return series.cast(pl.String).fill_null("missing")


def balanced_domains(counts: Mapping[str, int], n_domains: int = 3) -> dict[str, int]:
    """Assign each level to one of ``n_domains`` domains with near-equal total counts.

    Exhaustive over all assignments (fine for the 5 levels of TaobaoAd; more than 12 levels
    would be slow and use a greedy largest-first fill instead). Every domain gets >= 1 level.
    """
    levels = sorted(counts, key=_level_order)
    if len(levels) < n_domains:
        raise ValueError(f"{len(levels)} levels cannot make {n_domains} non-empty domains")
    sizes = np.array([counts[lv] for lv in levels], dtype=np.int64)
    if len(levels) > 12:
        return _greedy_domains(levels, sizes, n_domains)
    best, best_key = None, None
    for assign in itertools.product(range(n_domains), repeat=len(levels)):
        if len(set(assign)) < n_domains or _canonical(assign) != assign:
            continue
        totals = np.bincount(assign, weights=sizes, minlength=n_domains)
        key = (totals.max() - totals.min(), totals.max())
        if best_key is None or key < best_key:
            best, best_key = assign, key
    return {lv: int(d) for lv, d in zip(levels, best)}


def _level_order(level: str) -> tuple[int, str]:
    return (1, level) if level == "missing" else (0, level.zfill(8))


def _canonical(assign: tuple[int, ...]) -> tuple[int, ...]:
    """Relabel domains in order of first appearance (so each partition is visited once)."""
    relabel: dict[int, int] = {}
    return tuple(relabel.setdefault(a, len(relabel)) for a in assign)


def _greedy_domains(levels: list[str], sizes: np.ndarray, n_domains: int) -> dict[str, int]:
    totals = np.zeros(n_domains, dtype=np.int64)
    out = {}
    for i in sorted(range(len(levels)), key=lambda i: (-sizes[i], i)):
        d = int(np.argmin(totals))
        out[levels[i]] = d
        totals[d] += sizes[i]
    return out


def domain_info(frame: pl.DataFrame, n_domains: int = 3, column: str = DOMAIN_COLUMN) -> dict:
    """Fit the level-to-domain mapping on ``frame`` and describe it (the content of domains.json)."""
    counts = level_counts(frame, column)
    mapping = balanced_domains(counts, n_domains)
    sizes = [0] * n_domains
    for lv, d in mapping.items():
        sizes[d] += counts[lv]
    mean = sum(sizes) / n_domains
    return {"column": column, "n_domains": n_domains, "mapping": mapping, "level_counts": counts,
            "domain_sizes": sizes, "max_minus_min_over_mean": (max(sizes) - min(sizes)) / mean if mean else 0.0,
            "algorithm": "exhaustive search over level-to-domain assignments minimising max-min size",
            "fitted_on": "all rows of all days (the domain is a fixed user segment, not a learned feature)"}


def save_domain_mapping(path: str | Path, info: Mapping) -> None:
    """Write domains.json (atomic: ``exfm_plugin.fsutil.atomic_file``)."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2))


def load_domain_mapping(path: str | Path) -> dict[str, int]:
    """The level-to-domain mapping saved by :func:`save_domain_mapping`."""
    info = json.loads(Path(path).read_text())
    return {str(k): int(v) for k, v in info["mapping"].items()}


def domain_of(series: pl.Series, mapping: Mapping[str, int]) -> np.ndarray:
    """Domain id of each row from its level (unknown levels: the domain of ``"missing"``)."""
    tokens = level_tokens(series)
    default = mapping.get("missing", 0)
    return tokens.replace_strict(list(mapping), list(mapping.values()), default=default,
                                 return_dtype=pl.Int8).to_numpy()
