"""Content-addressed step outputs: a grid that is stopped and restarted skips what is done,
and a step shared by many cells (a round's FM, the ``none`` VM all teachers share) runs once.

A step's key is a hash of its kind, its configuration and the keys of its inputs, so equal
work gets the same directory whichever grid asks for it. A directory counts only once its
``DONE`` marker exists; it is built in a temporary sibling and renamed into place
(:func:`exfm_plugin.fsutil.atomic_dir`); when two processes build the same step, the first
rename wins and the other uses the winner's directory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from ..fsutil import atomic_dir

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # bump when a step's semantics change, so old outputs are not reused
DONE = "DONE"
META = "meta.json"


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

    def build(self, kind: str, spec: Mapping[str, Any],
              fn: Callable[[Path], Mapping[str, Any]]) -> tuple[str, Path, dict[str, Any]]:
        """Return ``(key, dir, meta)`` of the step, running ``fn(tmp_dir) -> meta`` only if it
        is not done yet. ``fn`` writes its files into ``tmp_dir``; paths it returns in ``meta``
        should be relative to that directory."""
        key = step_key(kind, spec)
        final = self.path(kind, key)
        if self.is_done(kind, key):
            return key, final, self.meta(kind, key)
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
