"""Write a labeler's per-patch top-k token labels for a whole data set, once.

Used by `stl-bench label`; stage 2 then trains from the files (`--token-labels`) with no
teacher forward per step. The labeler sees each whole image resized to its input size
(no crop, no augmentation), with its EMA weights when the checkpoint has them, in eval
mode; the label map's cell (i, j) then covers the same normalised image region that a
training crop box is expressed in.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from stl_bench.data.folders import ImageDataset, collate_skip_bad, scan_image_folder
from stl_bench.data.token_labels import META, LabelMeta, LabelWriter
from stl_bench.data.transforms import labeling_transform
from stl_bench.distributed import resolve_device
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)


@torch.no_grad()
def write_token_labels(
    teacher_path: Path | str,
    data_dir: Path | str,
    output: Path | str,
    topk: int = 5,
    batch_size: int = 128,
    workers: int = 4,
    device: str = "auto",
    img_size: int | None = None,
    amp: bool | None = None,
    progress: bool = True,
) -> Path:
    """Label every image of `data_dir/<class>/*` and write the label folder `output`."""
    from tqdm.auto import tqdm

    from stl_bench.fan.checkpoint import read_checkpoint
    from stl_bench.fan.factory import create_model_from_checkpoint

    output = Path(output)
    if (output / META).exists():
        raise StlBenchError(f"{output} already holds token labels; choose another --output or delete it first")
    dev = resolve_device(device)
    _, probe = read_checkpoint(teacher_path)
    teacher, info = create_model_from_checkpoint(teacher_path, use_ema=probe.has_ema)
    if not getattr(teacher, "has_token_head", False):
        raise StlBenchError(f"{teacher_path} ({info.arch}) has no token-label head; label with a stage-1 labeler checkpoint")
    index = scan_image_folder(data_dir, classes=info.class_names) if info.class_names else scan_image_folder(data_dir)
    if info.num_classes != len(index.classes):
        raise StlBenchError(
            f"labeler {teacher_path} predicts {info.num_classes} classes but {data_dir} has {len(index.classes)} class folders"
        )
    if not 1 <= topk <= len(index.classes):
        raise StlBenchError(f"--topk must be between 1 and the class count ({len(index.classes)}), not {topk}")
    cfg = teacher.pretrained_cfg
    size = (img_size, img_size) if img_size else tuple(cfg.get("input_size", (3, 224, 224))[-2:])
    grid = tuple(teacher.token_grid(size))
    transform = labeling_transform(size, cfg.get("interpolation", "bicubic"), cfg.get("mean"), cfg.get("std"))
    loader = DataLoader(ImageDataset(index.samples, transform), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_skip_bad, pin_memory=dev.type == "cuda")
    root = Path(data_dir)
    meta = LabelMeta(
        grid=grid, topk=topk, num_classes=len(index.classes), class_names=list(index.classes),
        files=[Path(p).relative_to(root).as_posix() for p, _ in index.samples],
        teacher=str(teacher_path), teacher_arch=info.arch or "", input_size=size, data_root=str(root.resolve()),
        extra={"weights": info.weights},
    )
    writer = LabelWriter(output, meta)
    teacher = teacher.to(dev).eval()
    if dev.type == "cpu":
        # leave the workers their cores: oversubscribed CPUs slow small models several-fold
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    use_amp = dev.type == "cuda" if amp is None else amp
    log.info("labelling %d images with %s (%s weights) at %s -> %dx%d grid, top-%d", len(index.samples),
             info.arch, info.weights, size, grid[0], grid[1], topk)
    bad = 0
    for batch in tqdm(loader, desc="label", unit="batch", disable=not progress or None):
        bad += len(batch.bad_indices)
        if batch.images.numel() == 0:
            continue
        with torch.autocast(dev.type, enabled=use_amp, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16):
            _, tokens = teacher.forward_tokens(batch.images.to(dev, non_blocking=True))
        writer.write(batch.indices, tokens.float().softmax(dim=-1))
    if bad and bad == len(index.samples):
        error = StlBenchError(f"every image in {data_dir} ({bad} files) was unreadable: no token labels written; "
                              "fix or replace the files")
        writer.abort(error)
        raise error
    if bad:
        log.warning("%d unreadable image(s) skipped while labelling", bad)
    out = writer.close()
    log.info("wrote token labels for %d images to %s", len(index.samples) - bad, out)
    return out
