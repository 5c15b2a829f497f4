"""Runs you can follow: per-cell log lines (console + results/logs/<grid>.log), the trained
student exported as a plain FuxiCTR model, ``-v`` anywhere, ``--version``."""
import logging
import os
import re

import numpy as np
import pytest
import torch
import yaml
from fuxictr.features import FeatureMap
from fuxictr.utils import load_config
from sklearn.metrics import roc_auc_score

from exfm_plugin.cli import main
from exfm_plugin.config import build_model
from exfm_plugin.data import H5DataLoader, read_day_columns
from exfm_plugin.pipeline.grid import load_grid
from exfm_plugin.pipeline.records import read_records
from exfm_plugin.pipeline.runner import run_grid

TINY = 6000


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("follow")
    grid = {"grid": "follow", "dataset": "taobaoad", "size": TINY, "seeds": 1,
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": "DCN", "student": "FM", "method": ["none", "ah"]}}
    path = tmp / "follow.yaml"
    path.write_text(yaml.safe_dump(grid))
    summary = run_grid(load_grid(str(path)), str(tmp / "work"), str(tmp / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    return tmp, read_records([summary.records_path])


def test_every_cell_logs_fuxictr_metrics_lines_and_loss_terms(finished_run):
    tmp, records = finished_run
    log = (tmp / "results" / "logs" / "follow.log").read_text()
    for r in records:
        # the [Metrics] line of the cell carries the recorded AUC and logloss, fuxictr's format
        line = next(line for line in log.splitlines() if r["cell_id"] in line and "[Metrics]" in line)
        auc = float(re.search(r"AUC: ([0-9.]+)", line).group(1))
        logloss = float(re.search(r"logloss: ([0-9.]+)", line).group(1))
        assert auc == pytest.approx(r["metrics"]["AUC"], abs=1e-6)
        assert logloss == pytest.approx(r["metrics"]["logloss"], abs=1e-6)
    train = [line for line in log.splitlines() if "[Train] VM FM/ah" in line]
    assert train and all("aux: " in line and "serving: " in line and "total: " in line for line in train)
    none_lines = [line for line in log.splitlines() if "[Train] VM FM/none" in line]
    assert none_lines and not any("aux: " in line for line in none_lines)
    # the teacher's training: one line per FM day of the stream (days 1..4), rows counted
    fm_days = [int(m.group(1)) for m in re.finditer(r"\[Train\] FM DCN seed 0 day (\d) pass 1/1: (\d+) rows", log)]
    assert fm_days == [1, 2, 3, 4]


def test_a_cell_exports_to_a_fuxictr_model_that_reproduces_its_auc(finished_run, tmp_path):
    tmp, records = finished_run
    rec = next(r for r in records if r["kind"] == "vm" and r["method"] == "ah")
    out = tmp_path / "exported"
    assert main(["export", "--records", str(tmp / "results"), "--cell", rec["cell_id"][:10], "--out", str(out)]) == 0
    expid = next(iter(yaml.safe_load((out / "model_config.yaml").read_text())))
    params = load_config(str(out), expid)  # fuxictr's own loader reads the exported folder
    data_dir = os.path.join(out, params["data_root"], params["dataset_id"])  # data_root: relative to the folder
    fmap = FeatureMap(params["dataset_id"], data_dir)
    fmap.load(os.path.join(data_dir, "feature_map.json"), params)
    fmap.labels = [params["label"]]
    model = build_model(dict(params, model_root=str(tmp_path / "ckpt"), gpu=-1), fmap)
    model.load_weights(str(out / f"{expid}.model"))
    # a plain VM: no distillation head or adapter parameters in the checkpoint
    assert not any("distill" in k or "adapter" in k for k in torch.load(out / f"{expid}.model"))
    pred = model.predict(H5DataLoader(fmap, params["test_data"], split="test", batch_size=1024))
    y = read_day_columns(params["test_data"])[params["label"]]
    assert roc_auc_score(y, pred) == pytest.approx(rec["metrics"]["AUC"], abs=1e-6)


def test_verbose_anywhere_and_version(capsys, monkeypatch):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    assert main(["grids"]) == 0 and main(["grids", "-v"]) == 0 and main(["-v", "grids"]) == 0
    assert levels == [logging.WARNING, logging.INFO, logging.INFO]
    assert "smoke_table2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert re.match(r"exfm \d+\.\d+", capsys.readouterr().out)


def test_export_of_an_unknown_cell_is_one_line_naming_it(finished_run, capsys):
    tmp, _ = finished_run
    assert main(["export", "--records", str(tmp / "results"), "--cell", "zzzz", "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "zzzz" in err and len(err.strip().splitlines()) == 1
