"""``exfm das``'s parsers on their own: no prefix of a long flag is taken for the flag.

The parsers are built under a plain ``argparse.ArgumentParser`` here, so the test sees the das
parsers' own setting (``allow_abbrev=False``), not one inherited from the ``exfm`` parser class.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys

import pytest

from exfm_plugin.das.cli import add_das_parser


def _das_parsers() -> tuple[argparse.ArgumentParser, list[argparse.ArgumentParser]]:
    top = argparse.ArgumentParser(prog="t")
    add_das_parser(top.add_subparsers(dest="command"))
    found, todo = [], [top]
    while todo:  # every parser below the top one, through the sub-parser actions
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += action.choices.values()
                found += action.choices.values()
    return top, found


def test_every_das_parser_sets_allow_abbrev_false():
    _, parsers = _das_parsers()
    assert sorted(p.prog for p in parsers) == ["t das", "t das publish", "t das run", "t das status"]
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize("argv", [["das", "status", "--snap", "S"], ["das", "status", "--meta", "sqlite:///x.db"],
                                  ["das", "run", "--snapshots", "S", "--day-files", "a=x.h5", "--out", "O",
                                   "--shard", "10"]])
def test_a_prefix_of_a_flag_is_refused(argv, capsys):
    top, _ = _das_parsers()
    with pytest.raises(SystemExit) as exc:
        top.parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_full_flags_still_parse():
    top, _ = _das_parsers()
    args = top.parse_args(["das", "run", "--snapshots", "S", "--day-files", "a=x.h5", "--out", "O",
                           "--shard-rows", "10"])
    assert (args.snapshots, args.day_files, args.out, args.shard_rows) == ("S", ["a=x.h5"], "O", 10)


def test_building_the_parser_imports_no_das_subsystem():
    """``exfm --help`` must stay fast: the das CLI package imports argparse, not the SPD (torch),
    the augmenter or the metastore (kazoo); they are imported when a command runs."""
    code = ("import sys, exfm_plugin.das.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('exfm_plugin.das.', 'kazoo'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(out.strip()) == ["exfm_plugin.das.cli", "exfm_plugin.das.cli.common",
                                             "exfm_plugin.das.cli.main", "exfm_plugin.das.cli.status"]


def test_the_das_package_resolves_its_public_names_from_the_subpackages():
    import exfm_plugin.das as das
    from exfm_plugin.das import augment, metastore, service, spd

    homes = (spd, metastore, augment, service)
    for name in das.__all__:
        assert any(getattr(home, name, None) is getattr(das, name) for home in homes), name
    with pytest.raises(AttributeError, match="no attribute 'worker'"):
        das.worker  # the old flat modules are gone: exfm_plugin.das.augment.worker
