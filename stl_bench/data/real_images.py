"""A few real images at a model's input size, for checks that random noise cannot make.

An export's parity check and the benchmark's agreement figures compare two backends'
answers; on Gaussian noise a model's top-1 is near arbitrary and agreement says little,
while natural images (or handwritten strokes on a flat background) exercise it the way
real data does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stl_bench.errors import StlBenchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


def real_images(data_config: dict[str, Any], count: int, folder: Path | str | None = None) -> torch.Tensor:
    """`count` normalised real images at the model's input size.

    From `folder` (any image files below it, sorted) when given, else scikit-learn's
    bundled handwritten digits (no download): natural strokes on a flat background
    exercise a model far more like real data than Gaussian noise does.
    """
    from timm.data import create_transform

    transform = create_transform(
        input_size=tuple(data_config["input_size"]), is_training=False, crop_pct=data_config.get("crop_pct", 1.0),
        interpolation=data_config.get("interpolation", "bicubic"), mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )
    pictures = _folder_pictures(Path(folder), count) if folder is not None else _digit_pictures(count)
    while len(pictures) < count:  # a small folder is cycled
        pictures.append(pictures[len(pictures) % max(1, len(pictures))])
    return torch.stack([transform(p) for p in pictures[:count]])


def _folder_pictures(folder: Path, count: int) -> list[Any]:
    from stl_bench.data.folders import load_rgb

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise StlBenchError(f"image folder {folder} holds no image files; pass a folder of .jpg/.png images")
    return [load_rgb(p) for p in files[:count]]


def _digit_pictures(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images
    pictures = []
    for i in range(count):
        gray = (digits[i % len(digits)] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        pictures.append(Image.fromarray(gray, mode="L").resize((32, 32), Image.Resampling.BICUBIC).convert("RGB"))
    return pictures
