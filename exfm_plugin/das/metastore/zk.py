"""ZooKeeper backend of the DAS metadata store (the paper's Zeus), through kazoo.

Layout under the chroot (created with ``ensure_path``), every payload JSON:

* ``<chroot>/current``: the current snapshot pointer; its znode version is
  :attr:`SnapshotLease.version` (empty data, version 0, until the first snapshot is set).
* ``<chroot>/retired/<snapshot_id>``: previously-current snapshots with their lease expiry.
* ``<chroot>/jobs/<job_id>/<shard_id>``: one znode per work shard.

Every change is a versioned ``set`` (or a ``transaction()`` of check/set/create/delete), so
compare-and-set happens on the server: no client-side locks, and of two racing writers exactly
one wins. Claims are versioned writes of (owner, lease expiry); no ephemeral nodes, so a
claim's life is its lease, the same on both backends.

Leases are unix times from the client's wall clock, like kazoo's lease recipe: clients need
roughly synchronised clocks, and leases much longer than the skew.

The client under the store is :class:`~.zk_session.ZkSession`, whose module docstring
has the rules for connection trouble (the *lease possibly lost* state, re-verification after a
reconnection) and for access control (credentials, ACLs, redacted kazoo logs). This module holds
the records and their compare-and-set rules; callers import the store from here.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable

from kazoo.exceptions import BadVersionError, NoAuthError, NodeExistsError, NoNodeError

from .base import (
    CLAIMED,
    DONE,
    PENDING,
    MetastoreError,
    ShardState,
    SnapshotLease,
    validate_lease,
    validate_name,
)
from .zk_session import ADMIN, CREATE, DELETE, READ, WRITE, ZkSession  # noqa: F401 (ADMIN: re-exported)

logger = logging.getLogger("exfm_plugin.das.metastore_zk")  # the name before das/ became subpackages

_MAX_RETRIES = 100  # re-reads after a lost race on an unrelated node; each retry means someone else progressed


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode("utf-8")


def _decode(data: bytes, path: str) -> dict[str, Any]:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MetastoreError(f"znode {path} holds data that is not JSON: {data[:80]!r}") from e


def _shard(shard_id: str, d: dict[str, Any]) -> ShardState:
    return ShardState(shard_id, d["state"], d.get("owner"), d.get("lease_expires_at"), int(d.get("attempts", 0)))


class ZkMetadataStore(ZkSession):
    """:class:`~.base.MetadataStore` on ZooKeeper (layout and write rules: the module
    docstring; connection trouble and access control: :class:`~.zk_session.ZkSession`)."""

    # ---- held leases -----------------------------------------------------------------------------
    def _recheck_held_leases(self) -> None:
        """After a reconnection (see :meth:`ZkSession._reverify`): forget every lease that is gone."""
        now = time.time()
        with self._held_lock:
            held_current, held_shards = list(self._held_current), list(self._held_shards)
        for snapshot_id in held_current:
            cur, _ = self._read_current(lease=True)
            if cur is None or cur.snapshot_id != snapshot_id:
                logger.warning("snapshot %s stopped being current while disconnected", snapshot_id)
                self._forget(current=snapshot_id)
        for job_id, shard_id in held_shards:
            try:
                st, _ = self._read_shard(job_id, shard_id, lease=True)
            except NoNodeError:
                st = None
            if st is None or st.state != CLAIMED or st.owner is None or not (now < (st.lease_expires_at or 0)):
                logger.warning("claim on shard %s/%s was lost while disconnected", job_id, shard_id)
                self._forget(shard=(job_id, shard_id))

    # ---- small helpers ---------------------------------------------------------------------------
    def _read_current(self, *, lease: bool = False) -> tuple[SnapshotLease | None, Any]:
        try:
            data, stat = self._wait(self._client.get_async(self._current_path), "read the current snapshot",
                                    lease=lease, path=self._current_path, perm=READ)
        except NoNodeError:
            if self.auth is not None and self.auth.read_only:
                return None, None  # a read-only client on a namespace no task has finished creating
            raise
        if not data:
            return None, stat
        d = _decode(data, self._current_path)
        return SnapshotLease(d["snapshot_id"], stat.version, d["lease_expires_at"], d["owner"], d["updated_at"]), stat

    def _shard_path(self, job_id: str, shard_id: str) -> str:
        return f"{self._jobs_path}/{job_id}/{shard_id}"

    def _read_shard(self, job_id: str, shard_id: str, *, lease: bool = False) -> tuple[ShardState, Any]:
        path = self._shard_path(job_id, shard_id)
        data, stat = self._wait(self._client.get_async(path), f"read shard {job_id}/{shard_id}", lease=lease,
                                path=path, perm=READ)
        return _shard(shard_id, _decode(data, path)), stat

    def _read_children(self, parent: str, what: str) -> dict[str, tuple[dict[str, Any], Any]]:
        """Read all children of ``parent`` in parallel; children deleted meanwhile are skipped."""
        try:
            names = self._wait(self._client.get_children_async(parent), what, path=parent, perm=READ)
        except NoNodeError:
            return {}
        pending = [(n, self._client.get_async(f"{parent}/{n}")) for n in sorted(names)]
        out = {}
        for name, res in pending:
            try:
                data, stat = self._wait(res, what, path=f"{parent}/{name}", perm=READ)
            except NoNodeError:
                continue
            out[name] = (_decode(data, f"{parent}/{name}"), stat)
        return out

    # ---- current snapshot ------------------------------------------------------------------------
    def get_current(self) -> SnapshotLease | None:
        self._check_open()
        return self._read_current()[0]

    def compare_and_set_current(
        self, snapshot_id: str, *, expected_version: int | None, owner: str, lease_seconds: float
    ) -> bool:
        validate_name("snapshot_id", snapshot_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        what = f"set current snapshot {snapshot_id}"
        for _ in range(_MAX_RETRIES):
            self._guard_write(what, lease=False)
            cur, stat = self._read_current()
            if stat is None:
                raise MetastoreError(f"{what}: {self._current_path} does not exist at {self.hosts}")
            if (cur is None) != (expected_version is None) or (cur is not None and cur.version != expected_version):
                return False
            now = time.time()
            txn = self._client.transaction()
            ops = [(self._current_path, WRITE)]  # (node, permission) of each operation, for refusals
            txn.set_data(
                self._current_path,
                _encode({"snapshot_id": snapshot_id, "lease_expires_at": now + lease_seconds, "owner": owner,
                         "updated_at": now}),
                version=stat.version,
            )
            if cur is not None and cur.snapshot_id != snapshot_id:
                old = f"{self._retired_path}/{cur.snapshot_id}"
                payload = _encode({"lease_expires_at": cur.lease_expires_at, "retired_at": now})
                old_stat = self._wait(self._client.exists_async(old), what)
                if old_stat is None:
                    txn.create(old, payload)
                    ops.append((self._retired_path, CREATE))
                else:
                    txn.set_data(old, payload, version=old_stat.version)
                    ops.append((old, WRITE))
            new = f"{self._retired_path}/{snapshot_id}"
            new_stat = self._wait(self._client.exists_async(new), what)
            if new_stat is not None:
                txn.delete(new, version=new_stat.version)
                ops.append((self._retired_path, DELETE))
            results = self._wait(txn.commit_async(), what, path=self._current_path, perm=WRITE)
            for (path, perm), r in zip(ops, results):
                if isinstance(r, NoAuthError):
                    raise self._denied(what, path, perm)
            failed = [r for r in results if isinstance(r, Exception)]
            if not failed:
                self._remember(current=snapshot_id)
                logger.info("current snapshot -> %s (owner %s, lease %.1f s)", snapshot_id, owner, lease_seconds)
                return True
            if isinstance(results[0], BadVersionError):
                return False  # another updater won this version
            # only a retired/ node changed under us (a concurrent collect): re-read and try again
        raise MetastoreError(f"{what}: gave up after {_MAX_RETRIES} conflicting retries")

    def extend_lease(self, snapshot_id: str, *, owner: str, lease_seconds: float) -> bool:
        validate_name("snapshot_id", snapshot_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        what = f"extend the lease of snapshot {snapshot_id}"
        for _ in range(_MAX_RETRIES):
            self._guard_write(what, lease=True)
            cur, stat = self._read_current(lease=True)
            if cur is None or cur.snapshot_id != snapshot_id:
                self._forget(current=snapshot_id)
                return False
            now = time.time()
            payload = {"snapshot_id": snapshot_id, "lease_expires_at": max(cur.lease_expires_at, now + lease_seconds),
                       "owner": owner, "updated_at": now}
            try:
                self._wait(self._client.set_async(self._current_path, _encode(payload), version=stat.version),
                           what, lease=True, path=self._current_path, perm=WRITE)
            except BadVersionError:
                continue  # extended or replaced meanwhile: re-read
            self._remember(current=snapshot_id)
            return True
        raise MetastoreError(f"{what}: gave up after {_MAX_RETRIES} conflicting retries")

    def expired_snapshots(self, now: float | None = None) -> list[str]:
        self._check_open()
        now = time.time() if now is None else now
        cur, _ = self._read_current()
        retired = self._read_children(self._retired_path, "list retired snapshots")
        expired = [(d["lease_expires_at"], sid) for sid, (d, _) in retired.items()
                   if d["lease_expires_at"] <= now and (cur is None or cur.snapshot_id != sid)]
        return [sid for _, sid in sorted(expired)]

    def mark_collected(self, snapshot_id: str) -> bool:
        validate_name("snapshot_id", snapshot_id)
        path = f"{self._retired_path}/{snapshot_id}"
        what = f"collect snapshot {snapshot_id}"
        for _ in range(_MAX_RETRIES):
            self._guard_write(what, lease=False)
            try:
                data, stat = self._wait(self._client.get_async(path), what, path=path, perm=READ)
            except NoNodeError:
                return False
            if time.time() < _decode(data, path)["lease_expires_at"]:
                return False
            # A snapshot made current again has its retired/ node deleted in the same transaction,
            # so an unchanged node version proves it is still retired and expired.
            try:
                self._wait(self._client.delete_async(path, version=stat.version), what,
                           path=self._retired_path, perm=DELETE)
            except BadVersionError:
                continue
            except NoNodeError:
                return False
            logger.info("snapshot %s collected", snapshot_id)
            return True
        raise MetastoreError(f"{what}: gave up after {_MAX_RETRIES} conflicting retries")

    # ---- shards ----------------------------------------------------------------------------------
    def register_shards(self, job_id: str, shard_ids: Iterable[str]) -> None:
        validate_name("job_id", job_id)
        ids = [validate_name("shard_id", s) for s in shard_ids]
        what = f"register shards of job {job_id}"
        self._guard_write(what, lease=False)
        self._wait(self._client.ensure_path_async(f"{self._jobs_path}/{job_id}"), what, path=self._jobs_path,
                   perm=CREATE)
        payload = _encode({"state": PENDING, "owner": None, "lease_expires_at": None, "attempts": 0})
        pending = [self._client.create_async(self._shard_path(job_id, s), payload) for s in ids]
        for res in pending:
            try:
                self._wait(res, what, path=f"{self._jobs_path}/{job_id}", perm=CREATE)
            except NodeExistsError:
                pass  # already registered: keep its state

    def claim_shard(self, job_id: str, owner: str, lease_seconds: float) -> str | None:
        validate_name("job_id", job_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        what = f"claim a shard of job {job_id}"
        for _ in range(_MAX_RETRIES):
            self._guard_write(what, lease=False)
            shards = self._read_children(f"{self._jobs_path}/{job_id}", what)
            now = time.time()
            candidates = [(sid, d, stat) for sid, (d, stat) in shards.items() if _shard(sid, d).claimable(now)]
            if not candidates:
                return None
            for sid, d, stat in candidates:
                payload = {"state": CLAIMED, "owner": owner, "lease_expires_at": time.time() + lease_seconds,
                           "attempts": int(d.get("attempts", 0)) + 1}
                self._guard_write(what, lease=False)
                try:
                    self._wait(self._client.set_async(self._shard_path(job_id, sid), _encode(payload),
                                                      version=stat.version), what,
                               path=self._shard_path(job_id, sid), perm=WRITE)
                except (BadVersionError, NoNodeError):
                    continue  # someone else got it first: try the next one
                self._remember(shard=(job_id, sid))
                logger.debug("job %s: %s claimed shard %s", job_id, owner, sid)
                return sid
            # every candidate was taken by others meanwhile: re-read
        raise MetastoreError(f"{what}: gave up after {_MAX_RETRIES} conflicting retries")

    def _update_held_shard(self, job_id: str, shard_id: str, owner: str, what: str, change: dict[str, Any]) -> bool:
        validate_name("job_id", job_id)
        validate_name("shard_id", shard_id)
        for _ in range(_MAX_RETRIES):
            self._guard_write(what, lease=True)
            try:
                st, stat = self._read_shard(job_id, shard_id, lease=True)
            except NoNodeError:
                return False
            if st.state != CLAIMED or st.owner != owner or not time.time() < (st.lease_expires_at or 0):
                self._forget(shard=(job_id, shard_id))
                return False
            payload = {"state": st.state, "owner": st.owner, "lease_expires_at": st.lease_expires_at,
                       "attempts": st.attempts, **change}
            try:
                self._wait(self._client.set_async(self._shard_path(job_id, shard_id), _encode(payload),
                                                  version=stat.version), what, lease=True,
                           path=self._shard_path(job_id, shard_id), perm=WRITE)
            except BadVersionError:
                continue  # changed meanwhile (e.g. our own renew from another thread): re-check
            return True
        raise MetastoreError(f"{what}: gave up after {_MAX_RETRIES} conflicting retries")

    def renew_shard(self, job_id: str, shard_id: str, owner: str, lease_seconds: float) -> bool:
        lease_seconds = validate_lease(lease_seconds)
        renewed = self._update_held_shard(job_id, shard_id, owner, f"renew shard {job_id}/{shard_id}",
                                          {"lease_expires_at": time.time() + lease_seconds})
        if renewed:
            self._remember(shard=(job_id, shard_id))
        return renewed

    def complete_shard(self, job_id: str, shard_id: str, owner: str) -> bool:
        done = self._update_held_shard(job_id, shard_id, owner, f"complete shard {job_id}/{shard_id}",
                                       {"state": DONE, "lease_expires_at": None})
        if done:
            self._forget(shard=(job_id, shard_id))
            logger.debug("job %s: shard %s done by %s", job_id, shard_id, owner)
        return done

    def job_status(self, job_id: str) -> dict[str, ShardState]:
        validate_name("job_id", job_id)
        self._check_open()
        shards = self._read_children(f"{self._jobs_path}/{job_id}", f"read the status of job {job_id}")
        return {sid: _shard(sid, d) for sid, (d, _) in shards.items()}
