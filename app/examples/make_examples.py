"""Write the app's example images (run once; the PNGs are committed beside this file).

Digits come from the demo data's validation split (scikit-learn's bundled digits, 32x32
RGB), plus one cut-and-paste image whose left half is a 3 and right half a 7: the
case token labels exist for, where one image label is wrong for half the patches. Two
synthetic 224x224 scenes serve 1000-class models. Nothing is downloaded.

    python app/examples/make_examples.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stl_bench.data.demo import ensure_demo_data
from stl_bench.data.folders import load_rgb

HERE = Path(__file__).resolve().parent


def first_val_digit(root: Path, digit: int) -> Image.Image:
    return load_rgb(sorted((root / "val" / str(digit)).glob("*.png"))[0])


def synthetic_ball() -> Image.Image:
    """An orange ball on grass under a blue sky."""
    y = np.linspace(0.0, 1.0, 224)[:, None, None]
    sky = np.array([90, 150, 230]) * (1 - y) + np.array([200, 225, 250]) * y
    img = np.broadcast_to(sky, (224, 224, 3)).copy()
    img[150:] = [60, 140, 50]
    out = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    draw.ellipse([70, 80, 160, 170], fill=(245, 140, 30), outline=(120, 60, 10), width=3)
    return out


def synthetic_stripes() -> Image.Image:
    """Black and white diagonal stripes over a sandy ground."""
    yy, xx = np.mgrid[0:224, 0:224]
    stripes = ((xx + yy) // 14) % 2 == 0
    img = np.where(stripes[..., None], 20, 235).astype(np.uint8).repeat(3, axis=2)
    img[180:] = [210, 190, 140]
    return Image.fromarray(img)


def main() -> None:
    root = ensure_demo_data()
    for d in (0, 3, 7, 8):
        first_val_digit(root, d).save(HERE / f"digit_{d}.png")
    three, seven = np.asarray(first_val_digit(root, 3)), np.asarray(first_val_digit(root, 7))
    mixed = np.concatenate([three[:, :16], seven[:, 16:]], axis=1)
    Image.fromarray(mixed).save(HERE / "digits_3_and_7_cut_and_pasted.png")
    synthetic_ball().save(HERE / "synthetic_ball_on_grass.png")
    synthetic_stripes().save(HERE / "synthetic_stripes.png")


if __name__ == "__main__":
    main()
