"""The paper's Figures 9-12 and a reliability plot per grid, from the ok records.

Error bars are 95% t-intervals over seeds (values of one seed averaged first), drawn where a
point has at least 2 seeds; a point with one seed has none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..contracts import ADAPTER_CONTROL, METHODS
from .compare import SCALES, SeedIndex
from .stats import t_interval

FIGURE_FILES = {"fig9": "fig9_staleness.png", "fig10_11": "fig10_11_sweeps.png", "fig12": "fig12_scaling_grid.png"}
FIGURE_TITLES = {"fig9": "Figure 9: SA under FM staleness", "fig10_11": "Figures 10-11: LW / LS and GS sweeps",
                 "fig12": "Figure 12: joint LS / GS / LW grid"}
SA_LINES = (("ah", "w/o SA (ah)", "s", "--"), ("ah_sa", "w/ SA (ah_sa)", "o", "-"),
            (ADAPTER_CONTROL, f"SA frozen ({ADAPTER_CONTROL})", "^", ":"))
Points = dict[Any, dict[int, list[float]]]  # x -> seed -> values


def new_figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def ci_series(pts: Points) -> tuple[list, list[float], list[list[float]]]:
    """Sorted x, mean over seeds, and [below, above] error-bar lengths of the 95% interval (0 for n < 2)."""
    xs = sorted(pts)
    means, below, above = [], [], []
    for x in xs:
        iv = t_interval(sum(v) / len(v) for v in pts[x].values())
        means.append(iv.mean)
        below.append(0.0 if iv.lo is None else iv.mean - iv.lo)
        above.append(0.0 if iv.hi is None else iv.hi - iv.mean)
    return xs, means, [below, above]


def auc_gain(index: SeedIndex, r: dict[str, Any]) -> float | None:
    """100 · (AUC − AUC_none) / AUC_none of one record against its seed's ``none``."""
    base = index.values(r, "none", "AUC").get(r["seed"])
    return None if base is None or r["AUC"] is None else 100.0 * (r["AUC"] - base) / base


def _add(pts: Points, x: Any, seed: int, v: float | None) -> None:
    if x is not None and v is not None:
        pts.setdefault(x, {}).setdefault(seed, []).append(v)


def plot_fig9(ok: list[dict], index: SeedIndex, path: Path, title: str) -> bool:
    """VM AUC gain over ``none`` against FM staleness: ``ah``, ``ah_sa`` and the frozen-adapter control."""
    rows = [r for r in ok if r["kind"] == "vm" and r["method"] in {m for m, *_ in SA_LINES}]
    rows = [(r, g) for r in rows if (g := auc_gain(index, r)) is not None]
    if not rows:
        return False
    from matplotlib.ticker import MaxNLocator

    stale = any(r["fm_staleness_days"] is not None for r, _ in rows)
    xcol, xlabel = (("fm_staleness_days", "FM staleness (days)") if stale
                    else ("fm_frozen_after_day", "FM frozen after day"))
    fig, axes = new_figure(2)
    for ax, x_of, xl in ((axes[0][0], lambda r: r[xcol], xlabel), (axes[0][1], lambda r: r["test_day"], "VM test day")):
        for method, name, marker, ls in SA_LINES:
            pts: Points = {}
            for r, g in rows:
                if r["method"] == method:
                    _add(pts, x_of(r), r["seed"], g)
            if pts:
                xs, ms, err = ci_series(pts)
                ax.errorbar(xs, ms, yerr=err, marker=marker, ls=ls, capsize=3, label=name)
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xl)
        ax.set_ylabel("VM AUC gain over none (%), 95% CI")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return True


SWEEPS = (("loss_weight", "LW (w)", ("label_scale", "grad_scale")),
          ("label_scale", "LS (alpha)", ("loss_weight", "grad_scale")),
          ("grad_scale", "GS (beta)", ("label_scale", "loss_weight")))
SWEEP_METHODS = ("ah", "ah_sa", ADAPTER_CONTROL)


def sweep_rows(ok: list[dict]) -> list[dict]:
    """Records of the LW/LS/GS sweeps: ah-family methods with at least two of the three scales at 1."""
    return [r for r in ok if r["kind"] == "vm" and r["method"] in SWEEP_METHODS
            and sum(r[k] == 1.0 for k in SCALES) >= 2]


def plot_sweeps(ok: list[dict], index: SeedIndex, path: Path, title: str) -> bool:
    """Figures 10-11: AUC (and NE where recorded) against LW, LS and GS, the other two at 1."""
    rows = sweep_rows(ok)
    if not rows:
        return False
    none = [r for r in ok if r["kind"] == "vm" and r["method"] == "none"]
    metrics = ["AUC"] + (["NE"] if any(r["NE"] is not None for r in rows) else [])
    fig, axes = new_figure(3, len(metrics))
    for j, (col, xlabel, fixed) in enumerate(SWEEPS):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for method in SWEEP_METHODS:
                pts: Points = {}
                for r in rows:
                    if r["method"] == method and all(r[k] == 1.0 for k in fixed):
                        _add(pts, r[col], r["seed"], r[metric])
                if pts:
                    xs, ms, err = ci_series(pts)
                    ax.errorbar(xs, ms, yerr=err, marker="o", capsize=3, label=method)
            base = [r[metric] for r in none if r[metric] is not None]
            if base:
                ax.axhline(sum(base) / len(base), color="grey", ls=":", lw=1, label="none")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (others = 1)")
            ax.set_ylabel(f"VM {metric} (95% CI)")
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return True


def plot_fig12(ok: list[dict], index: SeedIndex, path: Path, title: str) -> bool:
    """Figure 12: AUC gain over ``none`` per (LS, GS, LW) triple, one bar per method, 95% CI."""
    rows = [(r, g) for r in ok if r["kind"] == "vm" and r["method"] != "none"
            and (g := auc_gain(index, r)) is not None]
    if not rows:
        return False
    triples = sorted({tuple(r[k] for k in SCALES) for r, _ in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r, _ in rows)]
    fig, axes = new_figure(1, width=max(5.0, 0.9 * len(triples) * len(methods) + 2.0), height=4.0)
    ax, width = axes[0][0], 0.8 / len(methods)
    for k, m in enumerate(methods):
        pts: Points = {}
        for r, g in rows:
            if r["method"] == m:
                _add(pts, triples.index(tuple(r[s] for s in SCALES)), r["seed"], g)
        xs, ms, err = ci_series(pts)
        ax.bar([x + (k - (len(methods) - 1) / 2) * width for x in xs], ms, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(range(len(triples)))
    ax.set_xticklabels([f"LS={a:g}\nGS={b:g}\nLW={c:g}" for a, b, c in triples], fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("VM AUC gain over none (%), 95% CI")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    return True


def plot_calibration(ok: list[dict], index: SeedIndex, path: Path, title: str) -> bool:
    """Reliability plot per method: the i-th prediction-quantile bins pooled over records, count-weighted."""
    pooled: dict[str, dict[int, list[float]]] = {}
    for r in ok:
        if not r["calibration_bins"]:
            continue
        name = r["method"] if r["kind"] == "vm" else f"FM {r['teacher']}"
        for i, b in enumerate(json.loads(r["calibration_bins"])):
            if len(b) >= 3 and b[2]:
                acc = pooled.setdefault(name, {}).setdefault(i, [0.0, 0.0, 0.0])
                acc[0], acc[1], acc[2] = acc[0] + b[0] * b[2], acc[1] + b[1] * b[2], acc[2] + b[2]
    if not pooled:
        return False
    fig, axes = new_figure(1, width=5.0, height=4.6)
    ax, hi = axes[0][0], 0.0
    for name in [m for m in METHODS if m in pooled] + sorted(k for k in pooled if k not in METHODS):
        bins = [pooled[name][i] for i in sorted(pooled[name])]
        xs, ys = [b[0] / b[2] for b in bins], [b[1] / b[2] for b in bins]
        hi = max(hi, *xs, *ys)
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    hi = hi * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], color="grey", ls=":", lw=1, label="ideal")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("mean prediction (per prediction-quantile bin)")
    ax.set_ylabel("mean label")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.savefig(path, dpi=110)
    return True


PLOTTERS: dict[str, Callable[[list[dict], SeedIndex, Path, str], bool]] = {
    "fig9": plot_fig9, "fig10_11": plot_sweeps, "fig12": plot_fig12}
