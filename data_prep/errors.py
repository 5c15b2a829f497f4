"""The one error type of data preparation.

A bad input file must stop preparation with a message a user can act on: which file, which
column or row, what was found and what was expected. Every reader raises this type (never a
bare polars or gzip error), so callers and the CLI can catch one class.
"""
from __future__ import annotations

from exfm_plugin.errors import ExfmInputError

from typing import Any


class DataFormatError(ExfmInputError):
    """A source file does not have the format the reader expects.

    Attributes are kept separately (``path``, ``column``, ``row``, ``value``, ``expected``)
    so tests and tools can check them without parsing the message.
    """

    def __init__(self, message: str, *, path: Any = None, column: str | None = None,
                 row: int | None = None, value: Any = None, expected: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.column = column
        self.row = row
        self.value = value
        self.expected = expected
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if column is not None:
            parts.append(f"column '{column}'")
        if row is not None:
            parts.append(f"data row {row}")
        where = ", ".join(parts)
        text = f"{where}: {message}" if where else message
        if value is not None:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            text += f" (found {shown})"
        if expected is not None:
            text += f"; expected {expected}"
        super().__init__(text)
