"""Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression,
saturate (extra).

- brightness / saturate: scikit-image's HSV round trip (`_color`), V + c / S * a + b.
- contrast: per-channel mean kept, deviations scaled by c.
- elastic_transform: OpenCV `getAffineTransform` from three jittered points and
  `warpAffine` (bilinear on OpenCV's 1/32-pixel fixed-point grid, reflect-101 border),
  then displacement fields of uniform noise smoothed by scikit-image `gaussian`
  ('reflect' border, truncate 3) and `map_coordinates` (order 1, 'reflect'). The
  parameters are the original's `244 * k` values ("244 should have been 224, but
  ultimately nothing is incorrect"), in pixels whatever the image size.
- pixelate: Pillow BOX down to int(size * c) and back, reproduced bit for bit in torch
  (`_ops.pil_box_resize`).
- jpeg_compression: a JPEG round trip at quality 25..7 with libjpeg on the CPU (the
  pixels then match Pillow's encoder and decoder); a CUDA batch is copied over for it.
"""
from __future__ import annotations

import numpy as np
import torch

from stl_bench.data.corruptions import _ops
from stl_bench.data.corruptions._color import hsv_to_rgb, rgb_to_hsv
from stl_bench.data.corruptions._ops import from_unit, to_unit
from stl_bench.data.corruptions._rng import SampleRNG
from stl_bench.data.corruptions.pipeline import jpeg_roundtrip

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to V
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # deviation scale
# (displacement scale alpha, displacement smoothing sigma, affine jitter), in pixels.
ELASTIC = (
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # side of the small image, relative
JPEG_QUALITY = (25, 18, 15, 10, 7)
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # S * a + b

# OpenCV warpAffine's fixed point: coordinates in 1/1024, then 1/32 pixel (INTER_BITS 5).
_AB_SCALE = 1024
_INTER_SHIFT = 5
_ROUND_DELTA = _AB_SCALE // 32 // 2


def brightness(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    hsv = rgb_to_hsv(to_unit(images, torch.float64))
    h, s, v = hsv.unbind(1)
    v = (v + BRIGHTNESS[severity - 1]).clamp(0, 1)
    return from_unit(hsv_to_rgb(torch.stack([h, s, v], 1)))


def saturate(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    scale, shift = SATURATE[severity - 1]
    hsv = rgb_to_hsv(to_unit(images, torch.float64))
    h, s, v = hsv.unbind(1)
    s = (s * scale + shift).clamp(0, 1)
    return from_unit(hsv_to_rgb(torch.stack([h, s, v], 1)))


def contrast(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    c = CONTRAST[severity - 1]
    x = to_unit(images, torch.float64)
    # One reduction per image: a GPU reduction over the whole batch may sum in another
    # order for another batch size, and the result must not depend on the batch.
    means = torch.stack([img.mean(dim=(1, 2), keepdim=True) for img in x])
    return from_unit((x - means) * c + means)


def _fixed_points(h: int, w: int) -> torch.Tensor:
    """The three points the original jitters: np.float32(shape) // 2 +- min(shape) // 3.

    OpenCV reads them as (x, y) although they are built from (rows, cols); for square
    images that is the same thing, and for others we keep the original's reading.
    """
    centre = np.array([h, w], dtype=np.float32) // 2
    half = min(h, w) // 3
    pts = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half], dtype=np.float32)
    return torch.from_numpy(pts)


def _affine_sources(pts2: torch.Tensor, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinates (x, y), in 1/32 pixel, that OpenCV's warpAffine reads per pixel.

    pts2: [B, 3, 2] jittered points. The forward map sends the fixed points pts1 to
    pts2 (getAffineTransform); warpAffine inverts it (invertAffineTransform) and
    evaluates it in fixed point: round(M * 1024) per row and per column term, then
    >> 5 to 1/32 pixel, exactly as OpenCV 3/4's WarpAffineInvoker. (OpenCV 5 dropped
    the 1/32 grid; ImageNet-C was made with the fixed-point one.)
    """
    pts1 = _fixed_points(h, w).double().numpy()
    dst = pts2.detach().cpu().to(torch.float32).double().numpy()
    ones = np.ones((3, 1))
    a = np.hstack([pts1, ones])  # [3, 3]: rows (x, y, 1)
    # Solve a @ [m0 m1 m2]^T = dst_x and a @ [m3 m4 m5]^T = dst_y for every sample.
    coef = np.linalg.solve(np.broadcast_to(a, (len(dst), 3, 3)), dst)  # [B, 3, 2]
    m = np.concatenate([coef[:, :, 0], coef[:, :, 1]], axis=1)  # [B, 6]
    det = m[:, 0] * m[:, 4] - m[:, 1] * m[:, 3]
    d = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a22, a12, a21 = m[:, 4] * d, m[:, 0] * d, -m[:, 1] * d, -m[:, 3] * d
    b1 = -a11 * m[:, 2] - a12 * m[:, 5]
    b2 = -a21 * m[:, 2] - a22 * m[:, 5]
    inv = torch.from_numpy(np.stack([a11, a12, b1, a21, a22, b2], 1)).to(device)  # [B, 6]
    xs = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    ys = torch.arange(h, dtype=torch.float64, device=device)[None, :]
    col = lambda i: inv[:, i:i + 1]  # noqa: E731  [B, 1]
    adelta = torch.round(col(0) * xs * _AB_SCALE)  # [B, W]
    bdelta = torch.round(col(3) * xs * _AB_SCALE)
    x0 = torch.round((col(1) * ys + col(2)) * _AB_SCALE) + _ROUND_DELTA  # [B, H]
    y0 = torch.round((col(4) * ys + col(5)) * _AB_SCALE) + _ROUND_DELTA
    shift = float(1 << (10 - _INTER_SHIFT))
    xq = torch.floor((x0[:, :, None] + adelta[:, None, :]) / shift).to(torch.int64)
    yq = torch.floor((y0[:, :, None] + bdelta[:, None, :]) / shift).to(torch.int64)
    return xq, yq


def elastic_transform(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    alpha, sigma, jitter = ELASTIC[severity - 1]
    b, _, h, w = images.shape
    x = to_unit(images)
    pts1 = _fixed_points(h, w)
    pts2 = pts1.to(rng.device) + rng.uniform((3, 2), -jitter, jitter, dtype=torch.float64).to(torch.float32)
    xq, yq = _affine_sources(pts2, h, w, images.device)
    warped = _ops.remap_fixed_point(x, xq, yq, "mirror")

    noise = rng.uniform((2, h, w), -1.0, 1.0)
    fields = _ops.gaussian_filter(noise, sigma, mode="reflect", truncate=3.0) * alpha
    dx, dy = fields[:, 0], fields[:, 1]
    grid_y = torch.arange(h, device=images.device, dtype=torch.float64).view(1, h, 1)
    grid_x = torch.arange(w, device=images.device, dtype=torch.float64).view(1, 1, w)
    out = _ops.bilinear_sample(warped, grid_y + dy.double(), grid_x + dx.double(), "reflect")
    return from_unit(out)


def pixelate(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    c = PIXELATE[severity - 1]
    h, w = images.shape[-2:]
    small = _ops.pil_box_resize(images, max(int(h * c), 1), max(int(w * c), 1))
    return _ops.pil_box_resize(small, h, w)


def jpeg_compression(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    return jpeg_roundtrip(images, quality=JPEG_QUALITY[severity - 1])
