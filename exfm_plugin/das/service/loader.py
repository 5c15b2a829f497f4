"""The DAS loader (the paper's name): keeps the snapshot the metadata store names loaded, with hot swap.

``exfm das run --poll`` augments each day with :attr:`SnapshotLoader.current`; :meth:`predict`
answers single batches. A background thread watches the store's current snapshot. When it changes, the thread loads
the new snapshot (verify checksums, rebuild, load weights: minutes for a large FM) while the
old one keeps answering; only a fully loaded snapshot is swapped in, by replacing one
reference to an immutable ``(snapshot_id, LoadedSnapshot)`` pair. ``predict`` reads that
reference once, so every answer comes wholly from one snapshot and says which.

Each snapshot id is loaded at most once, ever (the paper: "each new snapshot is loaded only
once"): a snapshot that failed to load (corrupt, missing) is refused for good and the old
one stays current; the store naming an already-loaded older id again does not reload it.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from ..metastore import MetadataStore, MetastoreError
from ..spd import LoadedSnapshot, SnapshotStore

__all__ = ["LoaderPrediction", "NoSnapshotLoaded", "SnapshotLoader", "SnapshotRefused"]

logger = logging.getLogger("exfm_plugin.das.loader")  # the name before das/ became subpackages


class NoSnapshotLoaded(RuntimeError):
    """``predict`` was called before any snapshot finished loading."""


class SnapshotRefused(RuntimeError):
    """The snapshot failed to load (corrupt, missing, incompatible) and will not be retried."""


class LoaderPrediction(NamedTuple):
    """The FM predictions for one batch and the id of the one snapshot that produced them."""

    snapshot_id: str
    predictions: dict[str, np.ndarray]


class _Active(NamedTuple):
    snapshot_id: str
    snapshot: LoadedSnapshot


class SnapshotLoader:
    """Keeps the snapshot the metadata store names loaded; swaps a new one in once it is loaded.

    ``load_fn(snapshot_id) -> LoadedSnapshot`` defaults to ``spd.load(snapshot_id, device)``
    (which verifies checksums); inject another to wrap, slow down or count loads.
    """

    def __init__(self, spd: SnapshotStore, store: MetadataStore, *, device: str | torch.device = "cpu",
                 poll_interval: float = 5.0,
                 load_fn: Callable[[str], LoadedSnapshot] | None = None) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval={poll_interval!r} must be positive")
        self.spd = spd
        self.store = store
        self.device = device
        self.poll_interval = float(poll_interval)
        self._load_fn = load_fn or (lambda sid: spd.load(sid, device=device))
        self._active: _Active | None = None  # replaced whole, never mutated
        self._attempted: set[str] = set()  # loaded or refused: never loaded again
        self._refused: dict[str, str] = {}
        self._changed = threading.Condition()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def current_snapshot_id(self) -> str | None:
        """The snapshot answering ``predict`` now (None before the first load)."""
        active = self._active
        return active.snapshot_id if active is not None else None

    @property
    def current(self) -> LoadedSnapshot | None:
        """The loaded snapshot answering ``predict`` now."""
        active = self._active
        return active.snapshot if active is not None else None

    @property
    def refused(self) -> dict[str, str]:
        """Snapshots that failed to load, with the reason."""
        with self._changed:
            return dict(self._refused)

    # ------------------------------------------------------------------ predicting
    def predict(self, batch: Mapping[str, Any]) -> LoaderPrediction:
        """FM predictions for ``batch`` from the current snapshot, with that snapshot's id."""
        active = self._active  # one read: the whole answer comes from this snapshot
        if active is None:
            raise NoSnapshotLoaded(
                f"no FM snapshot loaded yet (store {self.store!r}"
                f"{', refused: ' + ', '.join(self._refused) if self._refused else ''}); "
                f"start() the loader and wait_for() a snapshot first")
        return LoaderPrediction(active.snapshot_id, active.snapshot.predict_batch(batch))

    def wait_for(self, snapshot_id: str, timeout: float | None = None) -> bool:
        """Block until ``snapshot_id`` is current (True) or ``timeout`` seconds pass (False).

        Raises :class:`SnapshotRefused` at once if that snapshot failed to load.
        """
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self.current_snapshot_id == snapshot_id or snapshot_id in self._refused, timeout)
            if snapshot_id in self._refused and self.current_snapshot_id != snapshot_id:
                raise SnapshotRefused(f"snapshot {snapshot_id} was refused: {self._refused[snapshot_id]}")
            return bool(ok)

    # ------------------------------------------------------------------ watching
    def poll_once(self) -> str | None:
        """Read the store's current snapshot; load and swap it in if it is new to this loader.

        Returns the current id afterwards. Store errors are logged (the old snapshot stays
        current); a load failure refuses that snapshot for good.
        """
        with self._poll_lock:  # one load at a time, even if called beside the thread
            try:
                lease = self.store.get_current()
            except MetastoreError as e:
                logger.warning("loader: cannot read the current snapshot, keeping %s: %s",
                               self.current_snapshot_id, e)
                return self.current_snapshot_id
            if lease is None or lease.snapshot_id == self.current_snapshot_id:
                return self.current_snapshot_id
            snapshot_id = lease.snapshot_id
            if snapshot_id in self._attempted:
                return self.current_snapshot_id  # loaded before (or refused): never again
            self._attempted.add(snapshot_id)
            logger.info("loader: loading snapshot %s (%s stays current meanwhile)", snapshot_id, self.current_snapshot_id)
            try:
                loaded = self._load_fn(snapshot_id)
                if loaded.info.snapshot_id != snapshot_id:
                    raise ValueError(f"load_fn returned snapshot {loaded.info.snapshot_id}, expected {snapshot_id}")
            except Exception as e:
                logger.error("loader: refusing snapshot %s, %s stays current: %s: %s", snapshot_id,
                             self.current_snapshot_id, type(e).__name__, e)
                with self._changed:
                    self._refused[snapshot_id] = f"{type(e).__name__}: {e}"
                    self._changed.notify_all()
                return self.current_snapshot_id
            with self._changed:
                previous = self.current_snapshot_id
                self._active = _Active(snapshot_id, loaded)
                self._changed.notify_all()
            logger.info("loader: snapshot %s is current (was %s)", snapshot_id, previous)
            return snapshot_id

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # keep the current snapshot and keep watching whatever happens
                logger.exception("loader: poll failed")
            self._stop.wait(self.poll_interval)

    def start(self) -> "SnapshotLoader":
        """Start the watching thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="exfm-das-loader", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; waits for a load in progress unless ``timeout`` runs out first."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("loader: thread still busy (a load in progress) after %s s", timeout)
            else:
                self._thread = None

    def __enter__(self) -> "SnapshotLoader":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
