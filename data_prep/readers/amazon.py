"""Amazon Electronics (McAuley et al.) into DIN-style samples, one canonical frame.

Two sources:

- ``raw``: ``reviews_Electronics_5.json(.gz)`` (JSON lines) and ``meta_Electronics.json(.gz)``
  (JSON lines, or Python-literal lines in the old dump: parsed with ``ast.literal_eval`` per
  line when JSON fails). Samples follow DIN's preprocessing: per user, reviews sorted by
  ``unixReviewTime`` (ties keep file order); every review after the first is a positive whose
  history is the user's earlier items (at most 100, **most recent last**); one negative per
  positive, drawn with a seeded generator from the reviewed items the user never reviewed,
  sharing the positive's history and time. An item's category is the last category of its
  first category path (``categories[0][-1]``; the newer dumps' flat ``category`` list is
  accepted, last element).

  The data policies (:mod:`data_prep.policies`) apply to the reviews before any sample is
  built, so a review used only as history is checked like one used as a target: reviews dated
  outside 1995-01-01 .. 2015-01-01 UTC are dropped and counted (more than 1% refuses the file),
  and a review line repeating an earlier one's reviewer, item and time is a copy, dropped and
  counted. A metadata dump that covers fewer than ``MIN_META_COVERAGE`` of the reviewed items is
  the wrong file and refused; partial coverage above that is counted in the notes.
- ``bars``: BARS ``AmazonElectronics_x1`` ``train.csv`` / ``test.csv`` (no timestamp: ``time``
  is the row's position, train rows first).
"""
from __future__ import annotations

import ast
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import DataFormatError
from ..policies import amazon_window, drop_exact_duplicates, drop_out_of_window
from .archives import check_container
from .common import CsvTable, ReadResult, check_not_empty, collect_checked, find_file, open_text, require_file

logger = logging.getLogger(__name__)

DATASET = "amazon"
MAX_LEN = 100
MIN_CATEGR_COUNT = 1  # BARS AmazonElectronics_x1 setting
LABELS = ["label"]
REVIEW_FIELDS = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.Int64}
BARS_COLS = {"label": "label", "user_id": "int", "item_id": "int", "cate_id": "int",
             "item_history": "seq_int", "cate_history": "seq_int"}
#: the names each raw dump is found under (each also gzipped: ``find_file``)
REVIEW_NAMES = ("reviews_Electronics_5.json", "reviews_Electronics.json")
META_NAMES = ("meta_Electronics.json",)
#: the smallest share of the reviewed items the metadata dump must cover: below it the dump is
#: another category's (or another dump's) and every category would be missing
MIN_META_COVERAGE = 0.5
#: a review's identity: the same reviewer, item and second twice is a copied line
REVIEW_KEY = ["user_id", "item_id", "time"]
COLUMNS = ["time", "user_id", "item_id", "cate_id", "item_history", "cate_history", "label"]


def feature_specs(max_len: int = MAX_LEN) -> list[dict[str, Any]]:
    """FuxiCTR-style feature columns (BARS AmazonElectronics_x1: user_id is the group id only)."""
    return [{"name": "group_id", "type": "meta", "copy_from": "user_id"},
            {"name": "item_id", "type": "categorical", "source": "item"},
            {"name": "cate_id", "type": "categorical", "source": "item"},
            {"name": "item_history", "type": "sequence", "source": "user", "share_embedding": "item_id",
             "max_len": max_len},
            {"name": "cate_history", "type": "sequence", "source": "user", "share_embedding": "cate_id",
             "max_len": max_len}]


# ----------------------------------------------------------------------------------- raw
def _utf8_error(path: Path, err: UnicodeDecodeError) -> DataFormatError:
    """The first line of ``path`` (gzip or plain) that is not UTF-8, as a DataFormatError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for row, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return DataFormatError(f"byte {raw[e.start:e.start + 1]!r} at column {e.start + 1} is not "
                                           "UTF-8", path=path, row=row, expected="UTF-8 text (JSON lines)")
    except (OSError, EOFError):
        pass
    return DataFormatError(f"not UTF-8 ({err.reason} at byte {err.start})", path=path, expected="UTF-8 text")


def _json_lines_error(path: Path, fields: dict[str, pl.DataType], err: BaseException) -> DataFormatError:
    """Find the first line that is not a JSON object with ``fields`` of the right type."""
    kinds = {pl.String: str, pl.Int64: int}
    try:
        with open_text(path) as f:
            for row, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return DataFormatError("line is not valid JSON", path=path, row=row, value=line.strip(),
                                           expected="one JSON object per line")
                for name, dtype in fields.items():
                    if name not in obj:
                        return DataFormatError("missing field", path=path, column=name, row=row,
                                               expected="fields " + ", ".join(fields))
                    value = obj[name]
                    want = kinds.get(dtype, str)
                    ok = isinstance(value, want) or (want is int and isinstance(value, float) and value == int(value))
                    if not ok or isinstance(value, bool):
                        return DataFormatError("wrong type", path=path, column=name, row=row, value=value,
                                               expected=want.__name__)
    except UnicodeDecodeError as e:
        return _utf8_error(path, e)
    except (OSError, EOFError) as e:
        return DataFormatError(f"truncated or corrupt file ({e})", path=path, expected="a complete gzip/JSON file")
    return DataFormatError(f"cannot read the file: {err}", path=path, expected="JSON lines")


def scan_reviews(path: Path) -> pl.LazyFrame:
    """The review chain: (user_id, item_id, time, file row) of every review."""
    return (pl.scan_ndjson(path, schema=REVIEW_FIELDS)
            .with_row_index("row")
            .select(pl.col("reviewerID").alias("user_id"), pl.col("asin").alias("item_id"),
                    pl.col("unixReviewTime").alias("time"), pl.col("row").cast(pl.Int64)))


def read_reviews(path: Path) -> pl.DataFrame:
    """Collect the reviews, with a precise error for a bad line or a truncated gzip."""
    try:
        df = scan_reviews(path).collect()
    except (pl.exceptions.PolarsError, OSError, EOFError) as e:
        raise _json_lines_error(path, REVIEW_FIELDS, e) from e
    check_not_empty(df, path, "reviews")
    for col, src in (("user_id", "reviewerID"), ("item_id", "asin"), ("time", "unixReviewTime")):
        if df[col].null_count():
            row = int(df.with_row_index("r").filter(pl.col(col).is_null())["r"][0]) + 1
            raise DataFormatError("missing or null field", path=path, column=src, row=row,
                                  expected="fields " + ", ".join(REVIEW_FIELDS))
    return df


def _category_of(obj: dict[str, Any]) -> str | None:
    cats = obj.get("categories")
    if isinstance(cats, list) and cats and isinstance(cats[0], list) and cats[0]:
        return str(cats[0][-1])
    flat = obj.get("category")
    if isinstance(flat, list) and flat:
        return str(flat[-1])
    return None


def read_meta(path: Path) -> pl.DataFrame:
    """(item_id, cate_id) from the metadata dump; JSON per line, else a Python literal."""
    items: list[str] = []
    cates: list[str | None] = []
    try:
        with open_text(path) as f:
            for row, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        obj = ast.literal_eval(line)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        raise DataFormatError("line is neither JSON nor a Python literal", path=path, row=row,
                                              value=line, expected="one dict per line") from None
                if not isinstance(obj, dict) or "asin" not in obj:
                    raise DataFormatError("missing field", path=path, column="asin", row=row,
                                          expected="a dict with 'asin' and 'categories'")
                items.append(str(obj["asin"]))
                cates.append(_category_of(obj))
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e) from e
    except (OSError, EOFError) as e:
        raise DataFormatError(f"truncated or corrupt file ({e})", path=path,
                              expected="a complete gzip file") from e
    meta = pl.DataFrame({"item_id": items, "cate_id": cates}, schema={"item_id": pl.String, "cate_id": pl.String})
    check_not_empty(meta, path, "metadata lines")
    return meta.unique("item_id", keep="first", maintain_order=True)


def din_samples(reviews: pl.DataFrame, meta: pl.DataFrame, *, seed: int = 0,
                max_len: int = MAX_LEN) -> tuple[pl.DataFrame, int]:
    """DIN samples (positives and one negative each) in time order; returns (frame, dropped)."""
    rev = (reviews.join(meta, on="item_id", how="left", maintain_order="left")
           .sort(["user_id", "time", "row"]))
    per_user = rev.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").alias("items"), pl.col("cate_id").alias("cates"), pl.col("time").alias("times"))
    off = pl.max_horizontal(pl.col("pos") - max_len, pl.lit(0))
    pos = (per_user.with_columns(pl.int_ranges(1, pl.col("items").list.len()).alias("pos"))
           .explode("pos").drop_nulls("pos")
           .with_columns(off.alias("off"))
           .select("user_id", "pos",
                   pl.col("times").list.get(pl.col("pos")).alias("time"),
                   pl.col("items").list.get(pl.col("pos")).alias("item_id"),
                   pl.col("cates").list.get(pl.col("pos")).alias("cate_id"),
                   pl.col("items").list.slice(pl.col("off"), pl.col("pos") - pl.col("off")).alias("item_history"),
                   pl.col("cates").list.slice(pl.col("off"), pl.col("pos") - pl.col("off")).alias("cate_history"),
                   pl.lit(1, dtype=pl.Int8).alias("label")))
    negs, dropped = _negatives(pos, rev, meta, seed)
    frame = (pl.concat([pos, negs], how="vertical")
             .sort(["time", "user_id", "pos", "label"], descending=[False, False, False, True])
             .select(COLUMNS))
    return frame, dropped


def _negatives(pos: pl.DataFrame, rev: pl.DataFrame, meta: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, int]:
    """One negative per positive: a reviewed item the user never reviewed (rejection sampling)."""
    universe = np.sort(rev["item_id"].unique().to_numpy())
    seen = rev.select("user_id", "item_id").unique()
    rng = np.random.default_rng(seed)
    users = pos["user_id"]
    choice = universe[rng.integers(0, len(universe), pos.height)]
    todo = np.arange(pos.height)
    for _ in range(100):
        cand = pl.DataFrame({"i": todo, "user_id": users.gather(todo), "item_id": choice[todo]})
        bad = cand.join(seen, on=["user_id", "item_id"], how="semi")["i"].to_numpy()
        if len(bad) == 0:
            todo = bad
            break
        choice[bad] = universe[rng.integers(0, len(universe), len(bad))]
        todo = np.sort(bad)
    keep = np.ones(pos.height, dtype=bool)
    keep[todo] = False  # users who reviewed (nearly) every item: no negative could be found
    cate = meta.rename({"cate_id": "neg_cate"})
    negs = (pos.with_columns(pl.Series("item_id", choice), pl.lit(0, dtype=pl.Int8).alias("label"))
            .filter(pl.Series(keep))
            .join(cate, on="item_id", how="left", maintain_order="left")
            .with_columns(pl.col("neg_cate").alias("cate_id")).drop("neg_cate"))
    return negs, int((~keep).sum())


def read_raw(input_dir: str | Path, *, seed: int = 0, max_len: int = MAX_LEN) -> ReadResult:
    """Read the raw review and metadata dumps of ``input_dir`` into DIN-style samples."""
    d = Path(input_dir)
    reviews_path = find_file(d, REVIEW_NAMES, "review dump")
    meta_path = find_file(d, META_NAMES, "metadata dump")
    check_container(reviews_path, "review dump")
    check_container(meta_path, "metadata dump")
    reviews, counts, notes = clean_reviews(read_reviews(reviews_path), reviews_path)
    meta = read_meta(meta_path)
    notes += check_meta_coverage(reviews, meta, meta_path, counts)
    frame, dropped = din_samples(reviews, meta, seed=seed, max_len=max_len)
    if frame.height == 0:
        raise DataFormatError("no user has two reviews: no DIN sample can be built", path=reviews_path,
                              expected="users with at least 2 reviews")
    notes.insert(0, f"DIN samples: history = earlier items (max {max_len}), most recent last; "
                    f"one negative per positive (seed {seed})")
    if dropped:
        notes.append(f"{dropped} positives got no negative (user reviewed every item)")
    counts["positives_without_negative"] = dropped
    for note in notes[1:]:
        logger.warning(note)
    return ReadResult(dataset=DATASET, source="raw", frame=frame, time_kind="unix_seconds",
                      labels=list(LABELS), features=feature_specs(max_len), min_categr_count=MIN_CATEGR_COUNT,
                      files={"reviews": str(reviews_path), "meta": str(meta_path)}, notes=notes, counts=counts)


def clean_reviews(reviews: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, dict[str, int], list[str]]:
    """The data policies on the reviews themselves, before they become samples or history:
    reviews outside the time window dropped (more than 1% refused), copied review lines dropped."""
    n = reviews.height
    lo, hi, text = amazon_window()
    kept, outside = drop_out_of_window(reviews.rename({"time": "unixReviewTime"}), "unixReviewTime", lo, hi, text,
                                       path=path, dataset=DATASET, what="reviews",
                                       label="a review time ('time' = unixReviewTime)")
    kept, copies = drop_exact_duplicates(kept.rename({"unixReviewTime": "time"}), REVIEW_KEY)
    notes = []
    if outside:
        notes.append(f"time window: dropped {outside} of {n} reviews dated outside {text} "
                     "(as targets and as history)")
    if copies:
        notes.append(f"duplicates: dropped {copies} review lines repeating an earlier review's reviewer, "
                     "item and time (a copied line)")
    return kept, {"reviews_read": n, "reviews_out_of_window": outside, "review_duplicates_dropped": copies}, notes


def check_meta_coverage(reviews: pl.DataFrame, meta: pl.DataFrame, meta_path: Path,
                        counts: dict[str, int]) -> list[str]:
    """Refuse a metadata dump that covers under ``MIN_META_COVERAGE`` of the reviewed items
    (another category's dump: every category would be missing); note a partial one."""
    items = reviews["item_id"].unique()
    covered = int(items.is_in(meta["item_id"].implode()).sum())
    n = items.len()
    counts.update(reviewed_items=n, reviewed_items_with_meta=covered)
    if covered < MIN_META_COVERAGE * n:
        raise DataFormatError(f"only {covered} of the {n} reviewed items ({covered / n:.1%}) have a line in the "
                              "metadata dump: wrong file?", path=meta_path, column="asin",
                              expected=f"metadata (asin, categories) for at least {MIN_META_COVERAGE:.0%} of the "
                                       "reviewed items: the meta dump of the reviews' category")
    if covered == n:
        return []
    return [f"metadata: {n - covered} of {n} reviewed items ({(n - covered) / n:.1%}) have no line in "
            f"{meta_path.name}: their category is missing (encoded as OOV)"]


# ---------------------------------------------------------------------------------- BARS
def scan_bars(tables: list[CsvTable]) -> pl.LazyFrame:
    """The BARS chain: train rows then test rows, ``time`` = row position (no timestamp)."""
    parts = [t.scan().with_columns(pl.lit(i, dtype=pl.Int8).alias("part")) for i, t in enumerate(tables)]
    return (pl.concat(parts, how="vertical").with_row_index("time")
            .with_columns(pl.col("time").cast(pl.Int64)).select(["part", *COLUMNS]))


def read_bars(input_dir: str | Path, *, max_len: int = MAX_LEN) -> ReadResult:
    """Read BARS ``AmazonElectronics_x1`` ``train.csv`` (+ ``test.csv``)."""
    d = Path(input_dir)
    train = find_file(d, ["train.csv"], "BARS AmazonElectronics_x1 train file")
    test = find_file(d, ["test.csv"], "BARS AmazonElectronics_x1 test file", required=False)
    tables = [CsvTable.open(require_file(p), BARS_COLS) for p in (train, test) if p is not None]
    frame = collect_checked(lambda: scan_bars(tables), tables, what="BARS AmazonElectronics_x1")
    check_not_empty(frame, train)
    files = {"train": str(train), **({"test": str(test)} if test else {})}
    return ReadResult(dataset=DATASET, source="bars", frame=frame, time_kind="file_order", labels=list(LABELS),
                      features=feature_specs(max_len), min_categr_count=MIN_CATEGR_COUNT, files=files,
                      notes=["BARS AmazonElectronics_x1 has no timestamp: days follow file order"])
