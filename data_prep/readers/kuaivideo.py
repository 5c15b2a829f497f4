"""KuaiVideo (Kuaishou micro-video, BARS ``KuaiVideo_x1``) into one canonical frame.

Files: ``train.csv`` / ``test.csv`` (``timestamp, user_id, item_id, is_click, is_like,
is_follow, pos_items, neg_items``; sequences ``^``-joined) and ``item_visual_emb_dim64.h5``
(datasets ``key``: item ids, ``value``: N x 64 frozen visual embeddings). The timestamp is
relative (order is known, calendar days are not), so ``time_kind`` is ``"relative"``.
Rows are put in timestamp order (ties keep file order, train before test). The CSV files may
be gzipped (``train.csv.gz``, ``test.csv.gz``).

A relative clock starts at 0: rows with a negative timestamp are dropped and counted, and more
than 1% of them refuses the input (the time policy of :mod:`data_prep.policies`). Exact
duplicate rows are counted by the duplicate policy (kept, or dropped with ``--drop-duplicates``),
as for TaobaoAd's impressions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import polars as pl

from ..errors import DataFormatError
from ..policies import drop_out_of_window
from .common import CsvTable, ReadResult, check_not_empty, collect_checked, find_file

logger = logging.getLogger(__name__)

DATASET = "kuaivideo"
MAX_LEN = 100
MIN_CATEGR_COUNT = 10  # BARS KuaiVideo_x1 setting
LABELS = ["is_click", "is_like", "is_follow"]
EMB_FILE = "item_visual_emb_dim64.h5"
CSV_COLS = {"timestamp": "int", "user_id": "int", "item_id": "int", "is_click": "label", "is_like": "label",
            "is_follow": "label", "pos_items": "seq_int", "neg_items": "seq_int"}
#: the only documented range of the relative timestamps
TIME_RANGE = "0 .. (no end): a relative timestamp is never negative"
ALIASES = {"timestamp": ["time_stamp", "time"]}


def feature_specs(pretrained_emb: str, pretrain_dim: int = 64, max_len: int = MAX_LEN) -> list[dict[str, Any]]:
    """FuxiCTR-style feature columns of BARS KuaiVideo_x1 (``item_emb`` frozen, pretrained)."""
    emb = {"pretrained_emb": pretrained_emb, "freeze_emb": True, "pretrain_dim": pretrain_dim,
           "embedding_dim": pretrain_dim}
    return [{"name": "group_id", "type": "meta", "copy_from": "user_id"},
            {"name": "user_id", "type": "categorical", "source": "user"},
            {"name": "item_id", "type": "categorical", "source": "item"},
            {"name": "item_emb", "type": "categorical", "source": "item", "copy_from": "item_id",
             "min_categr_count": 1, **emb},
            {"name": "pos_items", "type": "sequence", "source": "user", "share_embedding": "item_id",
             "max_len": max_len},
            {"name": "neg_items", "type": "sequence", "source": "user", "share_embedding": "item_id",
             "max_len": max_len},
            {"name": "pos_items_emb", "type": "sequence", "source": "user", "copy_from": "pos_items",
             "share_embedding": "item_emb", "max_len": max_len, "min_categr_count": 1,
             "embedding_dim": pretrain_dim},
            {"name": "neg_items_emb", "type": "sequence", "source": "user", "copy_from": "neg_items",
             "share_embedding": "item_emb", "max_len": max_len, "min_categr_count": 1,
             "embedding_dim": pretrain_dim}]


def check_embedding_file(path: Path) -> tuple[int, int]:
    """(rows, dim) of the visual embedding file; DataFormatError unless it has key and N x d value."""
    try:
        with h5py.File(path, "r") as f:
            for name in ("key", "value"):
                if name not in f:
                    raise DataFormatError("missing HDF5 dataset", path=path, column=name,
                                          expected="datasets 'key' (item ids) and 'value' (N x 64 floats)")
            key, value = f["key"], f["value"]
            if value.ndim != 2 or key.ndim != 1 or key.shape[0] != value.shape[0]:
                raise DataFormatError("shape mismatch", path=path, column="value",
                                      value=f"key {key.shape}, value {value.shape}",
                                      expected="key of shape (N,) and value of shape (N, 64)")
            if not np.issubdtype(value.dtype, np.floating):
                raise DataFormatError("wrong type", path=path, column="value", value=str(value.dtype),
                                      expected="floating point embeddings")
            return int(value.shape[0]), int(value.shape[1])
    except DataFormatError:
        raise
    except OSError as e:
        raise DataFormatError(f"cannot open as HDF5 ({e})", path=path, expected="an HDF5 file") from e


def scan_bars(tables: list[CsvTable]) -> pl.LazyFrame:
    """The one chain: train then test, in timestamp order, with ``time`` = timestamp."""
    parts = [t.scan().with_columns(pl.lit(i, dtype=pl.Int8).alias("part")) for i, t in enumerate(tables)]
    return (pl.concat(parts, how="vertical")
            .rename({"timestamp": "time"})
            .sort("time", maintain_order=True)
            .select(["time", "part", "user_id", "item_id", "pos_items", "neg_items", *LABELS]))


def read_bars(input_dir: str | Path, *, max_len: int = MAX_LEN) -> ReadResult:
    """Read BARS ``KuaiVideo_x1`` and check its visual embedding file."""
    d = Path(input_dir)
    train = find_file(d, ["train.csv"], "BARS KuaiVideo_x1 train file")
    test = find_file(d, ["test.csv"], "BARS KuaiVideo_x1 test file", required=False)
    emb = find_file(d, [EMB_FILE], "visual embedding file")
    n_emb, dim = check_embedding_file(emb)
    tables = [CsvTable.open(p, CSV_COLS, aliases=ALIASES) for p in (train, test) if p is not None]
    frame = collect_checked(lambda: scan_bars(tables), tables, what="BARS KuaiVideo_x1")
    check_not_empty(frame, train)
    if frame["time"].null_count():
        raise DataFormatError("missing timestamp", path=train, column="timestamp", expected="an integer on every row")
    n = frame.height
    negative = frame.filter(pl.col("time") < 0)
    where = tables[int(negative["part"][0])].path if negative.height else train
    frame, dropped = drop_out_of_window(frame.rename({"time": "timestamp"}), "timestamp", 0, None, TIME_RANGE,
                                        path=where, dataset=DATASET, unit="relative timestamps")
    frame = frame.rename({"timestamp": "time"})
    notes = []
    if dropped:
        notes.append(f"time window: dropped {dropped} of {n} rows with a negative timestamp (relative clock)")
        logger.warning(notes[-1])
    logger.info("KuaiVideo: %d rows, %d item embeddings of dim %d", frame.height, n_emb, dim)
    files = {"train": str(train), "item_emb": str(emb), **({"test": str(test)} if test else {})}
    return ReadResult(dataset=DATASET, source="bars", frame=frame, time_kind="relative", labels=list(LABELS),
                      features=feature_specs(str(emb), dim, max_len), min_categr_count=MIN_CATEGR_COUNT,
                      files=files, extra={"pretrained_emb": {"item_emb": str(emb)}}, notes=notes,
                      counts={"rows_out_of_window": dropped})
