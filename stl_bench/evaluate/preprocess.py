"""Evaluation preprocessing from a runner's timm data config, split for speed.

Workers only decode and do geometry (resize, centre crop) and hand over uint8 tensors:
a quarter of the bytes of float32 through worker pipes and pinned memory. Scaling by
mean and std happens on the model's device, once per batch. ImageNet-C files are
already 224 x 224 crops, so they get identity geometry (a resize and crop would zoom
them), resized only when the model's input size is different.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}
# F.interpolate knows fewer modes than PIL; the tensor path (on-the-fly IN-C) maps the rest.
_TENSOR_MODE = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `floor(size / crop_pct)`, centre crop `size`, then (x / 255 - mean) / std."""

    input_size: tuple[int, int]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    @classmethod
    def from_data_config(cls, cfg: Mapping[str, Any]) -> "Preprocessing":
        size = cfg.get("input_size", (3, 224, 224))
        interp = str(cfg.get("interpolation", "bicubic") or "bicubic")
        if interp not in _INTERP:
            interp = "bicubic"
        return cls(
            input_size=(int(size[-2]), int(size[-1])),
            crop_pct=float(cfg.get("crop_pct") or 0.875),
            interpolation=interp,
            mean=tuple(float(m) for m in cfg.get("mean", cls.mean)),
            std=tuple(float(s) for s in cfg.get("std", cls.std)),
        )

    @property
    def resize_size(self) -> tuple[int, int]:
        # timm's eval transform: scale by 1/crop_pct and floor, then centre crop.
        return (math.floor(self.input_size[0] / self.crop_pct), math.floor(self.input_size[1] / self.crop_pct))

    def describe(self) -> str:
        """One line for leaderboard rows: what was done to every image."""
        h, w = self.input_size
        rh, rw = self.resize_size
        mean = ",".join(f"{m:.3f}" for m in self.mean)
        std = ",".join(f"{s:.3f}" for s in self.std)
        return (f"resize {rh}x{rw} {self.interpolation} (crop_pct {self.crop_pct:g}), crop {h}x{w}, "
                f"mean {mean} std {std}; in-c identity (resize to {h}x{w} only if different)")

    def folder_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return _ResizeCrop(self.resize_size, self.input_size, _INTERP[self.interpolation])

    def identity_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return _ResizeIfNeeded(self.input_size, _INTERP[self.interpolation])

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) NCHW on any device -> normalised float at the model's size."""
        x = images.float()
        if tuple(x.shape[-2:]) != self.input_size:
            mode = _TENSOR_MODE.get(self.interpolation, "bilinear")
            x = F.interpolate(x, size=self.input_size, mode=mode,
                              antialias=mode != "nearest", align_corners=False if mode != "nearest" else None)
            x = x.clamp_(0, 255)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) * 255.0
        return (x - mean) / std


class _ResizeCrop:
    """PIL -> uint8 tensor: shorter-side style resize by 1/crop_pct, then centre crop."""

    def __init__(self, resize: tuple[int, int], crop: tuple[int, int], interp: InterpolationMode) -> None:
        self.resize, self.crop, self.interp = resize, crop, interp

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.resize[0] == self.resize[1]:
            img = TF.resize(img, self.resize[0], interpolation=self.interp)  # shorter side, keeps aspect
        else:
            img = TF.resize(img, list(self.resize), interpolation=self.interp)
        img = TF.center_crop(img, list(self.crop))
        return TF.pil_to_tensor(img)


class _ResizeIfNeeded:
    """PIL -> uint8 tensor, resized to the model's input size only when it differs."""

    def __init__(self, size: tuple[int, int], interp: InterpolationMode) -> None:
        self.size, self.interp = size, interp

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if (img.height, img.width) != self.size:
            img = TF.resize(img, list(self.size), interpolation=self.interp)
        return TF.pil_to_tensor(img)
