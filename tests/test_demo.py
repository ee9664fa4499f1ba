"""`stl-bench demo` end to end at a reduced size, and its reuse of finished steps."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from stl_bench.cli import main
from stl_bench.demo import CHECKPOINT, REFERENCE_RUN, RUNS, SUMMARY_COLUMNS, DemoConfig, summary_table
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.reference import DIGITS_TABLE


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--output", str(out / "runs"), "--data", str(out / "data"), "--epochs", "1",
            "--max-train-samples", "256", "--corruptions", "gaussian_noise,contrast", "--severities", "1,2,3,4,5",
            "--no-progress"]
    assert main(argv) == 0
    return out / "runs", argv


@pytest.mark.slow
def test_demo_writes_every_output(demo_run, capsys):
    runs, _ = demo_run
    for run in RUNS:
        assert (runs / run.name / CHECKPOINT).is_file()
    assert not (runs / REFERENCE_RUN.name).exists()  # the normaliser is the shipped table, not retrained
    board = pd.read_csv(runs / "leaderboard.csv")
    assert len(board) == len(RUNS)
    for column in ("name", "model", "checkpoint", "head", "weights", "preprocessing", "params", "input_size",
                   "images_per_s", "date", "versions", "normalizer", "in1k_top1", "in1k_top5", "in1k_ece"):
        assert column in board.columns, column
    assert board.columns[0] == "name" and sorted(board["name"]) == ["baseline", "labeler", "student"]
    assert board["in1k_top1"].between(0, 100).all()
    assert set(board["head"]) == {"cls", "fused"}
    assert (board["normalizer"] == "digits").all()
    table = pd.read_csv(DIGITS_TABLE, keep_default_na=False)
    table = table[table["suite"] == "in-c"].astype({"severity": int}).set_index(["corruption", "severity"])["error"]
    for run in RUNS:
        long = pd.read_csv(runs / "eval" / run.name / "results_long.csv")
        assert list(long.columns[:6]) == ["suite", "corruption", "severity", "n", "correct", "error"]
        inc = long[long["suite"] == "in-c"]
        assert sorted(set(inc["corruption"])) == ["contrast", "gaussian_noise"]
        assert sorted(set(inc["severity"])) == [1, 2, 3, 4, 5]
        assert ((inc["error"] >= 0) & (inc["error"] <= 1)).all()
        assert (inc["correct"] <= inc["n"]).all()
        assert (inc["n"] == 10 * 10).all()  # the fixed subset: 10 images of each of the 10 classes
        assert long[long["suite"] == "in1k"]["n"].iloc[0] == 360  # clean accuracy: the whole split
        # CE against the shipped table, by hand: 100 x the model's summed errors / the table's
        row = board[board["name"] == run.name].iloc[0]
        for corruption in ("gaussian_noise", "contrast"):
            mine = inc[inc["corruption"] == corruption]["error"].sum()
            assert math.isclose(row[f"ce_{corruption}"], 100 * mine / table[corruption].sum(), abs_tol=1e-3)
    summary = summary_table(DemoConfig(output=runs))
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["name"]) == [r.name for r in RUNS] and (summary["normalizer"] == "digits").all()


@pytest.mark.slow
def test_demo_export_matches_pytorch(demo_run):
    from stl_bench.deploy.open import open_runner

    runs, _ = demo_run
    onnx_runner = open_runner(str(runs / "student.onnx"))
    torch_runner = open_runner(str(runs / "student" / CHECKPOINT))
    assert onnx_runner.info.has_tokens and onnx_runner.info.head == torch_runner.info.head == "fused"
    x = torch.randn(5, 3, 32, 32)
    a, b = onnx_runner.predict(x), torch_runner.predict(x)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.token_logits, b.token_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_demo_rerun_reuses_finished_steps(demo_run, capsys):
    runs, argv = demo_run
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and p.suffix in (".pt", ".onnx")}
    cells = {p: p.stat().st_mtime_ns for p in (runs / "eval").rglob("cells/*")}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "open the app on these models: stl-bench app" in out
    assert "relative to alexnet_mini_32 (digits table)" in out and "labeler" in out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing retrained or re-exported
    assert all(p.stat().st_mtime_ns == t for p, t in cells.items())  # no cell recomputed


def test_inc_subset_is_written_whole_and_a_killed_copy_is_cleaned(tmp_path):
    """The IN-C subset folder appears complete or not at all (io.atomic_folder)."""
    from stl_bench.demo import DemoConfig, inc_subset

    data = tmp_path / "data"
    for c in ("0", "1"):
        (data / "val" / c).mkdir(parents=True)
        for i in range(3):
            (data / "val" / c / f"digit_{i}.png").write_bytes(b"png")
    cfg = DemoConfig(output=tmp_path / "runs", inc_per_class=2)
    stale = cfg.inc_folder.parent / f".{cfg.inc_folder.name}.abc123.tmp"  # a killed demo's copy
    (stale / "0").mkdir(parents=True)
    target = inc_subset(cfg, data)
    assert target == cfg.inc_folder and (target / ".complete").is_file()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == [
        "0/digit_0.png", "0/digit_1.png", "1/digit_0.png", "1/digit_1.png"]
    assert not stale.exists()
    assert inc_subset(cfg, data) == target  # complete: reused as it is
    assert inc_subset(DemoConfig(output=tmp_path / "runs", inc_per_class=None), data) == data / "val"


def test_a_normaliser_that_cannot_score_the_run_stops_the_demo_before_training(tmp_path):
    from stl_bench.demo import run_demo

    ref = tmp_path / "ref" / "results_long.csv"
    ref.parent.mkdir()
    pd.DataFrame([{"suite": "in-c", "corruption": "fog", "severity": s, "n": 1, "correct": 0, "error": 1.0}
                  for s in range(1, 6)]).to_csv(ref, index=False)
    cfg = DemoConfig(output=tmp_path / "runs", data=tmp_path / "data", normalizer=str(ref),
                     corruptions=("fog", "contrast"))
    with pytest.raises(StlBenchError, match="lacks contrast, which this run scores"):
        run_demo(cfg)
    assert not cfg.output.exists() and not cfg.data.exists()
    with pytest.raises(StlBenchError, match="unknown normaliser 'digit' \\(did you mean digits\\?\\)"):
        run_demo(DemoConfig(output=tmp_path / "runs", data=tmp_path / "data", normalizer="digit"))


def test_the_reference_cnn_is_scored_only_on_request():
    assert REFERENCE_RUN not in DemoConfig().runs and DemoConfig().normalizer == "digits"
    assert DemoConfig(with_reference=True).runs == (REFERENCE_RUN, *RUNS)
