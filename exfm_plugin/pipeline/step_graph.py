"""A grid's step graph: every content-addressed step its records need, with its key and the keys
of the steps it depends on, for an engine that runs steps on many workers (:mod:`.ray_engine`).

The graph is not written down a second time: it is read off the in-process engine's own code.
Each record's job (:func:`.runner.run_job`) is *replayed* against a :class:`ReplayStore`, which
answers a done step with its real meta, and a step not done yet with a placeholder meta and a
note of its kind, key and spec. A step's dependencies are the not-done steps whose keys its spec
names (a step's key hashes the keys of its inputs, :mod:`.artifacts`), and for a VM link the DAS
step that writes its input (named ``<FM key>/<day>/<VM>`` by :func:`.runner.day_input`).

A worker runs one step the same way: it replays the step's job with the step as the *target*;
everything before it is done (the engine waited for its dependencies), the target is built
through :meth:`ArtifactStore.build` (temporary directory, rename), and the replay stops there.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .artifacts import ArtifactStore, step_key
from .grid import Cell
from .stages import Context, PreparedData, domain_day_file, prep_stage

Job = tuple[str, Cell]  # ("vm" | "fm", cell): one record


class TargetReached(Exception):
    """Raised by a :class:`ReplayStore` right after its target step is built: the replay stops."""


class StepNotDone(RuntimeError):
    """A strict replay (the driver assembling a record) met a step that is not built."""


@dataclass
class Requested:
    kind: str
    key: str
    spec: Mapping[str, Any]
    done: bool


def _placeholder_meta(kind: str, key: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a not-built step answers during planning: enough for the replay to compute the keys
    of the steps after it (an FM's snapshot fields, a DAS step's split names), nothing real."""
    meta: dict[str, Any] = {"kind": kind, "key": key, "spec": dict(spec), "planned": True}
    if kind == "fm":
        meta.update(snapshot_id=f"planned-{key}", spd_root="")
    elif kind == "das":
        meta["splits"] = {name: f"{name}.planned" for name in spec["vms"]}
    return meta


class ReplayStore(ArtifactStore):
    """An artifact store that builds at most one step (``target``) and records every request.

    ``target=None, strict=False``: planning, nothing is built. ``target=KEY``: that step is built
    (``on_built(tmp_dir)`` runs inside its temporary directory, before the rename), then
    :class:`TargetReached` stops the replay unless ``stop=False``. ``strict=True``: every step
    must be done already (the driver reading a finished job's results).
    """

    def __init__(self, root: str | os.PathLike, target: str | None = None, *, strict: bool = False,
                 stop: bool = True, on_built: Callable[[Path], None] | None = None) -> None:
        super().__init__(root)
        self.target, self.strict, self.stop, self.on_built = target, strict, stop, on_built
        self.requested: list[Requested] = []
        self.built_here: bool | None = None  # target: whether this process's rename won

    def build(self, kind: str, spec: Mapping[str, Any], fn):
        key = step_key(kind, spec)
        done = self.is_done(kind, key)
        self.requested.append(Requested(kind, key, spec, done))
        if key == self.target:
            result = self._build_target(kind, spec, fn)
            if self.stop:
                raise TargetReached(key)
            return result
        if done:
            return key, self.path(kind, key), self.meta(kind, key)
        if self.strict:
            raise StepNotDone(f"step {kind}/{key} is not built in {self.root}; its engine task did not finish")
        return key, self.path(kind, key), _placeholder_meta(kind, key, spec)

    def _build_target(self, kind: str, spec: Mapping[str, Any], fn):
        inode: list[int] = []

        def build_and_mark(tmp: Path):
            meta = fn(tmp)
            inode.append(os.stat(tmp).st_ino)  # a rename keeps the inode: tells the winner
            if self.on_built is not None:
                self.on_built(tmp)
            return meta

        key, final, meta = super().build(kind, spec, build_and_mark)
        self.built_here = bool(inode) and os.stat(final).st_ino == inode[0]
        return key, final, meta


@dataclass(frozen=True)
class Step:
    """One step to run: its kind and key, the keys it waits for, and the job whose replay reaches it."""

    kind: str
    key: str
    deps: tuple[str, ...]
    job: Job


@dataclass
class StepGraph:
    """Not-done steps in dependency order (every step after its deps), and per job the steps its
    record waits for."""

    steps: dict[str, Step] = field(default_factory=dict)
    job_steps: dict[int, tuple[str, ...]] = field(default_factory=dict)  # job index -> step keys

    def __len__(self) -> int:
        return len(self.steps)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _named_keys(spec: Mapping[str, Any]) -> set[str]:
    """Every key-like token the spec names: whole strings and their path components."""
    names: set[str] = set()
    for s in _strings(spec):
        names.add(s)
        names.update(s.split("/"))
    return names


def _das_outputs(spec: Mapping[str, Any]) -> list[str]:
    """The input keys a DAS step's splits carry in a VM link's spec (:func:`.runner.day_input`)."""
    return [f"{spec['fm']}/{spec['day']}/{name}" for name in spec["vms"]]


def prepare_data(ctx: Context) -> PreparedData:
    """The data steps every job reads while it is planned (the day files and, for a domains grid,
    the per-domain split), built before the graph is: the graph's keys depend on their content."""
    prep = prep_stage(ctx)
    if ctx.grid.mode == "domains":
        for domain in ctx.grid.domains:  # builds the one per-domain artifact; a domain absent on day 1 is fine
            try:
                domain_day_file(ctx, prep, 1, domain)
            except FileNotFoundError:
                pass
    return prep


class _PlanningContext(Context):
    """A memo that also remembers the steps its computation requested and requests them again on
    a hit: every job's replay lists every step it reads, so its record waits for all of them."""

    def memo(self, key: tuple, fn):
        requested = self.store.requested
        if key not in self._memo:
            start = len(requested)
            value = fn()  # planning reads only done steps and placeholders: an error is a real one
            self._memo[key] = (value, requested[start:])
        value, seen = self._memo[key]
        if seen and requested[-len(seen):] != seen:
            requested.extend(seen)
        return value


def plan(grid, store_root: str | os.PathLike, prep: PreparedData, jobs: list[Job],
         run_job: Callable[[Context, PreparedData, str, Cell], dict]) -> StepGraph:
    """The graph of the steps ``jobs`` need that are not built yet (see the module docstring)."""
    store = ReplayStore(store_root)
    ctx = _PlanningContext(grid, store, progress=False)
    graph = StepGraph()
    providers: dict[str, str] = {}  # a key a spec names -> the not-done step that makes it
    for index, (kind, cell) in enumerate(jobs):
        start = len(store.requested)
        run_job(ctx, prep, kind, cell)
        needed: list[str] = []
        for req in store.requested[start:]:
            if req.done:
                continue
            if req.key not in graph.steps:
                deps = tuple(sorted({providers[n] for n in _named_keys(req.spec) if n in providers} - {req.key}))
                graph.steps[req.key] = Step(req.kind, req.key, deps, (kind, cell))
                providers[req.key] = req.key
                if req.kind == "das":
                    providers.update(dict.fromkeys(_das_outputs(req.spec), req.key))
            if req.key not in needed:
                needed.append(req.key)
        graph.job_steps[index] = tuple(needed)
    return graph


@dataclass(frozen=True)
class StepRun:
    key: str
    kind: str
    seconds: float  # in the worker, replay and build
    built_here: bool  # False: done already, or another worker's rename won


def execute_step(ctx: Context, prep: PreparedData, step: Step,
                 run_job: Callable[[Context, PreparedData, str, Cell], dict]) -> StepRun:
    """Build ``step`` (its dependencies done) by replaying its job up to it; ``ctx.store`` must be
    a :class:`ReplayStore` whose target is ``step.key``."""
    store = ctx.store
    if not isinstance(store, ReplayStore) or store.target != step.key:
        raise ValueError(f"execute_step needs a ReplayStore targeting {step.key}, got {store!r}")
    start = time.perf_counter()
    try:
        run_job(ctx, prep, *step.job)
    except TargetReached:
        pass
    if store.built_here is None:
        raise RuntimeError(f"replaying job {step.job[0]} {step.job[1]} never reached step {step.kind}/{step.key}")
    return StepRun(step.key, step.kind, time.perf_counter() - start, store.built_here)
