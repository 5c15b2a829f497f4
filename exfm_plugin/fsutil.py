"""Durable file-system steps shared by every atomic writer (day files, snapshots, DAS shards)."""
from __future__ import annotations

import contextlib
import os


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so a rename into it survives a crash; best effort where the file
    system does not support it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
