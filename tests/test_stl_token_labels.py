"""Offline token labels: roi_align crop/flip of label maps, and the label files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stl_bench.data.token_labels import LabelMeta, LabelWriter, TokenLabelStore, crop_label_maps
from stl_bench.errors import StlBenchError


def _coordinate_map(h: int, w: int) -> torch.Tensor:
    """Channel 0 holds each cell's x centre, channel 1 its y centre (bilinear-exact)."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys])[None].float()


def test_crop_uses_x1_y1_x2_y2_on_a_non_square_map() -> None:
    maps = _coordinate_map(4, 8)  # 4 rows, 8 columns
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]])  # x 2..6, y 1..3 in cells
    out = crop_label_maps(maps, box, torch.tensor([False]), (2, 4))
    assert torch.allclose(out[0, 0], torch.tensor([[2.5, 3.5, 4.5, 5.5]] * 2), atol=1e-5)
    assert torch.allclose(out[0, 1], torch.tensor([[1.5] * 4, [2.5] * 4]), atol=1e-5)
    # the swapped (rows-for-columns) box of the original token-labeling code cuts elsewhere
    swapped = crop_label_maps(maps, box[:, [1, 0, 3, 2]] * torch.tensor([[0.5, 2, 0.5, 2]]), torch.tensor([False]), (2, 4))
    assert not torch.allclose(swapped, out)


def test_flip_mirrors_the_crop() -> None:
    maps = _coordinate_map(8, 8).expand(2, -1, -1, -1).contiguous()
    box = torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 2)
    out = crop_label_maps(maps, box, torch.tensor([False, True]), (8, 4))
    assert torch.equal(out[1], out[0].flip(-1))
    assert out[1, 0, 0, 0] > out[1, 0, 0, -1]


def test_one_hot_regions_land_on_the_right_tokens() -> None:
    # class 0 on the left half, class 1 on the right half of an 8x8 label map
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, :, :4] = 1
    maps[0, 1, :, 4:] = 1
    right = crop_label_maps(maps, torch.tensor([[0.5, 0.0, 1.0, 1.0]]), torch.tensor([False]), (4, 4))
    assert (right[0].argmax(0) == 1).all()
    centre = crop_label_maps(maps, torch.tensor([[0.25, 0.0, 0.75, 1.0]]), torch.tensor([False]), (4, 4))
    assert centre[0].argmax(0)[:, :2].eq(0).all() and centre[0].argmax(0)[:, 2:].eq(1).all()
    mirrored = crop_label_maps(maps, torch.tensor([[0.25, 0.0, 0.75, 1.0]]), torch.tensor([True]), (4, 4))
    assert mirrored[0].argmax(0)[:, :2].eq(1).all()


def _write(tmp: Path, n: int = 6, classes: int = 7, grid: tuple[int, int] = (2, 3), k: int = 3) -> tuple[Path, torch.Tensor]:
    files = [f"c{i % 2}/img{i}.png" for i in range(n)]
    meta = LabelMeta(grid=grid, topk=k, num_classes=classes, class_names=[f"k{i}" for i in range(classes)], files=files)
    writer = LabelWriter(tmp / "labels", meta)
    probs = torch.randn(n, grid[0] * grid[1], classes).softmax(-1)
    writer.write(torch.arange(n), probs)
    return writer.close(), probs


def test_label_files_round_trip_in_training_order(tmp_path: Path) -> None:
    out, probs = _write(tmp_path)
    store = TokenLabelStore(out)
    root = tmp_path / "data"
    samples = [(root / f"c{i % 2}/img{i}.png", i % 2) for i in (5, 0, 3)]  # another order than written
    store.bind(root, samples, [f"k{i}" for i in range(7)])
    dense = store.dense(torch.tensor([0, 2]))  # dataset samples 0 and 2 = images 5 and 3
    assert dense.shape == (2, 7, 2, 3)
    top = probs.topk(3, -1)
    expect = torch.zeros_like(probs).scatter_(2, top.indices, top.values)
    for row, image in ((0, 5), (1, 3)):
        assert torch.allclose(dense[row].flatten(1).T, expect[image], atol=1e-3)
    assert not list(out.glob(".*tmp*"))


def test_label_store_errors(tmp_path: Path) -> None:
    out, _ = _write(tmp_path)
    store = TokenLabelStore(out)
    with pytest.raises(StlBenchError, match="classes"):
        store.bind(tmp_path / "data", [], ["a", "b"])
    with pytest.raises(StlBenchError, match="no token labels"):
        store.bind(tmp_path / "data", [(tmp_path / "data/c0/new.png", 0)], [f"k{i}" for i in range(7)])
    with pytest.raises(StlBenchError, match="stl-bench label"):
        TokenLabelStore(tmp_path / "nowhere")


def test_offline_source_gives_token_targets_on_the_student_grid(tmp_path: Path) -> None:
    from stl_bench.stl.objectives import OfflineLabels, StepInputs

    out, probs = _write(tmp_path, n=2, classes=5, grid=(4, 4), k=5)
    store = TokenLabelStore(out)
    store.bind(tmp_path / "d", [(tmp_path / f"d/c{i % 2}/img{i}.png", 0) for i in range(2)], [f"k{i}" for i in range(5)])
    source = OfflineLabels(store, (4, 4), mode="softmax", smoothing=0.0)
    batch = StepInputs(images=torch.zeros(2, 3, 32, 32), targets=torch.zeros(2, 5), boxes=torch.tensor([[0.0, 0, 1, 1]] * 2),
                       flips=torch.tensor([False, False]), indices=torch.tensor([0, 1]))
    labels = source(batch)
    assert labels.shape == (2, 16, 5)
    # the full-image box at the stored grid gives back the stored (top-5 of 5 = all) probabilities
    assert torch.allclose(labels, probs, atol=2e-3)
    source.grid = (8, 8)  # a finer student grid: resampled, still distributions
    assert torch.allclose(source(batch).sum(-1), torch.ones(2, 64), atol=1e-5)


def test_offline_tokens_in_fill_take_the_image_label(tmp_path: Path) -> None:
    """A warp marks where a rotation left fill: those tokens get the image target."""
    from stl_bench.data.transforms import token_warp
    from stl_bench.stl.objectives import OfflineLabels, StepInputs

    out, probs = _write(tmp_path, n=2, classes=5, grid=(4, 4), k=5)
    store = TokenLabelStore(out)
    store.bind(tmp_path / "d", [(tmp_path / f"d/c{i % 2}/img{i}.png", 0) for i in range(2)], [f"k{i}" for i in range(5)])
    source = OfflineLabels(store, (4, 4), mode="softmax", smoothing=0.0)
    assert source.warp_grid == (4, 4)
    warps = torch.stack([token_warp(None, (4, 4), (32, 32))] * 2)
    warps[0, 0, :, 2] = 0.0  # the first image's top row of tokens lies in fill
    targets = torch.nn.functional.one_hot(torch.tensor([3, 1]), 5).float()
    batch = StepInputs(images=torch.zeros(2, 3, 32, 32), targets=targets, boxes=torch.tensor([[0.0, 0, 1, 1]] * 2),
                       flips=torch.tensor([False, False]), indices=torch.tensor([0, 1]), warps=warps)
    labels = source(batch)
    assert torch.equal(labels[0, :4], targets[0].expand(4, 5))
    assert torch.allclose(labels[0, 4:], probs[0, 4:], atol=2e-3)  # an identity warp changes nothing else
    assert torch.allclose(labels[1], probs[1], atol=2e-3)
