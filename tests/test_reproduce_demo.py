"""The reproduction's pooled normaliser: one reference for every seed, rescored from stored cells."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

from stl_bench.evaluate.metrics import STANDARD_CORRUPTIONS

# benchmarks/ is scripts, not a package: load this one by path, without touching sys.path.
_spec = importlib.util.spec_from_file_location(
    "reproduce_demo", Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_demo.py")
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)
NORMALISER, pooled_normaliser, rescore = repro.NORMALISER, repro.pooled_normaliser, repro.rescore


def _write(root: Path, seed: int, model: str, clean: float, corrupted: float) -> None:
    rows = [{"suite": "in1k", "corruption": "", "severity": "", "n": 100, "correct": 0, "error": clean}]
    rows += [{"suite": "in-c", "corruption": c, "severity": s, "n": 100, "correct": 0, "error": corrupted}
             for c in STANDARD_CORRUPTIONS for s in range(1, 6)]
    folder = root / f"seed{seed}" / "eval" / model
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "results_long.csv", index=False)


def test_models_are_rescored_against_the_normaliser_averaged_over_seeds(tmp_path):
    # The normaliser's errors differ by seed (0.2 and 0.4): pooled, they are 0.3.
    for seed, ref_err, model_err in ((1, 0.2, 0.15), (2, 0.4, 0.15)):
        _write(tmp_path, seed, NORMALISER, 0.1, ref_err)
        _write(tmp_path, seed, "student", 0.05, model_err)
    reference = pooled_normaliser(tmp_path, [1, 2])
    assert reference.clean_error == pytest.approx(0.1)
    assert reference.errors["fog"][3] == pytest.approx(0.3)
    runs = pd.DataFrame({"seed": [1, 2, 1, 2], "model": ["student", "student", NORMALISER, NORMALISER]})
    out = rescore(runs, tmp_path, reference)
    # Own-seed normalisers would give 75 and 37.5; one pooled normaliser gives 50 for both.
    assert out["mCE pooled"].tolist()[:2] == pytest.approx([50.0, 50.0])
    # relative: (0.15 - 0.05) / (0.3 - 0.1) = 50; the normaliser itself scores 100 on average.
    assert out["relative mCE pooled"].tolist()[:2] == pytest.approx([50.0, 50.0])
    assert out["mCE pooled"].tolist()[2:] == pytest.approx([200 / 3, 400 / 3])
    assert not any(math.isnan(v) for v in out["mCE pooled"])
