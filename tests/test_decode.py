"""The one image decoder: every Pillow mode to the right RGB pixels, for every caller.

Images are tiny (8x6) and built here with known pixel values, so each expectation is
a formula, not a stored file.
"""
from __future__ import annotations

import colorsys
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from torch.utils.data import DataLoader

from stl_bench.data.decode import ImageLimits, decode_rgb, open_checked, to_rgb
from stl_bench.data.folders import ImageDataset, collate_skip_bad, load_rgb, scan_image_folder
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.serve.inputs import image_crop
from stl_bench.ui.images import load_image

W, H = 8, 6
BASE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
RAMP16 = np.linspace(0, 65535, W * H).round().astype(np.uint16).reshape(H, W)  # 0 and 65535 included


def _rgb() -> Image.Image:
    return Image.fromarray(BASE)


def _p_transparent() -> Image.Image:
    img = _rgb().convert("P")
    img.info["transparency"] = 3
    return img


def _raw(mode: str, arr: np.ndarray) -> Image.Image:
    return Image.frombytes(mode, (W, H), np.ascontiguousarray(arr).tobytes())


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


# Modes whose decoding is `convert("RGB")` exactly (what timm and torchvision give).
EIGHT_BIT = {
    "1": lambda: _rgb().convert("1"),
    "L": lambda: _rgb().convert("L"),
    "LA": lambda: _rgb().convert("LA"),
    "P": lambda: _rgb().convert("P"),
    "P+transparency": _p_transparent,
    "PA": lambda: _rgb().convert("P").convert("PA"),
    "RGB": _rgb,
    "RGBA": lambda: _rgb().convert("RGBA"),
    "CMYK": lambda: _raw("CMYK", np.dstack([BASE, BASE[..., :1] // 2])),
    "YCbCr": lambda: _raw("YCbCr", BASE),
    "HSV": lambda: _raw("HSV", BASE),
}


@pytest.mark.parametrize("name", sorted(EIGHT_BIT))
def test_eight_bit_modes_decode_exactly_as_convert_rgb(name):
    img = EIGHT_BIT[name]()
    reference = img.convert("RGB")
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (W, H)
    assert np.array_equal(np.asarray(out), np.asarray(reference))


def test_one_bit_is_black_and_white():
    out = _arr(to_rgb(EIGHT_BIT["1"]()))
    assert set(np.unique(out)) <= {0, 255} and len(np.unique(out)) == 2


def test_alpha_is_dropped_not_composited():
    rgba = np.dstack([BASE, np.zeros((H, W), np.uint8)])  # fully transparent
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(rgba))), BASE)
    la = np.dstack([BASE[..., 0], np.zeros((H, W), np.uint8)])
    assert np.array_equal(_arr(to_rgb(Image.fromarray(la, "LA")))[..., 1], BASE[..., 0])


def test_hsv_and_ycbcr_use_the_proper_colour_conversions():
    hsv = _arr(to_rgb(_raw("HSV", BASE)))
    want = np.array([[colorsys.hsv_to_rgb(*(px / 255.0)) for px in row] for row in BASE]) * 255.0
    assert np.abs(hsv - want).max() <= 1.0
    y, cb, cr = (BASE[..., i].astype(np.float64) for i in range(3))
    jfif = np.dstack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                      y + 1.772 * (cb - 128)]).clip(0, 255)
    assert np.abs(_arr(to_rgb(_raw("YCbCr", BASE))) - jfif).max() <= 1.0


def test_lab_goes_through_littlecms():
    lab = _raw("LAB", BASE)
    transform = ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    out = to_rgb(lab)
    assert out.mode == "RGB" and out.size == (W, H)
    assert np.array_equal(np.asarray(out), np.asarray(ImageCms.applyTransform(lab, transform)))
    # L* 0, 50, 100 with a* = b* = 0 (Pillow stores a, b as signed bytes): black, mid grey, white
    lightness = np.array([[0, 0, 0], [128, 0, 0], [255, 0, 0], [255, 0, 0]], np.uint8)
    greys = _arr(to_rgb(_raw("LAB", np.tile(lightness, (H, 2, 1)))))
    assert greys[0, 0].max() <= 1 and greys[0, 2].min() >= 254
    assert np.ptp(greys[0, 1]) <= 1 and 110 <= greys[0, 1, 0] <= 130


SIXTEEN_BIT = {
    "I;16": lambda a: Image.fromarray(a),
    "I;16L": lambda a: _raw("I;16L", a.astype("<u2")),
    "I;16B": lambda a: _raw("I;16B", a.astype(">u2")),
    "I;16N": lambda a: _raw("I;16N", a.astype("=u2")),
    "I": lambda a: Image.fromarray(a.astype(np.int32)),
}


@pytest.mark.parametrize("mode", sorted(SIXTEEN_BIT))
def test_sixteen_bit_data_is_scaled_by_its_bit_depth(mode):
    img = SIXTEEN_BIT[mode](RAMP16)
    assert img.mode == mode
    clipped = np.unique(np.asarray(img.convert("RGB")))
    assert len(clipped) < 10  # the bug this decoder fixes: convert("RGB") clips at 255
    notes: list[str] = []
    out = to_rgb(img, notes)
    assert out.mode == "RGB" and out.size == (W, H)
    gray = _arr(out)
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(gray[..., 0], np.rint(RAMP16 / 257.0).astype(np.int64))
    assert gray.min() == 0 and gray.max() == 255 and np.all(np.diff(gray[..., 0].ravel()) >= 0)
    assert notes == ["16-bit image scaled to 8 bits"]


def test_mode_i_beyond_sixteen_bits_is_stretched_from_its_range():
    values = np.linspace(-1000, 300_000, W * H).round().astype(np.int32).reshape(H, W)
    notes: list[str] = []
    gray = _arr(to_rgb(Image.fromarray(values), notes))[..., 0]
    want = np.rint((values - values.min()) * 255.0 / np.ptp(values))
    assert np.array_equal(gray, want) and gray.min() == 0 and gray.max() == 255
    assert "stretched" in notes[0]


def test_float_images_follow_the_zero_to_one_convention_or_are_stretched():
    unit = np.linspace(0.0, 1.0, W * H, dtype=np.float32).reshape(H, W)
    gray = _arr(to_rgb(Image.fromarray(unit)))[..., 0]
    assert np.array_equal(gray, np.rint(unit.astype(np.float64) * 255.0))
    hdr = unit * 10.0 - 2.0  # no white level: the image's range is stretched
    gray = _arr(to_rgb(Image.fromarray(hdr)))[..., 0]
    assert gray.min() == 0 and gray.max() == 255 and np.all(np.diff(gray.ravel()) >= 0)
    odd = unit.copy()
    odd[0, :3] = [np.nan, np.inf, -np.inf]
    gray = _arr(to_rgb(Image.fromarray(odd)))[..., 0]
    assert list(gray[0, :3]) == [0, 255, 0] and gray[-1, -1] == 255
    assert _arr(to_rgb(Image.fromarray(np.full((H, W), 7.5, np.float32)))).max() == 0


# Every file format that stores 8-bit modes, opened from disk: the decoder must give
# exactly `Image.open(p).convert("RGB")`, or ImageNet evaluation numbers would move.
FILES = [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P+transparency", "PNG"), ("RGB", "PNG"),
    ("RGBA", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("P+transparency", "GIF"),
    ("CMYK", "TIFF"), ("PA", "TIFF"), ("RGB", "BMP"), ("P", "BMP"), ("RGB", "WEBP"),
    ("RGBA", "WEBP"),
]


@pytest.mark.parametrize("name, fmt", FILES)
def test_eight_bit_files_decode_as_the_standard_loaders_do(tmp_path, name, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    EIGHT_BIT[name]().save(path, format=fmt)
    with Image.open(path) as img:
        reference = np.asarray(img.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(path)), reference)


def test_rgb_is_returned_without_a_copy():
    img = _rgb()
    assert to_rgb(img) is img


def test_first_frame_of_a_multi_frame_file(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("P", (W, H), i) for i in (1, 2, 3)]
    for i, f in enumerate(frames):
        f.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 756)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as img:
        img.seek(2)  # a caller left it on another frame
        notes: list[str] = []
        out = to_rgb(img, notes)
    assert tuple(np.asarray(out)[0, 0]) == (200, 10, 10)
    assert notes[0] == "first of 3 frames used"


TRANSPOSED = {  # EXIF orientation -> how the stored pixels turn upright
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(TRANSPOSED))
def test_exif_orientation_is_applied_once(tmp_path, orientation):
    img = _rgb()
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "tagged.png"
    img.save(path, exif=exif)
    out = load_rgb(path)
    assert np.array_equal(np.asarray(out), TRANSPOSED[orientation](BASE))
    assert np.array_equal(np.asarray(to_rgb(out)), np.asarray(out))  # decoding again changes nothing


def test_exif_rotated_jpeg_comes_out_rotated(tmp_path):
    arr = np.zeros((60, 80, 3), np.uint8)
    arr[:20, :20] = 255  # a white top-left block, seen top-right once turned 90 degrees clockwise
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    out = np.asarray(load_rgb(path))
    assert out.shape == (80, 60, 3)
    assert out[5, -5].min() > 200 and out[5, 5].max() < 50


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
@pytest.mark.parametrize("block", [
    b"Exif\x00\x00XX*\x00\x08\x00\x00\x00",  # no byte order: Pillow's parser raises SyntaxError
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset past the end: Pillow warns
])
def test_bad_exif_does_not_make_a_good_picture_unreadable(block):
    img = _rgb()
    img.info["exif"] = block
    assert np.array_equal(np.asarray(to_rgb(img)), BASE)


def _folder(root, big_size=(40, 40)):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(BASE).save(root / c / f"{i}.png")
    Image.new("RGB", big_size, (9, 9, 9)).save(root / "b" / "huge.png")
    return scan_image_folder(root)


def _run(index):
    to_tensor = lambda im: torch.from_numpy(np.array(im.resize((W, H)))).permute(2, 0, 1)
    loader = DataLoader(ImageDataset(index.samples, to_tensor), batch_size=3, collate_fn=collate_skip_bad)
    seen, bad = 0, []
    for batch in loader:
        seen += len(batch.images)
        bad += batch.bad_indices
    return seen, sorted(index.samples[i][0].name for i in bad)


def test_decompression_bomb_in_a_folder_is_skipped_and_counted(tmp_path, monkeypatch):
    index = _folder(tmp_path / "d")  # 40x40 = 1600 pixels, the others 48
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1600 > 2 * 700: Pillow's error
    assert _run(index) == (4, ["huge.png"])


def test_bomb_warning_range_follows_pillows_warning_filter(tmp_path, monkeypatch):
    index = _folder(tmp_path / "d")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1000 < 1600 <= 2000: a warning only
    with pytest.warns(Image.DecompressionBombWarning):
        assert _run(index) == (5, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _run(index) == (4, ["huge.png"])


def test_sixteen_bit_png_gives_one_set_of_pixels_in_every_loader(tmp_path):
    (tmp_path / "d" / "scans").mkdir(parents=True)
    path = tmp_path / "d" / "scans" / "scan.png"
    Image.fromarray(np.tile(RAMP16, (4, 4))).save(path)  # 32x24, a 16-bit grey PNG
    with Image.open(path) as img:
        assert img.mode == "I;16"
    (folder_path, _), = scan_image_folder(tmp_path / "d").samples
    folder = np.asarray(ImageDataset([(folder_path, 0)])[0].image)
    app = np.asarray(load_image(path).image)
    with open_checked(path, "scan.png") as img:
        served = np.asarray(decode_rgb(img, "scan.png"))
    assert np.array_equal(folder, app) and np.array_equal(folder, served)
    assert np.array_equal(folder[..., 0], np.rint(np.tile(RAMP16, (4, 4)) / 257.0))
    prep = Preprocessing(input_size=(16, 16), crop_pct=1.0, interpolation="bilinear")
    crop = image_crop(path.read_bytes(), prep, ImageLimits(min_side=8))
    assert torch.equal(crop[0], prep.folder_transform()(load_rgb(path)))


def test_truncated_file_raises_while_decoding(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        load_rgb(path)
    with open(path, "rb") as fh, pytest.raises(Exception, match="truncated or corrupt"):
        decode_rgb(Image.open(io.BytesIO(fh.read())), "cut.png")


def test_calibration_images_from_a_folder_use_the_decoder(tmp_path):
    from timm.data import create_transform

    from stl_bench.data.real_images import real_images

    path = tmp_path / "scan.png"
    Image.fromarray(np.tile(RAMP16, (4, 4))).save(path)
    cfg = dict(input_size=(3, 16, 16), crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    x = real_images(cfg, 1, folder=tmp_path)
    want = create_transform(input_size=(3, 16, 16), is_training=False, crop_pct=1.0, interpolation="bilinear",
                            mean=(0.5,) * 3, std=(0.5,) * 3)(load_rgb(path))
    assert torch.equal(x[0], want)
    assert len(torch.unique(x)) > 60  # clipped 16-bit data gives 19 levels here, scaled data 90
