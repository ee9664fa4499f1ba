"""What a run carries across a kill: every RNG, the checkpoint dict, and the checks before resuming.

Checkpoint format (read back by `stl_bench.fan.checkpoint`; must load with
`torch.load(weights_only=True)`, so only tensors, numbers, strings, lists and dicts):
`model`, `model_ema` (absent, not None, when the run keeps no EMA), `arch`,
`num_classes`, `model_kwargs`, `class_names`, `optimizer`, `scaler`, `scheduler`,
`epoch` (the epoch to continue in), `step` (optimizer steps done), `rng`, `config`,
`stl_bench_version`. The weights are the bare model's (never a DDP or
`TokenPairForward` wrapper's), so the keys match the model's own `state_dict`.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stl_bench import __version__
from stl_bench.errors import StlBenchError
from stl_bench.io import save_torch
from stl_bench.train.config import TrainConfig

if TYPE_CHECKING:
    from stl_bench.train.setup import Run

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


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


def checkpoint_dict(run: "Run", epoch: int) -> dict[str, Any]:
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
        "rng": rng_state(),
        "config": run.cfg.to_dict(),
        "stl_bench_version": __version__,
    }


def save_checkpoint(run: "Run", epoch: int, path: Path | None = None) -> None:
    """Write `last.pt` (or `path`) whole or not at all; only rank 0 writes."""
    if run.dist.is_main:
        save_torch(checkpoint_dict(run, epoch), path or run.out / LAST)


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
    """Continue `run` from a checkpoint: weights, EMA, optimizer, scaler, position and RNGs."""
    ckpt = load_resume(path, run.cfg, len(run.classes), run.classes)
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None:  # a run that kept no EMA before starts one from its current weights
        run.ema.module.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    if run.dist.is_main and ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    else:
        # other ranks' streams were never saved: a fresh seed per rank and position
        torch.manual_seed(run.cfg.runtime.seed + run.dist.rank + 1000 * run.step)
    run.scheduler.step_update(run.step)
    log.info("resumed %s at epoch %d, step %d", path, run.start_epoch, run.step)
