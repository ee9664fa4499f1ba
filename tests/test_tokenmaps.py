"""Token maps: grids, label/confidence/Gumbel-kept maps (stl.tokenmaps), colours and overlays (ui.drawing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stl_bench.stl import tokenmaps as tm
from stl_bench.ui import drawing


@pytest.mark.parametrize("tokens, hw, grid", [
    (64, (32, 32), (8, 8)),
    (196, (224, 224), (14, 14)),
    (14 * 21, (224, 336), (14, 21)),
    (12, (96, 128), (3, 4)),
])
def test_token_grid_follows_input_shape(tokens, hw, grid):
    assert tm.token_grid(tokens, hw) == grid


def test_token_grid_rejects_impossible_counts():
    with pytest.raises(ValueError, match="do not form a grid"):
        tm.token_grid(63, (32, 32))


def _logits(rows: int, cols: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows * cols, classes, generator=torch.Generator().manual_seed(seed)) * 2


def test_maps_are_argmax_and_softmax_max_in_row_major_order():
    logits = _logits(3, 4, 7)
    maps = tm.compute_token_maps(logits, (3, 4), seed=5)
    assert maps.grid == (3, 4)
    np.testing.assert_array_equal(maps.labels.reshape(-1), logits.argmax(-1).numpy())
    np.testing.assert_allclose(maps.confidence.reshape(-1), torch.softmax(logits, -1).max(-1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(maps.kept, maps.sampled == maps.labels)
    # row-major: token 5 is row 1, column 1 of a 4-wide grid
    assert maps.labels[1, 1] == int(logits[5].argmax())
    assert sum(n for _, n in maps.class_counts()) == 12
    assert maps.expected_kept() == pytest.approx(float(maps.confidence.sum()))


def test_gumbel_draw_is_reproducible_by_seed_and_changes_with_it():
    logits = torch.zeros(256, 10)  # uniform: every draw is pure noise
    a = tm.gumbel_draw(logits, seed=3)
    np.testing.assert_array_equal(a, tm.gumbel_draw(logits, seed=3))
    assert (a != tm.gumbel_draw(logits, seed=4)).any()


def test_keep_frequency_matches_confidence_as_gumbel_softmax_does():
    # 20,000 copies of one token with probabilities (0.7, 0.2, 0.1): the Gumbel-max draw keeps
    # the argmax about 70% of the time, as torch's hard gumbel_softmax does.
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20_000, 3).contiguous()
    maps = tm.compute_token_maps(logits, (100, 200), seed=0)
    assert maps.confidence[0, 0] == pytest.approx(0.7, abs=1e-6)
    assert maps.kept.mean() == pytest.approx(0.7, abs=0.015)
    counts = np.bincount(maps.sampled.reshape(-1), minlength=3) / 20_000
    torch.manual_seed(0)
    reference = F.gumbel_softmax(logits, tau=1.0, hard=True).mean(0).numpy()
    np.testing.assert_allclose(counts, reference, atol=0.02)
    np.testing.assert_allclose(counts, probs.numpy(), atol=0.015)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="does not hold"):
        tm.compute_token_maps(torch.zeros(64, 3), (7, 7))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        tm.compute_token_maps(torch.zeros(1, 64, 3), (8, 8))


def test_palette_is_distinct_and_stable():
    colors = drawing.class_palette(1000)
    assert colors.shape == (1000, 3)
    assert len({tuple(c) for c in colors[:20]}) == 20
    assert len({tuple(c) for c in colors}) > 990
    assert drawing.class_color(3) == tuple(colors[3])
    assert drawing.hex_color((255, 0, 16)) == "#ff0010"
    assert all(len(set(c)) > 1 for c in colors[:20].tolist()), "no greys: grey means dropped / other"


def _crop(size: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_label_overlay_colours_each_patch_with_its_class():
    labels = np.arange(16).reshape(4, 4) % 5
    crop = _crop()
    scale = 3
    full = np.asarray(drawing.label_overlay(crop, labels, opacity=1.0, scale=scale))
    none = np.asarray(drawing.label_overlay(crop, labels, opacity=0.0, scale=scale))
    assert full.shape == (96, 96, 3)
    cell = 96 // 4
    for r in range(4):
        for c in range(4):
            centre = full[r * cell + cell // 2, c * cell + cell // 2]
            assert tuple(centre) == drawing.class_color(int(labels[r, c]))
    # opacity 0 leaves the image as the model saw it (away from the grid lines)
    src = np.asarray(crop.resize((96, 96), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(none[5:20, 5:20], src[5:20, 5:20])


def test_overlay_blending_is_proportional_to_opacity():
    crop = Image.new("RGB", (8, 8), (0, 0, 0))
    out = drawing.tint(crop, np.full((2, 2, 3), 200, dtype=np.uint8), 0.5)
    assert abs(int(np.asarray(out)[0, 0, 0]) - 100) <= 1


def test_kept_overlay_greys_and_crosses_dropped_tokens():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 0.1], [0.1, 0.0]])
    maps = tm.compute_token_maps(logits, (2, 2), seed=0)
    maps.kept[:] = [[True, True], [False, True]]
    maps.sampled[1, 0] = 0  # the dropped token drew class 0
    crop = Image.fromarray(np.dstack([np.full((8, 8), 200, np.uint8), np.zeros((8, 8), np.uint8),
                                      np.zeros((8, 8), np.uint8)]))
    out = np.asarray(drawing.kept_overlay(crop, maps, opacity=0.0, scale=16))
    dropped = out[64:128, 0:64]
    kept = out[0:64, 0:64]
    assert tuple(kept[10, 30]) == (200, 0, 0)  # kept and opacity 0: untouched red
    g = dropped[10, 30]
    assert g[0] == g[1] == g[2]  # greyed
    assert tuple(dropped[32, 32]) == drawing.class_color(0)  # the cross, in the drawn class's colour


def test_confidence_overlay_has_colour_bar_and_numbers():
    conf = np.linspace(0.1, 1.0, 16).reshape(4, 4)
    out = drawing.confidence_overlay(_crop(), conf, opacity=1.0, scale=12)
    assert out.width == 384 and out.height > 384  # the bar sits below the map
    arr = np.asarray(out)
    viridis = drawing.confidence_colors(conf)
    # a corner pixel of each patch (away from the printed number) shows its viridis colour
    assert tuple(arr[3, 3]) == tuple(viridis[0, 0])
    assert tuple(arr[3 * 96 + 3, 3 * 96 + 3]) == tuple(viridis[3, 3])
    assert drawing._short_prob(0.874) == ".87" and drawing._short_prob(0.999) == "1.0"


def test_rendered_label_map_has_a_legend_row_per_class():
    maps = tm.compute_token_maps(_logits(4, 4, 3), (4, 4))
    names = ["cat", "dog", "cow"]
    entries = drawing.legend_entries(maps, names)
    assert len(entries) == len(maps.class_counts())
    assert entries[0][1].startswith(names[maps.class_counts()[0][0]])
    picture = drawing.render_label_map(_crop(), maps, names, 0.5, scale=4, title="labeler")
    assert picture.width == 240 and picture.height > 128
    pair = drawing.side_by_side([picture, picture], gap=10)
    assert pair.size == (490, picture.height)
