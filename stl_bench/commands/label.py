"""`stl-bench label`: write a token labeler's per-patch top-k labels for a data set.

Stage 2 can then train from these files (`stl-bench train --stage student
--token-labels DIR`) without running the labeler at every step.
"""
from __future__ import annotations

import argparse

from stl_bench.commands import arguments as arg

NAME = "label"
HELP = "write offline token labels (per-patch top-k) with a stage-1 labeler"
DESCRIPTION = (
    "Run a token labeler once over a training folder and store each image's per-patch top-k class "
    "probabilities. Example: `stl-bench label --teacher runs/demo_tl/last.pt --data demo --output runs/demo_labels`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="stage-1 labeler checkpoint or model card name (EMA weights used when present)")
    parser.add_argument("--data", required=True,
                        help="data root; its --split sub-folder (train/<class>/*) is labelled; 'demo' = the built-in digits")
    parser.add_argument("--split", default="train", help="sub-folder of --data to label ('' to label --data itself)")
    parser.add_argument("--output", required=True, type=arg.output_folder,
                        help="folder for meta.json, indices.npy and values.npy")
    parser.add_argument("--topk", type=arg.positive_int, default=5, help="classes kept per patch")
    parser.add_argument("--batch-size", type=arg.positive_int, default=128, help="images per forward pass")
    parser.add_argument("--workers", type=arg.non_negative_int, default=4, help="data-loading worker processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the labeler runs")
    parser.add_argument("--img-size", type=arg.positive_int, default=None,
                        help="labeler input size (default: the model's own)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stl_bench.errors import StlBenchError
    from stl_bench.fan.hub import resolve_source
    from stl_bench.stl.labeling import write_token_labels
    from stl_bench.train.data import resolve_data_root

    root = resolve_data_root(args.data)
    data_dir = root / args.split if args.split else root
    if not data_dir.is_dir():
        raise StlBenchError(f"{data_dir} does not exist; pass --data with a '{args.split}' sub-folder or set --split")
    teacher = resolve_source(args.teacher)  # a model card's name: its cached checkpoint
    write_token_labels(teacher, data_dir, Path(args.output), topk=args.topk, batch_size=args.batch_size,
                       workers=args.workers, device=args.device, img_size=args.img_size, progress=args.progress)
    return 0
