"""The DAS metadata store: the paper's "Zeus" (current snapshot pointer with a lease) and work shards.

All DAS tasks are equal (no primary), so every piece of coordination goes through this store as an
atomic compare-and-set: two updaters racing to publish a snapshot, or two workers racing for a
shard, always produce exactly one winner, and any task may die at any time.

This module holds the contract (:class:`MetadataStore`), its records and its errors, and imports
no backend. Two backends implement it (``tests/das/test_metastore.py`` runs the same tests on both),
and :func:`~.factory.open_metastore` picks one from a URL:

* ``sqlite:///abs/path.db`` or a plain file path: :class:`~.sqlite.SqliteMetadataStore`,
  the embedded default, safe across processes of one machine (WAL, ``BEGIN IMMEDIATE``).
* ``zk://host:port[,host:port]/chroot/path``: :class:`~.zk.ZkMetadataStore` on a real
  ZooKeeper (kazoo), for tasks on several machines.

Leases are absolute unix times computed from the *caller's* wall clock (``time.time()``), as in
kazoo's lease recipe: tasks sharing a store need roughly synchronised clocks (NTP), and a lease
should be much longer than the expected clock skew.
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = [
    "LeaseLostError",
    "MetastoreAccessDenied",
    "MetadataStore",
    "MetastoreError",
    "MetastoreUnavailable",
    "ShardState",
    "SnapshotLease",
]

PENDING, CLAIMED, DONE = "pending", "claimed", "done"
SHARD_STATES = (PENDING, CLAIMED, DONE)


class MetastoreError(RuntimeError):
    """Base class of the metadata store's errors."""


class MetastoreUnavailable(MetastoreError):
    """The store cannot be reached (server down, timeout, database busy for too long)."""


class MetastoreAccessDenied(MetastoreError):
    """The server refused an operation for lack of permission (a ZooKeeper ACL); nothing was written.

    ``path`` is the node, ``permission`` the one that was missing (READ, WRITE, CREATE, DELETE,
    ADMIN). The message is one line and never holds a credential.
    """

    def __init__(self, message: str, *, path: str, permission: str) -> None:
        super().__init__(message)
        self.path = path
        self.permission = permission


class LeaseLostError(MetastoreError):
    """A write that depends on a lease was refused because the lease may have been lost.

    Raised (ZooKeeper) while the connection is suspended or after the session was lost and
    before it was re-verified, or when the connection dropped during the write. Nothing was
    written on a stale lease: the caller must stop relying on the lease, re-read the state
    (:meth:`MetadataStore.get_current`, :meth:`MetadataStore.job_status`) and claim again.
    """


@dataclass(frozen=True)
class SnapshotLease:
    """The current snapshot pointer: which FM snapshot DAS uses, and until when it is leased.

    ``version`` starts at 1 and increases by one on every change (set or lease extension);
    pass it back as ``expected_version`` to compare-and-set.
    """

    snapshot_id: str
    version: int
    lease_expires_at: float
    owner: str
    updated_at: float

    def expired(self, now: float | None = None) -> bool:
        """True once the lease has run out (``now >= lease_expires_at``)."""
        return (time.time() if now is None else now) >= self.lease_expires_at


@dataclass(frozen=True)
class ShardState:
    """One work shard of a job: ``state`` is pending, claimed or done.

    A claimed shard whose lease has expired keeps ``state == "claimed"`` until another owner
    claims it; :meth:`claimable` tells whether :meth:`MetadataStore.claim_shard` may take it.
    """

    shard_id: str
    state: str
    owner: str | None
    lease_expires_at: float | None
    attempts: int

    def claimable(self, now: float | None = None) -> bool:
        """True if pending, or claimed with an expired lease."""
        if self.state == PENDING:
            return True
        if self.state == CLAIMED and self.lease_expires_at is not None:
            return (time.time() if now is None else now) >= self.lease_expires_at
        return False


def validate_name(kind: str, value: str) -> str:
    """Check an id used as a key (a ZooKeeper node name): both backends accept the same ids."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string, got {value!r}")
    if value in (".", "..") or "/" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{kind} {value!r} may not be '.', '..', contain '/' or control characters")
    if len(value.encode("utf-8")) > 200:
        raise ValueError(f"{kind} {value!r} is longer than 200 bytes")
    return value


def validate_lease(lease_seconds: float) -> float:
    """A lease must be a positive, finite number of seconds."""
    if not isinstance(lease_seconds, (int, float)) or not math.isfinite(lease_seconds) or lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be a positive number, got {lease_seconds!r}")
    return float(lease_seconds)


class MetadataStore(abc.ABC):
    """Strongly consistent DAS metadata: the current snapshot with a lease, and leased work shards.

    Every method is atomic. Times are unix seconds from the caller's wall clock.
    Usable as a context manager (closes on exit). One object may be shared by threads.
    """

    url: str

    # ---- current snapshot pointer (Zeus) -------------------------------------------------
    @abc.abstractmethod
    def get_current(self) -> SnapshotLease | None:
        """The current snapshot and its lease, or None if none was ever set."""

    @abc.abstractmethod
    def compare_and_set_current(
        self, snapshot_id: str, *, expected_version: int | None, owner: str, lease_seconds: float
    ) -> bool:
        """Make ``snapshot_id`` current with a fresh lease if the pointer is still at ``expected_version``.

        ``expected_version=None`` means "no current snapshot yet". Of racing updaters that read the
        same version exactly one wins; the others get False and should re-read. The replaced
        snapshot (if different) is remembered with its lease expiry for garbage collection; a
        snapshot that becomes current again is no longer a GC candidate. Setting the same
        snapshot again is allowed (a lease takeover by ``owner``).
        """

    @abc.abstractmethod
    def extend_lease(self, snapshot_id: str, *, owner: str, lease_seconds: float) -> bool:
        """Extend the lease of ``snapshot_id`` to at least now + ``lease_seconds`` while it is current.

        Returns False if another snapshot is current (nothing written). Any task may extend (no
        primary); ``owner`` records who did. Never shortens a lease. Versioned write: an
        extension racing with a replacement never resurrects the replaced snapshot.
        Raises :class:`LeaseLostError` when the store cannot vouch for its connection (ZooKeeper).
        """

    @abc.abstractmethod
    def expired_snapshots(self, now: float | None = None) -> list[str]:
        """Previously-current snapshots whose lease has run out and that are not current (GC candidates)."""

    @abc.abstractmethod
    def mark_collected(self, snapshot_id: str) -> bool:
        """Forget an expired, non-current snapshot; True if it was one and is now forgotten.

        Call it *before* deleting the snapshot's files and delete them only on True: the check
        (expired and not current) and the removal are one atomic step, so a snapshot that became
        current again in between is never collected.
        """

    # ---- work shards ----------------------------------------------------------------------
    @abc.abstractmethod
    def register_shards(self, job_id: str, shard_ids: Iterable[str]) -> None:
        """Add the shards of a job as pending; shards already known keep their state (idempotent)."""

    @abc.abstractmethod
    def claim_shard(self, job_id: str, owner: str, lease_seconds: float) -> str | None:
        """Atomically claim a pending shard, or one whose claim lease has expired; None if none is left.

        Two owners never hold the same shard at the same time. Shards are offered in id order.
        """

    @abc.abstractmethod
    def renew_shard(self, job_id: str, shard_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s claim to now + ``lease_seconds``; False if it no longer holds an unexpired claim.

        Raises :class:`LeaseLostError` when the store cannot vouch for its connection (ZooKeeper).
        """

    @abc.abstractmethod
    def complete_shard(self, job_id: str, shard_id: str, owner: str) -> bool:
        """Mark the shard done if ``owner`` still holds an unexpired claim; a done shard is never claimed again.

        False (nothing written) if the claim expired or was taken over: the work must be treated
        as not delivered. Raises :class:`LeaseLostError` when the store cannot vouch for its
        connection (ZooKeeper); check :meth:`job_status` after reconnecting.
        """

    @abc.abstractmethod
    def job_status(self, job_id: str) -> dict[str, ShardState]:
        """Every shard of the job by id (empty for an unknown job)."""

    # ---- access ------------------------------------------------------------------------------
    def access_summary(self) -> str:
        """One line saying who may change this store (``exfm das status`` prints it)."""
        return "no access control of its own (a local SQLite file is protected only by its file permissions)"

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def lease_possibly_lost(self) -> bool:
        """True while the store cannot vouch that leases it wrote are still valid (connection trouble)."""
        return False

    #: how long a caller may wait for a dropped connection to come back (ZooKeeper: the session
    #: timeout; past it the session, and with it the right to go on, is gone). 0: never drops.
    reconnect_wait: float = 0.0

    @property
    def session_lost(self) -> bool:
        """True once the store's session has expired (ZooKeeper LOST): stop, others take over."""
        return False

    def usable(self) -> bool:
        """Whether every write, lease writes included, can go through now (may re-verify leases)."""
        return True

    def wait_until_usable(self, timeout: float, should_stop: "Callable[[], bool] | None" = None) -> bool:
        """Block until :meth:`usable` (True), or the session is lost, ``timeout`` seconds pass or
        ``should_stop()`` says so (False). Lease-dependent writers call it on a connection error
        instead of giving up: a drop shorter than the session timeout is ridden through."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.session_lost:
                return False
            if self.usable():
                return True
            if time.monotonic() >= deadline or (should_stop is not None and should_stop()):
                return False
            time.sleep(0.05)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; idempotent."""

    def __enter__(self) -> "MetadataStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
