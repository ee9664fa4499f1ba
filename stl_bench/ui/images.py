"""Untrusted image files in, a model-ready batch and the crop it shows out.

Uploads can be anything: text, empty files, decompression bombs, 16-bit scans, CMYK
JPEGs, GIFs, panoramas. Everything a user can get wrong becomes a `StlBenchError` whose
message names the file and what to do; everything valid becomes RGB through the one
decoder the data loaders and the server use (`data.decode.to_rgb`), so the app sees the
pixels an evaluation folder would give the model, and the decoder's notes ("16-bit image
scaled to 8 bits", "alpha channel dropped") tell the user what changed on the way.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from stl_bench.data.decode import SUPPORTED, ImageLimits, decode_rgb, open_checked, to_rgb
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # decoded pixels; the header is checked before any decoding
MAX_ASPECT = 20.0  # beyond this the centre crop would show a sliver of the image
WORK_SIDE = 2048  # larger images are downscaled first: no model here needs more

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass
class LoadedImage:
    """An upload decoded to RGB, with its original size and what was changed on the way."""

    image: Image.Image
    original_size: tuple[int, int]
    original_mode: str
    notes: list[str] = field(default_factory=list)


@dataclass
class PreparedInput:
    """A runner's input batch `[1, 3, H, W]` and the un-normalised crop it was made from."""

    batch: torch.Tensor
    crop: Image.Image


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT,
               work_side: int = WORK_SIDE) -> LoadedImage:
    """Decode an uploaded file to RGB, refusing what cannot or should not be decoded.

    The size is read from the header and checked before decoding, so a small file that
    claims a huge image costs nothing. JPEGs are decoded at reduced scale when large
    (`draft`), and anything larger than `work_side` is downscaled before preprocessing.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise StlBenchError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise StlBenchError(f"{name} is empty (0 bytes); upload a {SUPPORTED} image")
    img = open_checked(path, name, ImageLimits(max_pixels=max_pixels, max_aspect=max_aspect))
    with img:
        w, h = img.size
        notes: list[str] = []
        mode = img.mode
        if img.format == "JPEG" and max(w, h) > 2 * work_side:
            img.draft("RGB", (work_side, work_side))  # decode at 1/2, 1/4 or 1/8 scale
        rgb = decode_rgb(img, name, notes)
    if max(rgb.size) > work_side:
        rgb.thumbnail((work_side, work_side), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {w}x{h} to {rgb.width}x{rgb.height} first")
    if notes:
        log.debug("%s (%s, %dx%d): %s", name, mode, w, h, "; ".join(notes))
    return LoadedImage(image=rgb, original_size=(w, h), original_mode=mode, notes=notes)


def crop_box(size: tuple[int, int], data_config: dict[str, Any]) -> tuple[float, float, float, float]:
    """The region of an image (w, h) that timm's eval transform turns into the model input.

    timm resizes so the image covers `input / crop_pct` (shorter side for square inputs)
    and centre-crops `input`; mapped back to the original image that is one centred box.
    """
    _, out_h, out_w = data_config["input_size"]
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    w, h = size
    if data_config.get("crop_mode") == "squash":
        # squash resizes without keeping the aspect, then crops the centre crop_pct
        bw, bh = w * crop_pct, h * crop_pct
    else:
        scale = max(math.floor(out_h / crop_pct) / h, math.floor(out_w / crop_pct) / w)
        bw, bh = out_w / scale, out_h / scale
    left, top = (w - bw) / 2.0, (h - bh) / 2.0
    return left, top, left + bw, top + bh


def prepare(image: Image.Image, data_config: dict[str, Any]) -> PreparedInput:
    """Resize, centre-crop and normalise an RGB image per a runner's timm data config.

    Cropping the box out of the original in one `resize(box=...)` equals resize-then-crop
    (Pillow filters the box with the same antialiasing) without building a huge
    intermediate image for panoramas.
    """
    _, out_h, out_w = data_config["input_size"]
    resample = _RESAMPLE.get(str(data_config.get("interpolation", "bilinear")), Image.Resampling.BILINEAR)
    crop = to_rgb(image).resize((out_w, out_h), resample, box=crop_box(image.size, data_config))
    mean = np.asarray(data_config.get("mean", IMAGENET_DEFAULT_MEAN), dtype=np.float32)
    std = np.asarray(data_config.get("std", IMAGENET_DEFAULT_STD), dtype=np.float32)
    arr = (np.asarray(crop, dtype=np.float32) / 255.0 - mean) / std
    batch = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    return PreparedInput(batch=batch, crop=crop)
