"""scikit-image's RGB <-> HSV conversion in torch, batched over [B, 3, H, W].

ImageNet-C's brightness and saturate corruptions go through `skimage.color.rgb2hsv` /
`hsv2rgb`. These follow that code step by step (including which channel wins the hue
when two are equal, and hue 0 for greys) so that the round trip gives the same values,
not just the same colours up to rounding.
"""
from __future__ import annotations

import torch


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> HSV with every channel in [0, 1]."""
    r, g, b = rgb.unbind(1)
    v = rgb.amax(1)
    delta = v - rgb.amin(1)
    grey = delta == 0
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)
    safe_v = torch.where(v == 0, torch.ones_like(v), v)
    s = torch.where(grey, torch.zeros_like(v), delta / safe_v)
    # skimage assigns red, then green, then blue, each overwriting the last on ties.
    h = torch.zeros_like(v)
    h = torch.where(r == v, (g - b) / safe_delta, h)
    h = torch.where(g == v, 2.0 + (b - r) / safe_delta, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe_delta, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(grey, torch.zeros_like(h), h)
    return torch.stack([h, s, v], 1)


# For each hue sector, which of (v, t, p, q) becomes red, green and blue (skimage's table).
_SECTOR_PLANES = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] HSV in [0, 1] -> RGB, as `skimage.color.hsv2rgb`."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = torch.remainder(hi.to(torch.int64), 6)
    planes = torch.stack([v, t, p, q], 1)  # [B, 4, H, W]
    index = _SECTOR_PLANES.to(hsv.device)[sector].permute(0, 3, 1, 2)  # [B, 3, H, W]
    return planes.gather(1, index)
