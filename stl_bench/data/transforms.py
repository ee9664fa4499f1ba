"""Training and evaluation transforms, including STL's paired student / clean-teacher view.

Stage 2 needs two views of one sample that agree on geometry: the student's, with the
full recipe (random-resized crop, flip, RandAugment, random erasing), and a clean one
for the frozen labeler with the same crop box, the same flip and the same *geometric*
RandAugment operations (rotate, shear, translate, with the same magnitudes and signs)
but no colour operations and no erasing. timm's pieces are used as they are; what this
module adds is the bookkeeping: the crop box and flip are recorded, and each RandAugment
operation that moves pixels is replayed on the clean view by restoring Python's random
state before it, so it draws the same magnitude, sign and interpolation.

The crop box (normalised x1, y1, x2, y2) and flip also travel with every sample, which
is what offline token labels need to cut the student's region out of a label map.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import create_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision import transforms

# RandAugment operations that move pixels; every other timm RandAugment op changes colour
# or intensity only (AutoContrast, Equalize, Invert, Posterize, Solarize, Color, ...).
GEOMETRIC_OPS = frozenset(
    {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
)


@dataclass
class AugmentConfig:
    """The training augmentation recipe (defaults: the official STL / FAN ImageNet one)."""

    img_size: tuple[int, int] = (224, 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "random"
    reprob: float = 0.3
    remode: str = "pixel"
    recount: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class TrainViews:
    """PIL image -> dict(image=student tensor, box=[4], flip=scalar[, clean=tensor]).

    `clean=True` adds the labeler's clean view. Without it the output is the ordinary
    timm training augmentation plus the recorded box and flip (cheap to carry, and what
    offline token labels crop with).
    """

    def __init__(self, cfg: AugmentConfig, clean: bool = False) -> None:
        self.cfg = cfg
        self.clean = clean
        self.crop = RandomResizedCropAndInterpolation(
            cfg.img_size, scale=cfg.scale, ratio=cfg.ratio, interpolation=cfg.interpolation
        )
        self.randaug = None
        if cfg.auto_augment:
            if not cfg.auto_augment.startswith("rand"):
                raise ValueError(f"only RandAugment ('rand-...') is supported, got {cfg.auto_augment!r}")
            # The same hyper-parameters timm's transforms_imagenet_train passes.
            hparams: dict[str, Any] = dict(
                translate_const=int(min(cfg.img_size) * 0.45),
                img_mean=tuple(min(255, round(255 * x)) for x in cfg.mean),
            )
            if cfg.interpolation and cfg.interpolation != "random":
                hparams["interpolation"] = str_to_pil_interp(cfg.interpolation)
            self.randaug = rand_augment_transform(cfg.auto_augment, hparams)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)])
        self.erase = (
            RandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount, device="cpu") if cfg.reprob > 0 else None
        )

    def _crop_flip(self, img: Image.Image) -> tuple[Image.Image, Image.Image | None, list[float], bool]:
        width, height = img.size
        top, left, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        interp = self.crop.interpolation
        if isinstance(interp, (list, tuple)):
            interp = random.choice(interp)
        size = list(self.cfg.img_size)
        student = TF.resized_crop(img, top, left, h, w, size, interp)
        clean = student.copy() if self.clean else None
        flip = random.random() < self.cfg.hflip
        if flip:
            student = TF.hflip(student)
            clean = TF.hflip(clean) if clean is not None else None
        box = [left / width, top / height, (left + w) / width, (top + h) / height]
        return student, clean, box, flip

    def _randaugment(self, student: Image.Image, clean: Image.Image | None) -> tuple[Image.Image, Image.Image | None]:
        ra = self.randaug
        # The op choice of timm's RandAugment.__call__, so single-view output is identical.
        ops = np.random.choice(ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights)
        for op in ops:
            state = random.getstate()
            student = op(student)
            if clean is not None and op.name in GEOMETRIC_OPS:
                after = random.getstate()
                random.setstate(state)  # replay: same apply/skip draw, magnitude, sign, resample
                clean = op(clean)
                random.setstate(after)
        return student, clean

    def __call__(self, img: Image.Image) -> dict[str, torch.Tensor]:
        student, clean, box, flip = self._crop_flip(img)
        if self.randaug is not None:
            student, clean = self._randaugment(student, clean)
        x = self.to_tensor(student)
        if self.erase is not None:
            x = self.erase(x)
        out = {"image": x, "box": torch.tensor(box, dtype=torch.float32), "flip": torch.tensor(flip)}
        if clean is not None:
            out["clean"] = self.to_tensor(clean)
        return out


def eval_transform(
    img_size: tuple[int, int], crop_pct: float, interpolation: str, mean: Sequence[float], std: Sequence[float]
):
    """timm's evaluation transform (resize, centre crop at `crop_pct`, normalise)."""
    return create_transform(
        input_size=(3, *img_size),
        is_training=False,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )


def labeling_transform(img_size: tuple[int, int], interpolation: str, mean: Sequence[float], std: Sequence[float]):
    """The whole image squeezed to the labeler's input (no crop), so a label map cell
    (i, j) covers the same normalised image region that a training crop box refers to."""
    return transforms.Compose(
        [
            transforms.Resize(tuple(img_size), interpolation=str_to_pil_interp(interpolation)),
            transforms.ToTensor(),
            transforms.Normalize(tuple(mean), tuple(std)),
        ]
    )


@dataclass
class ViewBatch:
    """A training batch of `TrainViews` samples; unreadable files are left out and counted."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    clean: torch.Tensor | None
    bad_indices: list[int]

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def collate_views(samples: Sequence[Any]) -> ViewBatch:
    """Stack the readable `Sample(image=dict, target, index)`s; report the rest by index.

    Same contract as `stl_bench.data.folders.collate_skip_bad`: a bad file costs one
    sample, never the batch or the worker.
    """
    good = [s for s in samples if s.image is not None]
    bad = [int(s.index) for s in samples if s.image is None]
    if not good:
        empty = torch.empty(0)
        return ViewBatch(empty, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), empty, empty, None, bad)
    views = [s.image for s in good]
    return ViewBatch(
        images=torch.stack([v["image"] for v in views]),
        targets=torch.tensor([s.target for s in good], dtype=torch.long),
        indices=torch.tensor([s.index for s in good], dtype=torch.long),
        boxes=torch.stack([v["box"] for v in views]),
        flips=torch.stack([v["flip"] for v in views]),
        clean=torch.stack([v["clean"] for v in views]) if "clean" in views[0] else None,
        bad_indices=bad,
    )
