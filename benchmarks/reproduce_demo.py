"""Small-scale reproduction: plain tiny FAN versus the STL student on the demo digits.

Runs the whole `stl-bench demo` pipeline once per seed (training the baseline, the
labeler and the student, and evaluating each on the clean split and on the 19
corruptions x 5 severities made on the fly), then reports every seed's row, mean and
standard deviation per model, and the paired student-minus-baseline difference of
clean top-1 and mCE with a 95 % confidence interval (paired t, and a paired bootstrap
with a fixed seed). Seeds pair the two models: both train on the same seed, so the
difference of each pair removes what the seed does to both.

Every mCE divides by the fixed `digits` table shipped with the package, so the models
are the only thing that differs between seeds (a normaliser retrained per seed would
add its own noise to every mCE). Each seed's folder is reused when the script runs
again, so an interrupted reproduction continues where it stopped.

    python benchmarks/reproduce_demo.py --seeds 1 2 3 4 5 --output stl_bench_runs/repro
"""
from __future__ import annotations

import argparse
import io
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stl_bench.demo import DemoConfig, run_demo
from stl_bench.io import write_bytes, write_text

METRICS = {"clean top-1": "clean top-1 (%)", "IN-C acc": "IN-C acc (%)", "mCE": "mCE (digits normaliser)",
           "relative mCE": "relative mCE"}
COMPARED = ("clean top-1", "IN-C acc", "mCE")  # IN-C accuracy: the figure the paper and the cards report
TREATED, CONTROL = "student", "baseline"
# Two-sided 95 % quantiles of Student's t by degrees of freedom (tests check them against
# scipy, which the reproduction itself does not need); past 30, the normal's 1.96.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def paired_difference(treated: Sequence[float], control: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> dict[str, float]:
    """Mean of `treated[i] - control[i]` with 95 % intervals: paired t and paired bootstrap.

    The t interval assumes roughly normal per-seed differences; the bootstrap (percentile,
    resampling seeds with replacement, fixed `seed` so the report is reproducible) does not,
    but with few seeds it is too narrow. Both are reported; they agree when the data behave.
    """
    diff = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    n = len(diff)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs, got {n}")
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * sd / math.sqrt(n)
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"n": n, "mean": mean, "sd": sd, "t_low": mean - half, "t_high": mean + half,
            "boot_low": float(low), "boot_high": float(high)}


def differences(runs: pd.DataFrame, treated: str = TREATED, control: str = CONTROL,
                metrics: Sequence[str] = COMPARED) -> pd.DataFrame:
    """One row per metric: the paired treated-minus-control difference over the seeds both have."""
    a = runs[runs["name"] == treated].set_index("seed")
    b = runs[runs["name"] == control].set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    rows = []
    for metric in (m for m in metrics if m in runs.columns):  # rows from older runs may lack a metric
        pairs = [(float(a.at[s, metric]), float(b.at[s, metric])) for s in seeds]
        pairs = [p for p in pairs if not any(math.isnan(v) for v in p)]
        stats = paired_difference([p[0] for p in pairs], [p[1] for p in pairs])
        rows.append({"metric": f"{metric}: {treated} - {control}", **stats})
    return pd.DataFrame(rows)


def per_seed(seeds: list[int], output: Path, epochs: int | None) -> pd.DataFrame:
    frames = []
    for seed in seeds:
        cfg = DemoConfig(output=output / f"seed{seed}", seed=seed, epochs=epochs, export=False, progress=False)
        table = run_demo(cfg)
        table.insert(0, "seed", seed)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, group in runs.groupby("name", sort=False):
        row = {"model": name, "seeds": len(group)}
        for col, label in METRICS.items():
            values = group[col].astype(float)
            row[label] = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = runs[["name", *METRICS]].astype({c: float for c in METRICS})
    stats = numeric.groupby("name", sort=False).agg(["mean", "std"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, col, label in ((axes[0], "clean top-1", "clean top-1 (%)"),
                           (axes[1], "mCE", "mCE, digits normaliser (lower better)")):
        means, stds = stats[col]["mean"], stats[col]["std"].fillna(0.0)
        ax.bar(range(len(means)), means, yerr=stds, capsize=4, color=["#888", "#4a7", "#48c", "#c64"][: len(means)])
        ax.set_xticks(range(len(means)), means.index, rotation=20)
        ax.set_ylabel(label)
        lo = max(0.0, float((means - 3 * stds).min()) - 2)
        ax.set_ylim(lo, float((means + 2 * stds).max()) + 2)
    fig.suptitle(f"demo digits, {runs['seed'].nunique()} seeds (mean ± std)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub table (numbers to 2 decimals) without pandas' optional `tabulate`."""
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--output", type=Path, default=Path("stl_bench_runs/repro"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo preset's)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"),
                        help="where the tables and figure are written")
    args = parser.parse_args()
    if len(set(args.seeds)) < 2:
        parser.error("the paired intervals need at least 2 seeds (5 or more for a useful one)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    runs = per_seed(args.seeds, args.output, args.epochs)
    summary, diffs = aggregate(runs), differences(runs)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text(args.results / "demo_reproduction_runs.csv", runs.to_csv(index=False))
    report = (f"Per seed:\n\n{_markdown(runs)}\n\nMean ± standard deviation over the seeds:\n\n"
              f"{_markdown(summary)}\n\nPaired {TREATED} - {CONTROL} over {len(args.seeds)} seeds, 95 % intervals "
              f"(paired t; paired bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}):\n\n"
              f"{_markdown(diffs)}\n")
    write_text(args.results / "demo_reproduction.md", report)
    plot(runs, args.results / "demo_reproduction.png")
    print(runs.to_string(index=False))
    print()
    print(report)
    print(f"wrote {args.results}/demo_reproduction.md, .png and _runs.csv")


if __name__ == "__main__":
    main()
