"""The DAS job and its stage-1 plan: what every worker derives identically from the inputs.

A job (:class:`AugmentJob`) is one day's augmentation of some VMs' day files with one pinned
FM snapshot. Before any work, :func:`check_job` refuses a snapshot that does not fit the VMs'
data; :func:`plan_job` then joins the VMs' rows (:class:`~.shared.SharedDataset`), cuts them
into shards and fingerprints the inputs, so that workers started with other inputs under the
same job id are refused instead of mixing outputs; :func:`ensure_plan_file` records the plan
in ``plan.json`` (the first worker) or checks it (the others). The shards are predicted by the
workers (:mod:`.worker`) and stage 2 is :mod:`.assemble`.
"""
from __future__ import annotations

from ...errors import ExfmInputError

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...data.dayfile import DayFileError, read_day_attrs
from ...fsutil import write_json_atomic
from ..spd.compat import FeatureMapMismatch
from .engines import ID_COLUMN
from .shared import SharedDataset

logger = logging.getLogger("exfm_plugin.das.plan")  # the name before das/ became subpackages

__all__ = ["AugmentError", "AugmentJob", "JobPlan", "VMSpec", "check_job", "default_owner", "ensure_plan_file",
           "plan_job", "snapshot_feature_columns", "snapshot_outputs"]

#: the job directory's files and folder (see the layout in :mod:`exfm_plugin.das.augment`)
PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class AugmentError(ExfmInputError):
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
    """The day-file columns the FM reads (:attr:`.snapshot.LoadedSnapshot.feature_columns`)."""
    return list(loaded.feature_columns)


def snapshot_outputs(loaded: Any) -> dict[str, str | None]:
    """Prediction column -> task label: ``{"fm_pred": None}`` or ``{"fm_pred/<label>": label}``."""
    info = loaded.info  # SnapshotInfo.outputs names the columns (contracts.fm_pred_column)
    return dict(zip(info.outputs, info.labels)) if info.multitask else {info.outputs[0]: None}


def check_job(job: AugmentJob, loaded: Any) -> None:
    """Every check that can fail before any work: the snapshot's feature map against each VM's day
    file (``check_compatible`` names the mismatched features) and each VM's tasks against the FM's."""
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


def ensure_plan_file(plan: JobPlan) -> None:
    """The first worker records the plan; later ones check they were given the same inputs."""
    path = os.path.join(plan.job.job_dir, PLAN_FILE)
    data = plan.to_json()
    if write_json_atomic(path, data, exclusive=True):
        return
    with open(path) as f:
        old = json.load(f)
    if old.get("fingerprint") != plan.fingerprint:
        diff = sorted(k for k in set(old) | set(data) if k != "fingerprint" and old.get(k) != data.get(k))
        raise AugmentError(f"{path}: job {plan.job.job_id} was planned with other inputs (differs in "
                           f"{diff or ['the example ids']}); use another --out or the same VM day files "
                           f"and --shard-rows")
