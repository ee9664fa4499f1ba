"""Result pictures written as files, one fresh folder per request.

Gradio 6 caches a returned PIL image by rewriting `<cache>/<content hash>/image.png` in
place on every request, so two concurrent requests for the same picture truncate the file
while the first client is still downloading it (seen here: "Too little data for declared
Content-Length" with 20 concurrent requests on one example). A returned *file* is
instead copied into the cache only if absent, under a temporary name then renamed. So the
app writes its PNGs itself (atomically, like every file stl-bench writes) and returns
paths. Request folders older than `max_age_s` are removed as new requests arrive.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

from stl_bench.io import atomic_path

log = logging.getLogger(__name__)


class OutputFiles:
    """Writes each request's pictures into its own folder under `root` (a temp dir by default)."""

    def __init__(self, root: Path | None = None, max_age_s: float = 600.0) -> None:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="stl_bench_app_"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)  # ours alone: remove it on exit
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s

    def save(self, images: dict[str, Image.Image | None]) -> dict[str, str | None]:
        """PNG files for the named pictures (None stays None); returns name -> path."""
        self.prune()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        paths: dict[str, str | None] = {}
        for name, image in images.items():
            if image is None:
                paths[name] = None
                continue
            final = folder / f"{name}.png"
            with atomic_path(final, suffix=".png") as tmp:
                # level 3: a quarter of the default's encode time for these flat-colour maps
                image.save(tmp, format="PNG", compress_level=3)
            paths[name] = str(final)
        return paths

    def prune(self) -> None:
        """Remove request folders older than `max_age_s` (Gradio has copied them by then)."""
        cutoff = time.time() - self.max_age_s
        try:
            folders = list(self.root.iterdir())
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            return
        removed = 0
        for folder in folders:
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:  # a concurrent request pruned it first
                continue
        if removed:
            log.debug("removed %d result folders older than %.0f s from %s", removed, self.max_age_s, self.root)
