"""The CE normalisers by name: the shipped digits table, unknown names, tables with holes."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from stl_bench.cli import main
from stl_bench.data.corruptions.names import ALL_CORRUPTIONS, SEVERITIES, STANDARD_CORRUPTIONS
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.harness import EvalSetup, evaluate
from stl_bench.evaluate.loop import LoopConfig
from stl_bench.evaluate.reference import (
    DIGITS_TABLE,
    KNOWN_NAMES,
    load_reference_csv,
    reference_label,
    resolve_reference,
)
from stl_bench.evaluate.report import summarize
from stl_bench.evaluate.results import ResultStore
from stl_bench.evaluate.suites import SuiteOptions, SuiteSpec
from eval_kit import logits_table, make_runner, write_coded

SETUP = EvalSetup(model="lookup", checkpoint="test", head="cls", weights="test", preprocessing="test")


def test_the_shipped_digits_table_covers_every_cell_and_says_how_it_was_made():
    reference = resolve_reference("digits")
    assert reference.name == "digits" and resolve_reference("Digits").name == "digits"
    assert sorted(reference.errors) == sorted(ALL_CORRUPTIONS)
    for corruption in ALL_CORRUPTIONS:
        assert sorted(reference.severities(corruption)) == list(SEVERITIES), corruption
        assert all(0.0 <= e <= 1.0 for e in reference.severities(corruption).values())
    assert 0.0 < reference.clean_error < 0.5
    # the corruptions hurt on average (a table of clean errors would be a wrong file)
    mean_inc = sum(sum(v.values()) for v in reference.errors.values()) / (19 * 5)
    assert mean_inc > reference.clean_error
    meta = json.loads(DIGITS_TABLE.with_suffix(".json").read_text())
    assert meta["model"] == "alexnet_mini_32" and len(set(meta["seeds"])) >= 5
    assert sorted(meta["clean_top1_per_seed"]) == sorted(map(str, meta["seeds"]))
    assert {"torch", "timm"} <= set(meta["versions"]) and meta["cpu"] and meta["date"]
    table = pd.read_csv(DIGITS_TABLE, keep_default_na=False)
    assert (table["seeds"] == len(meta["seeds"])).all()
    # the clean error is the seeds' mean clean error
    clean = [100 - v for v in meta["clean_top1_per_seed"].values()]
    assert reference.clean_error == pytest.approx(sum(clean) / len(clean) / 100, abs=1e-5)
    # 360 validation images per cell: the whole split, not the demo's subset
    assert meta["images_per_cell"] == 360 and (table.loc[table["suite"] == "in-c", "n"] == 360).all()


def _coded_inc_tree(root) -> tuple[object, dict]:
    """An IN-C tree over the 15 standard corruptions: 2 classes x 2 images per cell.

    Image (corruption ci, severity s, class d, i) is right unless (ci + s + d + i) % 3 == 0,
    so the per-cell errors vary (0, 0.25, 0.5) and are known.
    """
    spec, errors = {}, {}
    code = 100
    for ci, corruption in enumerate(STANDARD_CORRUPTIONS):
        for s in SEVERITIES:
            wrong = 0
            for d in range(2):
                for i in range(2):
                    write_coded(root / corruption / str(s) / str(d) / f"{i}.png", code)
                    right = (ci + s + d + i) % 3 != 0
                    spec[code] = {d if right else 1 - d: 2.0}
                    wrong += not right
                    code += 1
            errors[(corruption, s)] = wrong / 4
    return logits_table(10, spec), errors


def test_mce_against_the_digits_table_by_hand_equals_the_harness(tmp_path):
    table, errors = _coded_inc_tree(tmp_path / "inc")
    out = evaluate(make_runner(table), [SuiteSpec("in-c", "in-c", tmp_path / "inc")],
                   SuiteOptions(inc_corruptions=STANDARD_CORRUPTIONS), ResultStore(tmp_path / "run"), SETUP,
                   loop=LoopConfig(batch_size=8, workers=0, progress=False))
    report = summarize(out.plans, out.cells, resolve_reference("digits")).corruption
    # by hand, from the CSV file itself: CE_c = 100 * sum_s E_model / sum_s E_ref; mCE = mean over the 15
    ref = pd.read_csv(DIGITS_TABLE, keep_default_na=False)
    ref = ref[ref["suite"] == "in-c"].astype({"severity": int}).set_index(["corruption", "severity"])["error"]
    ce = {c: 100 * sum(errors[(c, s)] for s in SEVERITIES) / sum(ref[(c, s)] for s in SEVERITIES)
          for c in STANDARD_CORRUPTIONS}
    for c in STANDARD_CORRUPTIONS:
        assert report.ce[c] == pytest.approx(ce[c], rel=1e-9), c
    assert not math.isnan(report.mce)
    assert report.mce == pytest.approx(sum(ce.values()) / 15, rel=1e-9)


def test_an_unknown_name_lists_the_known_ones_and_the_closest(tmp_path, capsys):
    with pytest.raises(StlBenchError) as err:
        resolve_reference("digts")
    message = str(err.value)
    assert "\n" not in message and "'digts'" in message and "did you mean digits?" in message
    assert all(name in message for name in KNOWN_NAMES) and "results_long.csv" in message
    with pytest.raises(StlBenchError, match=r"unknown normaliser 'cifar10'; known names: alexnet, digits"):
        resolve_reference("cifar10")
    # the CLI: one line on stderr, exit 1, before any model is loaded
    (tmp_path / "val" / "0").mkdir(parents=True)
    assert main(["eval", "--model", "no_such_model", "--in1k", str(tmp_path / "val"), "--normalizer", "alexnt",
                 "--out", str(tmp_path / "run"), "--leaderboard", str(tmp_path / "lb.csv")]) == 1
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "unknown normaliser 'alexnt' (did you mean alexnet?)" in err_text


def _partial_csv(path, corruptions, severities):
    rows = [{"suite": "in1k", "corruption": "", "severity": "", "n": 10, "correct": 9, "error": 0.1}]
    rows += [{"suite": "in-c", "corruption": c, "severity": s, "n": 10, "correct": 5, "error": 0.5}
             for c in corruptions for s in severities]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_table_missing_a_corruption_the_run_scores_is_named(tmp_path):
    path = _partial_csv(tmp_path / "ref_run" / "results_long.csv", ["gaussian_noise", "fog"], [1, 2, 3, 4])
    reference = resolve_reference(str(path), corruptions=("gaussian_noise",), severities=(1, 4))
    assert reference.name == "csv:ref_run/results_long.csv"
    with pytest.raises(StlBenchError) as err:
        resolve_reference(str(path), corruptions=("gaussian_noise", "contrast", "fog"), severities=(1, 2))
    assert "\n" not in str(err.value)
    assert "normaliser csv:ref_run/results_long.csv lacks contrast, which this run scores" in str(err.value)
    with pytest.raises(StlBenchError, match="lacks gaussian_noise severities 5, which this run scores"):
        resolve_reference(str(path), corruptions=("gaussian_noise",))
    # no run needs given: the table loads as before, the hole shows later as a missing CE
    assert sorted(resolve_reference(str(path)).errors) == ["fog", "gaussian_noise"]


def test_figures_and_summaries_name_a_reference_by_what_it_is(tmp_path):
    assert "alexnet_mini_32" in reference_label("digits") and "AlexNet" in reference_label("alexnet")
    path = _partial_csv(tmp_path / "r" / "results_long.csv", ["fog"], [1])
    name = load_reference_csv(path).name
    assert reference_label(name) == name == "csv:r/results_long.csv"


def _generator():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_digits_normalizer", Path(__file__).resolve().parents[1] / "benchmarks" / "make_digits_normalizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed_long(clean: float, inc: float, skip: tuple | None = None) -> pd.DataFrame:
    rows = [{"suite": "in1k", "corruption": "none", "severity": 0, "n": 360, "correct": 0, "error": clean}]
    rows += [{"suite": "in-c", "corruption": c, "severity": s, "n": 360, "correct": 0, "error": inc + s / 100}
             for c in ALL_CORRUPTIONS for s in SEVERITIES if (c, s) != skip]
    return pd.DataFrame(rows)


def test_the_generator_averages_the_seeds_cell_by_cell_and_the_result_loads(tmp_path):
    generator = _generator()
    table = generator.average({1: _seed_long(0.1, 0.2), 2: _seed_long(0.2, 0.4), 3: _seed_long(0.3, 0.3)})
    assert len(table) == 1 + 19 * 5 and (table["seeds"] == 3).all()
    assert table.iloc[0]["suite"] == "in1k" and list(table.iloc[1:6]["severity"]) == [1, 2, 3, 4, 5]
    path = tmp_path / "t.csv"
    path.write_text(table.to_csv(index=False, float_format="%.6f"))
    reference = load_reference_csv(path, name="digits")
    assert reference.clean_error == pytest.approx(0.2)
    assert reference.errors["fog"][3] == pytest.approx(0.33) and reference.errors["saturate"][5] == pytest.approx(0.35)
    with pytest.raises(StlBenchError, match=r"seed 2 lacks 1 cells \(first \('fog', 4\)\); re-run to finish it"):
        generator.average({1: _seed_long(0.1, 0.2), 2: _seed_long(0.2, 0.4, skip=("fog", 4))})
