"""The argument parser of every ``exfm`` command: no prefix matching, one-line errors, checked numbers.

argparse by default takes any unambiguous prefix of a long flag for the flag, so FuxiCTR's habit
``exfm run --gpu 0`` once ran as ``--gpus-per-step 0`` (the whole grid on the CPU, exit 0).
:class:`ExfmArgumentParser` switches that off (``allow_abbrev=False``); sub-parsers made with
``add_subparsers().add_parser`` inherit the class, so every subcommand (``das`` included) gets
it from the top-level parser. Its errors are one line, ``exfm run: --seeds must be >= 1, got '0'``,
exit status 2 (the project's error contract, :mod:`exfm_plugin.errors`).

Numeric flags take :func:`int_at_least` / :func:`float_at_least` as ``type=``, so a bad value
is refused by the parser with a message that names the flag.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, NoReturn

from .errors import EXIT_INPUT

__all__ = ["ExfmArgumentParser", "float_at_least", "int_at_least", "iter_parsers"]

_ARGUMENT_RE = re.compile(r"^argument (?P<flags>[^:]+): (?P<text>.*)$", re.S)


class ExfmArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that never accepts a prefix of a long flag and prints its errors as
    the one line ``<prog>: <message>`` (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False  # always: a prefix must never stand for a flag
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        m = _ARGUMENT_RE.match(message)
        if m:  # "argument --seeds: must be >= 1" -> "--seeds must be >= 1"
            flag = max(m["flags"].split("/"), key=len)
            text = m["text"]
            message = f"{flag} {text}" if text.startswith("must ") else f"{flag}: {text}"
        one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
        self.exit(EXIT_INPUT, f"{self.prog}: {one_line} (see {self.prog} --help)\n")


def _number(kind: Callable[[str], float], kind_name: str, minimum: float, strict: bool) -> Callable[[str], float]:
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind_name} {bound}, got {text!r}") from None
        if value < minimum or (strict and value == minimum) or value != value:  # NaN too
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    parse.__name__ = f"{kind_name.split()[-1]}_{'above' if strict else 'at_least'}_{minimum:g}"
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """``type=`` of a whole-number flag that must be ``>= minimum``."""
    return _number(int, "a whole number", minimum, strict=False)  # type: ignore[return-value]


def float_at_least(minimum: float, *, strict: bool = False) -> Callable[[str], float]:
    """``type=`` of a number flag that must be ``>= minimum`` (``> minimum`` with ``strict``)."""
    return _number(float, "a number", minimum, strict=strict)


def iter_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, parser)`` of ``parser`` and of every sub-parser below it, depth first:
    what the flag-property tests walk."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_parsers(sub, path + (name,))
