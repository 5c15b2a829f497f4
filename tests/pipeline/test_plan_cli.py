"""``exfm plan``: the steps it prints are the steps the in-process engine then builds, a finished
grid plans as all done, a bad grid is one line (exit 2), and every shipped grid plans in seconds."""
import os
import re
from collections import Counter

import pytest
import yaml

from exfm_plugin.cli import main
from exfm_plugin.pipeline.grid import load_grid, load_grids
from exfm_plugin.pipeline.plan_cli import KIND_NAMES
from exfm_plugin.pipeline.artifacts import ArtifactStore
from exfm_plugin.pipeline.context import Context
from exfm_plugin.pipeline.jobs import grid_jobs
from exfm_plugin.pipeline.plan import plan_grid
from exfm_plugin.pipeline.prep_steps import prepare_data
from exfm_plugin.pipeline.runner import run_grid
from exfm_plugin.resources import grid_names

TINY = 6000  # impressions, as tests/pipeline/test_pipeline.py
SUMMARY = re.compile(r"^grid (?P<name>\S+): (?P<counts>.*); (?P<done>\d+) done, (?P<todo>\d+) to build; "
                     r"(?P<shared>\d+) shared by more than one cell$")
STEP = re.compile(r"^    (?P<kind>\S+(?: \S+)?) +(?P<key>[0-9a-f]{16})  (?P<status>done|to build) *(?P<n>\d+) cells?: ")
WORD_TO_KIND = {v: k for k, v in KIND_NAMES.items()}


def write_grid(tmp_path, **fields):
    grid = {"grid": "t", "dataset": "taobaoad", "size": TINY, "seeds": 1,
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": ["DCN"], "student": ["FM"], "method": ["none", "ah"]}}
    grid.update(fields)
    path = tmp_path / f"{grid['grid']}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def plan_output(capsys, *argv):
    """(exit status, stdout lines) of ``exfm plan ARGV``."""
    capsys.readouterr()
    status = main(["plan", *argv])
    return status, capsys.readouterr().out.splitlines()


def listed_steps(lines):
    """kind -> {key: (status, number of cells)} from ``--list`` output."""
    steps = {}
    for line in lines:
        m = STEP.match(line)
        if m:
            steps.setdefault(WORD_TO_KIND[m["kind"]], {})[m["key"]] = (m["status"], int(m["n"]))
    return steps


def artifact_dirs(root):
    """kind -> artifact directory names the engine left (lock files and temporaries are dot-files;
    ``spd`` is the FMs' snapshot store, not a step kind)."""
    return {kind: {d for d in os.listdir(root / kind) if not d.startswith(".")}
            for kind in os.listdir(root) if kind != "spd" and not kind.startswith(".")}


def test_plan_lists_exactly_the_steps_the_engine_builds_then_all_done(tmp_path, capsys, monkeypatch):
    # stream schedule, round 0: each VM is a chain of day links over days 1..5. Day d is augmented
    # by the FM trained through day d-1, so day 1 has no teacher and its link is shared by `none`
    # and `ah`; days 2..5 need the FM through days 1..4 (also the FM record's) and one DAS each
    monkeypatch.chdir(tmp_path)  # DAS keys hold absolute day-file paths: plan and run from one place
    path = write_grid(tmp_path, vm_schedule="stream")
    status, lines = plan_output(capsys, "--grid", path, "--work", "work", "--prepare", "--list")
    assert status == 0
    summary = SUMMARY.match(lines[0])
    assert summary and summary["name"] == "t"
    planned = listed_steps(lines)
    assert {k: len(v) for k, v in planned.items()} == {"prep": 1, "fm": 4, "das": 4, "vm": 5 + 4, "vm_eval": 2,
                                                       "fm_eval": 1}
    assert int(summary["done"]) == 1 and int(summary["todo"]) == 20  # only the data step is built
    assert int(summary["shared"]) == 1 + 4 + 1  # prep (3 records), FM days 1..4 (ah + FM record), day-1 link
    assert sorted(n for _, n in planned["vm"].values()) == [1] * 8 + [2]
    assert planned["prep"] == {next(iter(planned["prep"])): ("done", 3)}

    # the engines' plan (plan.plan_grid) holds exactly the steps printed as "to build", and every
    # dependency of a step is planned before it
    grid = load_grid(path)
    ctx = Context(grid, ArtifactStore("work/artifacts"), progress=False)
    plan = plan_grid(ctx, prepare_data(ctx, build=False), grid_jobs(grid))
    assert set(plan.steps) == {key for steps in planned.values() for key, (st, _) in steps.items() if st == "to build"}
    order = list(plan.steps)
    assert all(order.index(dep) < order.index(key) for dep, key in plan.edges())

    run = run_grid(load_grid(path), "work", "results", progress=False, follow=False)
    assert (run.ok, run.failed) == (3, 0)
    built = artifact_dirs(tmp_path / "work" / "artifacts")
    assert built == {kind: set(keys) for kind, keys in planned.items()}  # the same keys, kind by kind

    status, lines = plan_output(capsys, "--grid", path, "--work", "work")
    after = SUMMARY.match(lines[0])
    assert status == 0 and int(after["done"]) == 21 and int(after["todo"]) == 0
    assert after["counts"] == summary["counts"]


def test_without_prepare_a_missing_data_step_is_reported_and_nothing_is_written(tmp_path, capsys):
    path = write_grid(tmp_path)
    status, lines = plan_output(capsys, "--grid", path, "--work", str(tmp_path / "work"))
    assert status == 0
    assert lines[0].startswith("grid t: 3 cells (2 VM, 1 FM); data step prep ") and "is not built" in lines[0]
    assert "--prepare" in lines[1]
    assert not (tmp_path / "work").exists()


def test_a_bad_grid_file_is_one_line_exit_2(tmp_path, capsys):
    path = write_grid(tmp_path, learning_rate=1)
    assert main(["plan", "--grid", path, "--work", str(tmp_path / "work"), "--prepare"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("exfm plan: ") and "unknown grid key" in err
    assert not (tmp_path / "work").exists()  # refused before any data step is built


def test_a_grid_name_that_is_not_shipped_is_one_line_exit_2(capsys):
    assert main(["plan", "--grid", "no_such_grid"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_grid" in err and "smoke_table2" in err


@pytest.mark.parametrize("argv, fragment", [(["--vm-schedule", "weekly"], "--vm-schedule: invalid choice"),
                                            (["--seeds", "0"], "--seeds must be >= 1")])
def test_a_bad_flag_is_one_line_exit_2(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--grid", "smoke_table2", *argv])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and fragment in err


@pytest.mark.slow  # about 2 s a grid level on 2 shared cores (the data steps are built), ~1 min in all
@pytest.mark.parametrize("name", grid_names())
def test_every_shipped_grid_plans_at_tiny_size(name, tmp_path, capsys):
    status, lines = plan_output(capsys, "--grid", name, "--size", "tiny", "--work", str(tmp_path / "w"),
                                "--prepare", "--list")
    assert status == 0
    summaries = [SUMMARY.match(line) for line in lines if line.startswith("grid ")]
    assert [m["name"] for m in summaries] == [g.name for g in load_grids(name, size="tiny")]
    steps = Counter(m["kind"] for m in map(STEP.match, lines) if m)
    for m in summaries:
        counts = {word: int(n) for n, word in re.findall(r"(\d+) ([A-Za-z ]+?)(?:,|$)", m["counts"])}
        assert counts["prep"] == 1 and counts["VM evals"] >= 1 and counts["FM evals"] >= 1
        assert sum(counts.values()) == int(m["done"]) + int(m["todo"])
    # the listing has one line per step: as many as the summaries count, kind by kind
    totals = Counter()
    for m in summaries:
        totals.update({word: int(n) for n, word in re.findall(r"(\d+) ([A-Za-z ]+?)(?:,|$)", m["counts"])})
    assert steps == totals


def test_every_shipped_grid_without_prepare_names_its_data_step_and_writes_nothing(tmp_path, capsys):
    for name in grid_names():
        status, lines = plan_output(capsys, "--grid", name, "--size", "tiny", "--work", str(tmp_path / "w"))
        firsts = [line for line in lines if line.startswith("grid ")]
        assert status == 0 and len(firsts) == len(load_grids(name, size="tiny")), name
        assert all(re.search(r"data step prep [0-9a-f]{16} is not built", line) for line in firsts), name
    assert not (tmp_path / "w").exists()


def test_a_cell_that_cannot_be_planned_is_named_and_the_status_is_1(tmp_path, capsys):
    # a dropped feature the data does not have: the run would record both VM cells as failed
    path = write_grid(tmp_path, vm_drop_features=["no_such_feature"])
    status, lines = plan_output(capsys, "--grid", path, "--work", str(tmp_path / "w"), "--prepare")
    failed = [line for line in lines if "could not be planned" in line]
    assert status == 1 and [line.split()[1] for line in failed] == ["#0", "#1"]
    assert all("no_such_feature" in line for line in failed)
    assert SUMMARY.match(lines[0])["counts"].endswith("1 FM evals")  # the FM record still plans
