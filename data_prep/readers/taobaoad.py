"""TaobaoAd (Alibaba display ads, 2017-05-06 .. 2017-05-13) into one canonical frame.

Two sources:

- ``raw``: the upstream files ``raw_sample.csv`` (impressions), ``ad_feature.csv``,
  ``user_profile.csv`` and, optionally, ``behavior_log.csv``. Impressions are joined to the
  ad on ``adgroup_id`` and to the user on ``user`` = ``userid``. The behaviour sequences
  ``cate_his``, ``brand_his``, ``btag_his`` of an impression are the user's last 50
  behaviours **strictly before** the impression's second, **most recent last**; they are
  aligned (position i of the three lists is one behaviour; a missing brand stays a null
  there so the lists keep their alignment). The log is never held in memory: it is split by
  user into bucket files on disk and the sequences are computed bucket by bucket
  (:mod:`.behaviour_buckets`).
- ``bars``: BARS ``TaobaoAd_x1`` ``train.csv`` / ``test.csv`` (sequences ``^``-joined, no
  timestamp: ``time`` is the row's position, train rows first).

Every file may be gzipped (``raw_sample.csv.gz``, ``train.csv.gz``, ...), and the raw files
may be Tianchi's archives as shipped (``raw_sample.csv.tar.gz``: a tar archive holding the csv),
streamed without extracting them (:mod:`.archives`).

The raw impression has no behaviour type of its own, while BARS carries a ``btag`` column
that shares its embedding with ``btag_his``; the raw reader sets it to the constant token
``"imp"`` so both sources have the same schema.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import DataFormatError
from .behaviour_buckets import BehaviorIndex  # noqa: F401  (re-exported: the one in-memory as-of index)
from .behaviour_buckets import BLOCK_BYTES, BUCKET_ROWS, SLAB_KEYS, BucketedSequences, empty_sequences
from .common import CsvTable, ReadResult, check_not_empty, collect_checked, find_file

logger = logging.getLogger(__name__)

DATASET = "taobaoad"
MAX_LEN = 50
MIN_CATEGR_COUNT = 10  # BARS TaobaoAd_x1 setting
LABELS = ["clk"]
TARGET_BTAG = "imp"

USER_COLS = ["userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level",
             "pvalue_level", "shopping_level", "occupation", "new_user_class_level"]
ITEM_COLS = ["adgroup_id", "cate_id", "campaign_id", "customer", "brand"]
SEQUENCES = {"cate_his": "cate_id", "brand_his": "brand", "btag_his": "btag"}
ALIASES = {"nonclk": ["noclk", "no_clk", "non_clk"], "customer": ["customer_id"],
           "userid": ["user_id"], "time_stamp": ["timestamp"]}

#: the names each raw file is found under (each also gzipped: ``find_file``); Tianchi ships the
#: ``.csv.tar.gz`` spelling
RAW_NAMES = {"raw_sample": ("raw_sample.csv", "raw_sample.csv.tar"),
             "ad_feature": ("ad_feature.csv", "ad_feature.csv.tar"),
             "user_profile": ("user_profile.csv", "user_profile.csv.tar"),
             "behavior_log": ("behavior_log.csv", "behavior_log.csv.tar")}

RAW_SAMPLE = {"user": "int", "time_stamp": "int", "adgroup_id": "int", "pid": "str",
              "nonclk": "label", "clk": "label"}
AD_FEATURE = {"adgroup_id": "int", "cate_id": "int", "campaign_id": "int", "customer": "int",
              "brand": "int", "price": "float"}
USER_PROFILE = {c: "int" for c in USER_COLS}
BEHAVIOR_LOG = {"user": "int", "time_stamp": "int", "btag": "str", "cate": "int", "brand": "int"}
BARS_COLS = {"clk": "label", "btag_his": "seq_str", "cate_his": "seq_int", "brand_his": "seq_int",
             **USER_PROFILE, **{c: "int" for c in ITEM_COLS}, "price": "float", "pid": "str",
             "btag": "str"}


def feature_specs(max_len: int = MAX_LEN) -> list[dict[str, Any]]:
    """FuxiCTR-style feature columns of TaobaoAd (the BARS TaobaoAd_x1 feature set)."""
    specs: list[dict[str, Any]] = [{"name": "group_id", "type": "meta", "copy_from": "userid"}]
    specs += [{"name": c, "type": "categorical", "source": "user"} for c in USER_COLS]
    specs += [{"name": c, "type": "categorical", "source": "item"} for c in ITEM_COLS]
    specs += [{"name": "price", "type": "numeric", "source": "item", "normalizer": "log1p_standard"},
              {"name": "pid", "type": "categorical", "source": "context"},
              {"name": "btag", "type": "categorical", "source": "item"}]
    specs += [{"name": s, "type": "sequence", "source": "user", "share_embedding": t, "max_len": max_len}
              for s, t in SEQUENCES.items()]
    return specs


# ----------------------------------------------------------------------------------- raw
def _raw_tables(input_dir: str | Path) -> dict[str, CsvTable | None]:
    d = Path(input_dir)
    behavior = find_file(d, RAW_NAMES["behavior_log"], "behaviour log", required=False)
    return {
        "raw_sample": CsvTable.open(find_file(d, RAW_NAMES["raw_sample"], "impression file"), RAW_SAMPLE,
                                    aliases=ALIASES, optional=["nonclk"]),
        "ad_feature": CsvTable.open(find_file(d, RAW_NAMES["ad_feature"], "ad feature file"), AD_FEATURE,
                                    aliases=ALIASES),
        "user_profile": CsvTable.open(find_file(d, RAW_NAMES["user_profile"], "user profile file"),
                                      USER_PROFILE, aliases=ALIASES),
        "behavior_log": CsvTable.open(behavior, BEHAVIOR_LOG, aliases=ALIASES) if behavior else None,
    }


def scan_raw_impressions(tables: dict[str, CsvTable | None]) -> pl.LazyFrame:
    """The one chain: impressions joined to their ad and user, in time order."""
    ads = tables["ad_feature"].scan().unique("adgroup_id", keep="first", maintain_order=True)
    users = tables["user_profile"].scan().unique("userid", keep="first", maintain_order=True)
    return (
        tables["raw_sample"].scan()
        .rename({"user": "userid", "time_stamp": "time"})
        .join(ads, on="adgroup_id", how="left", maintain_order="left")
        .join(users, on="userid", how="left", maintain_order="left")
        .with_columns(pl.lit(TARGET_BTAG).alias("btag"))
        .sort("time", maintain_order=True)
        .select(["time", *USER_COLS, *ITEM_COLS, "price", "pid", "btag", "clk"])
    )


def read_raw(input_dir: str | Path, *, max_len: int = MAX_LEN, work_dir: str | Path | None = None,
             bucket_rows: int = BUCKET_ROWS, block_bytes: int = BLOCK_BYTES,
             slab_keys: int = SLAB_KEYS) -> ReadResult:
    """Read the raw Alibaba files of ``input_dir`` (``.csv`` or ``.csv.gz``) into the canonical frame.

    The behaviour log is never loaded whole: it is split by user into bucket files under
    ``work_dir`` (default: a temporary directory) and the sequences are computed bucket by
    bucket (:mod:`.behaviour_buckets`); ``bucket_rows``, ``block_bytes`` and ``slab_keys``
    bound the memory.
    """
    tables = _raw_tables(input_dir)
    used = [t for t in tables.values() if t is not None]
    frame = collect_checked(lambda: scan_raw_impressions(tables), used[:3], what="TaobaoAd raw impressions")
    check_not_empty(frame, tables["raw_sample"].path)
    joined = _check_joined(frame, tables)
    result = ReadResult(dataset=DATASET, source="raw", frame=frame, time_kind="unix_seconds",
                        labels=list(LABELS), features=feature_specs(max_len),
                        min_categr_count=MIN_CATEGR_COUNT,
                        files={k: str(t.path) for k, t in tables.items() if t is not None}, notes=joined)
    behavior = tables["behavior_log"]
    if behavior is None:
        result.notes.append("no behavior_log.csv: cate_his, brand_his, btag_his are empty")
        result.add_sequences = empty_sequences
        return result
    sequences = BucketedSequences(behavior, frame, max_len=max_len, work_dir=work_dir,
                                  bucket_rows=bucket_rows, block_bytes=block_bytes, slab_keys=slab_keys)
    result.add_sequences = sequences
    result.extra["behaviour_buckets"] = sequences.n_buckets
    result.notes.append(f"sequences: last {max_len} behaviours strictly before the impression, most recent last")
    return result


def _check_joined(frame: pl.DataFrame, tables: dict[str, CsvTable | None]) -> list[str]:
    """Impressions whose ad or user is unknown keep nulls (encoded as OOV); the notes say how many.
    None matched at all: a wrong file, refused."""
    notes = []
    for col, table in (("cate_id", "ad_feature"), ("cms_segid", "user_profile")):
        missing = frame[col].null_count()
        if missing == frame.height:
            raise DataFormatError(f"no impression matched a row of {table}: wrong file or key column?",
                                  path=tables[table].path, column="adgroup_id" if table == "ad_feature" else "userid",
                                  expected="ids shared with raw_sample.csv")
        if missing:
            notes.append(f"{table}: {missing} of {frame.height} impressions have no {table} row "
                         "(its features left missing, encoded as OOV)")
            logger.warning(notes[-1])
    return notes


# ---------------------------------------------------------------------------------- BARS
def scan_bars(tables: list[CsvTable]) -> pl.LazyFrame:
    """The BARS chain: train rows then test rows, ``time`` = row position (no timestamp)."""
    parts = [t.scan().with_columns(pl.lit(i, dtype=pl.Int8).alias("part")) for i, t in enumerate(tables)]
    return (pl.concat(parts, how="vertical")
            .with_row_index("time").with_columns(pl.col("time").cast(pl.Int64))
            .select(["time", "part", *USER_COLS, *ITEM_COLS, "price", "pid", "btag", *SEQUENCES, "clk"]))


def read_bars(input_dir: str | Path, *, max_len: int = MAX_LEN) -> ReadResult:
    """Read BARS ``TaobaoAd_x1`` (``train.csv`` = days 05-06..05-12, ``test.csv`` = 05-13)."""
    d = Path(input_dir)
    train = find_file(d, ["train.csv"], "BARS TaobaoAd_x1 train file")
    test = find_file(d, ["test.csv"], "BARS TaobaoAd_x1 test file", required=False)
    tables = [CsvTable.open(p, BARS_COLS, aliases=ALIASES) for p in (train, test) if p is not None]
    frame = collect_checked(lambda: scan_bars(tables), tables, what="BARS TaobaoAd_x1")
    check_not_empty(frame, train)
    files = {"train": str(train)}
    if test is not None:
        files["test"] = str(test)
    return ReadResult(dataset=DATASET, source="bars", frame=frame, time_kind="file_order",
                      labels=list(LABELS), features=feature_specs(max_len),
                      min_categr_count=MIN_CATEGR_COUNT, files=files,
                      notes=["BARS TaobaoAd_x1 has no timestamp: days follow file order"],
                      extra={"test_part": 1 if test is not None else None})
