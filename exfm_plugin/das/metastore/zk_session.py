"""The ZooKeeper session under :class:`~.zk.ZkMetadataStore`: connecting, credentials and
ACLs, connection state and lease re-verification, and how kazoo's failures become metastore errors.

It exists so that :mod:`.zk` holds only the store's records and their compare-and-set
rules; :class:`ZkSession` is the connection half of the store and is not used on its own.

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

import abc
import logging
import re
import threading
from typing import Any, Iterable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.protocol.serialization import Auth
from kazoo.security import OPEN_ACL_UNSAFE, Permissions

from .base import (
    LeaseLostError,
    MetadataStore,
    MetastoreAccessDenied,
    MetastoreError,
    MetastoreUnavailable,
    validate_name,
)
from .zk_auth import ZkAuth

# the store logs under its public module's name (what logging configuration and tests name)
logger = logging.getLogger("exfm_plugin.das.metastore_zk")


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


_kazoo_logger = logging.getLogger(logger.name + ".kazoo")  # what our KazooClients log through
_kazoo_logger.addFilter(_RedactAuth())
_PERMS = {Permissions.READ: "READ", Permissions.WRITE: "WRITE", Permissions.CREATE: "CREATE",
          Permissions.DELETE: "DELETE", Permissions.ADMIN: "ADMIN"}

_CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)
READ, WRITE, CREATE, DELETE, ADMIN = "READ", "WRITE", "CREATE", "DELETE", "ADMIN"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _acl_key(acls: Iterable[Any]) -> set[tuple[int, str, str]]:
    return {(a.perms, a.id.scheme, a.id.id) for a in acls}


def _perm_names(perms: int) -> str:
    return "ALL" if perms & 31 == 31 else "+".join(n for bit, n in _PERMS.items() if perms & bit) or "none"


class ZkSession(MetadataStore):
    """The connection half of :class:`~.zk.ZkMetadataStore` (see the module docstring):
    subclasses implement the records and :meth:`_recheck_held_leases`."""

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
            self._recheck_held_leases()
            with self._state_lock:
                if disconnects == self._disconnects and self._client.state == KazooState.CONNECTED:
                    self._possibly_lost = False
                    logger.info("ZooKeeper %s: leases re-verified", self.hosts)

    @abc.abstractmethod
    def _recheck_held_leases(self) -> None:
        """Re-read every lease this handle holds (after a reconnection); forget the ones that are gone."""

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
