"""Every ``exfm`` flag is taken only as written: no prefix of a long flag is accepted (issue 24:
``exfm run --gpu 0`` once ran as ``--gpus-per-step 0``), numeric flags are checked by the parser
with a message that names the flag, and ``--gpu N`` is FuxiCTR's synonym for ``--device cuda:N``.

The prefix test walks the real parsers (every subcommand, ``das`` included), so a flag added
later is covered without touching this file.
"""
from __future__ import annotations

import argparse
import types

import pytest
import yaml

from exfm_plugin.cli import build_parser, main
from exfm_plugin.cli_parsing import ExfmArgumentParser, float_at_least, int_at_least, iter_parsers
from exfm_plugin.pipeline.cli import resolve_device
from exfm_plugin.pipeline.grid import GridError


def _required_argv(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the parser's required flags, so parsing gets as far as the unknown ones."""
    argv: list[str] = []
    for action in parser._actions:
        if action.required and action.option_strings:
            value = str(next(iter(action.choices))) if action.choices else "1"
            argv += [action.option_strings[-1], value]
    return argv


def _accepted_prefixes(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(prefix, flag) pairs where ``parser`` takes the unambiguous prefix of a long flag for it."""
    flags = {o: a for a in parser._actions for o in a.option_strings if o.startswith("--")}
    accepted = []
    for flag, action in flags.items():
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        for end in range(3, len(flag)):
            prefix = flag[:end]
            if prefix in flags or sum(f.startswith(prefix) for f in flags) != 1:
                continue  # a flag of its own, or ambiguous: argparse refuses those anyway
            takes_value = action.nargs != 0
            argv = _required_argv(parser) + [prefix] + (["1"] if takes_value else [])
            try:
                _, extras = parser.parse_known_args(argv)
            except SystemExit:
                continue  # refused outright (e.g. the value did not fit): not accepted either
            if prefix not in extras:
                accepted.append((prefix, flag))
    return accepted


def _all_parsers() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(iter_parsers(build_parser()))


def test_the_walk_reaches_every_subcommand():
    paths = {path for path, _ in _all_parsers()}
    assert {(), ("prep",), ("run",), ("report",), ("grids",), ("export",),
            ("das",), ("das", "publish"), ("das", "run"), ("das", "status")} <= paths


@pytest.mark.parametrize("path", [p for p, _ in _all_parsers()], ids=lambda p: " ".join(p) or "exfm")
def test_no_prefix_of_a_long_flag_is_accepted(path, capsys):
    parser = dict(_all_parsers())[path]
    assert isinstance(parser, ExfmArgumentParser)  # subcommands inherit the class
    assert _accepted_prefixes(parser) == []


def test_the_prefix_check_catches_a_plain_argparse_parser():
    """The property above can fail: argparse's default takes ``--gpu`` for ``--gpus-per-step``."""
    plain = argparse.ArgumentParser(prog="x")
    plain.add_argument("--gpus-per-step", type=float, default=0.0)
    plain.add_argument("--grid", required=True)
    accepted = dict(_accepted_prefixes(plain))
    assert accepted["--gpu"] == "--gpus-per-step" and accepted["--gri"] == "--grid"


@pytest.mark.parametrize("parse, text, expected", [
    (int_at_least(1), "3", 3), (int_at_least(-1), "-1", -1), (float_at_least(0), "0", 0.0),
    (float_at_least(0, strict=True), "0.5", 0.5),
])
def test_number_types_accept_values_in_range(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("parse, text, fragment", [
    (int_at_least(1), "0", ">= 1"), (int_at_least(1), "1.5", "whole number"), (int_at_least(0), "x", "whole number"),
    (float_at_least(0, strict=True), "0", "> 0"), (float_at_least(0), "nan", ">= 0"),
    (float_at_least(0), "-0.1", ">= 0"),
])
def test_number_types_refuse_values_out_of_range(parse, text, fragment):
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        parse(text)


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--grid", "g", "--seeds", "0"], "exfm run: --seeds must be >= 1, got '0'"),
    (["run", "--grid", "g", "--workers", "0"], "exfm run: --workers must be >= 1"),
    (["run", "--grid", "g", "--gpus-per-step", "-1"], "exfm run: --gpus-per-step must be >= 0"),
    (["prep", "--dataset", "taobaoad", "--source", "synthetic", "--out", "o", "--seed", "-3"],
     "exfm prep: --seed must be >= 0"),
    (["run", "--grid", "g", "--gpus", "0"], "did you mean --gpus-per-step"),
    (["das", "run", "--snap", "x"], "exfm das run: "),
])
def test_bad_flags_are_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert fragment in err


@pytest.mark.parametrize("device, gpu, expected", [
    (None, None, "cpu"), (None, -1, "cpu"), (None, 0, "cuda:0"), (None, 2, "cuda:2"), ("cuda:1", 1, "cuda:1"),
    ("cpu", -1, "cpu"), ("cuda:0", None, "cuda:0"),
])
def test_gpu_is_fuxictrs_name_for_the_device(device, gpu, expected):
    assert resolve_device(device, gpu) == expected


def test_gpu_and_device_that_disagree_are_refused():
    with pytest.raises(GridError, match="--device cpu and --gpu 0"):
        resolve_device("cpu", 0)


def test_run_gpu_minus_1_trains_on_the_cpu(tmp_path, monkeypatch):
    """``exfm run --gpu -1`` reaches the runner with device cpu (FuxiCTR's ``gpu: -1``)."""
    import exfm_plugin.pipeline.runner as runner

    seen = {}

    def fake_run_grid(grid, work, results, *, device, **kwargs):
        seen["device"] = device
        return types.SimpleNamespace(grid=grid.name, ok=0, failed=0, skipped=0, seconds=0.0,
                                     records_path="-", failures=[])
    monkeypatch.setattr(runner, "run_grid", fake_run_grid)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"grid": "g", "dataset": "taobaoad", "size": 6000,
                                    "tuner_space": {"teacher": "DCN", "student": "FM", "method": "none"}}))
    assert main(["run", "--grid", str(path), "--gpu", "-1", "--no-progress"]) == 0
    assert seen == {"device": "cpu"}


def test_ctrl_c_in_any_command_is_one_line_exit_130(monkeypatch, capsys):
    """Outside a grid run (whose line names k/n cells: test_run_lifecycle.py) Ctrl-C still ends
    in one line and the shell's 128 + SIGINT, never a KeyboardInterrupt traceback."""
    import exfm_plugin.pipeline.cli_tools as cli_tools

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_tools, "run_grids", interrupted)
    assert main(["grids"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "exfm grids: interrupted (Ctrl-C); rerun the same command"
