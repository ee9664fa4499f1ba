"""Per-image CPU cost of the ImageNet-C corruptions: our batched kernels vs per-image runs.

Three ways to corrupt 224 px images, measured side by side in one process for each
corruption (alternating, best of --repeats, milliseconds per image):
  batched   `corrupt_batch` on a batch of --batch-size images (what `stl-bench corrupt`
            and on-the-fly IN-C evaluation run; on a CPU it works 2 images at a time);
  single    the same kernels one image at a time (batch 1);
  tu        torch-uncertainty's per-image torch ports (`torch_uncertainty.transforms.
            corruption`), when the package imports; it has no spatter. Its ports trade
            fidelity for speed in places (motion blur, snow and frost differ from ImageNet-C),
            so its column is a speed reference, not a like-for-like one.
Ratios: single / batched and tu / batched (above 1: batching is faster).

    python benchmarks/corruptions.py                       # all 19 at severity 3, 2 threads
    python benchmarks/corruptions.py --threads 1 --severity 5 --corruptions glass_blur,fog
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from stl_bench.data.corruptions import CORRUPTIONS, IMAGENET_C_PRE, STANDARD_CORRUPTIONS, corrupt_batch

# torch-uncertainty's class for each of our corruptions (it has no spatter).
TU_CLASSES = {
    "gaussian_noise": "GaussianNoise", "shot_noise": "ShotNoise", "impulse_noise": "ImpulseNoise",
    "defocus_blur": "DefocusBlur", "glass_blur": "GlassBlur", "motion_blur": "MotionBlur",
    "zoom_blur": "ZoomBlur", "snow": "Snow", "frost": "Frost", "fog": "Fog", "brightness": "Brightness",
    "contrast": "Contrast", "elastic_transform": "Elastic", "pixelate": "Pixelate",
    "jpeg_compression": "JPEGCompression", "speckle_noise": "SpeckleNoise", "gaussian_blur": "GaussianBlur",
    "saturate": "Saturation",
}


def photos(count: int) -> torch.Tensor:
    """`count` distinct 224 px crops of scikit-learn's two bundled photographs."""
    from sklearn.datasets import load_sample_images
    from torchvision.transforms.functional import pil_to_tensor

    base = [pil_to_tensor(IMAGENET_C_PRE(Image.fromarray(a))) for a in load_sample_images().images]
    variants = [f(b) for b in base for f in (lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2),
                                               lambda t: t.flip(-1, -2))]
    return torch.stack([variants[i % len(variants)] for i in range(count)])


def best_ms_per_image(fn: Callable[[], None], images: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / images * 1000


def tu_transform(name: str, severity: int):
    """torch-uncertainty's corruption object, or None when it is missing or fails to build."""
    if name not in TU_CLASSES:
        return None
    try:
        from torch_uncertainty.transforms import corruption as tu
    except Exception:  # noqa: BLE001  (not installed, or its import chain fails)
        return None
    try:
        return getattr(tu, TU_CLASSES[name])(severity)
    except Exception:  # noqa: BLE001  (e.g. a missing optional dependency)
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--single", type=int, default=4, help="images timed one at a time per repeat")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--corruptions", default="all", help="comma-separated names (default: all 19)")
    p.add_argument("--no-tu", action="store_true", help="skip torch-uncertainty even if it imports")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    names = list(CORRUPTIONS) if args.corruptions == "all" else [n.strip() for n in args.corruptions.split(",")]
    x = photos(args.batch_size)
    seeds = list(range(args.batch_size))
    floats = [img.float() / 255 for img in x[: args.single]]
    print(f"CPU, {args.threads} thread(s), 224 px, severity {args.severity}, batch {args.batch_size}, "
          f"best of {args.repeats}; ms per image")
    header = f"{'corruption':18s} {'batched':>9s} {'single':>9s} {'single/b':>9s} {'tu':>9s} {'tu/b':>7s}"
    print(header)
    print("-" * len(header))
    rows: dict[str, tuple[float, float, float | None]] = {}
    for name in names:
        # Warm-up: caches (kernels, frost textures, matrices) are built once per process.
        corrupt_batch(x[:2], name, args.severity, seeds[:2])
        batched = best_ms_per_image(lambda: corrupt_batch(x, name, args.severity, seeds), len(x), args.repeats)
        single = best_ms_per_image(
            lambda: [corrupt_batch(x[i:i + 1], name, args.severity, [i]) for i in range(args.single)],
            args.single, args.repeats)
        tu_ms = None
        tu = None if args.no_tu else tu_transform(name, args.severity)
        if tu is not None:
            try:
                tu(floats[0].clone())
                tu_ms = best_ms_per_image(lambda: [tu(f.clone()) for f in floats], len(floats), args.repeats)
            except Exception as exc:  # noqa: BLE001
                print(f"  (torch-uncertainty {TU_CLASSES[name]} failed: {type(exc).__name__}: {exc})")
        rows[name] = (batched, single, tu_ms)
        tu_text = f"{tu_ms:9.2f} {tu_ms / batched:7.1f}" if tu_ms is not None else f"{'n/a':>9s} {'':>7s}"
        print(f"{name:18s} {batched:9.2f} {single:9.2f} {single / batched:9.1f} {tu_text}", flush=True)
    print("-" * len(header))
    for label, group in (("total", list(rows)), ("total standard", [n for n in rows if n in STANDARD_CORRUPTIONS])):
        if not group:
            continue
        b = sum(rows[n][0] for n in group)
        s1 = sum(rows[n][1] for n in group)
        with_tu = [n for n in group if rows[n][2] is not None]
        tu_text = ""
        if with_tu:
            tu_sum = sum(rows[n][2] for n in with_tu)
            ours = sum(rows[n][0] for n in with_tu)
            tu_text = f" {tu_sum:9.2f} {tu_sum / ours:7.1f}  (tu over its {len(with_tu)})"
        print(f"{label:18s} {b:9.2f} {s1:9.2f} {s1 / b:9.1f}{tu_text}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
