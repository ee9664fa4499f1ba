"""ImageNet-layout folders: the one place that scans class folders and loads images.

Every data set the toolkit reads (training folders, IN-1K val, IN-A, IN-R, IN-C cells,
ImageNet-V2, the demo data) is a folder per class holding image files. Scanning is
strict about the layout (clear errors for a missing or empty folder) and loading is
forgiving about single files: an unreadable or truncated image is skipped and counted,
never a crash inside a DataLoader worker.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Collection, NamedTuple, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from stl_bench.data.decode import to_rgb
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


@dataclass
class FolderIndex:
    """The classes (label order) and the (path, label) samples of one folder tree."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]


def _natural_key(name: str) -> tuple:
    # ImageNet-V2 names its folders 0..999: "10" must sort after "9", not after "1".
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def list_class_folders(root: Path | str, numeric: bool = False) -> list[str]:
    root = Path(root)
    if not root.exists():
        raise StlBenchError(f"data folder {root} does not exist; pass the folder that holds one sub-folder per class")
    if not root.is_dir():
        raise StlBenchError(f"{root} is a file, not a folder; pass the folder that holds one sub-folder per class")
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not names:
        raise StlBenchError(f"data folder {root} has no class sub-folders; expected {root}/<class>/<image files>")
    return sorted(names, key=_natural_key) if numeric else sorted(names)


def check_known_classes(
    root: Path,
    folders: Sequence[str],
    known: Collection[str],
    what: str = "in the expected class list",
    fix: str = "is this the right data set for the model?",
    context: str | None = None,
) -> None:
    """Raise when a class folder of `root` is not one of the `known` class names.

    The one check for "this folder belongs to another data set": training folders,
    IN-1K val, IN-V2 and the demo all meet it; `what`, `fix` and `context` (the suite)
    let each caller say it in its own terms.
    """
    known = known if isinstance(known, (set, frozenset, dict)) else set(known)
    unknown = [f for f in folders if f not in known]
    if not unknown:
        return
    shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    where = f"{root} ({context})" if context else f"{root}"
    raise StlBenchError(
        f"{where}: {len(unknown)} of its {len(folders)} class folders ({shown}) are not {what}; {fix}"
    )


def scan_image_folder(
    root: Path | str,
    classes: Sequence[str] | None = None,
    numeric: bool = False,
) -> FolderIndex:
    """Index `root/<class>/<image>` files.

    `classes` fixes the label order (for example the 1000 ImageNet wnids, so that a
    200-class IN-A folder gets the labels of the 1000-way head); every folder found must
    then be one of them. Without it, the sorted folder names are the classes.
    """
    root = Path(root)
    found = list_class_folders(root, numeric=numeric)
    if classes is None:
        classes = found
        index = {c: i for i, c in enumerate(classes)}
    else:
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        check_known_classes(root, found, index)
    samples: list[tuple[Path, int]] = []
    for name in found:
        files = sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
        )
        samples.extend((p, index[name]) for p in files)
    if not samples:
        raise StlBenchError(
            f"data folder {root} has class folders but no image files ({', '.join(IMG_EXTENSIONS)})"
        )
    return FolderIndex(root=root, classes=list(classes), samples=samples)


def load_rgb(path: Path | str | BinaryIO) -> Image.Image:
    """Open an image (a path or an open binary file) as the RGB pixels the model sees
    (`data.decode.to_rgb`: every Pillow mode, EXIF orientation, first frame).

    Pillow's own decompression-bomb guard applies: over twice `Image.MAX_IMAGE_PIXELS`
    raises `Image.DecompressionBombError`; between once and twice it warns, as it does
    for timm's and torchvision's loaders, and raises only where warnings are errors."""
    with Image.open(path) as img:
        return to_rgb(img)


# What a bad file raises while it is opened and decoded: not an image, truncated or
# corrupt, or over Pillow's pixel limit (a decompression bomb; the warning only when
# warnings are errors). A bomb in a data folder is skipped and counted like any other
# unreadable file rather than ending the run.
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
               Image.DecompressionBombError, Image.DecompressionBombWarning)


class Sample(NamedTuple):
    image: torch.Tensor | None  # None when the file could not be read
    target: int
    index: int


class ImageDataset(Dataset):
    """(image, target, index) for each sample; `image` is None for an unreadable file.

    The index travels with the sample so that evaluation can key per-sample seeds and
    resumable results by file, and so that bad files can be named in a report.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except _UNREADABLE as exc:
            log.debug("unreadable image %s: %s", path, exc)
            return Sample(None, target, index)
        if self.transform is not None:
            img = self.transform(img)
        return Sample(img, target, index)


class Batch(NamedTuple):
    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    bad_indices: list[int]


def collate_skip_bad(samples: Sequence[Sample]) -> Batch:
    """Stack the readable samples; report the unreadable ones by dataset index."""
    good = [s for s in samples if s.image is not None]
    bad = [s.index for s in samples if s.image is None]
    if good:
        images = torch.stack([torch.as_tensor(s.image) for s in good])
    else:
        images = torch.empty(0)
    targets = torch.tensor([s.target for s in good], dtype=torch.long)
    indices = torch.tensor([s.index for s in good], dtype=torch.long)
    return Batch(images, targets, indices, bad)
