"""Offline token labels: the labeler's per-patch top-k written once, cropped per step.

Running the frozen labeler at every step of stage 2 costs a forward pass per batch.
The offline alternative (after Token Labeling, Jiang et al. 2021) runs it once over the
training set on the *whole* image (resized to the labeler's input, no crop) and keeps
the top-k class probabilities of every patch. At training time the student's
random-resized-crop box, known in normalised image coordinates, cuts the same region
out of the label map with `roi_align` and resamples it to the student's token grid;
a horizontal flip flips the result.

Layout of a label folder (written by `stl-bench label`):
    meta.json      grid, top-k, class names, teacher, and the image paths in row order
    indices.npy    int16/int32 [num_images, grid_h * grid_w, k] class indices
    values.npy     float16     [num_images, grid_h * grid_w, k] probabilities
The arrays are memory-mapped, so an ImageNet-size file (~5 GB at k=5) never has to fit
in memory. Everything is written under temporary names and renamed at the end.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import roi_align

from stl_bench.errors import StlBenchError
from stl_bench.io import atomic_path, remove_stale_temporaries, write_text

log = logging.getLogger(__name__)

META = "meta.json"
INDICES = "indices.npy"
VALUES = "values.npy"
FORMAT_VERSION = 1


@dataclass
class LabelMeta:
    """What a label folder holds; `files` are image paths relative to `data_root`."""

    grid: tuple[int, int]
    topk: int
    num_classes: int
    class_names: list[str]
    files: list[str]
    teacher: str = ""
    teacher_arch: str = ""
    input_size: tuple[int, int] = (224, 224)
    data_root: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


class LabelWriter:
    """Fills the memory-mapped arrays row by row; `close()` renames them into place."""

    def __init__(self, out_dir: Path | str, meta: LabelMeta) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        n, tokens, k = len(meta.files), meta.grid[0] * meta.grid[1], meta.topk
        index_dtype = np.int16 if meta.num_classes <= np.iinfo(np.int16).max else np.int32
        removed = remove_stale_temporaries(self.out_dir)  # a killed labelling run's half arrays
        if removed:
            log.info("removed %d unfinished temporary file(s) from %s", removed, self.out_dir)
        # Each array is filled in a temporary beside its final name and renamed into place by
        # close(); until then a reader finds no meta.json and so no label folder.
        self._renames = contextlib.ExitStack()
        self._tmp = {name: self._renames.enter_context(atomic_path(self.out_dir / name)) for name in (INDICES, VALUES)}
        # open_memmap writes a real .npy header, so readers can mmap it with np.load.
        self.indices = np.lib.format.open_memmap(self._tmp[INDICES], "w+", index_dtype, (n, tokens, k))
        self.values = np.lib.format.open_memmap(self._tmp[VALUES], "w+", np.float16, (n, tokens, k))
        self.written = np.zeros(n, dtype=bool)

    def write(self, rows: torch.Tensor, probs: torch.Tensor) -> None:
        """Store `probs` [B, N, C] (softmax over classes) for dataset rows `rows` [B]."""
        values, indices = probs.float().topk(self.meta.topk, dim=-1)
        r = rows.cpu().numpy()
        self.indices[r] = indices.cpu().numpy().astype(self.indices.dtype)
        self.values[r] = values.cpu().numpy().astype(np.float16)
        self.written[r] = True

    def abort(self, reason: BaseException) -> None:
        """Drop the half-filled arrays: a failed run leaves no file behind (and no meta.json)."""
        del self.indices, self.values
        self._renames.__exit__(type(reason), reason, reason.__traceback__)

    def close(self) -> Path:
        missing = int((~self.written).sum())
        if missing:
            self.meta.extra["unreadable_rows"] = np.flatnonzero(~self.written).tolist()
            log.warning("%d image(s) could not be read; their label rows are empty", missing)
        self.indices.flush()
        self.values.flush()
        del self.indices, self.values
        self._renames.close()  # both arrays renamed into place (and fsynced)
        write_text(self.out_dir / META, json.dumps(asdict(self.meta)))  # last: its presence means complete
        return self.out_dir


class TokenLabelStore:
    """Read side of a label folder, addressed by the training set's own sample order."""

    def __init__(self, label_dir: Path | str) -> None:
        self.dir = Path(label_dir)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise StlBenchError(
                f"{self.dir} is not a token-label folder (no {META}); write one with "
                f"`stl-bench label --teacher CKPT --data DIR --output {self.dir}`"
            )
        raw = json.loads(meta_path.read_text())
        raw["grid"] = tuple(raw["grid"])
        raw["input_size"] = tuple(raw["input_size"])
        self.meta = LabelMeta(**raw)
        self.indices = np.load(self.dir / INDICES, mmap_mode="r")
        self.values = np.load(self.dir / VALUES, mmap_mode="r")
        self.rows = np.arange(len(self.meta.files))

    @property
    def grid(self) -> tuple[int, int]:
        return self.meta.grid

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def bind(self, root: Path | str, samples: Sequence[tuple[Path, int]], class_names: Sequence[str]) -> None:
        """Map training-set sample i to its label row (by relative path), or fail clearly."""
        if list(class_names) != list(self.meta.class_names):
            raise StlBenchError(
                f"token labels in {self.dir} were written for {self.meta.num_classes} classes "
                f"({', '.join(self.meta.class_names[:3])}...) but the training data has {len(class_names)} "
                f"({', '.join(list(class_names)[:3])}...); re-run `stl-bench label` on this data"
            )
        where = {f: i for i, f in enumerate(self.meta.files)}
        root = Path(root)
        rows, missing = [], []
        for path, _ in samples:
            rel = Path(path).relative_to(root).as_posix()
            row = where.get(rel)
            if row is None:
                missing.append(rel)
            rows.append(-1 if row is None else row)
        if missing:
            raise StlBenchError(
                f"{len(missing)} training image(s) have no token labels in {self.dir} "
                f"(first: {missing[0]}); re-run `stl-bench label` on {root}"
            )
        self.rows = np.asarray(rows, dtype=np.int64)

    def dense(self, sample_indices: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Label maps `[B, C, grid_h, grid_w]` for dataset samples (top-k scattered back)."""
        rows = self.rows[sample_indices.cpu().numpy()]
        order = np.argsort(rows)  # sorted reads are kinder to a memory-mapped file
        idx = np.empty((len(rows),) + self.indices.shape[1:], dtype=np.int64)
        val = np.empty((len(rows),) + self.values.shape[1:], dtype=np.float32)
        idx[order] = self.indices[rows[order]]
        val[order] = self.values[rows[order]]
        idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
        val_t = torch.from_numpy(val).to(device, non_blocking=True)
        b, n, _ = idx_t.shape
        maps = torch.zeros(b, n, self.num_classes, device=device)
        maps.scatter_(2, idx_t, val_t)
        gh, gw = self.grid
        return maps.transpose(1, 2).reshape(b, self.num_classes, gh, gw)


def crop_label_maps(
    maps: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    out_size: tuple[int, int],
    sampling_ratio: int = 1,
) -> torch.Tensor:
    """Cut each image's crop box out of its label map and resample it to `out_size`.

    `maps` [B, C, H, W] cover the whole image; `boxes` [B, 4] are (x1, y1, x2, y2) in
    normalised image coordinates (0..1, x along the width); `flips` [B] says which crops
    were mirrored. roi_align expects exactly (x1, y1, x2, y2) in the map's pixel units,
    so the box is scaled by (W, H, W, H); the token-labeling code this follows passed
    rows and columns swapped, which only goes unnoticed on square crops. `aligned=True`
    puts cell (i, j) at [j, j + 1) x [i, i + 1), matching how patches tile the image.
    One bilinear sample per output cell (`sampling_ratio=1`): a crop is almost always a
    zoom-in, and at equal size the map comes back unchanged instead of blurred.
    """
    b, _, h, w = maps.shape
    scale = torch.tensor([w, h, w, h], dtype=maps.dtype, device=maps.device)
    rois = torch.cat(
        [torch.arange(b, dtype=maps.dtype, device=maps.device)[:, None], boxes.to(maps) * scale], dim=1
    )
    out = roi_align(maps, rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
    flips = flips.to(device=maps.device, dtype=torch.bool)
    return torch.where(flips[:, None, None, None], out.flip(-1), out)


def warp_label_maps(maps: torch.Tensor, warps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move label maps [B, C, h, w] the way the student's geometric RandAugment ops moved
    its pixels; `warps` [B, h, w, 3] from `token_warp`. Returns the maps and `inside` [B, h, w]."""
    grid = warps[..., :2].to(maps.dtype)
    moved = torch.nn.functional.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return moved, warps[..., 2] > 0.5
