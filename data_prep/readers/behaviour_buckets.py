"""Behaviour sequences of TaobaoAd impressions in memory bounded by a bucket, not by the log.

The real ``behavior_log.csv`` has ~723M rows (23 GB): it cannot be loaded next to the
impressions on a 24 GB machine. So the log is used in three passes, each holding at most one
block or one bucket:

1. **partition**: the log is read block by block (:func:`~.common.iter_csv_blocks`, plain
   or ``.gz``), kept to the impressions' users, and appended to one of ``n`` bucket files
   on disk by a hash of the user. A user's behaviours all land in one bucket, in file order.
2. **as-of pass**: per bucket, the behaviours are indexed by (user, time) and the distinct
   (user, time) keys of that bucket's impressions get their last ``max_len`` behaviours
   strictly before the time (:class:`BehaviorIndex`), a few thousand keys at a time; the
   sequences are appended to the file of their **time slab** (a window of the impressions'
   time holding about ``slab_keys`` keys), and the bucket file is deleted.
3. **attach**: :class:`BucketedSequences` (the reader's ``add_sequences``) joins any slice of
   the impressions to the slabs its time range overlaps; keys absent from the store have
   no earlier behaviour and get empty lists.

The number of buckets is chosen from the log's estimated row count so a bucket holds about
``bucket_rows`` behaviours: the memory of passes 1-2 is set by ``block_bytes`` and
``bucket_rows``, that of pass 3 by the slice asked for; none grows with the log.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from exfm_plugin.fsutil import HOST_TAG, TEMP_SUFFIX, sweep_stale_temps

from .common import CsvTable, open_binary

logger = logging.getLogger(__name__)

SEQ_COLUMNS = {"cate_his": ("cate", pl.Int64), "brand_his": ("brand", pl.Int64), "btag_his": ("btag", pl.String)}
KEY = ["userid", "time"]
HASH_SEED = 0x5EED
BUCKET_ROWS = 2_000_000    # behaviours per bucket: ~0.2 GB to index one
BLOCK_BYTES = 8 << 20      # CSV bytes parsed at a time (~260K log rows)
MAX_BUCKETS = 512          # bucket (or slab) files open at once
STEP_KEYS = 16_384         # impression keys per as-of step
SLAB_KEYS = 65_536         # impression keys per time slab of the sequence store


class BehaviorIndex:
    """One set of behaviours ordered by (user, time), to cut each impression's history by search.

    For an impression (u, t) the history is the user's behaviours with time < t: one binary
    search on the combined key (user, time) gives its end, the user's first row its start, so
    attaching histories costs O(n log m) with no per-row Python. Only the keys are sorted
    (stably: rows with equal (user, time) keep their input order, so give them in file order);
    the value columns stay as given and are gathered through the sort order.
    """

    def __init__(self, behaviors: pl.DataFrame, max_len: int) -> None:
        self.max_len = max_len
        user, time = behaviors["user"], behaviors["time_stamp"]
        self.users = user.unique().sort().to_numpy()
        self.t0 = int(time.min()) if behaviors.height else 0
        codes = (user.rank("dense").cast(pl.Int64) - 1).to_numpy()  # index into self.users
        keys = self._key(codes, time.to_numpy())
        self.order = pl.DataFrame({"k": keys}).select(pl.arg_sort_by("k", maintain_order=True)).to_series().to_numpy()
        self.keys = keys[self.order]
        # first row (in key order) of each user
        self.user_start = np.zeros(len(self.users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(codes, minlength=len(self.users)), out=self.user_start[1:])
        self.columns = {name: behaviors[src] for name, (src, _) in SEQ_COLUMNS.items()}

    def _key(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        # times before the log starts clip to 0: they have no earlier behaviour anyway
        return (codes << 33) + np.clip(times.astype(np.int64) - self.t0, 0, (1 << 33) - 1)

    def attach(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` (with ``userid``, ``time``) plus ``cate_his``, ``brand_his``, ``btag_his``."""
        n = df.height
        users = df["userid"].fill_null(-1).to_numpy()
        times = df["time"].fill_null(0).to_numpy()
        end = np.zeros(n, dtype=np.int64)
        start = np.zeros(n, dtype=np.int64)
        if len(self.users):
            codes = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
            known = (self.users[codes] == users) & df["userid"].is_not_null().to_numpy() \
                & df["time"].is_not_null().to_numpy()
            codes = codes[known].astype(np.int64)
            end[known] = np.searchsorted(self.keys, self._key(codes, times[known]), side="left")  # strictly before t
            start[known] = np.maximum(self.user_start[codes], end[known] - self.max_len)
        lens = end - start
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        pos = np.repeat(start - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        rows = pl.Series(self.order[pos])
        cols = {}
        for name, src in self.columns.items():
            # polars has no list-from-offsets constructor; arrow does (zero copy)
            values = src.gather(rows).to_arrow()
            cols[name] = pl.Series(name, pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))
        return df.with_columns(**cols)


def empty_sequences(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with the three sequence columns empty (no behaviour log)."""
    return df.with_columns([pl.lit([], dtype=pl.List(dt)).alias(name) for name, (_, dt) in SEQ_COLUMNS.items()])


def bucket_of(users: pl.Expr, n_buckets: int) -> pl.Expr:
    """The bucket of each user (same in every pass of one process: polars' seeded hash)."""
    return (users.hash(HASH_SEED) % n_buckets).cast(pl.UInt32)


def estimate_rows(path: Path, block_bytes: int = 4 << 20) -> int:
    """Rows of a CSV (plain or gz) estimated from its first ``block_bytes`` of text."""
    size = path.stat().st_size
    with open_binary(path) as f:
        sample = f.read(block_bytes)
        raw_read = f.fileobj.tell() if hasattr(f, "fileobj") else len(sample)  # compressed bytes consumed
    lines = max(sample.count(b"\n") - 1, 1)
    if len(sample) < block_bytes:  # the whole file was read
        return lines
    return int(math.ceil(lines * size / max(raw_read, 1)))


def make_work_dir(parent: str | Path | None = None) -> Path:
    """A fresh work directory under ``parent`` (default: the system temp directory), named
    after this process like :mod:`exfm_plugin.fsutil`'s temporaries, so that those left by a
    killed reader (no finalizer runs on SIGKILL) are swept by the next one."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(parent)
    while True:
        path = parent / f".exfm_behaviour.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


class _AppendFiles:
    """One Arrow IPC file (lz4) per key, appended to batch by batch; the first batch sets the schema."""

    def __init__(self, path_of) -> None:
        self.path_of = path_of
        self.writers: dict[int, ipc.RecordBatchFileWriter] = {}
        self.schema: pa.Schema | None = None

    def write(self, frame: pl.DataFrame, by: str) -> None:
        for (k,), rows in frame.partition_by(by, as_dict=True, include_key=False).items():
            table = rows.to_arrow()
            if self.schema is None:
                self.schema = table.schema
            if k not in self.writers:
                self.writers[k] = ipc.new_file(self.path_of(k), self.schema,
                                               options=ipc.IpcWriteOptions(compression="lz4"))
            self.writers[k].write_table(table.cast(self.schema))

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class BucketedSequences:
    """The behaviour log split by user into bucket files, and the sequences of every
    impression key computed bucket by bucket; called on a slice of the impressions, returns it
    with ``cate_his``, ``brand_his``, ``btag_his`` (the reader's ``add_sequences``).

    The sequences are stored by time slab (a window of about ``slab_keys`` impression keys),
    so a call reads only the slabs its time range overlaps: memory follows the slice, not the
    dataset. The work files live in ``work_dir`` (a fresh temporary directory by default) and
    are deleted when this object is garbage collected.
    """

    def __init__(self, log: CsvTable, impressions: pl.DataFrame, *, max_len: int,
                 work_dir: str | Path | None = None, bucket_rows: int = BUCKET_ROWS,
                 block_bytes: int = BLOCK_BYTES, slab_keys: int = SLAB_KEYS) -> None:
        if bucket_rows < 1 or slab_keys < 1:
            raise ValueError(f"bucket_rows and slab_keys must be positive, got {bucket_rows}, {slab_keys}")
        self.max_len = max_len
        self.dir = make_work_dir(work_dir)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        est = estimate_rows(log.path)
        self.n_buckets = int(min(MAX_BUCKETS, max(1, math.ceil(est / bucket_rows))))
        keys = (impressions.select(KEY).drop_nulls().unique()
                .with_columns(bucket_of(pl.col("userid"), self.n_buckets).alias("__bucket")))
        # slab edges: the time of every slab_keys-th key (a time never straddles two slabs)
        times = np.sort(keys["time"].to_numpy())
        n_slabs = min(MAX_BUCKETS, max(1, math.ceil(len(times) / slab_keys)))
        self.edges = np.unique(times[np.linspace(0, len(times), n_slabs, endpoint=False).astype(np.int64)[1:]])
        self.log_rows, self.kept_rows = self._partition(log, keys["userid"].unique(), block_bytes)
        #: disk used by the work files: the bucketed log (deleted bucket by bucket), the sequences
        self.disk_bytes = {"buckets": sum(f.stat().st_size for f in self.dir.glob("log_*.arrow"))}
        self.slabs = self._as_of(keys)
        self.disk_bytes["slabs"] = sum(f.stat().st_size for f in self.dir.glob("seq_*.arrow"))
        logger.info("behaviour log: %d rows (%d of impression users) in %d buckets; %d impression keys "
                    "in %d time slabs", self.log_rows, self.kept_rows, self.n_buckets, keys.height, len(self.slabs))

    def _bucket_path(self, b: int) -> Path:
        return self.dir / f"log_{b:04d}.arrow"

    def _slab_path(self, s: int) -> Path:
        return self.dir / f"seq_{s:04d}.arrow"

    def _slab_of(self, times: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, times, side="right").astype(np.int32)

    def _partition(self, log: CsvTable, users: pl.Series, block_bytes: int) -> tuple[int, int]:
        """Pass 1: the log's rows of ``users``, appended to their bucket file in file order."""
        files = _AppendFiles(self._bucket_path)
        seen = kept = 0
        try:
            for frame in log.iter_frames(block_bytes):
                seen += frame.height
                part = (frame.drop_nulls(["user", "time_stamp"]).filter(pl.col("user").is_in(users.implode()))
                        .select(["user", "time_stamp", "btag", "cate", "brand"])
                        .with_columns(bucket_of(pl.col("user"), self.n_buckets).alias("__bucket")))
                kept += part.height
                files.write(part, "__bucket")
        finally:
            files.close()
        return seen, kept

    def _as_of(self, keys: pl.DataFrame) -> set[int]:
        """Pass 2: per bucket, the sequences of its impression keys, appended to their time slab."""
        files = _AppendFiles(self._slab_path)
        try:
            for (b,), bucket_keys in keys.partition_by("__bucket", as_dict=True, include_key=False).items():
                path = self._bucket_path(b)
                if not path.exists():
                    continue  # no behaviour of these users: empty sequences
                index = BehaviorIndex(pl.read_ipc(path), self.max_len)
                path.unlink()
                for start in range(0, bucket_keys.height, STEP_KEYS):
                    seqs = index.attach(bucket_keys.slice(start, STEP_KEYS)).filter(pl.col("cate_his").list.len() > 0)
                    slab = pl.Series("__slab", self._slab_of(seqs["time"].to_numpy()))
                    files.write(seqs.with_columns(slab), "__slab")
        finally:
            files.close()
        return set(files.writers)

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` (``userid``, ``time`` and any columns) plus its three behaviour sequences."""
        times = df["time"].drop_nulls()
        if times.len() == 0:
            return empty_sequences(df)
        lo, hi = int(times.min()), int(times.max())
        first, last = self._slab_of(np.array([lo, hi]))
        paths = [self._slab_path(s) for s in range(first, last + 1) if s in self.slabs]
        if not paths:
            return empty_sequences(df)
        wanted = df.select(KEY).drop_nulls().unique().lazy()
        seqs = pl.scan_ipc(paths).join(wanted, on=KEY, how="semi").collect()
        out = df.join(seqs, on=KEY, how="left", maintain_order="left")
        if not out["cate_his"].null_count():
            return out
        return out.with_columns([pl.coalesce(pl.col(name), pl.lit([], dtype=pl.List(dt))).alias(name)
                                 for name, (_, dt) in SEQ_COLUMNS.items()])

    def close(self) -> None:
        """Delete the work files now (they are also deleted when this object is collected)."""
        self._cleanup()
