"""Released checkpoints on this machine: where they are cached, how they get there, how they are checked.

A model card names a released checkpoint; `fetch(card)` returns its file in the cache,
downloading it once (`fan/download.py`) when it is not there. The cache folder is
`$STL_BENCH_CACHE`, else torch hub's `checkpoints` folder (`torch.hub.get_dir()`, where
timm and torchvision keep their weights too). Files keep their release names (the
Drive-hosted STL files, which have none, are `<card name>.pth.tar`), so a file copied
in by hand is found as well.

Beside each file, `<file>.json` records its size and SHA-256 when it landed. Every use
compares the size (a stat, free); `verify=True` re-hashes the file (seconds for the
large ones). Either mismatch is an error that says how to fetch it again: a changed
checkpoint is never loaded silently.

Air-gapped sites set `STL_BENCH_WEIGHTS_MIRROR` (or `--mirror`) to a base URL that
serves every file as `<mirror>/<card name>/<file name>`, an HTTP server or a `file://`
folder laid out the same way; it replaces GitHub and Google Drive entirely.
`STL_BENCH_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) never downloads: a file that is not
cached is an error naming the command that would fetch it.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from stl_bench.errors import StlBenchError
from stl_bench.fan.cards import card_file_name, get_card, load_cards
from stl_bench.fan.checkpoint import file_sha256
from stl_bench.fan.download import direct_url, download, part_path
from stl_bench.io import atomic_path, ensure_writable_folder, write_text

log = logging.getLogger(__name__)

CACHE_ENV = "STL_BENCH_CACHE"
MIRROR_ENV = "STL_BENCH_WEIGHTS_MIRROR"
OFFLINE_ENVS = ("STL_BENCH_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
# What a checkpoint argument may look like besides a card name: these are never card names.
_FILE_SUFFIXES = (".pth", ".tar", ".pt", ".safetensors", ".onnx", ".engine", ".plan", ".trt", ".bin")


def cache_dir() -> tuple[Path, str]:
    """(the cache folder, where that choice came from)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser(), f"${CACHE_ENV}"
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints", "torch hub's cache; set $STL_BENCH_CACHE to move it"


def is_offline() -> bool:
    for name in OFFLINE_ENVS:
        if os.environ.get(name):
            return os.environ[name].strip().lower() in _TRUE
    return False


def mirror_base(mirror: str | None = None) -> str | None:
    """The mirror base URL: `mirror` if given, else `$STL_BENCH_WEIGHTS_MIRROR`, else none."""
    base = mirror or os.environ.get(MIRROR_ENV) or None
    return base.rstrip("/") if base else None


def source_url(card: dict[str, Any], mirror: str | None = None) -> str:
    """Where the card's file is fetched from: `<mirror>/<card name>/<file name>`, else the card's url."""
    base = mirror_base(mirror)
    if base:
        return f"{base}/{card['name']}/{card_file_name(card)}"
    return direct_url(str(card["url"]))


def cache_path(card: dict[str, Any], cache: Path | None = None) -> Path:
    return (cache or cache_dir()[0]) / card_file_name(card)


def index_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _download_hint(card: dict[str, Any]) -> str:
    return f"stl-bench models --download {card['name']}"


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(index_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("size"), int) else None


def _write_index(path: Path, card: dict[str, Any], size: int, sha256: str, url: str) -> None:
    record = {"card": card["name"], "file": path.name, "size": size, "sha256": sha256, "url": url,
              "license": card.get("license", ""), "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text(index_path(path), json.dumps(record, indent=1) + "\n")


def check_cached(card: dict[str, Any], path: Path, verify: bool = False) -> Path:
    """`path` if it is the file its index records (size always, SHA-256 with `verify`); else raise.

    A file without an index (copied into the cache by hand, or fetched by torch hub) is
    indexed as it is, once; in a read-only cache it is used without one.
    """
    record = _read_index(path)
    size = path.stat().st_size
    if record is None:
        log.info("indexing %s, found in the cache without a record", path)
        try:
            _write_index(path, card, size, file_sha256(path), "")
        except StlBenchError as exc:
            log.warning("%s is used without a size/SHA-256 record: %s", path, exc)
        return path
    fix = f"delete {path} and run `{_download_hint(card)}`"
    if size != record["size"]:
        raise StlBenchError(f"cached {path} is {size} bytes but {index_path(path).name} records {record['size']}: "
                            f"it was changed or cut short; {fix}")
    if verify and file_sha256(path) != record.get("sha256"):
        raise StlBenchError(f"cached {path} does not have the SHA-256 its index records: it was changed; {fix}")
    return path


def cached_file(card: dict[str, Any], cache: Path | None = None, verify: bool = False) -> Path | None:
    """The card's checked file in the cache, or None when it is not there."""
    path = cache_path(card, cache)
    return check_cached(card, path, verify) if path.is_file() else None


def fetch(card: dict[str, Any] | str, *, mirror: str | None = None, progress: bool | None = None,
          verify: bool = False, cache: Path | None = None) -> Path:
    """The card's checkpoint in the cache, downloaded first if needed (never when offline).

    `progress`: a tqdm bar on stderr; by default only when stderr is a terminal.
    """
    card = get_card(card) if isinstance(card, str) else card
    cache = Path(cache) if cache else cache_dir()[0]
    hit = cached_file(card, cache, verify)
    if hit is not None:
        return hit
    final = cache_path(card, cache)
    if is_offline():
        raise StlBenchError(f"model card {card['name']} is not in the cache ({final}) and downloads are off "
                            f"({'/'.join(OFFLINE_ENVS)}); on a machine with network run `{_download_hint(card)}` "
                            "and copy the file there")
    ensure_writable_folder(cache, "weights cache")
    url = source_url(card, mirror)
    log.info("downloading %s from %s to %s (licence: %s)", card["name"], url, final, card.get("license", "see card"))
    part = download(url, final, progress=sys.stderr.isatty() if progress is None else progress)
    if part == final:
        return check_cached(card, final, verify)
    size, sha256 = part.stat().st_size, file_sha256(part)
    _write_index(final, card, size, sha256, url)  # the index first: a cached file always has one
    with atomic_path(final) as tmp:
        os.replace(part, tmp)
    log.info("cached %s (%d bytes, sha256 %s)", final, size, sha256[:16])
    return final


def cache_status(card: dict[str, Any], cache: Path | None = None) -> str:
    """What the cache holds for a card, in a few words (for `stl-bench models`); never raises."""
    path = cache_path(card, cache)
    if path.is_file():
        record = _read_index(path)
        size = path.stat().st_size
        if record is not None and record["size"] != size:
            return "changed"
        return f"{size / 1e6:.1f} MB"
    part = part_path(path)
    return f"partial {part.stat().st_size / 1e6:.1f} MB" if part.is_file() else ""


def _could_be_card(text: str) -> bool:
    return bool(text) and "://" not in text and "/" not in text and os.sep not in text \
        and not text.lower().endswith(_FILE_SUFFIXES)


def resolve_source(source: str | Path | None, mirror: str | None = None) -> str | Path | None:
    """A model card's name as its cached checkpoint (fetched unless offline); any other source unchanged.

    The one way every command that takes a checkpoint (eval, export, bench, app, serve,
    label, train --teacher) also takes a card name. An existing file wins over a card of
    the same name; a near miss of a card name that is no file is an error suggesting
    the card.
    """
    if source is None:
        return None
    text = str(source)
    if not _could_be_card(text) or Path(text).exists():
        return source
    cards = load_cards()
    if text in cards:
        return fetch(cards[text], mirror=mirror)
    close = difflib.get_close_matches(text, list(cards), n=3, cutoff=0.8)
    if close:
        raise StlBenchError(f"'{text}' is neither a file nor a model card; did you mean {', '.join(close)}?")
    return source
