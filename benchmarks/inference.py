"""Inference speed of FAN/STL models per backend, and what each ONNX graph change buys.

Two parts, both printing ratios to PyTorch eager measured in the same run:

1. `stl_bench.deploy.bench.run_benchmark` for each model: every backend that runs on the
   device (latency at batch 1, throughput at --batch-size, agreement on real images).
2. `--ablation`: ONNX Runtime on the CPU at --batch-size for graph and session variants
   (the plain dynamo export, each export rewrite, ORT's optimization levels, threads),
   to show where the ONNX speed-up comes from, and the FP32 floor: the model's FLOPs at
   the speed of one large FP32 matmul on the same cores, which no graph can beat.

    python benchmarks/inference.py --models fan_tiny_12_p16_224 fan_small_12_p4_hybrid_token \
        --batch-size 8 --ablation --csv benchmarks/results/cpu.csv
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import astuple
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stl_bench  # noqa: E402,F401
from stl_bench.deploy.bench import (  # noqa: E402
    Backend, BenchConfig, flops_per_image, format_table, gemm_peak_flops, run_benchmark, time_interleaved,
    torch_forward, write_csv)
from stl_bench.deploy.export_onnx import export_onnx  # noqa: E402
from stl_bench.deploy.graph_rewrites import GraphOptions  # noqa: E402
from stl_bench.deploy.onnx_format import metadata_for  # noqa: E402
from stl_bench.deploy.onnx_runner import OnnxRunner  # noqa: E402
from stl_bench.fan import create_model  # noqa: E402

log = logging.getLogger("benchmarks.inference")

# (label, graph options, opset, ORT optimization level, intra-op threads, spin); the
# first rows add one export rewrite at a time (stl_bench.deploy.graph_rewrites).
_ALL = GraphOptions()
ABLATION = [
    ("plain export, ORT all", GraphOptions.none(), 20, "all", 0, None),
    ("+ folded pos. encoding", GraphOptions(True, False, False, False), 20, "all", 0, None),
    ("+ folded layer scales", GraphOptions(True, False, True, False), 20, "all", 0, None),
    ("+ token-last channel attn", GraphOptions(True, True, True, False), 20, "all", 0, None),
    ("+ Attention op (default)", _ALL, 23, "all", 0, None),
    ("  ORT level extended", _ALL, 23, "extended", 0, None),
    ("  ORT level basic", _ALL, 23, "basic", 0, None),
    ("  ORT 1 thread", _ALL, 23, "all", 1, None),
    ("  ORT no spinning", _ALL, 23, "all", 0, False),
]


def _ort(path: Path, opt_level: str, threads: int, spin: bool | None):
    runner = OnnxRunner.open(path, head="cls", threads=threads, opt_level=opt_level, spin=spin)

    def forward(x: torch.Tensor):
        pred = runner.predict(x)
        return pred.logits, pred.token_logits

    return forward


def ablation(name: str, batch: int, iters: int, warmup: int, work: Path) -> list[tuple[str, float, float]]:
    """(label, ms per batch, ratio to eager) for each ORT variant, eager timed alongside."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    meta = metadata_for(model, name, tokens=bool(getattr(model, "has_token_head", False)))
    files: dict[tuple, Path] = {}
    backends = [Backend("eager", "fp32", torch_forward(model, torch.device("cpu"), None))]
    for label, options, opset, level, threads, spin in ABLATION:
        key = (*astuple(options), opset)
        if key not in files:
            stem = "".join(str(int(v)) for v in key[:-1])
            files[key] = export_onnx(model, work / f"{name}.{stem}.{opset}.onnx", meta, opset=opset, options=options)
        backends.append(Backend(label, "fp32", _ort(files[key], level, threads, spin)))
    x = torch.randn(batch, *meta.data_config["input_size"])
    times = time_interleaved(backends, x, iters, warmup, torch.device("cpu"))
    base = statistics.median(times["eager"])
    rows = [(b.name, 1e3 * statistics.median(times[b.name]), base / statistics.median(times[b.name]))
            for b in backends]
    # The floor: every FLOP at the speed of one large FP32 matmul on these cores. No FP32
    # graph of this model can beat it, whatever it fuses.
    peak = gemm_peak_flops(torch.device("cpu"))
    floor = batch * flops_per_image(model, tuple(meta.data_config["input_size"])) / peak
    rows.append((f"FP32 floor ({peak / 1e9:.0f} GFLOP/s)", 1e3 * floor, base / floor))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fan_tiny_12_p16_224", "fan_small_12_p4_hybrid_token"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latency-iters", type=int, default=5)
    parser.add_argument("--throughput-iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--backends", help="comma-separated subset (default: all for the device)")
    parser.add_argument("--real-images", type=int, default=64)
    parser.add_argument("--ablation", action="store_true", help="also time ONNX graph/session variants (CPU)")
    parser.add_argument("--skip-backends", action="store_true", help="only the ablation")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load avg {os.getloadavg()}")
    rows, ablation_rows = [], []
    for name in args.models:
        if not args.skip_backends:
            config = BenchConfig(
                model=name, device=args.device, batch_size=args.batch_size, latency_iters=args.latency_iters,
                throughput_iters=args.throughput_iters, warmup=args.warmup, real_images=args.real_images,
                backends=tuple(args.backends.split(",")) if args.backends else None,
            )
            result = run_benchmark(config)
            rows += result
            print(f"\n{name}: batch 1 latency, batch {args.batch_size} throughput (load avg {result[0].load_1m})")
            print(format_table(result))
        if args.ablation:
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()[0]
                table = ablation(name, args.batch_size, args.throughput_iters, args.warmup, Path(tmp))
            print(f"\n{name}: ONNX Runtime CPU variants at batch {args.batch_size} "
                  f"(load avg {max(load, os.getloadavg()[0]):.2f})")
            print(f"{'variant':<30} {'ms/batch':>9} {'x eager':>8}")
            for label, ms, ratio in table:
                print(f"{label:<30} {ms:>9.1f} {ratio:>8.2f}")
                ablation_rows.append({"model": name, "batch": args.batch_size, "variant": label.strip(),
                                      "ms_per_batch": round(ms, 2), "x_eager": round(ratio, 3),
                                      "load_1m": round(load, 2)})
    if args.csv and rows:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.csv and ablation_rows:
        import pandas as pd

        path = args.csv.with_name(args.csv.stem + "_ablation.csv")
        pd.DataFrame(ablation_rows).to_csv(path, index=False)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
