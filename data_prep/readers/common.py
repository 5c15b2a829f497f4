"""Shared parsing for the dataset readers: header quirks, typed columns, precise errors.

Every reader declares its tables as :class:`CsvTable` objects (file, canonical column names,
kind of each column). A table scans its file lazily with every cell read as text, renames the
header to canonical names (trailing spaces, ``noclk``/``nonclk``, ``customer``/``customer_id``)
and parses each column with polars expressions:

- ``NULL``, ``NaN``, ``\\N`` and blank cells become null;
- integer ids written as floats (``"123.0"``) become ``123``;
- sequences are split on ``^`` into lists.

Parsing is strict on the fast path (polars raises on the first bad cell). When that happens,
:meth:`CsvTable.diagnose` rescans the file to find the first bad cell and raises a
:class:`~data_prep.errors.DataFormatError` naming the file, column, row and expectation,
so the happy path pays nothing for the good error messages.

Every file may also come gzipped (``train.csv.gz``): :func:`find_file` looks for both
spellings and polars decompresses while it scans. A name ending in ``.tar.gz`` / ``.tar``
(Tianchi's archives) is streamed from the archive (:mod:`.archives`), block by block. A file too large for memory (the 23 GB
TaobaoAd behaviour log) is parsed block by block with :meth:`CsvTable.iter_frames`.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import gzip
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import polars as pl

from ..errors import DataFormatError
from .archives import ArchiveMember, check_container, is_tar_name

logger = logging.getLogger(__name__)

NULL_TOKENS = ["", "NULL", "null", "Null", "NaN", "nan", "None", "none", "\\N"]
SEQ_SEP = "^"
_INT_AS_FLOAT = r"^([+-]?\d+)\.0*$"
_SEQ_TOKEN = r"^([^,|;\s]+)$"

#: CSV bytes parsed at a time when a table is read from a tar archive
ARCHIVE_BLOCK_BYTES = 32 << 20

#: What each column kind accepts, as said in error messages.
KIND_EXPECTED = {
    "int": "an integer (123 or 123.0); blank or NULL for missing",
    "float": "a number; blank or NULL for missing",
    "str": "a token",
    "label": "0 or 1",
    "seq_int": "integers joined by '^' (e.g. 12^7^30)",
    "seq_str": "tokens joined by '^' (no ',', '|', ';' or spaces inside a token)",
}


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


def resolve_columns(path: Path, header: Sequence[str], wanted: Sequence[str],
                    aliases: Mapping[str, Sequence[str]] | None = None,
                    optional: Iterable[str] = ()) -> dict[str, str]:
    """Map raw header names to the canonical ``wanted`` names.

    Header names are compared after stripping spaces; ``aliases`` lists accepted other
    spellings of a canonical name. A missing required column raises DataFormatError that
    suggests the closest header name (difflib), the usual cause being a typo.
    """
    aliases = aliases or {}
    optional = set(optional)
    stripped = {h.strip(): h for h in header}
    if len(stripped) < len(header):
        seen: set[str] = set()
        for h in header:
            name = h.strip()
            if name in seen and any(name in (w, *aliases.get(w, [])) for w in wanted):
                raise DataFormatError("column named twice in the header", path=path, column=name,
                                      expected="each column name once")
            seen.add(name)
    rename: dict[str, str] = {}
    for name in wanted:
        for candidate in [name, *aliases.get(name, [])]:
            if candidate in stripped:
                rename[stripped[candidate]] = name
                break
        else:
            if name in optional:
                continue
            close = difflib.get_close_matches(name, list(stripped), n=1, cutoff=0.5)
            hint = f"; closest header name is '{close[0]}'" if close else ""
            raise DataFormatError(f"missing column{hint}", path=path, column=name,
                                  expected="header with " + ", ".join(wanted))
    return rename


def _clean(col: str) -> pl.Expr:
    s = pl.col(col).str.strip_chars()
    return pl.when(s.is_in(NULL_TOKENS)).then(None).otherwise(s)


def _split(col: str) -> pl.Expr:
    s = _clean(col)
    return pl.when(s.is_null()).then(pl.lit([], dtype=pl.List(pl.String))).otherwise(s.str.split(SEQ_SEP))


def parse_expr(col: str, kind: str, *, strict: bool = True) -> pl.Expr:
    """The polars expression that turns a text column into its canonical typed column."""
    if kind == "int":
        return _clean(col).str.replace(_INT_AS_FLOAT, "${1}").cast(pl.Int64, strict=strict).alias(col)
    if kind == "float":
        return _clean(col).cast(pl.Float64, strict=strict).alias(col)
    if kind == "str":
        return _clean(col).str.replace(_INT_AS_FLOAT, "${1}").alias(col)
    if kind == "label":
        mapping = {"0": 0, "1": 1}
        e = _clean(col).str.replace(_INT_AS_FLOAT, "${1}")
        if strict:
            return e.replace_strict(mapping, return_dtype=pl.Int8).alias(col)
        return e.replace_strict(mapping, default=None, return_dtype=pl.Int8).alias(col)
    if kind == "seq_int":
        elem = pl.element().str.strip_chars().str.replace(_INT_AS_FLOAT, "${1}").cast(pl.Int64, strict=strict)
        return _split(col).list.eval(elem).alias(col)
    if kind == "seq_str":
        elem = pl.element().str.strip_chars().str.extract(_SEQ_TOKEN, 1)
        return _split(col).list.eval(elem).alias(col)
    raise ValueError(f"unknown column kind {kind!r}")


def _bad_cell(col: str, kind: str) -> pl.Expr:
    """True where the text cell does not parse as ``kind`` (used only to diagnose)."""
    raw = _clean(col)
    parsed = parse_expr(col, kind, strict=False)
    if kind in ("int", "float"):
        return raw.is_not_null() & parsed.is_null()
    if kind == "label":
        return parsed.is_null()
    if kind in ("seq_int", "seq_str"):
        return parsed.list.eval(pl.element().is_null()).list.any()
    return pl.lit(False)


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
                    hit = lf.filter(_bad_cell(col, kind)).select("__row", col).head(1).collect()
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


@dataclass
class ReadResult:
    """A dataset turned into its canonical frame, with what the later stages need to know.

    ``frame`` is in time order and has a ``time`` column: UNIX seconds (``time_kind`` =
    ``"unix_seconds"``), a relative timestamp (``"relative"``) or the row's position in the
    files (``"file_order"``). Categorical columns are Int64 or String (null = missing),
    sequences are lists (most recent LAST), labels Int8 in {0, 1}, numerics Float64.
    ``add_sequences`` (TaobaoAd raw with a behaviour log) attaches behaviour sequences to
    any slice of ``frame``, so the pipeline can do it one day at a time.
    """

    dataset: str
    source: str
    frame: pl.DataFrame
    time_kind: str
    labels: list[str]
    features: list[dict[str, Any]]
    min_categr_count: int
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the reader dropped or found by the data policies, by name (e.g. ``reviews_out_of_window``)
    counts: dict[str, int] = field(default_factory=dict)
    add_sequences: Callable[[pl.DataFrame], pl.DataFrame] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def full_frame(self) -> pl.DataFrame:
        """The canonical frame with every column, sequences included."""
        return self.add_sequences(self.frame) if self.add_sequences else self.frame
