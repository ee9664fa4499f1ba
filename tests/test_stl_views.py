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


CFG = AugmentConfig(scale=(0.3, 1.0), hflip=0.5, aa="rand-m9-mstd0.5-inc1", reprob=1.0, erase_after_mix=False)
SIZE = (32, 32)


def test_clean_view_equals_student_view_without_colour_ops_and_erasing() -> None:
    paired = TrainViews(CFG, SIZE, clean=True)
    # The reference: the same recipe with every colour op made a no-op and no erasing.
    # Its ops still draw the same random numbers, so with equal seeds the geometry matches.
    reference = TrainViews(AugmentConfig(**{**CFG.__dict__, "reprob": 0.0}), SIZE, clean=False)
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
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, aa="rand-n1-m9-mstd0.5-inc1", reprob=0.0)
    views = TrainViews(cfg, (32, 32), clean=True)
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
    cfg = AugmentConfig(scale=(0.2, 0.5), hflip=1.0, aa=None, reprob=0.0, train_interpolation="bilinear")
    # a horizontal ramp: the crop's mean colour tells where it was taken, the flip reverses it
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (100, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    _seed(3)
    out = TrainViews(cfg, (16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(img)
    x1, y1, x2, y2 = out["box"].tolist()
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert bool(out["flip"])
    row = out["image"][0, 8]
    assert row[0] > row[-1]  # flipped: brightest (rightmost) column now on the left
    assert row.mean().item() * 255 == pytest.approx((x1 + x2) / 2 * 255, abs=6)


def test_single_view_has_no_clean_tensor() -> None:
    out = TrainViews(CFG, SIZE)(_photo())
    assert "clean" not in out and out["image"].shape == (3, 32, 32)


# --- offline labels follow the geometric ops (token_warp) -----------------------------
PALETTE = np.array([[r, g, b] for r in (0, 255) for g in (0, 128, 255) for b in (0, 255)][:10]
                   + [[64, 64, 192], [192, 64, 64], [64, 192, 64], [192, 192, 64], [64, 192, 192], [192, 64, 192]])


def _class_image() -> tuple[Image.Image, torch.Tensor]:
    """64 px, a 4x4 grid of 16 px cells, cell k painted PALETTE[k]; and its one-hot label
    map on an 8x8 token grid (each token lies inside one cell)."""
    cls = np.arange(16).reshape(4, 4).repeat(16, 0).repeat(16, 1)
    img = Image.fromarray(PALETTE[cls].astype(np.uint8))
    tokens = torch.from_numpy(np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1))
    return img, torch.nn.functional.one_hot(tokens, 16).permute(2, 0, 1).float()[None]


def _classes_seen(image: torch.Tensor, grid: int = 8) -> np.ndarray:
    """The palette class at each token centre of a [3, H, W] image in 0..1."""
    h = image.shape[-1]
    centres = ((np.arange(grid) + 0.5) * h / grid).astype(int)
    rgb = (image[:, centres][:, :, centres].permute(1, 2, 0).numpy() * 255)[..., None, :]
    return np.abs(rgb - PALETTE[None, None]).sum(-1).argmin(-1)


def test_offline_label_maps_follow_rotation_shear_and_translation() -> None:
    from stl_bench.data.token_labels import crop_label_maps, warp_label_maps

    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, aa="rand-n2-m9-mstd0.5-inc1", reprob=0.0,
                        train_interpolation="bilinear")
    views = TrainViews(cfg, (64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), warp_grid=(8, 8))
    views.randaug.ops = [op for op in views.randaug.ops if op.name in GEOMETRIC_OPS]
    for op in views.randaug.ops:
        op.prob = 1.0
    img, maps = _class_image()
    agree_warped = agree_plain = inside_total = 0
    for s in range(40):
        _seed(s)
        out = views(img)
        assert out["warp"].shape == (8, 8, 3)
        seen = _classes_seen(out["image"])
        cropped = crop_label_maps(maps, out["box"][None], out["flip"][None], (8, 8))
        warped, inside = warp_label_maps(cropped, out["warp"][None])
        inside = inside[0].numpy()
        agree_warped += (warped[0].argmax(0).numpy() == seen)[inside].sum()
        agree_plain += (cropped[0].argmax(0).numpy() == seen)[inside].sum()
        inside_total += inside.sum()
    assert inside_total > 40 * 64 * 0.4  # two strong ops at m9 push many tokens into fill
    # Token centres near a cell edge can land on either side after bilinear resampling
    # (measured: 92% agree with the warp, 28% with crop and flip alone).
    assert agree_warped / inside_total > 0.88
    assert agree_plain / inside_total < 0.5  # crop and flip alone miss what the ops moved


def test_warp_is_the_identity_without_geometric_ops() -> None:
    cfg = AugmentConfig(scale=(0.5, 1.0), aa=None, reprob=0.0)
    out = TrainViews(cfg, (32, 32), warp_grid=(4, 4))(_photo())
    from stl_bench.data.token_labels import warp_label_maps

    maps = torch.rand(1, 5, 4, 4)
    moved, inside = warp_label_maps(maps, out["warp"][None])
    torch.testing.assert_close(moved, maps)
    assert bool(inside.all())
