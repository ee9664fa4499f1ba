"""Model cards: one Markdown file per released official checkpoint, in `stl_bench/cards/`.

Each card opens with YAML front matter (architecture, input config, reported numbers,
parameter count, download link) so that people read the same file that
`stl-bench models`, `stl-bench leaderboard` and the weights cache (`fan/hub.py`) parse.
The cards are also the one source of the timm pretrained tags (`pretrained_tag`): a
card is registered as `<arch>.<tag>`, so there is no second table to keep in step. The
cards are package data (the top-level `models/` folder only points here), so a plain
wheel install finds them too.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from stl_bench.errors import StlBenchError

REPORTED_METRICS = ("in1k_top1", "inc_acc", "inc_mce", "in_a", "in_r")
REQUIRED_FIELDS = ("name", "title", "arch", "input_size", "params", "reported", "url")
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".safetensors")
_DATA_TAGS = {"imagenet-1k": "in1k", "imagenet-22k": "in22k"}


def cards_dir() -> Path:
    """`$STL_BENCH_MODELS_DIR`, else the cards shipped in the package (`stl_bench/cards/`)."""
    env = os.environ.get("STL_BENCH_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "cards"


def parse_card(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise StlBenchError(f"model card {path} has no YAML front matter (a block between '---' lines at the top)")
    front, body = text[4:].split("\n---\n", 1)
    try:
        card = yaml.safe_load(front) or {}
    except yaml.YAMLError as exc:
        raise StlBenchError(f"model card {path} has malformed front matter: {exc}") from None
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise StlBenchError(f"model card {path} lacks {', '.join(missing)}")
    unknown = set(card["reported"] or {}) - set(REPORTED_METRICS)
    if unknown:
        raise StlBenchError(f"model card {path} reports unknown metrics {sorted(unknown)}; use {REPORTED_METRICS}")
    card["reported"] = dict(card["reported"] or {})
    card["body"] = body.strip()
    card["path"] = str(path)
    return card


def load_cards(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """All cards by name; an empty dict where the folder is absent (a `$STL_BENCH_MODELS_DIR` that is not there)."""
    directory = directory or cards_dir()
    if not directory.is_dir():
        return {}
    return {card["name"]: card for card in map(parse_card, sorted(directory.glob("*.md"))) if card}


def cards_for_arch(arch: str, directory: Path | None = None) -> list[dict[str, Any]]:
    return [c for c in load_cards(directory).values() if c["arch"] == arch]


def get_card(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The card called `name`; an unknown name raises with the closest card names."""
    cards = load_cards(directory)
    if name in cards:
        return cards[name]
    close = difflib.get_close_matches(name, list(cards), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `stl-bench models` lists the cards"
    raise StlBenchError(f"no model card '{name}'{hint}")


def card_file_name(card: dict[str, Any]) -> str:
    """The released checkpoint's file name: the card's `file`, or `<name>.pth.tar` where the host gives none.

    The FAN release assets have real names; the STL files are Google-Drive links whose
    card says only "shared-drive file (<id>)", so they are cached (and mirrored) under
    the card's name. Downloads keep this name, which is how `card_for_file` finds the
    card of a cached file.
    """
    file = str(card.get("file") or "")
    if file.endswith(CHECKPOINT_SUFFIXES) and "/" not in file and " " not in file:
        return file
    return f"{card['name']}.pth.tar"


def card_for_file(path: Path | str, directory: Path | None = None) -> dict[str, Any] | None:
    """The card whose released file has this checkpoint's name (downloads keep it)."""
    name = Path(path).name
    return next((c for c in load_cards(directory).values() if card_file_name(c) == name), None)


def _data_tag(text: str) -> str:
    words = text.strip().lower()
    return _DATA_TAGS.get(words) or re.sub(r"[^a-z0-9]+", "_", words).strip("_")


def pretrained_tag(card: dict[str, Any]) -> str:
    """The timm pretrained tag of a card: `<arch>.<tag>` names its weights in timm.

    A card's own `tag` wins; otherwise it is derived the way timm names tags: the
    source (`fan`, `stl`, `stl_labeler`), the training data (`in1k`,
    `in22k_ft_in1k` for "ImageNet-22K, then ImageNet-1K") and the input size when it
    is not 224, e.g. `fan_base_16_p4_hybrid.fan_in22k_ft_in1k_384`.
    """
    if card.get("tag"):
        return str(card["tag"])
    role = card.get("role", "classifier")
    source = {"student": "stl", "labeler": "stl_labeler"}.get(role, "fan")
    data = [_data_tag(part) for part in str(card.get("training_data") or "").split(", then ")]
    if not all(data):
        raise StlBenchError(f"model card {card.get('path', card['name'])} needs `training_data` (or a `tag`) "
                            "to name its timm pretrained tag")
    size = int(card["input_size"][-1])
    return f"{source}_{'_ft_'.join(data)}" + ("" if size == 224 else f"_{size}")


def card_for_tag(arch: str, tag: str | None, directory: Path | None = None) -> dict[str, Any] | None:
    """The card registered in timm as `<arch>.<tag>`, if any."""
    for card in load_cards(directory).values():
        if card["arch"] == arch and tag:
            try:
                if pretrained_tag(card) == tag:
                    return card
            except StlBenchError:
                continue
    return None
