"""The run's data: the folders, a resumable sampler, and the training / validation loaders."""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from stl_bench.data.folders import FolderIndex, ImageDataset, collate_skip_bad, scan_image_folder
from stl_bench.data.transforms import TrainViews, collate_views, eval_transform
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.train.config import TrainConfig
from stl_bench.train.seeding import SampleKey, seed_image

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (after `skip` of this rank's samples).

    The permutation depends only on (seed, epoch), so a resumed run sees the samples its
    killed predecessor had not reached yet, without loading and discarding the others.
    Each index travels as a `SampleKey` with its epoch and global position, the key of
    the image's augmentation stream (`SeededSamples`).
    """

    skip: int = 0

    def __iter__(self) -> Iterator[SampleKey]:
        mine = itertools.islice(enumerate(super().__iter__()), self.skip, None)
        # DistributedSampler gives rank r the items r, r + W, r + 2W, ... of the padded permutation
        return (SampleKey(index, self.epoch, self.rank + i * self.num_replicas) for i, index in mine)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededSamples(Dataset):
    """A dataset read through `SampleKey`s: each image's random augmentation is seeded by
    (seed, epoch, position) just before it runs, in whichever process loads it, so no
    worker or loader RNG state exists that a resume would have to restore."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        seed_image(self.seed, key)
        return self.dataset[key.index]


def resolve_data_root(data: str) -> Path:
    """`--data` as a folder; 'demo' makes (once) and returns the built-in digits."""
    if data == "demo":
        from stl_bench.data.demo import ensure_demo_data

        return ensure_demo_data()
    root = Path(data).expanduser()
    if not root.exists():
        raise StlBenchError(f"data folder {root} does not exist; pass a folder holding train/<class>/ images, or 'demo'")
    if not root.is_dir():
        raise StlBenchError(f"{root} is a file, not a folder; pass the folder that holds train/<class>/ images, or 'demo'")
    return root


def scan_splits(cfg: TrainConfig) -> tuple[Path, FolderIndex, FolderIndex | None]:
    """The data root, the training index (a fixed subset with --max-train-samples) and the validation index."""
    root = resolve_data_root(cfg.data)
    train_dir = root / cfg.train_split
    if not train_dir.is_dir():
        raise StlBenchError(
            f"{root} has no '{cfg.train_split}' folder; expected {train_dir}/<class>/<images> "
            "(or pass --train-split with the right sub-folder name)"
        )
    train = scan_image_folder(train_dir)
    val = None
    val_dir = root / cfg.val_split
    if cfg.val_split and val_dir.is_dir():
        val = scan_image_folder(val_dir, classes=train.classes)
    else:
        log.warning("no validation folder %s: accuracy is not measured during training", val_dir)
    limit = cfg.runtime.max_train_samples
    if limit and limit < len(train.samples):
        # numpy's own generator: the subset is the same whatever else has drawn from the global RNGs
        pick = np.random.default_rng(cfg.runtime.seed).choice(len(train.samples), limit, replace=False)
        train = FolderIndex(train.root, train.classes, [train.samples[i] for i in sorted(pick.tolist())])
    return root, train, val


@dataclass
class Loaders:
    """The training loader with its sampler, optimizer steps per epoch, and the validation loader (or None)."""

    train: DataLoader
    sampler: ResumableSampler
    steps_per_epoch: int
    val: DataLoader | None


def build_loaders(
    cfg: TrainConfig, dist: DistContext, train_index: FolderIndex, val_index: FolderIndex | None,
    views: TrainViews, eval_tf: Any,
) -> Loaders:
    """Training batches are whole (drop_last) and sharded by the sampler; validation shards are unpadded."""
    rt, batch_size = cfg.runtime, cfg.optim.batch_size
    train_ds = SeededSamples(ImageDataset(train_index.samples, views), rt.seed)
    sampler = ResumableSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=rt.seed)
    loader_kw: dict[str, Any] = dict(num_workers=rt.workers, pin_memory=dist.device.type == "cuda")
    if rt.workers > 0:
        loader_kw.update(persistent_workers=True, prefetch_factor=4)
    loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate_views, **loader_kw)
    steps_per_epoch = sampler.num_samples // batch_size // cfg.optim.grad_accum_steps
    if rt.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, rt.steps_per_epoch)
    if steps_per_epoch < 1:
        raise StlBenchError(
            f"{train_index.root} has {len(train_index.samples)} training images: too few for one step of "
            f"{batch_size} x {cfg.optim.grad_accum_steps} per process on {dist.world_size} process(es); "
            "lower --batch-size"
        )
    val_loader = None
    if val_index is not None:
        val_ds = ImageDataset(val_index.samples, eval_tf)
        val_ds = Subset(val_ds, range(dist.rank, len(val_ds), dist.world_size))  # unpadded shards
        val_loader = DataLoader(val_ds, batch_size=rt.eval_batch_size or batch_size, shuffle=False,
                                collate_fn=collate_skip_bad, num_workers=min(rt.workers, 2),
                                pin_memory=loader_kw["pin_memory"])
    return Loaders(loader, sampler, steps_per_epoch, val_loader)


def eval_transform_for(cfg: TrainConfig, data_cfg: dict[str, Any], img_size: tuple[int, int],
                       mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """The validation transform: the model's crop_pct and interpolation unless --crop-pct says otherwise."""
    crop_pct = cfg.crop_pct or data_cfg.get("crop_pct", 0.875)
    return eval_transform(img_size, crop_pct, data_cfg.get("interpolation", "bicubic"), mean, std)
