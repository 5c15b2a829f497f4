"""Policies for doubtful rows, applied to a reader's canonical frame before the day split.

Why: a reader checks each value's format; whether a well-formed row belongs in the data is a
decision, and it must be one rule, counted and reported, not an accident of the split code.

Time window (rows with a real timestamp only):

- TaobaoAd raw: the dataset's documented 8 days, 2017-05-06 00:00 .. 2017-05-14 00:00 Beijing
  time (UTC+8), when at least half the rows lie in it. Otherwise (a user's own log with other
  dates) the window is the 8 consecutive Beijing days holding the most rows -- but only when
  those hold at least ``1 - MAX_OUT_OF_WINDOW`` of the rows and start in 2000..2099 (else, e.g. for
  milliseconds, the documented window applies and refuses the file); a log that really spans
  more days is left to the equal-count split of :mod:`data_prep.splits`, as before.
- Amazon raw: ``unixReviewTime`` in 1995-01-01 .. 2015-01-01 UTC (the Electronics dump spans
  1996-05 .. 2014-07; Amazon's first reviews are from 1995).
- KuaiVideo (relative timestamps) and the BARS files (file order): no window is documented.

Rows outside the window are dropped and counted. When more than ``MAX_OUT_OF_WINDOW`` (1%) of
the rows lie outside, the input is refused (:class:`DataFormatError`): that many bad clocks
means a wrong file or unit (milliseconds, another dataset), not a few stray rows.

Exact duplicates: rows equal in every column (the position columns ``part`` and, for
file-order data, ``time`` left out) are counted; every count goes into the prep summary and the
feature map's ``notes``. They are kept by default (a log may really hold two identical
impressions) and dropped, first occurrence kept, with ``drop_duplicates=True``
(``exfm prep --drop-duplicates``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS

from .errors import DataFormatError
from .readers.common import ReadResult

logger = logging.getLogger(__name__)

#: the largest share of out-of-window rows that is dropped rather than refused
MAX_OUT_OF_WINDOW = 0.01
_BEIJING = timezone(timedelta(hours=8))
TAOBAO_WINDOW = (date(2017, 5, 6), date(2017, 5, 14))  # [first day, day after the last), Beijing
AMAZON_WINDOW = (date(1995, 1, 1), date(2015, 1, 1))   # UTC
#: where a TaobaoAd-format log of other dates may lie (a UNIX-seconds clock of this century)
OWN_DATES = (date(2000, 1, 1), date(2100, 1, 1))
#: columns that say where a row sits, not what it is: left out of the duplicate check
POSITION_COLUMNS = ("part",)


@dataclass
class PolicyReport:
    """What the policies did: counts for the prep summary and the feature map's notes."""

    rows_read: int = 0
    window: list[str] | None = None
    out_of_window: int = 0
    duplicates: int = 0
    duplicates_dropped: int = 0
    notes: list[str] = field(default_factory=list)


def _seconds(day: date, tz: timezone) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def time_window(result: ReadResult) -> tuple[int, int, str] | None:
    """``(start, end, text)`` in UNIX seconds (end excluded) of the rows ``result`` may hold, or
    ``None`` where no window is documented (see the module docstring)."""
    if result.time_kind != "unix_seconds" or result.frame.height == 0:
        return None
    if result.dataset == "amazon":
        lo, hi = (_seconds(d, timezone.utc) for d in AMAZON_WINDOW)
        return lo, hi, f"{AMAZON_WINDOW[0]} .. {AMAZON_WINDOW[1]} UTC"
    if result.dataset != "taobaoad":
        return None
    times = result.frame["time"].to_numpy()
    lo, hi = (_seconds(d, _BEIJING) for d in TAOBAO_WINDOW)
    if np.count_nonzero((times >= lo) & (times < hi)) * 2 >= len(times):
        return lo, hi, f"{TAOBAO_WINDOW[0]} .. {TAOBAO_WINDOW[1] - timedelta(days=1)} Beijing time"
    # a user's own dates: the 8 consecutive Beijing days holding the most rows
    days = (times.astype(np.int64) + 8 * 3600) // 86400
    uniq, counts = np.unique(days, return_counts=True)
    csum = np.concatenate([[0], np.cumsum(counts)])
    ends = np.searchsorted(uniq, uniq + N_DAYS)
    held = csum[ends] - csum[np.arange(len(uniq))]
    best = int(np.argmax(held))
    first_ok, last_ok = ((d - date(1970, 1, 1)).days for d in OWN_DATES)
    if not first_ok <= int(uniq[best]) < last_ok:  # no plausible dates at all (milliseconds?): the documented window
        return lo, hi, f"{TAOBAO_WINDOW[0]} .. {TAOBAO_WINDOW[1] - timedelta(days=1)} Beijing time"
    if held[best] < (1 - MAX_OUT_OF_WINDOW) * len(times):
        return None  # really spans more than 8 days: the equal-count split of splits.py
    first = date(1970, 1, 1) + timedelta(days=int(uniq[best]))
    lo = _seconds(first, _BEIJING)
    return lo, lo + N_DAYS * 86400, f"{first} .. {first + timedelta(days=N_DAYS - 1)} Beijing time"


def apply_time_window(result: ReadResult, report: PolicyReport, where: str) -> None:
    """Drop the rows of ``result.frame`` outside :func:`time_window` (in place), counting them;
    refuse the input when more than ``MAX_OUT_OF_WINDOW`` of its rows are outside."""
    window = time_window(result)
    if window is None:
        return
    lo, hi, text = window
    report.window = [text]
    inside = (pl.col("time") >= lo) & (pl.col("time") < hi)
    n = result.frame.height
    outside = n - int(result.frame.select(inside.sum()).item())
    if outside == 0:
        return
    if outside > MAX_OUT_OF_WINDOW * n:
        bad = result.frame.filter(~inside)["time"][0]
        raise DataFormatError(f"{outside} of {n} rows ({outside / n:.1%}) have a timestamp outside the "
                              f"{result.dataset} window {text}", path=where, column="time", value=int(bad),
                              expected=f"UNIX seconds in {text}; at most {MAX_OUT_OF_WINDOW:.0%} of rows outside "
                                       "(those are dropped)")
    result.frame = result.frame.filter(inside)
    report.out_of_window = outside
    report.notes.append(f"time window: dropped {outside} of {n} rows with a timestamp outside {text}")
    logger.warning(report.notes[-1])


def duplicate_mask(frame: pl.DataFrame, time_kind: str) -> pl.Series:
    """True for every row that repeats an earlier row exactly (position columns left out)."""
    skip = set(POSITION_COLUMNS) | ({"time"} if time_kind == "file_order" else set())
    cols = [c for c in frame.columns if c not in skip]
    if not cols or frame.height == 0:
        return pl.Series("dup", [False] * frame.height, dtype=pl.Boolean)
    return ~frame.select(pl.struct(cols).is_first_distinct()).to_series()


def apply_duplicates(result: ReadResult, report: PolicyReport, *, drop: bool) -> None:
    """Count exact duplicate rows; drop them (first occurrence kept) when ``drop``."""
    dup = duplicate_mask(result.frame, result.time_kind)
    count = int(dup.sum())
    report.duplicates = count
    if count == 0:
        return
    if drop:
        result.frame = result.frame.filter(~dup)
        report.duplicates_dropped = count
        report.notes.append(f"duplicates: dropped {count} exact duplicate rows (--drop-duplicates)")
    else:
        report.notes.append(f"duplicates: {count} exact duplicate rows kept (exfm prep --drop-duplicates "
                            "drops them)")
    logger.warning(report.notes[-1])


def apply_policies(result: ReadResult, *, where: str, drop_duplicates: bool = False) -> PolicyReport:
    """Apply the time-window and duplicate policies to ``result.frame`` (in place); the report
    says what they did. ``where`` names the input for error messages."""
    report = PolicyReport(rows_read=result.frame.height)
    apply_time_window(result, report, where)
    apply_duplicates(result, report, drop=drop_duplicates)
    if result.frame.height == 0:
        raise DataFormatError("no rows left to prepare", path=where, expected="at least one impression")
    return report
