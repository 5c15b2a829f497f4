"""A FuxiCTR data loader over HDF5 day files.

Use it wherever fuxictr takes a data loader::

    train_gen, valid_gen, test_gen = RankDataLoader(
        feature_map, train_data=["day1.h5", "day2.h5"], valid_data="day3.h5",
        test_data="day4.h5", data_loader=H5DataLoader, batch_size=8192, shuffle=True, seed=2019)

Why not fuxictr's own loaders: the npz loaders collate row by row and the parquet loader
goes through Ray; a day file's columns are fixed-width arrays, so a chunk of rows is a few
``memcpy``s and a batch is one gather per column. Host mode streams ``chunk_rows`` rows at a
time (memory bounded by ``chunk_rows + batch_size`` rows); device mode (``device=...``)
uploads the days once and builds every batch on the device.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np
import torch

from .dayfile import DayFileError, get_column, open_day_file

logger = logging.getLogger(__name__)

_INT_TYPES = ("categorical", "sequence", "meta")
_FLOAT_TYPES = ("numeric", "embedding")


def _resolve_paths(data_path: Any) -> list[str]:
    """A file, a directory (its ``*.h5`` files, by day then name), a glob, or a list."""
    if isinstance(data_path, (str, os.PathLike)):
        p = os.fspath(data_path)
        if os.path.isdir(p):
            files = sorted(glob.glob(os.path.join(p, "*.h5")))
            if not files:
                raise FileNotFoundError(f"data_path={p} is a directory without *.h5 day files")
            return files
        if any(c in p for c in "*?["):
            files = sorted(glob.glob(p))
            if not files:
                raise FileNotFoundError(f"data_path={p} matches no day file")
            return files
        return [p]
    files = [os.fspath(x) for x in data_path]
    if not files:
        raise ValueError("data_path is an empty list; expected one or more HDF5 day files")
    return files


def _derive_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch), for torch generators."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class H5DataLoader:
    """Batches of fuxictr feature dicts from one or more HDF5 day files (read in order).

    Args:
        feature_map: fuxictr ``FeatureMap``; every feature and label must be a column.
        data_path: a day file, a list of day files, a directory of ``*.h5`` or a glob.
        split: ``"train"`` shuffles when asked; any other split never shuffles.
        batch_size: rows per batch; batches span chunk and file boundaries, so only the
            last batch of an epoch is short (dropped with ``drop_last``).
        shuffle: shuffle the order of chunks (across all files) and the rows within each
            chunk; a new permutation each epoch, fixed by ``(seed, epoch)``.
        seed: shuffling seed; ``None`` draws one from numpy's global generator at
            construction, so fuxictr's ``seed_everything`` makes runs reproducible.
        chunk_rows: rows read per chunk in host mode (the memory bound and the shuffling
            window); keep it a power of two to match the file's HDF5 chunks.
        extra_columns: further columns to put in each batch (``"fm_pred"``,
            ``"fm_pred/click"``, ``"example_id"``); floats come as float32, ints as int64.
        train_extra_columns: further columns for the ``train`` split only (the FM supervision:
            a config's loader params reach every split through fuxictr's ``RankDataLoader``,
            and the validation/test days carry no ``fm_pred``).
        device: ``None`` streams from disk on the host. A torch device (``"cuda:0"``,
            ``"cpu"``) loads every file's columns onto it once, then shuffles with
            ``torch.randperm`` on that device and slices batches there. ``meta`` features
            (fuxictr's ``group_id``) stay on the host, as fuxictr's ``evaluate`` expects.
        drop_last: drop the last short batch.
        allow_missing_labels: accept files without the label columns (inference on a day
            whose labels have not arrived); batches then hold no labels.
        **kwargs: fuxictr's loader arguments (``num_workers``, ``data_loader``, ...), ignored.
    """

    def __init__(self, feature_map, data_path, split: str = "train", batch_size: int = 32,
                 shuffle: bool = False, seed: int | None = None, chunk_rows: int = 262144,
                 extra_columns: Sequence[str] = (), device: str | torch.device | None = None,
                 drop_last: bool = False, allow_missing_labels: bool = False,
                 train_extra_columns: Sequence[str] = (), **kwargs: Any) -> None:
        if batch_size < 1 or chunk_rows < 1:
            raise ValueError(f"batch_size={batch_size} and chunk_rows={chunk_rows} must be >= 1")
        if isinstance(extra_columns, str):
            extra_columns = (extra_columns,)
        if split == "train":
            extra_columns = tuple(extra_columns) + tuple(
                [train_extra_columns] if isinstance(train_extra_columns, str) else train_extra_columns or ())
        self.feature_map = feature_map
        self.files = _resolve_paths(data_path)
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle) and split == "train"
        self.seed = int(np.random.randint(0, 2 ** 31 - 1)) if seed is None else int(seed)
        self.chunk_rows = int(chunk_rows)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self._device_data: dict[str, Any] | None = None
        #: largest number of rows held at once by the last host-mode epoch (chunk + partial batch)
        self.peak_rows_in_memory = 0

        # column -> (target dtype, kind)
        self._columns: dict[str, tuple[np.dtype, str]] = {}
        for name, spec in feature_map.features.items():
            ftype = spec.get("type")
            if ftype in _INT_TYPES:
                self._columns[name] = (np.dtype(np.int64), "meta" if ftype == "meta" else "feature")
            elif ftype in _FLOAT_TYPES:
                self._columns[name] = (np.dtype(np.float32), "feature")
            else:
                raise ValueError(f"feature {name!r} has type {ftype!r}; H5DataLoader supports "
                                 f"{_INT_TYPES + _FLOAT_TYPES}")
        self._labels = list(feature_map.labels)
        for name in self._labels:
            self._columns[name] = (np.dtype(np.float32), "label")
        self._extra = [c for c in extra_columns if c not in self._columns]
        self._file_rows, self._file_dtypes, self._row_shapes = self._inspect_files(allow_missing_labels)
        self.num_samples = int(sum(self._file_rows))
        self._blocks = [(fi, start, min(start + self.chunk_rows, n))
                        for fi, n in enumerate(self._file_rows) for start in range(0, n, self.chunk_rows)]
        self.num_blocks = len(self._blocks)
        self.num_batches = (self.num_samples // self.batch_size if self.drop_last
                            else -(-self.num_samples // self.batch_size))
        logger.info("H5DataLoader(%s): %d files, %d rows, %d blocks, %d batches, shuffle=%s, device=%s",
                    split, len(self.files), self.num_samples, self.num_blocks, self.num_batches,
                    self.shuffle, self.device)

    # ------------------------------------------------------------------ schema
    def _inspect_files(self, allow_missing_labels: bool
                       ) -> tuple[list[int], dict[str, np.dtype], dict[str, tuple[int, ...]]]:
        """Check every file holds every column with a consistent row shape."""
        rows, stored, row_shape, shape_src = [], {}, {}, {}
        for path in self.files:
            with open_day_file(path) as (f, attrs):
                available = {c["name"] for c in attrs["columns"]}
                missing_labels = [c for c in self._labels if c not in available]
                if missing_labels and not allow_missing_labels:
                    raise DayFileError(f"{path}: missing label column(s) {missing_labels}; expected "
                                       f"every label of the feature map (allow_missing_labels=True "
                                       f"for unlabelled inference)")
                if missing_labels:
                    for c in missing_labels:
                        self._columns.pop(c, None)
                    self._labels = [c for c in self._labels if c not in missing_labels]
                for name, (_, kind) in self._columns.items():
                    if kind != "label" and name not in available:
                        raise DayFileError(f"{path}: missing column for feature {name!r} "
                                           f"(type {self.feature_map.features[name]['type']}); "
                                           f"the file holds {sorted(available)}")
                for name in self._extra:
                    if name not in available:
                        raise DayFileError(f"{path}: requested extra column {name!r} is missing; "
                                           f"the file holds {sorted(available)}")
                for name in list(self._columns) + self._extra:
                    ds = get_column(f, attrs, name, path)
                    stored[name] = np.result_type(stored.get(name, ds.dtype), ds.dtype)
                    shape = tuple(ds.shape[1:])
                    if name in row_shape and row_shape[name] != shape:
                        raise DayFileError(f"{path}: column {name!r} has row shape {shape}, but "
                                           f"{shape_src[name]} has {row_shape[name]}")
                    row_shape[name], shape_src[name] = shape, path
                    spec = self.feature_map.features.get(name, {})
                    if spec.get("type") == "sequence" and spec.get("max_len") not in (None, *shape[:1]):
                        raise DayFileError(f"{path}: sequence column {name!r} has length {shape}, "
                                           f"expected max_len={spec['max_len']} from the feature map")
                rows.append(int(attrs["num_rows"]))
        for name in self._extra:
            dt = np.dtype(np.float32) if np.issubdtype(stored[name], np.floating) else np.dtype(np.int64)
            self._columns[name] = (dt, "extra")
        return rows, stored, row_shape

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        """Number of batches per epoch (fuxictr's ``fit`` reads it)."""
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` use ``epoch``'s permutation (epochs count from 0)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        if self.device is not None:
            return self._iter_device(epoch)
        return self._iter_host(epoch)

    # ------------------------------------------------------------------ host mode
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def _take(self, chunk: dict[str, np.ndarray], order: np.ndarray | None, a: int, b: int) -> dict[str, np.ndarray]:
        out = {}
        for name, arr in chunk.items():
            # np.take beats fancy indexing ~2x and torch's CPU index_select ~10x on narrow 2-D ints
            part = arr[a:b] if order is None else np.take(arr, order[a:b], axis=0)
            out[name] = part.astype(self._columns[name][0], copy=False)
        return out

    def _to_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(arr) for name, arr in arrays.items()}

    def _iter_host(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = self._rng(epoch) if self.shuffle else None
        block_order = rng.permutation(self.num_blocks) if rng is not None else range(self.num_blocks)
        bs = self.batch_size
        pending: dict[str, np.ndarray] | None = None
        pending_rows = 0
        self.peak_rows_in_memory = 0
        with contextlib.ExitStack() as stack:
            opened: dict[int, tuple[h5py.File, dict[str, Any]]] = {}
            for bi in block_order:
                fi, start, stop = self._blocks[bi]
                if fi not in opened:
                    opened[fi] = stack.enter_context(open_day_file(self.files[fi]))
                f, attrs = opened[fi]
                chunk = {name: get_column(f, attrs, name, self.files[fi])[start:stop]
                         for name in self._columns}
                n = stop - start
                self.peak_rows_in_memory = max(self.peak_rows_in_memory, n + pending_rows)
                order = rng.permutation(n) if rng is not None else None
                pos = 0
                if pending is not None:
                    take = min(bs - pending_rows, n)
                    part = self._take(chunk, order, 0, take)
                    pending = {k: np.concatenate([pending[k], part[k]]) for k in pending}
                    pending_rows += take
                    pos = take
                    if pending_rows == bs:
                        yield self._to_batch(pending)
                        pending, pending_rows = None, 0
                while pos + bs <= n:
                    yield self._to_batch(self._take(chunk, order, pos, pos + bs))
                    pos += bs
                if pos < n:
                    pending, pending_rows = self._take(chunk, order, pos, n), n - pos
                del chunk
        if pending is not None and not self.drop_last:
            yield self._to_batch(pending)

    # ------------------------------------------------------------------ device mode
    def _load_device(self) -> dict[str, Any]:
        """Upload every file's columns once, chunk by chunk (host memory stays bounded).
        Columns keep their narrow stored dtype on the device; batches are upcast there.
        On a CPU device the columns are numpy arrays (gathered with ``np.take``)."""
        dev = self.device
        n = self.num_samples
        data: dict[str, Any] = {}
        for name, (_, kind) in self._columns.items():
            stored = self._file_dtypes[name]
            row_shape = self._row_shapes[name]
            if kind == "meta" or dev.type == "cpu":  # numpy gathers are much faster on CPU
                data[name] = np.empty((n,) + row_shape, dtype=stored)
            else:
                data[name] = torch.empty((n,) + row_shape, dtype=torch.from_numpy(np.empty(0, stored)).dtype,
                                         device=dev)
        offset = 0
        for fi, path in enumerate(self.files):
            with open_day_file(path) as (f, attrs):
                rows = self._file_rows[fi]
                for start in range(0, rows, self.chunk_rows):
                    stop = min(start + self.chunk_rows, rows)
                    for name in self._columns:
                        part = get_column(f, attrs, name, path)[start:stop]
                        dst = data[name]
                        if isinstance(dst, np.ndarray):
                            dst[offset + start:offset + stop] = part
                        else:
                            dst[offset + start:offset + stop].copy_(torch.from_numpy(part))
            offset += self._file_rows[fi]
        nbytes = sum(t.element_size() * t.nelement() for t in data.values() if isinstance(t, torch.Tensor))
        logger.info("H5DataLoader(%s): %d rows (%.1f MB) loaded onto %s", self.split, n, nbytes / 2 ** 20, dev)
        return data

    def _iter_device(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        if self._device_data is None:
            self._device_data = self._load_device()
        data = self._device_data
        dev = self.device
        targets = {name: torch.from_numpy(np.empty(0, dt)).dtype for name, (dt, _) in self._columns.items()}
        perm = perm_host = None
        if self.shuffle:
            gen = torch.Generator(device=dev)
            gen.manual_seed(_derive_seed(self.seed, epoch))
            perm = torch.randperm(self.num_samples, device=dev, generator=gen)
            if any(isinstance(v, np.ndarray) for v in data.values()):
                perm_host = perm.cpu().numpy()
        for b in range(self.num_batches):
            a, z = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
            batch = {}
            for name, t in data.items():
                if isinstance(t, np.ndarray):  # meta columns, or everything on a CPU device
                    part = t[a:z] if perm_host is None else np.take(t, perm_host[a:z], axis=0)
                    batch[name] = torch.from_numpy(part.astype(self._columns[name][0], copy=False))
                else:
                    part = t[a:z] if perm is None else t.index_select(0, perm[a:z])
                    batch[name] = part.to(targets[name])
            yield batch
