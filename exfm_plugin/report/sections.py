"""Markdown of the seed-paired comparisons of one grid: gains over ``none`` in summary, the paper's
ordering per (teacher, student), AH vs KD, and the adapter's own effect against its control."""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..contracts import ADAPTER_CONTROL, PAPER_METHODS
from .aggregate import shared_grids
from .compare import ADJACENT, PAIR_KEY, SCALES, Comparison, SeedIndex, adapter_effect, ah_vs_kd, method_pair, ordering
from .markdown import cell_interval, md_table
from .premises import FM_KEY, LICENSED, Premises, headroom_share
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


def _licensed_tally(verdicts: list[tuple[str, str]]) -> str:
    """The tally over pairings whose premises hold, then over all (``(verdict, status)`` pairs)."""
    licensed = [v for v, status in verdicts if status == LICENSED]
    return (f"where the premises hold (competent `none`, resolved teacher margin): {_tally(licensed)}; "
            f"over every pairing: {_tally([v for v, _ in verdicts])}")


def premises_section(premises: Premises, cells: list[dict[str, Any]]) -> list[str]:
    """Per pairing: is the student competent, is the teacher stronger (FM − ``none``, seed-paired),
    and how much of the ceiling each takes; the status decides whether a claim may rest on it."""
    fm_auc = {tuple(c[k] for k in FM_KEY): c["AUC_mean"] for c in cells if c["kind"] == "fm"}
    rows, statuses = [], []
    for c in cells:
        if c["kind"] != "vm" or c["method"] != "none":
            continue
        margin = premises.margin(c)
        status = premises.status(c)
        statuses.append(status)
        fm = fm_auc.get(tuple(c[k] for k in FM_KEY))
        oracle = c.get("oracle_AUC_mean")
        shares = [headroom_share(c["AUC_mean"], oracle), headroom_share(fm, oracle)]
        rows.append([pairing_label(c), f"{c['seeds_beating_constant']}/{c['AUC_n']}",
                     margin.describe() if margin else "no FM record",
                     format_interval(margin.ne) if margin and margin.ne else "—",
                     "—" if oracle is None else f"{oracle:.4f}",
                     " / ".join("—" if x is None else f"{x:.2f}" for x in shares), status])
    if not rows:
        return []
    counts = Counter(statuses)
    return (["### Premises (what a claim about a method needs)", "",
             f"Per pairing: `none` beats the constant (seeds); teacher margin = FM − `none` on the same test rows, "
             f"seed-paired, mean [95% t-interval] (ΔAUC; ΔNE < 0 favours the FM); the oracle (the world's "
             f"true probability) and the share of its headroom (AUC − 0.5) / (AUC_oracle − 0.5) taken by `none` / "
             f"FM. Status: {', '.join(f'{k} {v}' for k, v in counts.items())} of {len(statuses)}.", ""]
            + md_table(["pairing", "`none` beats const", "teacher margin ΔAUC", "teacher margin ΔNE", "oracle AUC",
                        "headroom share none / FM", "status"], rows) + [""])


def gain_summary(vm_cells: list[dict[str, Any]], premises: Premises) -> list[str]:
    """Per method: in how many pairings (scales 1/1/1) its AUC gain over ``none`` holds / is reversed /
    is not resolved, first where the premises hold."""
    lines = []
    for method in PAPER_METHODS[1:] + (ADAPTER_CONTROL,):
        vs = [(verdict(iv), premises.status(c)) for c in vm_cells if c["method"] == method
              and c["label_scale"] == 1.0 and c["grad_scale"] == 1.0 and c["loss_weight"] == 1.0
              and (iv := cell_interval(c, "auc_gain_pct")) is not None]
        if vs:
            lines.append(f"- `{method}` AUC gain over `none`, {_licensed_tally(vs)}.")
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


def _pair_table(title: str, judged: list[tuple[dict, list[Comparison | None]]], note: str,
                premises: Premises) -> list[str]:
    if not judged:
        return []
    headers = ["pairing", "n", "ΔAUC [95% CI]", "ΔLogLoss [95% CI]", "ΔNE [95% CI]", "verdict (AUC)",
               "per-seed ΔAUC", "premises"]
    rows, verdicts = [], []
    for row, (auc, ll, ne) in judged:
        per_seed = ", ".join(f"s{s}: {d:+.4f}" for s, d in auc.diffs.items()) if auc else "—"
        status = premises.status(row)
        rows.append([pairing_label(row), auc.interval.n if auc else 0,
                     format_interval(auc.interval) if auc else "no common seed",
                     format_interval(ll.interval) if ll else "—", format_interval(ne.interval) if ne else "—",
                     auc.verdict if auc else "—", per_seed, status])
        if auc:
            verdicts.append((auc.verdict, status))
    return [title, "", note + f" AUC {_licensed_tally(verdicts)}.", ""] + md_table(headers, rows) + [""]


def ah_vs_kd_section(index: SeedIndex, ok_vm: list[dict[str, Any]], premises: Premises) -> list[str]:
    """``ah`` − ``kd`` per seed: does a separate distillation head beat one-head KD?"""
    return _pair_table("### AH vs KD (`ah` − `kd`)", ah_vs_kd(index, ok_vm),
                       "Seed-paired `ah` − `kd` at LS/GS/LW = 1; positive ΔAUC and negative ΔLogLoss/ΔNE "
                       "favour AH.", premises)


def adapter_section(index: SeedIndex, ok_vm: list[dict[str, Any]], premises: Premises) -> list[str]:
    """``ah_sa`` − ``ah_sa_frozen`` per seed: the Student Adapter's own effect (docs/method.md, The methods)."""
    return _pair_table(
        f"### The adapter's own effect (`ah_sa` − `{ADAPTER_CONTROL}`)", adapter_effect(index, ok_vm),
        f"`{ADAPTER_CONTROL}` is `ah_sa` with the Student Adapter frozen at its identity start (same heads, same "
        "losses); their seed-paired difference is the only evidence about SA itself. Positive ΔAUC favours SA.",
        premises)


CLAIM_PAIRS = (("kd", "ah"), (ADAPTER_CONTROL, "ah_sa"), ("none", "kd"), ("none", "ah"), ("none", "ah_sa"))


def distinct_tally_section(index: SeedIndex, ok_vm: list[dict[str, Any]], cells: list[dict[str, Any]],
                           premises: Premises) -> list[str]:
    """Over every grid: each comparison's verdicts counted once per distinct pair of trained VMs (a
    pairing that two grids share, such as Table 2 and Figure 9's round 0, counts once), first where
    the premises hold; and the grids that share a row."""
    arts = {(tuple(c[k] for k in PAIR_KEY), c["method"], tuple(c[k] for k in SCALES)): c.get("artifacts")
            for c in cells if c["kind"] == "vm"}
    lines = []
    for first, second in CLAIM_PAIRS:
        seen: dict[Any, tuple[str, str]] = {}
        for row, comps in method_pair(index, ok_vm, first, second):
            auc = comps[0]
            if auc is None:
                continue
            key = tuple(row[k] for k in PAIR_KEY)
            pair = (arts.get((key, first, (1.0, 1.0, 1.0))) or key, arts.get((key, second, (1.0, 1.0, 1.0))) or key)
            seen.setdefault(pair, (auc.verdict, premises.status(row)))
        if seen:
            lines.append(f"- `{second}` − `{first}` (ΔAUC), {len(seen)} distinct pairing(s), "
                         f"{_licensed_tally(list(seen.values()))}.")
    shared = shared_grids(cells)
    if shared:
        grids = sorted({", ".join(v) for v in shared.values()})
        lines.append(f"- Rows trained once and reported by several grids: {len(shared)} cell(s), shared by "
                     + "; ".join(grids) + ".")
    return ["## Verdicts over distinct trained VMs (all grids)", ""] + lines + [""] if lines else []
