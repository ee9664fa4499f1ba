"""The built-in demo data: scikit-learn's handwritten digits as an ImageFolder tree.

The demo has to run the real loading code (folder scan, PIL decode, timm transforms),
so the 1,797 bundled 8x8 digit images are written once as PNG files:
`<root>/train/<digit>/*.png` and `<root>/val/<digit>/*.png`, a stratified 80/20 split
with a fixed seed, upscaled to 32x32 RGB (the tiny FAN's input size). The data ship
inside scikit-learn, so nothing is downloaded.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from stl_bench.io import atomic_folder

log = logging.getLogger(__name__)

ENV_VAR = "STL_BENCH_DATA"
DEMO_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0
CLASS_NAMES = [str(d) for d in range(10)]
# Written last inside the tree: its presence means the tree is complete.
_MARKER = "DEMO_COMPLETE"


def default_demo_root() -> Path:
    """`$STL_BENCH_DATA/demo_digits` when the variable is set, else the user cache."""
    base = os.environ.get(ENV_VAR)
    if base:
        return Path(base).expanduser() / "demo_digits"
    return Path.home() / ".cache" / "stl_bench" / "demo_digits"


def _digit_to_rgb(pixels: np.ndarray) -> Image.Image:
    # load_digits stores ink in 0..16 on a black background; scale to 0..255 and
    # upscale with bicubic so strokes stay smooth at 32x32 (nearest would give blocks).
    gray = Image.fromarray((pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), mode="L")
    return gray.resize((DEMO_SIZE, DEMO_SIZE), Image.Resampling.BICUBIC).convert("RGB")


def _write_tree(root: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    for split, split_idx in (("train", train_idx), ("val", val_idx)):
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in sorted(split_idx.tolist()):
            label = int(digits.target[i])
            _digit_to_rgb(digits.images[i]).save(root / split / str(label) / f"digit_{i:04d}.png")
    (root / _MARKER).write_text(f"{len(train_idx)} train, {len(val_idx)} val\n")


def ensure_demo_data(root: Path | str | None = None) -> Path:
    """Return the demo tree's root, writing it first if it is not there yet.

    Idempotent and safe against a killed or concurrent writer: the tree is built in a
    temporary folder beside `root` and renamed into place, so `root` is either absent or
    complete (`stl_bench.io.atomic_folder`; a half-written temporary folder is ignored).
    """
    root = Path(root).expanduser() if root is not None else default_demo_root()
    if (root / _MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        # A tree without the marker is not ours (or predates it): never overwrite it.
        from stl_bench.errors import StlBenchError

        raise StlBenchError(
            f"{root} exists but is not a complete demo data folder; remove it or pass another location"
        )
    try:
        with atomic_folder(root) as tmp:
            log.info("writing the demo digits data set to %s", root)
            _write_tree(tmp)
    except OSError:
        # Another process finished first (the rename found its full tree): ours is redundant.
        if (root / _MARKER).is_file():
            return root
        raise
    return root
