"""From stored cells to the numbers people read: metric columns, long table, summary.

Column names are stable (they are the leaderboard's): `in1k_top1`, `in1k_top5`,
`in1k_ece`, `in_a`, `in_a_ece`, `in_r`, `in_r_ece`, `inc_acc` (mean top-1 over the 15
standard corruptions x 5 severities), `inc_acc_all` (over every evaluated cell),
`inc_mce`, `inc_rel_mce`, `inc_extra_mce` (the 4 held-out corruptions), `inc_ece`,
`ce_<corruption>`, and `<name>_top1/_top5/_ece` for plain folder suites. All percent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stl_bench.evaluate.metrics import CellCounts, CorruptionReport, corruption_report
from stl_bench.evaluate.reference import CEReference
from stl_bench.evaluate.results import StoredCell
from stl_bench.evaluate.suites import CellKey, SuitePlan

if TYPE_CHECKING:
    import pandas as pd

CLEAN_SUITE = "in1k"
LONG_COLUMNS = ["suite", "corruption", "severity", "n", "correct", "error", "correct5", "bad", "ece"]


def column_prefix(suite: str) -> str:
    return suite.replace("-", "_")


@dataclass
class Summary:
    """Metric columns for one leaderboard row, plus the notes a reader must see."""

    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    corruption: CorruptionReport | None = None
    bad_images: int = 0


def summarize(plans: list[SuitePlan], cells: dict[CellKey, StoredCell], reference: CEReference) -> Summary:
    out = Summary()
    clean = cells.get(CellKey(CLEAN_SUITE))
    clean_error = clean.counts.error if clean is not None else None
    for plan in plans:
        name, kind = plan.spec.name, plan.spec.kind
        keys = [v.key for p in plan.passes for v in p.views]
        if kind == "in-c":
            got = {(k.corruption, k.severity): cells[k].counts for k in keys if k in cells}
            if not got:
                out.notes.append(f"{name}: no cells computed yet")
                continue
            report = corruption_report({k: c.error for k, c in got.items()}, reference, clean_error)
            for m in plan.missing:
                if m not in report.missing:
                    report.missing.append(m)
            out.corruption = report
            pre = column_prefix(name).replace("in_c", "inc")
            out.metrics.update({
                f"{pre}_acc": report.acc_standard, f"{pre}_acc_all": report.acc_all,
                f"{pre}_mce": report.mce, f"{pre}_rel_mce": report.rel_mce, f"{pre}_extra_mce": report.extra_mce,
                f"{pre}_ece": _pooled(list(got.values())).ece,
            })
            out.metrics.update({f"ce_{c}": v for c, v in report.ce.items() if not math.isnan(v)})
            out.notes.extend(f"{name}: {n}" for n in report.notes)
            if plan.missing:
                out.notes.append(f"{name}: no files for " + "; ".join(plan.missing))
            out.bad_images += sum(c.bad for c in got.values())
            continue
        cell = cells.get(keys[0])
        if cell is None:
            out.notes.append(f"{name}: not computed yet")
            continue
        c = cell.counts
        pre = column_prefix(name)
        if kind in ("in-a", "in-r"):
            out.metrics.update({pre: c.top1, f"{pre}_ece": c.ece})
        else:
            out.metrics.update({f"{pre}_top1": c.top1, f"{pre}_top5": c.top5, f"{pre}_ece": c.ece})
        if c.bad:
            out.notes.append(f"{name}: {c.bad} unreadable image(s) skipped (not scored)")
        out.bad_images += c.bad
    return out


def _pooled(counts: list[CellCounts]) -> CellCounts:
    """Sum of cells (for an ECE over all corrupted images)."""
    total = CellCounts()
    for c in counts:
        total.n += c.n
        total.correct1 += c.correct1
        total.correct5 += c.correct5
        total.bin_count = [a + b for a, b in zip(total.bin_count, c.bin_count)]
        total.bin_correct = [a + b for a, b in zip(total.bin_correct, c.bin_correct)]
        total.bin_conf = [a + b for a, b in zip(total.bin_conf, c.bin_conf)]
    return total


def long_table(cells: dict[CellKey, StoredCell]) -> "pd.DataFrame":
    """One row per cell: suite, corruption, severity, n, correct, error (fraction), ..."""
    import pandas as pd

    rows = []
    for key in sorted(cells):
        c = cells[key].counts
        rows.append({"suite": key.suite, "corruption": key.corruption, "severity": key.severity,
                     "n": c.n, "correct": c.correct1, "error": c.error, "correct5": c.correct5,
                     "bad": c.bad, "ece": c.ece})
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def format_summary(model: str, summary: Summary, images_per_s: float | None = None) -> str:
    """The table `stl-bench eval` prints at the end."""
    lines = [f"results for {model}"]
    width = max((len(k) for k in summary.metrics), default=10)
    for k, v in summary.metrics.items():
        if k.startswith("ce_"):
            continue
        lines.append(f"  {k:<{width}}  {'n/a' if v is None or math.isnan(v) else f'{v:8.2f}'}")
    rep = summary.corruption
    if rep is not None:
        lines.append("  CE per corruption (% of the reference's error; lower is better):")
        for c, v in rep.ce.items():
            if math.isnan(v) and c not in rep.acc:
                continue
            rel = rep.rel_ce.get(c, math.nan)
            lines.append(f"    {c:<18} CE {_fmt(v)}  relative CE {_fmt(rel)}  acc {_fmt(rep.acc.get(c, math.nan))}")
    if images_per_s is not None and not math.isnan(images_per_s):
        lines.append(f"  throughput this run: {images_per_s:.1f} images/s")
    lines.extend(f"  note: {n}" for n in summary.notes)
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "   n/a" if math.isnan(v) else f"{v:6.1f}"
