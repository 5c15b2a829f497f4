"""The DAS updater: polls the SPD and records the newest valid snapshot in the metadata store.

Every DAS task may run an updater (no primary): racing updaters resolve through the store's
compare-and-set, so exactly one records a given snapshot and the others re-read and find it
already current. While no newer snapshot appears, each poll extends the current snapshot's
lease (the paper: "the lease is extended at a fixed period until a newer snapshot is found");
once a snapshot is replaced, its lease runs out and the updater garbage-collects its files.
A snapshot that never became current (published before a newer one was recorded, or refused as
corrupt) is collected once it is older than the current one and than the lease.

A corrupt snapshot (checksum mismatch, missing file) is never recorded: it is logged once,
remembered, and the newest valid snapshot older than it is considered instead.
"""
from __future__ import annotations

import logging
import threading
import time

from ..metastore import LeaseLostError, MetadataStore, MetastoreError, SnapshotLease
from ..spd import SnapshotInfo, SnapshotNotFound, SnapshotStore, SPDError

__all__ = ["Updater"]

logger = logging.getLogger("exfm_plugin.das.updater")  # the name before das/ became subpackages

_MAX_RACES = 5  # compare-and-set attempts per poll before giving up until the next poll


class Updater:
    """Polls ``spd`` and keeps ``store``'s current snapshot pointer on its newest valid snapshot.

    ``lease_seconds`` must exceed ``poll_interval``: the lease is renewed once per poll, and a
    lease shorter than the poll period would lapse between polls.
    """

    def __init__(self, spd: SnapshotStore, store: MetadataStore, *, owner: str,
                 lease_seconds: float, poll_interval: float) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval={poll_interval!r} must be positive")
        if not lease_seconds > poll_interval:
            raise ValueError(f"lease_seconds={lease_seconds!r} must be longer than poll_interval="
                             f"{poll_interval!r}, or the lease lapses between two extensions")
        self.spd = spd
        self.store = store
        self.owner = owner
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = float(poll_interval)
        self._verified: set[str] = set()  # checksums good: not hashed again
        self._refused: dict[str, str] = {}  # snapshot id -> why (corrupt): never recorded

    @property
    def refused(self) -> dict[str, str]:
        """Snapshots this updater refused to record, with the reason."""
        return dict(self._refused)

    # ------------------------------------------------------------------ one poll
    def poll_once(self) -> str | None:
        """Record a newer valid snapshot or extend the current lease, then collect garbage.

        Returns the current snapshot id after the poll (None if there is none, or if the store
        could not be reached / the lease may be lost: nothing was written then, the next poll retries).
        """
        try:
            current = self._update()
        except LeaseLostError as e:
            logger.warning("updater %s: lease may be lost, nothing written; retrying next poll: %s", self.owner, e)
            return None
        except MetastoreError as e:
            logger.warning("updater %s: metadata store error, retrying next poll: %s", self.owner, e)
            return None
        try:
            self.collect_garbage(current)
        except MetastoreError as e:
            logger.warning("updater %s: garbage collection deferred to the next poll: %s", self.owner, e)
        return current

    def _update(self) -> str | None:
        for _ in range(_MAX_RACES):
            # Read the pointer before listing: a snapshot is published before it is recorded, so
            # the listing then holds the current one (unless it was deleted) and every older one.
            cur = self.store.get_current()
            snapshots = self.spd.list()
            candidate = self._newest_valid_newer_than(snapshots, cur)
            if candidate is not None:
                expected = cur.version if cur is not None else None
                if self.store.compare_and_set_current(candidate.snapshot_id, expected_version=expected,
                                                      owner=self.owner, lease_seconds=self.lease_seconds):
                    logger.info("updater %s: recorded snapshot %s (was %s)", self.owner, candidate.snapshot_id,
                                cur.snapshot_id if cur else None)
                    return candidate.snapshot_id
                logger.info("updater %s: another task changed the current snapshot first; re-reading", self.owner)
            elif cur is None:
                return None  # nothing published yet
            elif self.store.extend_lease(cur.snapshot_id, owner=self.owner, lease_seconds=self.lease_seconds):
                logger.debug("updater %s: extended the lease of %s", self.owner, cur.snapshot_id)
                return cur.snapshot_id
            else:
                logger.info("updater %s: %s stopped being current while extending; re-reading",
                            self.owner, cur.snapshot_id)
        logger.warning("updater %s: lost %d races in one poll; retrying next poll", self.owner, _MAX_RACES)
        return cur.snapshot_id if cur is not None else None

    def _newest_valid_newer_than(self, snapshots: list[SnapshotInfo],
                                 cur: SnapshotLease | None) -> SnapshotInfo | None:
        """The newest snapshot newer than ``cur`` whose files verify; corrupt ones are skipped."""
        floor = None
        if cur is not None:
            known = {s.snapshot_id: s for s in snapshots}
            if cur.snapshot_id in known:
                floor = known[cur.snapshot_id].sort_key
            else:
                logger.warning("updater %s: current snapshot %s is not in %s; any valid snapshot replaces it",
                               self.owner, cur.snapshot_id, self.spd.root)
        for info in reversed(snapshots):
            if floor is not None and info.sort_key <= floor:
                return None
            if cur is not None and info.snapshot_id == cur.snapshot_id:
                return None
            if self._valid(info.snapshot_id):
                return info
        return None

    def _valid(self, snapshot_id: str) -> bool:
        if snapshot_id in self._verified:
            return True
        if snapshot_id in self._refused:
            return False
        try:
            self.spd.verify(snapshot_id)
        except SnapshotNotFound:
            return False  # deleted meanwhile
        except SPDError as e:
            self._refused[snapshot_id] = str(e)
            logger.error("updater %s: refusing snapshot %s: %s", self.owner, snapshot_id, e)
            return False
        self._verified.add(snapshot_id)
        return True

    # ------------------------------------------------------------------ garbage collection
    def collect_garbage(self, current: str | None = None) -> list[str]:
        """Delete from the SPD every replaced snapshot whose lease has expired; never the current.

        The store forgets a snapshot first (an atomic check that it is expired and not current)
        and the files go only if it agreed. Returns the deleted ids.
        """
        if current is None:
            lease = self.store.get_current()
            current = lease.snapshot_id if lease is not None else None
        deleted = []
        for snapshot_id in self.store.expired_snapshots():
            if snapshot_id == current:
                logger.error("updater %s: store listed the current snapshot %s as expired; not collecting it",
                             self.owner, snapshot_id)
                continue
            if not self.store.mark_collected(snapshot_id):
                continue  # current again, or collected by another task
            try:
                self.spd.delete(snapshot_id)
            except SnapshotNotFound:
                logger.info("updater %s: expired snapshot %s already gone from the SPD", self.owner, snapshot_id)
                continue
            except OSError as e:
                logger.error("updater %s: could not delete expired snapshot %s: %s", self.owner, snapshot_id, e)
                continue
            self._verified.discard(snapshot_id)
            deleted.append(snapshot_id)
            logger.info("updater %s: garbage-collected snapshot %s", self.owner, snapshot_id)
        return deleted + self.collect_never_current(current)

    def collect_never_current(self, current: str | None, now: float | None = None) -> list[str]:
        """Delete the snapshots that never became current and never will: older than the current
        one (the updater only ever records newer ones), not retired (those follow their lease above)
        and published more than ``lease_seconds`` ago (a job pinned to one had that long to load it).
        Corrupt snapshots the updater refused are among them. Returns the deleted ids."""
        if current is None:
            return []
        now = time.time() if now is None else now
        snapshots = self.spd.list()
        known = {s.snapshot_id: s for s in snapshots}
        if current not in known:
            return []  # without the current one's age nothing is provably older
        floor = known[current].sort_key
        retired = set(self.store.expired_snapshots(now=float("inf")))  # every retired id, expired or not
        deleted = []
        for info in snapshots:
            if (info.sort_key >= floor or info.snapshot_id == current or info.snapshot_id in retired
                    or info.created_at + self.lease_seconds > now):
                continue
            try:
                self.spd.delete(info.snapshot_id)
            except SnapshotNotFound:
                continue
            except OSError as e:
                logger.error("updater %s: could not delete never-current snapshot %s: %s", self.owner,
                             info.snapshot_id, e)
                continue
            self._verified.discard(info.snapshot_id)
            self._refused.pop(info.snapshot_id, None)
            deleted.append(info.snapshot_id)
            logger.info("updater %s: garbage-collected snapshot %s (never current, older than %s)", self.owner,
                        info.snapshot_id, current)
        return deleted

    # ------------------------------------------------------------------ loop
    def run(self, stop_event: threading.Event) -> None:
        """Poll every ``poll_interval`` seconds until ``stop_event`` is set (run it in a thread)."""
        logger.info("updater %s: polling %s every %.1f s (lease %.1f s)", self.owner, self.spd.root,
                    self.poll_interval, self.lease_seconds)
        while not stop_event.is_set():
            try:
                self.poll_once()
            except Exception:  # a DAS task keeps polling; the next poll may succeed
                logger.exception("updater %s: poll failed", self.owner)
            stop_event.wait(self.poll_interval)
        logger.info("updater %s: stopped", self.owner)
