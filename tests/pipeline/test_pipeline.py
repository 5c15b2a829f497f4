"""The streaming pipeline: grid expansion, refusal of bad grids, shared steps, resume, staleness."""
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from exfm_plugin.pipeline.grid import GridError, expand_cells, load_grid
from exfm_plugin.pipeline.records import read_records
from exfm_plugin.pipeline.runner import check_device, run_grid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRIDS = os.path.join(REPO, "yaml_configs", "grids")
TINY = 6000  # impressions: enough rows per day for every label and domain, seconds per grid


def write_grid(tmp_path, **fields):
    grid = {"grid": "t", "dataset": "taobaoad", "size": TINY, "seeds": 1,
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256},
                                "DMIN": {"dnn_hidden_units": [8], "attention_hidden_units": [8]},
                                "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": ["DCN"], "student": ["FM"], "method": ["none", "ah"]}}
    grid.update(fields)
    path = tmp_path / f"{grid['grid']}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def test_full_grids_expand_to_the_papers_cell_counts():
    counts = {name: len(expand_cells(load_grid(os.path.join(GRIDS, f"{name}.yaml"))))
              for name in ("table2", "table3", "table4", "table5", "fig9", "fig12", "fig10_11")}
    assert counts["table2"] == 3 * 3 * 5 * 3   # FMs x VMs x (4 methods + the adapter control) x seeds
    assert counts["table3"] == 3 * 3 * 4 * 3   # FMs x VMs x methods x seeds
    assert counts["table4"] == 3 * 5 * 3 and counts["table5"] == 3 * 2 * 3  # units x methods x seeds
    assert counts["fig12"] == (2 * 2 * 3 + 1) * 3                        # LS x GS x LW + none
    assert counts["fig9"] == 4 * 4 * 3 * 3                               # methods x freeze x rounds x seeds
    # sweeps: none + 7 LW + 5 LS + 7 GS, the (1,1,1) cell shared by the three sweeps
    assert counts["fig10_11"] == (1 + 7 + 5 + 7 - 2) * 3


def test_scales_of_none_and_kd_are_deduplicated(tmp_path):
    path = write_grid(tmp_path, tuner_space={"teacher": ["DCN", "DMIN"], "student": "FM",
                                             "method": ["none", "kd", "ah"], "label_scale": [1, 10]})
    cells = expand_cells(load_grid(path))
    per_teacher = {t: sorted((c.method, c.label_scale) for c in cells if c.teacher == t) for t in ("DCN", "DMIN")}
    assert per_teacher["DCN"] == [("ah", 1.0), ("ah", 10.0), ("kd", 1.0), ("none", 1.0)]
    assert per_teacher["DCN"] == per_teacher["DMIN"]


@pytest.mark.parametrize("fields, message", [
    ({"learning_rate": 1}, "unknown grid key"),
    ({"tuner_space": {"teacher": "DCN", "student": "xDeepFM", "method": "none"}}, "student='xDeepFM'"),
    ({"tuner_space": {"teacher": "DCN", "student": "FM", "method": "distill"}}, "method='distill'"),
    ({"tuner_space": {"teacher": "DCN", "student": "FM", "method": "ah", "grad_scale": 0}}, "grad_scale"),
    ({"tuner_space": {"teacher": "DCN", "student": "FM", "method": "ah", "alpha": 2}}, "unknown tuner_space key"),
    ({"model_overrides": {"NotAModel": {}}}, "unknown model"),
    ({"mode": "tasks"}, "mode 'tasks' is defined for kuaivideo"),
    ({"vm_schedule": "weekly"}, "vm_schedule='weekly'"),
    ({"vm_schedule": "stream", "vm_epochs": 2}, "vm_epochs must be 1"),
    ({"vm_drop_features": "cate_his"}, "must be a list of feature names"),
    ({"seeds": 0}, "at least one"),
    ({"vm_epochs": 0}, "vm_epochs=0 must be a whole number"),
    ({"tuner_space": {"teacher": [], "student": "FM", "method": "none"}}, "expands to no cell"),
])
def test_bad_grids_are_refused_before_any_work(tmp_path, fields, message):
    with pytest.raises(GridError, match=message):
        load_grid(write_grid(tmp_path, **fields))


def test_bad_data_root_and_device_are_refused(tmp_path):
    path = write_grid(tmp_path)
    with pytest.raises(GridError, match="not a directory"):
        load_grid(path, data_root=str(tmp_path / "nowhere"))
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "train.csv").write_text("a,b\n")
    with pytest.raises(GridError, match="raw_sample.csv"):
        load_grid(path, data_root=str(tmp_path / "wrong"))
    with pytest.raises(GridError, match="cuda:7"):
        check_device("cuda:7")
    with pytest.raises(GridError, match="expected 'cpu'"):
        check_device("tpu")


def test_shared_steps_run_once_and_a_rerun_skips_everything(tmp_path):
    path = write_grid(tmp_path, tuner_space={"teacher": ["DCN", "DMIN"], "student": "FM",
                                             "method": ["none", "ah"]})
    grid = load_grid(path)
    first = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert (first.ok, first.failed) == (4 + 2, 0)  # 4 VM cells + 2 FM records
    vm_steps = glob.glob(str(tmp_path / "work" / "artifacts" / "vm" / "*"))
    assert len(vm_steps) == 3  # `none` trained once for both teachers, `ah` once per teacher
    fm_steps = glob.glob(str(tmp_path / "work" / "artifacts" / "fm" / "*"))
    assert len(fm_steps) == 2 * 4  # stream mode: one step per teacher per day 1..4
    records = read_records([first.records_path])
    none = [r for r in records if r["method"] == "none"]
    assert len(none) == 2 and none[0]["metrics"] == none[1]["metrics"]
    again = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert (again.ok, again.skipped) == (0, 6)


def test_staleness_mode_freezes_the_snapshot(tmp_path):
    path = write_grid(tmp_path, rounds=[0, 1, 2], tuner_space={"teacher": "DCN", "student": "FM",
                                                               "method": "ah", "fm_frozen_after_day": [None, 4]})
    summary = run_grid(load_grid(path), str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert summary.failed == 0
    vm = [r for r in read_records([summary.records_path]) if r["kind"] == "vm"]
    frozen = {r["round"]: r["snapshot_id"] for r in vm if r["fm_frozen_after_day"] == 4}
    fresh = {r["round"]: r["snapshot_id"] for r in vm if r["fm_frozen_after_day"] is None}
    assert len(set(frozen.values())) == 1 and frozen[0] == fresh[0]
    assert len(set(fresh.values())) == 3  # trained through days 4, 5, 6
    assert sorted(r["fm_staleness_days"] for r in vm if r["fm_frozen_after_day"] == 4) == [0, 1, 2]


def test_a_failed_cell_is_recorded_and_the_others_finish(tmp_path, monkeypatch):
    from exfm_plugin.pipeline.vm_steps import VMLinkStep

    real = VMLinkStep.build

    def flaky(self, ctx, tmp, inputs):  # the ah VM's training step fails
        if self.config.method == "ah":
            raise RuntimeError("boom")
        return real(self, ctx, tmp, inputs)

    monkeypatch.setattr(VMLinkStep, "build", flaky)
    summary = run_grid(load_grid(write_grid(tmp_path)), str(tmp_path / "w"), str(tmp_path / "r"), progress=False)
    records = read_records([summary.records_path])
    assert summary.failed == 1 and any(r["status"] == "failed" and "boom" in r["error"] for r in records)
    assert any(r["status"] == "ok" and r["method"] == "none" for r in records)


def test_resume_after_a_killed_run_finishes_without_duplicates(tmp_path):
    path = write_grid(tmp_path, tuner_space={"teacher": "DCN", "student": ["FM", "FmFM"],
                                             "method": ["none", "kd", "ah", "ah_sa"]})
    cmd = [sys.executable, "-m", "exfm_plugin.cli", "run", "--grid", path, "--work", str(tmp_path / "work"),
           "--results", str(tmp_path / "results"), "--no-progress"]
    records_path = tmp_path / "results" / "records" / "t.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if records_path.exists() and len(read_records([records_path])) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; the test needs a bigger grid"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = {r["cell_id"] for r in read_records([records_path])}
    assert 2 <= len(partial) < 9
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    records = read_records([records_path])
    ids = [r["cell_id"] for r in records]
    assert len(ids) == len(set(ids)) == 8 + 1  # 8 VM cells + 1 FM record, each once
    assert partial <= set(ids)
    assert f"{len(partial)} already done" in out.stdout
    # a finished grid, rerun on an empty work dir (e.g. a fresh clone of committed records): nothing
    # is prepared or trained, the records stay as they were
    again = subprocess.run(cmd[:-4] + [str(tmp_path / "empty_work")] + cmd[-3:], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 cells ok, 0 failed, 9 already done" in again.stdout
    assert read_records([records_path]) == records and not (tmp_path / "empty_work" / "artifacts").exists()


@pytest.mark.parametrize("grid_file", sorted(glob.glob(os.path.join(GRIDS, "smoke_*.yaml"))),
                         ids=lambda p: os.path.basename(p))
def test_each_smoke_grid_runs_end_to_end(tmp_path, grid_file):
    grid = load_grid(grid_file, size=TINY, seeds=1)
    summary = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    records = read_records([summary.records_path])
    vm = [r for r in records if r["kind"] == "vm"]
    assert len(vm) == len(expand_cells(grid))
    for r in records:
        p = r["ne_base_rate"]
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        assert r["metrics"]["NE"] == pytest.approx(r["metrics"]["logloss"] / entropy, rel=1e-9)
        assert r["constant"]["NE"] == pytest.approx(r["constant"]["logloss"] / entropy, rel=1e-9)
        assert json.loads(json.dumps(r)) == r  # plain JSON all the way down
