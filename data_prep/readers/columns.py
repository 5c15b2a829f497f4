"""Column names and cell parsing of the dataset readers' CSV tables.

:func:`resolve_columns` maps a header to canonical names (trailing spaces, ``noclk``/``nonclk``,
``customer``/``customer_id``); :func:`parse_expr` is the polars expression that types a text
column:

- ``NULL``, ``NaN``, ``\\N`` and blank cells become null;
- integer ids written as floats (``"123.0"``) become ``123``;
- sequences are split on ``^`` into lists.

:func:`bad_cell` marks the cells that do not parse, for the error messages, and
:data:`KIND_EXPECTED` says what each column kind accepts.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import polars as pl

from ..errors import DataFormatError

NULL_TOKENS = ["", "NULL", "null", "Null", "NaN", "nan", "None", "none", "\\N"]
SEQ_SEP = "^"
_INT_AS_FLOAT = r"^([+-]?\d+)\.0*$"
_SEQ_TOKEN = r"^([^,|;\s]+)$"

#: What each column kind accepts, as said in error messages.
KIND_EXPECTED = {
    "int": "an integer (123 or 123.0); blank or NULL for missing",
    "float": "a number; blank or NULL for missing",
    "str": "a token",
    "label": "0 or 1",
    "seq_int": "integers joined by '^' (e.g. 12^7^30)",
    "seq_str": "tokens joined by '^' (no ',', '|', ';' or spaces inside a token)",
}


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


def bad_cell(col: str, kind: str) -> pl.Expr:
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
