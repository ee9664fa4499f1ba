"""`stl-bench corrupt SRC DST`: write an ImageNet-C tree from any image-folder tree.

The ImageNet-C recipe: resize the shorter side to 256, centre crop 224, corrupt, save
as JPEG quality 85, into `DST/<corruption>/<severity>/<class>/<file>.JPEG`. Each image
is decoded once per run and corrupted for every (corruption, severity) it still lacks,
with a seed from its path relative to SRC (so a re-run, another batch size or another
machine's CPU writes the same files). Files are written atomically; a killed run is
resumed by running the same command again.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "corrupt"
HELP = "write ImageNet-C corrupted copies of an image folder (19 corruptions x 5 severities)"
DESCRIPTION = (
    "Read SRC/<class>/<images>, apply the ImageNet-C pipeline (resize 256, centre crop 224; "
    "see --size), corrupt and write JPEG quality 85 files to "
    "DST/<corruption>/<severity>/<class>/<file>.JPEG. Outputs that already exist are skipped, so "
    "re-running the same command after a kill finishes the job. Unreadable images are skipped "
    "and listed at the end."
)

log = logging.getLogger(__name__)

_GROUPS = ("all", "standard", "extra")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="image folder: SRC/<class>/<image files>")
    p.add_argument("dst", help="output root: DST/<corruption>/<severity>/<class>/<file>.JPEG")
    p.add_argument("--corruptions", default="all",
                   help="comma-separated corruption names, or all (19), standard (the 15 of mCE) or extra (4)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities in 1..5")
    p.add_argument("--size", type=int, default=224,
                   help="crop size: resize the shorter side to size*256/224, centre crop size "
                        "(ImageNet-C: 224); 0 keeps the images as they are (e.g. the 32 px demo data)")
    p.add_argument("--batch-size", type=int, default=32, help="images corrupted together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (auto: cuda if available)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes and JPEG-writing threads (default: min(4, CPU count))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_corruptions(text: str) -> list[str]:
    from stl_bench.data.corruptions import (
        CORRUPTIONS,
        EXTRA_CORRUPTIONS,
        STANDARD_CORRUPTIONS,
        get_corruption,
    )

    names: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        group = {"all": tuple(CORRUPTIONS), "standard": STANDARD_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS}.get(item)
        for name in group or (get_corruption(item).name,):
            if name not in names:
                names.append(name)
    if not names:
        from stl_bench.errors import StlBenchError

        raise StlBenchError(f"--corruptions is empty; give names or one of {', '.join(_GROUPS)}")
    return names


def _parse_severities(text: str) -> list[int]:
    from stl_bench.errors import StlBenchError

    values: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 5:
            raise StlBenchError(f"--severities takes integers 1..5 separated by commas, got {item!r}")
        if int(item) not in values:
            values.append(int(item))
    if not values:
        raise StlBenchError("--severities is empty; give integers 1..5 separated by commas")
    return values


class _Prepare:
    """PIL image -> uint8 [3, H, W] after the ImageNet-C geometry (picklable for workers)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._geometry = None  # built on first use, in the worker process

    def __call__(self, img):
        from torchvision.transforms.functional import pil_to_tensor

        if self.size and self._geometry is None:
            from stl_bench.data.corruptions import imagenet_c_transform

            self._geometry = imagenet_c_transform(self.size)
        return pil_to_tensor(self._geometry(img) if self.size else img)


def _output_names(src: Path, samples: list, classes: list[str]) -> list[str]:
    """`<class>/<path inside the class folder>.JPEG` for every sample; clashes are errors."""
    from stl_bench.errors import StlBenchError

    names: list[str] = []
    seen: dict[str, Path] = {}
    for path, label in samples:
        rel = path.relative_to(src / classes[label])
        name = (Path(classes[label]) / rel.with_suffix(".JPEG")).as_posix()
        if name in seen:
            raise StlBenchError(
                f"{seen[name]} and {path} would both be written as {name}; rename one of them"
            )
        seen[name] = path
        names.append(name)
    return names


def _existing(dst: Path, cells: list[tuple[str, int]], names: list[str]) -> set[tuple[str, int, str]]:
    """Outputs already on disk, found by listing each output folder once."""
    import os

    folders = {Path(n).parent.as_posix() for n in names}
    found: set[tuple[str, int, str]] = set()
    for corruption, severity in cells:
        for folder in folders:
            base = dst / corruption / str(severity) / folder
            try:
                entries = os.scandir(base)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.is_file() and not entry.name.startswith("."):
                        found.add((corruption, severity, f"{folder}/{entry.name}"))
    return found


def _write_jpeg(path: Path, image) -> None:
    """Save uint8 [3, H, W] as ImageNet-C did (Pillow, quality 85, optimised), atomically."""
    import os

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    import os
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from stl_bench.data.corruptions import corrupt_batch, sample_seed
    from stl_bench.data.folders import ImageDataset, scan_image_folder
    from stl_bench.distributed import resolve_device
    from stl_bench.errors import StlBenchError

    corruptions = _parse_corruptions(args.corruptions)
    severities = _parse_severities(args.severities)
    if args.size < 0:
        raise StlBenchError(f"--size must be 0 (keep the images) or a crop size in pixels, got {args.size}")
    if args.batch_size < 1:
        raise StlBenchError(f"--batch-size must be at least 1, got {args.batch_size}")
    src, dst = Path(args.src), Path(args.dst)
    if src.exists() and dst.resolve().is_relative_to(src.resolve()):
        raise StlBenchError(f"DST {dst} is inside SRC {src}: the outputs would be read as inputs next time; "
                            "write them elsewhere")
    index = scan_image_folder(src)  # raises for a missing SRC, no class folders or no images
    device = resolve_device(args.device)
    workers = min(4, os.cpu_count() or 1) if args.workers is None else max(0, args.workers)

    names = _output_names(src, index.samples, index.classes)
    keys = [p.relative_to(src).as_posix() for p, _ in index.samples]
    cells = [(c, s) for c in corruptions for s in severities]
    done = _existing(dst, cells, names)
    todo = [[cell for cell in cells if (*cell, names[i]) not in done] for i in range(len(names))]
    pending = [i for i in range(len(names)) if todo[i]]
    total = sum(len(todo[i]) for i in pending)
    log.info("%d images x %d cells: %d outputs to write, %d already there (device %s)",
             len(names), len(cells), total, len(names) * len(cells) - total, device)
    if not pending:
        log.info("nothing to do: every output in %s exists", dst)
        return 0

    dataset = ImageDataset([index.samples[i] for i in pending], transform=_Prepare(args.size))
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=workers, collate_fn=list)
    unreadable: list[Path] = []
    written = 0
    with tqdm(total=total, unit="img", desc="corrupt", disable=args.no_progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch in loader:
            good = []
            for sample in batch:
                if sample.image is None:
                    lost = pending[sample.index]
                    unreadable.append(index.samples[lost][0])
                    bar.update(len(todo[lost]))
                else:
                    good.append(sample)
            # Images of different sizes (--size 0) are corrupted in same-size groups.
            groups: dict[tuple[int, ...], list] = {}
            for sample in good:
                groups.setdefault(tuple(sample.image.shape), []).append(sample)
            for group in groups.values():
                ids = [pending[s.index] for s in group]
                images = torch.stack([s.image for s in group]).to(device)
                for corruption, severity in cells:
                    rows = [j for j, i in enumerate(ids) if (corruption, severity) in todo[i]]
                    if not rows:
                        continue
                    seeds = [sample_seed(keys[ids[j]], corruption, severity) for j in rows]
                    out = corrupt_batch(images[rows], corruption, severity, seeds).cpu()
                    targets = [dst / corruption / str(severity) / names[ids[j]] for j in rows]
                    list(pool.map(_write_jpeg, targets, out))
                    written += len(rows)
                    bar.update(len(rows))

    log.info("wrote %d files to %s", written, dst)
    if unreadable:
        shown = ", ".join(str(p) for p in unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        log.warning("skipped %d unreadable image(s): %s", len(unreadable), shown)
    return 0
