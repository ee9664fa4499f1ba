"""The one evaluation loop: every suite, every backend, one process or many.

A pass walks its shard of files once. Workers decode and do geometry, producing uint8
crops; the loop moves them to the device, applies each view's on-device transform (the
ImageNet-C corruption for on-the-fly cells), normalises, predicts and counts. Counts are
summed across processes at the end of the pass. Several models can share a pass: the
decoding and each view's transform are done once per batch and every model scores them
(on-the-fly IN-C spends most of its time making the corruptions, not in the models).

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


@dataclass
class PassMember:
    """One model's part in a pass: its runner, preprocessing and views (the same cells for
    every member of a pass), the running sums it starts from and where to save them."""

    runner: Runner
    prep: Preprocessing
    views: list[View]
    state: PassProgress
    save: SaveProgress | None = None
    images_now: int = 0
    seconds_now: float = 0.0


def run_pass(
    pass_: Pass,
    members: list[PassMember],
    cfg: LoopConfig,
    dist: DistContext,
    view_transform: ViewTransform | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PassResult]:
    """Score every member's views of one pass on this process's shard, then sum over processes.

    Members whose running sums stop at the same batch share one walk: each batch is
    decoded once and each view's transform (an IN-C corruption) made once, then every
    member's model scores it. Members at other batches (a model added after a kill) walk
    on their own from there. The workers' geometry is the first member's: the caller
    groups only members with the same `transform_key`. Sums are reduced after every walk,
    in member order, so all processes make the same collective calls whatever each saved.
    """
    index = pass_.index()
    dataset = ImageDataset(index.samples, _pass_transform(pass_, members[0].prep))
    shard = dist.shard(range(len(dataset)))
    keys = pass_.sample_keys() if view_transform is not None else []
    for start in sorted({m.state.batches for m in members}):
        group = [m for m in members if m.state.batches == start]
        _walk(dataset, shard, group, keys, cfg, view_transform, progress)
    bad_files = [str(index.samples[i][0]) for i in members[0].state.bad]
    for path in bad_files[:20]:
        log.warning("unreadable image skipped: %s", path)
    return [_reduce(m, bad_files, dist) for m in members]


def _walk(dataset: ImageDataset, shard: list[int], group: list[PassMember], keys: list[str], cfg: LoopConfig,
          view_transform: ViewTransform | None, progress: Callable[[int], None] | None) -> None:
    """One walk over the shard from the group's saved batch; each member is charged the
    shared time (decoding, view transforms) plus its own model's."""
    n_views, device = len(group[0].views), group[0].runner.device
    first = group[0].state.batches * cfg.batch_size
    n_batches = -(-len(shard) // cfg.batch_size)
    if progress is not None and first:
        progress(min(first, len(shard)) * n_views * len(group))
    earlier = [m.state.seconds for m in group]
    own = [0.0] * len(group)
    start = last_save = time.perf_counter()
    for batch in _loader(dataset, shard[first:], cfg, device.type == "cuda"):
        n = _score_batch(batch, group, keys, view_transform, own)
        now = time.perf_counter()
        shared = now - start - sum(own)
        for m, before, mine in zip(group, earlier, own):
            m.images_now += n
            m.state.bad.extend(batch.bad_indices)
            m.state.batches += 1
            m.state.seconds = before + shared + mine
        if progress is not None:
            progress((int(batch.targets.numel()) + len(batch.bad_indices)) * n_views * len(group))
        if group[0].state.batches < n_batches and now - last_save >= cfg.save_every_s:
            for m in group:
                if m.save is not None:
                    m.save(m.state)
            last_save = time.perf_counter()
    shared = time.perf_counter() - start - sum(own)
    for m, mine in zip(group, own):
        m.seconds_now += shared + mine


def _reduce(member: PassMember, bad_files: list[str], dist: DistContext) -> PassResult:
    """A member's counts summed over processes (its time: the processes' mean)."""
    state = member.state
    reduced: dict[CellKey, CellCounts] = {}
    for key, c in state.counts.items():
        c.bad = len(state.bad)
        ints = dist.all_reduce_sum(c.int_tensor())
        floats = dist.all_reduce_sum(c.float_tensor())
        reduced[key] = CellCounts.from_tensors(ints, floats)
    seconds, seconds_now = state.seconds, member.seconds_now
    scored_now = member.images_now * len(member.views)
    if dist.world_size > 1:  # processes run side by side: report their mean wall time
        sums = dist.all_reduce_sum(torch.tensor([seconds, seconds_now, scored_now], dtype=torch.float64))
        seconds, seconds_now = float(sums[0]) / dist.world_size, float(sums[1]) / dist.world_size
        scored_now = int(sums[2])
    return PassResult(reduced, seconds, list(bad_files), images_now=scored_now, seconds_now=seconds_now)


def transform_key(pass_: Pass, prep: Preprocessing) -> tuple:
    """What the workers' transform of `pass_` depends on: models with the same key can share
    its decoded batches (on-the-fly IN-C: every model, the 224 px crop is model-free)."""
    if pass_.geometry == "model":
        return ("model", prep.resize_size, prep.input_size, prep.interpolation)
    if pass_.geometry == "identity":
        return ("identity", prep.input_size, prep.interpolation)
    return (pass_.geometry,)


def _pass_transform(pass_: Pass, prep: Preprocessing) -> Callable:
    """What the workers do to each decoded file: the model's geometry, none, or the IN-C crop."""
    if pass_.geometry == "model":
        return prep.folder_transform()
    if pass_.geometry == "identity":
        return prep.identity_transform()
    from stl_bench.evaluate.inc_fly import source_transform

    return source_transform()


def _score_batch(batch, group: list[PassMember], keys: list[str], view_transform: ViewTransform | None,
                 own: list[float]) -> int:
    """Predict and count one batch for every view and member; returns how many images it
    scored. Each view's transform runs once and its output feeds every member's model
    (adding each member's model time to `own`)."""
    n = int(batch.targets.numel())
    if not n:
        return 0
    device = group[0].runner.device
    images = batch.images.to(device, non_blocking=True)
    targets = batch.targets.to(device, non_blocking=True)
    batch_keys = [keys[i] for i in batch.indices.tolist()] if keys else []
    for i, view in enumerate(group[0].views):
        x = view_transform(images, batch_keys, view) if view_transform is not None else images
        for j, member in enumerate(group):
            t = time.perf_counter()
            logits = member.runner.predict(member.prep.to_model_input(x)).logits
            mine = member.views[i]
            score_view(mine, logits, targets, member.state.counts[mine.key])
            own[j] += time.perf_counter() - t
    return n
