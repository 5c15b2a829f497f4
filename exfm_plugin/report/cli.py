"""``exfm report --records PATH [PATH ...] --out DIR``: the CLI hook of the report."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..contracts.records import RecordError


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``exfm report`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "report", help="records -> leaderboard.md / CSV / figures",
        description="Aggregate the pipeline's result records over seeds, compare methods seed by seed with "
                    "95%% intervals, put the paper's and BARS' numbers beside them and draw Figures 9-12 "
                    "where their records exist.")
    p.add_argument("--records", nargs="+", required=True, metavar="PATH",
                   help="records .jsonl file(s), or result directories holding them; later ones win per cell_id")
    p.add_argument("--out", default="results", metavar="DIR", help="output directory (default: results)")
    p.add_argument("--reference", default="benchmarks/reference", metavar="DIR",
                   help="directory with the paper's table*.csv and bars_leaderboard.csv")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    """CLI body of ``exfm report``: 0 on success, 2 on a bad or missing records file."""
    from .build import build_report  # polars/scipy/matplotlib only when the command runs
    from .load import expand_paths

    # bad input raises RecordError, which exfm_plugin.cli.main prints as one line (exit 2)
    for path in args.records:  # a missing path or an empty folder is a wrong path, not an empty report
        if not Path(path).exists():
            raise RecordError(f"no such records file or folder: {path}; expected the results directory of "
                              "`exfm run` or a records .jsonl file")
        if Path(path).is_dir() and not expand_paths([path]):
            raise RecordError(f"no records in folder {path}: it holds no records.jsonl, *.jsonl or records/*.jsonl; "
                              "expected the results directory of `exfm run` or a records .jsonl file")
    try:
        paths = build_report(args.records, args.out, getattr(args, "reference", "benchmarks/reference"))
    except FileNotFoundError as e:  # a records file or the --reference folder: one line, exit 2
        raise RecordError(str(e)) from None
    print(f"wrote {paths.markdown}, {paths.leaderboard_csv}, {paths.records_csv}")
    for name in sorted(paths.figures):
        print(f"wrote {paths.figures[name]}")
    for name, why in sorted(paths.missing_figures.items()):
        print(f"skipped {name}: {why}")
    return 0
