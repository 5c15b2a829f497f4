"""Shared parsing for the dataset readers: one CSV table, parsed strictly, with precise errors.

Every reader declares its tables as :class:`CsvTable` objects (file, canonical column names,
kind of each column). A table scans its file lazily with every cell read as text, renames the
header to canonical names and parses each column with the polars expressions of
:mod:`.columns` (null tokens, integer ids written as floats, ``^``-joined sequences).

Parsing is strict on the fast path (polars raises on the first bad cell). When that happens,
:meth:`CsvTable.diagnose` rescans the file to find the first bad cell and raises a
:class:`~data_prep.errors.DataFormatError` naming the file, column, row and expectation,
so the happy path pays nothing for the good error messages.

Files may come gzipped or in Tianchi's tar archives (:mod:`.files` finds and opens them); a table
in an archive is parsed block by block, and a file too large for memory (the 23 GB TaobaoAd
behaviour log) with :meth:`CsvTable.iter_frames`.

The helpers the readers share live by job -- :mod:`.files` (finding, opening and streaming
files), :mod:`.columns` (header names, cell parsing) and :mod:`.result` (:class:`ReadResult`) --
and are re-exported here, where they were defined first.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import polars as pl

from ..errors import DataFormatError
from .archives import check_container, is_tar_name
from .columns import KIND_EXPECTED, NULL_TOKENS, SEQ_SEP, bad_cell, parse_expr, resolve_columns  # noqa: F401
from .files import (find_file, iter_csv_blocks, iter_lines, open_binary, open_text,  # noqa: F401
                    read_header, require_file, with_gz)
from .result import ReadResult  # noqa: F401

logger = logging.getLogger(__name__)

#: CSV bytes parsed at a time when a table is read from a tar archive
ARCHIVE_BLOCK_BYTES = 32 << 20


@dataclass
class CsvTable:
    """One CSV file of a dataset with its canonical columns and their kinds."""

    path: Path
    kinds: dict[str, str]
    rename: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, kinds: Mapping[str, str], *, aliases: Mapping[str, Sequence[str]] | None = None,
             optional: Iterable[str] = ()) -> "CsvTable":
        """Check the file and its header now (cheap), so a bad header fails before any work."""
        path = require_file(path)
        check_container(path)
        header = read_header(path)
        rename = resolve_columns(path, header, list(kinds), aliases, optional)
        present = set(rename.values())
        return cls(path, {c: k for c, k in kinds.items() if c in present}, rename)

    @property
    def archive(self) -> bool:
        """True when the CSV is read out of a tar archive (polars cannot scan those itself)."""
        return is_tar_name(self.path)

    def _blocks(self) -> Iterator[bytes]:
        """The archive's CSV in blocks of whole lines (header first); the header alone if no rows."""
        empty = True
        for block in iter_csv_blocks(self.path, ARCHIVE_BLOCK_BYTES):
            empty = False
            yield block
        if empty:
            with contextlib.closing(iter_lines(self.path)) as lines:
                yield next(lines, "").encode("utf-8")

    def _scan_archive(self) -> pl.LazyFrame:
        # block by block: memory holds the parsed rows and one block, never the whole CSV text
        frames = [self.scan(block).collect() for block in self._blocks()]
        return pl.concat(frames, how="vertical").lazy()

    #: ``scan()`` mode: True = let the CSV parser type the numeric columns (fast, fails on
    #: quirks such as "123.0" or padded cells); False = every cell as text, parsed by
    #: :func:`parse_expr`. :func:`collect_checked` tries fast first, then text.
    fast: bool = True

    def _source(self, block: bytes | None) -> Path | io.BytesIO:
        return self.path if block is None else io.BytesIO(block)

    def _scan_text(self, block: bytes | None = None) -> pl.LazyFrame:
        # every cell as text: the parse step below owns all typing, so no inference surprises
        return pl.scan_csv(self._source(block), infer_schema=False, quote_char='"').select(
            [pl.col(raw).alias(canon) for raw, canon in self.rename.items()])

    def _scan_typed(self, block: bytes | None = None) -> pl.LazyFrame:
        native = {"int": pl.Int64, "float": pl.Float64, "label": pl.Int64}
        inverse = {canon: raw for raw, canon in self.rename.items()}
        overrides = {inverse[c]: native.get(k, pl.String) for c, k in self.kinds.items()}
        lf = pl.scan_csv(self._source(block), schema_overrides=overrides, null_values=NULL_TOKENS,
                         quote_char='"', infer_schema=False).select(
            [pl.col(raw).alias(canon) for raw, canon in self.rename.items()])
        exprs = []
        for c, k in self.kinds.items():
            if k in ("int", "float"):
                exprs.append(pl.col(c))
            elif k == "label":
                exprs.append(pl.col(c).replace_strict({0: 0, 1: 1}, return_dtype=pl.Int8).alias(c))
            else:  # strings and sequences: same text parsing as the slow path
                exprs.append(parse_expr(c, k))
        return lf.select(exprs)

    def scan(self, block: bytes | None = None) -> pl.LazyFrame:
        """Lazy frame of the parsed canonical columns (strict: a bad cell fails at collect).

        ``block``: parse these CSV bytes (header line first, see :func:`iter_csv_blocks`)
        instead of the whole file, with the same rules.
        """
        if block is None and self.archive:
            return self._scan_archive()
        if self.fast:
            return self._scan_typed(block)
        return self._scan_text(block).select([parse_expr(c, k) for c, k in self.kinds.items()])

    def iter_frames(self, block_bytes: int = 32 << 20) -> Iterator[pl.DataFrame]:
        """The parsed file, block by block (bounded memory); a bad cell raises DataFormatError
        naming its row in the whole file, like :func:`collect_checked`."""
        for block in iter_csv_blocks(self.path, block_bytes):
            yield collect_checked(lambda: self.scan(block), [self], what=f"a block of {self.path.name}")

    def diagnose(self, error: BaseException | None = None) -> None:
        """Find the first bad cell of this file and raise DataFormatError for it (no-op if none)."""
        self._check_field_counts()
        try:
            offset = 0
            for block in (self._blocks() if self.archive else [None]):
                lf = self._scan_text(block).with_row_index("__row", offset=offset + 1)
                for col, kind in self.kinds.items():
                    hit = lf.filter(bad_cell(col, kind)).select("__row", col).head(1).collect()
                    if hit.height:
                        row, value = hit.row(0)
                        raise DataFormatError("bad value", path=self.path, column=col, row=int(row),
                                              value=value, expected=KIND_EXPECTED[kind])
                if block is not None:
                    offset += lf.select(pl.len()).collect().item()
        except DataFormatError:
            raise
        except (pl.exceptions.PolarsError, OSError) as e:
            raise DataFormatError(f"cannot parse the file: {e}", path=self.path,
                                  expected="a well-formed CSV file") from e

    def _check_field_counts(self) -> None:
        """A row with more or fewer fields than the header (typically a ',' inside a
        sequence that should be '^'-joined) shifts every later column: name it first."""
        try:
            with contextlib.closing(iter_lines(self.path)) as lines:
                rows = csv.reader(lines)
                width = len(next(rows))
                for row_no, fields in enumerate(rows, start=1):
                    if fields and len(fields) != width:
                        seqs = [c for c, k in self.kinds.items() if k.startswith("seq")]
                        hint = (f" (a ',' inside a field? sequences {', '.join(seqs)} must be '^'-joined)"
                                if seqs else "")
                        raise DataFormatError(f"row has {len(fields)} fields, the header has {width}{hint}",
                                              path=self.path, row=row_no, value=",".join(fields),
                                              expected=f"{width} comma-separated fields")
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
            raise DataFormatError(f"cannot read the file: {e}", path=self.path, expected="a UTF-8 CSV file") from e

    def check_parsed(self, df: pl.DataFrame) -> None:
        """Nulls that parsing produced on purpose (labels, sequence tokens) mean a bad cell."""
        for col, kind in self.kinds.items():
            if col not in df.columns:
                continue
            if kind == "label" and df[col].null_count():
                self.diagnose()
            if kind in ("seq_int", "seq_str") and df[col].list.eval(pl.element().is_null()).list.any().any():
                self.diagnose()


def collect_checked(build: Callable[[], pl.LazyFrame], tables: Sequence[CsvTable], *,
                    what: str = "") -> pl.DataFrame:
    """Collect the lazy chain ``build()`` made on ``tables``; any parse failure -> DataFormatError.

    First with the CSV parser typing the numeric columns; if that fails (a quirk such as
    ``"123.0"``, or a real error), again with every cell parsed from text. If that fails
    too, each table diagnoses itself (rescanning its file) so the error names the file, the
    column, the row and the expectation; the polars message is the fallback.
    """
    errors = (pl.exceptions.PolarsError, OSError, EOFError)
    try:
        for t in tables:
            t.fast = True
        df = build().collect()
    except errors as e:
        logger.info("typed CSV parse failed (%s); parsing from text", str(e).splitlines()[0] if str(e) else e)
        for t in tables:
            t.fast = False
        try:
            df = build().collect()
        except errors as e2:
            for t in tables:
                t.diagnose(e2)
            raise DataFormatError(f"cannot read {what or 'the input'}: {e2}",
                                  path=", ".join(str(t.path) for t in tables)) from e2
    for t in tables:
        t.check_parsed(df)
    return df


def check_not_empty(df: pl.DataFrame, path: Any, what: str = "data rows") -> None:
    """A file with a header and no rows cannot be split into days."""
    if df.height == 0:
        raise DataFormatError(f"no {what}", path=path, expected="at least one data row after the header")
