"""Which configuration `stl-bench train --resume` continues: the run's own, from its files.

A run folder holds config.json from its start and last.pt from its first checkpoint on,
so `--output X --resume` alone continues a run: from last.pt when there is one, else
from the start with config.json's settings (a run killed before its first checkpoint
computes the same steps again). Flags given together with --resume must agree with the
stored configuration, except those in `MAY_CHANGE`; anything else would silently make
the continued run a different one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stl_bench.errors import StlBenchError
from stl_bench.train.config import TrainConfig, resolve_config
from stl_bench.train.state import CONFIG, LAST

log = logging.getLogger(__name__)

# flag -> why it may differ from the stored run
MAY_CHANGE: dict[str, str] = {
    "output": "the run folder may have moved",
    "data": "the data folder may have moved (its class list is checked)",
    "epochs": "extends (or shortens) the run: the learning-rate schedule follows the new length from the "
              "resumed step on, so the result is no longer the original run's",
    "workers": "data workers never change what is computed",
    "threads": "speed only (on CPU, float sums may differ in the last bits)",
    "eval_batch_size": "evaluation only",
    "checkpoint_every": "when last.pt is written, not what is computed",
    "checkpoint_minutes": "when last.pt is written, not what is computed",
    "log_every": "logging only",
    "progress": "display only",
}


def resume_config(resume: str, given: dict[str, Any], preset: str | None) -> tuple[TrainConfig, Path | None]:
    """The config to run and the checkpoint to continue from (None: start the run from step 0).

    `resume` is a checkpoint path or "auto" (`--resume` without a value: `<output>/last.pt`,
    else `<output>/config.json`, else a new run from `preset` and `given`).
    """
    if resume == "auto":
        if "output" not in given:
            raise StlBenchError("--resume without a file needs --output (the run folder holding last.pt)")
        out = Path(given["output"])
        ckpt: Path | None = out / LAST
        if ckpt.is_file():
            source, stored = ckpt, checkpoint_config(ckpt)
        elif (out / CONFIG).is_file():
            log.info("no %s yet: starting the run in %s again from its %s", LAST, out, CONFIG)
            source, stored, ckpt = out / CONFIG, _read_config_json(out / CONFIG), None
        else:
            log.info("no run in %s yet: starting a new one", out)
            return resolve_config(preset, **given), None
    else:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise StlBenchError(f"resume checkpoint {ckpt} does not exist; check the path or drop --resume")
        source, stored = ckpt, checkpoint_config(ckpt)
    if preset:
        log.info("--preset is ignored when resuming: the run keeps its saved configuration (%s)", source)
    return merge_given(stored, given, source), ckpt


def merge_given(stored: dict[str, Any], given: dict[str, Any], source: Path) -> TrainConfig:
    """The stored config with the given flags that may change; any other flag must repeat the stored value."""
    saved = TrainConfig.from_dict(stored).to_dict()  # defaults filled in, tuples as lists
    merged = TrainConfig.from_dict({**saved, **{k: _plain(v) for k, v in given.items()}})
    wanted = merged.to_dict()  # given values as the config keeps them ('none' -> None, tuples as lists)
    clashes = [f"--{k.replace('_', '-')} {_shown(given[k])} (the run: {_shown(saved.get(k))})"
               for k in given if k not in MAY_CHANGE and wanted[k] != saved.get(k)]
    if clashes:
        allowed = ", ".join("--" + k.replace("_", "-") for k in MAY_CHANGE)
        raise StlBenchError(
            f"{'; '.join(clashes)} contradict{'s' if len(clashes) == 1 else ''} the run stored in {source}: drop "
            f"{'it' if len(clashes) == 1 else 'them'} to continue that run, or start a new one with another --output "
            f"(only {allowed} may change on --resume)"
        )
    return merged


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The flat config saved in a training checkpoint."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StlBenchError(
            f"cannot read resume checkpoint {path} ({type(exc).__name__}); it is damaged or not ours") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise StlBenchError(f"{path} is not an stl-bench training checkpoint, so a run cannot resume from it")
    return ckpt["config"]


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StlBenchError(f"cannot read {path} ({exc}); pass the run's flags again without --resume") from None
    if not isinstance(values, dict):
        raise StlBenchError(f"{path} is not a training config; pass the run's flags again without --resume")
    return values


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else repr(value) if value == "" else str(value)
