"""What a dataset reader returns: the canonical frame and what the later stages need to know."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl


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
