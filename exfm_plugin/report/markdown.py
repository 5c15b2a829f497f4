"""Markdown pieces of the leaderboard: formatting helpers, the header, one table per test day and
unit (the constant predictor, the FMs and the VMs on one normaliser), BARS, failed cells."""
from __future__ import annotations

import math
from typing import Any, Sequence

import polars as pl

from ..contracts import BARS_DATASET_NAMES, base_grid_name
from .aggregate import UNIT_KEY, none_vs_constant, unit_of
from .compare import is_default_scales
from .data_size import data_scales, size_warning
from .premises import headroom_share
from .references import References
from .stats import Interval, format_interval

SMOKE_PREFIX = "smoke_"
# a table or figure run at another size: smoke_ (make reproduce's), science_ (docs/science_check's)
VARIANT_PREFIXES = (SMOKE_PREFIX, "science_")


def grid_prefix(grid: str) -> str:
    """The variant prefix of a grid name (``smoke_``, ``science_``), or ``""``."""
    return next((p for p in VARIANT_PREFIXES if grid.startswith(p)), "")


def grid_shape(grid: str) -> str:
    """The table/figure shape of a grid name: ``smoke_table2`` is drawn like ``table2``,
    ``science_table4`` like ``table4``."""
    grid = base_grid_name(grid)
    return grid[len(grid_prefix(grid)):]


def fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    """``mean ± sd`` (sd over seeds, ddof=1), just the mean for one seed."""
    return "—" if mean is None else fmt(mean, digits) + ("" if std is None else f" ± {fmt(std, digits)}")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def esc(v: Any) -> str:
        return "—" if v is None else str(v).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]


def scale_label(c: dict[str, Any]) -> str:
    return "/".join("—" if c[k] is None else f"{c[k]:g}" for k in ("label_scale", "grad_scale", "loss_weight"))


def cell_interval(c: dict[str, Any], gain: str) -> Interval | None:
    """The stored interval of a cell's gain column (``auc_gain_pct``, ``logloss_diff``, ``NE_diff``)."""
    if c.get(f"{gain}_mean") is None:
        return None
    return Interval(c[f"{gain}_mean"], c[f"{gain}_n"], c[f"{gain}_lo"], c[f"{gain}_hi"])


def header(records: pl.DataFrame, cells: pl.DataFrame, n_dup: int, refs: References) -> list[str]:
    lines = ["# exfm leaderboard", ""]
    if records.is_empty():
        return lines + ["No records were found: nothing to report.", ""]
    sources = records.select("dataset", "data_source").unique().sort("dataset", "data_source").rows()
    kinds = {s for _, s in sources}
    scales = data_scales(records.to_dicts())
    if (warning := size_warning(scales)) is not None:
        lines += [warning, ""]
    if kinds == {"synthetic"}:
        lines.append("**Data: SYNTHETIC.** Every number below comes from exfm's synthetic world (generated data "
                     "in the datasets' formats), not from the real TaobaoAd / Amazon Electronics / KuaiVideo "
                     "data; they are not comparable with the paper's or BARS' numbers printed beside them.")
    elif "synthetic" in kinds:
        lines.append("**Data: MIXED synthetic and real.** Only real-data numbers compare with the paper's and BARS'.")
    else:
        lines.append("**Data: REAL** (" + ", ".join(sorted(kinds)) + " files of the public datasets).")
    lines += ["", "Data per dataset (source, grid size, VM rows a day, seeds of the ok records):", ""]
    lines += [f"- {s.describe()}" for s in scales]
    for d, note in records.filter(pl.col("split_note").is_not_null()).select(
            "dataset", "split_note").unique().sort("dataset", "split_note").rows():
        lines.append(f"- ⚠ **{d}: {note}** — the 8 days are not calendar days; time order is the files' row order.")
    ok = records.filter(pl.col("status") == "ok")
    seeds = sorted(s for s in ok["seed"].unique().to_list() if s is not None)
    lines.append("")
    if seeds and not cells.is_empty():
        lo, hi = cells["n_seeds"].min(), cells["n_seeds"].max()
        n_text = f"every cell has {lo}" if lo == hi else f"cells have {lo} to {hi}"
        lines.append(f"Seeds (ok records): {len(seeds)} ({', '.join(map(str, seeds))}); {n_text} seed(s).")
    else:
        lines.append("Seeds: none, no cell finished.")
    lines.append(f"Records: {records.height} unique cells ({ok.height} ok, {records.height - ok.height} failed)"
                 + (f"; {n_dup} duplicate line(s) replaced by the last record of their cell_id." if n_dup else "."))
    if not cells.is_empty():
        n_none, n_beat, n_ne = none_vs_constant(cells)
        lines.append(f"**distinct `none` VMs beating the constant predictor: {n_beat} of {n_none}** "
                     f"(NE < 1: {n_ne} of {n_none}).")
        pooled = cells.filter(pl.col("n_runs") > pl.col("n_seeds")).height
        if pooled:
            lines.append(f"⚠ {pooled} cell(s) pool more than one run per seed (records differing only in fields "
                         "a record does not name, e.g. distill options); see n_runs vs n_seeds in leaderboard.csv.")
    lines += [
        "", "How to read the tables:",
        "- Absolute metrics are mean ± sample std (ddof=1) over seeds. NE = LogLoss / H(p) with p = "
        "`ne_base_rate`, the click rate of the VM's training data: one p for every row of a test day "
        "(FM, VMs and the constant predictor), so NE values in one table compare.",
        "- The constant row predicts p for every test row (AUC 0.5). **beats const** = the row's mean "
        "LogLoss over seeds is below the constant's LogLoss on the same test rows (equivalently its NE is "
        "below the constant's NE); `k/n` counts the seeds where it is.",
        "- A gain over `none` is the per-seed paired difference (same teacher, student, round, domain/task, "
        "schedule and seed; the `none` VM is shared by teachers): AUC as 100 × (AUC − AUC_none) / AUC_none, "
        "LogLoss and NE as absolute differences; shown as mean [95% t-interval over seeds].",
        "- A comparison **holds** when its interval excludes 0 on the side the paper claims, is **reversed** "
        "when it excludes 0 on the other side and is **not resolved** when it contains 0 (or n = 1).",
        "- The paper's numbers (Tables 2-5) come from real data and one inference; several are odd "
        "(TaobaoAd log losses above 0.69 at a ~5% CTR). They are printed as published."]
    if len(refs.found) < 5:
        lines.append(f"- Reference files found: {', '.join(refs.found) or 'none'} (empty columns where missing).")
    return lines + [""]


def _unit_title(u: dict[str, Any], const: dict[str, Any] | None) -> str:
    where = [f"test day {u['test_day']}", f"round {u['round']}", f"schedule {u['vm_schedule']}"]
    where += [f"{k} {u[k]}" for k in ("domain", "task") if u[k] is not None]
    text = f"**{u['dataset']}, " + ", ".join(where) + "**"
    if const is not None:
        text += f": normaliser p = {fmt(const['ne_base_rate'], 5)} (click rate of the VM's training data)"
        spread = max(const.get("constant_logloss_spread") or 0.0, const.get("ne_base_rate_spread") or 0.0)
        if spread > 1e-12:
            text += " ⚠ p or the constant differs between this table's records (mean shown)"
    return text


def unit_tables(cells: list[dict[str, Any]], consts: dict[tuple, dict[str, Any]], shape: str,
                refs: References) -> list[str]:
    """One table per test day and unit: constant, FMs, VMs; gains over ``none`` with intervals."""
    units: dict[tuple, list[dict]] = {}
    for c in cells:
        units.setdefault(unit_of(c), []).append(c)
    with_paper = shape in ("table2", "table3", "table4", "table5")
    out: list[str] = []
    for key, rows in units.items():
        const = consts.get(key)
        show_scales = any(not is_default_scales(c) for c in rows)
        extra = [k for k in ("fm_frozen_after_day", "fm_staleness_days", "embedding_update", "feature_gap")
                 if len({c[k] for c in rows}) > 1 or bool({c[k] for c in rows} - {None, "", "dense", 0})]
        show_gauc = any(c["gAUC_mean"] is not None for c in rows)
        headers = ["row", "teacher", "student", "method"] + (["LS/GS/LW"] if show_scales else []) + extra
        headers += ["n", "AUC"] + (["gAUC"] if show_gauc else []) + ["LogLoss", "NE", "calibration", "beats const",
                                                                     "AUC gain vs none (%)", "ΔNE vs none"]
        oracle_auc = const.get("oracle_AUC") if const is not None else None
        headers += ["share of headroom"] if oracle_auc is not None else []
        headers += ["paper AUC", "paper gain"] if with_paper else []
        table = []
        if const is not None:
            table.append(["constant p", "—", "—", "—"] + [""] * (len(headers) - 4))
            table[-1][headers.index("AUC")] = "0.5000"
            if show_gauc:
                table[-1][headers.index("gAUC")] = "0.5000"  # one score for all rows: 0.5 in every group
            table[-1][headers.index("LogLoss")] = fmt(const["constant_logloss"])
            table[-1][headers.index("NE")] = fmt(const["constant_NE"])
            table[-1][headers.index("n")] = const["n_seeds"]
        if oracle_auc is not None:
            table.append(["oracle (the world's truth)", "—", "—", "—"] + [""] * (len(headers) - 4))
            for h, c in (("AUC", "oracle_AUC"), ("gAUC", "oracle_gAUC"), ("LogLoss", "oracle_logloss"),
                         ("NE", "oracle_NE"), ("calibration", "oracle_calibration")):
                if h in headers:
                    table[-1][headers.index(h)] = fmt(const[c])
            table[-1][headers.index("share of headroom")] = "1.00"
            table[-1][headers.index("n")] = const["n_seeds"]
        for c in sorted(rows, key=lambda c: c["kind"] != "fm"):
            vm = c["kind"] == "vm"
            student = c["student"] and (f"{c['student']} ({c['hparams']})" if c.get("hparams") else c["student"])
            r = ["VM" if vm else "FM", c["teacher"], student or "—", c["method"] or "—"]
            r += ([scale_label(c) if vm else "—"] if show_scales else []) + [c[e] for e in extra]
            r += [c["AUC_n"], pm(c["AUC_mean"], c["AUC_std"])]
            r += [pm(c["gAUC_mean"], c["gAUC_std"])] if show_gauc else []
            beats = "✓" if c["beats_constant"] else ("✗" if c["beats_constant"] is not None else "—")
            r += [pm(c["logloss_mean"], c["logloss_std"]), pm(c["NE_mean"], c["NE_std"]),
                  pm(c["calibration_mean"], c["calibration_std"]),
                  f"{beats} {c['seeds_beating_constant']}/{c['AUC_n']}"]
            base = vm and c["method"] == "none"
            r += ["baseline" if base else format_interval(cell_interval(c, "auc_gain_pct"), 2),
                  "baseline" if base else format_interval(cell_interval(c, "NE_diff"), 4)]
            if oracle_auc is not None:
                share = headroom_share(c["AUC_mean"], oracle_auc)
                r += ["—" if share is None else f"{share:.2f}"]
            if with_paper:
                pa, _, pg = refs.paper(shape, c)
                r += [fmt(pa), "baseline" if base and pa is not None else ("—" if pg is None else f"{pg:+.2f}%")]
            table.append(r)
        out += [_unit_title(dict(zip(UNIT_KEY, key)), const), ""] + md_table(headers, table) + [""]
    return out


def bars_table(cells: list[dict[str, Any]], refs: References) -> list[str]:
    """BARS' full-data single-model numbers beside our `none` VMs and our FMs (mean AUC)."""
    ours: dict[tuple, list[float]] = {}
    for c in cells:
        if c["kind"] == "fm" or c["method"] == "none":
            model = c["student"] if c["kind"] == "vm" else c["teacher"]
            ours.setdefault((c["dataset"], c["kind"], model), []).append(c["AUC_mean"])
    rows = []
    for (ds, kind, model), aucs in ours.items():
        ba, bl, _ = refs.bars_for(ds, model)
        rows.append([BARS_DATASET_NAMES.get(ds, ds), model, "VM (`none`)" if kind == "vm" else "FM",
                     fmt(ba), fmt(bl), fmt(sum(aucs) / len(aucs))])
    if not rows:
        return []
    return ["BARS leaderboard (each model alone, full data) beside our mean AUC over rounds and teachers:", ""] + \
        md_table(["BARS dataset", "model", "role", "BARS AUC", "BARS LogLoss", "our AUC"], rows) + [""]


def failed_section(records: pl.DataFrame) -> list[str]:
    failed = records.filter(pl.col("status") == "failed")
    out = ["## Failed cells", ""]
    if failed.is_empty():
        return out + ["None.", ""]
    rows = []
    for r in failed.iter_rows(named=True):
        err = (r["error"] or "").strip().replace("\n", " ")
        rows.append([r["grid"], r["cell_id"], r["kind"], r["dataset"], r["teacher"], r["student"] or "—",
                     r["method"] or "—", scale_label(r) if r["kind"] == "vm" else "—", r["seed"], r["round"],
                     err if len(err) <= 300 else err[:297] + "..."])
    return out + [f"{failed.height} cell(s) failed; they are left out of every mean above.", ""] + md_table(
        ["grid", "cell_id", "kind", "dataset", "teacher", "student", "method", "LS/GS/LW", "seed", "round", "error"],
        rows) + [""]
