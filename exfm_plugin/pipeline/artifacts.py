"""Content-addressed step outputs: a grid that is stopped and restarted skips what is done,
and a step shared by many cells (a round's FM, the ``none`` VM all teachers share) runs once.

A step's key is a hash of its kind, its configuration and the keys of its inputs, so equal
work gets the same directory whichever grid asks for it. A directory counts only once its
``DONE`` marker exists; it is built in a temporary sibling and renamed into place
(:func:`exfm_plugin.fsutil.atomic_dir`).

Two processes on one work directory (two ``exfm run`` of overlapping grids, Ray workers on a
shared file system) never build the same step twice: :meth:`ArtifactStore.build` holds an
exclusive ``fcntl.flock`` on ``<kind>/.<key>.lock`` (next to the artifact) while it builds, so
the second process waits for the first and then reuses its artifact. ``flock`` locks are
released by the kernel when their process dies, so a killed builder never leaves a stale lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..fsutil import atomic_dir

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # bump when a step's semantics change, so old outputs are not reused
DONE = "DONE"
META = "meta.json"
LOCK_SUFFIX = ".lock"
_held = threading.local()  # lock paths this thread holds: a nested build of the same step does not wait on itself


def canonical_json(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def step_key(kind: str, spec: Mapping[str, Any]) -> str:
    """A short stable hash of a step's kind and full configuration."""
    payload = canonical_json({"kind": kind, "version": PIPELINE_VERSION, "spec": spec})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ArtifactStore:
    """``root/<kind>/<key>/`` directories with a ``meta.json`` and a ``DONE`` marker."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_done(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / DONE).exists()

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        with open(self.path(kind, key) / META) as f:
            return json.load(f)

    @classmethod
    def locate(cls, artifact_dir: str | os.PathLike) -> tuple["ArtifactStore", str, str]:
        """``(store, kind, key)`` of a finished artifact directory (e.g. a record's ``vm_artifact``),
        so its inputs are read through the store (``store.meta(...)``, ``store.path(...)``) rather
        than by walking the layout; ``FileNotFoundError`` when it is not a finished artifact."""
        path = Path(artifact_dir).resolve()
        store = cls(path.parent.parent)
        kind, key = path.parent.name, path.name
        if not store.is_done(kind, key):
            raise FileNotFoundError(f"{path} is not a finished artifact (no {DONE} marker)")
        return store, kind, key

    def lock_path(self, kind: str, key: str) -> Path:
        """The lock file of a step: ``<root>/<kind>/.<key>.lock``, beside its directory."""
        return self.root / kind / f".{key}{LOCK_SUFFIX}"

    @contextlib.contextmanager
    def _step_lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold the step's exclusive lock (blocking); a waiter logs once that it is waiting."""
        path = self.lock_path(kind, key)
        held: set[str] = _held.__dict__.setdefault("paths", set())
        if str(path) in held:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process building %s/%s", kind, key)
                start = time.monotonic()
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                logger.info("%s/%s: waited %.1f s for the other builder", kind, key, time.monotonic() - start)
            held.add(str(path))
            try:
                yield
            finally:
                held.discard(str(path))
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def build(self, kind: str, spec: Mapping[str, Any],
              fn: Callable[[Path], Mapping[str, Any]]) -> tuple[str, Path, dict[str, Any]]:
        """Return ``(key, dir, meta)`` of the step, running ``fn(tmp_dir) -> meta`` only if it
        is not done yet. ``fn`` writes its files into ``tmp_dir``; paths it returns in ``meta``
        should be relative to that directory."""
        key = step_key(kind, spec)
        final = self.path(kind, key)
        if self.is_done(kind, key):
            return key, final, self.meta(kind, key)
        with self._step_lock(kind, key):  # a second process waits here, then finds it done
            if self.is_done(kind, key):
                logger.info("%s/%s was built by another process meanwhile; reused", kind, key)
                return key, final, self.meta(kind, key)
            return self._build_locked(kind, spec, key, final, fn)

    def _build_locked(self, kind: str, spec: Mapping[str, Any], key: str, final: Path,
                      fn: Callable[[Path], Mapping[str, Any]]) -> tuple[str, Path, dict[str, Any]]:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not self.is_done(kind, key):  # a leftover without DONE marker (checked
            shutil.rmtree(final, ignore_errors=True)        # again: another builder may just have finished)
        try:
            with atomic_dir(final) as tmp_dir:
                tmp = Path(tmp_dir)
                meta = dict(fn(tmp))
                meta.update({"kind": kind, "key": key, "spec": json.loads(canonical_json(spec))})
                with open(tmp / META, "w") as f:
                    json.dump(meta, f, indent=1, sort_keys=True, default=str)
                (tmp / DONE).touch()
        except FileExistsError:
            if not self.is_done(kind, key):
                raise
            return key, final, self.meta(kind, key)  # another process built it first: keep theirs
        logger.info("built %s/%s", kind, key)
        return key, final, meta
