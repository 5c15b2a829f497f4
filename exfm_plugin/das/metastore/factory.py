"""Open the metadata store a URL names (``--metastore``): the one module that knows the backends.

:mod:`.base` (the contract) imports no backend and the backends import only the base, so there
is no import circle. SQLite is imported here directly; the ZooKeeper backend is imported when a
``zk://`` URL is opened, because kazoo is the optional ``zk`` extra.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from .base import MetadataStore
from .sqlite import SqliteMetadataStore

if TYPE_CHECKING:
    from .zk_auth import ZkAuth

__all__ = ["open_metastore"]


_FORMS = "sqlite:///path.db, a file path, or zk://host:port/path"


def _float_param(query: dict[str, list[str]], name: str, url: str) -> float | None:
    if name not in query:
        return None
    try:
        value = float(query[name][-1])
    except ValueError:
        raise ValueError(f"metastore url {url!r}: {name} must be a number of seconds") from None
    if not value > 0:
        raise ValueError(f"metastore url {url!r}: {name} must be positive")
    return value


def open_metastore(url: str, *, connect_timeout: float | None = None, auth: "ZkAuth | None" = None) -> MetadataStore:
    """Open the store named by ``url`` (the CLI's ``--metastore``).

    * ``sqlite:///abs/path.db`` (``sqlite://rel/path.db`` is relative) or a plain file path: SQLite.
    * ``zk://host:port[,host:port]/chroot/path``: ZooKeeper; the chroot (default ``/exfm``) is
      created if missing. Query parameters ``connect_timeout`` (default 5 s), ``session_timeout``
      (10 s) and ``op_timeout`` (10 s) tune it; the ``connect_timeout`` argument overrides the URL's.
      Raises :class:`MetastoreUnavailable` if no server answers within the connect timeout.
      ``auth`` (:func:`~.zk_auth.load_zk_auth`) creates the DAS nodes with digest ACLs and
      authenticates; without it the namespace is open to any client, as before.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"metastore url must be a non-empty string ({_FORMS}), got {url!r}")
    url = url.strip()
    if url.startswith("zk://"):
        from .zk import ZkMetadataStore  # kazoo: the optional zk extra

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"metastore url {url!r}: expected zk://host:port[,host:port]/chroot/path")
        query = parse_qs(parts.query)
        unknown = set(query) - {"connect_timeout", "session_timeout", "op_timeout"}
        if unknown:
            raise ValueError(f"metastore url {url!r}: unknown parameters {sorted(unknown)}")
        kwargs = {k: v for k in ("connect_timeout", "session_timeout", "op_timeout")
                  if (v := _float_param(query, k, url)) is not None}
        if connect_timeout is not None:
            kwargs["connect_timeout"] = connect_timeout
        return ZkMetadataStore(parts.netloc, parts.path or "/exfm", url=url, auth=auth, **kwargs)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if path.startswith("//"):  # sqlite:////abs/path
            path = path[1:]
    elif "://" in url:
        raise ValueError(f"metastore url {url!r}: unsupported scheme (use {_FORMS})")
    else:
        path = url
    if not path or path.endswith("/") or path == ":memory:":
        raise ValueError(f"metastore url {url!r}: needs a database file path (an in-memory database cannot be shared)")
    if auth is not None:
        raise ValueError(f"metastore url {url!r}: ZooKeeper credentials (--zk-auth-file / --zk-auth-env) "
                         f"apply to zk:// stores only; a SQLite store is protected by its file permissions")
    return SqliteMetadataStore(path, url=url)
