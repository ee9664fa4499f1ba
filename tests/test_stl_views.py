"""The paired view: the clean teacher view shares the student's geometry, not its colour or erasing."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from stl_bench.data.transforms import GEOMETRIC_OPS, AugmentConfig, TrainViews


def _photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _seed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


CFG = AugmentConfig(img_size=(32, 32), scale=(0.3, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", reprob=1.0)


def test_clean_view_equals_student_view_without_colour_ops_and_erasing() -> None:
    paired = TrainViews(CFG, clean=True)
    # The reference: the same recipe with every colour op made a no-op and no erasing.
    # Its ops still draw the same random numbers, so with equal seeds the geometry matches.
    reference = TrainViews(AugmentConfig(**{**CFG.__dict__, "reprob": 0.0}), clean=False)
    for op in reference.randaug.ops:
        if op.name not in GEOMETRIC_OPS:
            op.aug_fn = lambda img, *args, **kwargs: img
    differs = 0
    for s in range(40):
        img = _photo(s)
        _seed(s)
        views = paired(img)
        _seed(s)
        ref = reference(img)
        assert torch.equal(views["clean"], ref["image"]), f"seed {s}: clean view geometry differs"
        assert torch.equal(views["box"], ref["box"]) and bool(views["flip"]) == bool(ref["flip"])
        differs += not torch.equal(views["clean"], views["image"])
    assert differs >= 35  # colour ops and erasing (p=1) touch the student's view only


def test_geometric_ops_are_replayed_with_the_same_magnitude() -> None:
    cfg = AugmentConfig(img_size=(32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
                        auto_augment="rand-n1-m9-mstd0.5-inc1", reprob=0.0)
    views = TrainViews(cfg, clean=True)
    for op in views.randaug.ops:
        op.prob = 1.0
    seen_geometric = 0
    for s in range(30):
        _seed(s)
        chosen = np.random.choice(views.randaug.ops, 1)[0]
        _seed(s)
        out = views(_photo(s, (32, 32)))
        if chosen.name in GEOMETRIC_OPS:
            seen_geometric += 1
            assert torch.equal(out["image"], out["clean"]), chosen.name
    assert seen_geometric >= 5


def test_box_and_flip_describe_the_crop() -> None:
    cfg = AugmentConfig(img_size=(16, 16), scale=(0.2, 0.5), hflip=1.0, auto_augment=None, reprob=0.0,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")
    # a horizontal ramp: the crop's mean colour tells where it was taken, the flip reverses it
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (100, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    _seed(3)
    out = TrainViews(cfg)(img)
    x1, y1, x2, y2 = out["box"].tolist()
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert bool(out["flip"])
    row = out["image"][0, 8]
    assert row[0] > row[-1]  # flipped: brightest (rightmost) column now on the left
    assert row.mean().item() * 255 == pytest.approx((x1 + x2) / 2 * 255, abs=6)


def test_single_view_has_no_clean_tensor() -> None:
    out = TrainViews(CFG)(_photo())
    assert "clean" not in out and out["image"].shape == (3, 32, 32)
