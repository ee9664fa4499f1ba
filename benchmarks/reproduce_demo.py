"""Small-scale reproduction: plain tiny FAN versus the STL student on the demo digits.

Runs the whole `stl-bench demo` pipeline once per seed (training every model, the
AlexNet-style normaliser included, and evaluating on the clean split and on the 19
corruptions x 5 severities made on the fly), then reports clean top-1 and mCE as mean
and spread over the seeds, as a table (Markdown, printed and saved) and a figure.
Each seed's folder is reused when the script runs again, so an interrupted
reproduction continues where it stopped.

mCE is reported twice. Each seed's demo divides by that seed's own AlexNet-style CNN,
so the normaliser's seed-to-seed noise enters every mCE; the pooled columns rescore
every model against one normaliser, the per-cell errors of that CNN averaged over all
seeds, so that differences between seeds are the models' own.

    python benchmarks/reproduce_demo.py --seeds 1 2 3 --output stl_bench_runs/repro
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from stl_bench.demo import DemoConfig, run_demo
from stl_bench.evaluate.metrics import corruption_report
from stl_bench.evaluate.reference import CEReference

METRICS = {"clean top-1": "clean top-1 (%)", "IN-C acc": "IN-C acc (%)", "mCE": "mCE (own seed's normaliser)",
           "mCE pooled": "mCE (pooled normaliser)", "relative mCE pooled": "relative mCE (pooled)"}
NORMALISER = "alexnet_mini"


def _long(output: Path, seed: int, model: str) -> pd.DataFrame:
    cfg = DemoConfig(output=output / f"seed{seed}", seed=seed)
    return pd.read_csv(cfg.eval_dir(model) / "results_long.csv", keep_default_na=False)


def pooled_normaliser(output: Path, seeds: list[int]) -> CEReference:
    """The normaliser CNN's per-cell errors (and clean error) averaged over the seeds."""
    long = pd.concat([_long(output, s, NORMALISER) for s in seeds])
    inc = long[long["suite"] == "in-c"].groupby(["corruption", "severity"])["error"].mean()
    errors: dict[str, dict[int, float]] = {}
    for (corruption, severity), error in inc.items():
        errors.setdefault(str(corruption), {})[int(severity)] = float(error)
    clean = float(long[long["suite"] == "in1k"]["error"].mean())
    return CEReference(name=f"{NORMALISER} pooled over seeds {','.join(map(str, seeds))}", errors=errors,
                       clean_error=clean)


def rescore(runs: pd.DataFrame, output: Path, reference: CEReference) -> pd.DataFrame:
    """Add mCE and relative mCE of every (seed, model) against `reference`."""
    mce, rel = [], []
    for row in runs.itertuples(index=False):
        long = _long(output, int(row.seed), str(row.model))
        inc = long[long["suite"] == "in-c"]
        errors = {(str(r.corruption), int(r.severity)): float(r.error) for r in inc.itertuples(index=False)}
        clean = long[long["suite"] == "in1k"]["error"]
        report = corruption_report(errors, reference, float(clean.iloc[0]) if len(clean) else None)
        mce.append(report.mce)
        rel.append(report.rel_mce)
    return runs.assign(**{"mCE pooled": mce, "relative mCE pooled": rel})


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
    for model, group in runs.groupby("model", sort=False):
        row = {"model": model, "seeds": len(group)}
        for col, label in METRICS.items():
            values = group[col].astype(float)
            row[label] = f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = runs[["model", *METRICS]].astype({c: float for c in METRICS})
    stats = numeric.groupby("model", sort=False).agg(["mean", "std"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, col, label in ((axes[0], "clean top-1", "clean top-1 (%)"),
                           (axes[1], "mCE pooled", "mCE, pooled normaliser (lower better)")):
        means, stds = stats[col]["mean"], stats[col]["std"].fillna(0.0)
        ax.bar(range(len(means)), means, yerr=stds, capsize=4, color=["#888", "#4a7", "#48c", "#c64"][: len(means)])
        ax.set_xticks(range(len(means)), means.index, rotation=20)
        ax.set_ylabel(label)
        lo = max(0.0, float((means - 3 * stds).min()) - 2)
        ax.set_ylim(lo, float((means + 2 * stds).max()) + 2)
    fig.suptitle(f"demo digits, {runs['seed'].nunique()} seeds (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", type=Path, default=Path("stl_bench_runs/repro"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo preset's)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"),
                        help="where the table and figure are written")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    runs = per_seed(args.seeds, args.output, args.epochs)
    runs = rescore(runs, args.output, pooled_normaliser(args.output, args.seeds))
    summary = aggregate(runs)
    args.results.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.results / "demo_reproduction_runs.csv", index=False)
    markdown = summary.to_markdown(index=False) if _has_tabulate() else summary.to_string(index=False)
    (args.results / "demo_reproduction.md").write_text(markdown + "\n")
    plot(runs, args.results / "demo_reproduction.png")
    print(runs.to_string(index=False))
    print()
    print(markdown)
    print(f"\nwrote {args.results}/demo_reproduction.md, .png and _runs.csv")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
