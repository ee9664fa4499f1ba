"""The one evaluation loop: every suite, every backend, one process or many.

A pass walks its shard of files once. Workers decode and do geometry, producing uint8
crops; the loop moves them to the device, applies each view's on-device transform (the
ImageNet-C corruption for on-the-fly cells), normalises, predicts and counts. Counts are
summed across processes at the end of the pass.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch.utils.data import DataLoader, Subset

from stl_bench.data.folders import ImageDataset, collate_skip_bad
from stl_bench.deploy.runner import Runner
from stl_bench.distributed import DistContext
from stl_bench.evaluate.metrics import CellCounts
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.evaluate.suites import CellKey, Pass, View

log = logging.getLogger(__name__)


class ViewTransform(Protocol):
    """On-device transform of a uint8 batch for a view: (images, per-file keys, view) -> images."""

    def __call__(self, images: torch.Tensor, keys: list[str], view: View) -> torch.Tensor: ...


@dataclass
class LoopConfig:
    """How the data is fed: batch size, decoding workers, progress bars."""

    batch_size: int = 64
    workers: int = 4
    progress: bool = True
    prefetch_factor: int = 4


@dataclass
class PassResult:
    counts: dict[CellKey, CellCounts]
    seconds: float
    bad_files: list[str]


def _loader(dataset: ImageDataset, shard: list[int], cfg: LoopConfig, pin: bool) -> DataLoader:
    workers = max(0, cfg.workers)
    return DataLoader(
        Subset(dataset, shard),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        pin_memory=pin,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=False,
    )


def score_view(view: View, logits: torch.Tensor, targets: torch.Tensor, counts: CellCounts) -> None:
    """Count one batch for a view, keeping only its logit subset when it has one."""
    if view.subset is not None:
        logits = logits[:, view.subset.to(logits.device)]
        targets = view.target_map.to(targets.device)[targets]
        if bool((targets < 0).any()):
            raise RuntimeError(f"{view.key.id}: a target outside the suite's class subset reached scoring")
    counts.add_batch(logits, targets)


def run_pass(
    runner: Runner,
    pass_: Pass,
    views: list[View],
    prep: Preprocessing,
    cfg: LoopConfig,
    dist: DistContext,
    view_transform: ViewTransform | None = None,
    progress: Callable[[int], None] | None = None,
) -> PassResult:
    """Evaluate `views` of one pass on this process's shard and sum counts over processes."""
    index = pass_.index()
    if pass_.geometry == "model":
        transform = prep.folder_transform()
    elif pass_.geometry == "identity":
        transform = prep.identity_transform()
    else:
        from stl_bench.evaluate.inc_fly import source_transform

        transform = source_transform()
    dataset = ImageDataset(index.samples, transform)
    shard = dist.shard(range(len(dataset)))
    keys = pass_.sample_keys() if view_transform is not None else []
    device = runner.device
    pin = device.type == "cuda"
    counts = {v.key: CellCounts() for v in views}
    bad: list[int] = []
    start = time.perf_counter()
    for batch in _loader(dataset, shard, cfg, pin):
        bad.extend(batch.bad_indices)
        n = int(batch.targets.numel())
        if n:
            images = batch.images.to(device, non_blocking=True)
            targets = batch.targets.to(device, non_blocking=True)
            batch_keys = [keys[i] for i in batch.indices.tolist()] if keys else []
            for view in views:
                x = view_transform(images, batch_keys, view) if view_transform is not None else images
                logits = runner.predict(prep.to_model_input(x)).logits
                score_view(view, logits, targets, counts[view.key])
        if progress is not None:
            progress((n + len(batch.bad_indices)) * len(views))
    seconds = time.perf_counter() - start
    bad_files = [str(index.samples[i][0]) for i in bad]
    for path in bad_files[:20]:
        log.warning("unreadable image skipped: %s", path)
    reduced: dict[CellKey, CellCounts] = {}
    for key, c in counts.items():
        c.bad = len(bad)
        ints = dist.all_reduce_sum(c.int_tensor())
        floats = dist.all_reduce_sum(c.float_tensor())
        reduced[key] = CellCounts.from_tensors(ints, floats)
    if dist.world_size > 1:  # processes run side by side: report their mean wall time
        seconds = float(dist.all_reduce_sum(torch.tensor([seconds], dtype=torch.float64))[0]) / dist.world_size
    return PassResult(reduced, seconds, bad_files)
