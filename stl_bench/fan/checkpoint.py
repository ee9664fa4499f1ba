"""The one checkpoint loader: official FAN/STL files, our training checkpoints, safetensors.

Every command that reads weights comes through here, so every command accepts the same
files and fails the same clear way. Nothing is unpickled beyond plain containers and
tensors (`torch.load(weights_only=True)`); the official files also pickle the training
`argparse.Namespace`, which is allowed by name and nothing else is.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

# Keys under which state dicts are found, in order of preference.
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
_MODEL_KEYS = ("state_dict", "model", "module", "net")
# Classes the official timm-0.5.4 checkpoints pickle besides tensors and containers.
_ALLOWED_GLOBALS = [argparse.Namespace]


@dataclass
class CheckpointInfo:
    """Where weights came from: recorded in leaderboard rows and export metadata."""

    path: Path
    format: str  # "stl-bench", "official", "state_dict" or "safetensors"
    weights: str  # "ema" or "model"
    arch: str | None = None
    num_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    epoch: int | None = None
    has_ema: bool = False
    input_hw: tuple[int, int] | None = None  # the size it was trained/fine-tuned at, where the file says


    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    """The file's SHA-256 (cached per path, size and mtime: big files are hashed once)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load error (its first lines are boilerplate)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported global" in ln or "Unpickler error" in ln:
            return ln[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc) and "GLOBAL" not in str(exc):
            raise StlBenchError(
                f"{path} is not a readable PyTorch checkpoint ({_reason(exc)}); "
                "it may be truncated (re-download or re-copy it) or not a checkpoint at all"
            ) from None
        raise StlBenchError(
            f"{path} holds pickled objects that could run code ({_reason(exc)}); "
            "it was not loaded. Re-save only its state_dict (or convert it to safetensors) from a trusted environment"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError) as exc:
        raise StlBenchError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {_reason(exc)}); "
            "it may be truncated (re-download or re-copy it) or not a checkpoint at all"
        ) from None


def _load_file(path: Path) -> Any:
    if not path.exists():
        raise StlBenchError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise StlBenchError(f"checkpoint {path} is a folder; pass the checkpoint file inside it (e.g. last.pth)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise StlBenchError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from None
    return _torch_load(path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP and torch.compile wrap the model; their state dicts prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: Path | str, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The model weights of a checkpoint file and what is known about them.

    `use_ema=True` picks the EMA weights (official `state_dict_ema`, our `model_ema`)
    and fails clearly if the file has none.
    """
    path = Path(path)
    obj = _load_file(path)
    if path.suffix == ".safetensors":
        if use_ema:
            raise StlBenchError(f"{path} is a safetensors file of one set of weights; it has no EMA weights")
        return _strip_prefixes(obj), CheckpointInfo(path, "safetensors", "model")
    if _is_state_dict(obj):
        if use_ema:
            raise StlBenchError(f"{path} is a bare state_dict; it has no EMA weights (drop --ema)")
        return _strip_prefixes(obj), CheckpointInfo(path, "state_dict", "model")
    if not isinstance(obj, dict):
        raise StlBenchError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state_dict")

    ema_key = next((k for k in _EMA_KEYS if _is_state_dict(obj.get(k))), None)
    model_key = next((k for k in _MODEL_KEYS if _is_state_dict(obj.get(k))), None)
    if use_ema and ema_key is None:
        raise StlBenchError(
            f"{path} has no EMA weights (looked for {', '.join(_EMA_KEYS)}; found keys: {', '.join(sorted(obj)[:12])}); "
            "drop --ema to use the model weights"
        )
    key = ema_key if use_ema else model_key
    if key is None:
        raise StlBenchError(
            f"{path} has no model weights (looked for {', '.join(_MODEL_KEYS)}; "
            f"found keys: {', '.join(map(str, sorted(obj)[:12]))})"
        )
    fmt = "stl-bench" if "stl_bench_version" in obj else "official"
    args = obj.get("args")
    arch = obj.get("arch") or getattr(args, "model", None)
    info = CheckpointInfo(
        path=path,
        format=fmt,
        weights="ema" if use_ema else "model",
        arch=arch if isinstance(arch, str) else None,
        num_classes=obj.get("num_classes") if isinstance(obj.get("num_classes"), int) else None,
        model_kwargs=dict(obj.get("model_kwargs") or {}),
        class_names=list(obj["class_names"]) if obj.get("class_names") else None,
        epoch=obj.get("epoch") if isinstance(obj.get("epoch"), int) else None,
        has_ema=ema_key is not None,
        input_hw=_recorded_input_hw(obj.get("model_kwargs") or {}, args),
    )
    return _strip_prefixes(obj[key]), info


def _as_hw(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, int) for v in value):
        return (int(value[-2]), int(value[-1]))
    return None


def _recorded_input_hw(model_kwargs: dict[str, Any], args: Any) -> tuple[int, int] | None:
    """The input size a file says it was trained at: our `model_kwargs["img_size"]`, or the
    official training script's `args.input_size` ([C, H, W]) / `args.img_size`."""
    for value in (model_kwargs.get("img_size"), getattr(args, "input_size", None), getattr(args, "img_size", None)):
        hw = _as_hw(value)
        if hw:
            return hw
    return None


def filter_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename older official layouts for FAN models (their `filter_checkpoint`); other models' keys pass unchanged.

    Asked of the model, not imported: `fan.model` loads released weights through this module.
    """
    rename = getattr(model, "filter_checkpoint", None)
    return rename(state) if callable(rename) else state


def _describe(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_compatible(state: dict[str, torch.Tensor], model: torch.nn.Module, path: Path, model_name: str) -> None:
    """Raise one message naming the missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or shaped):
        return
    parts = [f"checkpoint {path} does not fit model {model_name}:"]
    if missing:
        parts.append(f"missing keys: {_describe(missing)};")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)};")
    if shaped:
        parts.append(f"wrongly shaped: {_describe(shaped, 4)};")
    parts.append("pass the model the checkpoint was trained as (--model) and its class count (--num-classes)")
    raise StlBenchError(" ".join(parts))


def load_checkpoint(
    model: torch.nn.Module,
    path: Path | str,
    use_ema: bool = False,
    strict: bool = True,
    model_name: str | None = None,
) -> CheckpointInfo:
    """Load a checkpoint file into `model` (strictly by default) and say what was loaded."""
    path = Path(path)
    state, info = read_checkpoint(path, use_ema=use_ema)
    state = filter_state_dict(state, model)
    name = model_name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    if strict:
        check_compatible(state, model, path, name)
    model.load_state_dict(state, strict=strict)
    log.debug("loaded %s weights from %s (%s)", info.weights, path, info.format)
    return info
