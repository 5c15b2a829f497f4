"""Inference engines of the DAS augmenter: the FM prediction of one shard's rows.

Both engines have one interface, ``predict(columns) -> columns``: the input maps column names
to arrays with one row per example (the FM's feature columns plus ``example_id``); the output
holds ``example_id`` in the *input's* row order and one float32 probability array per FM head
(``fm_pred`` for a single-task FM, ``fm_pred/<label>`` per task for a multi-task FM).

* :class:`InProcessEngine` (the default, ``--engine inproc``): batches through the loaded
  snapshot in this process. Nothing to start, no copies beyond one batch of tensors.
* :class:`RayEngine` (``--engine ray``): Ray Data, ``map_batches`` with a callable class on an
  actor pool of ``num_workers`` actors; each actor loads the snapshot once from the SPD (the
  shared file system is the hand-over, not the driver's pickled model). Ray may return the
  batches in any order: rows are rejoined to the input by ``example_id``.

Why an engine and not a loop inside the augmenter: the lease/shard logic is the same whether
the FM runs here or on a Ray cluster, so the augmenter only sees this interface.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..spd.snapshot import column_tensor

logger = logging.getLogger("exfm_plugin.das.engines")  # the name before das/ became subpackages

ID_COLUMN = "example_id"

__all__ = ["Engine", "InProcessEngine", "RayEngine", "ShardAbandoned", "make_engine", "rejoin_by_id",
           "to_model_batch"]


def _row_ids(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The shard's example ids, which every engine returns so rows rejoin by id."""
    if ID_COLUMN not in columns:
        raise KeyError(f"predict needs an {ID_COLUMN!r} column; got {sorted(columns)}")
    return np.asarray(columns[ID_COLUMN])


class ShardAbandoned(RuntimeError):
    """Prediction stopped because the caller's ``should_stop`` said so (the shard's lease was lost)."""


@runtime_checkable
class Engine(Protocol):
    """What the augmenter needs from an inference engine."""

    def predict(self, columns: Mapping[str, np.ndarray],
                should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """FM predictions of every row of ``columns`` (with ``example_id``), rows in input order."""
        ...

    def close(self) -> None:
        """Release what the engine holds (actors, the Ray connection it opened)."""
        ...


def to_model_batch(columns: Mapping[str, np.ndarray], start: int = 0, stop: int | None = None,
                   skip: tuple[str, ...] = (ID_COLUMN,)) -> dict[str, torch.Tensor]:
    """Rows ``[start, stop)`` as the tensors a fuxictr model takes (:func:`~exfm_plugin.das.spd.snapshot.column_tensor`:
    integer ids upcast to int64, everything else float32)."""
    return {name: column_tensor(arr[start:stop]) for name, arr in columns.items() if name not in skip}


def _as_prob(name: str, value: Any, rows: int) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    arr = arr.reshape(-1).astype(np.float32, copy=False)
    if arr.shape[0] != rows:
        raise ValueError(f"predict_batch returned {arr.shape[0]} values for {name!r} on a batch of {rows} rows")
    return arr


def rejoin_by_id(input_ids: np.ndarray, out_ids: np.ndarray,
                 outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Put rows returned in any order back in the order of ``input_ids`` (unique ids).

    Vectorised: one argsort of the input ids, one ``searchsorted``. Raises if a row is missing,
    duplicated or unknown, naming an example id, so a lost Ray block can never go unnoticed.
    """
    input_ids = np.asarray(input_ids)
    out_ids = np.asarray(out_ids)
    if out_ids.shape[0] != input_ids.shape[0]:
        raise RuntimeError(f"engine returned {out_ids.shape[0]} rows for {input_ids.shape[0]} input rows")
    order = np.argsort(input_ids, kind="stable")
    sorted_ids = input_ids[order]
    pos = np.searchsorted(sorted_ids, out_ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    unknown = sorted_ids[pos_c] != out_ids
    if unknown.any():
        raise RuntimeError(f"engine returned example_id {int(out_ids[np.flatnonzero(unknown)[0]])} "
                           f"that is not among the input rows")
    target = order[pos_c]
    seen = np.zeros(len(input_ids), dtype=np.int64)
    np.add.at(seen, target, 1)
    for bad_rows, what in ((seen > 1, "more than once"), (seen == 0, "never")):
        if bad_rows.any():
            bad = int(np.flatnonzero(bad_rows)[0])
            raise RuntimeError(f"engine returned example_id {int(input_ids[bad])} {what} "
                               f"({int(bad_rows.sum())} such rows); expected every input row once")
    result = {ID_COLUMN: input_ids}
    for name, values in outputs.items():
        out = np.empty(len(input_ids), dtype=np.float32)
        out[target] = values
        result[name] = out
    return result


# --------------------------------------------------------------------------- in-process
class InProcessEngine:
    """Streams rows in batches of ``batch_size`` through ``loaded_snapshot.predict_batch``.

    ``rows_predicted`` and ``batches`` count the work done (the tests use them to check that
    rows shared by several VMs are predicted once).
    """

    def __init__(self, loaded_snapshot: Any, batch_size: int = 8192) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.loaded = loaded_snapshot
        self.batch_size = int(batch_size)
        self.rows_predicted = 0
        self.batches = 0

    def predict(self, columns: Mapping[str, np.ndarray],
                should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """Predictions of every row; checks ``should_stop`` between batches."""
        ids = _row_ids(columns)
        n = int(ids.shape[0])
        outputs: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                if should_stop is not None and should_stop():
                    raise ShardAbandoned(f"stopped after {start} of {n} rows")
                stop = min(start + self.batch_size, n)
                preds = self.loaded.predict_batch(to_model_batch(columns, start, stop))
                if not preds:
                    raise ValueError("predict_batch returned no prediction column")
                for name, value in preds.items():
                    if name not in outputs:
                        outputs[name] = np.empty(n, dtype=np.float32)
                    outputs[name][start:stop] = _as_prob(name, value, stop - start)
                self.rows_predicted += stop - start
                self.batches += 1
        if n == 0:
            return {ID_COLUMN: ids}
        return {ID_COLUMN: ids, **outputs}

    def close(self) -> None:
        """Nothing to release (the loaded snapshot belongs to the caller)."""


# --------------------------------------------------------------------------- Ray
class _SnapshotPredictor:
    """The Ray Data callable class: one per actor, loading the snapshot once from the SPD."""

    def __init__(self, snapshot_store_root: str, snapshot_id: str, threads: int,
                 spd_key_files: Sequence[str] = ()) -> None:
        from ..spd.signing import SigningKeys
        from ..spd import SnapshotStore

        torch.set_num_threads(max(1, threads))
        keys = SigningKeys.from_files(spd_key_files) if spd_key_files else None  # paths travel, not keys
        self.loaded = SnapshotStore(snapshot_store_root, keys=keys).load(snapshot_id, device="cpu")
        logger.info("Ray actor pid %d loaded snapshot %s", os.getpid(), snapshot_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch[ID_COLUMN])
        with torch.no_grad():
            preds = self.loaded.predict_batch(to_model_batch(batch))
        out = {ID_COLUMN: ids.astype(np.int64, copy=False)}
        for name, value in preds.items():
            out[name] = _as_prob(name, value, len(ids))
        return out


def _to_arrow(columns: Mapping[str, np.ndarray]):
    """Columns as an Arrow table: 1-D as plain arrays, 2-D (sequences) as Ray tensor columns."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    arrays = {}
    for name, arr in columns.items():
        arr = np.ascontiguousarray(arr)
        arrays[name] = pa.array(arr) if arr.ndim == 1 else ArrowTensorArray.from_numpy(arr)
    return pa.table(arrays)


class RayEngine:
    """FM inference on Ray Data: ``map_batches`` of a callable class on ``num_workers`` actors.

    The shard's rows go in as Arrow blocks (at least one per worker, so every actor gets work);
    each actor loads the snapshot from the SPD at ``snapshot_store_root`` (a path every Ray node
    can read) once. Ray Data starts one actor pool per execution, i.e. per ``predict`` call (per
    shard): that fixed cost (actor process start + verified snapshot load, ~8-12 s for a
    TaobaoAd-sized DCN on a 2-core machine, see ``benchmarks/perf/das_throughput.py``) is paid
    per shard, so use shards large enough (``--shard-rows`` of 10^6 and more) that the prediction
    dwarfs it. Rows come back in whatever order the actors finish and are rejoined to the input
    by ``example_id``. Starts a local Ray (``ray_init`` kwargs) unless one is running.
    """

    def __init__(self, snapshot_store_root: str, snapshot_id: str, num_workers: int = 1,
                 batch_size: int = 8192, *, cpus_per_worker: float = 1.0,
                 ray_init: Mapping[str, Any] | None = None, spd_key_files: Sequence[str] = ()) -> None:
        if num_workers < 1 or batch_size < 1:
            raise ValueError(f"num_workers={num_workers} and batch_size={batch_size} must be >= 1")
        import ray

        self.snapshot_store_root = os.path.abspath(os.fspath(snapshot_store_root))
        self.snapshot_id = snapshot_id
        self.spd_key_files = tuple(os.path.abspath(os.fspath(p)) for p in spd_key_files)
        self.num_workers = int(num_workers)
        self.batch_size = int(batch_size)
        self.cpus_per_worker = float(cpus_per_worker)
        self.rows_predicted = 0
        self._started_ray = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            kwargs.update(ray_init or {})
            ray.init(**kwargs)
            self._started_ray = True
            logger.info("RayEngine started a local Ray (%s)", ray.available_resources())
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the augmenter has its own tqdm over shards

    def predict(self, columns: Mapping[str, np.ndarray],
                should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """Predictions of every row via Ray Data; ``should_stop`` is checked as results arrive."""
        import ray

        ids = _row_ids(columns)
        n = int(ids.shape[0])
        if n == 0:
            return {ID_COLUMN: ids}
        table = _to_arrow(columns)
        num_blocks = max(self.num_workers, math.ceil(n / self.batch_size))
        step = math.ceil(n / num_blocks)
        blocks = [table.slice(a, min(step, n - a)) for a in range(0, n, step)]
        ds = ray.data.from_arrow(blocks).map_batches(
            _SnapshotPredictor,
            fn_constructor_args=(self.snapshot_store_root, self.snapshot_id, max(1, int(self.cpus_per_worker)),
                                 self.spd_key_files),
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.num_workers),
            num_cpus=self.cpus_per_worker,
        )
        out_ids, outs = [], {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if should_stop is not None and should_stop():
                raise ShardAbandoned(f"stopped after {sum(map(len, out_ids))} of {n} rows")
            out_ids.append(np.asarray(batch[ID_COLUMN]))
            for name, value in batch.items():
                if name != ID_COLUMN:
                    outs.setdefault(name, []).append(np.asarray(value, dtype=np.float32).reshape(-1))
        self.rows_predicted += n
        return rejoin_by_id(ids, np.concatenate(out_ids), {k: np.concatenate(v) for k, v in outs.items()})

    def close(self) -> None:
        """Shut Ray down if this engine started it."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


def make_engine(kind: str, *, loaded_snapshot: Any = None, snapshot_store_root: str | None = None,
                snapshot_id: str | None = None, num_workers: int = 1, batch_size: int = 8192,
                ray_init: Mapping[str, Any] | None = None, spd_key_files: Sequence[str] = ()) -> Engine:
    """The engine named by the CLI's ``--engine`` (``inproc`` or ``ray``)."""
    if kind == "inproc":
        if loaded_snapshot is None:
            raise ValueError("engine 'inproc' needs the loaded snapshot")
        return InProcessEngine(loaded_snapshot, batch_size)
    if kind == "ray":
        if snapshot_store_root is None or snapshot_id is None:
            raise ValueError("engine 'ray' needs snapshot_store_root and snapshot_id")
        return RayEngine(snapshot_store_root, snapshot_id, num_workers, batch_size, ray_init=ray_init,
                         spd_key_files=spd_key_files)
    raise ValueError(f"engine={kind!r}; expected 'inproc' or 'ray'")
