"""Images from untrusted sources: checked from the header before any pixel is decoded.

Uploads to the app and requests to the server can be anything: text, empty bodies,
decompression bombs, slivers. `open_checked` opens lazily (Pillow reads only the header),
refuses what should not be decoded with a `StlBenchError` that names the input and the
fix, and hands back the unopened-pixel image; `decode_rgb` then decodes it exactly as the
data loaders do, so a served or uploaded image reaches the model as the same pixels an
evaluation folder would give it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from stl_bench.errors import StlBenchError

SUPPORTED = "PNG, JPEG, WebP, BMP, GIF or TIFF"


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may be: decoded pixels, aspect ratio, shortest side."""

    max_pixels: int = 40_000_000
    max_aspect: float = 20.0  # beyond this a centre crop shows a sliver of the image
    min_side: int = 1


class ImageRefused(StlBenchError):
    """An untrusted image refused before or while decoding; `reason` says which kind:
    "unreadable" (not an image, truncated, corrupt), "too_large" (pixels) or "shape"
    (empty, too small a side, too extreme an aspect ratio)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def open_checked(source: str | BinaryIO, name: str, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open (header only) and check an untrusted image; the caller closes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRefused(f"{name} is too large to decode safely (over {limits.max_pixels:,} pixels)",
                               "too_large") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageRefused(f"{name} is not an image file that can be read ({exc.__class__.__name__}); "
                               f"send a {SUPPORTED} image", "unreadable") from None
    w, h = img.size
    problem = None
    if w < 1 or h < 1:
        problem = f"{name} has no pixels ({w}x{h})", "shape"
    elif w * h > limits.max_pixels:
        problem = (f"{name} is {w}x{h} = {w * h:,} pixels, over the limit of {limits.max_pixels:,}; "
                   "downscale it first", "too_large")
    elif min(w, h) < limits.min_side:
        problem = f"{name} is {w}x{h}, smaller than {limits.min_side} pixels on a side; send a larger image", "shape"
    elif max(w, h) / min(w, h) > limits.max_aspect:
        problem = (f"{name} is {w}x{h}, an aspect ratio over {limits.max_aspect:g}:1; the model's centre crop "
                   "would show a sliver of it. Crop it closer to square first", "shape")
    if problem:
        img.close()
        raise ImageRefused(*problem)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """The loaders' decoding: read the whole file now (truncation raises here), then RGB."""
    img.load()
    return img.convert("RGB")


def decode_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """`to_rgb` for an untrusted image: a broken file becomes a message, not a traceback."""
    try:
        return to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused(f"{name} could not be decoded ({exc}); the file may be truncated or corrupt",
                           "unreadable") from None
