"""The one image decoder: any Pillow image to the RGB pixels the model sees.

Every path that turns a file into model input goes through `to_rgb`: evaluation,
training and corruption folders (`data.folders.load_rgb`), the app's uploads, the
server's request bodies (`open_checked` + `decode_rgb`), calibration images and the
benchmarks. So an image gives the same pixels wherever it enters.

The mapping, by Pillow mode:

- 8-bit modes (1, L, LA, P with or without transparency, PA, RGB, RGBA, CMYK, YCbCr,
  HSV) are `Image.convert("RGB")`, bit for bit what timm's and torchvision's loaders
  give, so ImageNet evaluation numbers do not move (tested). Alpha is dropped, not
  composited over a background, as those loaders do. CMYK uses Pillow's profile-free
  formula and embedded ICC profiles are ignored, again as those loaders do. YCbCr and
  HSV go through Pillow's own colour conversions, which are the proper ones (checked
  against the formulas in the tests). An RGB image comes back as it is, no copy.
- LAB goes through littlecms (CIE L*a*b* D50 to sRGB). Pillow 12's `convert("RGB")`
  gives the same pixels, but older versions the project allows copied the L, a, b
  channels into R, G, B.
- 16-bit integer modes (I;16, I;16L, I;16B, I;16N) are scaled by their bit depth,
  value / 257 rounded (0..65535 onto 0..255), never a per-image min-max stretch: a dark
  scan stays dark and two files of one scene keep their relative brightness.
  `convert("RGB")` clips them at 255 instead, which leaves a few grey levels.
- Mode I (32-bit signed) carries no bit depth. 16-bit PGM files open as I with values
  in 0..65535, so values in that range are scaled as 16-bit data, exactly as I;16;
  values outside it (signed 16-bit or 32-bit TIFFs) have no known black or white
  level, so the image's own min..max is stretched onto 0..255.
- Mode F (32-bit float): values within [0, 1] follow the float-image convention
  (1.0 is white, as in PFM and float TIFF files) and are multiplied by 255; any other
  range has no white level and is stretched from its min..max. NaN maps to black, +inf
  to white, -inf to black; a constant image outside [0, 1] is black (it has no contrast
  to stretch).
- Multi-frame files (GIF, APNG, multi-page TIFF, MPO) give their first frame.
- EXIF orientation is applied, here, once for every caller: the tag is part of the
  picture people see, and a photo taken upright should reach the model upright. The
  standard torchvision/timm folder loaders ignore the tag, so a tagged file inside a
  data set gives other pixels here than in the official pipeline. ImageNet's JPEGs
  carry no orientation tags as far as we know (no ImageNet file is available offline to
  check; the packaged frost textures and common sample images carry none), so standard
  benchmark numbers are unaffected. The result carries no orientation tag, so decoding
  a decoded image again changes nothing.

Images from untrusted sources (app uploads, request bodies) are first checked from the
header: `open_checked` opens lazily (Pillow reads only the header), refuses what should
not be decoded (text, empty bodies, decompression bombs, slivers) with an
`ImageRefused` that names the input and the fix, and hands back the undecoded image;
`decode_rgb` then runs `to_rgb` on it with decoding errors turned into messages.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stl_bench.errors import StlBenchError

SUPPORTED = "PNG, JPEG, WebP, BMP, GIF or TIFF"

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA = frozenset({"LA", "PA", "RGBA", "RGBa"})
_ORIENTATION = 0x0112  # EXIF tag 274


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


def to_rgb(img: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """The RGB pixels the model sees for `img` (see the module docstring for the mapping).

    Reads the whole first frame now, so a truncated file raises here (OSError, as
    Pillow does), not later inside a transform. `notes`, when given, receives one short
    line per change a user might want to know about (the app shows them); the data
    loaders pass none and pay nothing for them.
    """
    if img.tell() != 0:
        img.seek(0)
    if notes is not None and getattr(img, "n_frames", 1) > 1:  # counting frames may read the file
        notes.append(f"first of {img.n_frames} frames used")
    img.load()
    orientation = _orientation(img)
    if orientation != 1:
        # exif_transpose also removes the tag from the copy, so a second decode is a no-op.
        img = ImageOps.exif_transpose(img)
        if notes is not None:
            notes.append(f"turned upright per its EXIF orientation ({orientation})")
    return _mode_to_rgb(img, notes)


def decode_rgb(img: Image.Image, name: str = "image", notes: list[str] | None = None) -> Image.Image:
    """`to_rgb` for an untrusted image: a broken file becomes a message, not a traceback."""
    try:
        return to_rgb(img, notes)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused(f"{name} could not be decoded ({exc}); the file may be truncated or corrupt",
                           "unreadable") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8), 1 when absent or unreadable.

    A malformed EXIF block must not make an otherwise good picture unreadable (the
    standard loaders never look at it), so any parsing failure counts as "no tag".
    """
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on bad blocks
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _mode_to_rgb(img: Image.Image, notes: list[str] | None) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "LAB":
        if notes is not None:
            notes.append("LAB converted to sRGB")
        return _lab_to_rgb(img)
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        gray, note = _gray_to_uint8(np.asarray(img), mode)
        if notes is not None:
            notes.append(note)
        return Image.fromarray(gray).convert("RGB")
    if notes is not None:
        notes.extend(_conversion_notes(img))
    return img.convert("RGB")


def _conversion_notes(img: Image.Image) -> list[str]:
    mode = img.mode
    notes = []
    if mode in ("1", "L", "LA"):
        notes.append("grayscale converted to RGB")
    elif mode not in ("P", "PA", "RGBA", "RGBa"):
        notes.append(f"{mode} converted to RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (as the training loader does)")
    return notes


def _gray_to_uint8(arr: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """One-channel 16-bit, 32-bit integer or float pixels onto 0..255, and what was done."""
    if mode in _SIXTEEN_BIT:
        return _sixteen_bit(arr), "16-bit image scaled to 8 bits"
    if mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return _sixteen_bit(arr), "16-bit image scaled to 8 bits"
        stretched = np.rint(_stretched(arr, lo, hi)).astype(np.uint8)
        return stretched, f"I image with values {lo}..{hi} stretched to 8 bits (no white level known)"
    finite = np.isfinite(arr)
    values = arr if finite.all() else arr[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if 0.0 <= lo and hi <= 1.0:
        scaled, note = arr.astype(np.float64) * 255.0, "floating-point image (0..1) scaled to 8 bits"
    else:
        scaled = _stretched(arr, lo, hi)
        note = f"F image with values {lo:g}..{hi:g} stretched to 8 bits (no white level known)"
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8), note


def _sixteen_bit(arr: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers: 257 * 255 = 65535, so 0 -> 0 and 65535 -> 255 exactly.
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretched(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """min..max onto 0..255 as float64 (exact for every int32; float32 ranges cannot overflow)."""
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float64)  # constant: no contrast to stretch
    return (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    from PIL import ImageCms

    return ImageCms.applyTransform(img, _lab_transform())


@functools.lru_cache(maxsize=1)
def _lab_transform():
    # Imported here: littlecms is needed only for the rare LAB file.
    from PIL import ImageCms

    return ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
