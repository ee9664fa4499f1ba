"""spatter (extra): water drops (severities 1-3) or mud (4-5) on the lens.

The water recipe is a chain of OpenCV operations; each is reproduced here on a batch:
a blurred, thresholded Gaussian "liquid" layer; `Canny(layer, 50, 150)` (3x3 Sobel with
replicated borders, L1 magnitude, OpenCV's fixed-point sector test for non-maximum
suppression, hysteresis by growing the strong edges through 8-connected weak ones);
`distanceTransform(DIST_L2, 5)` to the edges (OpenCV's 5x5 chamfer weights 1, 1.4,
2.1969 in 16.16 fixed point, found by min-plus relaxation instead of two raster passes:
the same shortest paths, and only distances up to the threshold of 20 are needed, so 20
rounds suffice); the threshold, box blur, `equalizeHist`, an emboss kernel and another
box blur, all with OpenCV's reflect-101 border and rounding; then the pale turquoise
tint. Mud is a smoothed mask of the layer painted brown.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stl_bench.data.corruptions import _ops
from stl_bench.data.corruptions._ops import from_unit, to_unit
from stl_bench.data.corruptions._rng import SampleRNG

# (layer mean, layer std, layer blur sigma, threshold, intensity or mud blur sigma, mud?)
SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
WATER_RGB = (175 / 255.0, 238 / 255.0, 238 / 255.0)  # pale turquoise
MUD_RGB = (63 / 255.0, 42 / 255.0, 20 / 255.0)  # mud brown
DIST_CAP = 20.0

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_BOX3 = torch.ones(3, 3)
# OpenCV Canny: tan(22.5 deg) in 15-bit fixed point.
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)
# OpenCV distanceTransform(DIST_L2, 5): float32 weights 1, 1.4, 2.1969 as cvRound(w * 2**16).
_HV, _DIAG, _LONG = 65536, 91750, 143976
_CHAMFER = (
    [((0, 1), _HV), ((0, -1), _HV), ((1, 0), _HV), ((-1, 0), _HV)]
    + [((dy, dx), _DIAG) for dy in (-1, 1) for dx in (-1, 1)]
    + [((dy, dx), _LONG) for dy, dx in ((1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1))]
)


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV `Canny(img, low, high)` (aperture 3, L1 gradient) on integer-valued [B, 1, H, W]."""
    x = img.to(torch.float32)  # integer sums below 2**24: exact in float32
    gx = _ops.correlate2d(x, _SOBEL_X, "nearest")
    gy = _ops.correlate2d(x, _SOBEL_X.T.contiguous(), "nearest")
    mag = gx.abs() + gy.abs()
    m = F.pad(mag, (1, 1, 1, 1))  # magnitudes outside the image count as 0
    left, right = m[..., 1:-1, :-2], m[..., 1:-1, 2:]
    up, down = m[..., :-2, 1:-1], m[..., 2:, 1:-1]
    up_left, up_right = m[..., :-2, :-2], m[..., :-2, 2:]
    down_left, down_right = m[..., 2:, :-2], m[..., 2:, 2:]

    ix, iy = gx.to(torch.int64), gy.to(torch.int64)
    ax = ix.abs()
    ay = iy.abs() << _CANNY_SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_CANNY_SHIFT + 1))
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    opposite = torch.bitwise_xor(ix, iy) < 0
    keep_h = (mag > left) & (mag >= right)
    keep_v = (mag > up) & (mag >= down)
    keep_d = torch.where(opposite, (mag > up_right) & (mag > down_left), (mag > up_left) & (mag > down_right))
    local_max = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    weak = local_max & (mag > low)
    edges = weak & (mag > high)
    while True:
        grown = weak & (F.max_pool2d(edges.to(x.dtype), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def chamfer_distance(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """OpenCV `distanceTransform(DIST_L2, 5)` to the True pixels of [B, 1, H, W], capped.

    Distances are integers in 1/65536 units (OpenCV's fixed point), held in float32,
    which is exact below 2**24. Paths stay inside the image, as OpenCV's border of
    'infinite' pixels forces.
    """
    cap_fix = float(int(cap * 65536))
    dist = torch.where(zero, 0.0, cap_fix).to(torch.float32)
    h, w = dist.shape[-2:]
    padded = F.pad(dist, (2, 2, 2, 2), value=cap_fix)
    for _ in range(int(cap) + 2):
        inner = padded[..., 2:2 + h, 2:2 + w]
        best = inner.clone()
        for (dy, dx), weight in _CHAMFER:
            torch.minimum(best, padded[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + weight, out=best)
        if torch.equal(best, inner):
            break
        inner.copy_(best)
    return padded[..., 2:2 + h, 2:2 + w] / 65536.0


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV `equalizeHist` per image on integer-valued [B, 1, H, W] (0..255)."""
    b = img.shape[0]
    flat = img.reshape(b, -1).to(torch.int64)
    total = flat.shape[1]
    hist = torch.zeros(b, 256, dtype=torch.int64, device=img.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).to(torch.int64).argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    scale = (255.0 / (total - first_count).clamp(min=1).to(torch.float32)).to(torch.float32)
    levels = torch.arange(256, device=img.device)[None, :]
    cum = torch.cumsum(torch.where(levels > first, hist, 0), 1)
    lut = torch.round((cum.to(torch.float32) * scale)).clamp(0, 255)
    lut = torch.where(levels <= first, 0.0, lut)
    lut = torch.where(first_count == total, first.to(torch.float32).expand(-1, 256), lut)
    return lut.gather(1, flat).reshape(img.shape)


def _water(x: torch.Tensor, liquid: torch.Tensor, intensity: float) -> torch.Tensor:
    # (liquid * 255).astype(np.uint8): truncation, wrapping like x86 NumPy above 255.
    layer = torch.remainder(torch.trunc(liquid * 255), 256)
    edges = canny(layer, 50, 150)
    dist = chamfer_distance(edges, DIST_CAP)
    # Sums of nine multiples of 2**-16 below 256 need 24 bits: exact in float32. OpenCV
    # scales the sum by 1/9 in double and stores float, then astype(uint8) truncates.
    box = torch.trunc((_ops.correlate2d(dist, _BOX3, "mirror").double() * (1.0 / 9.0)).float())
    dist = equalize_hist(box)
    dist = _ops.correlate2d(dist, _EMBOSS, "mirror").clamp(0, 255)  # filter2D to CV_8U saturates
    dist = torch.round(_ops.correlate2d(dist, _BOX3, "mirror") / 9.0)  # 8-bit blur rounds
    m = layer.float() * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / torch.where(peak > 0, peak, 1.0), 0.0) * intensity
    color = torch.tensor(WATER_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return from_unit(x + m * color)


def _mud(x: torch.Tensor, liquid: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    m = _ops.gaussian_filter((liquid > threshold).to(torch.float64), sigma, "nearest").float()
    m = torch.where(m < 0.8, 0.0, m)
    color = torch.tensor(MUD_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * m
    return from_unit(x * (1 - m) + color)


def spatter(images: torch.Tensor, severity: int, rng: SampleRNG) -> torch.Tensor:
    mean, std, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    _, _, h, w = images.shape
    x = to_unit(images)
    liquid = rng.normal((1, h, w), mean=mean, std=std).double()
    liquid = _ops.gaussian_filter(liquid, sigma, "nearest")
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    if mud:
        return _mud(x, liquid, threshold, intensity)
    return _water(x, liquid, intensity)
