"""The ``exfm`` command: one subcommand per stage of the pipeline (data, DAS, grid runs, report).

    exfm prep --dataset taobaoad|amazon|kuaivideo --source raw|bars|synthetic \\
              --input DIR --out DIR [--seed N] [--size tiny|small|medium|full]
    exfm das publish|run|status ...   (the Data Augmentation Service; see exfm_plugin/das/cli/main.py)
    exfm run --grid GRID [--data-root DIR] [--device cpu|cuda:0 | --gpu N] [--seeds N]
    exfm report --records DIR|FILE ... --out DIR
    exfm grids                          (the shipped grids: exfm run --grid NAME)
    exfm export --records DIR --cell CELL_ID --out DIR   (a cell's student as a FuxiCTR model)

``-v`` / ``--verbose`` may stand anywhere on the line; ``exfm --version`` prints the versions.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Sequence

from .allocator import configure_allocator
from .cli_parsing import ExfmArgumentParser, int_at_least, iter_parsers
from .contracts import DATASETS, SIZES, SOURCES
from .errors import EXIT_INPUT, format_input_error, is_input_error

#: the exit status of a command stopped by Ctrl-C (the shell's 128 + SIGINT)
EXIT_INTERRUPTED = 130


def _add_prep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="read a dataset's files into 8 HDF5 day files + fuxictr feature map",
                       description="Read raw, BARS or synthetic files of a dataset, cut them into the "
                                   "paper's 8 days, fit the vocabulary and write one HDF5 file per day.")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--input", default=None, metavar="DIR",
                   help="directory with the dataset files (synthetic: where to write them; "
                        "default <out>/raw/<dataset>)")
    p.add_argument("--out", required=True, metavar="DIR", help="output root; files go to DIR/<dataset_id>/")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of negative sampling / synthetic data")
    p.add_argument("--size", default="tiny", choices=SIZES,
                   help="synthetic data size")
    p.add_argument("--vocab-days", default=None,
                   help="days the vocabulary is fitted on: 'all' or e.g. '1,2,3,4' (default days 1..4)")
    p.add_argument("--dataset-id", default=None, help="name of the output dataset (default <dataset>_<source>)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="drop exact duplicate rows (default: keep them; they are counted and reported)")
    p.set_defaults(func=_run_prep)


def _run_prep(args: argparse.Namespace) -> int:
    from data_prep.prepare import parse_vocab_days, prepare

    # bad input (DataFormatError, a bad --out) raises ExfmInputError: main() prints one line, exit 2
    summary = prepare(args.dataset, args.source, args.input, args.out, seed=args.seed, size=args.size,
                      vocab_policy=parse_vocab_days(args.vocab_days), dataset_id=args.dataset_id,
                      drop_duplicates=args.drop_duplicates)
    print(summary.table())
    return 0


def _add_das(sub: argparse._SubParsersAction) -> None:
    from .das.cli import add_das_parser  # argparse only: the DAS's heavy imports wait for the command

    add_das_parser(sub)


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    from .pipeline.cli import add_plan_parser, add_run_parser
    from .report.cli import add_report_parser

    from .pipeline.cli_tools import add_export_parser, add_grids_parser

    add_run_parser(sub)
    add_plan_parser(sub)
    add_report_parser(sub)
    add_grids_parser(sub)
    add_export_parser(sub)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"exfm {__version__} (fuxictr {of('fuxictr')}, torch {of('torch')}, python {sys.version.split()[0]})"


def _pop_verbose(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``-v``/``--verbose`` anywhere (before a ``--``) is the global flag, so ``exfm run -v`` works
    as ``exfm -v run``; returns the other arguments and whether it was given."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:end])
    return [a for i, a in enumerate(argv) if i >= end or a not in ("-v", "--verbose")], verbose


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every built subcommand."""
    # every sub-parser inherits the class: no prefix matching, one-line errors (cli_parsing.py)
    parser = ExfmArgumentParser(prog="exfm", description="ExFM for FuxiCTR: data, teachers, students.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (anywhere on the line)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_prep(sub)
    _add_das(sub)
    _add_pipeline(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exfm`` console script; returns the exit status."""
    argv, verbose = _pop_verbose(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # the subcommand's parser says it: "exfm run: unrecognized arguments: --gpu-p"
        _reject_unknown(parser, args, extras)
    args.verbose = args.verbose or verbose
    configure_allocator()  # EXFM_MALLOC=retain: steps reuse freed memory (allocator.py)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, exit 130 (128 + SIGINT), no traceback
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"exfm {_command_name(args)}: {_interrupted_text(exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # bad input -> one line, exit 2; any other exception is a bug: traceback
        if not is_input_error(exc):
            raise
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(format_input_error(_command_name(args), exc), file=sys.stderr)
        return EXIT_INPUT


def _reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Exit 2 with one line from the innermost subcommand's parser; a prefix of its long flags
    is named as such (prefixes are never accepted: cli_parsing.py)."""
    path = tuple(p for p in (args.command, getattr(args, "das_command", None)) if p)
    sub = dict(iter_parsers(parser)).get(path, parser)
    flags = sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--"))
    hints = [f"{e} is not a flag (did you mean {' or '.join(m)}?)" for e in extras if e.startswith("--")
             for m in [[f for f in flags if f.startswith(e.split("=")[0])]] if m]
    sub.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; {'; '.join(hints)}" if hints else ""))


def _interrupted_text(exc: KeyboardInterrupt) -> str:
    """What an interrupted command says: a run names how far it got (pipeline.cli.RunInterrupted)."""
    text = str(exc).strip()
    return text if text else "interrupted (Ctrl-C); rerun the same command"


def _command_name(args: argparse.Namespace) -> str:
    """``prep``, ``das publish``, ``run``...: the command as the user typed it."""
    sub = getattr(args, "das_command", None) if args.command == "das" else None
    return f"{args.command} {sub}" if sub else str(args.command)


if __name__ == "__main__":
    sys.exit(main())
