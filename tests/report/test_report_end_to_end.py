"""A tiny grid through ``exfm run`` and ``exfm report``: gAUC, one NE normaliser for FM and VMs, the
constant predictor, and the intervals, all checked against the day files and the records themselves."""
import glob
import json
import math

import numpy as np
import polars as pl
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score

from exfm_plugin.cli import main
from exfm_plugin.data.dayfile import read_day_columns

T_975_1 = 12.706205  # t quantile 0.975 with 1 degree of freedom (tables)


def impression_weighted_user_auc(y, p, users):
    """BARS' gAUC, computed here from its definition: per-user AUC over users with both a click
    and a non-click, averaged with the users' impression counts as weights."""
    num = den = 0.0
    for u in np.unique(users):
        rows = users == u
        if 0 < y[rows].sum() < rows.sum():
            num += rows.sum() * roc_auc_score(y[rows], p[rows])
            den += rows.sum()
    return num / den


def served_predictions(record, work):
    """The recorded VM's exported serving model, rebuilt from its artifact, on the test day."""
    import torch

    from exfm_plugin.config import build_model
    from exfm_plugin.data import H5DataLoader
    from exfm_plugin.pipeline.artifacts import ArtifactStore
    from exfm_plugin.pipeline.grid import load_grid
    from exfm_plugin.pipeline.context import Context
    from exfm_plugin.pipeline.params import bars_params, load_feature_map
    from exfm_plugin.pipeline.prep_steps import prepare_data

    ctx = Context(load_grid(glob.glob(f"{work}/../e2e.yaml")[0]), ArtifactStore(f"{work}/artifacts"), progress=False)
    prep = prepare_data(ctx)
    params = bars_params(ctx.grid, prep, record["student"], record["seed"])
    vm = build_model(dict(params, model_root=f"{work}/ck", gpu=-1), load_feature_map(prep, params, ["clk"]))
    vm.load_state_dict(torch.load(f"{record['vm_artifact']}/serving_model.pt", weights_only=True))
    return vm.predict(H5DataLoader(vm.feature_map, prep.day_file(6), split="test", batch_size=8192))


@pytest.mark.slow
def test_tiny_grid_through_run_and_report(tmp_path, capsys):
    grid = {"grid": "e2e", "dataset": "taobaoad", "size": 6000, "seeds": 2,
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": ["DCN"], "student": ["FM"], "method": ["none", "kd"]}}
    (tmp_path / "e2e.yaml").write_text(yaml.safe_dump(grid))
    work, results, out = (str(tmp_path / d) for d in ("work", "results", "out"))
    assert main(["run", "--grid", str(tmp_path / "e2e.yaml"), "--work", work, "--results", results,
                 "--no-progress"]) == 0
    assert main(["report", "--records", results, "--out", out]) == 0
    capsys.readouterr()

    records = [json.loads(line) for line in open(f"{results}/records/e2e.jsonl")]
    ok = [r for r in records if r["status"] == "ok"]
    assert {(r["kind"], r["method"]) for r in ok} == {("vm", "none"), ("vm", "kd"), ("fm", None)}
    day = glob.glob(f"{work}/artifacts/prep/*/taobaoad_synthetic/day_5.h5")
    assert len(day) == 1
    train_clk = read_day_columns(day[0], ["clk"])["clk"].astype(float)
    test_clk = read_day_columns(day[0].replace("day_5", "day_6"), ["clk"])["clk"].astype(float)
    p = train_clk.mean()  # the VM's training data (schedule "day": day 5 only)
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    constant = log_loss(test_clk, np.full(len(test_clk), p), labels=[0, 1])
    for r in ok:  # one normaliser and one constant for every row of the test day, FM included
        assert r["ne_base_rate"] == pytest.approx(p, rel=1e-9)
        assert r["constant"]["logloss"] == pytest.approx(constant, rel=1e-6)
        assert r["metrics"]["NE"] == pytest.approx(r["metrics"]["logloss"] / h, rel=1e-6)
    vm_none = next(r for r in ok if r["kind"] == "vm" and r["method"] == "none" and r["seed"] == 0)
    users = read_day_columns(day[0].replace("day_5", "day_6"), ["group_id"])["group_id"]
    assert vm_none["metrics"]["gAUC"] == pytest.approx(
        impression_weighted_user_auc(test_clk, served_predictions(vm_none, work), users), rel=1e-9)

    auc = {(r["method"], r["seed"]): r["metrics"]["AUC"] for r in ok if r["kind"] == "vm"}
    gains = [100 * (auc[("kd", s)] - auc[("none", s)]) / auc[("none", s)] for s in (0, 1)]
    half = T_975_1 * abs(gains[0] - gains[1]) / 2  # t · sd / sqrt(2) with sd = |a − b| / sqrt(2)
    kd = pl.read_csv(f"{out}/leaderboard.csv").filter(pl.col("method") == "kd").to_dicts()
    assert len(kd) == 1
    assert (kd[0]["auc_gain_pct_lo"], kd[0]["auc_gain_pct_hi"]) == pytest.approx(
        (sum(gains) / 2 - half, sum(gains) / 2 + half), rel=1e-6)
    md = open(f"{out}/leaderboard.md").read()
    row = [x for x in md.splitlines() if x.startswith("| constant p |")]
    assert len(row) == 1 and f"| 0.5000 | 0.5000 | {constant:.4f} | {constant / h:.4f} |" in row[0]  # AUC, gAUC
    assert "| gAUC |" in md and f"normaliser p = {p:.5f}" in md
