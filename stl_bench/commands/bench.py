"""`stl-bench bench`: latency and throughput per backend, as ratios to PyTorch eager."""
from __future__ import annotations

import argparse
from pathlib import Path

from stl_bench.commands import arguments as arg

NAME = "bench"
HELP = "time PyTorch (eager, autocast, compile), ONNX Runtime and TensorRT against PyTorch eager"
DESCRIPTION = (
    "Latency (p50/p95 at batch 1) and throughput (at --batch-size) per backend and precision, each as a "
    "ratio to PyTorch eager FP32 measured in the same run (interleaved rounds, after warm-up), with top-1 and "
    "token-argmax agreement against FP32 on real images, and model FLOPs utilisation on a GPU. Backends that "
    "cannot run here (no GPU, no TensorRT, an op the provider lacks) are listed as skipped with the reason."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stl_bench.deploy.bench import ALL_BACKENDS, H100_BF16_DENSE_TFLOPS

    parser.add_argument("checkpoint", nargs="?", type=arg.existing_file,
                        help="checkpoint to time (default: random weights)")
    parser.add_argument("--model", help="architecture (required without a checkpoint that records it)")
    parser.add_argument("--num-classes", type=arg.positive_int)
    parser.add_argument("--img-size", type=arg.positive_int, help="input size (default: the model's)")
    parser.add_argument("--device", default="cpu", type=arg.device, help="cpu or cuda[:N]")
    parser.add_argument("--batch-size", type=arg.positive_int, default=8, help="throughput batch size")
    parser.add_argument("--latency-iters", type=arg.positive_int, default=20, help="timed batch-1 calls per backend")
    parser.add_argument("--throughput-iters", type=arg.positive_int, default=5, help="timed batch calls per backend")
    parser.add_argument("--warmup", type=arg.non_negative_int, default=2,
                        help="untimed calls per backend before each phase")
    parser.add_argument("--backends", help=f"comma-separated subset of: {', '.join(ALL_BACKENDS)} "
                        "(default: all that make sense on the device)")
    parser.add_argument("--head", default="auto", choices=["auto", "cls", "fused"],
                        help="scores for the agreement check (auto: fused for token models)")
    parser.add_argument("--real-images", type=arg.positive_int, default=64, help="real images for the agreement check")
    parser.add_argument("--images", type=arg.existing_folder,
                        help="folder of real images (default: scikit-learn's digits)")
    parser.add_argument("--work-dir", type=arg.output_folder, help="keep the exported ONNX files / engines here")
    parser.add_argument("--ort-threads", type=arg.non_negative_int, default=0,
                        help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument("--peak-tflops", type=arg.positive_float, default=H100_BF16_DENSE_TFLOPS,
                        help="GPU peak for model FLOPs utilisation")
    parser.add_argument("--csv", type=arg.output_file, help="write the rows to this CSV file")


def run(args: argparse.Namespace) -> int:
    from stl_bench.deploy.bench import BenchConfig, format_table, run_benchmark, write_csv
    from stl_bench.errors import StlBenchError

    if not args.checkpoint and not args.model:
        raise StlBenchError("nothing to time: pass a checkpoint or --model NAME")
    if args.batch_size < 1 or args.latency_iters < 1 or args.throughput_iters < 1:
        raise StlBenchError("--batch-size, --latency-iters and --throughput-iters must be at least 1")
    config = BenchConfig(
        model=args.model, checkpoint=args.checkpoint, num_classes=args.num_classes, img_size=args.img_size,
        device=args.device, batch_size=args.batch_size, latency_iters=args.latency_iters,
        throughput_iters=args.throughput_iters, warmup=args.warmup,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()) if args.backends else None,
        head=args.head, real_images=args.real_images, images_dir=args.images, work_dir=args.work_dir,
        ort_threads=args.ort_threads, peak_tflops=args.peak_tflops,
    )
    rows = run_benchmark(config)
    first = rows[0]
    print(f"{first.model} on {first.machine}, batch 1 latency and batch {first.batch} throughput; "
          f"ratios to {rows[0].backend} measured in the same run (load avg {first.load_1m})")
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0
