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

# 1-D filters are applied as an n x n matrix (the taps folded through the border rule)
# rather than a convolution over a padded copy whenever the axis is at most this long:
# a matrix product is ~10x faster than torch's CPU conv2d for a 15-tap filter at 224 px,
# has a fast float64 path (conv2d has none), and handles elastic_transform's 1,025-tap
# smoothing (sigma 171 px on a 224-px image) at the same cost.
_MATRIX_MAX_N = 1024


def border_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer indices (any range) into [0, n) with the given border mode."""
    if mode == "nearest" or n == 1:
        return idx.clamp(0, n - 1)
    lo, hi = int(idx.min()), int(idx.max())
    if lo >= -(n - 1) and hi <= 2 * n - 2:
        # At most one reflection on either side (the usual case): cheaper than remainder.
        if mode == "reflect":
            idx = torch.where(idx < 0, -1 - idx, idx)
            return torch.where(idx >= n, 2 * n - 1 - idx, idx)
        if mode == "mirror":
            idx = idx.abs()
            return torch.where(idx >= n, 2 * n - 2 - idx, idx)
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


def shifted_sums(device: torch.device) -> bool:
    """Whether float filters run as sums of shifted copies instead of GEMM / FFT / conv.

    On CPU those library calls give each image the same result whatever the batch
    (tested), and they are fast. On a GPU, cuBLAS, cuFFT and cuDNN choose algorithms by
    problem size, batch included, so an image alone and in a batch could round
    differently; a fixed-order sum of shifted copies cannot, and a GPU has the memory
    bandwidth for it.
    """
    return torch.device(device).type != "cpu"


def _shift_correlate1d(x: torch.Tensor, weights: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    k = len(weights)
    r = k // 2
    n = x.shape[dim]
    if dim == x.dim() - 2:
        padded = pad(x, r, k - 1 - r, 0, 0, mode)
    else:
        padded = pad(x, 0, 0, r, k - 1 - r, mode)
    out = torch.zeros_like(x)
    for t, wt in enumerate(weights):
        if wt != 0.0:
            out.add_(padded.narrow(dim, t, n), alpha=float(wt))
    return out


def correlate1d(x: torch.Tensor, weights: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    """Correlate the last-two-axes tensor `x` with centred 1-D `weights` along dim -2 or -1."""
    dim = dim % x.dim()
    if dim not in (x.dim() - 2, x.dim() - 1):
        raise ValueError("correlate1d filters one of the last two axes")
    if shifted_sums(x.device):
        return _shift_correlate1d(x, weights, dim, mode)
    vertical = dim == x.dim() - 2
    n = x.shape[dim]
    k = len(weights)
    if n <= _MATRIX_MAX_N or k > n:
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
    if shifted_sums(x.device):
        return correlate2d_large(x, kernel, mode)
    padded = pad(x, kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2, mode)
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def correlate2d_large(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """`correlate2d` for large kernels in float64: FFT on CPU, shifted sums elsewhere
    (see `shifted_sums`)."""
    if not shifted_sums(x.device):
        return correlate2d_fft(x, kernel, mode)
    kernel = kernel.cpu()
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    padded = pad(x, kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2, mode)
    out = torch.zeros_like(x)
    for (a, b), wt in zip(torch.nonzero(kernel).tolist(), kernel[kernel != 0].tolist()):
        out.add_(padded[..., a:a + h, b:b + w], alpha=float(wt))
    return out


def correlate2d_fft(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """`correlate2d` through the FFT: the same result (to ~1e-15), far cheaper in float64
    for large kernels. OpenCV's filter2D switches to a DFT for kernels of 11x11 and up,
    so the original defocus blur was computed this way too."""
    kh, kw = kernel.shape
    padded = pad(x, kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2, mode)
    hp, wp = padded.shape[-2:]
    # Circular convolution over the padded size with the flipped kernel: outputs from
    # index (k - 1) on never wrap around, and they are exactly the valid correlation.
    k = torch.flip(kernel.to(device=x.device, dtype=x.dtype), dims=(0, 1))
    spectrum = torch.fft.rfft2(padded, s=(hp, wp)) * torch.fft.rfft2(k, s=(hp, wp))
    full = torch.fft.irfft2(spectrum, s=(hp, wp))
    return full[..., kh - 1:, kw - 1:].contiguous()


def cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV `getGaussianKernel(ksize, sigma)` for sigma > 0 (what `GaussianBlur` uses)."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    g = np.exp(-(x**2) / (2.0 * sigma * sigma))
    return g / g.sum()


@functools.lru_cache(maxsize=256)
def _clipped_zoom_coords(n: int, zoom: float) -> np.ndarray:
    # ImageNet-C's clipped_zoom: crop the centre ceil(n / z) pixels, scipy.ndimage.zoom
    # them by z (order 1, output length round(ch * z), input coordinate
    # out * (ch - 1) / (out_len - 1)), then keep the centre n pixels. Returns, for each
    # kept output pixel, the source coordinate in the uncropped image.
    ch = int(np.ceil(n / zoom))
    top = (n - ch) // 2
    out_len = int(round(ch * zoom))
    trim = (out_len - n) // 2
    ratio = (ch - 1) / (out_len - 1) if out_len > 1 else 1.0
    return top + (np.arange(n, dtype=np.float64) + trim) * ratio


def _zoom_grid(h: int, w: int, zoom: float, batch: int, device: torch.device) -> torch.Tensor:
    rows = torch.from_numpy(_clipped_zoom_coords(h, float(zoom))).to(device)
    cols = torch.from_numpy(_clipped_zoom_coords(w, float(zoom))).to(device)
    # grid_sample's align_corners=True: -1 and 1 are the centres of the edge pixels.
    gy = rows * (2.0 / max(h - 1, 1)) - 1.0
    gx = cols * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
    return grid[None].expand(batch, h, w, 2)


def clipped_zoom_sum(x: torch.Tensor, zooms) -> torch.Tensor:
    """Sum of ImageNet-C's `clipped_zoom(x, z)` over `zooms`, for [B, C, H, W].

    Each zoom is one bilinear grid_sample in float64, rounded to x's dtype, which is
    what scipy.ndimage.zoom(order=1) computes (double arithmetic, output in the input's
    dtype); the sum accumulates in x's dtype as the original's `out += ...` did.
    """
    b, _, h, w = x.shape
    x64 = x.to(torch.float64)
    out = torch.zeros_like(x)
    for z in zooms:
        grid = _zoom_grid(h, w, z, b, x.device)
        out += F.grid_sample(x64, grid, mode="bilinear", padding_mode="border", align_corners=True).to(x.dtype)
    return out


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """ImageNet-C's `clipped_zoom` (centre crop, bilinear zoom, centre trim) on [B, C, H, W]."""
    return clipped_zoom_sum(x, (zoom,))


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


_GRID_MODES = {"reflect": ("reflection", False), "mirror": ("reflection", True), "nearest": ("border", True)}


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample [B, C, H, W] at pixel coordinates rows, cols ([B, H', W']) bilinearly.

    Bilinear interpolation with a border rule is the same thing whether the rule maps
    each tap's index (OpenCV's remap, scipy's map_coordinates) or reflects the
    coordinate first (grid_sample): 'reflect' reflects about -0.5 / n - 0.5
    (align_corners=False), 'mirror' about 0 / n - 1 (align_corners=True). The sampling
    runs in float64 and is rounded to the image dtype once, which reproduces
    map_coordinates (double arithmetic) exactly (tested against scipy).
    """
    padding, align = _GRID_MODES[mode]
    h, w = x.shape[-2:]
    rows = rows.to(torch.float64)
    cols = cols.to(torch.float64)
    if align:
        gx = cols * (2.0 / max(w - 1, 1)) - 1.0
        gy = rows * (2.0 / max(h - 1, 1)) - 1.0
    else:
        gx = (2.0 * cols + 1.0) / w - 1.0
        gy = (2.0 * rows + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(x.to(torch.float64), grid, mode="bilinear", padding_mode=padding, align_corners=align)
    return out.to(x.dtype)


def remap_fixed_point(x: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor, mode: str) -> torch.Tensor:
    """OpenCV's bilinear remap of a float32 image at coordinates in 1/32 pixel (integers).

    OpenCV 3/4 warps on a 1/32-pixel grid: tap weights are the exact products
    (1 - fy)(1 - fx), (1 - fy) fx, fy (1 - fx), fy fx and the taps are summed in that
    order in float32; each tap index goes through the border rule. Same order here, so
    the result is bit-identical to cv2.warpAffine (checked against OpenCV 4.9).
    """
    b, c, h, w = x.shape
    ix = torch.div(xq, 32, rounding_mode="floor")
    iy = torch.div(yq, 32, rounding_mode="floor")
    fx = (xq - ix * 32).to(torch.float32).unsqueeze(1) / 32.0
    fy = (yq - iy * 32).to(torch.float32).unsqueeze(1) / 32.0
    c0, c1 = border_index(ix, w, mode), border_index(ix + 1, w, mode)
    r0, r1 = border_index(iy, h, mode), border_index(iy + 1, h, mode)
    flat = x.reshape(b, c, h * w)

    def tap(ri: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
        idx = (ri * w + ci).reshape(b, 1, -1).expand(b, c, -1)
        return flat.gather(2, idx).reshape(b, c, *xq.shape[1:])

    gx, gy = 1 - fx, 1 - fy
    out = tap(r0, c0) * (gy * gx)
    out += tap(r0, c1) * (gy * fx)
    out += tap(r1, c0) * (fy * gx)
    out += tap(r1, c1) * (fy * fx)
    return out


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
