"""The report on constructed records: intervals, verdicts, the adapter control, the constant row.

Every expected number is computed here, independently of the report's code (hand formulas with
table t quantiles, sklearn's log loss, the reference CSVs read directly).
"""
import csv
import math
import statistics
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_records import BASE_RATE, CONSTANT, TEST_RATE, entropy, fm, vm, write, write_raw
from sklearn.metrics import log_loss

from exfm_plugin.cli import main
from exfm_plugin.report import build_report

REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference"
T_975_2 = 4.302653
SEEDS = (0, 1, 2)
NONE = (0.600, 0.610, 0.620)
STEPS = {"kd": (0.010, 0.012, 0.011),      # none < kd: holds
         "ah": (-0.005, 0.006, 0.001),     # kd < ah: not resolved
         "ah_sa": (-0.010, -0.011, -0.012),  # ah < ah_sa: reversed
         "ah_sa_frozen": (-0.002, -0.003, -0.0025)}  # relative to ah_sa: the adapter helps, resolved
AUC = {"none": NONE}
AUC["kd"] = tuple(a + d for a, d in zip(AUC["none"], STEPS["kd"]))
AUC["ah"] = tuple(a + d for a, d in zip(AUC["kd"], STEPS["ah"]))
AUC["ah_sa"] = tuple(a + d for a, d in zip(AUC["ah"], STEPS["ah_sa"]))
AUC["ah_sa_frozen"] = tuple(a + d for a, d in zip(AUC["ah_sa"], STEPS["ah_sa_frozen"]))
DCN_KD = tuple(a + 0.02 + s / 1000 for a, s in zip(NONE, SEEDS))  # DCN has no `none` of its own
LOGLOSS = {"none": 0.215, "kd": 0.230}  # the constant scores about 0.228 on these test rows


def interval(xs):
    m, half = statistics.mean(xs), T_975_2 * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def records():
    out = []
    for method, aucs in AUC.items():
        order = SEEDS[::-1] if method in ("kd", "ah_sa_frozen") else SEEDS  # pairing must not rely on order
        out += [vm(aucs[s], LOGLOSS.get(method, 0.21), method=method, seed=s) for s in order]
    out += [vm(DCN_KD[s], 0.21, teacher="DCN", method="kd", seed=s) for s in SEEDS]
    out += [fm(0.65, 0.19, seed=s) for s in SEEDS]
    out.append(vm(status="failed", method="ah", seed=3, error="RuntimeError: out of memory", metrics=None))
    # one seed only: nothing can be resolved
    out += [vm(0.6 + 0.01 * i, 0.25, grid="table4", domain="0", method=m) for i, m in
            enumerate(("none", "kd", "ah", "ah_sa"))]
    for s in (0, 1):
        for rnd in (0, 1):
            day = {"round": rnd, "train_day": 5 + rnd, "test_day": 6 + rnd, "fm_frozen_after_day": 4,
                   "fm_staleness_days": 1 + rnd, "calibration_bins": [[0.05, 0.06, 100]]}
            out += [vm(0.6 + 0.001 * s + g, 0.21, grid="fig9", method=m, seed=s, **day)
                    for m, g in (("none", 0), ("ah", 0.01), ("ah_sa", 0.012), ("ah_sa_frozen", 0.011))]
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    paths = build_report([write(tmp / "r.jsonl", records())], tmp / "out", REFERENCE)
    return paths, paths.markdown.read_text(), pl.read_csv(paths.leaderboard_csv)


def md_row(md, *cells):
    hits = [line for line in md.splitlines() if line.startswith("|") and all(f"| {c} |" in line for c in cells)]
    assert len(hits) == 1, (cells, hits)
    return hits[0]


def section(md, title):
    start = md.index(title)
    return md[start:md.find("\n## ", start + 1)]


def cell(lb, **key):
    rows = lb.filter(*[pl.col(k) == v for k, v in key.items()]).to_dicts()
    assert len(rows) == 1, (key, rows)
    return rows[0]


def test_gain_over_none_is_seed_paired_with_t_interval(report):
    _, md, lb = report
    gains = [100 * (k - n) / n for k, n in zip(AUC["kd"], NONE)]
    c = cell(lb, grid="table2", teacher="DMIN", method="kd")
    assert (c["auc_gain_pct_mean"], c["auc_gain_pct_lo"], c["auc_gain_pct_hi"]) == pytest.approx(interval(gains))
    assert c["auc_gain_pct_n"] == 3 and c["n_seeds"] == 3  # the failed seed 3 is not in it
    m, lo, hi = interval([LOGLOSS["kd"] / entropy(BASE_RATE) - LOGLOSS["none"] / entropy(BASE_RATE)] * 3)
    assert c["NE_diff_mean"] == pytest.approx(m) and c["NE_diff_lo"] == pytest.approx(lo)
    row = md_row(section(md, "## table2 — "), "VM", "DMIN", "FM", "kd")
    m, lo, hi = interval(gains)
    assert f"| {m:+.2f} [{lo:+.2f}, {hi:+.2f}] |" in row
    # DCN has no `none` record: the `none` VM is shared by teachers
    dcn = cell(lb, grid="table2", teacher="DCN", method="kd")
    assert dcn["auc_gain_pct_mean"] == pytest.approx(statistics.mean(
        100 * (k - n) / n for k, n in zip(DCN_KD, NONE)))


def test_ordering_verdicts_per_adjacent_pair(report):
    _, md, _ = report
    t2 = section(md, "## table2 — ")
    t2 = t2[t2.index("Paper's AUC ordering"):t2.index("### AH vs KD")]
    row = [x for x in t2.splitlines() if x.startswith("| DMIN → FM (taobaoad, round 0, schedule day)")]
    assert len(row) == 1
    assert row[0].endswith("| holds; not resolved; reversed |")
    m, lo, hi = interval(STEPS["ah_sa"])
    assert f"| {m:+.4f} [{lo:+.4f}, {hi:+.4f}] |" in row[0]
    assert "every adjacent pair holds in 0 of 1 pairing(s)" in t2
    t4 = section(md, "## table4 — ")
    assert "| not resolved (n=1); not resolved (n=1); not resolved (n=1) |" in t4


def test_adapter_effect_and_ah_vs_kd_pair_by_seed(report):
    _, md, _ = report
    t2 = section(md, "## table2 — ")
    adapter = t2[t2.index("### The adapter's own effect"):]
    row = [x for x in adapter.splitlines() if x.startswith("| DMIN → FM")][0]
    diffs = [-d for d in STEPS["ah_sa_frozen"]]  # ah_sa − ah_sa_frozen per seed
    m, lo, hi = interval(diffs)
    assert f"| 3 | {m:+.4f} [{lo:+.4f}, {hi:+.4f}] |" in row
    assert "| holds | s0: +0.0020, s1: +0.0030, s2: +0.0025 |" in row
    ahkd = t2[t2.index("### AH vs KD"):t2.index("### The adapter")]
    row = [x for x in ahkd.splitlines() if x.startswith("| DMIN → FM")][0]
    assert "| not resolved | s0: -0.0050, s1: +0.0060, s2: +0.0010 |" in row
    assert "over every pairing: holds 0, reversed 0, not resolved 1 of 1" in ahkd


def test_constant_row_and_beats_constant_marks(report):
    _, md, lb = report
    y = np.zeros(1000)
    y[:int(TEST_RATE * 1000)] = 1
    direct = log_loss(y, np.full(1000, BASE_RATE))  # the constant predictor scored row by row
    assert CONSTANT["logloss"] == pytest.approx(direct)
    t2 = section(md, "## table2 — ")
    row = md_row(t2, "constant p")
    assert f"| 0.5000 | {direct:.4f} | {direct / entropy(BASE_RATE):.4f} |" in row
    assert f"normaliser p = {BASE_RATE:.5f}" in t2
    assert "| ✓ 3/3 |" in md_row(t2, "VM", "DMIN", "FM", "none")  # LogLoss 0.215 < 0.228 though NE > 1
    assert "| ✗ 0/3 |" in md_row(t2, "VM", "DMIN", "FM", "kd")
    fm_rows = [x for x in t2.splitlines() if x.startswith("| FM | DMIN | — | — |")]
    assert len(fm_rows) == 1 and "| ✓ 3/3 |" in fm_rows[0]
    none = cell(lb, grid="table2", method="none")
    assert none["beats_constant"] is True and none["NE_below_1"] is False
    # table2, table4 (LogLoss 0.25: worse than the constant) and two fig9 days; none has NE < 1
    assert "**distinct `none` VMs beating the constant predictor: 3 of 4** (NE < 1: 0 of 4)" in md


def test_paper_numbers_failed_cells_and_figures(report):
    paths, md, _ = report
    with (REFERENCE / "table2_taobaoad.csv").open() as fh:
        paper = {(r["teacher"], r["student"], r["method"]): float(r["auc"]) for r in csv.DictReader(fh)}
    gain = 100 * (paper[("DMIN", "FM", "kd")] - paper[("DMIN", "FM", "none")]) / paper[("DMIN", "FM", "none")]
    row = md_row(section(md, "## table2 — "), "VM", "DMIN", "FM", "kd")
    assert row.endswith(f"| {paper[('DMIN', 'FM', 'kd')]:.4f} | {gain:+.2f}% |")
    assert "RuntimeError: out of memory" in md[md.index("## Failed cells"):]
    for name in ("fig9_staleness.png", "calibration_fig9.png"):
        assert paths.figures[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibration_table2.png" in paths.missing_figures
    assert "fig12_scaling_grid.png" in paths.missing_figures


def test_cli(tmp_path, capsys):
    good = write(tmp_path / "r.jsonl", records())
    out = str(tmp_path / "out")
    assert main(["report", "--records", str(good), "--out", out, "--reference", str(REFERENCE)]) == 0
    assert "fig9_staleness.png" in capsys.readouterr().out
    bad = write_raw(tmp_path / "bad.jsonl", [vm(), vm(kind="bm")])
    assert main(["report", "--records", str(bad), "--out", str(tmp_path / "out2")]) == 2
    assert "bad.jsonl:2: cell" in capsys.readouterr().err


def test_crossed_student_hyperparameters_are_separate_cells_paired_with_their_own_none(tmp_path):
    """A tuner_space that crosses `embedding_dim` gives one cell per value (never pooled as if
    the values were seeds), and each variant's gain is against the `none` of the same value."""
    none = {4: (0.60, 0.61, 0.62), 8: (0.70, 0.71, 0.72)}
    kd_gain = {4: 0.01, 8: 0.03}
    recs = []
    for dim in (4, 8):
        for s in SEEDS:
            hp = {"hparams": {"embedding_dim": dim}}
            recs += [vm(none[dim][s], 0.21, method="none", seed=s, **hp),
                     vm(none[dim][s] + kd_gain[dim], 0.21, method="kd", seed=s, **hp)]
    paths = build_report([write(tmp_path / "r.jsonl", recs)], tmp_path / "out", REFERENCE)
    lb = pl.read_csv(paths.leaderboard_csv)
    for dim in (4, 8):
        c = cell(lb, method="kd", hparams=f"embedding_dim={dim}")
        assert c["n_seeds"] == 3 and c["AUC_mean"] == pytest.approx(statistics.mean(none[dim]) + kd_gain[dim])
        gains = [100 * kd_gain[dim] / n for n in none[dim]]
        assert c["auc_gain_pct_mean"] == pytest.approx(statistics.mean(gains))
    assert "| FM (embedding_dim=8) | kd |" in paths.markdown.read_text()


def test_variant_grids_take_their_table_shape(tmp_path):
    """smoke_ (make reproduce) and science_ (docs/science_check) grids are a table at another
    size: titled, paired with the paper's rows and ordered as that table."""
    paper_none = {}
    with (REFERENCE / "table4_taobaoad_domains.csv").open() as fh:
        for r in csv.DictReader(fh):
            paper_none[(r["student"], r["method"], r["domain"])] = float(r["auc"])
    recs = [vm(0.6 + 0.01 * i, 0.21, grid=g, domain="0", method=m, seed=s)
            for g in ("science_table4", "smoke_table4") for i, m in enumerate(("none", "ah_sa")) for s in SEEDS]
    paths = build_report([write(tmp_path / "r.jsonl", recs)], tmp_path / "out", reference_dir=REFERENCE)
    md = paths.markdown.read_text()
    assert "## science_table4 — Table 4 shape" in md
    assert md.index("## science_table4") < md.index("## smoke_table4")
    want = paper_none[("FM", "none", "1")]  # our domain 0 is the paper's domain 1
    assert f"| {want:.4f} |" in section(md, "## science_table4 — ")


def test_grid_order_puts_every_variant_after_the_real_grids():
    """science_ grids are variants like smoke_ ones: after the real grids, in the paper's order."""
    from exfm_plugin.report.build import grid_order

    got = grid_order(["smoke_fig9", "science_table4", "mine", "table3", "smoke_table2", "table2", "smoke_table4"])
    assert got == ["table2", "table3", "mine", "smoke_table2", "science_table4", "smoke_table4", "smoke_fig9"]
