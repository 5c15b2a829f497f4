"""The DAS augmenter: the paper's two stages for one day (Sec. 3.2), run by equal workers.

Stage 1 joins every VM's rows of the day into one shared dataset keyed by ``example_id`` (a row
that several VMs share appears once), cuts it into shards of ``shard_rows`` rows and predicts
each shard once with the FM snapshot pinned for the job, writing the shard's predictions as a
small HDF5 file (``example_id`` + ``fm_pred`` or ``fm_pred/<label>`` per FM task). Stage 2 gives
each VM its own FM-augmented split (``write_fm_supervision``: the predictions, joined to the
VM's rows by ``example_id``, plus external links to the VM's day file).

No task is primary (:func:`run_worker`): any number of processes run the same job; shards are
registered idempotently in the metadata store and claimed with leases; a worker renews its
lease while it predicts, re-checks it before publishing (a worker whose claim expired discards
its output), publishes by atomic rename and then marks the shard done. A killed worker's shard
is claimed again when its lease runs out. Whichever worker sees every shard done runs stage 2,
which is idempotent and atomic, so two workers doing it at once is harmless. The FM is
deterministic, so N workers with kills produce the same files as one worker without.

Layout under ``out_dir/<job_id>/`` (``job_id = f"{day}-{snapshot_id}"``)::

    plan.json           the stage-1 plan (inputs, shard boundaries, fingerprint); first writer wins
    shards/<id>.h5      stage-1 predictions of one shard
    <vm>.h5             stage-2 FM-augmented split of one VM (links to the VM's day file)
    manifest.json       written last: the job is complete

Why the shared dataset is an index and not a copy: the join only has to say, for each distinct
``example_id``, which VM file and row hold its features; a shard gathers those rows straight
from the VM files. Copying every feature column into a shared file would double the day's I/O
for no gain (the labels stay in each VM's own file and reach its split through the links).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..data.dayfile import FM_PRED, DayFileError, get_column, open_day_file, read_day_attrs, write_fm_supervision
from .engines import ID_COLUMN, Engine, InProcessEngine, ShardAbandoned
from .metastore import DONE, LeaseLostError, MetadataStore, MetastoreError

from ..fsutil import fsync_dir

logger = logging.getLogger(__name__)

__all__ = ["AugmentError", "AugmentJob", "JobPlan", "SharedDataset", "VMSpec", "WorkerReport",
           "assemble", "check_job", "default_owner", "plan_job", "run_worker"]

PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
#: Test hook: seconds a worker sleeps after predicting a shard and before publishing it, so a
#: test can SIGKILL a worker mid-shard or let its lease expire. Never set it in production.
SLOW_SHARD_ENV = "EXFM_DAS_TEST_SHARD_DELAY"
#: stage 2 removes temp files of killed writers once they are this old (seconds)
ORPHAN_TEMP_AGE = 600.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: reads of one VM file's rows for a shard: runs closer than this many rows are read as one slab,
#: and no slab is longer than _MAX_SPAN rows (memory stays bounded by the shard, not the file)
_GAP_ROWS = 4096
_MAX_SPAN = 1 << 16


class AugmentError(ValueError):
    """The job cannot run as asked: incompatible snapshot, unknown task, inconsistent inputs."""


# --------------------------------------------------------------------------- job description
@dataclass(frozen=True)
class VMSpec:
    """One vertical model's rows of the day.

    ``tasks``: for a multi-task FM, the labels whose ``fm_pred/<label>`` this VM gets
    (``None``: every task). A single-task FM has one head; naming its label is allowed.
    """

    name: str
    day_file: str
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise AugmentError(f"VM name {self.name!r}: use letters, digits, '_', '.', '-' (it names a file)")
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))
            if not self.tasks:
                raise AugmentError(f"VM {self.name!r}: tasks is empty; use None for every FM task")

    @classmethod
    def parse(cls, text: str) -> "VMSpec":
        """``NAME=PATH`` or ``NAME@TASK[,TASK]=PATH`` (the CLI's ``--day-files``)."""
        if "=" not in text:
            raise AugmentError(f"--day-files {text!r}: expected NAME=PATH or NAME@TASK[,TASK]=PATH")
        left, path = text.split("=", 1)
        name, _, tasks = left.partition("@")
        return cls(name, path, tuple(t for t in tasks.split(",") if t) if tasks else None)


@dataclass(frozen=True)
class AugmentJob:
    """One day's augmentation with one pinned snapshot; ``job_id = f"{day}-{snapshot_id}"``."""

    vms: tuple[VMSpec, ...]
    snapshot_id: str
    out_dir: str
    day: int
    shard_rows: int = 65536

    def __post_init__(self) -> None:
        object.__setattr__(self, "vms", tuple(self.vms))
        if not self.vms:
            raise AugmentError("a job needs at least one VM")
        names = [vm.name for vm in self.vms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise AugmentError(f"VM names must be unique; repeated: {dup}")
        if self.shard_rows < 1:
            raise AugmentError(f"shard_rows={self.shard_rows} must be >= 1")

    @property
    def job_id(self) -> str:
        return f"{self.day}-{self.snapshot_id}"

    @property
    def job_dir(self) -> str:
        return os.path.join(os.path.abspath(self.out_dir), self.job_id)

    def vm_output(self, vm: VMSpec | str) -> str:
        """Path of a VM's FM-augmented split."""
        return os.path.join(self.job_dir, f"{vm if isinstance(vm, str) else vm.name}.h5")

    def shard_path(self, shard_id: str) -> str:
        return os.path.join(self.job_dir, SHARD_DIR, f"{shard_id}.h5")

    @classmethod
    def from_day_files(cls, vms: Sequence[VMSpec], snapshot_id: str, out_dir: str, *,
                       day: int | None = None, shard_rows: int = 65536) -> "AugmentJob":
        """A job whose day is read from the VMs' day files (they must agree) unless given."""
        if day is None:
            days = {vm.name: int(read_day_attrs(vm.day_file)["day"]) for vm in vms}
            if len(set(days.values())) != 1:
                raise AugmentError(f"the VMs' day files are of different days {days}; pass day= explicitly")
            day = next(iter(days.values()))
        return cls(tuple(vms), snapshot_id, out_dir, int(day), int(shard_rows))


def default_owner() -> str:
    """A worker name unique on the cluster: host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- snapshot checks
def snapshot_feature_columns(loaded: Any) -> list[str]:
    """The day-file columns the FM reads: its feature map's features, ``meta`` ones excluded."""
    fmap = loaded.feature_map
    return [name for name, spec in fmap.features.items() if spec.get("type") != "meta"]


def snapshot_outputs(loaded: Any) -> dict[str, str | None]:
    """Prediction column -> task label: ``{"fm_pred": None}`` or ``{"fm_pred/<label>": label}``."""
    info = loaded.info
    if info.multitask:
        return {f"{FM_PRED}/{label}": label for label in info.labels}
    return {FM_PRED: None}


def check_job(job: AugmentJob, loaded: Any) -> None:
    """Every check that can fail before any work: the snapshot's feature map against each VM's day
    file (``check_compatible`` names the mismatched features) and each VM's tasks against the FM's."""
    from .spd import FeatureMapMismatch

    if loaded.snapshot_id != job.snapshot_id:
        raise AugmentError(f"job {job.job_id} is pinned to snapshot {job.snapshot_id}, but the loaded "
                           f"snapshot is {loaded.snapshot_id}")
    outputs = snapshot_outputs(loaded)
    fm_tasks = [t for t in outputs.values() if t is not None]
    single_label = None if fm_tasks else (list(loaded.info.labels) or [None])[0]
    for vm in job.vms:
        attrs = read_day_attrs(vm.day_file)
        cols = {c["name"] for c in attrs["columns"]}
        if ID_COLUMN not in cols:
            raise DayFileError(f"{vm.day_file} (VM {vm.name!r}): no {ID_COLUMN!r} column; DAS joins the VMs' "
                               f"rows by it (exfm prep writes it)")
        try:
            loaded.check_compatible(attrs)
        except FeatureMapMismatch as exc:  # the same error, saying which VM and file
            err = FeatureMapMismatch(exc.snapshot_id, exc.mismatches)
            err.args = (f"VM {vm.name!r} day file {vm.day_file}: {exc}",)
            raise err from exc
        if vm.tasks is None:
            continue
        known = fm_tasks or [single_label]
        unknown = [t for t in vm.tasks if t not in known]
        if unknown:
            raise AugmentError(f"VM {vm.name!r}: task(s) {unknown} are not heads of snapshot "
                               f"{job.snapshot_id}; its tasks are {known}")


# --------------------------------------------------------------------------- stage 1: shared dataset
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

    def __init__(self, vms: Sequence[VMSpec], columns: Sequence[str]) -> None:
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


@dataclass
class JobPlan:
    """What every worker computes identically from the inputs: shard boundaries and a fingerprint."""

    job: AugmentJob
    shared: SharedDataset
    shards: dict[str, tuple[int, int]]
    outputs: dict[str, str | None]
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job.job_id, "snapshot_id": self.job.snapshot_id, "day": self.job.day,
            "shard_rows": self.job.shard_rows, "fingerprint": self.fingerprint,
            "num_rows": self.shared.num_rows, "num_vm_rows": self.shared.num_vm_rows,
            "num_shared_rows": self.shared.num_shared, "outputs": list(self.outputs),
            "columns": self.shared.columns,
            "vms": [{"name": vm.name, "day_file": os.path.abspath(vm.day_file),
                     "tasks": list(vm.tasks) if vm.tasks else None, "rows": int(ids.size)}
                    for vm, ids in zip(self.job.vms, self.shared.vm_ids)],
            "shards": {sid: [a, b] for sid, (a, b) in self.shards.items()},
        }


def plan_job(job: AugmentJob, loaded: Any) -> JobPlan:
    """Stage 1's plan: join the VMs' rows, cut shards, and fingerprint the inputs so that workers
    started with other inputs under the same job id are refused instead of mixing outputs."""
    shared = SharedDataset(job.vms, snapshot_feature_columns(loaded))
    n = shared.num_rows
    width = max(5, len(str(max(0, (n - 1) // job.shard_rows))))
    shards = {f"shard-{k:0{width}d}": (a, min(a + job.shard_rows, n))
              for k, a in enumerate(range(0, n, job.shard_rows))}
    outputs = snapshot_outputs(loaded)
    h = hashlib.sha256()
    h.update(json.dumps({"snapshot": job.snapshot_id, "day": job.day, "shard_rows": job.shard_rows,
                         "outputs": list(outputs), "columns": shared.columns,
                         "vms": [[vm.name, os.path.abspath(vm.day_file), list(vm.tasks or [])] for vm in job.vms]},
                        sort_keys=True).encode())
    h.update(shared.ids.tobytes())
    for ids in shared.vm_ids:
        h.update(ids.tobytes())
    plan = JobPlan(job, shared, shards, outputs, h.hexdigest()[:16])
    logger.info("job %s: %d VM rows -> %d shared rows (%d in several VMs), %d shards of <= %d rows",
                job.job_id, shared.num_vm_rows, n, shared.num_shared, len(shards), job.shard_rows)
    return plan


# --------------------------------------------------------------------------- atomic files
def _tmp_path(path: str) -> str:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return tmp


def _write_json_atomic(path: str, data: Mapping[str, Any], *, exclusive: bool = False) -> bool:
    """Write JSON by temp + fsync + rename; ``exclusive``: only if ``path`` does not exist yet
    (hard link, atomic create-if-absent); returns whether this call created the file."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    fsync_dir(os.path.dirname(path))
    return True


def _ensure_plan_file(plan: JobPlan) -> None:
    """The first worker records the plan; later ones check they were given the same inputs."""
    path = os.path.join(plan.job.job_dir, PLAN_FILE)
    data = plan.to_json()
    if _write_json_atomic(path, data, exclusive=True):
        return
    with open(path) as f:
        old = json.load(f)
    if old.get("fingerprint") != plan.fingerprint:
        diff = sorted(k for k in set(old) | set(data) if k != "fingerprint" and old.get(k) != data.get(k))
        raise AugmentError(f"{path}: job {plan.job.job_id} was planned with other inputs (differs in "
                           f"{diff or ['the example ids']}); use another --out or the same VM day files "
                           f"and --shard-rows")


def _write_shard_tmp(path: str, result: Mapping[str, np.ndarray], outputs: Sequence[str],
                     attrs: Mapping[str, Any]) -> str:
    """Write a shard's predictions to a temp file next to ``path`` (fsync'ed); returns its name."""
    tmp = _tmp_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(ID_COLUMN, data=np.asarray(result[ID_COLUMN], dtype=np.int64))
            for name in outputs:
                f.create_dataset(name, data=np.asarray(result[name], dtype=np.float32))
            for k, v in attrs.items():
                f.attrs[k] = v
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return tmp


# --------------------------------------------------------------------------- lease keeping
class _LeaseKeeper:
    """Renews a shard claim every ``lease/3`` s in a thread; ``lost`` once a renewal is refused."""

    def __init__(self, store: MetadataStore, job_id: str, shard_id: str, owner: str, lease_seconds: float) -> None:
        self.store, self.job_id, self.shard_id = store, job_id, shard_id
        self.owner, self.lease_seconds = owner, lease_seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{shard_id}", daemon=True)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                ok = self.store.renew_shard(self.job_id, self.shard_id, self.owner, self.lease_seconds)
            except (LeaseLostError, MetastoreError) as exc:
                logger.warning("job %s shard %s: lease renewal failed (%s)", self.job_id, self.shard_id, exc)
                ok = False
            if not ok:
                self._lost.set()
                return

    def __enter__(self) -> "_LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- stage 2
def _read_shard(path: str, job: AugmentJob, plan: JobPlan) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        sid = f.attrs.get("snapshot_id")
        fp = f.attrs.get("plan")
        if sid != job.snapshot_id or fp != plan.fingerprint:
            raise AugmentError(f"{path}: shard of snapshot {sid!r} plan {fp!r}, expected snapshot "
                               f"{job.snapshot_id!r} plan {plan.fingerprint!r}")
        return {name: f[name][...] for name in [ID_COLUMN, *plan.outputs]}


def _split_is_current(path: str, job: AugmentJob, plan: JobPlan) -> bool:
    try:
        attrs = read_day_attrs(path)
    except (OSError, DayFileError):
        return False
    return attrs.get("das_job_id") == job.job_id and attrs.get("das_plan") == plan.fingerprint


def assemble(plan: JobPlan) -> dict[str, str]:
    """Stage 2: every VM's FM-augmented split from the shard files, then the manifest.

    Idempotent (a split already written for this plan is kept) and atomic (each file is
    temp + rename), so workers may run it at the same time. Returns VM name -> split path.
    """
    job = plan.job
    missing = [sid for sid in plan.shards if not os.path.exists(job.shard_path(sid))]
    if missing:
        raise AugmentError(f"job {job.job_id}: the metadata store says every shard is done, but "
                           f"{len(missing)} shard file(s) are missing under {job.job_dir}/{SHARD_DIR} "
                           f"(e.g. {missing[0]}.h5): was the job run before with another --out? "
                           f"Use the same --out or another metadata store")
    ids = plan.shared.ids
    preds = {name: np.empty(ids.size, dtype=np.float32) for name in plan.outputs}
    for sid, (a, b) in plan.shards.items():
        data = _read_shard(job.shard_path(sid), job, plan)
        if not np.array_equal(data[ID_COLUMN], ids[a:b]):
            raise AugmentError(f"{job.shard_path(sid)}: example ids differ from the plan's rows [{a}, {b})")
        for name in plan.outputs:
            preds[name][a:b] = data[name]
    by_id = np.argsort(ids, kind="stable")  # shared order -> id order, for the joins below
    ids = ids[by_id]
    preds = {name: p[by_id] for name, p in preds.items()}
    outputs: dict[str, str] = {}
    for vm, vm_ids in zip(job.vms, plan.shared.vm_ids):
        out = job.vm_output(vm)
        outputs[vm.name] = out
        if _split_is_current(out, job, plan):
            logger.info("job %s: split of VM %s already written (%s)", job.job_id, vm.name, out)
            continue
        pos = np.searchsorted(ids, vm_ids)  # every VM id is in the union by construction
        if plan.outputs == {FM_PRED: None} or list(plan.outputs) == [FM_PRED]:
            sup: np.ndarray | dict[str, np.ndarray] = preds[FM_PRED][pos]
        else:
            wanted = vm.tasks or [t for t in plan.outputs.values()]
            sup = {t: preds[f"{FM_PRED}/{t}"][pos] for t in wanted}
        write_fm_supervision(vm.day_file, out, sup, snapshot_id=job.snapshot_id,
                             attrs={"vm_name": vm.name, "das_job_id": job.job_id, "das_plan": plan.fingerprint})
    manifest = {"job_id": job.job_id, "snapshot_id": job.snapshot_id, "day": job.day,
                "plan": plan.fingerprint, "rows": plan.shared.num_rows, "shards": len(plan.shards),
                "splits": {name: os.path.basename(p) for name, p in outputs.items()}}
    _write_json_atomic(os.path.join(job.job_dir, MANIFEST_FILE), manifest)
    _remove_orphan_temps(job)
    logger.info("job %s: stage 2 wrote %d VM split(s) in %s", job.job_id, len(outputs), job.job_dir)
    return outputs


def _remove_orphan_temps(job: AugmentJob, older_than: float = ORPHAN_TEMP_AGE) -> None:
    """Temp files of writers killed mid-write. Only old ones: a worker that lost its claim may still
    be writing a temp file it will discard itself, and deleting it under it would crash it."""
    now = time.time()
    for directory in (os.path.join(job.job_dir, SHARD_DIR), job.job_dir):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        if now - entry.stat().st_mtime > older_than:
                            os.remove(entry.path)


def manifest_is_current(plan: JobPlan) -> bool:
    """True if stage 2 already completed for this plan (every output in place)."""
    path = os.path.join(plan.job.job_dir, MANIFEST_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return (data.get("plan") == plan.fingerprint
            and all(os.path.exists(plan.job.vm_output(vm)) for vm in plan.job.vms))


# --------------------------------------------------------------------------- the worker
@dataclass
class WorkerReport:
    """What one :func:`run_worker` call did."""

    owner: str
    job_id: str
    shards_done: list[str] = field(default_factory=list)
    shards_discarded: list[str] = field(default_factory=list)
    rows_predicted: int = 0
    assembled: bool = False
    complete: bool = False
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _commit_shard(store: MetadataStore, plan: JobPlan, shard_id: str, owner: str, lease_seconds: float,
                  tmp: str) -> bool:
    """Re-check the claim, rename the written temp file into place, mark the shard done.

    The check renews the claim right before the rename, so a worker whose claim expired (paused,
    partitioned) never publishes; the rename is atomic, so no half-written shard is ever seen.
    """
    job = plan.job
    path = job.shard_path(shard_id)
    try:
        try:
            held = store.renew_shard(job.job_id, shard_id, owner, lease_seconds)
        except LeaseLostError as exc:
            logger.warning("job %s shard %s: cannot vouch for the claim (%s)", job.job_id, shard_id, exc)
            held = False
        if not held:
            logger.warning("job %s shard %s: %s lost its claim; discarding its output", job.job_id, shard_id, owner)
            return False
        os.replace(tmp, path)
        tmp = None
        fsync_dir(os.path.dirname(path))
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    try:
        done = store.complete_shard(job.job_id, shard_id, owner)
    except LeaseLostError as exc:
        logger.warning("job %s shard %s: completion not confirmed (%s); it will be redone", job.job_id, shard_id, exc)
        done = False
    if not done:  # the file is what any owner would write (deterministic FM): a redo replaces it
        logger.warning("job %s shard %s: claim expired between publish and completion", job.job_id, shard_id)
    return done


def _slow_hook() -> None:
    delay = float(os.environ.get(SLOW_SHARD_ENV, "0") or 0)
    end = time.monotonic() + delay
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def run_worker(job: AugmentJob, store: MetadataStore, owner: str | None = None, lease_seconds: float = 60.0, *,
               loaded: Any = None, snapshots: Any = None,
               engine: Engine | Callable[[Any], Engine] | None = None,
               batch_size: int = 8192, poll_interval: float = 1.0, wait: bool = True,
               progress: bool = True) -> WorkerReport:
    """Run one DAS worker on ``job`` until the job is complete (or, ``wait=False``, nothing is
    left to claim). Any number of workers may run it at once, on any machines sharing ``store``
    and the file system; any of them may be killed at any time.

    ``loaded``: the snapshot, already loaded; else ``snapshots.load(job.snapshot_id)``.
    ``engine``: an :class:`Engine`, or a factory ``loaded -> Engine``; default in-process.
    """
    owner = owner or default_owner()
    if loaded is None:
        if snapshots is None:
            raise ValueError("run_worker needs loaded= or snapshots= (a SnapshotStore)")
        loaded = snapshots.load(job.snapshot_id)
    check_job(job, loaded)
    plan = plan_job(job, loaded)
    _ensure_plan_file(plan)
    report = WorkerReport(owner, job.job_id)
    if manifest_is_current(plan):
        logger.info("job %s is already complete (%s)", job.job_id, job.job_dir)
        report.complete = True
        report.outputs = {vm.name: job.vm_output(vm) for vm in job.vms}
        return report
    store.register_shards(job.job_id, list(plan.shards))
    if engine is None:
        eng: Engine = InProcessEngine(loaded, batch_size)
    elif isinstance(engine, Engine):
        eng = engine
    else:
        eng = engine(loaded)
    bar = tqdm(total=len(plan.shards), desc=f"DAS {job.job_id}", unit="shard", disable=not progress)
    try:
        with plan.shared:
            while True:
                shard_id = store.claim_shard(job.job_id, owner, lease_seconds)
                if shard_id is not None:
                    _run_shard(store, plan, eng, shard_id, owner, lease_seconds, report)
                    bar.update(1)
                    continue
                status = store.job_status(job.job_id)
                if status and all(s.state == DONE for s in status.values()):
                    bar.update(bar.total - bar.n)  # the rest were done by other workers
                    report.outputs = assemble(plan)
                    report.assembled = report.complete = True
                    return report
                if not wait:
                    return report
                time.sleep(poll_interval)
    finally:
        bar.close()
        if engine is None or not isinstance(engine, Engine):
            eng.close()


def _run_shard(store: MetadataStore, plan: JobPlan, engine: Engine, shard_id: str, owner: str,
               lease_seconds: float, report: WorkerReport) -> None:
    job = plan.job
    start, stop = plan.shards[shard_id]
    logger.info("job %s: %s predicts shard %s (rows %d-%d)", job.job_id, owner, shard_id, start, stop)
    with _LeaseKeeper(store, job.job_id, shard_id, owner, lease_seconds) as keeper:
        try:
            columns = plan.shared.read(start, stop)
            result = engine.predict(columns, should_stop=lambda: keeper.lost)
            _slow_hook()
        except ShardAbandoned as exc:
            logger.warning("job %s shard %s: lease lost while predicting (%s); abandoned", job.job_id, shard_id, exc)
            report.shards_discarded.append(shard_id)
            return
        if not np.array_equal(result[ID_COLUMN], columns[ID_COLUMN]):
            raise RuntimeError(f"job {job.job_id} shard {shard_id}: the engine returned rows out of order")
        missing = [name for name in plan.outputs if name not in result]
        if missing:
            raise AugmentError(f"snapshot {job.snapshot_id}: predictions lack {missing}; got {sorted(result)}")
        # written while the claim is still being renewed; published only after the check below
        tmp = _write_shard_tmp(job.shard_path(shard_id), result, list(plan.outputs),
                               {"snapshot_id": job.snapshot_id, "job_id": job.job_id, "shard_id": shard_id,
                                "plan": plan.fingerprint, "num_rows": stop - start, "owner": owner})
    if _commit_shard(store, plan, shard_id, owner, lease_seconds, tmp):
        report.shards_done.append(shard_id)
        report.rows_predicted += stop - start
    else:
        report.shards_discarded.append(shard_id)
