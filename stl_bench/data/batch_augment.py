"""What happens to a training batch after collation: mixup/cutmix, then random erasing.

The official FAN/STL loader (timm 0.5.4 with its prefetcher) mixes in the collate
function and erases afterwards, on the mixed batch on the GPU: an erased rectangle is
noise in the mixed image, not a noised region that the mixing then blends with another
image. `erase_after_mix=True` follows that order; `False` keeps the erasing inside the
per-image transform (before mixing), which older runs and the demo recipe used.

Only the student's view passes through here; the clean view for an online labeler is
never mixed or erased, and token targets come from it.
"""
from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing

from stl_bench.data.transforms import AugmentConfig


class BatchAugment:
    """`(images, labels) -> (images, soft targets)`: mix (or just smooth), then erase.

    Reads the batch-level fields of the run's one `AugmentConfig` (mixup, cutmix,
    smoothing and, when `erase_after_mix` is on, the erasing settings). Works in place on
    `images`, as timm's Mixup and RandomErasing do.
    """

    def __init__(self, recipe: AugmentConfig, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.recipe = recipe
        self.num_classes = num_classes
        self.mixup = None
        if recipe.mixes:
            self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                               switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode,
                               label_smoothing=recipe.smoothing, num_classes=num_classes)
        self.erase = None
        if recipe.erase_after_mix and recipe.reprob > 0:
            self.erase = RandomErasing(recipe.reprob, mode=recipe.remode, max_count=recipe.recount,
                                       device=str(device))

    @property
    def pairs_images(self) -> bool:
        """Batch mixing pairs image i with image B-1-i: the batch must have an even size."""
        return self.mixup is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        else:
            targets = mixup_target(labels, self.num_classes, smoothing=self.recipe.smoothing)
        if self.erase is not None:
            images = self.erase(images)  # per image of the mixed batch, as the official prefetcher
        return images, targets
