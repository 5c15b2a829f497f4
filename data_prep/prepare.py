"""Data preparation, one pass: read -> 8 days (+ domains) -> vocabulary -> one HDF5 file per day.

Output (``<out_dir>/<dataset_id>/``)::

    feature_map.json  feature_vocab.json   fuxictr's formats (FeatureMap.load reads them)
    day_1.h5 .. day_8.h5                    written by exfm_plugin.data.dayfile
    domains.json                            TaobaoAd only: new_user_class_level -> domain
    pretrained_item_emb.h5                  KuaiVideo only: the frozen visual embeddings
    prep_summary.json                       rows and label rates per day / domain / task

Every day file holds the encoded features and labels plus ``example_id`` (int64, unique in
the dataset, increasing in time order), ``time`` (the canonical time column) and, for
TaobaoAd, ``domain``.

A failed run leaves no half-written output and never touches a good one: everything is
read and validated before the first write, written into a temporary sibling directory, and
only a complete directory replaces ``<out_dir>/<dataset_id>`` (``exfm_plugin.fsutil.atomic_dir``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from exfm_plugin.contracts import SIZES, SOURCES
from exfm_plugin.fsutil import atomic_dir

from . import readers
from .encoding import FeatureEncoder, vocab_days as _vocab_days
from .errors import DataFormatError
from .splits import N_DAYS, assign_days, domain_info, domain_of, save_domain_mapping

logger = logging.getLogger(__name__)

#: The reader format the synthetic generator writes for each dataset.
SYNTHETIC_FORMAT = {"taobaoad": "raw", "amazon": "raw", "kuaivideo": "bars"}


@dataclass
class PrepSummary:
    """What a preparation produced; saved as prep_summary.json and printed by ``exfm prep``."""

    dataset: str
    source: str
    dataset_id: str
    data_dir: str
    rows_per_day: list[int]
    label_rate_per_day: dict[str, list[float | None]]
    time_range_per_day: list[list[int] | None]
    split_method: str
    split_note: str | None
    vocab_days: list[int]
    vocab_sizes: dict[str, int]
    label_rate_per_domain: dict[str, dict[str, float | None]] | None = None
    rows_per_domain: dict[str, int] | None = None
    tasks: list[str] | None = None
    numeric_stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_files: dict[str, str] = field(default_factory=dict)
    total_rows: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: one line per day, then domains, then notes."""
        labels = list(self.label_rate_per_day)
        head = f"{'day':>4} {'rows':>10} " + " ".join(f"{('rate ' + l):>14}" for l in labels)
        lines = [f"{self.dataset_id}: {self.total_rows} rows -> {self.data_dir}", head]
        for d in range(len(self.rows_per_day)):
            rates = " ".join(_fmt(self.label_rate_per_day[l][d]) for l in labels)
            lines.append(f"{d + 1:>4} {self.rows_per_day[d]:>10} {rates}")
        if self.rows_per_domain:
            lines.append("domain       rows " + " ".join(f"{('rate ' + l):>14}" for l in labels))
            for dom, rows in self.rows_per_domain.items():
                rates = " ".join(_fmt(self.label_rate_per_domain[l][dom]) for l in labels)
                lines.append(f"{dom:>6} {rows:>10} {rates}")
        lines.append(f"split: {self.split_method}" + (f" ({self.split_note})" if self.split_note else ""))
        lines.append(f"vocabulary fitted on days {self.vocab_days}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return f"{'-':>14}" if x is None else f"{x:>14.4f}"


def _rates(frame: pl.DataFrame, by: str, labels: list[str], keys: Iterable[Any]) -> dict[str, dict[Any, float | None]]:
    agg = frame.group_by(by).agg([pl.col(l).cast(pl.Float64).mean().alias(l) for l in labels] + [pl.len().alias("n")])
    table = {row[by]: row for row in agg.iter_rows(named=True)}
    return {l: {k: (table[k][l] if k in table else None) for k in keys} for l in labels}


def prepare(dataset: str, source: str, input_dir: str | None, out_dir: str, *, seed: int = 0,
            size: str | int = "tiny", vocab_policy: str | Iterable[int] | None = None,
            dataset_id: str | None = None, drift: float = 1.0) -> PrepSummary:
    """Prepare ``dataset`` from ``source`` files into 8 HDF5 day files under ``out_dir``.

    ``source="synthetic"`` first writes raw-format files with ``data_prep.synthetic``
    (into ``input_dir`` if given, else ``<out_dir>/raw/<dataset>``), then reads them with
    the same reader as real files. ``vocab_policy``: see :mod:`data_prep.encoding`.
    """
    from exfm_plugin.data.dayfile import write_day_file  # the shared day-file writer

    start = time.perf_counter()
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if not isinstance(size, int) and size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    dataset_id = dataset_id or f"{dataset}_{source}"
    out = Path(out_dir)
    fmt = source
    if source == "synthetic":
        from .synthetic import generate_raw

        raw_dir = Path(input_dir) if input_dir else out / "raw" / dataset
        logger.info("writing synthetic %s raw files (size=%s, seed=%d) to %s", dataset, size, seed, raw_dir)
        generate_raw(dataset, str(raw_dir), size=size, seed=seed, drift=drift)
        input_dir, fmt = str(raw_dir), SYNTHETIC_FORMAT[dataset]
    elif dataset == "kuaivideo":
        fmt = "bars"  # BARS KuaiVideo_x1 is the only public form of KuaiVideo
    if input_dir is None:
        raise DataFormatError("no input directory given", expected=f"--input DIR with the {dataset} {source} files")

    # ---- read and split: every parse error happens here, before anything is written
    result = readers.read(dataset, fmt, input_dir, seed=seed)
    split = assign_days(result)
    frame = result.frame.with_columns(pl.Series("day", split.day, dtype=pl.Int8),
                                      pl.Series("example_id", np.arange(result.frame.height, dtype=np.int64)))
    domains = None
    if dataset == "taobaoad":
        domains = domain_info(frame)
        frame = frame.with_columns(pl.Series("domain", domain_of(frame["new_user_class_level"], domains["mapping"])))
    policy_days = _vocab_days(vocab_policy)

    days: dict[int, pl.DataFrame] = {}
    # rows are in time order, so each day is one contiguous block: slice it (no copy)
    contiguous = bool(np.all(np.diff(split.day) >= 0))
    bounds = np.searchsorted(split.day, np.arange(1, N_DAYS + 2)) if contiguous else None

    def day_frame(d: int) -> pl.DataFrame:
        if d in days:
            return days[d]
        if bounds is not None:
            df = frame.slice(int(bounds[d - 1]), int(bounds[d] - bounds[d - 1]))
        else:
            df = frame.filter(pl.col("day") == d)
        return result.add_sequences(df) if result.add_sequences else df

    for d in policy_days:
        days[d] = day_frame(d)
    fit_rows = pl.concat([days[d] for d in policy_days], how="vertical_relaxed")
    if fit_rows.height == 0:
        raise DataFormatError(f"days {list(policy_days)} hold no rows: nothing to fit the vocabulary on",
                              path=input_dir, expected="rows in the vocabulary days")
    encoder = FeatureEncoder(dataset_id, result.features, result.labels,
                             min_categr_count=result.min_categr_count).fit(fit_rows, all_meta=frame)
    del fit_rows

    # ---- write into a temporary directory, then swap it in (atomic_dir: fsync'ed, renamed)
    out.mkdir(parents=True, exist_ok=True)
    final = out / dataset_id
    with atomic_dir(final, replace=True) as tmp_dir:
        tmp = Path(tmp_dir)
        encoder.save(tmp)
        if domains is not None:
            save_domain_mapping(tmp / "domains.json", domains)
        time_ranges: list[list[int] | None] = []
        for d in tqdm(range(1, N_DAYS + 1), desc=f"prep {dataset_id}", unit="day"):
            df = day_frame(d)
            days.pop(d, None)
            cols = encoder.transform(df)
            cols["example_id"] = df["example_id"].to_numpy()
            cols["time"] = df["time"].to_numpy().astype(np.int64)
            if "domain" in df.columns:
                cols["domain"] = df["domain"].to_numpy()
            tr = (int(df["time"].min()), int(df["time"].max())) if df.height else None
            time_ranges.append(list(tr) if tr else None)
            attrs = {"source": source, "reader_format": fmt, "time_kind": result.time_kind,
                     "split_method": split.method}
            if split.split_note:
                attrs["split_note"] = split.split_note
            write_day_file(tmp / f"day_{d}.h5", cols, dataset_id=dataset_id, day=d, time_range=tr, attrs=attrs)
        summary = _summary(dataset, source, dataset_id, final, frame, result, split, policy_days, encoder,
                           domains, time_ranges)
        summary.seconds = time.perf_counter() - start
        (tmp / "prep_summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    logger.info("prepared %s: %d rows in %.1f s", dataset_id, summary.total_rows, summary.seconds)
    return summary


def _summary(dataset: str, source: str, dataset_id: str, final: Path, frame: pl.DataFrame,
             result: readers.ReadResult, split: Any, policy_days: tuple[int, ...], encoder: FeatureEncoder,
             domains: dict | None, time_ranges: list) -> PrepSummary:
    day_keys = list(range(1, N_DAYS + 1))
    rows = frame.group_by("day").len()
    rows_map = dict(rows.iter_rows())
    rates = _rates(frame, "day", result.labels, day_keys)
    summary = PrepSummary(
        dataset=dataset, source=source, dataset_id=dataset_id, data_dir=str(final),
        rows_per_day=[int(rows_map.get(d, 0)) for d in day_keys],
        label_rate_per_day={l: [rates[l][d] for d in day_keys] for l in result.labels},
        time_range_per_day=time_ranges, split_method=split.method, split_note=split.split_note,
        vocab_days=list(policy_days), vocab_sizes=encoder.describe()["vocab_sizes"],
        numeric_stats=encoder.describe()["numeric_stats"], notes=list(result.notes),
        input_files=dict(result.files), total_rows=frame.height)
    if domains is not None:
        keys = list(range(domains["n_domains"]))
        drates = _rates(frame, "domain", result.labels, keys)
        summary.label_rate_per_domain = {l: {str(k): v for k, v in drates[l].items()} for l in result.labels}
        summary.rows_per_domain = {str(k): int(v) for k, v in zip(keys, domains["domain_sizes"])}
    if len(result.labels) > 1:
        summary.tasks = list(result.labels)
    return summary
