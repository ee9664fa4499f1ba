"""The app's image intake: every kind of upload becomes RGB or a clear message."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from stl_bench.errors import StlBenchError
from stl_bench.ui.images import crop_box, load_image, prepare


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a size but holds no pixel data: opening it reads the header only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _noise(mode_size: tuple[int, int], channels: int = 3, seed: int = 0) -> np.ndarray:
    w, h = mode_size
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


@pytest.mark.parametrize("mode, note", [
    ("L", "grayscale"), ("LA", "alpha"), ("RGBA", "alpha"), ("CMYK", "CMYK"), ("P", None), ("RGB", None),
])
def test_modes_become_rgb_with_a_note(tmp_path, mode, note):
    img = Image.fromarray(_noise((40, 30))).convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.image.size == (40, 30)
    assert loaded.original_mode == mode
    if note:
        assert any(note in n for n in loaded.notes), loaded.notes
    else:
        assert loaded.notes == []


def test_sixteen_bit_scans_are_scaled_by_bit_depth_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
    path = tmp_path / "scan.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    out = np.asarray(loaded.image)[..., 0].astype(int)
    assert np.array_equal(out, np.rint(arr / 257.0).astype(int))  # not clipped at 255
    assert len(np.unique(out)) == 256
    assert loaded.notes == ["16-bit image scaled to 8 bits"]
    dark = np.linspace(0, 4000, 64 * 48).astype(np.uint16).reshape(48, 64)  # a dark scan stays dark: no stretch
    Image.fromarray(dark).save(path)
    assert np.asarray(load_image(path).image).max() == round(4000 / 257)


def test_rgba_drops_alpha_like_the_training_loader(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 250  # red, fully transparent
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert tuple(np.asarray(load_image(path).image)[0, 0]) == (250, 0, 0)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"name,value\n1,2\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
])
def test_non_images_are_refused_with_a_message(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(StlBenchError, match=message) as info:
        load_image(path)
    assert "upload.png" in str(info.value)


def test_truncated_image_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_noise((64, 64))).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(StlBenchError, match="truncated or corrupt|not an image"):
        load_image(path)


def test_huge_images_are_refused_before_decoding(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 30_000, 30_000)  # 900 MP claimed, 45 bytes on disk
    with pytest.raises(StlBenchError, match="too large|over the limit"):
        load_image(path)
    small = _png_header_only(tmp_path / "big.png", 8000, 6000)  # under Pillow's own bomb limit
    with pytest.raises(StlBenchError, match="over the limit of 40,000,000"):
        load_image(small)


def test_extreme_aspect_is_refused_and_large_images_downscaled_first(tmp_path):
    wide = tmp_path / "strip.png"
    Image.fromarray(_noise((500, 10))).save(wide)
    with pytest.raises(StlBenchError, match="aspect ratio"):
        load_image(wide)
    big = tmp_path / "big.jpg"
    Image.fromarray(_noise((1200, 800))).save(big)
    loaded = load_image(big, work_side=300)
    assert max(loaded.image.size) == 300 and loaded.original_size == (1200, 800)
    assert any("downscaled" in n for n in loaded.notes)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_noise((40, 20)))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.image.size == (20, 40)
    assert any("EXIF orientation" in n for n in loaded.notes)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (224, 224)])
@pytest.mark.parametrize("cfg", [
    dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    dict(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0,
         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
])
def test_prepare_matches_timm_eval_transform(size, cfg):
    # A smooth image: resampling differences then stay small and comparable.
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.dstack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)]).astype(np.uint8)
    image = Image.fromarray(arr)
    ours = prepare(image, cfg).batch
    reference = timm.data.create_transform(**cfg, is_training=False)(image)[None]
    assert ours.shape == reference.shape == (1, 3, *cfg["input_size"][1:])
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().mean() < 0.02
    assert (ours - reference).abs().max() < 0.25


def test_crop_box_is_the_centred_region_timm_keeps():
    cfg = dict(input_size=(3, 224, 224), crop_pct=0.875)
    left, top, right, bottom = crop_box((512, 256), cfg)
    # shorter side 256 -> 256 (224 / 0.875), then a 224 crop: 224 of 256 rows, centred
    assert (right - left) == pytest.approx(224) and (bottom - top) == pytest.approx(224)
    assert left == pytest.approx(144) and top == pytest.approx(16)
