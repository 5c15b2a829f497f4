"""A grid run as a user lives it (issue 24), each checked against one uninterrupted reference run
of the same tiny grid:

* Ctrl-C: one line naming how far the run got, exit 130, a line in the run log, no temporaries
  left; rerunning the command completes with the reference's records.
* Two ``exfm run`` on one work directory at once: every step is trained once (the two logs
  together hold as many ``[Train]`` lines as the reference's), both record files complete.
* ``exfm export``: a folder that loads from any working directory, with ``load_exported`` and
  with plain fuxictr, and reproduces the recorded AUC.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from exfm_plugin.fsutil import is_temp_name
from exfm_plugin.pipeline.records import read_records

pytestmark = pytest.mark.slow

GRID = {"grid": "life", "dataset": "taobaoad", "size": 6000, "seeds": 2,
        "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
        "tuner_space": {"teacher": "DCN", "student": "FM", "method": ["none", "kd", "ah"]}}
N_JOBS = 2 * 3 + 2  # VM cells (seeds x methods) + one FM record per seed


def exfm(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "exfm_plugin.cli", *map(str, args)]


def run_args(grid: Path, root: Path, results: str = "results") -> list[str]:
    return exfm("run", "--grid", grid, "--work", root / "work", "--results", root / results, "--no-progress",
                "--threads", "1")


def records_of(results: Path) -> dict[str, dict]:
    return {r["cell_id"]: r for r in read_records([results / "records" / "life.jsonl"]) if r["status"] == "ok"}


def train_lines(results: Path) -> list[str]:
    return [line for line in (results / "logs" / "life.log").read_text().splitlines() if "[Train]" in line]


def assert_same_records(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want) and len(want) == N_JOBS
    for cid, record in want.items():
        for metric in ("AUC", "logloss"):
            assert got[cid]["metrics"][metric] == pytest.approx(record["metrics"][metric], abs=1e-6), (cid, metric)


def temporaries(*roots: Path) -> list[str]:
    return [os.path.join(d, n) for root in roots for d, dirs, files in os.walk(root) for n in dirs + files
            if is_temp_name(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The grid file and its uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("life")
    grid = tmp / "life.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    out = subprocess.run(run_args(grid, tmp / "ref"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, grid, records_of(tmp / "ref" / "results")


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_completes(world):
    tmp, grid, reference = world
    root = tmp / "interrupted"
    records = root / "results" / "records" / "life.jsonl"
    proc = subprocess.Popen(run_args(grid, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (records.exists() and records.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first record"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    m = re.fullmatch(r"exfm run: interrupted after (\d+)/(\d+) cells of grid life; rerun the same command to resume",
                     lines[-1])
    assert m, lines[-3:]
    done, total = int(m[1]), int(m[2])
    assert total == N_JOBS and 1 <= done < total and done == len(records_of(root / "results"))
    log = (root / "results" / "logs" / "life.log").read_text()
    assert f"interrupted (Ctrl-C) after {done}/{total} cells" in log
    assert temporaries(root) == []
    rerun = subprocess.run(run_args(grid, root), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done} already done" in rerun.stdout
    assert_same_records(records_of(root / "results"), reference)


def test_two_runs_on_one_work_dir_train_each_step_once(world):
    tmp, grid, reference = world
    root = tmp / "shared"
    procs = [subprocess.Popen(run_args(grid, root, results), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for results in ("results_a", "results_b")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    trained = train_lines(root / "results_a") + train_lines(root / "results_b")
    assert trained and len(trained) == len(train_lines(tmp / "ref" / "results"))
    for results in ("results_a", "results_b"):
        assert_same_records(records_of(root / results), reference)
    assert temporaries(root) == []


LOAD_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from fuxictr.features import FeatureMap
    from fuxictr.utils import load_config
    from sklearn.metrics import roc_auc_score
    from exfm_plugin import load_exported
    from exfm_plugin.data import H5DataLoader, read_day_columns
    from exfm_plugin.models import MODEL_REGISTRY

    folder, expid = sys.argv[1], sys.argv[2]
    model, fmap = load_exported(folder)
    # plain fuxictr: load_config, FeatureMap.load, model_class(feature_map, **params), load_weights,
    # with the folder's relative paths joined to the folder
    params = load_config(folder, expid)
    data_dir = os.path.join(folder, params["data_root"], params["dataset_id"])
    plain_map = FeatureMap(params["dataset_id"], data_dir)
    plain_map.load(os.path.join(data_dir, "feature_map.json"), params)
    plain_map.labels = [params["label"]]
    plain = MODEL_REGISTRY[params["model"]](plain_map, **dict(params, model_root=os.path.join(folder, params["model_root"])))
    plain.load_weights(os.path.join(folder, expid + ".model"))
    y = read_day_columns(params["test_data"])[params["label"]]
    auc = {name: float(roc_auc_score(y, m.predict(H5DataLoader(f, params["test_data"], split="test", batch_size=1024))))
           for name, m, f in (("load_exported", model, fmap), ("plain", plain, plain_map))}
    print(json.dumps({"auc": auc, "cwd": os.getcwd()}))
""")


def test_export_is_a_folder_plain_fuxictr_loads_from_anywhere(world):
    tmp, grid, reference = world
    record = next(r for r in reference.values() if r["kind"] == "vm" and r["method"] == "ah" and r["seed"] == 1)
    out = tmp / "exported"
    done = subprocess.run(exfm("export", "--records", tmp / "ref" / "results", "--cell", record["cell_id"][:10],
                               "--out", out), capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((out / "model_config.yaml").read_text())
    (expid, params), = config.items()
    # the params that ran: one pass over the day (not BARS' epochs: 100 with early stopping),
    # the grid's batch size, the cell's seed; the model's files inside the folder
    assert params["epochs"] == 1 and "early_stop_patience" not in params
    assert params["batch_size"] == 256 and params["seed"] == 1 and params["model_root"] == "./checkpoints"
    assert params["exfm"]["method"] == "ah" and params["exfm"]["train_days"] == [record["train_day"]]
    dataset = yaml.safe_load((out / "dataset_config.yaml").read_text())[params["dataset_id"]]
    assert dataset["data_root"] == "."
    assert json.loads((out / params["dataset_id"] / "feature_map.json").read_text())["dataset_id"] == params["dataset_id"]
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load.py").write_text(LOAD_SCRIPT)
    ran = subprocess.run([sys.executable, "load.py", str(out), expid], capture_output=True, text=True, timeout=300,
                         cwd=elsewhere)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["cwd"] == str(elsewhere)
    for name, auc in result["auc"].items():
        assert auc == pytest.approx(record["metrics"]["AUC"], abs=1e-6), name


def test_export_from_elsewhere_finds_the_run_with_work(world, tmp_path, monkeypatch, capsys):
    """A record names its artifact relative to where the run ran (``--work work``); from another
    folder the export says so in one line, and ``--work`` points it at the run's folder."""
    from exfm_plugin.cli import main

    tmp, _, reference = world
    record = next(r for r in reference.values() if r["kind"] == "vm" and r["method"] == "kd")
    artifact = Path(record["vm_artifact"])
    relative = dict(record, vm_artifact=str(Path("work") / "artifacts" / artifact.parent.name / artifact.name))
    (tmp_path / "records.jsonl").write_text(json.dumps(relative) + "\n")
    monkeypatch.chdir(tmp_path)
    argv = ["export", "--records", "records.jsonl", "--cell", record["cell_id"], "--out", "model"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and record["cell_id"] in err and "--work" in err
    assert main(argv + ["--work", str(tmp / "ref" / "work")]) == 0
    assert len(list((tmp_path / "model").glob("*.model"))) == 1
