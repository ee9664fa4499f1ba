"""Batched torch kernels with the boundary and rounding rules of the original libraries.

ImageNet-C was generated with scikit-image (Gaussian filters: scipy.ndimage underneath),
OpenCV (disk kernel, 2-D filtering, affine warps), scipy.ndimage (zoom,
map_coordinates), Pillow (BOX resize) and ImageMagick (motion blur). Each function here
reproduces one of those operations on a [B, C, H, W] tensor, with the same border mode
and the same quantisation, so the corruption modules can follow the original code line
by line. Everything runs on any device; nothing here draws random numbers.

Border modes, named as in scipy.ndimage:
  nearest  aaa|abcd|ddd   (OpenCV BORDER_REPLICATE)
  reflect  cba|abcd|dcb   (OpenCV BORDER_REFLECT; scikit-image's 'reflect')
  mirror   dcb|abcd|cba   (OpenCV BORDER_REFLECT_101, OpenCV's default)
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

# A 1-D filter longer than this is applied as an n x n matrix (the filter folded through
# the border rule) instead of a convolution over a padded copy: elastic_transform's
# displacement smoothing has sigma = 171 px, a 1,025-tap kernel on a 224-px image.
_MATRIX_TAPS = 48


def border_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer indices (any range) into [0, n) with the given border mode."""
    if mode == "nearest" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        period = 2 * n
        i = torch.remainder(idx, period)
        return torch.where(i >= n, period - 1 - i, i)
    if mode == "mirror":
        period = 2 * n - 2
        i = torch.remainder(idx, period)
        return torch.where(i >= n, period - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two axes by index mapping: works for pads wider than the image too."""
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-top, h + bottom, device=x.device), h, mode)
    cols = border_index(torch.arange(-left, w + right, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian weights: radius int(truncate * sigma + 0.5), sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    return phi / phi.sum()


@functools.lru_cache(maxsize=64)
def _folded_matrix(n: int, weights: tuple[float, ...], mode: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    # M[i, j] = sum of the taps of output i that land on input j after the border rule.
    k = len(weights)
    r = k // 2
    out_idx = torch.arange(n).repeat_interleave(k)
    in_idx = border_index(torch.arange(n)[:, None] + torch.arange(-r, k - r)[None, :], n, mode).reshape(-1)
    vals = torch.tensor(weights, dtype=torch.float64).repeat(n)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((out_idx, in_idx), vals, accumulate=True)
    return m.to(device=device, dtype=dtype)


def correlate1d(x: torch.Tensor, weights: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    """Correlate the last-two-axes tensor `x` with centred 1-D `weights` along dim -2 or -1."""
    dim = dim % x.dim()
    if dim not in (x.dim() - 2, x.dim() - 1):
        raise ValueError("correlate1d filters one of the last two axes")
    vertical = dim == x.dim() - 2
    n = x.shape[dim]
    k = len(weights)
    if k > _MATRIX_TAPS:
        m = _folded_matrix(n, tuple(float(w) for w in weights), mode, str(x.device), x.dtype)
        return m @ x if vertical else x @ m.T
    r = k // 2
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    w = torch.as_tensor(np.asarray(weights), dtype=x.dtype, device=x.device)
    if vertical:
        flat = pad(flat, r, k - 1 - r, 0, 0, mode)
        out = F.conv2d(flat, w.view(1, 1, k, 1))
    else:
        flat = pad(flat, 0, 0, r, k - 1 - r, mode)
        out = F.conv2d(flat, w.view(1, 1, 1, k))
    return out.reshape(shape)


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter` over the last two axes (rows first, as scipy does).

    scikit-image's `gaussian(img, sigma, multichannel=True)` is this with mode 'nearest'
    and truncate 4 on each channel.
    """
    weights = gaussian_kernel1d(sigma, truncate)
    return correlate1d(correlate1d(x, weights, -2, mode), weights, -1, mode)


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """OpenCV `filter2D` (a correlation, anchor at the centre) on every channel of [B, C, H, W]."""
    kh, kw = kernel.shape
    b, c, h, w = x.shape
    padded = pad(x, kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2, mode)
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV `getGaussianKernel(ksize, sigma)` for sigma > 0 (what `GaussianBlur` uses)."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    g = np.exp(-(x**2) / (2.0 * sigma * sigma))
    return g / g.sum()


def _lerp_axis(x: torch.Tensor, dim: int, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = x.index_select(dim, i0)
    b = x.index_select(dim, i1)
    shape = [1] * x.dim()
    shape[dim] = -1
    w = w.to(x.dtype).view(shape)
    return a + (b - a) * w


@functools.lru_cache(maxsize=256)
def _clipped_zoom_axis(n: int, zoom: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # ImageNet-C's clipped_zoom: crop the centre ceil(n / z) pixels, scipy.ndimage.zoom
    # them by z (order 1, output length round(ch * z), input coordinate
    # out * (ch - 1) / (out_len - 1)), then keep the centre n pixels.
    ch = int(np.ceil(n / zoom))
    top = (n - ch) // 2
    out_len = int(round(ch * zoom))
    trim = (out_len - n) // 2
    ratio = (ch - 1) / (out_len - 1) if out_len > 1 else 1.0
    coord = (np.arange(n, dtype=np.float64) + trim) * ratio
    i0 = np.floor(coord)
    w = coord - i0
    i0 = i0.astype(np.int64)
    i1 = np.minimum(i0 + 1, ch - 1)
    return torch.from_numpy(i0 + top), torch.from_numpy(i1 + top), torch.from_numpy(w)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """ImageNet-C's `clipped_zoom` (centre crop, bilinear zoom, centre trim) on [..., H, W]."""
    h, w = x.shape[-2:]
    dev = x.device
    r0, r1, rw = (t.to(dev) for t in _clipped_zoom_axis(h, float(zoom)))
    c0, c1, cw = (t.to(dev) for t in _clipped_zoom_axis(w, float(zoom)))
    x = _lerp_axis(x, x.dim() - 2, r0, r1, rw)
    return _lerp_axis(x, x.dim() - 1, c0, c1, cw)


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """ImageMagick's `MotionBlurImage(radius, sigma, angle)`, one angle per sample.

    ImageMagick blurs along a one-sided line: width = 2 * radius + 1 taps with weights
    exp(-i^2 / 2 sigma^2) (normalised), tap i reading the pixel at
    (x + ceil(i cos a - 0.5), y + ceil(i sin a - 0.5)), edge pixels repeated outside the
    image. This is that algorithm (the one the `imagecorruptions` package also ported),
    computed as a weighted sum of integer-shifted copies of a replicate-padded image.
    """
    b, c, h, w = x.shape
    width = 2 * int(radius) + 1
    sig = max(float(sigma), 1e-12)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i * i) / (2.0 * sig * sig)) / (math.sqrt(2.0 * math.pi) * sig)
    kernel /= kernel.sum()
    p = width - 1
    padded = pad(x, p, p, p, p, "nearest")
    out = torch.zeros_like(x)
    for s, angle in enumerate(angles_deg.detach().cpu().double().tolist()):
        a = math.pi * angle / 180.0
        px, py = width * math.sin(a), width * math.cos(a)
        hyp = math.hypot(px, py)
        acc = out[s]
        for t in range(width):
            dx = math.ceil(t * py / hyp - 0.5)
            dy = math.ceil(t * px / hyp - 0.5)
            acc.add_(padded[s, :, p + dy:p + dy + h, p + dx:p + dx + w], alpha=float(kernel[t]))
    return out


def imagemagick_to_uint8(values: torch.Tensor) -> torch.Tensor:
    """8-bit output of an ImageMagick (Q16) operation whose exact result is `values` (0..255).

    ImageMagick stores round(v * 257) in its 16-bit quantum and its PNG writer keeps
    floor(q / 257): about floor(v), not round(v). Measured against ImageMagick 6.9.11
    motion blur: identical on all 1.8 million values checked (rounding differed on half).
    """
    q = torch.floor(values.to(torch.float64) * 257.0 + 0.5).clamp_(0, 65535)
    return torch.div(q, 257, rounding_mode="floor").to(torch.uint8)


def bilinear_sample(
    x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Sample [B, C, H, W] at float coordinates rows, cols ([B, H', W']) bilinearly.

    Each of the four taps is mapped into the image by the border rule, as OpenCV's remap
    and scipy.ndimage.map_coordinates(order=1) do, and the weighted taps are summed in
    their order (top-left, top-right, bottom-left, bottom-right) in `compute_dtype`:
    float32 is OpenCV's arithmetic (exact 1/32-grid weights, float sums), float64 is
    scipy's (double sums, rounded to the image dtype at the end).
    """
    b, c, h, w = x.shape
    dt = compute_dtype or x.dtype
    r0f = torch.floor(rows)
    c0f = torch.floor(cols)
    fr = (rows - r0f).to(dt).unsqueeze(1)
    fc = (cols - c0f).to(dt).unsqueeze(1)
    r0 = r0f.long()
    c0 = c0f.long()
    r1 = border_index(r0 + 1, h, mode)
    c1 = border_index(c0 + 1, w, mode)
    r0 = border_index(r0, h, mode)
    c0 = border_index(c0, w, mode)
    flat = x.reshape(b, c, h * w)

    def tap(ri: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        idx = (ri * w + ci).reshape(b, 1, -1).expand(b, c, -1)
        return flat.gather(2, idx).reshape(b, c, *rows.shape[1:]).to(dt)

    out = tap(r0, c0) * ((1 - fr) * (1 - fc))
    out = out + tap(r0, c1) * ((1 - fr) * fc)
    out = out + tap(r1, c0) * (fr * (1 - fc))
    out = out + tap(r1, c1) * (fr * fc)
    return out.to(x.dtype)


@functools.lru_cache(maxsize=64)
def _pil_box_coeffs(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's `precompute_coeffs` for the BOX filter, in its 8-bit fixed point.

    Returns the [out, in] matrix of integer weights scaled by 2**22, so that one pass
    is `(M @ x + 2**21) >> 22`, as Pillow's ImagingResample computes it on uint8.
    Pillow 5 tested `-0.5 <= t < 0.5` and today's Pillow `-0.5 < t <= 0.5`; for the
    pixelate sizes t never hits +-0.5, so both give these weights.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ws = []
        for x in range(xmin, xmax):
            t = (x - center + 0.5) * ss
            ws.append(1.0 if -0.5 < t <= 0.5 else 0.0)
        total = sum(ws)
        for j, wgt in enumerate(ws):
            k = wgt / total if total != 0.0 else wgt
            m[xx, xmin + j] = math.floor(0.5 + k * (1 << 22)) if k >= 0 else math.ceil(-0.5 + k * (1 << 22))
    return m


def _pil_box_pass(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    # Integer weights times 8-bit values stay below 2**53, so float64 arithmetic is exact.
    m = _pil_box_coeffs(x.shape[dim], out_size)
    mt = torch.from_numpy(m).to(device=x.device)
    y = mt @ x if dim == x.dim() - 2 else x @ mt.T
    return torch.floor((y + float(1 << 21)) / float(1 << 22)).clamp_(0, 255)


def pil_box_resize(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Pillow's `Image.resize(size, Image.BOX)` on uint8 [B, C, H, W], bit for bit.

    Pillow resamples horizontally first and rounds to 8 bits between the passes; a pass
    is skipped when that axis keeps its size.
    """
    y = x.to(torch.float64)
    if out_w != x.shape[-1]:
        y = _pil_box_pass(y, out_w, y.dim() - 1)
    if out_h != x.shape[-2]:
        y = _pil_box_pass(y, out_h, y.dim() - 2)
    return y.to(torch.uint8)


def to_unit(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1] (the originals' `np.array(img) / 255.`)."""
    return x.to(dtype) / 255.0


def from_unit(y: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 as ImageNet-C saved it: `np.uint8(np.clip(y, 0, 1) * 255)`.

    `np.uint8` of a float truncates, it does not round: ImageNet-C images are on average
    half a grey level darker than rounding would give, and this keeps that.
    """
    return torch.trunc(y.clamp(0, 1) * 255).to(torch.uint8)
