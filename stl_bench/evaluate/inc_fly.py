"""ImageNet-C on the fly: the benchmark's own pipeline, from clean images, per view.

ImageNet-C was made by resizing to 256, centre cropping 224, corrupting and saving as
JPEG quality 85. Here each clean file is decoded and cropped once (in the workers) and
each (corruption, severity) view corrupts the uint8 crop on the model's device, then
does the JPEG round trip. The random parts of a corruption are seeded per sample from
(file key, corruption, severity), so runs, batch sizes and shards agree.

The corruption kernels live in `stl_bench.data.corruptions`; the functions are
parameters here so the plumbing can be tested with stand-ins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from stl_bench.evaluate.suites import View

CorruptFn = Callable[[torch.Tensor, str, int, list[int]], torch.Tensor]
SeedFn = Callable[[str, str, int], int]
JpegFn = Callable[[torch.Tensor], torch.Tensor]

JPEG_QUALITY = 85


class _ImageNetCCrop:
    """PIL -> uint8 [3, 224, 224]: resize the shorter side to 256 (bilinear), centre crop 224."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = TF.resize(img, 256, interpolation=InterpolationMode.BILINEAR)
        return TF.pil_to_tensor(TF.center_crop(img, [224, 224]))


def source_transform() -> Callable[[Image.Image], torch.Tensor]:
    """The clean 224 px crop every corruption starts from: the corruption module's own
    `imagenet_c_pipeline` when present, so `corrupt` and `eval` crop the same way."""
    try:
        from stl_bench.data.corruptions import imagenet_c_pipeline
    except ImportError:
        return _ImageNetCCrop()
    return imagenet_c_pipeline


@dataclass
class CorruptionViews:
    """The on-device view transform for on-the-fly IN-C: corrupt, then JPEG round trip."""

    corrupt: CorruptFn
    seed: SeedFn
    jpeg: JpegFn

    @classmethod
    def default(cls) -> "CorruptionViews":
        from stl_bench.data import corruptions as C

        return cls(corrupt=C.corrupt_batch, seed=C.sample_seed,
                   jpeg=lambda x: C.jpeg_roundtrip(x, quality=JPEG_QUALITY))

    def __call__(self, images: torch.Tensor, keys: list[str], view: View) -> torch.Tensor:
        assert view.corruption is not None, "on-the-fly views carry a corruption"
        seeds = [self.seed(k, view.corruption, view.severity) for k in keys]
        out = self.corrupt(images, view.corruption, view.severity, seeds)
        return self.jpeg(out)
