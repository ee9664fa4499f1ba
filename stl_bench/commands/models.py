"""`stl-bench models`: the model cards and their cached weights, the registered FAN variants, checkpoint inspection."""
from __future__ import annotations

import argparse

from stl_bench.commands import arguments as arg

NAME = "models"
HELP = "list model cards and FAN variants, or inspect a checkpoint"
DESCRIPTION = (
    "Without options, list the model cards in stl_bench/cards/ (the released official FAN and STL "
    "checkpoints with their reported numbers) and which of them are in the weights cache. "
    "--download NAME|all fetches released checkpoints into the cache ($STL_BENCH_CACHE, else torch hub's "
    "checkpoints folder); afterwards every command that takes a checkpoint also takes the card name. "
    "--all lists every registered FAN variant; --inspect loads a checkpoint strictly and says "
    "what it is; --show prints one card."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--all", action="store_true", help="list every registered FAN / STL variant")
    group.add_argument("--inspect", metavar="CKPT", type=arg.existing_file,
                       help="load a checkpoint file and describe it")
    group.add_argument("--show", metavar="CARD", help="print one model card")
    group.add_argument("--download", metavar="NAME", help="fetch a card's released checkpoint into the weights cache "
                       "('all': every card); prints what it fetches, from where, and its licence")
    parser.add_argument("--model", help="architecture for --inspect (default: recorded in the file, or the FAN variant that fits)")
    parser.add_argument("--ema", action="store_true", help="with --inspect: load the EMA weights")
    parser.add_argument("--num-classes", type=arg.positive_int,
                        help="with --inspect: class count (default: from the file)")
    parser.add_argument("--mirror", metavar="URL", help="with --download: fetch <URL>/<card name>/<file name> instead "
                        "of GitHub / Google Drive (default: $STL_BENCH_WEIGHTS_MIRROR)")
    parser.add_argument("--verify", action="store_true", help="with --download: re-hash cached files against their "
                        "recorded SHA-256 (the size is always checked)")
    parser.add_argument("--dry-run", action="store_true", help="with --download: print the plan, fetch nothing")
    parser.add_argument("--no-progress", action="store_true", help="with --download: no progress bar "
                        "(default: a bar when stderr is a terminal)")


def _cache_line() -> str:
    from stl_bench.fan.hub import cache_dir, is_offline, mirror_base

    folder, why = cache_dir()
    extra = [f"mirror {mirror_base()}"] if mirror_base() else []
    extra += ["offline: nothing is downloaded"] if is_offline() else []
    return f"weights cache: {folder} ({why})" + "".join(f"; {e}" for e in extra)


def _cards_table() -> str:
    import pandas as pd

    from stl_bench.fan.cards import cards_dir, load_cards
    from stl_bench.fan.hub import cache_status

    cards = load_cards()
    if not cards:
        return f"no model cards found in {cards_dir()} (set STL_BENCH_MODELS_DIR to a folder of model cards)"
    rows = []
    for c in cards.values():
        r = c["reported"]
        rows.append({
            "card": c["name"], "arch": c["arch"], "params": f"{c['params'] / 1e6:.2f}M",
            "input": c["input_size"][-1], "IN-1K": r.get("in1k_top1"), "IN-C acc": r.get("inc_acc"),
            "mCE": r.get("inc_mce"), "IN-A": r.get("in_a"), "IN-R": r.get("in_r"), "cached": cache_status(c),
        })
    table = pd.DataFrame(rows).fillna("")
    return (table.to_string(index=False) + f"\n\n{len(rows)} cards in {cards_dir()}; download links: stl-bench models "
            f"--show CARD; fetch one: stl-bench models --download CARD\n{_cache_line()}")


def _variants_table() -> str:
    import pandas as pd
    import timm
    import torch

    from stl_bench.fan import FAN_MODEL_NAMES

    rows = []
    for name in FAN_MODEL_NAMES:
        with torch.device("meta"):
            m = timm.create_model(name)
        rows.append({
            "model": name, "params (1000 classes)": f"{sum(p.numel() for p in m.parameters()):,}",
            "input": m.pretrained_cfg["input_size"][-1], "tokens": "x".join(map(str, m.token_grid())),
            "stem": "hybrid" if "hybrid" in name else "conv", "token head": "yes" if m.has_token_head else "",
        })
    return pd.DataFrame(rows).to_string(index=False)


def _inspect(args: argparse.Namespace) -> str:
    from stl_bench.fan import create_model_from_checkpoint
    from stl_bench.fan.cards import cards_for_arch

    model, info = create_model_from_checkpoint(args.inspect, args.model, use_ema=args.ema, num_classes=args.num_classes)
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"checkpoint   {info.path}",
        f"format       {info.format} ({info.weights} weights{', EMA weights present' if info.has_ema else ''})",
        f"architecture {info.arch}",
        f"classes      {info.num_classes}" + (f" ({', '.join(info.class_names[:10])}{' ...' if len(info.class_names) > 10 else ''})" if info.class_names else ""),
        f"parameters   {params:,}",
        f"input        {model.pretrained_cfg['input_size']}, token grid {model.token_grid()}"
        + (", token-label head" if getattr(model, "has_token_head", False) else ""),
        f"sha256       {info.sha256}",
    ]
    if info.epoch is not None:
        lines.append(f"epoch        {info.epoch}")
    cards = cards_for_arch(info.arch)
    if cards:
        lines.append(f"model cards  {', '.join(c['name'] for c in cards)}")
    lines.append("loaded strictly: every key and shape fits")
    return "\n".join(lines)


def _download(args: argparse.Namespace) -> None:
    """Print the plan (source, destination, size where known, licence), then fetch what is missing."""
    from stl_bench.fan.cards import get_card, load_cards
    from stl_bench.fan.hub import cache_path, cache_status, fetch, source_url

    cards = list(load_cards().values()) if args.download == "all" else [get_card(args.download)]
    print(_cache_line())
    for card in cards:
        status = cache_status(card)
        state = f"cached, {status}" if status and not status.startswith(("partial", "changed")) else status or "not cached"
        print(f"{card['name']}: {source_url(card, args.mirror)}\n  -> {cache_path(card)} ({state})\n"
              f"  licence: {card.get('license', 'see the card')}")
    if args.dry_run:
        return
    for card in cards:
        path = fetch(card, mirror=args.mirror, verify=args.verify, progress=False if args.no_progress else None)
        print(f"{card['name']}: {path} ({path.stat().st_size / 1e6:.1f} MB){', SHA-256 verified' if args.verify else ''}")
    if len(cards) == 1:
        print(f"use it by name: stl-bench eval {cards[0]['name']} --in1k /path/to/imagenet/val")


def run(args: argparse.Namespace) -> int:
    if args.download:
        _download(args)
    elif args.inspect:
        print(_inspect(args))
    elif args.all:
        print(_variants_table())
    elif args.show:
        from stl_bench.fan.cards import get_card

        card = get_card(args.show)
        print(f"{card['path']}\n\narch: {card['arch']}\nurl: {card['url']}\n\n{card['body']}")
    else:
        print(_cards_table())
    return 0
