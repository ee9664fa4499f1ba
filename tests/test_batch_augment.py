"""Batch mixing and erasing in the official order: mixup/cutmix first, then random erasing."""
from __future__ import annotations

import torch

from stl_bench.data.batch_augment import BatchAugment
from stl_bench.data.transforms import AugmentConfig
from stl_bench.train.config import PRESETS, TrainConfig, resolve_config


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # two distinct constant images per pair, so any mixing leaves no pixel at exactly 0
    x = torch.cat([torch.full((4, 3, 16, 16), 1.0), torch.full((4, 3, 16, 16), 2.0)])
    return x, torch.arange(8) % 4


def test_erasing_after_mix_leaves_unmixed_erased_regions() -> None:
    torch.manual_seed(0)
    recipe = AugmentConfig(mixup=1.0, cutmix=0.0, reprob=1.0, remode="const", erase_after_mix=True)
    images, targets = BatchAugment(recipe, num_classes=4)(*_batch())
    mixed = (images != 0)
    # every image was mixed (no value of 1 or 2 survives outside the erased box) and erased (exact zeros)
    assert all((img == 0).any() for img in images)
    assert not torch.isin(images[mixed], torch.tensor([1.0, 2.0])).all()
    assert torch.allclose(targets.sum(-1), torch.ones(8))


def test_no_batch_erasing_when_the_transform_erases() -> None:
    torch.manual_seed(0)
    recipe = AugmentConfig(mixup=1.0, cutmix=0.0, reprob=1.0, remode="const", erase_after_mix=False)
    images, _ = BatchAugment(recipe, num_classes=4)(*_batch())
    assert not (images == 0).any()


def test_without_mixing_targets_are_smoothed_one_hots() -> None:
    aug = BatchAugment(AugmentConfig(mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.1), num_classes=4)
    assert not aug.pairs_images
    _, targets = aug(*_batch())
    assert torch.allclose(targets.max(-1).values, torch.full((8,), 0.925))


def test_official_presets_erase_after_mixing() -> None:
    for name in PRESETS:
        cfg = resolve_config(name)
        assert cfg.erase_after_mix == (name != "demo"), name
    # a run saved before the option existed keeps erasing before mixing when resumed
    assert TrainConfig.from_dict({"stage": "labeler"}).erase_after_mix is False
