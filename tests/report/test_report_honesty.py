"""Honest reports: the header names the data's source, size, rows a day and seeds and warns in words
about small synthetic runs; figures give each method its own look, shift methods sideways, tick log
axes at the swept values and say in a subtitle which seeds and how much data they rest on; the
training curves and the per-cell index come from the records."""
import json
from pathlib import Path

import pytest
from report_records import vm, write

from exfm_plugin.report import build_report, load_records
from exfm_plugin.report.compare import SeedIndex
from exfm_plugin.report.data_size import data_scales, rows_per_day
from exfm_plugin.report.figures import (METHOD_STYLES, calibration_figure, fig9_figure, finish, sweeps_figure,
                                        training_curves_figure)

REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference"
WARNING = "not comparable to the paper's or BARS' numbers printed beside them"


def bins(rows_per_bin: int) -> list[list[float]]:
    return [[0.01 * (i + 1), 0.01 * (i + 1), float(rows_per_bin)] for i in range(10)]


def curve(days, base: float, passes: int = 1, rows: int = 2500) -> list[dict]:
    return [{"day": d, "pass": p, "passes": passes, "method": "none", "rows": rows, "seconds": 1.0,
             "serving": base / d, "total": 2 * base / d} for d in days for p in range(1, passes + 1)]


def warning_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("⚠ **") and WARNING in line]


def test_header_warns_for_a_small_synthetic_run_and_not_for_full_size_real_data(tmp_path):
    small = [vm(0.6, seed=s, calibration_bins=bins(2500), data_size="small") for s in (0, 1, 2)]
    md = build_report([write(tmp_path / "s.jsonl", small)], tmp_path / "s", REFERENCE).markdown.read_text()
    (line,) = warning_lines(md)
    assert line.startswith("⚠ **Small synthetic data, 25k rows a day, 3 seeds (0, 1, 2)")
    assert "taobaoad: synthetic, size small, 25,000 rows a day" in md

    real = [vm(0.6, seed=s, data_source="raw", calibration_bins=bins(300_000)) for s in (0, 1, 2)]
    md = build_report([write(tmp_path / "r.jsonl", real)], tmp_path / "r", REFERENCE).markdown.read_text()
    assert warning_lines(md) == [] and "taobaoad: raw, 3,000,000 rows a day" in md

    # real data at a small size is still flagged, in its own words
    tiny_real = [vm(0.6, seed=0, data_source="raw", calibration_bins=bins(100))]
    md = build_report([write(tmp_path / "t.jsonl", tiny_real)], tmp_path / "t", REFERENCE).markdown.read_text()
    (line,) = warning_lines(md)
    assert line.startswith("⚠ **Small run of real data, 1.0k rows a day, 1 seed (0)")


def test_rows_a_day_prefer_each_days_first_pass_then_the_test_day():
    record = {"train_curve": json.dumps(curve([1, 2, 3], 1.0, passes=2, rows=100) +
                                        [{"day": 4, "pass": 1, "passes": 1, "rows": 900}]),
              "calibration_bins": json.dumps(bins(7))}
    assert rows_per_day(record) == 100  # median of the days' first passes 100, 100, 100, 900
    assert rows_per_day({"calibration_bins": json.dumps(bins(7))}) == 70
    assert rows_per_day({}) is None
    (scale,) = data_scales([{**record, "dataset": "amazon", "data_source": "synthetic", "seed": 4, "data_size": 6000}])
    assert scale.small and scale.synthetic and scale.seeds == (4,) and scale.sizes == ("6000",)


def _records(tmp_path, recs):
    return load_records(write(tmp_path / "f.jsonl", recs)).to_dicts()


def _data_lines(ax):
    """Label -> the data line of every method series (an errorbar's line carries its container's label)."""
    lines = {c.get_label(): c.lines[0] for c in ax.containers if hasattr(c, "has_yerr")}
    lines.update({line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")})
    return {k: v for k, v in lines.items() if k not in ("ideal", "none (mean)")}


def _look(line):
    return line.get_color(), line.get_marker(), str(line.get_linestyle()), line.get_linewidth()


def test_coinciding_methods_get_distinct_styles_and_offsets(tmp_path):
    recs = []
    for seed in (0, 1):
        for stale in (0, 2, 3):
            recs.append(vm(0.60, grid="fig9", method="none", seed=seed, fm_staleness_days=stale,
                           fm_frozen_after_day=4, round=stale, calibration_bins=bins(2500)))
            for m in ("ah", "ah_sa", "ah_sa_frozen"):  # equal values: the control lies exactly on ah_sa
                recs.append(vm(0.61 + seed / 1000, grid="fig9", method=m, seed=seed, fm_staleness_days=stale,
                               fm_frozen_after_day=4, round=stale, calibration_bins=bins(2500)))
    ok = _records(tmp_path, recs)
    fig, used = fig9_figure(ok, SeedIndex(ok), "Figure 9")
    ax = fig.axes[0]
    lines = _data_lines(ax)
    assert len(lines) == 3 and len({_look(line) for line in lines.values()}) == 3
    xs = {name: list(line.get_xdata()) for name, line in lines.items()}
    assert len({tuple(x) for x in xs.values()}) == 3  # each method shifted by its own offset
    for i, true_x in enumerate((0, 2, 3)):  # ... centred on the true x
        assert sum(x[i] for x in xs.values()) / 3 == pytest.approx(true_x)
        assert max(abs(x[i] - true_x) for x in xs.values()) < 0.5
    finish(fig, "Figure 9", used, tmp_path / "f9.png")
    sub = fig.get_suptitle()
    assert "2 seeds (0, 1)" in sub and "25k rows a day" in sub and "synthetic taobaoad" in sub
    assert (tmp_path / "f9.png").read_bytes()[:4] == b"\x89PNG"

    fig, _ = calibration_figure(ok, SeedIndex(ok), "calibration")
    looks = {name: _look(line) for name, line in _data_lines(fig.axes[0]).items()}
    assert set(looks) == {"none", "ah", "ah_sa", "ah_sa_frozen"} and len(set(looks.values())) == 4
    style = METHOD_STYLES["ah_sa"]
    assert looks["ah_sa"][:3] == (style["color"], style["marker"], style["ls"])


def test_sweep_log_axis_is_ticked_at_the_swept_values(tmp_path):
    recs = []
    for seed in (0, 1):
        recs.append(vm(0.6, grid="fig10_11", method="none", seed=seed))
        for m in ("ah", "ah_sa_frozen"):
            for v in (0.1, 1.0, 10.0, 100.0):
                recs.append(vm(0.6 + seed / 1e3, grid="fig10_11", method=m, seed=seed, loss_weight=v))
    ok = _records(tmp_path, recs)
    fig, _ = sweeps_figure(ok, SeedIndex(ok), "sweeps")
    ax = fig.axes[0]  # AUC against LW
    assert list(ax.get_xticks()) == pytest.approx([0.1, 1.0, 10.0, 100.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1", "10", "100"]
    assert list(ax.xaxis.get_minorticklocs()) == []
    lines = _data_lines(ax)
    ah, frozen = lines["ah"].get_xdata(), lines["ah_sa_frozen"].get_xdata()
    assert all(a < v < f for a, v, f in zip(ah, (0.1, 1.0, 10.0, 100.0), frozen))  # shifted apart on the log axis
    assert _look(lines["ah"]) != _look(lines["ah_sa_frozen"])


def test_training_curves_and_cell_index_from_records(tmp_path):
    results = tmp_path / "results"
    recs = []
    for seed in (0, 1):
        for m, base in (("none", 1.0), ("ah", 1.2), ("ah_sa", 1.1), ("ah_sa_frozen", 1.1)):
            cid = f"{m}-{seed}"
            recs.append(vm(0.6, grid="g", method=m, seed=seed, cell_id=cid, vm_schedule="stream",
                           train_curve=curve(range(1, 6), base + seed / 10), outputs_dir=f"g/{cid}"))
            (results / "g" / cid).mkdir(parents=True)
    path = write(results / "records" / "g.jsonl", recs)
    ok = load_records(path).to_dicts()
    fig, _ = training_curves_figure(ok, SeedIndex(ok), "curves")
    serving = _data_lines(fig.axes[0])
    assert set(serving) == {"none", "ah", "ah_sa", "ah_sa_frozen"}
    assert len({_look(line) for line in serving.values()}) == 4
    # a point is the mean over seeds of the day's loss: none on day 2 = mean(1.0 / 2, 1.1 / 2)
    y_none = list(serving["none"].get_ydata())
    assert y_none[1] == pytest.approx((1.0 / 2 + 1.1 / 2) / 2)
    assert len(y_none) == 5

    out = tmp_path / "report"
    paths = build_report([path], out, REFERENCE)
    assert "g_training_curves.png" in paths.figures
    index = (out / "cells_g.md").read_text()
    assert "[cells_g.md](cells_g.md)" in paths.markdown.read_text()
    links = [part.split("](")[1].rstrip(")") for part in index.split("[params")[1:]]
    assert len(links) == 8
    assert all((out / link).parent.resolve().parent == (results / "g").resolve() for link in links)
    # records without train_curve: the figure is reported missing with the reason
    old = write(tmp_path / "old.jsonl", [vm(0.6, grid="h", seed=0)])
    assert "train_curve" in build_report([old], tmp_path / "old", REFERENCE).missing_figures["h_training_curves.png"]
