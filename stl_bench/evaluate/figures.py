"""The CE-per-corruption figure: the model's bars against the reference's 100 % line.

Labelled plainly as AlexNet-normalised CE (or whichever reference was used), because the
original ImageNet-C script prints an unnormalised mean error and calls it mCE.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from stl_bench.data.corruptions.names import EXTRA_CORRUPTIONS, STANDARD_CORRUPTIONS
from stl_bench.evaluate.metrics import CorruptionReport
from stl_bench.evaluate.reference import reference_label
from stl_bench.io import write_bytes


def plot_ce(report: CorruptionReport, model: str, reference: str, path: Path | str) -> Path:
    """Write a PNG bar chart of CE per corruption (15 standard, then the 4 extra).

    `reference` is the reference's name as the leaderboard records it (`alexnet`,
    `digits`, `csv:<run>/results_long.csv`); the figure spells out what a known name is.
    """
    reference = reference_label(reference)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [c for c in (*STANDARD_CORRUPTIONS, *EXTRA_CORRUPTIONS) if c in report.ce]
    values = [report.ce[c] for c in names]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    colors = ["tab:blue" if c in STANDARD_CORRUPTIONS else "tab:gray" for c in names]
    ax.bar(range(len(names)), [0.0 if math.isnan(v) else v for v in values], color=colors, label=model)
    for i, v in enumerate(values):
        ax.text(i, (0.0 if math.isnan(v) else v) + 1, "n/a" if math.isnan(v) else f"{v:.0f}",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(100.0, color="tab:red", linestyle="--", linewidth=1, label=f"{reference} (= 100 by definition)")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylabel(f"CE (% of {reference} error, lower is better)")
    mce = "n/a (incomplete)" if math.isnan(report.mce) else f"{report.mce:.1f}"
    ax.set_title(f"{model}: corruption error normalised by {reference}; mCE over 15 = {mce} "
                 "(grey: held-out extras, not in mCE)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(Path(path), buf.getvalue())
    return Path(path)
