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
is what offline token labels need to cut the student's region out of a label map. For
offline labels the geometric RandAugment operations are recorded too: they are replayed
on a coordinate image (red = x, green = y, blue = inside), read at the centre of every
student token, which gives, per token, where in the cropped and flipped view its pixels
came from and whether they came from the image at all (a rotation's corners are fill).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, rand_augment_transform
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
    """The training augmentation recipe, defined once (defaults: the official STL / FAN ImageNet one).

    Its fields are the `stl-bench train` flags of the same names (the docstrings are their
    help), and both consumers read it as it is: `TrainViews` (per image: crop, flip,
    RandAugment and, when `erase_after_mix` is off, random erasing) and
    `stl_bench.data.batch_augment.BatchAugment` (per batch: mixup/cutmix, then erasing
    when `erase_after_mix` is on). Erasing happens in exactly one of the two places.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    """random-resized-crop area range"""
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    """random-resized-crop aspect-ratio range"""
    hflip: float = 0.5
    """horizontal flip probability"""
    aa: str | None = "rand-m9-mstd0.5-inc1"
    """RandAugment policy (timm string); 'none' disables it"""
    train_interpolation: str = "random"
    """resize interpolation for training crops ('random' = bilinear or bicubic)"""
    reprob: float = 0.3
    """random erasing probability (student view only)"""
    erase_after_mix: bool = True
    """erase on the mixed batch, after mixup/cutmix (the official order); --no-erase-after-mix erases each
    image before mixing"""
    remode: str = "pixel"
    """random erasing fill mode"""
    recount: int = 1
    """random erasing regions per image"""
    mixup: float = 0.8
    """mixup alpha (0 disables)"""
    cutmix: float = 1.0
    """cutmix alpha (0 disables)"""
    mixup_prob: float = 1.0
    """probability of mixing a batch"""
    mixup_switch_prob: float = 0.5
    """probability of cutmix instead of mixup when both are on"""
    mixup_mode: str = "batch"
    """mix per 'batch', 'pair' or 'elem'"""
    smoothing: float = 0.1
    """label smoothing of the image target"""

    def __post_init__(self) -> None:
        if self.aa is not None and self.aa.lower() == "none":
            self.aa = None
        self.scale = tuple(self.scale)
        self.ratio = tuple(self.ratio)

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix on): then images are paired within a batch."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def erase_per_image(self) -> float:
        """The per-image erasing probability: 0 when erasing happens on the mixed batch instead."""
        return 0.0 if self.erase_after_mix else self.reprob


class TrainViews:
    """PIL image -> dict(image=student tensor, box=[4], flip=scalar[, clean=tensor][, warp=tensor]).

    `clean=True` adds the labeler's clean view. `warp_grid=(gh, gw)` (the student's token
    grid) adds `warp` [gh, gw, 3]: per token, the (x, y) it samples in the crop before
    RandAugment, in `grid_sample`'s [-1, 1] units, and 1.0 where that point lies inside
    the image (0.0 in fill). Without either the output is the ordinary timm training
    augmentation plus the recorded box and flip (cheap to carry, and what offline token
    labels crop with). `img_size`, `mean` and `std` are the model's (its pretrained_cfg),
    not part of the recipe.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        img_size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        clean: bool = False,
        warp_grid: tuple[int, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.img_size = tuple(img_size)
        self.clean = clean
        self.warp_grid = tuple(warp_grid) if warp_grid else None
        self.crop = RandomResizedCropAndInterpolation(
            self.img_size, scale=cfg.scale, ratio=cfg.ratio, interpolation=cfg.train_interpolation
        )
        self.randaug = _randaugment(cfg, self.img_size, mean)
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))])
        reprob = cfg.erase_per_image
        self.erase = RandomErasing(reprob, mode=cfg.remode, max_count=cfg.recount, device="cpu") if reprob > 0 else None

    def _crop_flip(self, img: Image.Image) -> tuple[Image.Image, Image.Image | None, list[float], bool]:
        width, height = img.size
        top, left, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        interp = self.crop.interpolation
        if isinstance(interp, (list, tuple)):
            interp = random.choice(interp)
        size = list(self.img_size)
        student = TF.resized_crop(img, top, left, h, w, size, interp)
        clean = student.copy() if self.clean else None
        flip = random.random() < self.cfg.hflip
        if flip:
            student = TF.hflip(student)
            clean = TF.hflip(clean) if clean is not None else None
        box = [left / width, top / height, (left + w) / width, (top + h) / height]
        return student, clean, box, flip

    def _randaugment(self, student: Image.Image, followers: list[Image.Image | None]) -> tuple[Image.Image, list]:
        """RandAugment on the student; its geometric ops replayed on each follower view."""
        ra = self.randaug
        # The op choice of timm's RandAugment.__call__, so single-view output is identical.
        ops = np.random.choice(ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights)
        for op in ops:
            state = random.getstate()
            student = op(student)
            if op.name in GEOMETRIC_OPS and any(f is not None for f in followers):
                after = random.getstate()
                for i, view in enumerate(followers):
                    if view is not None:
                        random.setstate(state)  # replay: same apply/skip draw, magnitude, sign, resample
                        followers[i] = op(view)
                random.setstate(after)
        return student, followers

    def __call__(self, img: Image.Image) -> dict[str, torch.Tensor]:
        student, clean, box, flip = self._crop_flip(img)
        coords = coordinate_image(student.size) if self.warp_grid and self.randaug is not None else None
        if self.randaug is not None:
            student, (clean, coords) = self._randaugment(student, [clean, coords])
        x = self.to_tensor(student)
        if self.erase is not None:
            x = self.erase(x)
        out = {"image": x, "box": torch.tensor(box, dtype=torch.float32), "flip": torch.tensor(flip)}
        if clean is not None:
            out["clean"] = self.to_tensor(clean)
        if self.warp_grid:
            out["warp"] = token_warp(coords, self.warp_grid, student.size)
        return out


def _randaugment(cfg: AugmentConfig, img_size: tuple[int, int], mean: Sequence[float]) -> Any:
    """timm's RandAugment for `cfg.aa`, with the hyper-parameters timm's transforms_imagenet_train passes."""
    if not cfg.aa:
        return None
    if not cfg.aa.startswith("rand"):
        raise ValueError(f"only RandAugment ('rand-...') is supported, got {cfg.aa!r}")
    hparams: dict[str, Any] = dict(
        translate_const=int(min(img_size) * 0.45),
        img_mean=tuple(min(255, round(255 * x)) for x in mean),
    )
    if cfg.train_interpolation and cfg.train_interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(cfg.train_interpolation)
    return rand_augment_transform(cfg.aa, hparams)


@lru_cache(maxsize=8)
def coordinate_image(size: tuple[int, int]) -> Image.Image:
    """An RGB image whose red is x and green is y (0..255 across it) and blue is 255.

    The same for every sample of a size, so it is made once: RandAugment's ops return
    new images and never write into this one.
    """
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32).round().astype(np.uint8)
    y = np.linspace(0, 255, h, dtype=np.float32).round().astype(np.uint8)
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = x[None, :]
    rgb[..., 1] = y[:, None]
    rgb[..., 2] = 255
    return Image.fromarray(rgb, mode="RGB")


def token_warp(coords: Image.Image | None, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[gh, gw, 3]: (x, y) in grid_sample units and inside-ness, read at each token's centre.

    `coords` is `coordinate_image` after the geometric ops (None: no op moved pixels, the
    identity). It is read bilinearly at the exact centres (the coordinates are linear,
    so the reading is exact away from fill). Fill is the image mean, far below blue's
    255, so a token counts as inside when blue is above 200.
    """
    gh, gw = grid
    w, h = size
    # Token centres in pixel-index coordinates (pixel i's centre is at i).
    tx = (np.arange(gw) + 0.5) * w / gw - 0.5
    ty = (np.arange(gh) + 0.5) * h / gh - 0.5
    px, py = np.meshgrid(tx, ty)
    inside = np.ones((gh, gw))
    if coords is not None:
        rgb = _bilinear(np.asarray(coords, dtype=np.float64), px, py)  # gh, gw, 3
        px = rgb[..., 0] / 255.0 * (w - 1)
        py = rgb[..., 1] / 255.0 * (h - 1)
        inside = (rgb[..., 2] > 200).astype(np.float64)
    # Pixel-index coordinates to grid_sample's align_corners=False units.
    gx = 2.0 * (px + 0.5) / w - 1.0
    gy = 2.0 * (py + 0.5) / h - 1.0
    return torch.from_numpy(np.stack([gx, gy, inside], axis=-1).astype(np.float32))


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = x.clip(0, w - 1)
    y = y.clip(0, h - 1)
    x0 = np.floor(x).astype(np.int64).clip(0, max(w - 2, 0))
    y0 = np.floor(y).astype(np.int64).clip(0, max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


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
    warps: torch.Tensor | None = None

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
        warps=torch.stack([v["warp"] for v in views]) if "warp" in views[0] else None,
    )
