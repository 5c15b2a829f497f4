"""Stage 1's shared dataset: every VM's rows of the day joined by ``example_id``, each once.

Why the shared dataset is an index and not a copy: the join only has to say, for each distinct
``example_id``, which VM file and row hold its features; a shard gathers those rows straight
from the VM files. Copying every feature column into a shared file would double the day's I/O
for no gain (the labels stay in each VM's own file and reach its split through the links).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import h5py
import numpy as np

from ...data.dayfile import DayFileError, get_column, open_day_file
from .engines import ID_COLUMN

__all__ = ["SharedDataset"]

#: reads of one VM file's rows for a shard: runs closer than this many rows are read as one slab,
#: and no slab is longer than _MAX_SPAN rows (memory stays bounded by the shard, not the file)
_GAP_ROWS = 4096
_MAX_SPAN = 1 << 16


class _Named(Protocol):
    name: str
    day_file: str


def _read_ids(path: str) -> np.ndarray:
    with open_day_file(path) as (f, attrs):
        ids = get_column(f, attrs, ID_COLUMN, path)[...].astype(np.int64)
    return ids


def _gather(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (increasing) of ``ds`` with few, bounded reads: rows closer than
    ``_GAP_ROWS`` are read as one slab, and no slab spans more than ``_MAX_SPAN`` rows, so
    memory stays bounded by the shard even when its rows are scattered over a large file."""
    if idx.size == 0:
        return ds[0:0]
    lo, hi = int(idx[0]), int(idx[-1])
    if hi - lo + 1 == idx.size:  # contiguous: one slab, no copy
        return ds[lo:hi + 1]
    breaks = np.flatnonzero(np.diff(idx) > _GAP_ROWS) + 1
    parts = []
    for run in np.split(idx, breaks):
        while run.size:
            cut = int(np.searchsorted(run, run[0] + _MAX_SPAN))
            piece, run = run[:cut], run[cut:]
            a, b = int(piece[0]), int(piece[-1])
            parts.append(ds[a:b + 1][piece - a])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class SharedDataset:
    """Stage 1's join of all VMs' rows: every distinct ``example_id`` of the day once, with the VM
    file and row that supply its features (the first VM, in job order, that has the row).

    The shared rows are ordered by source (VM, row in its file), not by id: a shard is then a
    run of consecutive rows of one file (minus rows an earlier VM already supplies), read as a
    slab whatever order the ids are in. ``ids`` is that order; ``sorted_ids`` is for lookups.
    Use as a context manager: :meth:`read` keeps the VM files open between shards.
    """

    def __init__(self, vms: Sequence[_Named], columns: Sequence[str]) -> None:
        self.vms = list(vms)
        self.columns = list(columns)
        self.vm_ids: list[np.ndarray] = []
        for vm in self.vms:
            ids = _read_ids(vm.day_file)
            if ids.size > 1 and np.all(ids[1:] > ids[:-1]):  # increasing (exfm prep's order): unique
                self.vm_ids.append(ids)
                continue
            uniq, counts = np.unique(ids, return_counts=True)
            if uniq.size != ids.size:
                dup = int(uniq[np.flatnonzero(counts > 1)[0]])
                raise DayFileError(f"{vm.day_file} (VM {vm.name!r}): {ID_COLUMN} {dup} appears "
                                   f"{int(counts[counts > 1][0])} times; expected unique ids")
            self.vm_ids.append(ids)
        self.sorted_ids = np.unique(np.concatenate(self.vm_ids)) if self.vm_ids else np.empty(0, np.int64)
        n = self.sorted_ids.size
        source_vm = np.full(n, -1, dtype=np.int32)
        source_row = np.zeros(n, dtype=np.int64)
        membership = np.zeros(n, dtype=np.int32)
        for i, ids in enumerate(self.vm_ids):
            pos = np.searchsorted(self.sorted_ids, ids)
            membership[pos] += 1
            first = source_vm[pos] == -1
            source_vm[pos[first]] = i
            source_row[pos[first]] = np.flatnonzero(first)
        order = np.lexsort((source_row, source_vm))
        #: the shared rows' ids in shared (source) order, and where each row is read from
        self.ids = self.sorted_ids[order]
        self.source_vm = source_vm[order]
        self.source_row = source_row[order]
        #: rows that appear in more than one VM (predicted once all the same)
        self.num_shared = int((membership > 1).sum())
        self.num_vm_rows = int(sum(ids.size for ids in self.vm_ids))
        self._stack: contextlib.ExitStack | None = None
        self._files: dict[int, tuple[h5py.File, dict[str, Any]]] = {}

    @property
    def num_rows(self) -> int:
        return int(self.ids.size)

    def __enter__(self) -> "SharedDataset":
        self._stack = contextlib.ExitStack()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._files = None, {}

    def _file(self, i: int) -> tuple[h5py.File, dict[str, Any]]:
        if i not in self._files:
            if self._stack is None:
                raise RuntimeError("SharedDataset.read needs `with SharedDataset(...) as shared:`")
            self._files[i] = self._stack.enter_context(open_day_file(self.vms[i].day_file))
        return self._files[i]

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The feature columns and ``example_id`` of shared rows ``[start, stop)``."""
        sv = self.source_vm[start:stop]
        sr = self.source_row[start:stop]
        out: dict[str, np.ndarray] = {ID_COLUMN: self.ids[start:stop]}
        # source order: each VM's rows are one increasing block of the shard
        bounds = np.flatnonzero(np.diff(sv)) + 1
        blocks = [(int(sv[a]), a, b) for a, b in zip(np.r_[0, bounds], np.r_[bounds, sv.size]) if b > a]
        for name in self.columns:
            parts = []
            for i, a, b in blocks:
                f, attrs = self._file(i)
                parts.append(_gather(get_column(f, attrs, name, self.vms[i].day_file), sr[a:b]))
            if len(parts) == 1:
                out[name] = parts[0]
            else:
                dtype = np.result_type(*[p.dtype for p in parts])
                out[name] = np.concatenate([p.astype(dtype, copy=False) for p in parts])
        return out
