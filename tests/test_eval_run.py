"""evaluate/run.py: one evaluation as a library call (what `stl-bench eval` parses flags into)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.leaderboard import KEY_COLUMNS, leaderboard_row
from stl_bench.evaluate.run import (
    EvalRequest,
    amp_dtype,
    default_run_dir,
    describe_result,
    run_evaluation,
    suite_specs,
)
from stl_bench.evaluate.results import ResultStore
from stl_bench.evaluate.suites import SuiteOptions
from eval_kit import WNIDS, logits_table, write_coded


def test_amp_table():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cpu) is None and amp_dtype("auto", cuda) is torch.bfloat16
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp16", cuda) is torch.float16
    assert amp_dtype("none", cuda) is None
    with pytest.raises(StlBenchError, match="--amp"):
        amp_dtype("fp8", cpu)


def test_suite_specs_order_and_errors():
    specs = suite_specs(in1k="v", in_c="c", folders=["in-v2=/d/v2"])
    assert [(s.name, s.kind) for s in specs] == [("in1k", "in1k"), ("in-c", "in-c"), ("in-v2", "folder")]
    for folders, message in ((["oops"], "NAME=DIR"), (["in1k=/x"], "reserved"), (["a b=/x"], "reserved"),
                             (["x=/a", "x=/b"], "suite names repeat")):
        with pytest.raises(StlBenchError, match=message):
            suite_specs(folders=folders)
    with pytest.raises(StlBenchError, match="no suite given"):
        suite_specs()


def test_default_run_dir_keeps_served_cells_apart():
    info = SimpleNamespace(name="fan/odd name", head="fused")
    assert default_run_dir(info, "0123456789abcdef", False) == Path("eval_runs/fan_odd_name-0123456789ab-fused")
    assert default_run_dir(info, "0123456789abcdef", True).name.endswith("-fused-served")


def test_run_evaluation_returns_its_outcome_and_writes_outputs(tmp_path, lookup):
    w = WNIDS[10]
    write_coded(tmp_path / "val" / w / "0.png", 1)
    write_coded(tmp_path / "val" / w / "1.png", 2)
    lookup["table"] = logits_table(1000, {1: {WNIDS.index(w): 3.0}})
    request = EvalRequest(source=None, suites=suite_specs(in1k=str(tmp_path / "val")), device="cpu", workers=0,
                          progress=False, out=tmp_path / "run", leaderboard=tmp_path / "lb.csv")
    result = run_evaluation(request)
    assert lookup["kwargs"]["amp_dtype"] is None and lookup["kwargs"]["device"] == torch.device("cpu")
    assert result.is_main and result.run_dir == tmp_path / "run" and result.figure is None
    assert len(result.outcome.computed) == 1 and result.summary.metrics["in1k_top1"] == pytest.approx(50.0)
    assert result.long_csv == tmp_path / "run" / "results_long.csv" and result.long_csv.is_file()
    row = pd.read_csv(tmp_path / "lb.csv").iloc[0]
    assert row["model"] == "lookup_model" and row["checkpoint"] == "random-init"
    text = describe_result(result)
    assert "lookup_model (cls head" in text and "1 computed now, 1 stored" in text and "updated" in text


def test_leaderboard_row_layout():
    setup = SimpleNamespace(model="m", checkpoint="c" * 16, head="fused", weights="ema", preprocessing="p")
    summary = SimpleNamespace(bad_images=2, notes=["a", "b"],
                              metrics={"in1k_top1": 81.234567, "in_a": float("nan"), "in_r": None})
    options = SuiteOptions(a_r_mode="all1000", inc_on_the_fly=True)
    row = leaderboard_row(setup, summary, params=7, input_size=(224, 224), backend="torch",
                          images_per_s=float("nan"), checkpoint_path=None, kinds={"in1k", "in-r"},
                          options=options, normalizer="alexnet")
    assert [row[k] for k in KEY_COLUMNS] == ["m", "c" * 16, "fused", "ema", "p"]
    assert row["input_size"] == "224x224" and row["images_per_s"] is None and row["checkpoint_path"] == ""
    assert row["a_r_mode"] == "all1000" and row["normalizer"] is None and row["inc_mode"] is None
    assert row["notes"] == "a; b" and row["bad_images"] == 2
    assert row["in1k_top1"] == 81.2346 and row["in_a"] is None and row["in_r"] is None
    assert "torch" in row["versions"] and len(row["date"]) == len("2026-01-01T00:00:00")
    with_inc = leaderboard_row(setup, summary, params=None, input_size=(32, 32), backend="onnx",
                               images_per_s=12.345, checkpoint_path="x.pth", kinds={"in-c"},
                               options=options, normalizer="ref")
    assert with_inc["inc_mode"] == "on-the-fly" and with_inc["normalizer"] == "ref"
    assert with_inc["a_r_mode"] is None and with_inc["images_per_s"] == 12.35


def test_the_cell_store_removes_a_killed_runs_temporaries_on_start(tmp_path, lookup):
    w = WNIDS[10]
    write_coded(tmp_path / "val" / w / "0.png", 1)
    lookup["table"] = logits_table(1000, {})
    stale = tmp_path / "run" / "cells" / ".in1k.json.x8k2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("{half")
    request = EvalRequest(source=None, suites=suite_specs(in1k=str(tmp_path / "val")), device="cpu", workers=0,
                          progress=False, out=tmp_path / "run", leaderboard=tmp_path / "lb.csv", figure=False)
    run_evaluation(request)
    assert not stale.exists()
    assert sorted(p.name for p in stale.parent.iterdir()) == ["in1k.json"]


def _request(tmp_path, **kwargs) -> EvalRequest:
    base = dict(source=None, suites=suite_specs(in1k=str(tmp_path / "val")), device="cpu", workers=0,
                progress=False, out=tmp_path / "run", leaderboard=tmp_path / "lb.csv", figure=False)
    return EvalRequest(**{**base, **kwargs})


@pytest.mark.parametrize("field,value,flag", [("batch_size", 0, "--batch-size"), ("batch_size", -4, "--batch-size"),
                                              ("workers", -1, "--workers"), ("inc_group", 0, "--inc-group")])
def test_sizes_below_one_are_refused_by_the_library(tmp_path, lookup, field, value, flag):
    with pytest.raises(StlBenchError, match=f"^{flag} must be at least .*, got {value}$"):
        _request(tmp_path, **{field: value})
    request = _request(tmp_path)
    setattr(request, field, value)   # changed after construction: refused before any work too
    with pytest.raises(StlBenchError, match=flag):
        run_evaluation(request)
    assert "kwargs" not in lookup and not (tmp_path / "run").exists()


def test_a_folder_of_only_unreadable_images_is_an_error_and_adds_no_row(tmp_path, lookup):
    lookup["table"] = logits_table(1000, {})
    for i in range(3):
        (tmp_path / "val" / WNIDS[i]).mkdir(parents=True)
        (tmp_path / "val" / WNIDS[i] / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(StlBenchError) as err:
        run_evaluation(_request(tmp_path))
    assert str(tmp_path / "val") in str(err.value) and "none of the 3 image file(s)" in str(err.value)
    assert not (tmp_path / "lb.csv").exists() and ResultStore(tmp_path / "run").load() == {}


@pytest.mark.parametrize("target", ["out", "leaderboard"])
def test_unwritable_outputs_fail_before_any_work(tmp_path, lookup, target):
    write_coded(tmp_path / "val" / WNIDS[1] / "0.png", 1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    where = {"out": blocker / "run", "leaderboard": blocker / "lb.csv"}[target]
    with pytest.raises(StlBenchError, match=f"cannot write the .* folder {blocker}"):
        run_evaluation(_request(tmp_path, **{target: where}))
    assert "kwargs" not in lookup   # refused before the model was even opened


def test_a_failed_final_write_keeps_the_cells_and_says_rerun(tmp_path, lookup, monkeypatch):
    import stl_bench.evaluate.leaderboard as lb

    write_coded(tmp_path / "val" / WNIDS[1] / "0.png", 1)
    lookup["table"] = logits_table(1000, {1: {1: 3.0}})
    real = lb.update_leaderboard

    def full_disk(path, row):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lb, "update_leaderboard", full_disk)
    with pytest.raises(StlBenchError, match="re-run the same command") as err:
        run_evaluation(_request(tmp_path))
    assert "No space left" in str(err.value) and "\n" not in str(err.value)
    assert len(ResultStore(tmp_path / "run").load()) == 1
    monkeypatch.setattr(lb, "update_leaderboard", real)
    again = run_evaluation(_request(tmp_path))
    assert again.outcome.computed == [] and pd.read_csv(tmp_path / "lb.csv").iloc[0]["in1k_top1"] == 100.0
