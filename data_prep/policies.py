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
- KuaiVideo (relative timestamps) and the BARS files (file order): no window is documented;
  KuaiVideo's timestamps must still be >= 0 (a relative clock starts at 0).

The readers apply the window to every timestamp they use, not only to the rows they return:
Amazon's reviews are checked before they become samples or history (a review dated 1969 that
only serves as history is dropped like a sample), KuaiVideo's rows before they are ordered
(:func:`drop_out_of_window`). Rows outside the window are dropped and counted. When more than ``MAX_OUT_OF_WINDOW`` (1%) of
the rows lie outside, the input is refused (:class:`DataFormatError`): that many bad clocks
means a wrong file or unit (milliseconds, another dataset), not a few stray rows.

Exact duplicates: rows equal in every column (the position columns ``part`` and, for
file-order data, ``time`` left out) are counted; every count goes into the prep summary and the
feature map's ``notes``. They are kept by default (a log may really hold two identical
impressions: TaobaoAd, KuaiVideo) and dropped, first occurrence kept, with
``drop_duplicates=True`` (``exfm prep --drop-duplicates``). Amazon reviews are the exception:
a review is one event per (reviewer, item), so a second review line with the same reviewer,
item and time is a copy; the reader always drops it and counts it (kept, it would put the
target item into its own history and double the user's samples).

What a reader dropped is counted in :attr:`ReadResult.counts` with a line in its notes (printed
by ``exfm prep`` and saved in ``prep_summary.json``); rows a reader dropped for their time are
added to the report's ``out_of_window`` when they are rows of the canonical frame (KuaiVideo).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS

from .errors import DataFormatError

if TYPE_CHECKING:  # the readers import this module: no import of them at run time
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


def amazon_window() -> tuple[int, int, str]:
    """``(start, end, text)`` of Amazon's review times in UNIX seconds (end excluded)."""
    lo, hi = (_seconds(d, timezone.utc) for d in AMAZON_WINDOW)
    return lo, hi, f"{AMAZON_WINDOW[0]} .. {AMAZON_WINDOW[1]} UTC"


def time_window(result: ReadResult) -> tuple[int, int, str] | None:
    """``(start, end, text)`` in UNIX seconds (end excluded) of the rows ``result`` may hold, or
    ``None`` where no window is documented (see the module docstring)."""
    if result.time_kind != "unix_seconds" or result.frame.height == 0:
        return None
    if result.dataset == "amazon":
        return amazon_window()
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


def drop_out_of_window(frame: pl.DataFrame, column: str, lo: int, hi: int | None, text: str, *, path: Any,
                       dataset: str, what: str = "rows", label: str = "a timestamp",
                       unit: str = "UNIX seconds") -> tuple[pl.DataFrame, int]:
    """``frame`` without its rows whose ``column`` lies outside ``[lo, hi)`` (``hi=None``: no upper
    bound), and how many were dropped; refuse (DataFormatError naming ``path`` and ``column``)
    when more than ``MAX_OUT_OF_WINDOW`` of them are outside. Nulls count as outside."""
    inside = pl.col(column) >= lo
    if hi is not None:
        inside = inside & (pl.col(column) < hi)
    inside = inside.fill_null(False)
    n = frame.height
    outside = n - int(frame.select(inside.sum()).item())
    if outside == 0:
        return frame, 0
    if outside > MAX_OUT_OF_WINDOW * n:
        bad = frame.filter(~inside)[column][0]
        raise DataFormatError(f"{outside} of {n} {what} ({outside / n:.1%}) have {label} outside the "
                              f"{dataset} window {text}", path=path, column=column,
                              value=None if bad is None else int(bad),
                              expected=f"{unit} in {text}; at most {MAX_OUT_OF_WINDOW:.0%} of {what} outside "
                                       "(those are dropped)")
    return frame.filter(inside), outside


def drop_exact_duplicates(frame: pl.DataFrame, columns: Sequence[str]) -> tuple[pl.DataFrame, int]:
    """``frame`` without the rows that repeat an earlier row in ``columns`` (first kept), and how many."""
    if frame.height == 0:
        return frame, 0
    first = frame.select(pl.struct(list(columns)).is_first_distinct()).to_series()
    count = frame.height - int(first.sum())
    return (frame.filter(first), count) if count else (frame, 0)


def apply_time_window(result: ReadResult, report: PolicyReport, where: str) -> None:
    """Drop the rows of ``result.frame`` outside :func:`time_window` (in place), counting them;
    refuse the input when more than ``MAX_OUT_OF_WINDOW`` of its rows are outside."""
    window = time_window(result)
    if window is None:
        return
    lo, hi, text = window
    report.window = [text]
    n = result.frame.height
    result.frame, outside = drop_out_of_window(result.frame, "time", lo, hi, text, path=where,
                                               dataset=result.dataset)
    if outside == 0:
        return
    report.out_of_window += outside
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
    # rows of the canonical frame a reader already dropped for their time (KuaiVideo) count as read
    early = result.counts.get("rows_out_of_window", 0)
    report = PolicyReport(rows_read=result.frame.height + early, out_of_window=early)
    apply_time_window(result, report, where)
    apply_duplicates(result, report, drop=drop_duplicates)
    if result.frame.height == 0:
        raise DataFormatError("no rows left to prepare", path=where, expected="at least one impression")
    return report
