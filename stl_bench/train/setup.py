"""Everything a run needs before its first step, built once into a `Run`.

Read top to bottom like nanoGPT's set-up: the output folder, threads and seeds, the
data, the model, the stage's objective (the only thing that differs between stages),
the loaders, timm's optimizer / scheduler / EMA, AMP, a resume, then the forward path
(the pair wrapper and DDP). The order is the order the RNGs are drawn in (model init,
a teacher's init before its weights load), so a seed gives the same run every time.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.nn.parallel import DistributedDataParallel as DDP

from stl_bench.data.batch_augment import BatchAugment
from stl_bench.data.folders import FolderIndex
from stl_bench.data.transforms import TrainViews
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.fan.hub import resolve_source
from stl_bench.io import remove_stale_temporaries, write_text
from stl_bench.stl.objectives import (
    BaselineObjective,
    LabelerObjective,
    Objective,
    OfflineLabels,
    OnlineTeacher,
    StudentObjective,
    load_teacher,
)
from stl_bench.train.config import TrainConfig
from stl_bench.train.data import Loaders, build_loaders, eval_transform_for, scan_splits
from stl_bench.train.metrics import MetricsLog
from stl_bench.train.state import CONFIG, LAST, restore

log = logging.getLogger(__name__)


class Amp:
    """The run's autocast: `with run.amp():` (a value, not a closure over set-up locals)."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        rt = cfg.runtime
        self.device_type = device.type
        self.enabled = rt.amp == "on" or (rt.amp == "auto" and device.type == "cuda")
        self.dtype = torch.bfloat16 if rt.amp_dtype == "bfloat16" else torch.float16
        if self.enabled and device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.bfloat16  # CPU autocast is bfloat16 territory

    def __call__(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, on only for float16 autocast."""
        return torch.amp.GradScaler(self.device_type, enabled=self.enabled and self.dtype == torch.float16)


@dataclass
class Run:
    """One run's parts and its position. `model` is the bare model (saved, EMA'd, evaluated);
    `net` is what the objective calls: the model, its `TokenPairForward`, or DDP around either."""

    cfg: TrainConfig
    dist: DistContext
    out: Path
    train_index: FolderIndex
    model: nn.Module
    model_kwargs: dict[str, Any]
    img_size: tuple[int, int]
    objective: Objective
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_epochs: int
    ema: Any
    amp: Amp
    scaler: torch.amp.GradScaler
    batch_augment: BatchAugment
    net: nn.Module = None  # type: ignore[assignment]  (set once the model is on its device)
    metrics: MetricsLog | None = None
    start_epoch: int = 0
    step: int = 0
    best: float = -1.0
    bad_total: int = 0
    started: tuple[float, int] = (0.0, 0)  # (time, step) when this process began, for the run's ETA
    resumed_sums: list[float] | None = None  # this rank's metric sums of the epoch a resume lands in
    saved_at: float = 0.0  # when last.pt was last written (for --checkpoint-minutes)

    @property
    def classes(self) -> list[str]:
        return self.train_index.classes

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    @property
    def best_key(self) -> str:
        """best.pt follows the EMA's accuracy when the run keeps one."""
        return "ema_top1" if self.ema is not None else "val_top1"


def prepare_output(cfg: TrainConfig, dist: DistContext, out: Path, resume: Path | None) -> None:
    """Make the run folder, refuse to overwrite a run, and clear temporaries a killed save left."""
    if not dist.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    if resume is None and (out / LAST).exists():
        raise StlBenchError(
            f"{out} already holds a run ({LAST}); pass --resume to continue it or choose another --output"
        )
    removed = remove_stale_temporaries(out)
    if removed:
        log.info("removed %d unfinished temporary file(s) from %s", removed, out)


def seed_and_threads(cfg: TrainConfig, dist: DistContext) -> None:
    """CPU threads (leave the data workers their cores) and every RNG's seed (plus the rank)."""
    rt = cfg.runtime
    if rt.threads:
        torch.set_num_threads(rt.threads)
    elif dist.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world - rt.workers))
    random.seed(rt.seed + dist.rank)
    np.random.seed(rt.seed + dist.rank)
    torch.manual_seed(rt.seed + dist.rank)


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any], tuple[int, int]]:
    """The model, the extra create_model kwargs to record, and the input size (h, w)."""
    from stl_bench.fan.factory import create_model

    kwargs: dict[str, Any] = {}
    if cfg.optim.drop_path:
        kwargs["drop_path_rate"] = cfg.optim.drop_path
    model = create_model(cfg.model, num_classes=num_classes, **kwargs)
    default_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    model_kwargs: dict[str, Any] = {}
    if cfg.img_size and (cfg.img_size, cfg.img_size) != default_size:
        model_kwargs["img_size"] = cfg.img_size
        model = create_model(cfg.model, num_classes=num_classes, **kwargs, **model_kwargs)
    size = (cfg.img_size, cfg.img_size) if cfg.img_size else default_size
    if cfg.stage != "baseline" and not getattr(model, "has_token_head", False):
        raise StlBenchError(
            f"stage '{cfg.stage}' needs a token-label model; {cfg.model} has no token head "
            f"(use its `_token` variant, e.g. {cfg.model}_token)"
        )
    return model, model_kwargs, size


def build_objective(
    cfg: TrainConfig, model: nn.Module, train: FolderIndex, img_size: tuple[int, int], device: torch.device
) -> Objective:
    """The stage's loss; a student's label source (online teacher or offline label folder) is checked here."""
    stl = cfg.stl
    if cfg.stage == "baseline":
        return BaselineObjective()
    if cfg.stage == "labeler":
        return LabelerObjective(stl.cls_weight, stl.dense_weight)
    grid = tuple(model.token_grid(img_size))
    if stl.teacher:
        teacher = load_teacher(resolve_source(stl.teacher), len(train.classes), train.classes, grid, img_size, device)
        if cfg.runtime.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        source = OnlineTeacher(teacher, stl.label_mode, stl.gumbel_tau, stl.token_smoothing)
    else:
        from stl_bench.data.token_labels import TokenLabelStore

        store = TokenLabelStore(stl.token_labels)
        store.bind(train.root, train.samples, train.classes)
        if tuple(store.grid) != grid:
            log.info("offline labels at %s grid are resampled to the student's %s grid", store.grid, grid)
        source = OfflineLabels(store, grid, stl.label_mode, stl.gumbel_tau, stl.token_smoothing)
    return StudentObjective(source, stl.cls_weight, stl.dense_weight)


def build_optimization(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int) -> tuple[Any, Any, int, Any]:
    """timm's optimizer, per-step scheduler (with its total epochs incl. cooldown) and EMA."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    o = cfg.optim
    # filter_bias_and_bn: no decay on 1-D params, biases and model.no_weight_decay() names
    optimizer = create_optimizer_v2(model, opt=o.opt, lr=o.lr, weight_decay=o.weight_decay, eps=o.opt_eps)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=o.sched, num_epochs=o.epochs, warmup_epochs=o.warmup_epochs,
        warmup_lr=o.warmup_lr, min_lr=o.min_lr, cooldown_epochs=o.cooldown_epochs,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    e = cfg.ema
    ema = ModelEmaV3(model, decay=e.model_ema_decay, use_warmup=e.model_ema_warmup) if e.model_ema else None
    return optimizer, scheduler, total_epochs, ema


def forward_path(cfg: TrainConfig, dist: DistContext, model: nn.Module) -> nn.Module:
    """What the objective calls: token stages get the (class, token) pair through `forward`,
    so DDP's gradient hooks see every parameter; several processes wrap that in DDP."""
    from stl_bench.fan.model import TokenPairForward

    net = model if cfg.stage == "baseline" else TokenPairForward(model)
    if dist.world_size == 1:
        return net
    # a baseline on a token model never uses aux_head; DDP must be told
    unused = cfg.stage == "baseline" and getattr(model, "has_token_head", False)
    return DDP(net, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
               find_unused_parameters=unused)


def build_run(cfg: TrainConfig, dist: DistContext, resume: Path | None = None) -> Run:
    """Build a `Run` ready for its first (or resumed) step, and write its config.json."""
    out = Path(cfg.output)
    prepare_output(cfg, dist, out, resume)
    seed_and_threads(cfg, dist)
    _, train_index, val_index = scan_splits(cfg)
    model, model_kwargs, img_size = build_model(cfg, len(train_index.classes))
    data_cfg = model.pretrained_cfg
    mean = tuple(data_cfg.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(data_cfg.get("std", IMAGENET_DEFAULT_STD))
    objective = build_objective(cfg, model, train_index, img_size, dist.device)
    views = TrainViews(cfg.augment, img_size, mean, std, clean=objective.needs_clean_view,
                       warp_grid=objective.warp_grid)
    loaders = build_loaders(cfg, dist, train_index, val_index, views,
                            eval_transform_for(cfg, data_cfg, img_size, mean, std))
    model.to(dist.device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.runtime.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer, scheduler, total_epochs, ema = build_optimization(cfg, model, loaders.steps_per_epoch)
    amp = Amp(cfg, dist.device)
    run = Run(cfg, dist, out, train_index, model, model_kwargs, img_size, objective, loaders, optimizer,
              scheduler, total_epochs, ema, amp, amp.scaler(),
              BatchAugment(cfg.augment, len(train_index.classes), dist.device))
    if resume is not None:
        restore(run, resume)
    if run.step >= run.total_steps:
        log.info("the run in %s is already complete (%d steps)", out, run.step)
    run.net = forward_path(cfg, dist, model)
    if dist.is_main:
        run.metrics = MetricsLog(out, keep_before_epoch=run.start_epoch)
        run.best = run.metrics.best(run.best_key)
        write_text(out / CONFIG, json.dumps(cfg.to_dict(), indent=2))
        _log_start(run)
    return run


def _log_start(run: Run) -> None:
    cfg, d = run.cfg, run.dist
    n_params = sum(p.numel() for p in run.model.parameters())
    log.info(
        "%s: %s (%.2fM params), %d classes, %d train images, %d steps/epoch x %d epochs, global batch %d, %s x%d%s",
        cfg.stage, cfg.model, n_params / 1e6, len(run.classes), len(run.train_index.samples), run.steps_per_epoch,
        run.total_epochs, cfg.optim.batch_size * cfg.optim.grad_accum_steps * d.world_size, d.device.type,
        d.world_size, f", AMP {run.amp.dtype}" if run.amp.enabled else "",
    )
