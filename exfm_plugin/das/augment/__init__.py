"""The DAS augmenter: the paper's two stages for one day (Sec. 3.2), run by equal workers.

Stage 1 joins every VM's rows of the day into one shared dataset keyed by ``example_id`` (a row
that several VMs share appears once), cuts it into shards of ``shard_rows`` rows and predicts
each shard once with the FM snapshot pinned for the job, writing the shard's predictions as a
small HDF5 file (``example_id`` + ``fm_pred`` or ``fm_pred/<label>`` per FM task). Stage 2 gives
each VM its own FM-augmented split (``write_fm_supervision``: the predictions, joined to the
VM's rows by ``example_id``, plus external links to the VM's day file).

No task is primary (:func:`run_worker`): any number of processes run the same job, share the
shards through leases in the metadata store, and any of them may be killed; whichever worker
sees every shard done runs stage 2, which is idempotent and atomic.

Layout under ``out_dir/<job_id>/`` (``job_id = f"{day}-{snapshot_id}"``)::

    plan.json           the stage-1 plan (inputs, shard boundaries, fingerprint); first writer wins
    shards/<id>.h5      stage-1 predictions of one shard
    <vm>.h5             stage-2 FM-augmented split of one VM (links to the VM's day file)
    manifest.json       written last: the job is complete

The pieces, one module each, in the order a worker uses them: :mod:`.plan` (the job, its
checks against the snapshot, the stage-1 plan and ``plan.json``), :mod:`.shared` (the shared
dataset), :mod:`.worker` (claiming, predicting and publishing shards; stage 1),
:mod:`.engines` (in-process or Ray inference of one shard), :mod:`.assemble` (stage 2 and the
manifest). This package is the public entry point and re-exports them.
"""
from __future__ import annotations

from .assemble import assemble, manifest_is_current
from .engines import Engine, InProcessEngine, RayEngine, make_engine
from .plan import (AugmentError, AugmentJob, JobPlan, VMSpec, check_job, default_owner, plan_job,
                   snapshot_feature_columns, snapshot_outputs)
from .shared import SharedDataset
from .worker import SLOW_SHARD_ENV, WorkerReport, run_worker

__all__ = ["SLOW_SHARD_ENV", "AugmentError", "AugmentJob", "Engine", "InProcessEngine", "JobPlan", "RayEngine",
           "SharedDataset", "VMSpec", "WorkerReport", "assemble", "check_job", "default_owner", "make_engine",
           "manifest_is_current", "plan_job", "run_worker", "snapshot_feature_columns", "snapshot_outputs"]
