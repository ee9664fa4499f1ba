"""`stl-bench bench` end to end on the nano model (CPU, tiny iteration counts), and its pieces."""
from __future__ import annotations

import csv
import math
import os

import pytest
import torch

import stl_bench  # noqa: F401
from stl_bench.cli import main
from stl_bench.deploy.bench import Backend, BenchRow, flops_per_image, format_table, time_interleaved
from stl_bench.fan import create_model


def test_bench_cli_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = main(["bench", "--model", "fan_nano_4_p4_32_token", "--num-classes", "10", "--backends",
               "eager,ort,tensorrt", "--latency-iters", "3", "--throughput-iters", "2",
               "--warmup", "1", "--batch-size", "4", "--real-images", "8", "--csv", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "x eager" in printed and "ort" in printed
    rows = list(csv.DictReader(out.open()))
    by_backend = {r["backend"]: r for r in rows}
    assert list(by_backend) == ["eager", "ort", "tensorrt"]
    eager, ort = by_backend["eager"], by_backend["ort"]
    assert float(eager["latency_speedup"]) == 1.0 and float(eager["throughput_speedup"]) == 1.0
    assert float(eager["top1_agreement"]) == 1.0 and float(eager["token_agreement"]) == 1.0
    # ONNX Runtime runs the same FP32 function: same answers on the real images.
    assert float(ort["top1_agreement"]) == 1.0 and float(ort["token_agreement"]) >= 0.999
    for r in (eager, ort):
        assert float(r["latency_p50_ms"]) > 0 and float(r["latency_p95_ms"]) >= float(r["latency_p50_ms"])
        assert float(r["throughput_img_s"]) > 0 and float(r["tflops"]) > 0
        assert r["mfu"] == ""  # no peak on a CPU
        assert r["batch"] == "4" and r["device"] == "cpu" and r["torch"] == torch.__version__
    ratio = float(ort["throughput_img_s"]) / float(eager["throughput_img_s"])
    assert math.isclose(float(ort["throughput_speedup"]), ratio, rel_tol=1e-3)
    if not torch.cuda.is_available():
        assert by_backend["tensorrt"]["status"] == "skipped"
        assert "no NVIDIA GPU" in by_backend["tensorrt"]["note"]


def test_unknown_backend_and_missing_model(capsys):
    assert main(["bench", "--model", "fan_nano_4_p4_32", "--backends", "eager,onnx-magic"]) == 1
    assert "unknown backend(s) onnx-magic" in capsys.readouterr().err
    assert main(["bench"]) == 1
    assert "pass a checkpoint or --model" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--model", "fan_nano_4_p4_32", "--device", "cuda"]) == 1
        assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_interleaved_timing_and_failed_backend_becomes_skip():
    calls: list[str] = []

    def ok(name):
        def forward(x):
            calls.append(name)
            return x.sum(dim=(2, 3)), None
        return forward

    def broken(x):
        raise RuntimeError("no kernel for op Foo")

    backends = [Backend("eager", "fp32", ok("a")), Backend("b", "fp32", ok("b")), Backend("c", "fp32", broken)]
    times = time_interleaved(backends, torch.zeros(2, 3, 4, 4), iters=4, warmup=1, device=torch.device("cpu"))
    assert set(times) == {"eager", "b"} and all(len(v) == 4 for v in times.values())
    assert backends[2].forward is None and "no kernel for op Foo" in backends[2].skip
    # rounds rotate the order: both backends lead a round
    timed = calls[2:]
    leads = {timed[i] for i in range(0, len(timed), 4)}
    assert leads == {"a", "b"}


def test_flops_counter_on_nano():
    model = create_model("fan_nano_4_p4_32", num_classes=10).eval()
    flops = flops_per_image(model, (3, 32, 32))
    # 4 blocks of 96 channels over 64 tokens: a few tens of MFLOPs, and linear in the batch
    assert 5e6 < flops < 5e8


def test_table_shows_skips():
    rows = [BenchRow("m", "eager", "fp32", "cpu", 8, 1.0, 1.2, 100.0, 1.0, 1.0, 1.0, None, 0.1),
            BenchRow("m", "tensorrt", "fp32", "cpu", 8, status="skipped", note="no NVIDIA GPU")]
    text = format_table(rows)
    assert "skipped: no NVIDIA GPU" in text and "100.0%" in text


def test_bench_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as exc:  # refused while parsing the flags
        main(["bench", "--model", "fan_nano_4_p4_32", "--batch-size", "0"])
    assert exc.value.code == 2
    assert "must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", "fan_nano_4_p4_32", "--head", "mean"])


def test_compile_backend_runs_on_cpu_and_matches_eager():
    """inductor cannot trace under inference_mode (torch 2.14 raises 'Cannot set
    version_counter for inference tensor'); the compile backend must use no_grad."""
    from stl_bench.deploy.bench import _compiled_forward, torch_forward

    torch.manual_seed(0)
    model = create_model("fan_nano_4_p4_32_token", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = _compiled_forward(model, torch.device("cpu"), None)(x)
    eager = torch_forward(model, torch.device("cpu"), None)(x)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_gemm_peak_is_a_plausible_rate():
    from stl_bench.deploy.bench import gemm_peak_flops

    peak = gemm_peak_flops(torch.device("cpu"), size=256, iters=3)
    # no CPU core does more than 64 FP32 FLOPs a cycle (two AVX-512 FMA units) at 6 GHz
    ceiling = (os.cpu_count() or 1) * 64 * 6e9
    assert 1e8 < peak < ceiling


def test_gemm_peak_is_flops_over_the_timed_loop(monkeypatch):
    """2 n^3 FLOPs per matmul, `iters` matmuls, divided by the time of the timed loop only."""
    from types import SimpleNamespace

    from stl_bench.deploy import bench

    ticks = iter([10.0, 12.5])  # the timed loop's start and end
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    peak = bench.gemm_peak_flops(torch.device("cpu"), size=64, iters=5)
    assert peak == pytest.approx(2 * 64**3 * 5 / 2.5)
