"""DAS stage 2 and the job directory's small files.

Stage 2 (:func:`assemble`) gives each VM its FM-augmented split: the shard predictions, joined
to the VM's rows by ``example_id``, written with ``write_fm_supervision`` (the predictions plus
external links to the VM's day file), then the manifest that marks the job complete. It is
idempotent (a split already written for this plan is kept) and atomic (every file is
:func:`exfm_plugin.fsutil.atomic_file`), so several workers may run it at once.

Stage 1's ``plan.json`` is not written here but by :func:`~.plan.ensure_plan_file`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import h5py
import numpy as np

from ...data.dayfile import DayFileError, read_day_attrs, write_fm_supervision
from ...fsutil import is_temp_name, write_json_atomic
from .engines import ID_COLUMN
from .plan import MANIFEST_FILE, SHARD_DIR, AugmentError, AugmentJob, JobPlan

__all__ = ["assemble", "manifest_is_current"]

logger = logging.getLogger("exfm_plugin.das.assemble")  # the name before das/ became subpackages

#: stage 2 removes temp files of killed writers once they are this old (seconds)
ORPHAN_TEMP_AGE = 600.0


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
        if list(plan.outputs.values()) == [None]:  # a single-task FM: one unlabelled column
            sup: np.ndarray | dict[str, np.ndarray] = preds[next(iter(plan.outputs))][pos]
        else:
            column_of = {label: column for column, label in plan.outputs.items()}
            sup = {t: preds[column_of[t]][pos] for t in (vm.tasks or list(column_of))}
        write_fm_supervision(vm.day_file, out, sup, snapshot_id=job.snapshot_id,
                             attrs={"vm_name": vm.name, "das_job_id": job.job_id, "das_plan": plan.fingerprint})
    manifest = {"job_id": job.job_id, "snapshot_id": job.snapshot_id, "day": job.day,
                "plan": plan.fingerprint, "rows": plan.shared.num_rows, "shards": len(plan.shards),
                "splits": {name: os.path.basename(p) for name, p in outputs.items()}}
    write_json_atomic(os.path.join(job.job_dir, MANIFEST_FILE), manifest)
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
                if is_temp_name(entry.name):
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
