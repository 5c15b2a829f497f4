"""Finding and opening the dataset readers' files.

Every file may come gzipped (``train.csv.gz``): :func:`find_file` looks for both spellings and
polars decompresses while it scans. A name ending in ``.tar.gz`` / ``.tar`` (Tianchi's archives)
is streamed from the archive (:mod:`.archives`), never whole. :func:`iter_csv_blocks` cuts a file
too large for memory (the 23 GB TaobaoAd behaviour log) into blocks of whole lines, and
:func:`iter_lines` decodes line by line so a bad byte is blamed on its own row.
"""
from __future__ import annotations

import csv
import difflib
import gzip
import io
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from ..errors import DataFormatError
from .archives import ArchiveMember, is_tar_name


def require_file(path: str | Path, what: str = "input file") -> Path:
    """Return ``path`` as a Path, or raise DataFormatError if it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{what} not found", path=p, expected="an existing file")
    if p.stat().st_size == 0:
        raise DataFormatError(f"{what} is empty (0 bytes)", path=p, expected="a header and data rows")
    return p


def with_gz(names: Sequence[str]) -> list[str]:
    """Each name followed by its gzipped spelling (``x.csv``, ``x.csv.gz``), without duplicates."""
    out: list[str] = []
    for name in names:
        for n in (name, name if name.endswith(".gz") else name + ".gz"):
            if n not in out:
                out.append(n)
    return out


def find_file(input_dir: str | Path, names: Sequence[str], what: str, *, required: bool = True) -> Path | None:
    """The first of ``names`` (or its ``.gz`` copy) in ``input_dir``: the dumps come under several names."""
    d = Path(input_dir)
    if not d.is_dir():
        raise DataFormatError("input directory not found", path=d, expected="a directory holding the dataset files")
    candidates = with_gz(names)
    for name in candidates:
        if (d / name).exists():
            return require_file(d / name, what)
    if required:
        present = sorted(p.name for p in d.iterdir())
        close = difflib.get_close_matches(names[0], present, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataFormatError(f"{what} not found{hint}", path=d / names[0],
                              expected="one of " + ", ".join(candidates))
    return None


def open_binary(path: Path) -> BinaryIO:
    """Open a file for reading bytes, transparently gunzipping ``.gz`` and taking the CSV out of a
    ``.tar(.gz)`` archive (streamed, never whole)."""
    if is_tar_name(path):
        return ArchiveMember(path)  # type: ignore[return-value]
    if Path(path).suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``.gz`` (and un-tarring ``.tar(.gz)``)."""
    if is_tar_name(path):
        return io.TextIOWrapper(ArchiveMember(path), encoding="utf-8")  # type: ignore[arg-type]
    if Path(path).suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def iter_csv_blocks(path: Path, block_bytes: int = 32 << 20) -> Iterator[bytes]:
    """The CSV file as blocks of whole lines, each starting with the header line.

    Memory stays at about ``block_bytes`` whatever the file size, ``.gz`` included, so a
    23 GB log can be parsed block by block. Assumes one row per line (no quoted newlines),
    which holds for the raw TaobaoAd files.
    """
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be positive, got {block_bytes}")
    try:
        with open_binary(path) as f:
            header = f.readline()
            rest = b""
            while True:
                data = f.read(block_bytes)
                if not data:
                    if rest.strip():
                        yield header + rest + (b"" if rest.endswith(b"\n") else b"\n")
                    return
                data = rest + data
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    yield header + data[:cut]
    except (OSError, EOFError) as e:
        raise DataFormatError(f"truncated or corrupt file ({e})", path=path,
                              expected="a complete CSV (or gzipped CSV) file") from e


def iter_lines(path: Path) -> Iterator[str]:
    """The file's lines decoded one by one, so a bad byte is blamed on its own line: the
    header is row 0, then data rows 1, 2, ... (one row per line)."""
    try:
        with open_binary(path) as f:
            for row, raw in enumerate(f):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    what = "the header" if row == 0 else "the row"
                    raise DataFormatError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start} of the line)",
                                          path=path, row=row or None, value=raw[max(0, e.start - 20):e.start + 20],
                                          expected="UTF-8 text") from e
    except (OSError, EOFError) as e:
        raise DataFormatError(f"cannot read the file: {e}", path=path, expected="a complete (gzipped) CSV file") from e


def read_header(path: Path) -> list[str]:
    """The raw header names of a CSV file (not stripped: renames must use the raw names)."""
    line = next(iter_lines(path), "")
    if not line.strip():
        raise DataFormatError("the header line is empty", path=path, expected="a CSV header")
    return next(csv.reader([line]))
