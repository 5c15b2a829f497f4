"""Per-cell outputs of ``exfm run`` (``results/<grid>/<cell_id>/``): params.yaml says what ran, the
losses CSV has a row per trained day, the serving weights reproduce the recorded AUC."""
import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from fuxictr.features import FeatureMap
from sklearn.metrics import roc_auc_score

from exfm_plugin.config import build_model
from exfm_plugin.contracts import SERVING_WEIGHTS
from exfm_plugin.data import H5DataLoader, read_day_columns
from exfm_plugin.pipeline.cell_outputs import (LOG_FILE, LOSSES_FILE, PARAMS_FILE, cell_log_lines, cell_output_dir,
                                               results_dir_of, training_curve)
from exfm_plugin.pipeline.grid import load_grid
from exfm_plugin.pipeline.records import read_records
from exfm_plugin.pipeline.runner import run_grid

TINY = 6000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cells")
    grid = {"grid": "cells", "dataset": "taobaoad", "size": TINY, "seeds": 1, "vm_schedule": "stream",
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": "DCN", "student": "FM", "method": ["none", "ah_sa"], "grad_scale": 2.0}}
    path = tmp / "cells.yaml"
    path.write_text(yaml.safe_dump(grid))
    summary = run_grid(load_grid(str(path)), str(tmp / "work"), str(tmp / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    records = read_records([summary.records_path])
    return tmp, [r for r in records if r["kind"] == "vm"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_vm_cell_has_params_log_losses_and_weights(run):
    tmp, records = run
    assert {r["method"] for r in records} == {"none", "ah_sa"}
    for r in records:
        out = cell_output_dir(tmp / "results", "cells", r["cell_id"])
        assert r["outputs_dir"] == f"cells/{r['cell_id']}" and (tmp / "results" / r["outputs_dir"]) == out
        assert sorted(p.name for p in out.iterdir()) == sorted([PARAMS_FILE, LOG_FILE, LOSSES_FILE, SERVING_WEIGHTS])
        params = yaml.safe_load((out / PARAMS_FILE).read_text())
        for k in ("cell_id", "teacher", "student", "method", "seed", "round", "train_day", "test_day",
                  "vm_schedule", "label_scale", "grad_scale", "loss_weight", "dataset", "data_source"):
            assert params[k] == r[k], k
        # the stream protocol: one pass a day over days 1..5+r (docs/method.md, Streaming protocol), the grid's batch size and size
        assert params["train_days"] == list(range(1, r["train_day"] + 1))
        assert set(params["passes_per_day"].values()) == {1}
        assert params["batch_size"] == 256 and params["model_params"]["embedding_dim"] == 4
        assert params["data_size"] == TINY == r["data_size"]
        assert params["distill"]["method"] == r["method"]
        if r["method"] == "ah_sa":
            assert params["distill"]["grad_scale"] == 2.0
            assert params["supervised_days"] == [2, 3, 4, 5]  # day 1: no FM snapshot yet
        else:
            assert params["supervised_days"] == []
        rows = _csv(out / LOSSES_FILE)
        assert [int(x["day"]) for x in rows] == params["train_days"]
        assert sum(int(x["rows"]) for x in rows) == r["train_rows"]
        assert [int(x["day"]) for x in r["train_curve"]] == params["train_days"]


def test_losses_csv_matches_the_train_lines_and_methods_in_force(run):
    tmp, records = run
    sa = next(r for r in records if r["method"] == "ah_sa")
    out = tmp / "results" / sa["outputs_dir"]
    rows = _csv(out / LOSSES_FILE)
    assert [x["method"] for x in rows] == ["none", "ah_sa", "ah_sa", "ah_sa", "ah_sa"]
    assert rows[0]["aux"] == "" and all(float(x["aux"]) > 0 and float(x["adapter"]) > 0 for x in rows[1:])
    # every [Train] line of the cell's log carries the same mean loss terms as its CSV row
    log = (out / LOG_FILE).read_text().splitlines()
    assert sa["cell_id"] in log[0] and "[Metrics]" in log[-1]
    train = [line for line in log if "[Train] VM FM/ah_sa" in line]
    assert train  # days 2..5 were trained for this cell (day 1 may be the shared `none` prefix)
    by_day = {int(x["day"]): x for x in rows}
    for line in train:
        day = int(re.search(r" day (\d+) pass", line).group(1))
        for term, value in re.findall(r"(\w+): ([0-9.]+)", line.split(" - loss ")[1]):
            assert float(by_day[day][term]) == pytest.approx(float(value), abs=1e-6)


def test_serving_weights_reproduce_the_recorded_auc(run):
    tmp, records = run
    r = next(r for r in records if r["method"] == "ah_sa")
    out = tmp / "results" / r["outputs_dir"]
    params = yaml.safe_load((out / PARAMS_FILE).read_text())
    link = Path(params["vm_artifact"])
    prep_key = json.loads((link / "meta.json").read_text())["spec"]["prep"]
    prep = link.parent.parent / "prep" / prep_key
    data_dir = prep / json.loads((prep / "meta.json").read_text())["data_dir"]
    model_params = params["model_params"]
    fmap = FeatureMap(json.loads((data_dir / "feature_map.json").read_text())["dataset_id"], str(data_dir))
    fmap.load(str(data_dir / "feature_map.json"), model_params)
    fmap.labels = [params["label"]]
    vm = build_model(dict(model_params, model_root=str(tmp / "ckpt"), gpu=-1), fmap)
    vm.load_state_dict(torch.load(out / SERVING_WEIGHTS, weights_only=True))  # strict: the bare VM, no heads
    test_file = str(data_dir / f"day_{params['test_day']}.h5")
    pred = vm.predict(H5DataLoader(fmap, test_file, split="test", batch_size=1024))
    assert roc_auc_score(read_day_columns(test_file)[params["label"]], pred) == pytest.approx(r["metrics"]["AUC"],
                                                                                              abs=1e-6)


def test_training_curve_of_multi_pass_and_old_links():
    def meta(day, parent, **kw):
        return {"spec": {"day": day, "passes": 2, "parent": parent, "distill": {"method": "ah"}}, **kw}
    new = meta(5, None, method_in_force="ah", pass_terms=[{"rows": 10, "seconds": 1.0, "serving": 0.3, "total": 0.5},
                                                          {"rows": 10, "seconds": 1.0, "serving": 0.2, "total": 0.4}])
    old = meta(6, "k", day_rows=20, train_seconds=2.0, loss_terms={"serving": 0.1, "total": 0.2})  # last pass only
    curve = training_curve([new, old])
    assert [(e["day"], e["pass"], e["method"]) for e in curve] == [(5, 1, "ah"), (5, 2, "ah"), (6, 2, "ah")]
    assert [e["serving"] for e in curve] == [0.3, 0.2, 0.1]


def test_cell_log_lines_take_the_last_attempt(tmp_path):
    log = tmp_path / "g.log"
    log.write_text("x VM cell abc: first try\nx boom\nx VM cell other: y\n"
                   "x VM cell abc: second try\nx [Train] VM FM/none day 1\nx VM cell abc [Metrics] AUC: 0.6\nx after\n")
    assert [line.split(" ", 1)[1] for line in cell_log_lines(log, "abc")] == [
        "VM cell abc: second try", "[Train] VM FM/none day 1", "VM cell abc [Metrics] AUC: 0.6"]
    assert cell_log_lines(tmp_path / "missing.log", "abc") == []
    assert results_dir_of(tmp_path / "records" / "g.jsonl") == tmp_path
