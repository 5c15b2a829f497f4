"""ZooKeeper credentials for DAS: who may move the current snapshot, leases and shard claims.

Whoever can write the DAS namespace decides which FM snapshot labels every VM's rows, so a
namespace opened with credentials is created (and, if it was open, re-secured) with digest
ACLs: one read/write identity for DAS tasks, and optionally a read-only identity for
``exfm das status``. A client without the identity gets ``NoAuthError`` from the server, which
the store turns into one line naming the node and the missing permission.

Credentials never travel on the command line (visible in ``ps`` and shell history): they come
from a file or from an environment variable whose *name* is given. The text holds one entry a
line (``#`` starts a comment)::

    rw = das:long-random-password       # DAS tasks: every permission on the DAS nodes
    ro = viewer:another-password        # optional: read-only, for `exfm das status`

A file with only ``ro`` makes a read-only client. In an environment variable, entries may also
be separated by ``;``. Users may not contain ``:``; neither part may contain whitespace or
``;``. Nothing here logs or repeats a password: errors name the source and the line number.
"""
from __future__ import annotations

from ...errors import ExfmInputError

import logging
import os
import stat
from dataclasses import dataclass, field

from kazoo.security import ACL, make_digest_acl

__all__ = ["ZkAuth", "ZkAuthError", "ZkIdentity", "load_zk_auth", "parse_zk_auth"]

logger = logging.getLogger("exfm_plugin.das.zk_auth")  # the name before das/ became subpackages

ROLES = ("rw", "ro")


class ZkAuthError(ExfmInputError):
    """The credentials file or variable is missing or malformed (the message never holds a secret)."""


@dataclass(frozen=True)
class ZkIdentity:
    """One digest identity; ``repr`` hides the password so it cannot leak through logs."""

    user: str
    password: str = field(repr=False)

    def auth_data(self) -> tuple[str, str]:
        """kazoo's ``auth_data`` entry for this identity."""
        return ("digest", f"{self.user}:{self.password}")

    def acl(self, *, read_only: bool) -> ACL:
        """The ACL entry granting this identity everything, or READ only."""
        if read_only:
            return make_digest_acl(self.user, self.password, read=True)
        return make_digest_acl(self.user, self.password, all=True)


@dataclass(frozen=True)
class ZkAuth:
    """The DAS identities: ``rw`` for tasks (None on a read-only client), ``ro`` for status."""

    rw: ZkIdentity | None
    ro: ZkIdentity | None
    source: str  # where they came from, for messages: "file /x" or "environment variable X"

    def __post_init__(self) -> None:
        if self.rw is None and self.ro is None:
            raise ZkAuthError(f"{self.source}: no 'rw = user:password' or 'ro = user:password' entry")
        if self.rw is not None and self.ro is not None and self.rw.user == self.ro.user:
            raise ZkAuthError(f"{self.source}: the rw and ro identities must have different users "
                              f"(both are {self.rw.user!r})")

    @property
    def read_only(self) -> bool:
        """True when this client holds only the read-only identity."""
        return self.rw is None

    def auth_data(self) -> list[tuple[str, str]]:
        """Every identity this client authenticates as."""
        return [i.auth_data() for i in (self.rw, self.ro) if i is not None]

    def acl(self) -> list[ACL]:
        """The ACL of every DAS node: ``rw`` has all permissions, ``ro`` may read."""
        if self.rw is None:
            raise ZkAuthError(f"{self.source}: a read-only identity cannot set ACLs (it creates no nodes)")
        acl = [self.rw.acl(read_only=False)]
        if self.ro is not None:
            acl.append(self.ro.acl(read_only=True))
        return acl

    def who(self) -> str:
        """Which identities this client presents, without passwords (for messages)."""
        parts = []
        if self.rw is not None:
            parts.append(f"digest identity {self.rw.user!r} (read/write)")
        if self.ro is not None:
            parts.append(f"digest identity {self.ro.user!r} (read-only)")
        return " and ".join(parts)


def _parse_identity(value: str, where: str) -> ZkIdentity:
    user, sep, password = value.partition(":")
    user, password = user.strip(), password.strip()
    if not sep or not user or not password:
        raise ZkAuthError(f"{where}: expected user:password after the role")
    for part, name in ((user, "user"), (password, "password")):
        if any(c.isspace() or c == ";" for c in part):
            raise ZkAuthError(f"{where}: the {name} may not contain whitespace or ';'")
    return ZkIdentity(user, password)


def parse_zk_auth(text: str, source: str) -> ZkAuth:
    """Parse ``rw = user:password`` / ``ro = user:password`` entries (see the module docstring)."""
    found: dict[str, ZkIdentity] = {}
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for piece in line.split("#", 1)[0].split(";"):
            if piece.strip():
                entries.append((lineno, piece.strip()))
    for lineno, entry in entries:
        where = f"{source}, line {lineno}"
        role, sep, value = entry.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ZkAuthError(f"{where}: expected 'rw = user:password' or 'ro = user:password'")
        if role in found:
            raise ZkAuthError(f"{where}: a second {role!r} entry (one identity per role)")
        found[role] = _parse_identity(value, where)
    return ZkAuth(rw=found.get("rw"), ro=found.get("ro"), source=source)


def load_zk_auth(file: str | None = None, env: str | None = None) -> ZkAuth | None:
    """Credentials from ``file`` or from the environment variable named ``env`` (not both);
    None when neither is given (the namespace stays open, as without ACLs)."""
    if file and env:
        raise ZkAuthError("give the ZooKeeper credentials by --zk-auth-file or by --zk-auth-env, not both")
    if file:
        source = f"ZooKeeper credentials file {file}"
        try:
            mode = os.stat(file).st_mode
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ZkAuthError(f"{source}: cannot read it ({e.strerror or type(e).__name__})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is accessible to group/others (mode %o); `chmod 600` it", source,
                           stat.S_IMODE(mode))
        return parse_zk_auth(text, source)
    if env:
        source = f"environment variable {env}"
        text = os.environ.get(env)
        if text is None or not text.strip():
            raise ZkAuthError(f"{source} is not set or empty; it should hold 'rw = user:password' "
                              f"(and optionally '; ro = user:password')")
        return parse_zk_auth(text, source)
    return None
