"""Figures 10-12, smoke grids and the paper's domain/task mapping, on constructed records."""
from pathlib import Path

import polars as pl
import pytest
from report_records import vm, write

from exfm_plugin.report import build_report, load_records
from exfm_plugin.report.figures import sweep_rows

REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference"
PNG = b"\x89PNG\r\n\x1a\n"


def sweep_records():
    recs = []
    for seed in (0, 1):
        recs.append(vm(0.6, grid="smoke_fig10_11", method="none", seed=seed))
        for m in ("ah", "ah_sa", "ah_sa_frozen"):
            for v in (1.0, 10.0, 100.0):
                for k in ("label_scale", "grad_scale", "loss_weight"):
                    recs.append(vm(0.6 + v / 1e4 + seed / 1e3, grid="smoke_fig10_11", method=m, seed=seed, **{k: v}))
        recs.append(vm(0.5, grid="smoke_fig10_11", method="ah", label_scale=10.0, grad_scale=10.0, seed=seed))
        recs.append(vm(0.6, grid="fig12", method="none", seed=seed))
        for (ls, gs, lw), auc in {(1.0, 1.0, 1.0): 0.606, (10.0, 10.0, 10.0): 0.594, (1.0, 1.0, 100.0): 0.59}.items():
            recs.append(vm(auc + seed / 1000, grid="fig12", method="ah_sa", seed=seed, label_scale=ls,
                           grad_scale=gs, loss_weight=lw))
    return recs


def split_records():
    recs = []
    for d in ("0", "1"):
        recs += [vm(0.50, grid="table4", domain=d), vm(0.52, grid="table4", domain=d, method="ah_sa")]
    for t in ("is_click", "is_like"):
        recs += [vm(0.70, grid="table5", dataset="kuaivideo", teacher="MultiTaskDMIN", task=t, **m)
                 for m in ({"method": "none"}, {"method": "ah_sa"})]
    return recs


def test_sweeps_fig12_and_smoke_grids(tmp_path):
    path = write(tmp_path / "r.jsonl", sweep_records() + [vm(0.6, grid="smoke_table2", method="ah_sa")])
    rows = sweep_rows(load_records(path).filter(pl.col("grid") == "smoke_fig10_11").to_dicts())
    assert len(rows) == 2 * 3 * 3 * 3 and all(r["AUC"] != 0.5 for r in rows)  # two scales off 1: no sweep point
    paths = build_report([path], tmp_path / "out", REFERENCE)
    for name in ("smoke_fig10_11_sweeps.png", "fig12_scaling_grid.png"):
        assert paths.figures[name].read_bytes()[:8] == PNG
    assert "fig9_staleness.png" in paths.missing_figures
    md = paths.markdown.read_text()
    row = [x for x in md.splitlines() if x.startswith("| VM | DMIN | FM | ah_sa |") and "0.5462" in x]
    assert len(row) == 1  # a smoke grid gets the paper's numbers too (Table 2, DMIN -> FM, ah_sa)
    lb = pl.read_csv(paths.leaderboard_csv)
    big = lb.filter((pl.col("grid") == "fig12") & (pl.col("loss_weight") == 100.0)).to_dicts()[0]
    per_seed = [100 * (0.59 + seed / 1000 - 0.6) / 0.6 for seed in (0, 1)]  # `none` is 0.6 on both seeds
    assert big["auc_gain_pct_mean"] == pytest.approx(sum(per_seed) / 2, rel=1e-9)
    half = 12.706205 * abs(per_seed[0] - per_seed[1]) / 2  # t_{0.975,1} * (|a - b| / sqrt 2) / sqrt 2
    assert big["auc_gain_pct_lo"] == pytest.approx(sum(per_seed) / 2 - half, rel=1e-6)


def test_domains_and_tasks_map_to_the_papers(tmp_path):
    paths = build_report([write(tmp_path / "r.jsonl", split_records())], tmp_path / "out", REFERENCE)
    lb = pl.read_csv(paths.leaderboard_csv, schema_overrides={"domain": pl.String})
    hit = lb.filter((pl.col("grid") == "table4") & (pl.col("domain") == "0") & (pl.col("method") == "none"))
    assert hit.height == 1
    md = paths.markdown.read_text()
    t4 = md[md.index("## table4"):md.index("## table5")]
    assert "| 0.5025 | baseline |" in t4  # our domain 0 is the paper's domain 1
    t5 = md[md.index("## table5"):]
    assert any(x.startswith("| VM | MultiTaskDMIN | FM | ah_sa |") and "| 0.7101 |" in x for x in t5.splitlines())
