"""``exfm run --engine ray``: a grid's steps as Ray tasks, on one machine's cores and GPUs or on a
cluster, with the in-process engine's guarantees.

The driver builds the data steps (one task), plans the grid (:mod:`.plan`), submits every
planned step not built yet as a task with its resource request (``num_cpus``/``num_gpus``), its
dependencies passed as the ObjectRefs of their tasks (Ray starts a step once they are done, and
fails it with their error if one failed), and writes one record per job as its steps finish.

* A step is built once: each key is one task, and a step raced by two workers (a second driver,
  a retry) is decided by the step lock and the rename of :meth:`ArtifactStore.build`; the loser
  uses the winner's output.
* A killed worker's task is retried by Ray (``max_retries``); an application error is not
  retried (a step is deterministic) and fails the records that need it, as in-process.
* A killed driver loses only unwritten records: a rerun skips recorded jobs and built steps.

The artifact store must be a path every worker and the driver see (one machine, or a shared
file system mounted at the same path everywhere): see docs/scale_out.md.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from tqdm import tqdm

from ..allocator import configure_allocator
from .artifacts import ArtifactStore
from .cell_outputs import results_dir_of, write_cell_outputs
from .context import Context
from .grid import Grid, GridError
from .jobs import cell_id, grid_jobs
from .plan import plan_grid
from .prep_steps import PreparedData, prepare_data
from .records import RecordWriter
from .runner import RunSummary, record_base, record_fields
from .steps import Step, read_built, run_step

logger = logging.getLogger(__name__)

#: test-only hooks, read in the driver and carried to the tasks: crash a worker once mid-step
#: (``KIND:MARKER_FILE``), or hold every builder just before its rename until N have arrived
#: (``DIR:N``), to make two builds of one step race
CRASH_ENV = "EXFM_TEST_CRASH_STEP_ONCE"
BARRIER_ENV = "EXFM_TEST_STEP_BARRIER"


@dataclass(frozen=True)
class StepRun:
    """What a task reports: the step it ran, its in-task seconds, and whether its build was the
    one renamed into place (False: done already, or another worker's rename won)."""

    key: str
    kind: str
    seconds: float
    built_here: bool


@dataclass(frozen=True)
class StepTask:
    """What a worker needs to run one step (or, with ``step=None``, the data steps)."""

    grid: Grid
    store_root: str
    cwd: str
    threads: int
    gpu: bool
    das_engine: str = "inproc"
    step: Step | None = None
    hooks: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda:0" if self.gpu else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned


@dataclass
class RaySummary(RunSummary):
    """A run's counts plus what the engine did: steps run and their in-task seconds (the data
    task, prep, first: it is a task but not in :attr:`steps`)."""

    steps: int = 0
    step_runs: list[StepRun] = field(default_factory=list)
    plan_seconds: float = 0.0


def _setup_worker(task: StepTask) -> None:
    configure_allocator()  # as the exfm CLI does for its own process (allocator.py)
    if os.path.isdir(task.cwd):
        os.chdir(task.cwd)  # the grid's relative paths (base_config) mean what they meant to the driver
    import torch

    torch.set_num_threads(task.threads)


def _test_hook(task: StepTask, tmp: Path) -> None:
    """Test-only (see :data:`CRASH_ENV`, :data:`BARRIER_ENV`): runs inside a step's temporary
    directory, after its files are written and before the rename."""
    crash = task.hooks.get(CRASH_ENV)
    if crash:
        kind, marker = crash.split(":", 1)
        if task.step.kind == kind:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(17)  # the worker dies mid-step, its temporary directory left behind
    barrier = task.hooks.get(BARRIER_ENV)
    if barrier:
        directory, count = barrier.rsplit(":", 1)
        Path(directory, f"{os.getpid()}-{tmp.name}").touch()
        deadline = time.monotonic() + 120
        while len(os.listdir(directory)) < int(count) and time.monotonic() < deadline:
            time.sleep(0.05)


def _context(task: StepTask) -> Context:
    return Context(task.grid, ArtifactStore(task.store_root), task.device, task.das_engine, progress=False)


@ray.remote
def _data_task(task: StepTask) -> tuple[PreparedData, StepRun]:
    _setup_worker(task)
    start = time.perf_counter()
    prep = prepare_data(_context(task))
    return prep, StepRun(prep.key, "prep", time.perf_counter() - start, True)


@ray.remote
def _step_task(task: StepTask, *dep_keys: StepRun) -> StepRun:
    """One step; ``dep_keys`` are its dependencies' results (Ray waited for them)."""
    _setup_worker(task)
    hook = (lambda tmp: _test_hook(task, tmp)) if task.hooks else None
    start = time.perf_counter()
    _, built_here = run_step(_context(task), task.step, on_built=hook)
    return StepRun(task.step.key, task.step.kind, time.perf_counter() - start, built_here)


def _connect(address: str | None, workers: int | None, cpus_per_step: float) -> bool:
    """Join ``address``'s cluster, or start a local Ray with ``workers`` steps' worth of CPUs
    (default: every core). Returns whether this call started Ray (and should stop it)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        cpus = workers * cpus_per_step if workers else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return True


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    cause = cause if isinstance(cause, BaseException) else exc
    return f"{type(cause).__name__}: {cause}"


def run_grid_ray(grid: Grid, work_dir: str = "work", results_dir: str = "results", *, address: str | None = None,
                 workers: int | None = None, cpus_per_step: float = 1.0, gpus_per_step: float = 0.0,
                 das_engine: str = "inproc", progress: bool = True, max_retries: int = 3) -> RaySummary:
    """Run every job of ``grid`` not yet recorded as Ray tasks; the same records as
    :func:`.runner.run_grid` (see the module docstring)."""
    if cpus_per_step <= 0 or gpus_per_step < 0:
        raise GridError(f"--cpus-per-step {cpus_per_step} / --gpus-per-step {gpus_per_step}: expected > 0 and >= 0")
    if workers is not None and (address or workers < 1):
        raise GridError(f"--workers {workers}: a whole number >= 1, for a local Ray only (not with --address)")
    if das_engine not in ("inproc", "ray"):
        raise GridError(f"--das-engine {das_engine!r}: expected 'inproc' or 'ray'")
    start = time.perf_counter()
    writer = RecordWriter(Path(results_dir) / "records" / f"{grid.name}.jsonl")
    summary = RaySummary(grid.name, str(writer.path))
    done = writer.done_cells()
    jobs = [(kind, cell) for kind, cell in grid_jobs(grid) if cell_id(grid, cell) not in done]
    summary.skipped = len(grid_jobs(grid)) - len(jobs)
    if not jobs:
        summary.seconds = time.perf_counter() - start
        return summary
    started = _connect(address, workers, cpus_per_step)
    try:
        _run(grid, jobs, writer, summary, cpus_per_step, gpus_per_step, das_engine, progress, max_retries,
             store_root=str(Path(work_dir).resolve() / "artifacts"))
    finally:
        if started:
            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    return summary


def _run(grid: Grid, jobs: list, writer: RecordWriter, summary: RaySummary, cpus_per_step: float,
         gpus_per_step: float, das_engine: str, progress: bool, max_retries: int, store_root: str) -> None:
    options = dict(num_cpus=cpus_per_step, num_gpus=gpus_per_step, max_retries=max_retries, retry_exceptions=False)
    hooks = {k: os.environ[k] for k in (CRASH_ENV, BARRIER_ENV) if os.environ.get(k)}
    base = StepTask(grid, store_root, os.getcwd(), max(1, int(cpus_per_step)), gpus_per_step > 0, das_engine,
                    hooks=hooks)
    data_options = dict(options, num_gpus=0)  # data preparation is CPU work (polars, h5py)
    prep, data_run = ray.get(_data_task.options(**data_options).remote(replace(base, gpu=False)))
    store = ArtifactStore(store_root)
    ctx = Context(grid, store, progress=False)
    plan_start = time.perf_counter()
    plan = plan_grid(ctx, prep, jobs)
    closures = {r.index: [s.key for s in plan.closure(r)] for r in plan.records}
    summary.plan_seconds = time.perf_counter() - plan_start
    refs = {}
    for step in plan.steps.values():  # dependencies first: their refs exist when a step is submitted
        if store.is_done(step.kind, step.key):
            continue
        deps = [refs[d.key] for d in step.deps if d.key in refs]
        refs[step.key] = _step_task.options(**options).remote(replace(base, step=step), *deps)
    summary.steps = len(refs)
    key_of = {ref: key for key, ref in refs.items()}
    waiting = {i: {k for k in keys if k in refs} for i, keys in closures.items()}
    jobs_of: dict[str, list[int]] = {}
    owner: dict[str, int] = {}  # a step's seconds count in the wall time of the first record needing it
    for i, keys in closures.items():
        for key in keys:
            owner.setdefault(key, i)
            if key in refs:
                jobs_of.setdefault(key, []).append(i)
    runs: dict[str, StepRun] = {}
    errors: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc=f"grid {grid.name} (ray)", unit="cell", disable=not progress)
    results = results_dir_of(writer.path)  # per-cell outputs go beside the records, as in-process

    def finish(i: int) -> None:
        record_plan = plan.records[i]
        kind, cell, cid = record_plan.kind, record_plan.cell, record_plan.cell_id
        record = {**record_base(grid, prep, cell, kind), "cell_id": cid, "config_hash": cid}
        failed = next((errors[k] for k in closures[i] if k in errors), None)
        if record_plan.error is not None:
            failed = f"{type(record_plan.error).__name__}: {record_plan.error}"
        if failed is None:
            t0 = time.perf_counter()
            try:  # every step is built: only read
                measured = record_fields(ctx, record_plan, read_built(store, record_plan.step).meta)
            except Exception as exc:  # noqa: BLE001 - recorded as failed, like the in-process engine
                logger.exception("cell %s failed", cid)
                failed = f"{type(exc).__name__}: {exc}"
            else:
                own = sum(runs[k].seconds for k in closures[i] if k in runs and owner[k] == i)
                measured.update(write_cell_outputs(results, grid, {**record, **measured}, store,
                                                   results / "logs" / f"{grid.name}.log"))
                writer.append({**record, **measured, "status": "ok", "error": None,
                               "wall_time_s": own + time.perf_counter() - t0})
                summary.ok += 1
        if failed is not None:
            writer.append({**record, "status": "failed", "error": failed})
            summary.failed += 1
            summary.failures.append(f"{kind} {cell.teacher}/{cell.student or '-'}/{cell.method}: {failed}")
        bar.update()

    for i, keys in waiting.items():
        if not keys:
            finish(i)  # every step built by an earlier run, or the record could not be planned
    pending = list(refs.values())
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        key = key_of[ready[0]]
        try:
            runs[key] = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a failed step fails the records that need it
            errors[key] = _error_text(exc)
            logger.error("step %s/%s failed: %s", plan.steps[key].kind, key, errors[key])
        for i in jobs_of.get(key, []):
            waiting[i].discard(key)
            if not waiting[i]:
                finish(i)
    bar.close()
    summary.step_runs = [data_run, *runs.values()]
