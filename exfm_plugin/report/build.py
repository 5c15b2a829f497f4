"""Records -> ``leaderboard.md``, ``leaderboard.csv``, ``records.csv`` and the figures.

It never trains or evaluates anything: what it prints is what the records hold, aggregated over
seeds, with the seed-paired comparisons and the reference numbers beside them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import polars as pl

from .aggregate import CELL_KEY, UNIT_KEY, aggregate, constants, ok_rows
from .cell_index import write_cell_index
from .compare import SeedIndex
from .figures import FIGURE_FILES, FIGURE_TITLES, PLOTTERS, plot_calibration, plot_training_curves
from .load import load_with_duplicates
from .markdown import SMOKE_PREFIX, bars_table, failed_section, grid_prefix, grid_shape, header, unit_tables
from .references import References, resolve_reference_dir
from .dose import dose_section, families, margin_points, plot_dose, plot_margin_gain
from .premises import Premises
from .sections import (adapter_section, ah_vs_kd_section, distinct_tally_section, gain_summary, ordering_section,
                       premises_section)

log = logging.getLogger(__name__)

KNOWN_GRIDS = ("table2", "table3", "table4", "table5", "fig9", "fig12", "fig10_11", "bias", "freshness")
GRID_TITLES = {"table2": "Table 2 shape: TaobaoAd, teacher × student × method",
               "table3": "Table 3 shape: Amazon Electronics, teacher × student × method",
               "table4": "Table 4 shape: one shared FM, one VM per domain",
               "table5": "Table 5 shape: one multi-task FM, one VM per task",
               "fig9": "Figure 9: FM staleness, with and without SA",
               "fig12": "Figure 12: joint LS / GS / LW grid",
               "fig10_11": "Figures 10-11: LW / LS and GS sweeps",
               "bias": "Table 4 shape at one level of cross-domain bias (world dial domain_shift)",
               "freshness": "Figure 9 shape at one level of freshness (world dial drift)"}
SHAPE_NOTES = {"table4": "Our domains 0/1/2 are matched to the paper's domains 1/2/3 by position.",
               "table5": "Our tasks is_click/is_like/is_follow are the paper's click/like/follow."}

NOT_DRAWN = {plot_calibration: "no calibration_bins in its records",
             plot_training_curves: "no train_curve in its records (written by `exfm run` since per-cell outputs)"}


@dataclass
class ReportPaths:
    """Where :func:`build_report` wrote its outputs, and which figures it could not draw (and why)."""

    out_dir: Path
    markdown: Path
    leaderboard_csv: Path
    records_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    missing_figures: dict[str, str] = field(default_factory=dict)


def grid_order(grids: Iterable[str]) -> list[str]:
    """Real grids, then variant grids (``smoke_``, ``science_``); within each, known shapes in
    the paper's order and unknown shapes last."""
    def key(g: str) -> tuple:
        shape = grid_shape(g)
        return (bool(grid_prefix(g)), KNOWN_GRIDS.index(shape) if shape in KNOWN_GRIDS else 99, g)
    return sorted(set(grids), key=key)


def _draw(ok: pl.DataFrame, index: SeedIndex, grids: list[str], out: Path, paths: ReportPaths) -> dict[str, list[str]]:
    """Draw every figure whose records exist; returns the markdown lines per grid."""
    notes: dict[str, list[str]] = {g: [] for g in grids}
    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
        log.warning("matplotlib is not installed: no figures (pip install 'exfm[plots]')")
    shapes = {grid_shape(g) for g in grids}
    for shape, name in FIGURE_FILES.items():
        if shape not in shapes:
            paths.missing_figures[name] = f"no records of grid {shape} (or {SMOKE_PREFIX}{shape})"
    for g in grids:
        rows = ok.filter(pl.col("grid") == g).to_dicts()
        shape = grid_shape(g)
        todo = [(f"calibration_{g}.png", plot_calibration, f"Reliability per method ({g})"),
                (f"{g}_training_curves.png", plot_training_curves, f"VM training loss per day pass ({g})")]
        if shape in PLOTTERS:
            todo.insert(0, (grid_prefix(g) + FIGURE_FILES[shape], PLOTTERS[shape], f"{FIGURE_TITLES[shape]} ({g})"))
        for name, plot, title in todo:
            target = out / name
            if target.exists():
                target.unlink()  # a stale figure from an older run must not outlive its records
            drawn = have_mpl and bool(rows) and plot(rows, index, target, title)
            why = ("matplotlib is not installed" if not have_mpl else NOT_DRAWN.get(
                plot, "no ok records it can plot (needs a `none` baseline)"))
            if drawn:
                paths.figures[name] = target
                notes[g].append(f"- `{name}`: {title}")
            else:
                paths.missing_figures[name] = why
                notes[g].append(f"- `{name}`: not drawn — {why}.")
    return notes


def _grid_section(g: str, cells: list[dict], consts: dict[tuple, dict], index: SeedIndex,
                  ok_vm: list[dict], refs: References, premises: Premises) -> list[str]:
    shape = grid_shape(g)
    lines = [f"## {g} — {GRID_TITLES.get(shape, f'Grid {g} (a grid this report does not know: plain tables)')}",
             ""]
    if not cells:
        return lines + ["No cell of this grid finished (see failed cells).", ""]
    if shape in SHAPE_NOTES:
        lines += [SHAPE_NOTES[shape], ""]
    lines += unit_tables(cells, consts, shape, refs)
    vm_cells = [c for c in cells if c["kind"] == "vm"]
    g_vm = [r for r in ok_vm if r["grid"] == g]
    lines += premises_section(premises, cells)
    lines += gain_summary(vm_cells, premises) + ordering_section(index, g_vm) + ah_vs_kd_section(index, g_vm, premises)
    lines += adapter_section(index, g_vm, premises)
    if shape in ("table2", "table3"):
        lines += bars_table(cells, refs)
    return lines


def _dose_sections(ok: list[dict], ok_vm: list[dict], index: SeedIndex, premises: Premises, out: Path,
                   paths: ReportPaths) -> list[str]:
    """A dose-response section and figure per grid file run at several world levels, and the
    distillation gain of every pairing against its teacher margin."""
    lines: list[str] = []
    for name, family in sorted(families(sorted({r["grid"] for r in ok})).items()):
        lines += dose_section(name, family, ok)
        target = out / f"{name}_dose_response.png"
        if plot_dose(family, ok, target, f"Dose-response ({name})"):
            paths.figures[target.name] = target
    target = out / "margin_vs_gain.png"
    if plot_margin_gain(margin_points(ok_vm, index, premises), ok, target):
        paths.figures[target.name] = target
    return lines


def build_report(records_paths: str | Path | Sequence[str | Path], out_dir: str | Path = "results",
                 reference_dir: str | Path = "benchmarks/reference") -> ReportPaths:
    """Write leaderboard.md, leaderboard.csv, records.csv and the figures into ``out_dir``;
    returns the paths written and, for every figure not drawn, the reason."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, n_dup = load_with_duplicates(records_paths)
    refs = References.load(resolve_reference_dir(reference_dir))
    cells = aggregate(records)
    paths = ReportPaths(out, out / "leaderboard.md", out / "leaderboard.csv", out / "records.csv")
    records.write_csv(paths.records_csv)
    (cells if not cells.is_empty() else pl.DataFrame({k: [] for k in CELL_KEY})).write_csv(paths.leaderboard_csv)

    ok = ok_rows(records)
    ok_vm = ok.filter(pl.col("kind") == "vm").to_dicts()
    index = SeedIndex(ok_vm)
    consts = {tuple(c[k] for k in UNIT_KEY): c for c in constants(records).to_dicts()}
    grids = grid_order(records["grid"].to_list())
    fig_notes = _draw(ok, index, grids, out, paths)
    all_cells = cells.to_dicts() if not cells.is_empty() else []
    premises = Premises(ok.to_dicts(), all_cells)
    lines = header(records, cells, n_dup, refs)
    for g in grids:
        lines += _grid_section(g, [c for c in all_cells if c["grid"] == g], consts, index, ok_vm, refs, premises)
        lines += [f"Figures for {g}:", ""] + fig_notes[g] + [""]
        cell_md = write_cell_index(g, ok.filter(pl.col("grid") == g).to_dicts(), out)
        if cell_md is not None:
            lines += [f"Per-cell outputs (params, log, losses, weights) of every VM cell: [{cell_md.name}]"
                      f"({cell_md.name})", ""]
    lines += distinct_tally_section(index, ok_vm, all_cells, premises)
    lines += _dose_sections(ok.to_dicts(), ok_vm, index, premises, out, paths)
    lines += ["## Figures", ""]
    lines += [f"- `{name}` ![{name}]({p.name})" for name, p in sorted(paths.figures.items())]
    lines += [f"- `{name}`: missing — {why}." for name, why in sorted(paths.missing_figures.items())] + [""]
    lines += failed_section(records)
    paths.markdown.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("report: %s (%d cells, %d figures)", paths.markdown, len(all_cells), len(paths.figures))
    return paths
