"""Write an ImageNet-C tree from any image-folder tree: what `stl-bench corrupt` does.

The ImageNet-C recipe: resize the shorter side to 256, centre crop 224, corrupt, save
as JPEG quality 85, into `DST/<corruption>/<severity>/<class>/<file>.JPEG`. Each image
is decoded once per run and corrupted for every (corruption, severity) it still lacks,
with a seed from its path relative to SRC (so a re-run, another batch size or another
machine's CPU writes the same files). Files are written through `stl_bench.io` (whole or
not at all); a killed run is resumed by running it again, and the temporaries a kill
left in DST are removed when it starts. Since every output depends only on its source
file and its seed (never on the batch it was corrupted in), a run killed at any moment
and resumed ends with the same bytes as one that was never interrupted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

JPEG_QUALITY = 85  # ImageNet-C's, with Pillow's optimize=True


@dataclass
class TreeRequest:
    """One tree to write; field defaults are the CLI's."""

    src: Path
    dst: Path
    corruptions: Sequence[str]
    severities: Sequence[int]
    size: int = 224
    """crop size (resize the shorter side to size*256/224 first); 0 keeps images as they are"""
    batch_size: int = 32
    device: str = "auto"
    workers: int | None = None
    """decoding processes and JPEG-writing threads (None: min(4, CPU count))"""
    progress: bool = True

    def __post_init__(self) -> None:
        self.src, self.dst = Path(self.src), Path(self.dst)
        if self.size < 0:
            raise StlBenchError(f"--size must be 0 (keep the images) or a crop size in pixels, got {self.size}")
        if self.batch_size < 1:
            raise StlBenchError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.src.exists() and self.dst.resolve().is_relative_to(self.src.resolve()):
            raise StlBenchError(f"DST {self.dst} is inside SRC {self.src}: the outputs would be read as inputs "
                                "next time; write them elsewhere")


@dataclass
class TreeReport:
    """What a run did: outputs written now, found from earlier runs, and unreadable sources."""

    images: int
    written: int = 0
    already: int = 0
    unreadable: list[Path] = field(default_factory=list)


@dataclass
class _Plan:
    """Which (corruption, severity) cells each source image still lacks."""

    samples: list[tuple[Path, int]]
    names: list[str]  # output path under DST/<corruption>/<severity>/
    keys: list[str]  # seed key: the source path relative to SRC
    cells: list[tuple[str, int]]
    todo: list[list[tuple[str, int]]]
    pending: list[int]  # images with something to write

    @property
    def total(self) -> int:
        return sum(len(self.todo[i]) for i in self.pending)


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


def output_names(src: Path, samples: list[tuple[Path, int]], classes: list[str]) -> list[str]:
    """`<class>/<path inside the class folder>.JPEG` for every sample; clashes are errors."""
    names: list[str] = []
    seen: dict[str, Path] = {}
    for path, label in samples:
        rel = path.relative_to(src / classes[label])
        name = (Path(classes[label]) / rel.with_suffix(".JPEG")).as_posix()
        if name in seen:
            raise StlBenchError(f"{seen[name]} and {path} would both be written as {name}; rename one of them")
        seen[name] = path
        names.append(name)
    return names


def existing_outputs(dst: Path, cells: list[tuple[str, int]], names: list[str]) -> set[tuple[str, int, str]]:
    """Outputs already on disk, found by listing each output folder once (dot-files are not outputs)."""
    folders = {Path(n).parent.as_posix() for n in names}
    found: set[tuple[str, int, str]] = set()
    for corruption, severity in cells:
        for folder in folders:
            try:
                entries = os.scandir(dst / corruption / str(severity) / folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.is_file() and not entry.name.startswith("."):
                        found.add((corruption, severity, f"{folder}/{entry.name}"))
    return found


def write_jpeg(path: Path, image) -> None:
    """Save uint8 [3, H, W] as ImageNet-C did (Pillow, quality 85, optimised), atomically."""
    from PIL import Image

    from stl_bench.io import atomic_path

    with atomic_path(path, suffix=".JPEG") as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="JPEG", quality=JPEG_QUALITY,
                                                             optimize=True)


def _plan(request: TreeRequest) -> _Plan:
    from stl_bench.data.folders import scan_image_folder

    index = scan_image_folder(request.src)  # raises for a missing SRC, no class folders or no images
    names = output_names(request.src, index.samples, index.classes)
    keys = [p.relative_to(request.src).as_posix() for p, _ in index.samples]
    cells = [(c, s) for c in request.corruptions for s in request.severities]
    done = existing_outputs(request.dst, cells, names)
    todo = [[cell for cell in cells if (*cell, names[i]) not in done] for i in range(len(names))]
    pending = [i for i in range(len(names)) if todo[i]]
    return _Plan(index.samples, names, keys, cells, todo, pending)


def write_imagenet_c_tree(request: TreeRequest) -> TreeReport:
    """Write every output of `request` that DST still lacks; returns what was done."""
    from stl_bench.distributed import resolve_device
    from stl_bench.io import ensure_writable_folder, remove_stale_temporaries

    plan = _plan(request)
    device = resolve_device(request.device)
    ensure_writable_folder(request.dst, "DST")  # before the first image is decoded
    removed = remove_stale_temporaries(request.dst, recursive=True)  # a killed run's half files
    if removed:
        log.info("removed %d unfinished file(s) a killed run left in %s", removed, request.dst)
    total = plan.total
    report = TreeReport(images=len(plan.names), already=len(plan.names) * len(plan.cells) - total)
    log.info("%d images x %d cells: %d outputs to write, %d already there (device %s)",
             len(plan.names), len(plan.cells), total, report.already, device)
    if not plan.pending:
        log.info("nothing to do: every output in %s exists", request.dst)
        return report
    _corrupt_and_write(request, plan, device, report)
    if report.unreadable and len(report.unreadable) == len(plan.pending) and not report.written:
        raise StlBenchError(f"every pending image in {request.src} ({len(report.unreadable)} files, e.g. "
                            f"{report.unreadable[0]}) was unreadable: nothing written; fix or replace the files")
    log.info("wrote %d files to %s", report.written, request.dst)
    if report.unreadable:
        shown = ", ".join(str(p) for p in report.unreadable[:5]) + (" ..." if len(report.unreadable) > 5 else "")
        log.warning("skipped %d unreadable image(s): %s", len(report.unreadable), shown)
    return report


def _corrupt_and_write(request: TreeRequest, plan: _Plan, device, report: TreeReport) -> None:
    """Decode each pending image once, corrupt it for its missing cells, write the JPEGs."""
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from stl_bench.data.folders import ImageDataset

    workers = min(4, os.cpu_count() or 1) if request.workers is None else max(0, request.workers)
    dataset = ImageDataset([plan.samples[i] for i in plan.pending], transform=_Prepare(request.size))
    loader = DataLoader(dataset, batch_size=request.batch_size, num_workers=workers, collate_fn=list)
    with tqdm(total=plan.total, unit="img", desc="corrupt", disable=not request.progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch in loader:
            good = []
            for sample in batch:
                if sample.image is None:
                    lost = plan.pending[sample.index]
                    report.unreadable.append(plan.samples[lost][0])
                    bar.update(len(plan.todo[lost]))
                else:
                    good.append(sample)
            # Images of different sizes (--size 0) are corrupted in same-size groups.
            groups: dict[tuple[int, ...], list] = {}
            for sample in good:
                groups.setdefault(tuple(sample.image.shape), []).append(sample)
            for group in groups.values():
                written = _write_group(request.dst, plan, [plan.pending[s.index] for s in group],
                                       group, device, pool, bar)
                report.written += written


def _write_group(dst: Path, plan: _Plan, ids: list[int], group: list, device, pool, bar) -> int:
    """One same-size group of decoded images through every cell any of them lacks."""
    import torch

    from stl_bench.data.corruptions import corrupt_batch, sample_seed

    images = torch.stack([s.image for s in group]).to(device)
    written = 0
    for corruption, severity in plan.cells:
        rows = [j for j, i in enumerate(ids) if (corruption, severity) in plan.todo[i]]
        if not rows:
            continue
        seeds = [sample_seed(plan.keys[ids[j]], corruption, severity) for j in rows]
        out = corrupt_batch(images[rows], corruption, severity, seeds).cpu()
        targets = [dst / corruption / str(severity) / plan.names[ids[j]] for j in rows]
        list(pool.map(write_jpeg, targets, out))
        written += len(rows)
        bar.update(len(rows))
    return written
