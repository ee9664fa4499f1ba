"""Weather corruptions: snow, frost, fog.

- snow: ImageNet-C's recipe step by step: a Gaussian noise layer, `clipped_zoom`,
  threshold, 8-bit quantisation, ImageMagick motion blur at an angle in [-135, -45)
  (our port of ImageMagick's algorithm, quantised to 8 bits as ImageMagick did), the
  greyish wash `max(x, gray * 1.5 + 0.5)` with OpenCV's gray weights, then the layer
  and its 180-degree rotation added.
- frost: the original five frost photographs (see assets/README.md), one chosen per
  image (`randint(5)`, so the two identical files frost2/frost3 make that texture twice
  as likely, as in the original), a random crop, `c0 * x + c1 * frost` on 0..255 values.
  Images larger than a texture are not in ImageNet-C; there the texture is first
  enlarged (bilinear) to cover the image with a 10% margin, as `imagecorruptions` does.
- fog: the diamond-square plasma fractal (mapsize 256 for 224 px, in general the next
  power of two), batched over samples; the blend with the image's global maximum.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stl_bench.data.corruptions import _ops
from stl_bench.data.corruptions._ops import from_unit, to_unit
from stl_bench.data.corruptions._rng import SampleRNG

# (noise mean, noise std, zoom, threshold, blur radius, blur sigma, image weight)
SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
SNOW_ANGLE = (-135.0, -45.0)
# (image weight, frost weight)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
# The original's file list indexed by randint(5); frost2 and frost3 have identical pixels.
FROST_FILES = ("frost1.png", "frost2.png", "frost2.png", "frost4.jpg", "frost5.jpg")
# (fog strength, wibble decay of the plasma fractal)
FOG = ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))

ASSETS = Path(__file__).parent / "assets"
# OpenCV's RGB2GRAY weights.
_GRAY = (0.299, 0.587, 0.114)


def snow(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    mean, std, zoom, threshold, radius, sigma, weight = SNOW[severity - 1]
    b, _, h, w = images.shape
    x = to_unit(images)
    layer = rng.normal((1, h, w), mean=mean, std=std).double()
    layer = _ops.clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer8 = torch.trunc(layer.clamp(0, 1) * 255).to(torch.float32)  # PIL 'L' image
    angles = rng.uniform((), *SNOW_ANGLE, dtype=torch.float64)
    streaks = _ops.imagemagick_to_uint8(_ops.motion_blur(layer8, radius, sigma, angles)).double() / 255.0
    gray = _GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]
    x = weight * x + (1 - weight) * torch.maximum(x, gray * 1.5 + 0.5)
    return from_unit(x.to(torch.float64) + streaks + torch.flip(streaks, dims=(-2, -1)))


@functools.lru_cache(maxsize=4)
def _frost_textures(device: str) -> tuple[torch.Tensor, ...]:
    from PIL import Image

    textures = {}
    for name in set(FROST_FILES):
        if not (ASSETS / name).is_file():
            raise FileNotFoundError(
                f"frost texture {ASSETS / name} is missing: the package was installed without its "
                "data files (stl_bench/data/corruptions/assets/*); reinstall it from the source tree"
            )
        with Image.open(ASSETS / name) as img:
            arr = np.asarray(img.convert("RGB"))
        textures[name] = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().to(device)
    return tuple(textures[name] for name in FROST_FILES)


def _cover(texture: torch.Tensor, h: int, w: int) -> torch.Tensor:
    th, tw = texture.shape[-2:]
    if th > h and tw > w:
        return texture
    scale = max(h / th, w / tw) * 1.1
    size = (int(math.ceil(th * scale)), int(math.ceil(tw * scale)))
    big = F.interpolate(texture[None].float(), size=size, mode="bilinear", align_corners=False)
    return big[0].round().clamp(0, 255).to(torch.uint8)


def frost(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    a, c = FROST[severity - 1]
    b, _, h, w = images.shape
    textures = [_cover(t, h, w) for t in _frost_textures(str(images.device))]
    choice = rng.randint(0, len(textures)).tolist()
    chosen = [textures[i] for i in choice]
    # np.random.randint(0, th - 224): the start is strictly below th - size.
    row0 = rng.randint(0, [t.shape[-2] - h for t in chosen]).tolist()
    col0 = rng.randint(0, [t.shape[-1] - w for t in chosen]).tolist()
    crops = torch.stack([t[:, r:r + h, q:q + w] for t, r, q in zip(chosen, row0, col0)])
    mixed = a * images.to(torch.float64) + c * crops.to(torch.float64)
    return torch.trunc(mixed.clamp(0, 255)).to(torch.uint8)


def plasma_fractal(rng: SampleRNG, mapsize: int, wibble_decay: float) -> torch.Tensor:
    """ImageNet-C's diamond-square height map, [B, mapsize, mapsize] in [0, 1].

    Each fill draws uniform(-wibble, wibble) for the new points of every sample; the
    array arithmetic (rolls of the coarser grids) is the original's, with a batch axis.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal needs a power-of-two size, got {mapsize}")
    b = len(rng)
    grid = torch.zeros(b, mapsize, mapsize, dtype=torch.float64, device=rng.device)
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        # Drawn in float32 (float64 draws cost 5x more), used in float64 like NumPy.
        return total / 4 + wibble * rng.uniform(total.shape[1:], -wibble, wibble).double()

    while step >= 2:
        half = step // 2
        corners = grid[:, 0:mapsize:step, 0:mapsize:step]
        square = corners + torch.roll(corners, -1, dims=1)
        square = square + torch.roll(square, -1, dims=2)
        grid[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(square)

        centres = grid[:, half:mapsize:step, half:mapsize:step]
        corners = grid[:, 0:mapsize:step, 0:mapsize:step]
        left = (centres + torch.roll(centres, 1, dims=1)) + (corners + torch.roll(corners, -1, dims=2))
        grid[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = (centres + torch.roll(centres, 1, dims=2)) + (corners + torch.roll(corners, -1, dims=1))
        grid[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibble_decay

    flat = grid.reshape(b, -1)
    grid = grid - flat.amin(1).view(b, 1, 1)
    return grid / grid.reshape(b, -1).amax(1).view(b, 1, 1)


def fog(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    strength, decay = FOG[severity - 1]
    b, _, h, w = images.shape
    x = to_unit(images, torch.float64)
    max_val = x.reshape(b, -1).amax(1).view(b, 1, 1, 1)
    mapsize = 1 << max(max(h, w) - 1, 1).bit_length()
    x = x + strength * plasma_fractal(rng, mapsize, decay)[:, None, :h, :w]
    return from_unit(x * max_val / (max_val + strength))
