"""`stl-bench demo`: train, evaluate and export the tiny FAN models on the built-in digits."""
from __future__ import annotations

import argparse
from pathlib import Path

from stl_bench.commands import arguments as arg

NAME = "demo"
HELP = "the whole toolkit on the built-in digits data, on a CPU (the README's main job)"
DESCRIPTION = (
    "Writes scikit-learn's 1,797 handwritten digits as an image-folder data set, then trains the plain "
    "tiny FAN baseline, the STL token labeler and the STL student; evaluates the three on the clean "
    "validation split and, on a fixed subset of it, on the 15 + 4 ImageNet-C corruptions at 5 severities "
    "made on the fly, with mCE normalised by the fixed `digits` table shipped with the package (an "
    "AlexNet-style CNN averaged over training seeds); writes the leaderboard, per-corruption CSVs and CE "
    "figures; exports the student to ONNX with its parity check; and prints a summary and the command "
    "that opens the app. Re-running reuses every finished step."
)


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=arg.output_folder, default=Path("stl_bench_runs/demo"),
                        help="folder for every output (checkpoints, evaluation cells, leaderboard, ONNX)")
    parser.add_argument("--data", type=arg.output_folder, default=None,
                        help="where the digits data set is written (default: $STL_BENCH_DATA/demo_digits or "
                             "~/.cache/stl_bench/demo_digits)")
    parser.add_argument("--epochs", type=arg.positive_int, default=None,
                        help="training epochs per model (default: the demo preset's)")
    parser.add_argument("--seed", type=arg.non_negative_int, default=42, help="training seed")
    parser.add_argument("--corruptions", type=lambda v: _names(arg.corruption_list(v)), default=None,
                        help="comma-separated corruption subset (default: all 15 + 4; mCE needs the 15)")
    parser.add_argument("--severities", type=lambda v: tuple(int(s) for s in _names(arg.severity_list(v))),
                        default=None,
                        help="comma-separated severities (default: 1,2,3,4,5)")
    parser.add_argument("--max-train-samples", type=arg.positive_int, default=None,
                        help="train on a subset (smoke runs)")
    parser.add_argument("--inc-per-class", type=arg.non_negative_int, default=10,
                        help="validation images per class scored on the corruptions (0: the whole split)")
    parser.add_argument("--normalizer", default="digits",
                        help="CE reference: digits (the fixed table shipped for these digits), alexnet, or a "
                             "reference model's results_long.csv")
    parser.add_argument("--with-reference", action="store_true",
                        help="also train and score alexnet_mini_32, the digits table's CNN (a check on the table)")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from stl_bench.demo import DemoConfig, format_summary, run_demo

    cfg = DemoConfig(
        output=args.output, data=args.data, epochs=args.epochs, seed=args.seed, corruptions=args.corruptions,
        severities=args.severities, max_train_samples=args.max_train_samples,
        inc_per_class=args.inc_per_class or None, normalizer=args.normalizer,
        with_reference=args.with_reference, export=not args.no_export,
        progress=not args.no_progress,
    )
    table = run_demo(cfg)
    print("\n" + format_summary(table, cfg))
    return 0
