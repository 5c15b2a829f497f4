"""The oracle row: the world's truth travels with the synthetic day files, read by no model, and is
scored like a model on the test day."""
from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score

from data_prep.prepare import prepare
from data_prep.synthetic import generate_raw
from exfm_plugin.contracts import truth_column
from exfm_plugin.data import read_day_columns, write_day_file


def test_truth_column_equals_the_generators_own_probabilities(tmp_path):
    """Each day's truth column, matched to the raw rows by timestamp and label, is the probability
    the generator drew the label from (ground_truth.parquet, written from the simulation itself)."""
    raw = tmp_path / "raw"
    paths = generate_raw("taobaoad", str(raw), size="tiny", seed=4, with_truth=True)
    summary = prepare("taobaoad", "synthetic", str(raw), str(tmp_path / "out"), seed=4, size="tiny")
    truth = pl.read_parquet(paths["ground_truth"])
    sample = pl.read_csv(paths["raw_sample"]).with_row_index("row").join(truth, on="row")
    for day in range(1, 9):
        cols = read_day_columns(f"{summary.data_dir}/day_{day}.h5", ["time", "clk", truth_column("clk")])
        ours = sorted(zip(cols["time"].tolist(), cols["clk"].tolist(), cols[truth_column("clk")].tolist()))
        theirs = sample.filter(pl.col("day") == day).select("time_stamp", "clk", "true_prob").sort(
            ["time_stamp", "clk", "true_prob"]).rows()
        assert len(ours) == len(theirs)
        np.testing.assert_array_equal([r[0] for r in ours], [r[0] for r in theirs])
        np.testing.assert_allclose([r[2] for r in ours], [r[2] for r in theirs], rtol=1e-6)


def test_no_feature_map_names_the_truth(tmp_path):
    import json

    summary = prepare("kuaivideo", "synthetic", None, str(tmp_path), seed=0, size="tiny")
    fmap = json.loads((tmp_path / summary.dataset_id / "feature_map.json").read_text())
    names = [k for feat in fmap["features"] for k in feat] + list(fmap["labels"])
    assert not [n for n in names if "true_prob" in n]
    cols = read_day_columns(f"{summary.data_dir}/day_6.h5", [truth_column(t) for t in fmap["labels"]])
    assert set(cols) == {truth_column(t) for t in fmap["labels"]}
    # the unconditional like and follow probabilities never exceed the click probability
    assert (cols[truth_column("is_like")] <= cols[truth_column("is_click")] + 1e-7).all()


def test_oracle_metrics_score_the_truth_like_a_model(tmp_path):
    from exfm_plugin.pipeline.evaluation import oracle_metrics

    summary = prepare("taobaoad", "synthetic", None, str(tmp_path), seed=1, size="tiny")
    path = f"{summary.data_dir}/day_6.h5"
    cols = read_day_columns(path, ["clk", truth_column("clk")])
    y, p = cols["clk"].astype(float), cols[truth_column("clk")].astype(float)
    base = 0.05
    got = oracle_metrics(path, "clk", base)
    assert abs(got["AUC"] - roc_auc_score(y, p)) < 1e-9
    assert abs(got["logloss"] - log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))) < 1e-6
    h = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert abs(got["NE"] - got["logloss"] / h) < 1e-9
    assert abs(got["calibration"] - p.sum() / y.sum()) < 1e-6
    # a day file without the truth column (real data) has no oracle row
    real = tmp_path / "real_day_6.h5"
    write_day_file(real, {"clk": cols["clk"]}, dataset_id="taobaoad_raw", day=6)
    assert oracle_metrics(str(real), "clk", base) is None
