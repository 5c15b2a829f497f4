"""Atomic, durable writes: the one temp-then-rename helper every writer uses.

A reader (another DAS worker, a training run, a crash-restarted process) must see a file or a
directory whole or not at all, so nothing is written in place:

* :func:`atomic_file` / :func:`atomic_dir` hand out a temporary sibling of the target
  (``.<name>.<random>.tmp`` in the same directory, hence the same file system, so the final
  ``rename`` is atomic). The caller writes into it with whatever library it likes (h5py,
  json, torch.save, another writer of this module).
* When the ``with`` block succeeds, the temp is made durable and renamed into place. When it
  raises (or the process dies), the target is untouched; on an exception the temp is removed.
  A killed process can leave a temp behind: names start with ``.`` and end with ``.tmp`` so
  listings skip them, and carry the writer's host tag and pid
  (``.<name>.<host>-<pid>-<random>.tmp``) so :func:`sweep_stale_temps` can remove those of dead
  processes. Every :func:`atomic_dir` sweeps its parent first (prep outputs, the artifact store,
  the snapshot store); a temp of a live process or of another host is never touched.

The fsync policy, one for every writer: **every file's data is fsync'ed after the caller has
closed it and before the rename; every directory of a temp tree is fsync'ed before the rename;
the parent directory is fsync'ed after the rename.** The first two make sure the rename never
publishes a name whose data could still be lost in a crash; the last makes the rename itself
survive one. (fsync of a directory is best effort: some file systems refuse it.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["TEMP_SUFFIX", "atomic_dir", "atomic_file", "fsync_dir", "fsync_file", "fsync_tree", "is_temp_name",
           "pid_alive", "sweep_stale_temps", "temp_owner", "write_json_atomic"]

logger = logging.getLogger(__name__)

#: every temp name ends with this (and starts with ``.``)
TEMP_SUFFIX = ".tmp"
#: this host's tag in temp names: a pid only says something about processes of the same host
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_OLD_RE = re.compile(r"^\.(?P<target>.+)\.old\.[0-9a-f]{6}-\d+-[0-9a-f]{8}\.tmp$")
_OWNER_RE = re.compile(r"\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a closed file's data by path (works whoever wrote it: h5py, torch, json)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so a rename into it survives a crash; best effort where the file
    system does not support it."""
    with contextlib.suppress(OSError):
        fsync_file(directory)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file, then every directory (deepest first), of the tree under ``root``."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(dirpath)


def is_temp_name(name: str) -> bool:
    """Whether a directory entry is a temp of this module (of a writer that may have died)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_owner(name: str) -> tuple[str, int] | None:
    """``(host tag, pid)`` of the process that made the temp ``name``; ``None`` for other names."""
    m = _OWNER_RE.search(name) if is_temp_name(name) else None
    return (m["host"], int(m["pid"])) if m else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Remove the temps in ``directory`` whose writer (this host, by pid) is dead; returns their
    paths. Safe beside live writers: their pid is alive, so their temps stay."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            owner = temp_owner(entry.name)
            if owner is None or owner[0] != HOST_TAG or owner[1] == os.getpid() or pid_alive(owner[1]):
                continue
            old = _OLD_RE.match(entry.name)
            if old and not os.path.lexists(os.path.join(directory, old["target"])):
                continue  # killed between atomic_dir's two renames: the old tree is all there is; keep it
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
            removed.append(entry.path)
    if removed:
        logger.info("removed %d stale temporaries of dead processes in %s", len(removed), directory)
    return removed


def _make_temp(parent: str, prefix: str, *, directory: bool) -> str:
    """A new empty file or directory ``<parent>/<prefix><random>.tmp``, with the permissions the
    umask gives (as ``open``/``os.makedirs`` do; ``tempfile`` would make it private to this user,
    and other DAS hosts or users read these files)."""
    while True:
        path = os.path.join(parent, f"{prefix}{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            if directory:
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _parent_and_prefix(path: str | os.PathLike) -> tuple[str, str, str]:
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if not name:
        raise ValueError(f"{os.fspath(path)!r}: expected a file or directory path, not a root")
    os.makedirs(parent, exist_ok=True)
    return target, parent, f".{name}."


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[str]:
    """Yield the path of an empty temp file; on success it becomes ``path`` (fsync'ed, renamed).

    ``exclusive``: create ``path`` only if it does not exist yet (a hard link, so the check and
    the create are one atomic step); if it exists, the temp is removed and
    :class:`FileExistsError` is raised, naming the path. Otherwise an existing file is replaced.
    """
    target, parent, prefix = _parent_and_prefix(path)
    tmp = _make_temp(parent, prefix, directory=False)
    try:
        yield tmp
        fsync_file(tmp)
        if exclusive:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise FileExistsError(f"{target} already exists; not replaced (exclusive create)") from None
            os.remove(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[str]:
    """Yield the path of an empty temp directory; on success it becomes ``path``.

    Every file and directory of the tree is fsync'ed, then the tree is renamed into place.
    ``replace=False``: an existing ``path`` is never touched, :class:`FileExistsError` is raised
    (also when another writer renames its tree there first). ``replace=True``: an existing
    ``path`` is renamed aside, the new tree renamed in, and the old one deleted; a reader sees
    the old tree or the new one, and for an instant between the two renames neither.
    """
    target, parent, prefix = _parent_and_prefix(path)
    if not replace and os.path.lexists(target):
        raise FileExistsError(f"{target} already exists; not replaced")
    sweep_stale_temps(parent)
    tmp = _make_temp(parent, prefix, directory=True)
    old: str | None = None
    try:
        yield tmp
        fsync_tree(tmp)
        if replace and os.path.lexists(target):
            old = _make_temp(parent, f"{prefix}old.", directory=True)
            os.replace(target, old)  # onto the empty placeholder: atomic
        try:
            os.rename(tmp, target)  # a non-empty directory there makes this fail: never overwrites
        except OSError as exc:
            if os.path.lexists(target):
                raise FileExistsError(f"{target} was created by another writer meanwhile; not replaced") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and os.path.lexists(old) and not os.path.lexists(target):
            os.replace(old, target)  # put the old tree back
            old = None
        raise
    fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str, data: Mapping[str, Any], *, exclusive: bool = False) -> bool:
    """Write ``data`` as JSON through :func:`atomic_file` (the DAS job's plan and manifest: workers
    race for them). ``exclusive``: only if ``path`` does not exist yet; returns whether this
    call created the file (``False``: another writer's file was there first and is kept)."""
    try:
        with atomic_file(path, exclusive=exclusive) as tmp:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
    except FileExistsError:
        if not exclusive:
            raise
        return False
    return True
