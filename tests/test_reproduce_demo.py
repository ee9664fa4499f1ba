"""The reproduction's statistics: paired student-minus-baseline differences with 95 % intervals."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# benchmarks/ is scripts, not a package: load this one by path, without touching sys.path.
_spec = importlib.util.spec_from_file_location(
    "reproduce_demo", Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_demo.py")
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)


def test_the_t_quantiles_are_students():
    stats = pytest.importorskip("scipy.stats")
    for df, q in enumerate(repro.T95, start=1):
        assert q == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_paired_t_interval_by_hand():
    treated, control = [97.0, 96.5, 98.0, 97.5, 96.0], [96.0, 96.0, 96.5, 96.0, 95.5]
    out = repro.paired_difference(treated, control)
    diff = np.array(treated) - np.array(control)   # 1.0, 0.5, 1.5, 1.5, 0.5
    half = 2.776 * diff.std(ddof=1) / math.sqrt(5)
    assert out["n"] == 5 and out["mean"] == pytest.approx(1.0) and out["sd"] == pytest.approx(diff.std(ddof=1))
    assert (out["t_low"], out["t_high"]) == pytest.approx((1.0 - half, 1.0 + half))
    # the bootstrap is a resampling of these five differences: inside their range, fixed by its seed
    assert 0.5 <= out["boot_low"] < 1.0 < out["boot_high"] <= 1.5
    assert repro.paired_difference(treated, control) == out


def _runs(differences: dict[str, list[float]]) -> pd.DataFrame:
    """Per-seed rows of a baseline and a student, the student off by the given per-seed differences.

    The seeds move both models together a lot (clean top-1 by up to 2 points, mCE by up
    to 20): unpaired, that spread would swamp the differences; paired, it cancels.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i in range(len(next(iter(differences.values())))):
        base = {"clean top-1": 95.0 + rng.uniform(-2, 2), "mCE": 60.0 + rng.uniform(-20, 20)}
        rows.append({"seed": i + 1, "name": "baseline", **base})
        rows.append({"seed": i + 1, "name": "student", **{m: base[m] + differences[m][i] for m in base}})
    return pd.DataFrame(rows)


def test_a_real_difference_lies_inside_its_interval_and_zero_outside():
    # The student is about 1.2 points better in clean top-1 and 12 mCE points better on every seed.
    wobble = [0.3, -0.2, 0.1, -0.3, 0.2, 0.0, -0.1, 0.0]   # mean 0
    runs = _runs({"clean top-1": [1.2 + w for w in wobble], "mCE": [-12.0 + 4 * w for w in wobble]})
    table = repro.differences(runs).set_index("metric")
    for metric, true in (("clean top-1: student - baseline", 1.2), ("mCE: student - baseline", -12.0)):
        row = table.loc[metric]
        assert row["n"] == 8
        assert row["t_low"] < true < row["t_high"] and row["boot_low"] < true < row["boot_high"]
        assert not row["t_low"] < 0 < row["t_high"]   # a real difference: zero is outside
        assert not row["boot_low"] < 0 < row["boot_high"]


def test_no_difference_keeps_zero_inside_and_a_wrong_value_outside():
    wobble = [0.6, -0.4, 0.3, -0.5, 0.2, -0.2]   # mean 0
    runs = _runs({"clean top-1": wobble, "mCE": [4 * w for w in wobble]})
    table = repro.differences(runs).set_index("metric")
    row = table.loc["mCE: student - baseline"]
    assert row["t_low"] < 0 < row["t_high"]
    assert not row["t_low"] < 5.0 < row["t_high"]   # a claimed 5-point gain is outside


def test_pairs_are_matched_by_seed_and_incomplete_pairs_dropped():
    runs = pd.DataFrame([
        {"seed": 1, "name": "baseline", "clean top-1": 90.0, "mCE": 60.0},
        {"seed": 2, "name": "baseline", "clean top-1": 92.0, "mCE": float("nan")},
        {"seed": 3, "name": "baseline", "clean top-1": 94.0, "mCE": 50.0},
        {"seed": 3, "name": "student", "clean top-1": 95.0, "mCE": 45.0},
        {"seed": 1, "name": "student", "clean top-1": 91.0, "mCE": 50.0},
        {"seed": 2, "name": "student", "clean top-1": 93.0, "mCE": 40.0},
        {"seed": 4, "name": "student", "clean top-1": 99.0, "mCE": 10.0},   # no baseline for seed 4
    ])
    table = repro.differences(runs).set_index("metric")
    top1, mce = table.loc["clean top-1: student - baseline"], table.loc["mCE: student - baseline"]
    assert top1["n"] == 3 and top1["mean"] == pytest.approx(1.0) and top1["sd"] == pytest.approx(0.0)
    assert mce["n"] == 2 and mce["mean"] == pytest.approx(-7.5)   # seed 2's NaN pair is left out
    with pytest.raises(ValueError, match="at least 2 pairs"):
        repro.paired_difference([1.0], [0.0])


def test_the_mean_and_spread_table_per_model():
    runs = pd.DataFrame([{"seed": s, "name": n, "clean top-1": v, "IN-C acc": 80.0, "mCE": 50.0 + s,
                          "relative mCE": 90.0} for s, (n, v) in enumerate([("baseline", 95.0), ("student", 97.0),
                                                                             ("baseline", 96.0), ("student", 97.0)])])
    table = repro.aggregate(runs).set_index("model")
    assert table.loc["baseline", "seeds"] == 2 and table.loc["baseline", "clean top-1 (%)"] == "95.50 ± 0.71"
    assert table.loc["student", "clean top-1 (%)"] == "97.00 ± 0.00"


def test_the_report_tables_are_markdown_without_tabulate():
    table = pd.DataFrame([{"model": "baseline", "seeds": 5, "mCE": 54.156}, {"model": "student", "seeds": 5, "mCE": 47.8}])
    assert repro._markdown(table).splitlines() == [
        "| model | seeds | mCE |", "|---|---|---|", "| baseline | 5 | 54.16 |", "| student | 5 | 47.80 |"]


def test_in_c_accuracy_is_compared_when_the_rows_have_it():
    runs = _runs({"clean top-1": [0.5, 0.4, 0.6], "mCE": [-5.0, -6.0, -4.0]})
    runs["IN-C acc"] = [88.0, 89.0, 87.5, 88.5, 90.0, 91.0]   # baseline, student per seed: +1.0 each
    table = repro.differences(runs).set_index("metric")
    assert list(table.index) == ["clean top-1: student - baseline", "IN-C acc: student - baseline",
                                 "mCE: student - baseline"]
    assert table.loc["IN-C acc: student - baseline", "mean"] == pytest.approx(1.0)
