"""A DAS worker: claims shards, predicts them with the pinned FM snapshot, publishes them.

No task is primary (:func:`run_worker`): any number of processes run the same job; shards are
registered idempotently in the metadata store and claimed with leases; a worker renews its
lease while it predicts, re-checks it before publishing (a worker whose claim expired discards
its output), publishes by atomic rename and then marks the shard done. A killed worker's shard
is claimed again when its lease runs out. A metadata-store connection that drops (ZooKeeper
SUSPENDED) stops the lease writes and waits for it; back within the session timeout
(RECONNECTED), the leases are re-checked and the work goes on; a lost session stops the worker
cleanly. Whichever worker sees every shard done runs stage 2
(:func:`.assemble.assemble`). The FM is deterministic, so N workers with kills produce the
same files as one worker without.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from ...fsutil import atomic_file
from ..metastore import DONE, LeaseLostError, MetadataStore, MetastoreError, MetastoreUnavailable
from .assemble import assemble, manifest_is_current
from .engines import ID_COLUMN, Engine, InProcessEngine, ShardAbandoned
from .plan import AugmentError, AugmentJob, JobPlan, check_job, default_owner, ensure_plan_file, plan_job

__all__ = ["SLOW_SHARD_ENV", "WorkerReport", "run_worker"]

logger = logging.getLogger("exfm_plugin.das.worker")  # the name before das/ became subpackages

#: Test hook: seconds a worker sleeps after predicting a shard and before publishing it, so a
#: test can SIGKILL a worker mid-shard or let its lease expire. Never set it in production.
SLOW_SHARD_ENV = "EXFM_DAS_TEST_SHARD_DELAY"


class _ClaimLost(Exception):
    """The shard's claim could not be vouched for at publish time: its output is discarded."""


#: connection errors: the store could not be reached, nothing was refused
_CONNECTION = (LeaseLostError, MetastoreUnavailable)


class _LeaseKeeper:
    """Renews a shard claim every ``lease/3`` s in a thread; ``lost`` once a renewal is refused.

    A renewal that fails on the connection (ZooKeeper SUSPENDED) is not a refusal: the keeper
    stops writing and waits, while the claim written last is still valid on the server, for the
    store to be usable again (RECONNECTED, leases re-verified), then renews at once. Only a
    refusal, a lost session or a claim that ran out while waiting make it ``lost``.
    """

    def __init__(self, store: MetadataStore, job_id: str, shard_id: str, owner: str, lease_seconds: float) -> None:
        self.store, self.job_id, self.shard_id = store, job_id, shard_id
        self.owner, self.lease_seconds = owner, lease_seconds
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{shard_id}", daemon=True)
        self.renewed_at = time.time()  # the claim was just taken (claim_shard)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _run(self) -> None:
        wait = self.lease_seconds / 3
        while not self._stop.wait(wait):
            wait = self.lease_seconds / 3
            try:
                ok = self.store.renew_shard(self.job_id, self.shard_id, self.owner, self.lease_seconds)
                if ok:
                    self.renewed_at = time.time()
            except _CONNECTION as exc:
                remaining = self.renewed_at + self.lease_seconds - time.time()
                logger.warning("job %s shard %s: renewal not sent (%s); waiting up to %.1f s for the connection",
                               self.job_id, self.shard_id, exc, remaining)
                if self.store.wait_until_usable(remaining, should_stop=self._stop.is_set):
                    wait = 0.0  # reconnected: renew right away
                    continue
                ok = self._stop.is_set()  # stopped while waiting: the publish check decides
            except MetastoreError as exc:
                logger.warning("job %s shard %s: lease renewal failed (%s)", self.job_id, self.shard_id, exc)
                ok = False
            if not ok:
                self._lost.set()
                return

    def __enter__(self) -> "_LeaseKeeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (idempotent): before the final check, so no renewal races it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def _write_shard(path: str, result: Mapping[str, np.ndarray], outputs: Sequence[str],
                 attrs: Mapping[str, Any]) -> None:
    """A shard's predictions: ``example_id`` and one float32 column per FM output."""
    with h5py.File(path, "w") as f:
        f.create_dataset(ID_COLUMN, data=np.asarray(result[ID_COLUMN], dtype=np.int64))
        for name in outputs:
            f.create_dataset(name, data=np.asarray(result[name], dtype=np.float32))
        for k, v in attrs.items():
            f.attrs[k] = v


def _after_reconnect(store: MetadataStore, what: str, call: Callable[[], Any]) -> Any:
    """``call()``; on a connection error wait (up to the store's reconnect wait) for the store
    to be usable and call again. Raises the error when it does not come back or the session is
    lost: the caller stops cleanly and its claims are taken over when their leases end."""
    while True:
        try:
            return call()
        except _CONNECTION as exc:
            if store.reconnect_wait <= 0 or store.session_lost:
                raise
            logger.warning("%s: %s; waiting up to %.1f s for the metadata store", what, exc, store.reconnect_wait)
            if not store.wait_until_usable(store.reconnect_wait):
                raise MetastoreUnavailable(f"{what}: the metadata store {store.url} did not come back within "
                                           f"{store.reconnect_wait:g} s (or its session was lost); this worker "
                                           "stops, its shards are claimed by others when their leases end") from exc


def _claim_held(store: MetadataStore, job: AugmentJob, shard_id: str, owner: str, lease_seconds: float) -> bool:
    """Renew the claim right before publishing, so a worker whose claim expired (paused,
    partitioned) never publishes. A dropped connection is waited for, not taken as a loss."""
    try:
        held = _after_reconnect(store, f"job {job.job_id} shard {shard_id}: check the claim",
                                lambda: store.renew_shard(job.job_id, shard_id, owner, lease_seconds))
    except _CONNECTION as exc:
        logger.warning("job %s shard %s: cannot vouch for the claim (%s)", job.job_id, shard_id, exc)
        held = False
    if not held:
        logger.warning("job %s shard %s: %s lost its claim; discarding its output", job.job_id, shard_id, owner)
    return held


def _complete_shard(store: MetadataStore, job: AugmentJob, shard_id: str, owner: str) -> bool:
    """Mark a published shard done; False if the claim expired in between (it will be redone)."""
    try:
        done = _after_reconnect(store, f"job {job.job_id} shard {shard_id}: mark done",
                                lambda: store.complete_shard(job.job_id, shard_id, owner))
    except _CONNECTION as exc:
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
    ensure_plan_file(plan)
    report = WorkerReport(owner, job.job_id)
    if manifest_is_current(plan):
        logger.info("job %s is already complete (%s)", job.job_id, job.job_dir)
        report.complete = True
        report.outputs = {vm.name: job.vm_output(vm) for vm in job.vms}
        return report
    _after_reconnect(store, f"job {job.job_id}: register shards",
                     lambda: store.register_shards(job.job_id, list(plan.shards)))
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
                shard_id = _after_reconnect(store, f"job {job.job_id}: claim a shard",
                                            lambda: store.claim_shard(job.job_id, owner, lease_seconds))
                if shard_id is not None:
                    _run_shard(store, plan, eng, shard_id, owner, lease_seconds, report)
                    bar.update(1)
                    continue
                status = _after_reconnect(store, f"job {job.job_id}: read the shards",
                                          lambda: store.job_status(job.job_id))
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
        try:
            # written while the claim is still being renewed; renamed into place (atomic: no
            # half-written shard is ever seen) only if the claim still holds after renewals stop
            with atomic_file(job.shard_path(shard_id)) as tmp:
                _write_shard(tmp, result, list(plan.outputs),
                             {"snapshot_id": job.snapshot_id, "job_id": job.job_id, "shard_id": shard_id,
                              "plan": plan.fingerprint, "num_rows": stop - start, "owner": owner})
                keeper.stop()
                if not _claim_held(store, job, shard_id, owner, lease_seconds):
                    raise _ClaimLost(shard_id)
        except _ClaimLost:
            report.shards_discarded.append(shard_id)
            return
    if _complete_shard(store, job, shard_id, owner):
        report.shards_done.append(shard_id)
        report.rows_predicted += stop - start
    else:
        report.shards_discarded.append(shard_id)
