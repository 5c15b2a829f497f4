"""Dose-responses: a claim read along the world dial of the condition it is about.

A grid file whose world dial is a list (``world: {domain_shift: [0, 0.5, 1, 2]}``) runs one grid
per level (``<grid>@domain_shift=0.5``). For each such family this module computes, per level,
the claim's seed-paired effect (per seed, averaged over the level's units first: its domains, or
its tasks) with a 95% t-interval, and the premises measured beside it:

- one VM per domain (Table 4's shape: cross-domain bias, what AH is for): ``ah`` − ``kd``;
  beside it the FM's bias, its per-domain NE above the oracle's (mean over domains) and the spread of its per-domain
  calibration (max − min), the teacher margin (FM − ``none`` AUC, mean over domains) and the
  students' competence (``none`` NE − the constant's, below 0 = competent);
- an FM frozen on purpose (Figure 9's shape: freshness, what SA is for): ``ah_sa`` −
  ``ah_sa_frozen`` per FM staleness, beside it the teacher margin of the same FM;
- otherwise: ``ah`` − ``none``.

Across all records, :func:`margin_points` pairs each pairing's teacher margin with its ``kd`` and
``ah`` gains (distillation gain along the margin).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..contracts import ADAPTER_CONTROL, WORLD_LEVEL_SEPARATOR, base_grid_name
from .markdown import md_table
from .compare import PAIR_KEY, SeedIndex, compare, is_default_scales
from .premises import Premises
from .stats import Interval, format_interval, t_interval, verdict

DIALS = ("drift", "domain_shift")
CLAIMS = {"domains": ("kd", "ah", "AH vs KD (`ah` − `kd`) along cross-domain bias"),
          "staleness": (ADAPTER_CONTROL, "ah_sa", f"the adapter (`ah_sa` − `{ADAPTER_CONTROL}`) along freshness"),
          "single": ("none", "ah", "`ah` − `none` along the dial")}


def shape_of(rows: list[dict[str, Any]]) -> str:
    """Which claim a family's records are about: one VM per domain (Table 4's shape: cross-domain
    bias), an FM frozen on purpose (Figure 9's shape: freshness), or neither."""
    if any(r.get("domain") is not None for r in rows):
        return "domains"
    if any(r.get("fm_frozen_after_day") is not None for r in rows):
        return "staleness"
    return "single"


def families(grids: list[str]) -> dict[str, list[str]]:
    """Grid file name -> its levels' grid names, for files run at more than one level."""
    out: dict[str, list[str]] = defaultdict(list)
    for g in grids:
        if WORLD_LEVEL_SEPARATOR in g:
            out[base_grid_name(g)].append(g)
    return {k: v for k, v in out.items() if len(v) > 1}


def varied_dial(rows: list[dict[str, Any]]) -> str | None:
    """The world dial whose value differs between a family's levels (None: only the world differs)."""
    for dial in DIALS:
        if len({r.get(f"world_{dial}") for r in rows}) > 1:
            return dial
    return None


def _seed_means(values: dict[tuple, dict[int, float]]) -> dict[tuple, float]:
    """{(series, seed): value} averaged over units."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for (series, _unit), per_seed in values.items():
        for seed, v in per_seed.items():
            acc[(series, seed)].append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _intervals(values: dict[tuple, dict[int, float]]) -> dict[Any, Interval]:
    by_series: dict[Any, list[float]] = defaultdict(list)
    for (series, _seed), v in sorted(_seed_means(values).items(), key=lambda kv: str(kv[0])):
        by_series[series].append(v)
    return {s: t_interval(v) for s, v in by_series.items()}


def level_effects(shape: str, rows: list[dict[str, Any]]) -> dict[str, dict[Any, Interval]]:
    """For one level's ok rows: the claim's effect (ΔAUC, ΔNE) and its premise measures, each per
    series (the FM staleness for ``fig9``, one series otherwise) as an interval over seeds."""
    first, second, _ = CLAIMS[shape]
    vm = [r for r in rows if r["kind"] == "vm" and r["label_scale"] == r["grad_scale"] == r["loss_weight"] == 1.0]
    fm = [r for r in rows if r["kind"] == "fm"]
    margins = Premises(rows, [])  # FM − `none` per seed, paired as the report's premises pair them
    series = (lambda r: r.get("fm_staleness_days") or 0) if shape == "staleness" else (lambda r: "all")
    unit = lambda r: (r["domain"], r["task"], r["teacher"], r["student"])  # noqa: E731
    by: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in vm:
        by[(series(r), unit(r))][r["method"]][r["seed"]] = r
    out: dict[str, dict[tuple, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for key, methods in by.items():
        for seed in set(methods.get(first, {})) & set(methods.get(second, {})):
            a, b = methods[first][seed], methods[second][seed]
            out["ΔAUC"][key][seed] = b["AUC"] - a["AUC"]
            out["ΔNE"][key][seed] = b["NE"] - a["NE"]
        for seed, none in methods.get("none", {}).items():
            if none.get("constant_NE") is not None:
                out["none NE − constant NE"][key][seed] = none["NE"] - none["constant_NE"]
            margin = margins.margin(none)
            if margin is not None and seed in margin.diffs:
                out["teacher margin ΔAUC"][key][seed] = margin.diffs[seed]
    for f in fm:
        if f.get("oracle_NE") is not None:
            out["FM NE above oracle"][(series(f), unit(f))][f["seed"]] = f["NE"] - f["oracle_NE"]
    if shape == "domains":
        calib: dict[int, list[float]] = defaultdict(list)
        for f in fm:
            if f.get("calibration") is not None:
                calib[f["seed"]].append(f["calibration"])
        spread = {s: max(v) - min(v) for s, v in calib.items() if len(v) > 1}
        out["FM calibration spread"] = {("all", "domains"): spread}
    return {name: _intervals(values) for name, values in out.items() if values}


def dose_table(family: list[str], ok: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(the varied dial, one row per level and series: the dial value, every measure's interval)."""
    rows = [r for r in ok if r["grid"] in family]
    dial = varied_dial(rows) or "data_seed"
    worlds = len({r.get("data_seed") for r in rows}) > 1 and dial != "data_seed"
    out = []
    for g in family:
        level = [r for r in rows if r["grid"] == g]
        if not level:
            continue
        effects = level_effects(shape_of(rows), level)
        for s in sorted({s for iv in effects.values() for s in iv}, key=str):
            series = f"world {level[0].get('data_seed')}" + ("" if s == "all" else f", {s}") if worlds else s
            x = level[0].get("data_seed") if dial == "data_seed" else level[0].get(f"world_{dial}")
            out.append({"grid": g, "dial": x, "series": series, **{name: iv.get(s) for name, iv in effects.items()}})
    return dial, sorted(out, key=lambda r: (str(r["series"]), r["dial"] if r["dial"] is not None else -1))


def dose_section(family_name: str, family: list[str], ok: list[dict[str, Any]]) -> list[str]:
    """Markdown: per level, the claim's effect with its verdict and the premises beside it."""
    shape = shape_of([r for r in ok if r["grid"] in family])
    _, _, claim = CLAIMS[shape]
    dial, table = dose_table(family, ok)
    if not table:
        return []
    measures = [m for m in ("ΔAUC", "ΔNE", "none NE − constant NE", "teacher margin ΔAUC", "FM NE above oracle",
                            "FM calibration spread")
                if any(r.get(m) for r in table)]
    rows = []
    for r in table:
        auc = r.get("ΔAUC")
        rows.append([f"{r['dial']:g}" if r["dial"] is not None else "—", r["series"]]
                    + [format_interval(r.get(m)) for m in measures]
                    + [verdict(auc) if auc else "—"])
    series_name = "FM staleness (days)" if shape == "staleness" else "series"
    return ([f"## Dose-response: {claim} ({family_name}, dial `{dial}`)", "",
             "Per level: the claim's seed-paired effect, averaged over the level's units (domains/tasks) within "
             "each seed, mean [95% t-interval over seeds]; beside it the premises measured on the same records. "
             "A verdict reads the ΔAUC interval (holds = favours the second method).", ""]
            + md_table([dial, series_name] + measures + ["verdict (ΔAUC)"], rows) + [""])


def margin_points(ok_vm: list[dict[str, Any]], index: SeedIndex,
                  premises: Premises) -> list[tuple[float, str, Interval]]:
    """(teacher margin, method, gain over ``none`` ΔAUC interval) for every ``kd`` / ``ah`` pairing
    at scales (1, 1, 1) with a margin and at least two common seeds."""
    out, seen = [], set()
    for r in ok_vm:
        key = tuple(r[k] for k in PAIR_KEY) + (r["method"],)
        if r["method"] not in ("kd", "ah") or not is_default_scales(r) or key in seen:
            continue
        seen.add(key)
        margin = premises.margin(r)
        gain = compare(index, r, "none", r["method"], "AUC")
        if margin is not None and gain is not None and gain.interval.n > 1:
            out.append((margin.auc.mean, r["method"], gain.interval))
    return out


def plot_dose(family: list[str], ok: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Effect vs dial with 95% intervals (left), the premises along the same dial (right)."""
    from .figures import finish, new_figure, offset_xs, style_of

    dial, table = dose_table(family, ok)
    if not table:
        return False
    fig, grid = new_figure(2)
    axes = grid[0]
    first, second, _ = CLAIMS[shape_of([r for r in ok if r["grid"] in family])]
    panels = ((axes[0], ["ΔAUC"], f"claim: {second} − {first}, ΔAUC"),
              (axes[1], ["teacher margin ΔAUC", "FM NE above oracle", "FM calibration spread"], "premises"))
    for ax, measures, label in panels:
        lines = [(m, s) for m in measures for s in sorted({r["series"] for r in table}, key=str)
                 if any(r["series"] == s and r.get(m) for r in table)]
        for k, (m, s) in enumerate(lines):
            pts = [(r["dial"], r[m]) for r in table if r["series"] == s and r.get(m)]
            xs = offset_xs([p[0] for p in pts], k, len(lines))
            ys = [p[1].mean for p in pts]
            err = [[p[1].mean - (p[1].lo if p[1].lo is not None else p[1].mean) for p in pts],
                   [(p[1].hi if p[1].hi is not None else p[1].mean) - p[1].mean for p in pts]]
            name = m if s == "all" else f"{m}, staleness {s}"
            st = style_of(name, [f"{a}, staleness {b}" if b != "all" else a for a, b in lines])
            ax.errorbar(xs, ys, yerr=err, capsize=3, label=name, color=st["color"], marker=st["marker"],
                        ls=st["ls"], lw=st["lw"])
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel(f"world dial `{dial}`")
        ax.set_xticks(sorted({r["dial"] for r in table}))
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    finish(fig, title, [r for r in ok if r["grid"] in family], path)
    return True


def plot_margin_gain(points: list[tuple[float, str, Interval]], rows: list[dict[str, Any]], path: Path) -> bool:
    """Each pairing's ``kd`` / ``ah`` gain over ``none`` against its measured teacher margin."""
    from .figures import finish, new_figure, style_of

    if not points:
        return False
    fig, grid = new_figure(1, width=5.6)
    ax = grid[0][0]
    for method in ("kd", "ah"):
        pts = sorted(p for p in points if p[1] == method)
        if not pts:
            continue
        st = style_of(method)
        ax.errorbar([p[0] for p in pts], [p[2].mean for p in pts],
                    yerr=[[p[2].mean - (p[2].lo or p[2].mean) for p in pts],
                          [(p[2].hi or p[2].mean) - p[2].mean for p in pts]],
                    ls="none", marker=st["marker"], color=st["color"], capsize=3, label=f"{method} − none")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axvline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("teacher margin (FM − none AUC, mean over seeds)")
    ax.set_ylabel("ΔAUC over none (95% interval)")
    ax.legend(fontsize=8)
    finish(fig, "Distillation gain along the teacher margin (every pairing)", rows, path)
    return True
