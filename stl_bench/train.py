"""The one training loop: baseline, STL stage 1 (labeler) and stage 2 (student).

Read it top to bottom like nanoGPT's train.py: distributed setup from the `torchrun`
environment, data, model, the stage's objective (the only thing that differs between
stages), timm's optimizer / scheduler / EMA / Mixup, then the loop with gradient
accumulation, AMP, clipping, EMA updates, per-epoch evaluation, metrics and atomic
checkpoints. `--resume` continues a killed run from `last.pt`, mid-epoch included.

Checkpoint format (read back by `stl_bench.fan.checkpoint`; must load with
`torch.load(weights_only=True)`, so only tensors, numbers, strings, lists and dicts):
`model`, `model_ema`, `arch`, `num_classes`, `model_kwargs`, `class_names`,
`optimizer`, `scaler`, `scheduler`, `epoch` (the epoch to continue in), `step` (optimizer
steps done), `rng`, `config`, `stl_bench_version`.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset

from stl_bench import __version__
from stl_bench.data.batch_augment import BatchAugment, BatchRecipe
from stl_bench.data.folders import FolderIndex, ImageDataset, collate_skip_bad, scan_image_folder
from stl_bench.data.transforms import AugmentConfig, TrainViews, ViewBatch, collate_views, eval_transform
from stl_bench.errors import StlBenchError
from stl_bench.stl.objectives import (
    BaselineObjective,
    LabelerObjective,
    Objective,
    OfflineLabels,
    OnlineTeacher,
    StepInputs,
    StudentObjective,
    load_teacher,
)
from stl_bench.train_config import TrainConfig

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


# --- distributed -----------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> Dist:
    """Single process, or one process per GPU/CPU slot under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK)."""
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise StlBenchError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # gloo runs the same code path on CPU (and in the tests); nccl on GPUs.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def _all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (after `skip` of this rank's samples).

    The permutation depends only on (seed, epoch), so a resumed run sees the samples its
    killed predecessor had not reached yet, without loading and discarding the others.
    """

    skip: int = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


# --- data ------------------------------------------------------------------------------
def resolve_data_root(data: str) -> Path:
    if data == "demo":
        from stl_bench.data.demo import ensure_demo_data

        return ensure_demo_data()
    root = Path(data).expanduser()
    if not root.exists():
        raise StlBenchError(f"data folder {root} does not exist; pass a folder holding train/<class>/ images, or 'demo'")
    return root


def scan_splits(cfg: TrainConfig) -> tuple[Path, FolderIndex, FolderIndex | None]:
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
    if cfg.max_train_samples and cfg.max_train_samples < len(train.samples):
        pick = np.random.default_rng(cfg.seed).choice(len(train.samples), cfg.max_train_samples, replace=False)
        train = FolderIndex(train.root, train.classes, [train.samples[i] for i in sorted(pick.tolist())])
    return root, train, val


# --- model -----------------------------------------------------------------------------
def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any], tuple[int, int]]:
    """The model, the extra create_model kwargs to record, and the input size (h, w)."""
    from stl_bench.fan.factory import create_model

    kwargs: dict[str, Any] = {}
    if cfg.drop_path:
        kwargs["drop_path_rate"] = cfg.drop_path
    model = create_model(cfg.model, num_classes=num_classes, **kwargs)
    default_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    model_kwargs: dict[str, Any] = {}
    if cfg.img_size and (cfg.img_size, cfg.img_size) != default_size:
        model_kwargs["img_size"] = cfg.img_size
        model = create_model(cfg.model, num_classes=num_classes, **kwargs, **model_kwargs)
    size = (cfg.img_size, cfg.img_size) if cfg.img_size else default_size
    if cfg.stage != "baseline":
        if not getattr(model, "has_token_head", False):
            raise StlBenchError(
                f"stage '{cfg.stage}' needs a token-label model; {cfg.model} has no token head "
                f"(use its `_token` variant, e.g. {cfg.model}_token)"
            )
        model.set_output("pair")  # forward() returns (cls, tokens): DDP hooks stay in the path
    return model, model_kwargs, size


def build_objective(
    cfg: TrainConfig, model: nn.Module, train: FolderIndex, img_size: tuple[int, int], device: torch.device
) -> Objective:
    if cfg.stage == "baseline":
        return BaselineObjective()
    if cfg.stage == "labeler":
        return LabelerObjective(cfg.cls_weight, cfg.dense_weight)
    grid = tuple(model.token_grid(img_size))
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, len(train.classes), train.classes, grid, img_size, device)
        if cfg.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        source = OnlineTeacher(teacher, cfg.label_mode, cfg.gumbel_tau, cfg.token_smoothing)
    else:
        from stl_bench.data.token_labels import TokenLabelStore

        store = TokenLabelStore(cfg.token_labels)
        store.bind(train.root, train.samples, train.classes)
        if tuple(store.grid) != grid:
            log.info("offline labels at %s grid are resampled to the student's %s grid", store.grid, grid)
        source = OfflineLabels(store, grid, cfg.label_mode, cfg.gumbel_tau, cfg.token_smoothing)
    return StudentObjective(source, cfg.cls_weight, cfg.dense_weight)


def batch_recipe(cfg: TrainConfig, num_classes: int) -> BatchRecipe:
    """The mixing and (after-mix) erasing settings of a run."""
    return BatchRecipe(
        num_classes=num_classes, smoothing=cfg.smoothing, mixup=cfg.mixup, cutmix=cfg.cutmix,
        mixup_prob=cfg.mixup_prob, mixup_switch_prob=cfg.mixup_switch_prob, mixup_mode=cfg.mixup_mode,
        reprob=cfg.reprob, remode=cfg.remode, recount=cfg.recount, erase_after_mix=cfg.erase_after_mix,
    )


# --- checkpoints -----------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(obj: Any) -> Any:
    """Keep what weights_only loading accepts (timm schedulers keep arbitrary attributes)."""
    if isinstance(obj, (int, float, str, bool, torch.Tensor)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
    return None


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_resume(path: Path, cfg: TrainConfig, num_classes: int, class_names: list[str]) -> dict[str, Any]:
    """Read a resume file and refuse one from another model, class list or stage."""
    if not path.is_file():
        raise StlBenchError(f"resume checkpoint {path} does not exist; drop --resume to start a new run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise StlBenchError(f"cannot read resume checkpoint {path} ({type(exc).__name__}: {exc}); it is not ours or is damaged") from None
    if not isinstance(ckpt, dict) or "stl_bench_version" not in ckpt:
        raise StlBenchError(f"{path} is not an stl-bench training checkpoint, so a run cannot resume from it")
    if ckpt.get("arch") != cfg.model or ckpt.get("num_classes") != num_classes:
        raise StlBenchError(
            f"resume checkpoint {path} is {ckpt.get('arch')} with {ckpt.get('num_classes')} classes, but this run "
            f"trains {cfg.model} with {num_classes}; resume with the same --model and data, or start a new --output"
        )
    if ckpt.get("class_names") and list(ckpt["class_names"]) != list(class_names):
        raise StlBenchError(f"resume checkpoint {path} was trained on other classes than {cfg.data}; use the same data")
    stage = (ckpt.get("config") or {}).get("stage")
    if stage and stage != cfg.stage:
        raise StlBenchError(f"resume checkpoint {path} is from stage '{stage}', not '{cfg.stage}'; pass --stage {stage}")
    return ckpt


# --- metrics ---------------------------------------------------------------------------
class MetricsLog:
    """One row per epoch in metrics.jsonl (appended) and metrics.csv (rewritten atomically)."""

    def __init__(self, out: Path, keep_before_epoch: int | None) -> None:
        self.jsonl, self.csv = out / METRICS_JSONL, out / METRICS_CSV
        self.rows: list[dict[str, Any]] = []
        if keep_before_epoch is not None and self.jsonl.exists():
            # a killed run may have logged the epoch it is about to redo
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] < keep_before_epoch]
        self._rewrite()

    def _rewrite(self) -> None:
        for path, text in ((self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows)), (self.csv, self._csv_text())):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _csv_text(self) -> str:
        import io

        cols: list[str] = []
        for r in self.rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._rewrite()

    def best(self, key: str) -> float:
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return max(vals) if vals else -1.0


# --- evaluation ------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, d: Dist, amp_ctx, channels_last: bool, fused: bool = True
) -> dict[str, float]:
    """Top-1/top-5 of the class head and, for token models, of the official fused head
    (class logits + 0.5 x per-class max over tokens). Shards are unpadded and only integer
    counts are summed across ranks, so every image counts exactly once."""
    was_training = model.training
    model.eval()
    token = fused and getattr(model, "has_token_head", False)  # a baseline never trains aux_head
    correct1 = correct5 = fused1 = total = 0.0
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(d.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.targets.to(d.device)
        with amp_ctx():
            if token:
                logits, tokens = model.forward_tokens(x)
                fused = logits.float() + 0.5 * tokens.float().max(dim=1).values
                fused1 += (fused.argmax(-1) == y).sum().item()
            else:
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
        top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
        total += len(y)
    correct1, correct5, fused1, total = _all_reduce_sum([correct1, correct5, fused1, total], d)
    model.train(was_training)
    if total == 0:
        return {}
    out = {"top1": 100 * correct1 / total, "top5": 100 * correct5 / total, "images": int(total)}
    if token:
        out["top1_fused"] = 100 * fused1 / total
    return out


# --- the loop --------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: Path | str | None = None) -> dict[str, Any]:
    """Train one run to the end; returns the last epoch's metrics row (rank 0's view)."""
    cfg.validate_for_run()
    d = setup_distributed(cfg.device)
    out = Path(cfg.output)
    try:
        return _train(cfg, d, out, Path(resume) if resume else None)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, out: Path, resume: Path | None) -> dict[str, Any]:
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is None and (out / LAST).exists():
            raise StlBenchError(
                f"{out} already holds a run ({LAST}); pass --resume to continue it or choose another --output"
            )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif d.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world - cfg.workers))
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    torch.manual_seed(cfg.seed + d.rank)

    # data
    root, train_index, val_index = scan_splits(cfg)
    classes = train_index.classes
    num_classes = len(classes)

    # model, objective, transforms
    model, model_kwargs, img_size = build_model(cfg, num_classes)
    data_cfg = model.pretrained_cfg
    mean, std = tuple(data_cfg.get("mean", (0.485, 0.456, 0.406))), tuple(data_cfg.get("std", (0.229, 0.224, 0.225)))
    objective = build_objective(cfg, model, train_index, img_size, d.device)
    aug = AugmentConfig(
        img_size=img_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, reprob=0.0 if cfg.erase_after_mix else cfg.reprob,
        remode=cfg.remode, recount=cfg.recount,
        mean=mean, std=std,
    )
    views = TrainViews(aug, clean=objective.needs_clean_view, warp_grid=objective.warp_grid)
    train_ds = ImageDataset(train_index.samples, views)
    sampler = ResumableSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
    loader_kw: dict[str, Any] = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda")
    if cfg.workers > 0:
        loader_kw.update(persistent_workers=True, prefetch_factor=4)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate_views, **loader_kw)
    full_batches = sampler.num_samples // cfg.batch_size
    steps_per_epoch = full_batches // cfg.grad_accum_steps
    if cfg.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    if steps_per_epoch < 1:
        raise StlBenchError(
            f"{train_index.root} has {len(train_index.samples)} training images: too few for one step of "
            f"{cfg.batch_size} x {cfg.grad_accum_steps} per process on {d.world} process(es); lower --batch-size"
        )
    val_loader = None
    if val_index is not None:
        crop_pct = cfg.crop_pct or data_cfg.get("crop_pct", 0.875)
        val_ds = ImageDataset(val_index.samples, eval_transform(img_size, crop_pct, data_cfg.get("interpolation", "bicubic"), mean, std))
        val_ds = Subset(val_ds, range(d.rank, len(val_ds), d.world))  # unpadded shards
        val_loader = DataLoader(val_ds, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                                collate_fn=collate_skip_bad, num_workers=min(cfg.workers, 2), pin_memory=loader_kw["pin_memory"])

    # optimizer, schedule, EMA, AMP (timm's pieces)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    model.to(d.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # filter_bias_and_bn: no decay on 1-D params, biases and model.no_weight_decay() names
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    use_amp = cfg.amp == "on" or (cfg.amp == "auto" and d.device.type == "cuda")
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    if use_amp and d.device.type == "cpu" and amp_dtype == torch.float16:
        amp_dtype = torch.bfloat16  # CPU autocast is bfloat16 territory
    def amp_ctx():
        return torch.autocast(d.device.type, dtype=amp_dtype, enabled=use_amp)
    scaler = torch.amp.GradScaler(d.device.type, enabled=use_amp and amp_dtype == torch.float16)
    batch_augment = BatchAugment(batch_recipe(cfg, num_classes), d.device)

    # resume
    start_epoch, step = 0, 0
    if resume is not None:
        ckpt = load_resume(resume, cfg, num_classes, classes)
        model.load_state_dict(ckpt["model"])
        if ema is not None:  # a run that kept no EMA before starts one from its current weights
            ema.module.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if d.main and ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        else:
            torch.manual_seed(cfg.seed + d.rank + 1000 * step)
        scheduler.step_update(step)
        log.info("resumed %s at epoch %d, step %d", resume, start_epoch, step)
    if step >= total_epochs * steps_per_epoch:
        log.info("the run in %s is already complete (%d steps)", out, step)

    if d.world > 1:
        # a baseline on a token model never uses aux_head; DDP must be told
        unused = cfg.stage == "baseline" and getattr(model, "has_token_head", False)
        ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, find_unused_parameters=unused)
    else:
        ddp = model

    metrics = MetricsLog(out, keep_before_epoch=start_epoch) if d.main else None
    best_key = "ema_top1" if ema is not None else "val_top1"
    best = metrics.best(best_key) if metrics else -1.0
    if d.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "%s: %s (%.2fM params), %d classes, %d train images, %d steps/epoch x %d epochs, global batch %d, %s x%d%s",
            cfg.stage, cfg.model, n_params / 1e6, num_classes, len(train_index.samples), steps_per_epoch,
            total_epochs, cfg.batch_size * cfg.grad_accum_steps * d.world, d.device.type, d.world,
            f", AMP {amp_dtype}" if use_amp else "",
        )

    def checkpoint(epoch: int, path: Path = out / LAST) -> None:
        if not d.main:
            return
        state: dict[str, Any] = {"model": model.state_dict()}
        if ema is not None:  # absent, not None, when the run keeps no EMA
            state["model_ema"] = ema.module.state_dict()
        save_atomic({
            **state,
            "arch": cfg.model,
            "num_classes": num_classes,
            "model_kwargs": model_kwargs,
            "class_names": list(classes),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": _plain(scheduler.state_dict()),
            "epoch": epoch,
            "step": step,
            "rng": rng_state(),
            "config": cfg.to_dict(),
            "stl_bench_version": __version__,
        }, path)

    from tqdm.auto import tqdm

    total_steps = total_epochs * steps_per_epoch
    run_t0, run_steps0 = time.time(), step
    last_row: dict[str, Any] = {}
    bad_total = 0
    for epoch in range(start_epoch, total_epochs):
        done_in_epoch = step - epoch * steps_per_epoch
        if done_in_epoch >= steps_per_epoch:
            continue
        sampler.set_epoch(epoch)
        sampler.skip = done_in_epoch * cfg.batch_size * cfg.grad_accum_steps
        ddp.train()
        bar = tqdm(total=steps_per_epoch, initial=done_in_epoch, desc=f"epoch {epoch + 1}/{total_epochs}",
                   unit="step", disable=not (d.main and cfg.progress) or None, dynamic_ncols=True, leave=False)
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_token": 0.0}
        seen = epoch_steps = bad = 0
        bad_files: list[str] = []
        t0 = time.time()
        batches = iter(loader)
        while step - epoch * steps_per_epoch < steps_per_epoch:
            for micro in range(cfg.grad_accum_steps):
                batch: ViewBatch = next(batches)
                bad += len(batch.bad_indices)
                bad_files += [str(train_index.samples[i][0]) for i in batch.bad_indices[:5]]
                n = len(batch)
                if batch_augment.pairs_images and n % 2:
                    n -= 1  # batch mixing pairs images: drop one when a bad file left the count odd
                if d.world > 1:
                    # every rank must take part in the backward all-reduce: skip together or not at all
                    n = int(_min_across(n, d))
                if n == 0:
                    continue
                x = batch.images[:n].to(d.device, non_blocking=True)
                y = batch.targets[:n].to(d.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x, t = batch_augment(x, y)  # the student's view and class target only
                clean = batch.clean[:n].to(d.device, non_blocking=True) if batch.clean is not None else None
                if clean is not None and cfg.channels_last:
                    clean = clean.contiguous(memory_format=torch.channels_last)
                warps = batch.warps[:n].to(d.device) if batch.warps is not None else None
                inputs = StepInputs(x, t, clean, batch.boxes[:n].to(d.device), batch.flips[:n].to(d.device),
                                    batch.indices[:n], warps)
                sync = micro == cfg.grad_accum_steps - 1 or d.world == 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), amp_ctx():
                    loss, parts = objective(ddp, inputs)
                if not torch.isfinite(loss):
                    raise StlBenchError(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); lower --lr, "
                        f"add --clip-grad, or resume from an earlier {out / LAST}"
                    )
                scaler.scale(loss / cfg.grad_accum_steps).backward()
                sums["loss"] += loss.item() / cfg.grad_accum_steps
                for k, v in parts.items():
                    sums[k] += v.item() / cfg.grad_accum_steps
                seen += n
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_steps += 1
            scheduler.step_update(step)
            if ema is not None:
                ema.update(model, step=step)
            elapsed = time.time() - t0
            rate = seen * d.world / max(elapsed, 1e-9)
            run_rate = (step - run_steps0) / max(time.time() - run_t0, 1e-9)
            bar.set_postfix(loss=f"{sums['loss'] / epoch_steps:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{rate:.0f}", run_eta=_fmt_eta((total_steps - step) / max(run_rate, 1e-9)))
            bar.update(1)
            if d.main and cfg.log_every and step % cfg.log_every == 0 and bar.disable:
                log.info("step %d/%d loss %.4f lr %.3g %.0f img/s eta %s", step, total_steps,
                         sums["loss"] / epoch_steps, optimizer.param_groups[0]["lr"], rate,
                         _fmt_eta((total_steps - step) / max(run_rate, 1e-9)))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step - epoch * steps_per_epoch < steps_per_epoch:
                checkpoint(epoch)
        bar.close()

        # end of epoch: gather, evaluate, log, checkpoint
        epoch_time = time.time() - t0
        loss_sum, cls_sum, tok_sum, seen_all, bad_all, steps_all = _all_reduce_sum(
            [sums["loss"], sums["loss_cls"], sums["loss_token"], float(seen), float(bad), float(epoch_steps)], d)
        steps_all = max(steps_all, 1.0)
        bad_total += int(bad_all)
        row: dict[str, Any] = {
            "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / steps_all, "train_loss_cls": cls_sum / steps_all,
            "train_images": int(seen_all), "images_per_s": seen_all / max(epoch_time, 1e-9),
            "epoch_time_s": epoch_time, "bad_images": int(bad_all),
        }
        if cfg.stage != "baseline":
            row["train_loss_token"] = tok_sum / steps_all
        if bad_all:
            log.warning("epoch %d: %d unreadable image(s) skipped (rank %d saw e.g. %s)", epoch + 1, int(bad_all),
                        d.rank, ", ".join(bad_files[:3]) or "none")
        if val_loader is not None:
            fused = cfg.stage != "baseline"
            row.update({f"val_{k}": v for k, v in evaluate(model, val_loader, d, amp_ctx, cfg.channels_last, fused).items()})
            if ema is not None:
                row.update({f"ema_{k}": v for k, v in
                            evaluate(ema.module, val_loader, d, amp_ctx, cfg.channels_last, fused).items()})
        if d.main:
            metrics.append(row)
            checkpoint(epoch + 1)
            score = row.get(best_key)
            if score is not None and score > best:
                best = score
                tmp = out / f".{BEST}.tmp{os.getpid()}"
                shutil.copyfile(out / LAST, tmp)
                os.replace(tmp, out / BEST)
            log.info("epoch %d/%d: loss %.4f%s, %.0f img/s, %.1fs", epoch + 1, total_epochs, row["train_loss"],
                     "".join(f", {k} {row[k]:.2f}" for k in ("val_top1", "val_top1_fused", "ema_top1", "ema_top1_fused") if k in row),
                     row["images_per_s"], epoch_time)
        last_row = row
    if d.main and bad_total:
        log.warning("%d unreadable image(s) were skipped in this run; fix or remove them", bad_total)
    return last_row


def _min_across(n: int, d: Dist) -> int:
    t = torch.tensor([n], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
