"""The report against hand-built records: expected numbers are computed here, independently."""
import argparse
import csv
import json
import statistics
from pathlib import Path

import polars as pl
import pytest

from exfm_plugin.pipeline.report import (RecordError, add_report_parser, build_report, load_records,
                                         run_report, sweep_rows)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "reference"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (student, method) -> AUC per seed 0, 1. FM keeps the paper's order; DeepFM breaks it (kd > ah).
AUCS = {
    ("FM", "none"): (0.600, 0.620), ("FM", "kd"): (0.610, 0.625),
    ("FM", "ah"): (0.615, 0.630), ("FM", "ah_sa"): (0.620, 0.640),
    ("DeepFM", "none"): (0.630, 0.640), ("DeepFM", "kd"): (0.650, 0.655),
    ("DeepFM", "ah"): (0.640, 0.645), ("DeepFM", "ah_sa"): (0.660, 0.670),
}
LOGLOSS = {k: (0.20 + 0.01 * i, 0.21 + 0.01 * i) for i, k in enumerate(AUCS)}
BINS = [[0.01 * (i + 1), 0.011 * (i + 1), 100] for i in range(10)]

_counter = iter(range(10**6))


def rec(**kw) -> dict:
    """A valid version-1 ok vm record; keyword arguments override fields."""
    r = {"record_version": 1, "kind": "vm", "status": "ok", "error": None, "grid": "table2",
         "cell_id": f"c{next(_counter)}", "config_hash": "h", "dataset": "taobaoad", "data_source": "synthetic",
         "split_note": None, "round": 0, "train_day": 5, "test_day": 6, "teacher": "DMIN", "student": "FM",
         "method": "none", "label_scale": 1.0, "grad_scale": 1.0, "loss_weight": 1.0, "seed": 0,
         "domain": None, "task": None, "fm_frozen_after_day": None, "fm_staleness_days": None,
         "snapshot_id": "snap", "metrics": {"AUC": 0.6, "logloss": 0.2, "NE": 0.95, "calibration": 1.0},
         "train_samples_per_s": 1000.0, "eval_samples_per_s": 5000.0, "wall_time_s": 3.0}
    metrics = kw.pop("metrics", None)
    r.update(kw)
    if metrics is not None:
        r["metrics"] = metrics
    return r


def table2_records(grid: str = "table2") -> list[dict]:
    out = []
    for (student, method), aucs in AUCS.items():
        for seed, (auc, ll) in enumerate(zip(aucs, LOGLOSS[(student, method)])):
            out.append(rec(grid=grid, student=student, method=method, seed=seed,
                           metrics={"AUC": auc, "logloss": ll, "NE": 0.9 + seed / 100, "calibration": 1.0 + seed / 10},
                           calibration_bins=BINS))
    for seed, auc in enumerate((0.700, 0.710)):  # the FM beats every VM
        out.append(rec(grid=grid, kind="fm", student=None, method=None, seed=seed,
                       metrics={"AUC": auc, "logloss": 0.18, "NE": 0.85, "calibration": 1.0}))
    out.append(rec(grid=grid, status="failed", method="ah_sa", seed=2, metrics=None,
                   error="RuntimeError: CUDA out of memory while training ah_sa"))
    return out


def fig_records() -> list[dict]:
    out = []
    for seed in (0, 1):
        out.append(rec(grid="fig12", method="none", seed=seed, metrics={"AUC": 0.60, "logloss": 0.2}))
        for (ls, gs, lw), auc in {(1.0, 1.0, 1.0): 0.606, (10.0, 10.0, 10.0): 0.594,
                                  (1.0, 1.0, 100.0): 0.590}.items():
            out.append(rec(grid="fig12", method="ah_sa", seed=seed, label_scale=ls, grad_scale=gs,
                           loss_weight=lw, metrics={"AUC": auc + seed / 1000, "logloss": 0.2}))
    for rnd in range(3):
        out.append(rec(grid="fig9", method="none", round=rnd, train_day=5 + rnd, test_day=6 + rnd,
                       metrics={"AUC": 0.60, "logloss": 0.2}, calibration_bins=BINS))
        for method, gain in (("ah", 0.010), ("ah_sa", 0.015)):
            out.append(rec(grid="fig9", method=method, round=rnd, train_day=5 + rnd, test_day=6 + rnd,
                           fm_frozen_after_day=4, fm_staleness_days=1 + rnd,
                           metrics={"AUC": 0.60 + gain / (rnd + 1), "logloss": 0.2}, calibration_bins=BINS))
    return out


def split_records() -> list[dict]:
    out = []
    for d, (a0, a1) in {"0": (0.50, 0.53), "1": (0.51, 0.52), "2": (0.55, 0.54)}.items():
        out.append(rec(grid="table4", domain=d, method="none", metrics={"AUC": a0, "logloss": 0.3}))
        out.append(rec(grid="table4", domain=d, method="ah_sa", metrics={"AUC": a1, "logloss": 0.3}))
    for t in ("is_click", "is_like", "is_follow"):
        out.append(rec(grid="table5", dataset="kuaivideo", teacher="MultiTaskDMIN", task=t, method="none",
                       split_note="days from file order (no timestamp)", metrics={"AUC": 0.70, "logloss": 0.4}))
        out.append(rec(grid="table5", dataset="kuaivideo", teacher="MultiTaskDMIN", task=t, method="ah_sa",
                       split_note="days from file order (no timestamp)", metrics={"AUC": 0.71, "logloss": 0.4}))
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def paper_row(teacher: str, student: str, method: str) -> dict:
    with (REFERENCE / "table2_taobaoad.csv").open() as fh:
        for r in csv.DictReader(fh):
            if (r["teacher"], r["student"], r["method"]) == (teacher, student, method):
                return r
    raise KeyError((teacher, student, method))


def section(md: str, grid: str) -> str:
    """The markdown of one grid's section."""
    start = md.index(f"\n## {grid} — ")
    end = md.find("\n## ", start + 1)
    return md[start:end]


def md_row(md: str, *cells: str) -> str:
    """The one markdown table row that contains all these cells."""
    hits = [line for line in md.splitlines() if line.startswith("|")
            and all(f"| {c} |" in line for c in cells)]
    assert len(hits) == 1, (cells, hits)
    return hits[0]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_SIGNATURE, path


@pytest.fixture
def report(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", table2_records() + split_records())
    b = write_jsonl(tmp_path / "b.jsonl", fig_records())
    paths = build_report([a, b], tmp_path / "out", REFERENCE)
    return paths, paths.markdown.read_text(), pl.read_csv(paths.leaderboard_csv)


def cell(lb: pl.DataFrame, **key) -> dict:
    rows = lb.filter(*[pl.col(k) == v for k, v in key.items()]).to_dicts()
    assert len(rows) == 1, (key, rows)
    return rows[0]


def test_mean_std_and_gain_over_seeds(report):
    _, md, lb = report
    a = AUCS[("FM", "ah")]
    c = cell(lb, grid="table2", kind="vm", student="FM", method="ah")
    assert c["AUC_mean"] == pytest.approx(statistics.mean(a))
    assert c["AUC_std"] == pytest.approx(statistics.stdev(a))
    assert c["AUC_n"] == 2 and c["n_seeds"] == 2 and c["seeds"] == "0;1"
    assert c["logloss_mean"] == pytest.approx(statistics.mean(LOGLOSS[("FM", "ah")]))
    t2 = section(md, "table2")
    row = md_row(t2, "taobaoad", "DMIN", "FM", "ah")
    assert f"| {statistics.mean(a):.4f} ± {statistics.stdev(a):.4f} |" in row
    # relative gain of ah_sa over none per seed, then mean
    none, sa = AUCS[("FM", "none")], AUCS[("FM", "ah_sa")]
    gains = [(s - n) / n * 100 for s, n in zip(sa, none)]
    c = cell(lb, grid="table2", kind="vm", student="FM", method="ah_sa")
    assert c["auc_gain_pct_mean"] == pytest.approx(statistics.mean(gains))
    assert c["auc_gain_pct_std"] == pytest.approx(statistics.stdev(gains))
    assert f"| +{statistics.mean(gains):.2f} ± {statistics.stdev(gains):.2f}% |" in md_row(t2, "DMIN", "FM", "ah_sa")
    assert "| baseline |" in md_row(t2, "DMIN", "FM", "none")
    # failed seed 2 is not part of the mean
    assert c["n_seeds"] == 2


def test_paper_and_bars_numbers_beside_ours(report):
    _, md, lb = report
    p, p_none = paper_row("DMIN", "FM", "ah_sa"), paper_row("DMIN", "FM", "none")
    paper_gain = (float(p["auc"]) - float(p_none["auc"])) / float(p_none["auc"]) * 100
    c = cell(lb, grid="table2", kind="vm", student="FM", method="ah_sa")
    assert c["paper_auc"] == pytest.approx(float(p["auc"]))
    assert c["paper_logloss"] == pytest.approx(float(p["logloss"]))
    assert c["paper_auc_gain_pct"] == pytest.approx(paper_gain)
    row = md_row(section(md, "table2"), "DMIN", "FM", "ah_sa")
    assert f"| {float(p['auc']):.4f} | {float(p['logloss']):.4f} | {paper_gain:+.2f}% |" in row
    assert c["bars_auc"] == pytest.approx(0.623407)  # BARS TaobaoAd_x1 FM
    fm = cell(lb, grid="table2", kind="fm")
    assert fm["bars_auc"] == pytest.approx(0.651103)  # BARS TaobaoAd_x1 DMIN
    assert "| TaobaoAd_x1 | DeepFM | VM (`none`) | 0.6364 | 0.1965 | 0.6350 |" in md
    # Table 4: our domain "0" is the paper's domain 1; Table 5: is_click is the paper's click
    assert cell(lb, grid="table4", domain=0, method="none")["paper_auc"] == pytest.approx(0.5025)
    assert cell(lb, grid="table5", task="is_click", method="ah_sa")["paper_auc"] == pytest.approx(0.7101)
    assert "`ah_sa` beats `none` in AUC in 2 of 3 domain(s)" in md
    assert "`ah_sa` beats `none` in AUC in 3 of 3 task(s)" in md
    # figure grids have no paper table
    assert cell(lb, grid="fig12", method="ah_sa", loss_weight=100.0)["paper_auc"] is None


def test_ordering_and_fm_lines(report):
    _, md, _ = report
    lines = md.splitlines()
    fm_line = [x for x in lines if x.startswith("- DMIN → FM (taobaoad, round 0)")]
    deep_line = [x for x in lines if x.startswith("- DMIN → DeepFM (taobaoad, round 0)")]
    assert len(fm_line) == 1 and ": ordering holds:" in fm_line[0]
    assert len(deep_line) == 1 and "ordering does not hold (kd ≥ ah)" in deep_line[0]
    assert "holds in 1 of 2 (teacher, student) pairing(s)" in md
    best_vm = max(statistics.mean(v) for v in AUCS.values())
    fm_line = [x for x in lines if x.startswith("- FM DMIN (taobaoad, round 0)")]
    assert len(fm_line) == 1
    assert f"AUC {statistics.mean((0.70, 0.71)):.4f} vs best VM {best_vm:.4f} (DeepFM/ah_sa)" in fm_line[0]
    assert "the FM beats every VM" in fm_line[0]


def test_header_failed_cells_and_figures(report):
    paths, md, _ = report
    head = "\n".join(md.splitlines()[:12])
    assert "SYNTHETIC" in head
    assert "kuaivideo: days from file order (no timestamp)" in head
    assert "Seeds (ok records): 2 (0, 1)" in head  # seed 2 only failed
    failed = md[md.index("## Failed cells"):]
    assert "RuntimeError: CUDA out of memory while training ah_sa" in failed
    assert "1 cell(s) failed" in failed
    # figures drawn only where their records exist
    for name in ("fig9_staleness.png", "fig12_scaling_grid.png", "calibration_table2.png", "calibration_fig9.png"):
        assert name in paths.figures, name
        assert_png(paths.out_dir / name)
        assert f"`{name}`" in md
    for name in ("fig10_11_sweeps.png", "calibration_table4.png", "calibration_fig12.png"):
        assert name not in paths.figures and not (paths.out_dir / name).exists()
        assert name in paths.missing_figures
    assert "`fig10_11_sweeps.png`: missing — no records of grid fig10_11" in md
    assert "## table2 — Table 2 shape" in md and "## fig9 — Figure 9" in md
    recs = pl.read_csv(paths.records_csv)
    assert recs.height == len(table2_records()) + len(split_records()) + len(fig_records())


def test_sweeps_figure_and_smoke_grid(tmp_path):
    recs = [rec(grid="smoke_fig10_11", method="none", metrics={"AUC": 0.6, "logloss": 0.2, "NE": 0.9})]
    for m in ("ah", "ah_sa"):
        for v in (1.0, 10.0, 100.0):
            for k in ("label_scale", "grad_scale", "loss_weight"):
                recs.append(rec(grid="smoke_fig10_11", method=m, **{k: v},
                                metrics={"AUC": 0.6 + v / 1e4, "logloss": 0.2, "NE": 0.9}))
    recs.append(rec(grid="smoke_fig10_11", method="ah", label_scale=10.0, grad_scale=10.0,
                    metrics={"AUC": 0.5, "logloss": 0.2}))  # two scales off 1: not a sweep point
    recs += table2_records(grid="smoke_table2")
    path = write_jsonl(tmp_path / "r.jsonl", recs)
    sweep = sweep_rows(load_records(path).filter(pl.col("grid") == "smoke_fig10_11"))
    assert len(sweep) == 2 * 3 * 3 and all(r["AUC"] != 0.5 for r in sweep)
    paths = build_report([path], tmp_path / "out", REFERENCE)
    assert "smoke_fig10_11_sweeps.png" in paths.figures
    assert_png(paths.figures["smoke_fig10_11_sweeps.png"])
    md = paths.markdown.read_text()
    assert "## smoke_table2 — Table 2 shape" in md
    assert "| 0.5462 |" in md_row(section(md, "smoke_table2"), "DMIN", "FM", "ah_sa")  # smoke grids get the paper's numbers too
    assert "fig9_staleness.png" in paths.missing_figures


def test_dedup_keeps_last_record_of_a_cell(tmp_path):
    first = rec(cell_id="same", metrics={"AUC": 0.10, "logloss": 0.9})
    other = rec(cell_id="other", seed=1, metrics={"AUC": 0.62, "logloss": 0.2})
    last = rec(cell_id="same", metrics={"AUC": 0.60, "logloss": 0.2})
    a = write_jsonl(tmp_path / "a.jsonl", [first, other])
    b = write_jsonl(tmp_path / "b.jsonl", [last])
    df = load_records([a, b])
    assert df.height == 2
    assert df.filter(pl.col("cell_id") == "same")["AUC"].to_list() == [0.60]
    paths = build_report([a, b], tmp_path / "out", REFERENCE)
    lb = pl.read_csv(paths.leaderboard_csv)
    assert lb["AUC_mean"].to_list() == pytest.approx([statistics.mean([0.60, 0.62])])
    md = paths.markdown.read_text()
    assert "1 duplicate line(s) replaced" in md
    assert "pool more than one run per seed" not in md
    # a directory stands for its records.jsonl
    (tmp_path / "run").mkdir()
    write_jsonl(tmp_path / "run" / "records.jsonl", [first])
    assert load_records(tmp_path / "run").height == 1


def test_bad_records_name_file_and_line(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [rec(), rec(), rec(record_version=2)])
    with pytest.raises(RecordError, match=r"bad\.jsonl:3: record_version 2 is not supported"):
        load_records(bad)
    r = rec()
    del r["teacher"]
    missing = write_jsonl(tmp_path / "missing.jsonl", [r])
    with pytest.raises(RecordError, match=r"missing\.jsonl:1: missing required key\(s\) teacher"):
        load_records(missing)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rec()) + "\n\n{not json\n" + json.dumps(rec()) + "\n")
    with pytest.raises(RecordError, match=r"broken\.jsonl:3: not valid JSON"):
        load_records(broken)
    # a torn last line is what a run killed mid-append leaves: skipped, like the pipeline's reader
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(rec()) + "\n" + json.dumps(rec())[:40])
    assert load_records(torn).height == 1
    no_metrics = write_jsonl(tmp_path / "nm.jsonl", [rec(metrics={"logloss": 0.2})])
    with pytest.raises(RecordError, match=r"nm\.jsonl:1: metrics\.AUC must be a number"):
        load_records(no_metrics)


def test_cli_hook(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="exfm")
    add_report_parser(parser.add_subparsers(dest="command"))
    good = write_jsonl(tmp_path / "r.jsonl", fig_records())
    args = parser.parse_args(["report", "--records", str(good), "--out", str(tmp_path / "out"),
                              "--reference", str(REFERENCE)])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "leaderboard.md").exists()
    assert "fig9_staleness.png" in capsys.readouterr().out
    bad = write_jsonl(tmp_path / "bad.jsonl", [rec(record_version=7)])
    args = parser.parse_args(["report", "--records", str(bad), "--out", str(tmp_path / "out2")])
    assert run_report(args) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_runs_pooled_within_one_seed_are_flagged(tmp_path):
    """Two cell_ids with the same visible config and seed (e.g. differing distill options) are averaged: say so."""
    a = write_jsonl(tmp_path / "a.jsonl", [rec(metrics={"AUC": 0.60, "logloss": 0.2}),
                                           rec(metrics={"AUC": 0.64, "logloss": 0.2})])
    paths = build_report([a], tmp_path / "out", REFERENCE)
    c = pl.read_csv(paths.leaderboard_csv).to_dicts()[0]
    assert (c["n_runs"], c["n_seeds"], c["AUC_n"]) == (2, 1, 2)
    assert "⚠ 1 cell(s) pool more than one run per seed" in paths.markdown.read_text()
