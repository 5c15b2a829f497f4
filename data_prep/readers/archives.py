"""Tar archives as shipped by Tianchi (``raw_sample.csv.tar.gz``: a tar archive holding one CSV).

Why a module of its own: a tar archive is not a compressed CSV. polars and gzip would read its
512-byte member headers as CSV text, so a renamed archive used to fail far away ("missing
column user"). Here the container is decided from the file's name and checked against its
bytes:

- a name ending in ``.tar``, ``.tar.gz`` or ``.tgz`` is read as a tar archive: its first regular
  file (macOS ``._*`` resource forks skipped) is streamed with :mod:`tarfile`'s ``r|*`` mode,
  so memory stays at one read buffer whatever the member's size;
- any other name holding a tar archive (``raw_sample.csv.gz`` that is really the ``.tar.gz``)
  is refused by :func:`check_container`, naming it as a tar archive.
"""
from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from ..errors import DataFormatError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: offset and value of the POSIX/GNU tar magic in the first 512-byte header
_TAR_MAGIC_AT, _TAR_MAGIC = 257, b"ustar"
_STREAM_ERRORS = (tarfile.TarError, zlib.error, EOFError)


def is_tar_name(path: str | Path) -> bool:
    """True when the file's name says it is a tar archive (compressed or not)."""
    return Path(path).name.lower().endswith(TAR_SUFFIXES)


def looks_like_tar(path: str | Path) -> bool:
    """True when the file's first (gunzipped, if gzip) 512 bytes are a tar header."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    block = g.read(512)
            else:
                block = f.read(512)
    except (OSError, EOFError, zlib.error):
        return False  # unreadable: the reader's own checks say why
    return block[_TAR_MAGIC_AT:_TAR_MAGIC_AT + len(_TAR_MAGIC)] == _TAR_MAGIC


def check_container(path: str | Path, what: str = "input file") -> None:
    """Refuse a tar archive under a plain or ``.gz`` name, and a ``.tar*`` name that holds no tar."""
    name = Path(path).name
    if is_tar_name(path):
        if not looks_like_tar(path) and not _is_compressed_tar(path):
            raise DataFormatError(f"{what} is named as a tar archive but is not one", path=path,
                                  expected="a tar archive holding one CSV file (as Tianchi ships "
                                           "*.csv.tar.gz), or the CSV under a .csv / .csv.gz name")
        return
    if looks_like_tar(path):
        stem = name[:-3] if name.endswith(".gz") else name
        raise DataFormatError(f"{what} is a tar archive, not a {'gzipped ' if name.endswith('.gz') else ''}CSV",
                              path=path, expected=f"a CSV under this name; to read the archive as shipped, "
                                                  f"name it {stem}.tar.gz (or extract its CSV)")


def _is_compressed_tar(path: str | Path) -> bool:
    """A tar archive compressed with something other than gzip (bz2, xz): tarfile decides."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            tar.next()
        return True
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False


class ArchiveMember(io.BufferedIOBase):
    """The first regular file of a tar archive, read as a stream of bytes.

    A readable binary stream (``read``, ``readline``, line iteration, ``with``, usable under
    ``io.TextIOWrapper``) with ``fileobj``, the archive file itself, whose ``tell()`` says how many compressed
    bytes were consumed (as ``gzip.GzipFile.fileobj`` does). Corrupt or truncated archives raise
    ``OSError`` so the readers' usual handlers name the file.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.fileobj = open(self.path, "rb")
        try:
            self._tar = tarfile.open(fileobj=self.fileobj, mode="r|*")
            self.member_name, self._f = self._first_file()
        except _STREAM_ERRORS as e:
            self.fileobj.close()
            raise DataFormatError(f"cannot read the tar archive ({e})", path=self.path,
                                  expected="a complete tar archive (.tar, .tar.gz) holding one CSV file") from e
        except BaseException:
            self.fileobj.close()
            raise

    def _first_file(self) -> tuple[str, BinaryIO]:
        for member in self._tar:
            if member.isfile() and not Path(member.name).name.startswith("._"):
                f = self._tar.extractfile(member)
                if f is not None:
                    return member.name, f
        raise DataFormatError("the tar archive holds no file", path=self.path,
                              expected="a tar archive holding one CSV file")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._f.read(-1 if size is None else size)
        except _STREAM_ERRORS as e:
            raise OSError(f"corrupt or truncated tar archive ({e})") from e

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        try:
            return self._f.readline(-1 if size is None else size)
        except _STREAM_ERRORS as e:
            raise OSError(f"corrupt or truncated tar archive ({e})") from e

    def close(self) -> None:
        if self.closed:
            return
        try:
            if getattr(self, "_tar", None) is not None:
                self._tar.close()
        finally:
            if getattr(self, "fileobj", None) is not None:
                self.fileobj.close()
            super().close()
