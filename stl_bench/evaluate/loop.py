"""The one evaluation loop: every suite, every backend, one process or many.

A pass walks its shard of files once. Workers decode and do geometry, producing uint8
crops; the loop moves them to the device, applies each view's on-device transform (the
ImageNet-C corruption for on-the-fly cells), normalises, predicts and counts. Counts are
summed across processes at the end of the pass.

A pass can be long (on-the-fly ImageNet-C scores 95 views of every batch, so none of its
cells is finished before the last batch), so the loop hands its running sums to a `save`
callback every `save_every_s` seconds and can start again from such a `PassProgress`:
the same batches are counted in the same order, so the resumed sums equal an
uninterrupted pass's bit for bit.
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
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.metrics import CellCounts
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.evaluate.suites import CellKey, Pass, View

log = logging.getLogger(__name__)


class ViewTransform(Protocol):
    """On-device transform of a uint8 batch for a view: (images, per-file keys, view) -> images."""

    def __call__(self, images: torch.Tensor, keys: list[str], view: View) -> torch.Tensor: ...


@dataclass
class LoopConfig:
    """How the data is fed: batch size, decoding workers, progress bars, progress saves."""

    batch_size: int = 64
    workers: int = 4
    progress: bool = True
    prefetch_factor: int = 4
    save_every_s: float = 60.0
    """seconds between saves of a pass's running sums: what a kill can cost at most"""

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("workers", 0), ("save_every_s", 0)):
            if getattr(self, name) < low:
                raise StlBenchError(f"evaluation {name} must be at least {low}, got {getattr(self, name)}")


@dataclass
class PassProgress:
    """This process's running sums of a pass after `batches` batches of its shard.

    The sums are taken before the all-reduce (each process saves its own), and `bad`
    holds the dataset indices found unreadable so far.
    """

    batches: int
    counts: dict[CellKey, CellCounts]
    bad: list[int]
    seconds: float = 0.0

    @classmethod
    def start(cls, views: list[View]) -> "PassProgress":
        return cls(0, {v.key: CellCounts() for v in views}, [])


SaveProgress = Callable[[PassProgress], None]


@dataclass
class PassResult:
    counts: dict[CellKey, CellCounts]
    seconds: float
    """the pass's time, earlier runs' part included (what a cell records)"""
    bad_files: list[str]
    images_now: int = 0
    """images x views scored by this run over all processes (a resumed pass: its remaining batches)"""
    seconds_now: float = 0.0


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
    resume: PassProgress | None = None,
    save: SaveProgress | None = None,
) -> PassResult:
    """Evaluate `views` of one pass on this process's shard and sum counts over processes.

    `resume` continues from saved sums (made with the same batch size and shard); `save`
    receives the running sums every `cfg.save_every_s` seconds, never after the last batch.
    """
    index = pass_.index()
    dataset = ImageDataset(index.samples, _pass_transform(pass_, prep))
    shard = dist.shard(range(len(dataset)))
    keys = pass_.sample_keys() if view_transform is not None else []
    state = resume or PassProgress.start(views)
    first = state.batches * cfg.batch_size
    n_batches = -(-len(shard) // cfg.batch_size)
    if progress is not None and first:
        progress(min(first, len(shard)) * len(views))
    earlier, images_now = state.seconds, 0
    start = last_save = time.perf_counter()
    for batch in _loader(dataset, shard[first:], cfg, runner.device.type == "cuda"):
        images_now += _score_batch(runner, batch, views, keys, prep, view_transform, state.counts)
        state.bad.extend(batch.bad_indices)
        state.batches += 1
        now = time.perf_counter()
        state.seconds = earlier + now - start
        if progress is not None:
            progress((int(batch.targets.numel()) + len(batch.bad_indices)) * len(views))
        if save is not None and state.batches < n_batches and now - last_save >= cfg.save_every_s:
            save(state)
            last_save = time.perf_counter()
    seconds_now = time.perf_counter() - start
    bad_files = [str(index.samples[i][0]) for i in state.bad]
    for path in bad_files[:20]:
        log.warning("unreadable image skipped: %s", path)
    reduced: dict[CellKey, CellCounts] = {}
    for key, c in state.counts.items():
        c.bad = len(state.bad)
        ints = dist.all_reduce_sum(c.int_tensor())
        floats = dist.all_reduce_sum(c.float_tensor())
        reduced[key] = CellCounts.from_tensors(ints, floats)
    seconds, scored_now = earlier + seconds_now, images_now * len(views)
    if dist.world_size > 1:  # processes run side by side: report their mean wall time
        sums = dist.all_reduce_sum(torch.tensor([seconds, seconds_now, scored_now], dtype=torch.float64))
        seconds, seconds_now = float(sums[0]) / dist.world_size, float(sums[1]) / dist.world_size
        scored_now = int(sums[2])
    return PassResult(reduced, seconds, bad_files, images_now=scored_now, seconds_now=seconds_now)


def _pass_transform(pass_: Pass, prep: Preprocessing) -> Callable:
    """What the workers do to each decoded file: the model's geometry, none, or the IN-C crop."""
    if pass_.geometry == "model":
        return prep.folder_transform()
    if pass_.geometry == "identity":
        return prep.identity_transform()
    from stl_bench.evaluate.inc_fly import source_transform

    return source_transform()


def _score_batch(runner: Runner, batch, views: list[View], keys: list[str], prep: Preprocessing,
                 view_transform: ViewTransform | None, counts: dict[CellKey, CellCounts]) -> int:
    """Predict and count one batch for every view; returns how many images it scored."""
    n = int(batch.targets.numel())
    if not n:
        return 0
    device = runner.device
    images = batch.images.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    batch_keys = [keys[i] for i in batch.indices.tolist()] if keys else []
    for view in views:
        x = view_transform(images, batch_keys, view) if view_transform is not None else images
        logits = runner.predict(prep.to_model_input(x)).logits
        score_view(view, logits, targets, counts[view.key])
    return n
