"""The paper's Figures 9-12, a reliability plot and the VMs' training curves per grid, from the ok records.

Error bars are 95% t-intervals over seeds (values of one seed averaged first), drawn where a
point has at least 2 seeds; a point with one seed has none. Every method has its own colour, line
style, marker and width (:data:`METHOD_STYLES`), and each method's points are shifted sideways by
a small offset, so a control that coincides with its method (``ah_sa_frozen`` on ``ah_sa``) never
hides it. Every figure's subtitle states the data (source, size, rows a day) and the seeds.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from ..contracts import ADAPTER_CONTROL, METHODS
from .compare import SCALES, SeedIndex
from .data_size import caption
from .stats import t_interval

FIGURE_FILES = {"fig9": "fig9_staleness.png", "fig10_11": "fig10_11_sweeps.png", "fig12": "fig12_scaling_grid.png"}
FIGURE_TITLES = {"fig9": "Figure 9: SA under FM staleness", "fig10_11": "Figures 10-11: LW / LS and GS sweeps",
                 "fig12": "Figure 12: joint LS / GS / LW grid"}
SA_LINES = (("ah", "w/o SA (ah)"), ("ah_sa", "w/ SA (ah_sa)"), (ADAPTER_CONTROL, f"SA frozen ({ADAPTER_CONTROL})"))
Points = dict[Any, dict[int, list[float]]]  # x -> seed -> values

# one look per method: the control is thin and dotted on top of its thick solid method
METHOD_STYLES: dict[str, dict[str, Any]] = {
    "none": {"color": "#555555", "marker": "o", "ls": "-", "lw": 1.6, "zorder": 2},
    "kd": {"color": "tab:orange", "marker": "s", "ls": "--", "lw": 1.6, "zorder": 3},
    "ah": {"color": "tab:blue", "marker": "^", "ls": "-.", "lw": 1.6, "zorder": 3},
    "ah_sa": {"color": "tab:green", "marker": "D", "ls": "-", "lw": 2.6, "zorder": 3},
    ADAPTER_CONTROL: {"color": "tab:red", "marker": "x", "ls": ":", "lw": 1.4, "ms": 8, "zorder": 4},
}
EXTRA_STYLES = ({"color": "tab:purple", "marker": "v", "ls": (0, (3, 1, 1, 1)), "lw": 1.4},
                {"color": "tab:brown", "marker": "P", "ls": (0, (1, 1)), "lw": 1.4},
                {"color": "tab:pink", "marker": "*", "ls": (0, (5, 2)), "lw": 1.4},
                {"color": "tab:olive", "marker": "h", "ls": (0, (3, 1, 1, 1, 1, 1)), "lw": 1.4})
HATCHES = {"none": "", "kd": "//", "ah": "", "ah_sa": "..", ADAPTER_CONTROL: "xx"}
OFFSET_LINEAR = 0.08   # sideways shift between methods, as a fraction of the smallest gap between x values
OFFSET_DECADES = 0.03  # the same on a log axis, in decades


def style_of(name: str, others: Sequence[str] = ()) -> dict[str, Any]:
    """Matplotlib keywords of a method (or of another series, e.g. ``FM DMIN``, by its place in ``others``)."""
    if name in METHOD_STYLES:
        return dict(METHOD_STYLES[name])
    extra = [o for o in others if o not in METHOD_STYLES]
    return dict(EXTRA_STYLES[(extra.index(name) if name in extra else len(extra)) % len(EXTRA_STYLES)])


def offset_xs(xs: Sequence[float], k: int, n: int, log: bool = False) -> list[float]:
    """``xs`` shifted for the k-th of n series: centred on the true x, a fraction of the smallest x gap
    apart (a few hundredths of a decade on a log axis)."""
    shift = k - (n - 1) / 2
    if log:
        return [x * 10 ** (shift * OFFSET_DECADES) for x in xs]
    gaps = [b - a for a, b in zip(sorted(xs), sorted(xs)[1:]) if b > a]
    return [x + shift * OFFSET_LINEAR * (min(gaps) if gaps else 1.0) for x in xs]


def subtitle(rows: list[dict[str, Any]], error_bars: bool = True) -> str:
    """The data and the seeds behind a figure (and what its error bars are)."""
    return caption(rows) + ("; error bars: 95% t-interval over seeds" if error_bars else "")


def finish(fig, title: str, rows: list[dict[str, Any]], path: Path, error_bars: bool = True) -> None:
    """Title, the data-and-seeds subtitle wrapped to the figure's width, then save."""
    width = max(40, int(fig.get_figwidth() * 11.5))  # characters of a 10-point line that fit
    fig.suptitle(title + "\n" + textwrap.fill(subtitle(rows, error_bars), width), fontsize=10)
    fig.savefig(path, dpi=110)


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


def fig9_figure(ok: list[dict], index: SeedIndex, title: str):
    """VM AUC gain over ``none`` against FM staleness: ``ah``, ``ah_sa`` and the frozen-adapter control."""
    rows = [r for r in ok if r["kind"] == "vm" and r["method"] in {m for m, *_ in SA_LINES}]
    rows = [(r, g) for r in rows if (g := auc_gain(index, r)) is not None]
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    stale = any(r["fm_staleness_days"] is not None for r, _ in rows)
    xcol, xlabel = (("fm_staleness_days", "FM staleness (days)") if stale
                    else ("fm_frozen_after_day", "FM frozen after day"))
    fig, axes = new_figure(2)
    for ax, x_of, xl in ((axes[0][0], lambda r: r[xcol], xlabel), (axes[0][1], lambda r: r["test_day"], "VM test day")):
        for k, (method, name) in enumerate(SA_LINES):
            pts: Points = {}
            for r, g in rows:
                if r["method"] == method:
                    _add(pts, x_of(r), r["seed"], g)
            if pts:
                xs, ms, err = ci_series(pts)
                ax.errorbar(offset_xs(xs, k, len(SA_LINES)), ms, yerr=err, capsize=3, elinewidth=1.0,
                            label=name, **style_of(method))
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xl)
        ax.set_ylabel("VM AUC gain over none (%), 95% CI")
        ax.legend(fontsize=8)
    return fig, [r for r, _ in rows]


SWEEPS = (("loss_weight", "LW (w)", ("label_scale", "grad_scale")),
          ("label_scale", "LS (alpha)", ("loss_weight", "grad_scale")),
          ("grad_scale", "GS (beta)", ("label_scale", "loss_weight")))
SWEEP_METHODS = ("ah", "ah_sa", ADAPTER_CONTROL)


def sweep_rows(ok: list[dict]) -> list[dict]:
    """Records of the LW/LS/GS sweeps: ah-family methods with at least two of the three scales at 1."""
    return [r for r in ok if r["kind"] == "vm" and r["method"] in SWEEP_METHODS
            and sum(r[k] == 1.0 for k in SCALES) >= 2]


def sweeps_figure(ok: list[dict], index: SeedIndex, title: str):
    """Figures 10-11: AUC (and NE where recorded) against LW, LS and GS, the other two at 1; the
    log x axis is ticked at the swept values."""
    rows = sweep_rows(ok)
    if not rows:
        return None
    from matplotlib.ticker import FixedLocator, NullLocator

    none = [r for r in ok if r["kind"] == "vm" and r["method"] == "none"]
    metrics = ["AUC"] + (["NE"] if any(r["NE"] is not None for r in rows) else [])
    methods = [m for m in SWEEP_METHODS if any(r["method"] == m for r in rows)]
    fig, axes = new_figure(3, len(metrics))
    for j, (col, xlabel, fixed) in enumerate(SWEEPS):
        swept = sorted({r[col] for r in rows if all(r[k] == 1.0 for k in fixed) and r[col] is not None})
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, method in enumerate(methods):
                pts: Points = {}
                for r in rows:
                    if r["method"] == method and all(r[k2] == 1.0 for k2 in fixed):
                        _add(pts, r[col], r["seed"], r[metric])
                if pts:
                    xs, ms, err = ci_series(pts)
                    ax.errorbar(offset_xs(xs, k, len(methods), log=True), ms, yerr=err, capsize=3,
                                elinewidth=1.0, label=method, **style_of(method))
            base = [r[metric] for r in none if r[metric] is not None]
            if base:
                ax.axhline(sum(base) / len(base), color="grey", ls=":", lw=1, label="none (mean)")
            ax.set_xscale("log")
            if swept:
                ax.xaxis.set_major_locator(FixedLocator(swept))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([f"{v:g}" for v in swept])
                ax.set_xlim(min(swept) / 10 ** 0.2, max(swept) * 10 ** 0.2)
            ax.set_xlabel(xlabel + " (others = 1)")
            ax.set_ylabel(f"VM {metric} (95% CI)")
            if ax.has_data():
                ax.legend(fontsize=8)
    return fig, rows + none


def fig12_figure(ok: list[dict], index: SeedIndex, title: str):
    """Figure 12: AUC gain over ``none`` per (LS, GS, LW) triple, one bar per method, 95% CI."""
    rows = [(r, g) for r in ok if r["kind"] == "vm" and r["method"] != "none"
            and (g := auc_gain(index, r)) is not None]
    if not rows:
        return None
    triples = sorted({tuple(r[k] for k in SCALES) for r, _ in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r, _ in rows)]
    fig, axes = new_figure(1, width=max(6.0, 0.9 * len(triples) * len(methods) + 2.0), height=4.4)
    ax, width = axes[0][0], 0.8 / len(methods)
    for k, m in enumerate(methods):
        pts: Points = {}
        for r, g in rows:
            if r["method"] == m:
                _add(pts, triples.index(tuple(r[s] for s in SCALES)), r["seed"], g)
        xs, ms, err = ci_series(pts)
        st = style_of(m)
        ax.bar([x + (k - (len(methods) - 1) / 2) * width for x in xs], ms, width, yerr=err, capsize=3, label=m,
               color=st["color"], hatch=HATCHES.get(m, ""), edgecolor="black", linewidth=0.6)
    ax.set_xticks(range(len(triples)))
    ax.set_xticklabels([f"LS={a:g}\nGS={b:g}\nLW={c:g}" for a, b, c in triples], fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("VM AUC gain over none (%), 95% CI")
    ax.legend(fontsize=8)
    return fig, [r for r, _ in rows]


def calibration_figure(ok: list[dict], index: SeedIndex, title: str):
    """Reliability plot per method: the i-th prediction-quantile bins pooled over records, count-weighted."""
    pooled: dict[str, dict[int, list[float]]] = {}
    used = []
    for r in ok:
        if not r["calibration_bins"]:
            continue
        used.append(r)
        name = r["method"] if r["kind"] == "vm" else f"FM {r['teacher']}"
        for i, b in enumerate(json.loads(r["calibration_bins"])):
            if len(b) >= 3 and b[2]:
                acc = pooled.setdefault(name, {}).setdefault(i, [0.0, 0.0, 0.0])
                acc[0], acc[1], acc[2] = acc[0] + b[0] * b[2], acc[1] + b[1] * b[2], acc[2] + b[2]
    if not pooled:
        return None
    fig, axes = new_figure(1, width=5.6, height=5.2)
    ax, hi = axes[0][0], 0.0
    names = [m for m in METHODS if m in pooled] + sorted(k for k in pooled if k not in METHODS)
    for name in names:
        bins = [pooled[name][i] for i in sorted(pooled[name])]
        xs, ys = [b[0] / b[2] for b in bins], [b[1] / b[2] for b in bins]
        hi = max(hi, *xs, *ys)
        ax.plot(xs, ys, label=name, **{"ms": 4, **style_of(name, names)})
    hi = hi * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], color="grey", ls=":", lw=1, label="ideal")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("mean prediction (per prediction-quantile bin)")
    ax.set_ylabel("mean label")
    ax.legend(fontsize=8)
    return fig, used


CURVE_TERMS = (("serving", "serving loss h(z_S, y)"), ("total", "total training loss"))


def _curve_x(e: dict[str, Any]) -> float:
    """Day d's pass p of P at d - 1 + p/P: one pass a day sits on the day itself."""
    return e["day"] - 1 + e.get("pass", 1) / max(e.get("passes", 1), 1)


def training_curves_figure(ok: list[dict], index: SeedIndex, title: str):
    """Per VM model: the mean serving and total loss of every training pass, one line per method
    (mean over the seed's teachers, rounds and units, then 95% CI over seeds)."""
    rows = [r for r in ok if r["kind"] == "vm" and r.get("train_curve")]
    if not rows:
        return None
    students = sorted({r["student"] for r in rows})
    fig, axes = new_figure(len(students), len(CURVE_TERMS), width=max(5.2, 7.0 / len(students)), height=3.6)
    for j, student in enumerate(students):
        mine = [r for r in rows if r["student"] == student]
        methods = [m for m in METHODS if any(r["method"] == m for r in mine)]
        methods += sorted({r["method"] for r in mine} - set(methods))
        for i, (term, ylabel) in enumerate(CURVE_TERMS):
            ax, days = axes[i][j], set()
            for k, m in enumerate(methods):
                pts: Points = {}
                for r in mine:
                    if r["method"] == m:
                        for e in json.loads(r["train_curve"]):
                            if e.get(term) is not None:
                                _add(pts, _curve_x(e), r["seed"], e[term])
                                days.add(e["day"])
                if pts:
                    xs, ms, err = ci_series(pts)
                    ax.errorbar(offset_xs(xs, k, len(methods)), ms, yerr=err, capsize=2, elinewidth=1.0, label=m,
                                **style_of(m, methods))
            ax.set_xticks(sorted(days))
            ax.set_xticklabels([f"day {d}" for d in sorted(days)], fontsize=8)
            ax.set_xlabel("training day (passes of a day between its ticks)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"VM {student}", fontsize=9)
            if ax.has_data():
                ax.legend(fontsize=7)
    return fig, rows


Drawer = Callable[[list[dict], SeedIndex, str], Any]


def saver(draw: Drawer) -> Callable[[list[dict], SeedIndex, Path, str], bool]:
    """A plotter that writes ``draw``'s figure to ``path`` (title and subtitle added); False: nothing to draw."""
    def plot(ok: list[dict], index: SeedIndex, path: Path, title: str) -> bool:
        drawn = draw(ok, index, title)
        if drawn is None:
            return False
        fig, used = drawn
        finish(fig, title, used, path, error_bars=draw is not calibration_figure)
        return True
    plot.__name__ = plot.__qualname__ = draw.__name__.replace("_figure", "_plot")
    plot.__doc__ = draw.__doc__
    return plot


plot_fig9 = saver(fig9_figure)
plot_sweeps = saver(sweeps_figure)
plot_fig12 = saver(fig12_figure)
plot_calibration = saver(calibration_figure)
plot_training_curves = saver(training_curves_figure)
PLOTTERS: dict[str, Callable[[list[dict], SeedIndex, Path, str], bool]] = {
    "fig9": plot_fig9, "fig10_11": plot_sweeps, "fig12": plot_fig12}
