"""The Ray engine (``exfm run --engine ray``) on a local Ray with 2 CPUs: the same records and
the same artifacts as the in-process engine, a worker killed mid-step retried, two racing builds
of one step settled by the rename, a killed driver resumed with every record once; and the step
plan's dependencies checked without Ray by running it in an adversarial order."""
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch
import yaml

from exfm_plugin.pipeline.grid import load_grid
from exfm_plugin.pipeline.artifacts import ArtifactStore
from exfm_plugin.pipeline.context import Context
from exfm_plugin.pipeline.jobs import grid_jobs
from exfm_plugin.pipeline.plan import plan_grid
from exfm_plugin.pipeline.prep_steps import prepare_data
from exfm_plugin.pipeline.ray_engine import BARRIER_ENV, CRASH_ENV, StepTask, _step_task, run_grid_ray
from exfm_plugin.pipeline.records import read_records
from exfm_plugin.pipeline.runner import record_fields, run_grid
from exfm_plugin.pipeline.steps import read_built, run_step

TINY = 6000  # impressions: seconds per grid
STEP_KINDS = ("fm", "das", "vm", "vm_eval", "fm_eval")
# the fields that differ between two runs of the same cell by design: timings and artifact paths
RUN_FIELDS = {"wall_time_s", "train_seconds", "train_samples_per_s", "eval_samples_per_s", "vm_artifact"}


def write_grid(path, **fields):
    grid = {"grid": "t", "dataset": "taobaoad", "size": TINY, "seeds": 1, "vm_schedule": "stream",
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256},
                                "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": ["DCN"], "student": ["FM"], "method": ["none", "ah"]}}
    grid.update(fields)
    path.write_text(yaml.safe_dump(grid))
    return str(path)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process engine's run of the grid, with one torch thread like a 1-CPU Ray task."""
    root = tmp_path_factory.mktemp("inproc")
    grid = load_grid(write_grid(root / "t.yaml"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_grid(grid, str(root / "work"), str(root / "results"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary.failed == 0, summary.failures
    return grid, root, {r["cell_id"]: r for r in read_records([summary.records_path])}


def built_keys(work, kind):
    """The finished artifacts of a kind (step lock files, ``.<key>.lock``, are not artifacts)."""
    directory = work / "artifacts" / kind
    return sorted(n for n in os.listdir(directory) if not n.startswith(".")) if directory.is_dir() else []


def assert_same_records(records, expected):
    assert sorted(records) == sorted(expected)
    for cid, record in records.items():
        want = expected[cid]
        assert record["status"] == "ok", record["error"]
        assert record["config_hash"] == want["config_hash"]
        # bitwise: each step seeds torch itself and runs on one thread in both engines
        assert {k: v for k, v in record.items() if k not in RUN_FIELDS} == \
               {k: v for k, v in want.items() if k not in RUN_FIELDS}


def test_ray_engine_gives_the_in_process_records_and_artifacts(ray_local, reference, tmp_path):
    grid, root, expected = reference
    summary = run_grid_ray(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    records = read_records([summary.records_path])
    assert len(records) == len({r["cell_id"] for r in records}) == len(grid_jobs(grid))
    assert_same_records({r["cell_id"]: r for r in records}, expected)
    # as many steps of each kind, each built once: one task per artifact the in-process run made
    # (keys differ between the two work directories: DAS and evaluation steps name their files)
    for kind in STEP_KINDS:
        assert len(built_keys(tmp_path / "work", kind)) == len(built_keys(root / "work", kind)), kind
    assert built_keys(tmp_path / "work", "fm") == built_keys(root / "work", "fm")  # FM keys name no path
    assert summary.steps == sum(len(built_keys(root / "work", kind)) for kind in STEP_KINDS)
    assert [run.kind for run in summary.step_runs].count("prep") == 1
    assert len(summary.step_runs) == summary.steps + 1 and all(run.built_here for run in summary.step_runs)
    again = run_grid_ray(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert (again.ok, again.skipped, again.steps) == (0, len(records), 0)


def test_a_worker_killed_mid_step_is_retried(ray_local, tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path / "t.yaml", vm_schedule="day",
                                tuner_space={"teacher": "DCN", "student": "FM", "method": ["none", "kd"]}))
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"das:{marker}")  # the worker dies once, its DAS split written, not renamed
    summary = run_grid_ray(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert marker.exists(), "the crash hook never ran: the test proves nothing"
    assert summary.failed == 0, summary.failures
    records = read_records([summary.records_path])
    assert len(records) == len({r["cell_id"] for r in records}) == len(grid_jobs(grid)) == 3
    assert all(r["status"] == "ok" for r in records)
    assert len(built_keys(tmp_path / "work", "das")) == 1  # rebuilt once by the retry


# A VM step, built by two Ray tasks at once: the step lock (pipeline/artifacts.py) lets one build it
# and the other reuse it.
def test_two_racing_builds_of_a_step_leave_one_artifact(ray_local, tmp_path):
    kind = "vm"
    grid = load_grid(write_grid(tmp_path / "t.yaml", tuner_space={"teacher": "DCN", "student": "FM",
                                                                 "method": "kd"}))
    store_root = str(tmp_path / "work" / "artifacts")
    ctx = Context(grid, ArtifactStore(store_root), progress=False)
    plan = plan_grid(ctx, prepare_data(ctx), grid_jobs(grid))
    step = next(s for s in plan.steps.values() if s.kind == kind and not s.deps)  # the day-1 VM link
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    task = StepTask(grid, store_root, os.getcwd(), 1, False, step=step,
                    hooks={BARRIER_ENV: f"{barrier}:1"})  # each build leaves a mark before its rename
    runs = ray.get([_step_task.remote(task), _step_task.remote(task)])
    assert len(os.listdir(barrier)) == 1  # the step lock: the second waited, then reused the first's build
    assert [run.key for run in runs] == [step.key, step.key]
    assert sorted(run.built_here for run in runs) == [False, True]
    assert built_keys(tmp_path / "work", kind) == [step.key]  # one artifact, no temporary left
    assert ArtifactStore(store_root).is_done(kind, step.key)


def test_the_plan_names_every_dependency(tmp_path):
    """Built one step at a time, always the most recently planned step whose dependencies are
    built (the order that starts a step earliest), every step finds its inputs and the records
    equal the in-process engine's: a missing dependency would not be built and fail its step."""
    grid = load_grid(write_grid(tmp_path / "t.yaml", tuner_space={"teacher": "DCN", "student": "FM",
                                                                 "method": ["none", "kd"]}))
    store_root = str(tmp_path / "work" / "artifacts")
    ctx = Context(grid, ArtifactStore(store_root), progress=False)
    jobs = grid_jobs(grid)
    plan = plan_grid(ctx, prepare_data(ctx), jobs)
    keys = list(plan.steps)
    deps = {k: {d.key for d in s.deps} for k, s in plan.steps.items()}
    assert all(keys.index(d) < keys.index(k) for k in keys for d in deps[k])
    assert {s.kind for s in plan.steps.values()} == set(STEP_KINDS)
    built: set[str] = set()
    while len(built) < len(keys):
        step = next(plan.steps[k] for k in reversed(keys) if k not in built and deps[k] <= built)
        assert run_step(ctx, step)[1]  # built here, from its dependencies' outputs
        built.add(step.key)
    measured = {r.cell_id: record_fields(ctx, r, read_built(ctx.store, r.step).meta) for r in plan.records}
    reference = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert reference.ok == len(jobs)  # every step was built: the in-process engine only reads
    for record in read_records([reference.records_path]):
        assert record["metrics"] == measured[record["cell_id"]]["metrics"]


def test_a_killed_driver_resumes_with_every_record_once(tmp_path):
    path = write_grid(tmp_path / "t.yaml", vm_schedule="day",
                      tuner_space={"teacher": "DCN", "student": "FM", "method": ["none", "kd", "ah"]})
    cmd = [sys.executable, "-m", "exfm_plugin.cli", "run", "--engine", "ray", "--workers", "2", "--grid", path,
           "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--no-progress"]
    records_path = tmp_path / "results" / "records" / "t.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if records_path.exists() and len(read_records([records_path])) >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed; the test needs a bigger grid"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-grid
    proc.wait()
    partial = {r["cell_id"] for r in read_records([records_path])}
    total = len(grid_jobs(load_grid(path)))
    assert 1 <= len(partial) < total
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    ids = [r["cell_id"] for r in read_records([records_path])]
    assert len(ids) == len(set(ids)) == total
    assert f"{len(partial)} already done" in out.stdout


@pytest.mark.parametrize("extra, message", [
    (["--engine", "ray", "--device", "cuda:0"], "use --gpus-per-step"),
    (["--address", "127.0.0.1:6379"], "options of --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers must be >= 1"),  # refused by the parser itself
])
def test_engine_options_are_checked_before_any_work(tmp_path, capsys, extra, message):
    from exfm_plugin.cli import main

    path = write_grid(tmp_path / "t.yaml")
    try:
        status = main(["run", "--grid", path, "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r"), *extra])
    except SystemExit as exc:  # a flag's value checked by argparse (exfm_plugin.cli_parsing)
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()
