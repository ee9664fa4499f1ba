"""`stl-bench eval` end to end: outputs, resume from the command line, one-line errors."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from stl_bench.cli import main
from stl_bench.evaluate.alexnet import ALEXNET_ERROR_BY_SEVERITY, STANDARD_CORRUPTIONS
from eval_kit import A_WNIDS, WNIDS, logits_table, write_coded

IDX = {w: i for i, w in enumerate(WNIDS)}


def _data(root: Path) -> torch.Tensor:
    w, a = WNIDS[10], A_WNIDS[3]
    spec = {1: {IDX[w]: 3.0}, 2: {IDX[a]: 3.0}, 3: {0: 3.0}}
    write_coded(root / "val" / w / "0.png", 1)
    write_coded(root / "val" / w / "1.png", 3)
    write_coded(root / "a" / a / "0.png", 2)
    write_coded(root / "v2" / str(IDX[w]) / "0.png", 1)
    for c in STANDARD_CORRUPTIONS:
        for s in range(1, 6):
            write_coded(root / "inc" / c / str(s) / w / "0.png", 1 if s < 3 else 3, size=(16, 16))
    return logits_table(1000, spec)


def _args(root: Path) -> list[str]:
    return ["eval", "--in1k", str(root / "val"), "--in-a", str(root / "a"), "--in-c", str(root / "inc"),
            "--inc-corruptions", ",".join(STANDARD_CORRUPTIONS), "--folder", f"in-v2={root / 'v2'}",
            "--out", str(root / "run"), "--leaderboard", str(root / "lb.csv"), "--workers", "0", "--no-progress",
            "--device", "cpu"]


def test_eval_writes_row_long_csv_figure_and_resumes(tmp_path, lookup, capsys):
    lookup["table"] = _data(tmp_path)
    assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "inc_mce" in out and "CE per corruption" in out and "78 computed now" in out
    long = pd.read_csv(tmp_path / "run" / "results_long.csv")
    assert len(long) == 1 + 1 + 1 + 75
    lb = pd.read_csv(tmp_path / "lb.csv")
    assert len(lb) == 1
    row = lb.iloc[0]
    assert row["model"] == "lookup_model" and row["in1k_top1"] == pytest.approx(50.0)
    assert row["in_a"] == pytest.approx(100.0) and row["in_v2_top1"] == pytest.approx(100.0)
    assert row["inc_acc"] == pytest.approx(40.0)   # severities 1, 2 right, 3..5 wrong
    # per corruption: errors 0, 0, 1, 1, 1 over severities; clean error 0.5
    alex = {c: sum(ALEXNET_ERROR_BY_SEVERITY[c]) for c in STANDARD_CORRUPTIONS}
    assert row["inc_mce"] == pytest.approx(sum(100 * 3 / alex[c] for c in alex) / 15, abs=1e-3)
    assert row["inc_rel_mce"] == pytest.approx(
        sum(100 * (3 - 5 * 0.5) / (alex[c] - 5 * 0.4348) for c in alex) / 15, abs=1e-3)
    for col in ("head", "weights", "preprocessing", "a_r_mode", "normalizer", "checkpoint", "date", "versions"):
        assert isinstance(row[col], str) and row[col], col
    assert row["a_r_mode"] == "official" and row["normalizer"] == "alexnet"
    assert (tmp_path / "run" / "ce_per_corruption.png").stat().st_size > 10_000

    assert main(_args(tmp_path)) == 0          # same command again: nothing to compute
    assert "0 computed now, 78 stored" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 1


@pytest.mark.parametrize("extra,message,code", [  # code 2: refused while parsing the flags
    (["--in1k", "/nonexistent/val"], "does not exist", 2),
    (["--folder", "oops"], "NAME=DIR", 2),
    (["--in1k", "X", "--normalizer", "/nonexistent.csv"], "normaliser file", 1),
    (["--in1k", "X", "--inc-corruptions", "fgo"], "unknown corruption", 2),
    ([], "no suite given", 1),
])
def test_user_errors_are_one_line_and_write_nothing(tmp_path, lookup, capsys, extra, message, code):
    lookup["table"] = logits_table(1000, {})
    extra = [str(tmp_path) if e == "X" else e for e in extra]
    args = ["eval", *extra, "--leaderboard", str(tmp_path / "lb.csv"), "--out", str(tmp_path / "run")]
    try:
        rc = main(args)
    except SystemExit as exc:
        rc = exc.code
    assert rc == code
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "lb.csv").exists()


def _digits(root: Path) -> None:
    for d in range(3):
        for i in range(2):
            write_coded(root / "digits" / str(d) / f"{i}.png", 10 * d + i, size=(32, 32))


def _checkpoint(root: Path) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("fan_nano_4_p4_32_token", num_classes=10)
    path = root / "nano.pth"
    torch.save(model.state_dict(), path)
    return path


def test_eval_with_a_real_fan_checkpoint_and_fused_head(tmp_path, capsys):
    _digits(tmp_path)
    ckpt = _checkpoint(tmp_path)
    args = ["eval", str(ckpt), "--model", "fan_nano_4_p4_32_token", "--in1k", str(tmp_path / "digits"),
            "--in-c", str(tmp_path / "digits"), "--inc-on-the-fly", "--inc-corruptions", "contrast",
            "--inc-severities", "1,5", "--workers", "0", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--leaderboard", str(tmp_path / "lb.csv")]
    assert main(args) == 0
    row = pd.read_csv(tmp_path / "lb.csv", dtype={"checkpoint": str}).iloc[0]
    assert row["head"] == "fused" and row["input_size"] == "32x32" and row["inc_mode"] == "on-the-fly"
    assert row["params"] > 0 and len(row["checkpoint"]) == 16
    long = pd.read_csv(tmp_path / "run" / "results_long.csv")
    assert set(long["n"]) == {6}
    assert "mCE not computed" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """The real launcher: `python -m torch.distributed.run --nproc_per_node 2 -m stl_bench.cli eval`."""
    _digits(tmp_path)
    ckpt = _checkpoint(tmp_path)
    common = [str(ckpt), "--model", "fan_nano_4_p4_32_token", "--in1k", str(tmp_path / "digits"), "--workers", "0",
              "--no-progress", "--device", "cpu", "--batch-size", "1", "--no-figure"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "stl_bench.cli", "eval", *common, "--out", str(tmp_path / "r1"),
           "--leaderboard", str(tmp_path / "lb1.csv")]
    with socket.socket() as sock:   # torchrun's static rendezvous hangs on port 0: pick a free one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "stl_bench.cli", "eval", *common, "--out", str(tmp_path / "r2"),
           "--leaderboard", str(tmp_path / "lb2.csv")]
    for cmd in (one, two):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    a = pd.read_csv(tmp_path / "r1" / "results_long.csv")
    b = pd.read_csv(tmp_path / "r2" / "results_long.csv")
    assert a[["n", "correct", "correct5"]].equals(b[["n", "correct", "correct5"]])


@pytest.mark.parametrize("flag,name", [("--out", "run"), ("--leaderboard", "lb.csv")])
def test_unwritable_outputs_are_one_line_errors_before_any_work(tmp_path, lookup, capsys, flag, name):
    lookup["table"] = _data(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = _args(tmp_path)
    args[args.index(flag) + 1] = str(blocker / name)
    with pytest.raises(SystemExit) as exc:  # refused while parsing, before anything loads
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"argument {flag}: cannot write" in err and str(blocker) in err and "\n" not in err
    assert "kwargs" not in lookup and not (tmp_path / "run" / "cells").exists()


def test_batch_size_zero_or_negative_is_a_one_line_error(tmp_path, lookup, capsys):
    lookup["table"] = _data(tmp_path)
    for value in ("0", "-4"):
        with pytest.raises(SystemExit) as exc:  # refused while parsing; the library refuses it too
            main([*_args(tmp_path), "--batch-size", value])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert f"must be a positive integer, got {value}" in err and "Traceback" not in err and "\n" not in err
    assert "kwargs" not in lookup
