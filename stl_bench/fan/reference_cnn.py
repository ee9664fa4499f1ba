"""A small AlexNet-style CNN that plays AlexNet's part for small data sets.

ImageNet-C's mCE divides each model's corruption errors by AlexNet's. A data set with
other classes and 32-pixel images (the built-in digits demo) has no published AlexNet
row, so this network, AlexNet's design at 1/10 the width (five convs with ReLU and
max-pooling, two dropout fully-connected layers), was trained with several seeds and
evaluated with the same harness (`benchmarks/make_digits_normalizer.py`): its mean
per-corruption errors are the shipped `--normalizer digits` table. Registered in timm
as `alexnet_mini_32`, so the trainer and every command build it by name.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["AlexNetMini"]


class AlexNetMini(nn.Module):
    """conv5-pool-conv5-pool-conv3-conv3-conv3-pool, then dropout-fc-relu x2 and the head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] = 32,
                 width: int = 32, hidden: int = 256, drop_rate: float = 0.5, global_pool: str = "") -> None:
        super().__init__()
        h, wd = to_2tuple(img_size)
        if h % 8 or wd % 8:
            raise ValueError(f"alexnet_mini needs an input size divisible by 8, not {img_size}")
        w = width
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 3 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(3 * w, 3 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(3 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        flat = 2 * w * (h // 8) * (wd // 8)
        self.pre_logits = nn.Sequential(
            nn.Flatten(1), nn.Dropout(drop_rate), nn.Linear(flat, hidden), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.num_features = self.head_hidden_size = hidden
        self.head = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    "alexnet_mini_32.untrained": {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "features.0", "classifier": "head", "fixed_input_size": True,
    },
})


@register_model
def alexnet_mini_32(pretrained: bool = False, **kwargs) -> AlexNetMini:
    kwargs.pop("drop_path_rate", None)  # the trainer passes it to every model; a CNN without residuals has none
    return build_model_with_cfg(AlexNetMini, "alexnet_mini_32", pretrained, **kwargs)
