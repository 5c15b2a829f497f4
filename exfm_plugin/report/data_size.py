"""How big the data behind a report is, in words a reader checks first: source, size, rows a day, seeds.

A leaderboard of 25k synthetic rows a day must not read like the paper's tables. The rows a day
come from the record's ``train_curve`` (the VM's rows of each day's first pass) when the run kept
it, else from the test day's row count (the sum of the record's ``calibration_bins`` counts).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

#: below this many VM rows a day a run is "small": the real TaobaoAd has ~3M a day, AmazonElectronics ~0.4M
SMALL_ROWS_PER_DAY = 100_000
SMALL_SIZES = ("tiny", "small")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def rows_per_day(row: Mapping[str, Any]) -> int | None:
    """The VM rows of one day of this record: median over its trained days, else its test day's rows."""
    first_pass: dict[Any, int] = {}
    for e in sorted(_json(row.get("train_curve")) or [], key=lambda e: -e.get("pass", 1)):
        if e.get("rows") is not None:
            first_pass[e.get("day")] = e["rows"]  # the lowest pass of a day is seen last and wins
    if first_pass:
        return int(statistics.median(first_pass.values()))
    bins = _json(row.get("calibration_bins")) or []
    counts = [b[2] for b in bins if len(b) >= 3]
    return int(sum(counts)) if counts else None


def human_count(n: float) -> str:
    """``25k``, ``1.2M``, ``800``: a row count at a glance."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


@dataclass(frozen=True)
class DataScale:
    """One dataset of a report: its sources, grid sizes, median VM rows a day and the seeds of its ok records."""

    dataset: str
    sources: tuple[str, ...]
    sizes: tuple[str, ...]
    rows_per_day: int | None
    seeds: tuple[int, ...]

    @property
    def synthetic(self) -> bool:
        return "synthetic" in self.sources

    @property
    def small(self) -> bool:
        """Tiny or small: a grid size named so, or fewer than :data:`SMALL_ROWS_PER_DAY` rows a day."""
        return bool(set(self.sizes) & set(SMALL_SIZES)) or (
            self.rows_per_day is not None and self.rows_per_day < SMALL_ROWS_PER_DAY)

    def rows_text(self) -> str:
        return "rows a day unknown" if self.rows_per_day is None else f"{human_count(self.rows_per_day)} rows a day"

    def describe(self) -> str:
        """``taobaoad: synthetic, size small, 25k rows a day (VM rows, median), 6 seeds (0-5)``."""
        size = f", size {'/'.join(self.sizes)}" if self.sizes else ""
        rows = "rows a day unknown" if self.rows_per_day is None else \
            f"{self.rows_per_day:,} rows a day (VM rows, median over records)"
        return f"{self.dataset}: {'/'.join(self.sources)}{size}, {rows}, {seeds_text(self.seeds)}"


def seeds_text(seeds: Iterable[int]) -> str:
    """``3 seeds (0, 1, 2)``."""
    s = sorted(set(seeds))
    return f"{len(s)} seed{'s' if len(s) != 1 else ''} ({', '.join(map(str, s))})" if s else "no seed"


def data_scales(rows: Iterable[Mapping[str, Any]]) -> list[DataScale]:
    """Per dataset, from the ok records (flat report rows or raw records)."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            by.setdefault(r["dataset"], []).append(r)
    out = []
    for ds, rs in sorted(by.items()):
        per_day = [n for r in rs if r.get("kind", "vm") == "vm" and (n := rows_per_day(r)) is not None] or \
            [n for r in rs if (n := rows_per_day(r)) is not None]
        out.append(DataScale(ds, tuple(sorted({r["data_source"] for r in rs})),
                             tuple(sorted({str(r["data_size"]) for r in rs if r.get("data_size") is not None})),
                             int(statistics.median(per_day)) if per_day else None,
                             tuple(sorted({r["seed"] for r in rs if r.get("seed") is not None}))))
    return out


def caption(rows: Iterable[Mapping[str, Any]]) -> str:
    """A figure's subtitle: ``synthetic taobaoad, size small, 25k rows a day; 6 seeds (0, ..., 5)``."""
    scales = data_scales(rows)
    parts = [f"{'/'.join(s.sources)} {s.dataset}" + (f", size {'/'.join(s.sizes)}" if s.sizes else "")
             + f", {s.rows_text()}" for s in scales]
    seeds = sorted({x for s in scales for x in s.seeds})
    return "; ".join(parts + [seeds_text(seeds)])


def size_warning(scales: list[DataScale]) -> str | None:
    """The header's warning in words when the data is synthetic or small; None for full-size real data."""
    flagged = [s for s in scales if s.synthetic or s.small]
    if not flagged:
        return None
    texts = {s.rows_text() for s in flagged}
    rows = texts.pop() if len(texts) == 1 else ", ".join(f"{s.dataset} {s.rows_text()}" for s in flagged)
    seeds = seeds_text(x for s in flagged for x in s.seeds)
    small = any(s.small for s in flagged)
    if any(s.synthetic for s in flagged):
        what = f"{'Small s' if small else 'S'}ynthetic data, {rows}, {seeds}"
    else:
        what = f"Small run of real data, {rows}, {seeds}"
    text = f"⚠ **{what}: not comparable to the paper's or BARS' numbers printed beside them.**"
    if small:
        text += (" A run this size checks the pipeline and the direction of effects; the paper's and BARS' models "
                 "learn from millions of real rows a day.")
    return text
