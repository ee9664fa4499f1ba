"""Model cards: one Markdown file per released official checkpoint, in `stl_bench/cards/`.

Each card opens with YAML front matter (architecture, input config, reported numbers,
parameter count, download link) so that people read the same file that
`stl-bench models` and `stl-bench leaderboard` parse. Nothing is downloaded. The cards
are package data (the top-level `models/` folder only points here), so a plain wheel
install finds them too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from stl_bench.errors import StlBenchError

REPORTED_METRICS = ("in1k_top1", "inc_acc", "inc_mce", "in_a", "in_r")
REQUIRED_FIELDS = ("name", "title", "arch", "input_size", "params", "reported", "url")


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


def card_for_file(path: Path | str, directory: Path | None = None) -> dict[str, Any] | None:
    """The card whose released `file` has this checkpoint's name (downloads keep it)."""
    name = Path(path).name
    return next((c for c in load_cards(directory).values() if c.get("file") == name), None)
