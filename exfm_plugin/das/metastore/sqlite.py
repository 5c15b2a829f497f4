"""SQLite backend of the DAS metadata store: the embedded default, one file shared by the processes of one machine.

Every write is one ``BEGIN IMMEDIATE`` transaction (the database's write lock is taken before
the read that decides, so read-check-write is atomic across processes); WAL lets readers run
while a writer works; a busy timeout makes waiting writers queue instead of failing. Not for
network file systems (SQLite's locking is unreliable there): use ZooKeeper across machines.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from .base import (
    CLAIMED,
    DONE,
    PENDING,
    MetadataStore,
    MetastoreError,
    MetastoreUnavailable,
    ShardState,
    SnapshotLease,
    validate_lease,
    validate_name,
)

logger = logging.getLogger("exfm_plugin.das.metastore_sqlite")  # the name before das/ became subpackages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS current (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    lease_expires_at REAL NOT NULL,
    owner TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retired (
    snapshot_id TEXT PRIMARY KEY,
    lease_expires_at REAL NOT NULL,
    retired_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'claimed', 'done')),
    owner TEXT,
    lease_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard_id)
);
"""


class SqliteMetadataStore(MetadataStore):
    """:class:`MetadataStore` in one SQLite file (see the module docstring for why it is safe)."""

    def __init__(self, path: str, *, url: str | None = None, busy_timeout: float = 30.0) -> None:
        self.path = os.path.abspath(path)
        self.url = url or f"sqlite://{self.path}"
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()  # one connection, shared by the threads of this process
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise MetastoreUnavailable(f"cannot open SQLite metadata store {self.path}: {e}") from e
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._set_wal()
            with self._write() as cur:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    cur.execute(stmt)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        logger.debug("opened SQLite metadata store %s", self.path)

    def _set_wal(self) -> None:
        # Switching to WAL needs a moment of exclusive access; processes opening at once retry.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    logger.warning("SQLite metadata store %s runs in journal mode %s, not WAL", self.path, mode)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise MetastoreUnavailable(f"cannot set WAL mode on {self.path}: {e}") from e
                time.sleep(0.05)

    # ---- transactions -------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MetastoreError(f"metadata store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One atomic read-check-write: the write lock is held from the first read to the commit."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise MetastoreUnavailable(
                    f"SQLite metadata store {self.path} stayed locked for more than {self._busy_timeout} s: {e}"
                ) from e
            try:
                yield conn.cursor()
            except sqlite3.OperationalError as e:
                conn.execute("ROLLBACK")
                raise MetastoreUnavailable(f"write to {self.path} failed: {e}") from e
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                conn.execute("ROLLBACK")
                raise MetastoreUnavailable(f"commit to {self.path} failed: {e}") from e

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.OperationalError as e:
                raise MetastoreUnavailable(f"read from {self.path} failed: {e}") from e

    # ---- current snapshot ---------------------------------------------------------------------
    def get_current(self) -> SnapshotLease | None:
        rows = self._read("SELECT snapshot_id, version, lease_expires_at, owner, updated_at FROM current WHERE id = 1")
        return SnapshotLease(*rows[0]) if rows else None

    def compare_and_set_current(
        self, snapshot_id: str, *, expected_version: int | None, owner: str, lease_seconds: float
    ) -> bool:
        validate_name("snapshot_id", snapshot_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        with self._write() as cur:
            row = cur.execute("SELECT snapshot_id, version, lease_expires_at FROM current WHERE id = 1").fetchone()
            if (row is None) != (expected_version is None) or (row is not None and row[1] != expected_version):
                return False
            now = time.time()
            if row is None:
                cur.execute(
                    "INSERT INTO current VALUES (1, ?, 1, ?, ?, ?)", (snapshot_id, now + lease_seconds, owner, now)
                )
            else:
                old_id, _, old_expiry = row
                cur.execute(
                    "UPDATE current SET snapshot_id = ?, version = version + 1, lease_expires_at = ?, owner = ?, "
                    "updated_at = ? WHERE id = 1",
                    (snapshot_id, now + lease_seconds, owner, now),
                )
                if old_id != snapshot_id:
                    cur.execute(
                        "INSERT INTO retired VALUES (?, ?, ?) ON CONFLICT (snapshot_id) DO UPDATE SET "
                        "lease_expires_at = excluded.lease_expires_at, retired_at = excluded.retired_at",
                        (old_id, old_expiry, now),
                    )
            cur.execute("DELETE FROM retired WHERE snapshot_id = ?", (snapshot_id,))
        logger.info("current snapshot -> %s (owner %s, lease %.1f s)", snapshot_id, owner, lease_seconds)
        return True

    def extend_lease(self, snapshot_id: str, *, owner: str, lease_seconds: float) -> bool:
        validate_name("snapshot_id", snapshot_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        with self._write() as cur:
            row = cur.execute("SELECT snapshot_id, lease_expires_at FROM current WHERE id = 1").fetchone()
            if row is None or row[0] != snapshot_id:
                return False
            now = time.time()
            cur.execute(
                "UPDATE current SET version = version + 1, lease_expires_at = ?, owner = ?, updated_at = ? "
                "WHERE id = 1",
                (max(row[1], now + lease_seconds), owner, now),
            )
        return True

    def expired_snapshots(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        rows = self._read(
            "SELECT snapshot_id FROM retired WHERE lease_expires_at <= ? AND snapshot_id NOT IN "
            "(SELECT snapshot_id FROM current) ORDER BY lease_expires_at, snapshot_id",
            (now,),
        )
        return [r[0] for r in rows]

    def mark_collected(self, snapshot_id: str) -> bool:
        validate_name("snapshot_id", snapshot_id)
        with self._write() as cur:
            cur.execute(
                "DELETE FROM retired WHERE snapshot_id = ? AND lease_expires_at <= ? AND snapshot_id NOT IN "
                "(SELECT snapshot_id FROM current)",
                (snapshot_id, time.time()),
            )
            removed = cur.rowcount == 1
        if removed:
            logger.info("snapshot %s collected", snapshot_id)
        return removed

    # ---- shards -------------------------------------------------------------------------------
    def register_shards(self, job_id: str, shard_ids: Iterable[str]) -> None:
        validate_name("job_id", job_id)
        ids = [validate_name("shard_id", s) for s in shard_ids]
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO shards (job_id, shard_id, state, attempts) VALUES (?, ?, 'pending', 0) "
                "ON CONFLICT (job_id, shard_id) DO NOTHING",
                [(job_id, s) for s in ids],
            )

    def claim_shard(self, job_id: str, owner: str, lease_seconds: float) -> str | None:
        validate_name("job_id", job_id)
        validate_name("owner", owner)
        lease_seconds = validate_lease(lease_seconds)
        with self._write() as cur:
            now = time.time()
            row = cur.execute(
                "SELECT shard_id FROM shards WHERE job_id = ? AND (state = ? OR (state = ? AND lease_expires_at <= ?)) "
                "ORDER BY shard_id LIMIT 1",
                (job_id, PENDING, CLAIMED, now),
            ).fetchone()
            if row is None:
                return None
            cur.execute(
                "UPDATE shards SET state = ?, owner = ?, lease_expires_at = ?, attempts = attempts + 1 "
                "WHERE job_id = ? AND shard_id = ?",
                (CLAIMED, owner, now + lease_seconds, job_id, row[0]),
            )
        logger.debug("job %s: %s claimed shard %s", job_id, owner, row[0])
        return row[0]

    def _held(self, cur: sqlite3.Cursor, job_id: str, shard_id: str, owner: str) -> bool:
        row = cur.execute(
            "SELECT state, owner, lease_expires_at FROM shards WHERE job_id = ? AND shard_id = ?", (job_id, shard_id)
        ).fetchone()
        return row is not None and row[0] == CLAIMED and row[1] == owner and time.time() < row[2]

    def renew_shard(self, job_id: str, shard_id: str, owner: str, lease_seconds: float) -> bool:
        validate_name("job_id", job_id)
        validate_name("shard_id", shard_id)
        lease_seconds = validate_lease(lease_seconds)
        with self._write() as cur:
            if not self._held(cur, job_id, shard_id, owner):
                return False
            cur.execute(
                "UPDATE shards SET lease_expires_at = ? WHERE job_id = ? AND shard_id = ?",
                (time.time() + lease_seconds, job_id, shard_id),
            )
        return True

    def complete_shard(self, job_id: str, shard_id: str, owner: str) -> bool:
        validate_name("job_id", job_id)
        validate_name("shard_id", shard_id)
        with self._write() as cur:
            if not self._held(cur, job_id, shard_id, owner):
                return False
            cur.execute(
                "UPDATE shards SET state = ?, lease_expires_at = NULL WHERE job_id = ? AND shard_id = ?",
                (DONE, job_id, shard_id),
            )
        logger.debug("job %s: shard %s done by %s", job_id, shard_id, owner)
        return True

    def job_status(self, job_id: str) -> dict[str, ShardState]:
        validate_name("job_id", job_id)
        rows = self._read(
            "SELECT shard_id, state, owner, lease_expires_at, attempts FROM shards WHERE job_id = ? ORDER BY shard_id",
            (job_id,),
        )
        return {r[0]: ShardState(*r) for r in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
