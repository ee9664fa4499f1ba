"""The 19 ImageNet-C corruptions (15 standard + 4 extra) at severities 1-5, batched in torch.

    from stl_bench.data.corruptions import corrupt_batch, sample_seed
    out = corrupt_batch(images_uint8, "fog", 3, seeds)  # [B, 3, H, W] uint8, any device

Images are uint8 [B, 3, H, W] in and out (ImageNet-C corrupted 8-bit images and stored
8-bit JPEGs), on CPU or CUDA. Each sample has its own seed (`sample_seed(relative_path,
corruption, severity)` gives a stable one) and its own generator, so its result does not
depend on the batch, shard or order it was computed in (tested; on GPUs the float
filters run as fixed-order sums for that reason, see `_ops.shifted_sums`).

Fidelity. Parameter tables and operations are `make_imagenet_c.py`'s, down to the
libraries' border modes and roundings (see each module). Random streams are torch's, so
stochastic corruptions match in distribution; fed the same draws, the original functions
(run on NumPy 1.26, scikit-image 0.22, SciPy 1.13, OpenCV 4.9, Pillow 12, ImageMagick
6.9.11 Q16, patched only for renamed APIs) and ours were compared on 6 photographs x 5
severities (4.5 million values per corruption):
- identical: gaussian_noise, shot_noise, speckle_noise, zoom_blur, frost, fog,
  brightness, contrast, saturate, pixelate, jpeg_compression;
- off by one grey level in a handful of values (float rounding before the truncation to
  uint8): defocus_blur 1 value, snow 6, elastic_transform 13, gaussian_blur 35,
  motion_blur 43, glass_blur 49, spatter 56 (at most 0.0012%);
- impulse_noise draws inside scikit-image and cannot be replayed: same per-value
  Bernoulli definition, checked statistically.
Deviations by design: motion_blur and snow port ImageMagick's MotionBlurImage and its
8-bit output instead of calling it (the comparison above ran real ImageMagick);
elastic_transform reproduces OpenCV 3/4's 1/32-pixel warp, with which ImageNet-C was
made (OpenCV 5 samples at full precision: against it 5% of values differ, by up to 3);
images larger than a frost photograph get an enlarged texture (ImageNet-C never needed
one). Parameters are pixel values made for
224 px: other sizes get the same pixels (resize first for benchmark numbers).

Speed (224 px, severity 3, this project's 2-core CPU VM, `benchmarks/corruptions.py`, ms
per image, all 19 / the 15 standard): batch 32 48 / 36 with 2 threads, 71 / 52 with 1.
torch-uncertainty's per-image ports, run side by side (18, no spatter; several are
simplified): 146 / 143 with 2 threads, 173 / 169 with 1, so 3-4x slower; ImageNet-C's
own code is ~145 for the 15 on one core (DESIGN.md). Not measured here: CUDA (no GPU).
On CPU a batch is worked 2 images at a time (cache-sized); on GPU in one piece.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Sequence

import torch

from stl_bench.data.corruptions import blur, digital, noise, spatter, weather
from stl_bench.data.corruptions._rng import SampleRNG, as_seed_list, sample_seed
from stl_bench.data.corruptions.names import (
    ALL_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    FAMILY,
    SEVERITIES,
    STANDARD_CORRUPTIONS,
)
from stl_bench.data.corruptions.pipeline import (
    IMAGENET_C_PRE,
    imagenet_c_pipeline,
    imagenet_c_transform,
    jpeg_roundtrip,
)
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

_CPU_CHUNK = 2

CorruptionFn = Callable[[torch.Tensor, int, SampleRNG], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption: its function and where it belongs."""

    name: str
    family: str  # noise, blur, weather or digital (names.FAMILY)
    fn: CorruptionFn
    standard: bool  # one of the 15 that make up mCE


_KERNELS: Mapping[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise, "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise, "speckle_noise": noise.speckle_noise,
    "defocus_blur": blur.defocus_blur, "glass_blur": blur.glass_blur, "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur, "gaussian_blur": blur.gaussian_blur,
    "snow": weather.snow, "frost": weather.frost, "fog": weather.fog, "spatter": spatter.spatter,
    "brightness": digital.brightness, "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform, "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression, "saturate": digital.saturate,
}
# Registered in the names module's order; its list is the one list (a kernel it lacks fails here).
CORRUPTIONS: Mapping[str, Corruption] = MappingProxyType({
    name: Corruption(name, FAMILY[name], _KERNELS[name], name in STANDARD_CORRUPTIONS)
    for name in ALL_CORRUPTIONS
})


def get_corruption(name: str) -> Corruption:
    """Look a corruption up by name; unknown names raise with the closest known ones."""
    try:
        return CORRUPTIONS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(CORRUPTIONS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise StlBenchError(
            f"unknown corruption {name!r}{hint} (known: {', '.join(CORRUPTIONS)})"
        ) from None


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """Keep float32 matmuls and convolutions in full precision while corrupting.

    On recent GPUs cuDNN convolutions use TF32 by default (10-bit mantissa) and callers
    may have allowed it for matmuls too (`torch.set_float32_matmul_precision("high")`);
    either would break kernels that rely on exact float32 sums (spatter's box filters).
    """
    precision = torch.get_float32_matmul_precision()
    conv_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = conv_tf32


def corrupt_batch(
    images: torch.Tensor,
    name: str,
    severity: int,
    seeds: torch.Tensor | Sequence[int],
) -> torch.Tensor:
    """Corrupt a uint8 [B, 3, H, W] batch with ImageNet-C corruption `name` at `severity`.

    Returns uint8 of the same shape on the same device. `seeds` holds one integer per
    image; an image's result depends only on its pixels, its seed and the device type.
    Parameters are ImageNet-C's, defined for 224 px; other sizes get the same pixel
    parameters (a blur radius stays 10 px), so resize first for benchmark numbers.
    """
    spec = get_corruption(name)
    if isinstance(severity, bool) or int(severity) != severity or int(severity) not in SEVERITIES:
        raise StlBenchError(f"severity must be one of 1-5, got {severity!r}")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"corrupt_batch takes uint8 images with values 0..255, got {got}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"corrupt_batch takes [B, 3, H, W] images, got shape {tuple(images.shape)}")
    seed_list = as_seed_list(seeds, images.shape[0])
    if images.shape[0] == 0:
        return images.clone()
    # On a CPU, a few images at a time keep the float64 intermediates in cache: all 19
    # corruptions took 43 ms per image in chunks of 2, 45 in 4, 89 in 32 (2-core VM).
    # Results do not depend on the chunking, since nothing mixes samples.
    chunk = _CPU_CHUNK if images.device.type == "cpu" else images.shape[0]
    outs = []
    with torch.no_grad(), _full_float32():
        for start in range(0, images.shape[0], chunk):
            rng = SampleRNG(seed_list[start:start + chunk], images.device)
            outs.append(spec.fn(images[start:start + chunk], int(severity), rng).to(torch.uint8))
    return torch.cat(outs).contiguous()


__all__ = [
    "ALL_CORRUPTIONS",
    "CORRUPTIONS",
    "Corruption",
    "EXTRA_CORRUPTIONS",
    "IMAGENET_C_PRE",
    "SEVERITIES",
    "STANDARD_CORRUPTIONS",
    "corrupt_batch",
    "get_corruption",
    "imagenet_c_pipeline",
    "imagenet_c_transform",
    "jpeg_roundtrip",
    "sample_seed",
]
