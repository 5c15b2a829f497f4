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

Connection trouble: a state listener marks every lease this store holds as *possibly lost*
as soon as the connection is SUSPENDED or the session LOST (LOST also sets :attr:`session_lost`).
Callers ride through a drop shorter than the session timeout with :meth:`wait_until_usable`. Until the client has reconnected
and re-verified (a ``sync`` round trip, then a re-read of the leases it held), every write that
depends on a lease (:meth:`extend_lease`, :meth:`renew_shard`, :meth:`complete_shard`) raises
:class:`LeaseLostError` without sending anything, and :attr:`lease_possibly_lost` is True.
Other writes raise :class:`MetastoreUnavailable` while disconnected instead of queueing (kazoo
would otherwise send them whenever the connection returns). A write already handed to kazoo
at the instant the connection drops may still reach the server after reconnection; it is
versioned, so it can never override another owner's newer write.

Access control (:mod:`.zk_auth`): opened with credentials, the store authenticates with its
digest identities and creates the chroot and every node under it with the DAS ACL (read/write
identity: all permissions; read-only identity: READ). Nodes it finds without that ACL (a
namespace that was open before) are re-secured once, at open. The chroot's parents stay open:
they hold nothing of DAS, and a non-empty chroot cannot be deleted through them. A store
holding only the read-only identity creates nothing. The server refuses what an ACL does not
grant with ``NoAuthError``; every such refusal becomes :class:`MetastoreAccessDenied`, one line
naming the node and the missing permission. kazoo logs its AUTH packet (user and password) at
DEBUG: the client here logs through a logger that redacts it.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Iterable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.protocol.serialization import Auth
from kazoo.security import OPEN_ACL_UNSAFE, Permissions

from .metastore import (
    CLAIMED,
    DONE,
    PENDING,
    LeaseLostError,
    MetadataStore,
    MetastoreAccessDenied,
    MetastoreError,
    MetastoreUnavailable,
    ShardState,
    SnapshotLease,
    validate_lease,
    validate_name,
)
from .zk_auth import ZkAuth

logger = logging.getLogger(__name__)


_DIGEST_ID = re.compile(r"(Id\(scheme='digest', id='[^:']*:)[^']*'")


def _redacted(arg: Any) -> Any:
    if isinstance(arg, Auth):
        return f"Auth(scheme={arg.scheme!r}, auth=<redacted>)"
    if isinstance(arg, (str, int, float, type(None))):
        return arg
    text = repr(arg)
    return _DIGEST_ID.sub(r"\1<redacted>'", text) if "Id(scheme='digest'" in text else arg


class _RedactAuth(logging.Filter):
    """Redact kazoo's AUTH request (``Auth(..., auth='user:password')``) and the password digests
    of ACLs (``Id(scheme='digest', id='user:<sha1>')``, guessable offline) in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        elif record.args is None or not record.args:
            record.msg = _redacted(record.msg)
        return True


_kazoo_logger = logging.getLogger(__name__ + ".kazoo")  # what our KazooClients log through
_kazoo_logger.addFilter(_RedactAuth())
_PERMS = {Permissions.READ: "READ", Permissions.WRITE: "WRITE", Permissions.CREATE: "CREATE",
          Permissions.DELETE: "DELETE", Permissions.ADMIN: "ADMIN"}

_CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)
READ, WRITE, CREATE, DELETE, ADMIN = "READ", "WRITE", "CREATE", "DELETE", "ADMIN"
_MAX_RETRIES = 100  # re-reads after a lost race on an unrelated node; each retry means someone else progressed


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode("utf-8")


def _decode(data: bytes, path: str) -> dict[str, Any]:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MetastoreError(f"znode {path} holds data that is not JSON: {data[:80]!r}") from e


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _acl_key(acls: Iterable[Any]) -> set[tuple[int, str, str]]:
    return {(a.perms, a.id.scheme, a.id.id) for a in acls}


def _perm_names(perms: int) -> str:
    return "ALL" if perms & 31 == 31 else "+".join(n for bit, n in _PERMS.items() if perms & bit) or "none"


def _shard(shard_id: str, d: dict[str, Any]) -> ShardState:
    return ShardState(shard_id, d["state"], d.get("owner"), d.get("lease_expires_at"), int(d.get("attempts", 0)))


class ZkMetadataStore(MetadataStore):
    """:class:`MetadataStore` on ZooKeeper (see the module docstring for layout and failure rules)."""

    def __init__(
        self,
        hosts: str,
        chroot: str = "/exfm",
        *,
        url: str | None = None,
        connect_timeout: float = 5.0,
        session_timeout: float = 10.0,
        op_timeout: float = 10.0,
        auth: ZkAuth | None = None,
    ) -> None:
        entries = [h.strip() for h in hosts.split(",")]
        for h in entries:
            host, _, port = h.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"ZooKeeper hosts {hosts!r}: expected host:port[,host:port], got {h!r}")
        self.hosts = ",".join(entries)
        chroot = "/" + chroot.strip("/")
        if chroot == "/":
            raise ValueError("ZooKeeper chroot must not be '/': give the store its own path, e.g. /exfm")
        for part in chroot.strip("/").split("/"):
            validate_name("chroot component", part)
        self.chroot = chroot
        self.url = url or f"zk://{self.hosts}{chroot}"
        self._op_timeout = op_timeout
        self._current_path = f"{chroot}/current"
        self._retired_path = f"{chroot}/retired"
        self._jobs_path = f"{chroot}/jobs"
        self.auth = auth

        self._state_lock = threading.Lock()
        self._verify_lock = threading.Lock()
        self._possibly_lost = False
        self._session_lost = False  # set on LOST: the session (not only the connection) is gone
        self.reconnect_wait = float(session_timeout)
        self._disconnects = 0  # bumped on every SUSPENDED/LOST: a re-verification must not straddle one
        self._closed = False
        self._held_lock = threading.Lock()  # guards the two sets below (leases this handle wrote)
        self._held_current: set[str] = set()
        self._held_shards: set[tuple[str, str]] = set()

        self._client = KazooClient(
            hosts=self.hosts,
            timeout=session_timeout,
            connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_jitter": 0.1, "max_delay": 2.0},
            auth_data=auth.auth_data() if auth is not None else None,
            default_acl=auth.acl() if auth is not None and not auth.read_only else None,
            logger=_kazoo_logger,
        )
        self._client.add_listener(self._on_state)
        try:
            self._client.start(timeout=connect_timeout)
        except self._client.handler.timeout_exception as e:
            self._shutdown()
            raise MetastoreUnavailable(
                f"no ZooKeeper server answered at {self.hosts} within the connect timeout of {connect_timeout:g} s"
            ) from e
        except Exception:
            self._shutdown()
            raise
        try:
            self._prepare_namespace()
        except BaseException:
            self._shutdown()
            raise
        logger.info("opened ZooKeeper metadata store %s (%s)", self.url,
                    "open namespace" if auth is None else f"as {auth.who()}")

    # ---- namespace and access control -----------------------------------------------------------
    def _prepare_namespace(self) -> None:
        """Create the DAS nodes (secured when credentials were given); re-secure open ones."""
        if self.auth is not None and self.auth.read_only:
            if self._wait(self._client.exists_async(self.chroot), f"open {self.chroot}") is None:
                raise MetastoreError(f"ZooKeeper namespace {self.chroot} does not exist at {self.hosts}, and a "
                                     f"read-only identity creates nothing: start a DAS task with the "
                                     f"read/write identity first")
            return
        if self.auth is not None:  # the parents are not DAS nodes: they stay open (see module docstring)
            parent = _parent(self.chroot)
            if parent != "/":
                self._wait(self._client.ensure_path_async(parent, acl=OPEN_ACL_UNSAFE), f"create {parent}",
                           path=_parent(parent), perm=CREATE)
        for path in (self.chroot, self._current_path, self._retired_path, self._jobs_path):
            self._wait(self._client.ensure_path_async(path), f"create {path}", path=_parent(path), perm=CREATE)
        if self.auth is not None:
            self._secure_existing()

    def _secure_existing(self) -> None:
        """Give every node under the chroot the DAS ACL if the chroot lacks it (a formerly open namespace)."""
        target = self.auth.acl()
        acls, _ = self._wait(self._client.get_acls_async(self.chroot), "read the ACL of the namespace",
                             path=self.chroot, perm=READ)
        if _acl_key(acls) == _acl_key(target):
            return
        fixed, todo = 0, [self.chroot]
        while todo:
            path = todo.pop()
            what = f"secure {path}"
            try:
                acls, _ = self._wait(self._client.get_acls_async(path), what, path=path, perm=READ)
                if _acl_key(acls) != _acl_key(target):
                    self._wait(self._client.set_acls_async(path, target), what, path=path, perm=ADMIN)
                    fixed += 1
                children = self._wait(self._client.get_children_async(path), what, path=path, perm=READ)
            except NoNodeError:
                continue  # deleted meanwhile
            todo.extend(f"{path}/{c}" for c in children)
        logger.warning("ZooKeeper namespace %s had no DAS ACL: secured %d node(s) for %s", self.chroot, fixed,
                       self.auth.who())

    def access_summary(self) -> str:
        """Who may change the namespace, read from the chroot's ACL (identities by user name only)."""
        self._check_open()
        acls, _ = self._wait(self._client.get_acls_async(self.chroot), "read the ACL of the namespace",
                             path=self.chroot, perm=READ)
        if any(a.id.scheme == "world" and a.perms & Permissions.WRITE for a in acls):
            return (f"OPEN: {self.chroot} has no ACL; any client that reaches {self.hosts} may move the current "
                    f"snapshot, extend leases and claim shards (protect it with --zk-auth-file / --zk-auth-env)")
        grants = ", ".join(f"{a.id.scheme} {a.id.id.split(':', 1)[0]!r} {_perm_names(a.perms)}" for a in acls)
        return f"protected: the ACL of {self.chroot} grants {grants}"

    def _denied(self, what: str, path: str | None, perm: str | None) -> MetastoreAccessDenied:
        path = path or self.chroot
        perm = perm or "?"
        if self.auth is None:
            who, hint = ("this unauthenticated client",
                         "the namespace has an ACL: give the DAS credentials with --zk-auth-file or --zk-auth-env")
        elif self.auth.read_only:
            who, hint = self.auth.who(), "a read-only identity may only read"
        else:
            who, hint = self.auth.who(), "the node's ACL does not grant it (wrong password, or other credentials own it)"
        return MetastoreAccessDenied(f"{what}: ZooKeeper denied {perm} permission on {path} to {who}; {hint}",
                                     path=path, permission=perm)

    # ---- connection state -----------------------------------------------------------------------
    def _on_state(self, state: str) -> None:
        """kazoo's listener (runs on its connection thread: must not block or call ZooKeeper)."""
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            with self._state_lock:
                self._disconnects += 1
                self._possibly_lost = True
                self._session_lost = self._session_lost or state == KazooState.LOST
            if not self._closed:
                logger.warning("ZooKeeper %s connection %s: treating held leases as possibly lost", self.hosts, state)
        elif state == KazooState.CONNECTED and self._possibly_lost and not self._closed:
            logger.info("ZooKeeper %s reconnected; re-verifying held leases", self.hosts)
            self._client.handler.spawn(self._reverify_quietly)

    @property
    def lease_possibly_lost(self) -> bool:
        """True while disconnected, and after a reconnection until held leases are re-verified."""
        return self._closed or self._possibly_lost or self._client.state != KazooState.CONNECTED

    @property
    def session_lost(self) -> bool:
        return self._session_lost

    def usable(self) -> bool:
        """Connected, session alive and held leases re-verified (re-verifies when needed)."""
        if self._closed or self._session_lost or self._client.state != KazooState.CONNECTED:
            return False
        if self._possibly_lost:
            try:
                self._reverify()
            except MetastoreError:
                return False
        return not self._possibly_lost

    def _reverify_quietly(self) -> None:
        try:
            self._reverify()
        except MetastoreError as e:
            logger.info("re-verification of leases postponed: %s", e)

    def _reverify(self) -> None:
        """After a reconnection: prove the session works, re-read held leases, then clear the flag."""
        with self._verify_lock:
            if not self._possibly_lost:
                return
            with self._state_lock:
                disconnects = self._disconnects
            if self._client.state != KazooState.CONNECTED:
                raise LeaseLostError(f"ZooKeeper {self.hosts} is {self._client.state}; leases may be lost")
            self._wait(self._client.sync_async(self.chroot), "re-verify the session", lease=True)
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
            with self._state_lock:
                if disconnects == self._disconnects and self._client.state == KazooState.CONNECTED:
                    self._possibly_lost = False
                    logger.info("ZooKeeper %s: leases re-verified", self.hosts)

    def _remember(self, *, current: str | None = None, shard: tuple[str, str] | None = None) -> None:
        with self._held_lock:
            if current is not None:
                self._held_current = {current}
            if shard is not None:
                self._held_shards.add(shard)

    def _forget(self, *, current: str | None = None, shard: tuple[str, str] | None = None) -> None:
        with self._held_lock:
            if current is not None:
                self._held_current.discard(current)
            if shard is not None:
                self._held_shards.discard(shard)

    def _conn_error(self, what: str, lease: bool, why: str) -> MetastoreError:
        if lease:
            return LeaseLostError(f"{what}: ZooKeeper {self.hosts} {why}; the lease may be lost, nothing was written")
        return MetastoreUnavailable(f"{what}: ZooKeeper {self.hosts} {why}")

    def _check_open(self) -> None:
        if self._closed:
            raise MetastoreError(f"metadata store {self.url} is closed")

    def _guard_write(self, what: str, *, lease: bool) -> None:
        """Refuse to queue writes while disconnected; lease writes also need re-verified leases."""
        self._check_open()
        state = self._client.state
        if state != KazooState.CONNECTED:
            raise self._conn_error(what, lease, f"connection is {state}")
        if lease and self._possibly_lost:
            self._reverify()
            if self._possibly_lost:
                raise self._conn_error(what, lease, "connection dropped again during re-verification")

    def _wait(self, result: Any, what: str, *, lease: bool = False, path: str | None = None,
              perm: str | None = None) -> Any:
        """Wait for a kazoo result; ``path`` and ``perm`` name what an ACL refusal refused."""
        try:
            return result.get(timeout=self._op_timeout)
        except NoAuthError:
            raise self._denied(what, path, perm) from None
        except self._client.handler.timeout_exception as e:
            raise self._conn_error(what, lease, f"did not answer within {self._op_timeout:g} s") from e
        except _CONNECTION_ERRORS as e:
            raise self._conn_error(what, lease, f"connection failed ({type(e).__name__})") from e

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

    # ---- lifecycle -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self._closed = True
        self._client.remove_listener(self._on_state)
        try:
            self._client.stop()
        finally:
            self._client.close()

    def close(self) -> None:
        if not self._closed:
            self._shutdown()
            logger.debug("closed ZooKeeper metadata store %s", self.url)
