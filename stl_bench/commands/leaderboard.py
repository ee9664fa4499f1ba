"""`stl-bench leaderboard [CSV]`: the leaderboard table, and reported vs measured numbers."""
from __future__ import annotations

import argparse

from stl_bench.commands import arguments as arg

NAME = "leaderboard"
HELP = "print the leaderboard CSV and compare with the numbers reported in model cards"
DESCRIPTION = (
    "Print the leaderboard that `stl-bench eval` writes. For models with a model card "
    "(reported IN-1K top-1, IN-C accuracy and mCE, IN-A, IN-R), print the reported number, the "
    "measured one and the difference (measured - reported), in percentage points."
)

SHOWN = ["name", "model", "head", "weights", "checkpoint", "params", "in1k_top1", "in1k_top5", "in1k_ece", "inc_acc",
         "inc_mce", "inc_rel_mce", "in_a", "in_r", "images_per_s"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", nargs="?", default="eval_runs/leaderboard.csv", help="leaderboard CSV")
    p.add_argument("--cards", metavar="DIR", type=arg.existing_folder,
                   help="folder of Markdown model cards (default: the cards shipped in stl_bench/cards/)")
    p.add_argument("--all-columns", action="store_true", help="show every column, not the main ones")
    p.add_argument("--sort", default="in1k_top1", help="column to sort by (descending)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from stl_bench.evaluate.leaderboard import compare_with_cards, load_model_cards, read_leaderboard

    table = read_leaderboard(args.csv)
    if args.sort in table.columns:
        table = table.sort_values(args.sort, ascending=False, na_position="last")
    shown = table if args.all_columns else table[[c for c in SHOWN if c in table.columns]]
    if "checkpoint" in shown.columns:
        shown = shown.assign(checkpoint=shown["checkpoint"].astype(str).str[:12])
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-"))
        cards = load_model_cards(args.cards)
        comparison = compare_with_cards(table, cards)
        if comparison.empty:
            print("\nno model card matches these models: nothing reported to compare with")
        else:
            print("\nreported (model card) vs measured, percent; difference = measured - reported:")
            print(comparison.assign(checkpoint=comparison["checkpoint"].astype(str).str[:12])
                  .to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-"))
    return 0
