"""The one training loop: baseline, STL stage 1 (labeler) and stage 2 (student).

`train` reads like nanoGPT's train.py: set up a `Run`, then per epoch `train_one_epoch`
(gradient accumulation, AMP, clipping, EMA updates), `evaluate`, a metrics row and an
atomic checkpoint. A stage is the objective the run was built with, never a copy of this
loop. `--resume` continues a killed run from `last.pt`, mid-epoch included.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.utils.data import DataLoader

from stl_bench.data.transforms import ViewBatch
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.fan.model import fuse_token_head
from stl_bench.stl.objectives import StepInputs
from stl_bench.train.config import TrainConfig
from stl_bench.train.faults import kill_if
from stl_bench.train.seeding import seed_step
from stl_bench.train.setup import Run, build_run
from stl_bench.train.state import LAST, save_checkpoint

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, resume: Path | str | None = None) -> dict[str, Any]:
    """Train one run to the end; returns the last epoch's metrics row (rank 0's view)."""
    cfg.validate_for_run()
    dist = DistContext.from_env(cfg.runtime.device)
    try:
        run = build_run(cfg, dist, Path(resume) if resume else None)
        run.started = (time.time(), run.step)
        run.saved_at = time.time()
        last_row: dict[str, Any] = {}
        for epoch in range(run.start_epoch, run.total_epochs):
            if run.step - epoch * run.steps_per_epoch >= run.steps_per_epoch:
                continue  # finished before the resume
            stats = train_one_epoch(run, epoch)
            last_row = end_epoch(run, epoch, stats)
        if dist.is_main and run.bad_total:
            log.warning("%d unreadable image(s) were skipped in this run; fix or remove them", run.bad_total)
        return last_row
    finally:
        dist.close()


@dataclass
class EpochStats:
    """This rank's running sums over an epoch (losses are per optimizer step)."""

    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "loss_cls": 0.0, "loss_token": 0.0})
    seen: int = 0
    steps: int = 0
    bad: int = 0
    bad_files: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.time)
    seen_before: int = 0  # images counted by a killed predecessor (not in this process's rate)

    def as_list(self) -> list[float]:
        """The sums a mid-epoch checkpoint keeps (bad file names are not kept)."""
        s = self.sums
        return [s["loss"], s["loss_cls"], s["loss_token"], float(self.seen), float(self.steps), float(self.bad)]

    @classmethod
    def resumed(cls, saved: list[float] | None) -> "EpochStats":
        """The sums of a checkpoint's unfinished epoch, so its row equals an uninterrupted run's."""
        stats = cls()
        if saved:
            stats.sums["loss"], stats.sums["loss_cls"], stats.sums["loss_token"], seen, steps, bad = saved
            stats.seen, stats.steps, stats.bad = int(seen), int(steps), int(bad)
            stats.seen_before = stats.seen
        return stats


def train_one_epoch(run: Run, epoch: int) -> EpochStats:
    """Optimizer steps until the epoch's quota, starting where a resumed run left off."""
    from tqdm.auto import tqdm

    cfg, spe = run.cfg, run.steps_per_epoch
    done = run.step - epoch * spe
    run.loaders.sampler.set_epoch(epoch)
    run.loaders.sampler.skip = done * cfg.optim.batch_size * cfg.optim.grad_accum_steps
    run.net.train()
    bar = tqdm(total=spe, initial=done, desc=f"epoch {epoch + 1}/{run.total_epochs}", unit="step",
               disable=not (run.dist.is_main and cfg.runtime.progress) or None, dynamic_ncols=True, leave=False)
    stats = EpochStats.resumed(run.resumed_sums if done else None)
    run.resumed_sums = None
    batches = iter(run.loaders.train)
    while run.step - epoch * spe < spe:
        for micro in range(cfg.optim.grad_accum_steps):
            micro_step(run, next(batches), micro, stats, epoch)
        optimizer_step(run)
        stats.steps += 1
        _report(run, stats, bar)
        kill_if("step", run.step)  # test hook (stl_bench.train.faults)
        if checkpoint_due(run, epoch):
            save_checkpoint(run, epoch, _gathered_sums(run, stats))
    bar.close()
    return stats


def checkpoint_due(run: Run, epoch: int) -> bool:
    """A mid-epoch last.pt every --checkpoint-every steps or --checkpoint-minutes; all ranks agree
    (the epoch sums are gathered for it). The epoch's last step is left to `end_epoch`."""
    rt = run.cfg.runtime
    if run.step - epoch * run.steps_per_epoch >= run.steps_per_epoch:
        return False
    if rt.checkpoint_every and run.step % rt.checkpoint_every == 0:
        return True
    if not rt.checkpoint_minutes:
        return False
    late = int(time.time() - run.saved_at >= 60 * rt.checkpoint_minutes)
    return bool(late if run.dist.world_size == 1 else _max_across(late, run.dist))


def _gathered_sums(run: Run, stats: EpochStats) -> list[list[float]]:
    """Every rank's epoch sums, row r from rank r (adding zeros is exact, so nothing is rounded)."""
    rows = torch.zeros(run.dist.world_size, 6, dtype=torch.float64)
    rows[run.dist.rank] = torch.tensor(stats.as_list(), dtype=torch.float64)
    return run.dist.all_reduce_sum(rows).tolist()


def micro_step(run: Run, batch: ViewBatch, micro: int, stats: EpochStats, epoch: int) -> None:
    """Forward and backward of one micro-batch; gradients are synced across ranks on the last one."""
    cfg, dist, accum = run.cfg, run.dist, run.cfg.optim.grad_accum_steps
    stats.bad += len(batch.bad_indices)
    stats.bad_files += [str(run.train_index.samples[i][0]) for i in batch.bad_indices[:5]]
    n = len(batch)
    if run.batch_augment.pairs_images and n % 2:
        n -= 1  # batch mixing pairs images: drop one when a bad file left the count odd
    if dist.world_size > 1:
        # every rank must take part in the backward all-reduce: skip together or not at all
        n = _min_across(n, dist)
    if n == 0:
        return
    # drop path, mixup/cutmix, batch erasing and Gumbel labels draw from a stream keyed by
    # (seed, rank, step, micro-batch): a resumed run draws what the uninterrupted one did
    seed_step(cfg.runtime.seed, dist.rank, run.step, micro)
    inputs = step_inputs(run, batch, n)
    sync = micro == accum - 1 or dist.world_size == 1
    with (contextlib.nullcontext() if sync else run.net.no_sync()), run.amp():
        loss, parts = run.objective(run.net, inputs)
    if not torch.isfinite(loss):
        raise StlBenchError(
            f"the loss became {loss.item()} at step {run.step} (epoch {epoch + 1}); lower --lr, "
            f"add --clip-grad, or resume from an earlier {run.out / LAST}"
        )
    run.scaler.scale(loss / accum).backward()
    stats.sums["loss"] += loss.item() / accum
    for k, v in parts.items():
        stats.sums[k] += v.item() / accum
    stats.seen += n


def step_inputs(run: Run, batch: ViewBatch, n: int) -> StepInputs:
    """The first `n` samples on the device, the student's view mixed and erased (the clean view never is)."""
    device, channels_last = run.dist.device, run.cfg.runtime.channels_last
    x = batch.images[:n].to(device, non_blocking=True)
    y = batch.targets[:n].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x, t = run.batch_augment(x, y)  # the student's view and class target only
    clean = batch.clean[:n].to(device, non_blocking=True) if batch.clean is not None else None
    if clean is not None and channels_last:
        clean = clean.contiguous(memory_format=torch.channels_last)
    warps = batch.warps[:n].to(device) if batch.warps is not None else None
    return StepInputs(x, t, clean, batch.boxes[:n].to(device), batch.flips[:n].to(device), batch.indices[:n], warps)


def optimizer_step(run: Run) -> None:
    """Clip (if asked), step, schedule per step, update the EMA."""
    if run.cfg.optim.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.scheduler.step_update(run.step)
    if run.ema is not None:
        run.ema.update(run.model, step=run.step)


def _report(run: Run, stats: EpochStats, bar: Any) -> None:
    """Progress bar, and a log line every --log-every steps when there is no bar."""
    rate = (stats.seen - stats.seen_before) * run.dist.world_size / max(time.time() - stats.t0, 1e-9)
    t_start, step_start = run.started
    run_rate = (run.step - step_start) / max(time.time() - t_start, 1e-9)
    eta = _fmt_eta((run.total_steps - run.step) / max(run_rate, 1e-9))
    loss, lr = stats.sums["loss"] / stats.steps, run.optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", run_eta=eta)
    bar.update(1)
    every = run.cfg.runtime.log_every
    if run.dist.is_main and every and run.step % every == 0 and bar.disable:
        log.info("step %d/%d loss %.4f lr %.3g %.0f img/s eta %s", run.step, run.total_steps, loss, lr, rate, eta)


def end_epoch(run: Run, epoch: int, stats: EpochStats) -> dict[str, Any]:
    """Gather the epoch over ranks, evaluate model and EMA, log a row, checkpoint, keep the best."""
    row = epoch_row(run, epoch, stats)
    val = run.loaders.val
    if val is not None:
        fused, cl = run.cfg.stage != "baseline", run.cfg.runtime.channels_last
        row.update({f"val_{k}": v for k, v in evaluate(run.model, val, run.dist, run.amp, cl, fused).items()})
        if run.ema is not None:
            row.update({f"ema_{k}": v for k, v in evaluate(run.ema.module, val, run.dist, run.amp, cl, fused).items()})
    best = False
    if run.dist.is_main:
        run.metrics.append(row)
        score = row.get(run.best_key)
        best = score is not None and score > run.best
        run.best = score if best else run.best
    save_checkpoint(run, epoch + 1, best=best)  # every rank notes the time, rank 0 writes
    if run.dist.is_main:
        log.info("epoch %d/%d: loss %.4f%s, %.0f img/s, %.1fs", epoch + 1, run.total_epochs, row["train_loss"],
                 "".join(f", {k} {row[k]:.2f}" for k in ("val_top1", "val_top1_fused", "ema_top1", "ema_top1_fused")
                         if k in row),
                 row["images_per_s"], row["epoch_time_s"])
    return row


def epoch_row(run: Run, epoch: int, stats: EpochStats) -> dict[str, Any]:
    """The metrics row of the training half of an epoch, summed over ranks."""
    epoch_time = time.time() - stats.t0
    s = stats.sums
    loss_sum, cls_sum, tok_sum, seen_all, bad_all, steps_all = _all_reduce_sum(
        [s["loss"], s["loss_cls"], s["loss_token"], float(stats.seen), float(stats.bad), float(stats.steps)],
        run.dist)
    if bad_all and not seen_all:
        raise StlBenchError(f"every image of the training set in {run.cfg.data} ({int(bad_all)} files this epoch, "
                            f"e.g. {', '.join(stats.bad_files[:2]) or 'on another rank'}) was unreadable; "
                            "fix or replace the files")
    steps_all = max(steps_all, 1.0)
    run.bad_total += int(bad_all)
    row: dict[str, Any] = {
        "epoch": epoch, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / steps_all, "train_loss_cls": cls_sum / steps_all,
        "train_images": int(seen_all), "images_per_s": (stats.seen - stats.seen_before) * run.dist.world_size
        / max(epoch_time, 1e-9),
        "epoch_time_s": epoch_time, "bad_images": int(bad_all),
    }
    if run.cfg.stage != "baseline":
        row["train_loss_token"] = tok_sum / steps_all
    if bad_all:
        log.warning("epoch %d: %d unreadable image(s) skipped (rank %d saw e.g. %s)", epoch + 1, int(bad_all),
                    run.dist.rank, ", ".join(stats.bad_files[:3]) or "none")
    return row


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, dist: DistContext, amp_ctx: Callable[[], Any], channels_last: bool,
    fused: bool = True,
) -> dict[str, float]:
    """Top-1/top-5 of the class head and, for token models, of the official fused head
    (`fan.model.fuse_token_head`). Shards are unpadded and only integer counts are summed
    across ranks, so every image counts exactly once."""
    was_training = model.training
    model.eval()
    token = fused and getattr(model, "has_token_head", False)  # a baseline never trains aux_head
    correct1 = correct5 = fused1 = total = 0.0
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(dist.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.targets.to(dist.device)
        with amp_ctx():
            if token:
                logits, tokens = model.forward_tokens(x)
                fused1 += (fuse_token_head(logits.float(), tokens.float()).argmax(-1) == y).sum().item()
            else:
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
        top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
        total += len(y)
    correct1, correct5, fused1, total = _all_reduce_sum([correct1, correct5, fused1, total], dist)
    model.train(was_training)
    if total == 0:
        return {}
    out = {"top1": 100 * correct1 / total, "top5": 100 * correct5 / total, "images": int(total)}
    if token:
        out["top1_fused"] = 100 * fused1 / total
    return out


def _all_reduce_sum(values: list[float], dist: DistContext) -> list[float]:
    if dist.world_size == 1:
        return values
    return dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def _min_across(n: int, dist: DistContext) -> int:
    t = torch.tensor([n], device=dist.comm_device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
    return int(t.item())


def _max_across(n: int, dist: DistContext) -> int:
    t = torch.tensor([n], device=dist.comm_device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
