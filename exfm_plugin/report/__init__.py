"""Result records -> leaderboard (markdown, CSV) and figures, one module a concern:

``load`` (read and validate records), ``references`` (paper and BARS numbers), ``stats``
(t-intervals, verdicts), ``compare`` (seed-paired method comparisons), ``aggregate`` (cells over
seeds, constant predictor), ``markdown`` / ``sections`` (the text), ``figures``, ``build``
(:func:`build_report`) and ``cli`` (``exfm report``). The public names are imported on first
use, so building the ``exfm`` parser does not load polars and scipy.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"RecordError": "..contracts.records", "ReportPaths": ".build", "build_report": ".build",
           "add_report_parser": ".cli", "run_report": ".cli", "load_records": ".load"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
