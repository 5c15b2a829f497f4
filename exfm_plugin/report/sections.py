"""Markdown of the seed-paired comparisons of one grid: gains over ``none`` in summary, the paper's
ordering per (teacher, student), AH vs KD, and the adapter's own effect against its control."""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..contracts import ADAPTER_CONTROL, PAPER_METHODS
from .compare import ADJACENT, Comparison, SeedIndex, adapter_effect, ah_vs_kd, ordering
from .markdown import cell_interval, md_table
from .stats import HOLDS, NOT_RESOLVED, REVERSED, format_interval, verdict


def pairing_label(row: dict[str, Any]) -> str:
    """``DMIN → FM (taobaoad, round 0, schedule day, domain 1)``."""
    text = f"{row['teacher']} → {row['student']} ({row['dataset']}, round {row['round']}"
    text += f", schedule {row['vm_schedule']}"
    for k, name in (("domain", "domain"), ("task", "task"), ("fm_frozen_after_day", "FM frozen after day")):
        if row[k] is not None:
            text += f", {name} {row[k]}"
    if row.get("feature_gap"):
        text += f", feature gap {row['feature_gap']}"
    if row.get("embedding_update") not in (None, "dense"):
        text += f", {row['embedding_update']} embeddings"
    return text + ")"


def _tally(verdicts: list[str]) -> str:
    c = Counter("not resolved" if v.startswith(NOT_RESOLVED) else v for v in verdicts)
    return f"holds {c[HOLDS]}, reversed {c[REVERSED]}, not resolved {c[NOT_RESOLVED]} of {len(verdicts)}"


def gain_summary(vm_cells: list[dict[str, Any]]) -> list[str]:
    """Per method: in how many pairings (scales 1/1/1) its AUC gain over ``none`` holds / is reversed /
    is not resolved."""
    lines = []
    for method in PAPER_METHODS[1:] + (ADAPTER_CONTROL,):
        vs = [verdict(iv) for c in vm_cells if c["method"] == method and c["label_scale"] == 1.0
              and c["grad_scale"] == 1.0 and c["loss_weight"] == 1.0
              and (iv := cell_interval(c, "auc_gain_pct")) is not None]
        if vs:
            lines.append(f"- `{method}` AUC gain over `none`: {_tally(vs)} pairing(s).")
    return ["AUC gain over `none` (95% interval excludes 0 = resolved):", ""] + lines + [""] if lines else []


def ordering_section(index: SeedIndex, ok_vm: list[dict[str, Any]]) -> list[str]:
    """For each adjacent pair of none < kd < ah < ah_sa: holds / reversed / not resolved."""
    judged = ordering(index, ok_vm)
    if not judged:
        return []
    headers = ["pairing"] + [f"{lo} < {hi}: ΔAUC" for lo, hi in ADJACENT] + ["verdicts"]
    rows, all_hold = [], 0
    for row, comps in judged:
        cells = [format_interval(c.interval) if c else "no common seed" for c in comps]
        vs = [c.verdict if c else "no common seed" for c in comps]
        all_hold += all(v == HOLDS for v in vs)
        rows.append([pairing_label(row)] + cells + ["; ".join(vs)])
    return ([f"Paper's AUC ordering none < kd < ah < ah_sa (adjacent pairs, ΔAUC = second − first, mean "
             f"[95% t-interval] over seeds): every adjacent pair holds in {all_hold} of {len(judged)} pairing(s).",
             ""] + md_table(headers, rows) + [""])


def _pair_table(title: str, judged: list[tuple[dict, list[Comparison | None]]], note: str) -> list[str]:
    if not judged:
        return []
    headers = ["pairing", "n", "ΔAUC [95% CI]", "ΔLogLoss [95% CI]", "ΔNE [95% CI]", "verdict (AUC)",
               "per-seed ΔAUC"]
    rows, verdicts = [], []
    for row, (auc, ll, ne) in judged:
        per_seed = ", ".join(f"s{s}: {d:+.4f}" for s, d in auc.diffs.items()) if auc else "—"
        rows.append([pairing_label(row), auc.interval.n if auc else 0,
                     format_interval(auc.interval) if auc else "no common seed",
                     format_interval(ll.interval) if ll else "—", format_interval(ne.interval) if ne else "—",
                     auc.verdict if auc else "—", per_seed])
        if auc:
            verdicts.append(auc.verdict)
    return [title, "", note + f" AUC: {_tally(verdicts)}.", ""] + md_table(headers, rows) + [""]


def ah_vs_kd_section(index: SeedIndex, ok_vm: list[dict[str, Any]]) -> list[str]:
    """``ah`` − ``kd`` per seed: does a separate distillation head beat one-head KD?"""
    return _pair_table("### AH vs KD (`ah` − `kd`)", ah_vs_kd(index, ok_vm),
                       "Seed-paired `ah` − `kd` at LS/GS/LW = 1; positive ΔAUC and negative ΔLogLoss/ΔNE "
                       "favour AH.")


def adapter_section(index: SeedIndex, ok_vm: list[dict[str, Any]]) -> list[str]:
    """``ah_sa`` − ``ah_sa_frozen`` per seed: the Student Adapter's own effect (SPEC.md, Controls)."""
    return _pair_table(
        f"### The adapter's own effect (`ah_sa` − `{ADAPTER_CONTROL}`)", adapter_effect(index, ok_vm),
        f"`{ADAPTER_CONTROL}` is `ah_sa` with the Student Adapter frozen at its identity start (same heads, same "
        "losses); their seed-paired difference is the only evidence about SA itself. Positive ΔAUC favours SA.")
