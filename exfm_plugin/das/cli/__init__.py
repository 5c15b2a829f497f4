"""``exfm das``: the Data Augmentation Service's command line.

:mod:`.main` registers the parsers and runs ``publish`` and ``run``; :mod:`.status` is ``exfm das
status``; :mod:`.common` holds what they share (the default metastore URL, the security
options). Importing this package imports argparse only: the DAS's heavy modules (torch, the
models, kazoo) are imported when a command runs.
"""
from __future__ import annotations

from .main import add_das_parser, run_das

__all__ = ["add_das_parser", "run_das"]
