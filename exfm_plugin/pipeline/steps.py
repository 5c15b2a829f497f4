"""The step protocol: a step is a frozen object that knows its kind, its spec (hence its key,
:func:`.artifacts.step_key`), the steps whose outputs it reads, and how to build its output.

A step's key hashes its kind and its spec, and a spec names its inputs by their keys, so equal
work has one key whichever cell or grid asks for it. :func:`run_step` builds a step through
:meth:`.artifacts.ArtifactStore.build` (step lock, temporary directory, rename; a done step is
read, not rebuilt), handing its ``build`` the built outputs of its dependencies. Both engines
(:mod:`.runner`, :mod:`.ray_engine`) call it once the dependencies are done.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from .artifacts import ArtifactStore, step_key
from .context import Context


@dataclass(frozen=True)
class Built:
    """A done step's output: its key, its directory and its ``meta.json``."""

    key: str
    path: Path
    meta: dict[str, Any]


class Step:
    """Base of every step kind (a frozen dataclass each); see the module docstring."""

    kind: ClassVar[str]

    @property
    def spec(self) -> dict[str, Any]:  # pragma: no cover - every kind defines it
        raise NotImplementedError

    @functools.cached_property
    def key(self) -> str:
        return step_key(self.kind, self.spec)

    @property
    def deps(self) -> tuple["Step", ...]:
        """The steps whose outputs :meth:`build` reads (their keys are in :attr:`spec`)."""
        return ()

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:  # pragma: no cover
        """Write the output into ``tmp`` and return its meta; ``inputs``: dep key -> its output."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}/{self.key})"


def read_built(store: ArtifactStore, step: Step) -> Built:
    """The output of a done step."""
    return Built(step.key, store.path(step.kind, step.key), store.meta(step.kind, step.key))


def run_step(ctx: Context, step: Step, on_built: Callable[[Path], None] | None = None) -> tuple[Built, bool]:
    """Build ``step`` (its dependencies done) or read it when done; returns its output and whether
    this call's build was the one renamed into place (False: done already, or another process's
    rename won). ``on_built(tmp)`` runs in the temporary directory just before the rename."""
    inode: list[int] = []

    def build(tmp: Path) -> dict[str, Any]:
        inputs = {dep.key: read_built(ctx.store, dep) for dep in step.deps}
        meta = step.build(ctx, tmp, inputs)
        inode.append(os.stat(tmp).st_ino)  # a rename keeps the inode: tells the winner
        if on_built is not None:
            on_built(tmp)
        return meta

    key, path, meta = ctx.store.build(step.kind, step.spec, build)
    if key != step.key:  # pragma: no cover - a spec that changed after its key was taken
        raise RuntimeError(f"step {step!r}: the store built key {key}")
    return Built(key, path, meta), bool(inode) and os.stat(path).st_ino == inode[0]
