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
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from exfm_plugin.contracts import SIZES, SOURCES, day_file_name, truth_column
from exfm_plugin.errors import InputError
from exfm_plugin.fsutil import atomic_dir, atomic_file, sweep_stale_temps

from . import readers
from .encoding import FeatureEncoder, vocab_days as _vocab_days
from .errors import DataFormatError
from .policies import PolicyReport, apply_policies
from .splits import N_DAYS, assign_days, domain_info, domain_of, save_domain_mapping

logger = logging.getLogger(__name__)

#: the smallest synthetic world (data_prep.synthetic.common.resolve_size)
MIN_SYNTHETIC_ROWS = 1000
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
    rows_read: int = 0
    out_of_window_dropped: int = 0
    time_window: str | None = None
    duplicate_rows: int = 0
    duplicates_dropped: int = 0
    #: what the reader itself counted by the data policies (e.g. Amazon's reviews_out_of_window)
    reader_counts: dict[str, int] = field(default_factory=dict)
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


def parse_vocab_days(text: str | None) -> str | list[int] | None:
    """``--vocab-days`` as :func:`prepare` takes it: ``None``, ``"all"`` or a list of days 1..8."""
    if text is None or text.strip() == "all":
        return None if text is None else "all"
    days = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            days.append(int(part))
        except ValueError:
            raise InputError(f"bad day {part.strip()!r}", where=f"--vocab-days {text}",
                             expected=f"'all' or comma-separated days in 1..{N_DAYS}, e.g. 1,2,3,4") from None
    return check_vocab_days(days, where=f"--vocab-days {text}")


def check_vocab_days(days: Iterable[Any], *, where: str = "vocab_policy") -> list[int]:
    """The days as ints; every one in 1..8, at least one."""
    out = []
    for d in days:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= int(d) <= N_DAYS:
            raise InputError(f"day {d!r} is not a day of the split", where=where,
                             expected=f"days in 1..{N_DAYS}")
        out.append(int(d))
    if not out:
        raise InputError("no day given", where=where, expected=f"at least one day in 1..{N_DAYS}")
    return out


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output root that cannot hold the result, before any work: a file, a path below a
    file, or a directory this user may not write."""
    out = Path(out_dir)
    probe = out
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "--out " + str(out_dir) + ("" if probe == out else f" (its parent {probe} is a file)")
        raise InputError("the output root is not a directory", where=where,
                         expected="a directory, or a path that can be created as one")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{probe} is not writable", where=f"--out {out_dir}",
                         expected="a directory this user may write")
    return out


def prepare(dataset: str, source: str, input_dir: str | None, out_dir: str, *, seed: int = 0,
            size: str | int = "tiny", vocab_policy: str | Iterable[int] | None = None,
            dataset_id: str | None = None, drift: float = 1.0, drop_duplicates: bool = False,
            domain_shift: float = 0.0) -> PrepSummary:
    """Prepare ``dataset`` from ``source`` files into 8 HDF5 day files under ``out_dir``.

    ``source="synthetic"`` first writes raw-format files with ``data_prep.synthetic``
    (into ``input_dir`` if given, else ``<out_dir>/raw/<dataset>``), then reads them with
    the same reader as real files, and every day file gets the world's true probability of each
    row (``contracts.truth_column``, read by no model). ``vocab_policy``: see :mod:`data_prep.encoding`.
    Doubtful rows (outside the time window, exact duplicates) follow :mod:`data_prep.policies`.
    Bad input of any kind raises :class:`exfm_plugin.errors.ExfmInputError` before anything
    is written.
    """
    from exfm_plugin.data.dayfile import write_day_file  # the shared day-file writer

    start = time.perf_counter()
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}", where="source", expected=f"one of {list(SOURCES)}")
    if isinstance(size, bool) or not (isinstance(size, int) or size in SIZES):
        raise InputError(f"unknown size {size!r}", where="size", expected=f"one of {list(SIZES)} or a number")
    if isinstance(size, int) and size < MIN_SYNTHETIC_ROWS:
        raise InputError(f"size {size} is too small", where="the synthetic data size (--size, or a grid's size:)",
                         expected=f"a preset {list(SIZES)} or at least {MIN_SYNTHETIC_ROWS} impressions")
    if isinstance(vocab_policy, str):
        vocab_policy = parse_vocab_days(vocab_policy)
    if vocab_policy is not None and vocab_policy != "all":
        vocab_policy = check_vocab_days(vocab_policy)
    dataset_id = dataset_id or f"{dataset}_{source}"
    out = check_out_dir(out_dir)
    fmt = source
    world = None
    if source == "synthetic":
        from .synthetic import make_world, write_raw

        raw_dir = Path(input_dir) if input_dir else out / "raw" / dataset
        logger.info("writing synthetic %s raw files (size=%s, seed=%d, drift=%g, domain_shift=%g) to %s", dataset,
                    size, seed, drift, domain_shift, raw_dir)
        world = make_world(dataset, size, seed, drift, domain_shift)
        write_raw(world, str(raw_dir))
        input_dir, fmt = str(raw_dir), SYNTHETIC_FORMAT[dataset]
    elif dataset == "kuaivideo":
        fmt = "bars"  # BARS KuaiVideo_x1 is the only public form of KuaiVideo
    if input_dir is None:
        raise DataFormatError("no input directory given", expected=f"--input DIR with the {dataset} {source} files")

    # ---- read and split: every parse error happens here, before anything is written
    result = readers.read(dataset, fmt, input_dir, seed=seed)
    policy = apply_policies(result, where=str(input_dir), drop_duplicates=drop_duplicates)
    split = assign_days(result)
    frame = result.frame.with_columns(pl.Series("day", split.day, dtype=pl.Int8),
                                      pl.Series("example_id", np.arange(result.frame.height, dtype=np.int64)))
    if world is not None:
        from .synthetic.truth import truth_by_label

        truth = truth_by_label(world, frame, result.labels)
        frame = frame.with_columns(*(pl.Series(truth_column(k), v, dtype=pl.Float64) for k, v in truth.items()))
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
    sweep_stale_temps(out)  # what killed runs of this or another prep left in the output root
    final = out / dataset_id
    with atomic_dir(final, replace=True) as tmp_dir:
        tmp = Path(tmp_dir)
        encoder.save(tmp)
        _add_feature_map_notes(tmp / "feature_map.json", policy)
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
            for label in result.labels:
                if truth_column(label) in df.columns:
                    cols[truth_column(label)] = df[truth_column(label)].to_numpy()
            tr = (int(df["time"].min()), int(df["time"].max())) if df.height else None
            time_ranges.append(list(tr) if tr else None)
            attrs = {"source": source, "reader_format": fmt, "time_kind": result.time_kind,
                     "split_method": split.method}
            if split.split_note:
                attrs["split_note"] = split.split_note
            write_day_file(tmp / day_file_name(d), cols, dataset_id=dataset_id, day=d, time_range=tr, attrs=attrs)
        summary = _summary(dataset, source, dataset_id, final, frame, result, split, policy_days, encoder,
                           domains, time_ranges, policy)
        summary.seconds = time.perf_counter() - start
        (tmp / "prep_summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    logger.info("prepared %s: %d rows in %.1f s", dataset_id, summary.total_rows, summary.seconds)
    return summary


def _summary(dataset: str, source: str, dataset_id: str, final: Path, frame: pl.DataFrame,
             result: readers.ReadResult, split: Any, policy_days: tuple[int, ...], encoder: FeatureEncoder,
             domains: dict | None, time_ranges: list, policy: PolicyReport) -> PrepSummary:
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
        numeric_stats=encoder.describe()["numeric_stats"], notes=list(result.notes) + policy.notes,
        input_files=dict(result.files), rows_read=policy.rows_read, out_of_window_dropped=policy.out_of_window,
        time_window=policy.window[0] if policy.window else None, duplicate_rows=policy.duplicates,
        duplicates_dropped=policy.duplicates_dropped, reader_counts=dict(result.counts), total_rows=frame.height)
    if domains is not None:
        keys = list(range(domains["n_domains"]))
        drates = _rates(frame, "domain", result.labels, keys)
        summary.label_rate_per_domain = {l: {str(k): v for k, v in drates[l].items()} for l in result.labels}
        summary.rows_per_domain = {str(k): int(v) for k, v in zip(keys, domains["domain_sizes"])}
    if len(result.labels) > 1:
        summary.tasks = list(result.labels)
    return summary


def _add_feature_map_notes(path: Path, policy: PolicyReport) -> None:
    """Record what the data policies did in feature_map.json's ``notes`` (fuxictr's FeatureMap
    ignores keys it does not know), so whoever trains on the data sees it."""
    fmap = json.loads(path.read_text())
    fmap["notes"] = list(fmap.get("notes", [])) + [
        f"rows read {policy.rows_read}; outside the time window dropped {policy.out_of_window}"
        + (f" ({policy.window[0]})" if policy.window else " (no documented window)"),
        f"exact duplicate rows {policy.duplicates}; dropped {policy.duplicates_dropped}"]
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(fmap, separators=(",", ":")))
