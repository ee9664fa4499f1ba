"""What a run carries across a kill: the checkpoint dict, and the checks before resuming.

Checkpoint format (read back by `stl_bench.fan.checkpoint`; must load with
`torch.load(weights_only=True)`, so only tensors, numbers, strings, lists and dicts):
`model`, `model_ema` (absent, not None, when the run keeps no EMA), `arch`,
`num_classes`, `model_kwargs`, `class_names`, `optimizer`, `scaler`, `scheduler`,
`epoch` (the epoch to continue in), `step` (optimizer steps done), `world_size`,
`epoch_sums` (mid-epoch: each rank's running metric sums of the unfinished epoch, so its
metrics row comes out as an uninterrupted run's; empty at an epoch's end), `config`,
`stl_bench_version`. The weights are the bare model's (never a DDP or
`TokenPairForward` wrapper's), so the keys match the model's own `state_dict`.

No RNG state is saved: every random draw is seeded by its position in the run
(`stl_bench.train.seeding`), so the step and epoch are all a resume needs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stl_bench import __version__
from stl_bench.errors import StlBenchError
from stl_bench.io import atomic_open, save_torch
from stl_bench.train.config import TrainConfig
from stl_bench.train.faults import kill_if

if TYPE_CHECKING:
    from stl_bench.train.setup import Run

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
CONFIG = "config.json"  # the run's flags, written before its first step


def _plain(obj: Any) -> Any:
    """Keep what weights_only loading accepts (timm schedulers keep arbitrary attributes)."""
    if isinstance(obj, (int, float, str, bool, torch.Tensor)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if isinstance(k, str)}
    return None


def checkpoint_dict(run: "Run", epoch: int, epoch_sums: list[list[float]] | None = None) -> dict[str, Any]:
    """The run as a weights_only-loadable dict; `epoch` is the epoch a resume continues in."""
    state: dict[str, Any] = {"model": run.model.state_dict()}
    if run.ema is not None:  # absent, not None, when the run keeps no EMA
        state["model_ema"] = run.ema.module.state_dict()
    return {
        **state,
        "arch": run.cfg.model,
        "num_classes": len(run.classes),
        "model_kwargs": run.model_kwargs,
        "class_names": list(run.classes),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "scheduler": _plain(run.scheduler.state_dict()),
        "epoch": epoch,
        "step": run.step,
        "world_size": run.dist.world_size,
        "epoch_sums": epoch_sums or [],
        "config": run.cfg.to_dict(),
        "stl_bench_version": __version__,
    }


def save_checkpoint(run: "Run", epoch: int, epoch_sums: list[list[float]] | None = None, best: bool = False) -> None:
    """Write `last.pt` (and `best.pt` when `best`) whole or not at all; only rank 0 writes.

    best.pt goes first: a kill before last.pt is in place resumes from an earlier
    last.pt, which redoes this epoch and writes best.pt again. (The other order could
    leave a new last.pt whose epoch the metrics call best while best.pt is an older one.)
    """
    run.saved_at = time.time()
    if not run.dist.is_main:
        return
    ckpt = checkpoint_dict(run, epoch, epoch_sums)
    if best:
        save_torch(ckpt, run.out / BEST)
    with atomic_open(run.out / LAST, "wb") as fh:
        torch.save(ckpt, fh)
        kill_if("saving", run.step)  # test hook: the temporary is whole, last.pt is still the previous one
    kill_if("saved", run.step)


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


def restore(run: "Run", path: Path) -> None:
    """Continue `run` from a checkpoint: weights, EMA, optimizer, scaler, position and epoch sums."""
    ckpt = load_resume(path, run.cfg, len(run.classes), run.classes)
    saved_world = ckpt.get("world_size", run.dist.world_size)  # older checkpoints did not record it
    if saved_world != run.dist.world_size:
        raise StlBenchError(
            f"{path} was trained by {saved_world} process(es), this resume has {run.dist.world_size}: the data "
            f"shards and per-rank random streams would change mid-run; resume with {saved_world} process(es) "
            "(torchrun --nproc-per-node), or start a new --output"
        )
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None:  # a run that kept no EMA before starts one from its current weights
        run.ema.module.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    sums = ckpt.get("epoch_sums") or []
    run.resumed_sums = list(sums[run.dist.rank]) if sums else None
    run.scheduler.step_update(run.step)
    log.info("resumed %s at epoch %d, step %d", path, run.start_epoch, run.step)
