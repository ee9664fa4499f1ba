"""Build models by name, and from checkpoints, with user-facing errors.

timm's registry is the only registry: these helpers add the checks a command line
needs (an unknown name suggests close ones; a checkpoint names its own architecture and
class count where it can) on top of `timm.create_model`.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import timm
import torch

from stl_bench.errors import StlBenchError
from stl_bench.fan.checkpoint import CheckpointInfo, check_compatible, filter_state_dict, read_checkpoint
from stl_bench.fan.hub import resolve_source


_HEADS = ("head.", "aux_head.")
# Every FAN variant has two class-attention blocks, which is all the filter reads.
_CLS_ATTN_STANDIN = SimpleNamespace(cls_attn_blocks=[None, None])


def check_model_name(name: str) -> str:
    """Return `name` if timm knows it; otherwise raise with the closest names."""
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " `stl-bench models --all` lists the FAN names."
    raise StlBenchError(f"unknown model '{name}'.{hint}")


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """`timm.create_model` for a checked name (no download: weights come from files only)."""
    check_model_name(name)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise StlBenchError(f"model '{name}' does not accept these options: {exc}") from None


def _classes_in_state(state: dict[str, torch.Tensor]) -> int | None:
    head = state.get("head.weight")
    if head is None:
        head = state.get("head.fc.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


@lru_cache(maxsize=None)
def _layout(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a FAN variant without its class heads (built on the meta device)."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(_HEADS)}


def guess_architecture(state: dict[str, torch.Tensor]) -> str | None:
    """The FAN variant whose keys and shapes fit a state dict, whatever its class count.

    Bare state dicts record no architecture; comparing against each variant's layout
    costs no weights and names the one that fits.
    """
    from stl_bench.fan.model import FAN_MODEL_NAMES, checkpoint_filter_fn

    embed = state.get("cls_token")
    if embed is None or embed.ndim != 3:
        return None
    token_head = "aux_head.weight" in state
    for name in FAN_MODEL_NAMES:
        if name.endswith("_token") != token_head:
            continue
        layout = _layout(name)
        if layout["cls_token"] != tuple(embed.shape):
            continue
        # the filter renames only; a stand-in with the right block count is enough for it
        renamed = checkpoint_filter_fn(state, _CLS_ATTN_STANDIN)
        body = {k: tuple(v.shape) for k, v in renamed.items() if not k.startswith(_HEADS)}
        if body == layout:
            return name
    return None


def create_model_from_checkpoint(
    path: Path | str,
    model_name: str | None = None,
    use_ema: bool = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Build the model a checkpoint was trained as and load its weights strictly.

    `path` may also name a model card: its released checkpoint, from the weights cache.
    The architecture comes from `model_name`, else from the file (`arch`, which our
    checkpoints and the official timm-0.5.4 ones record), else from the FAN variant
    whose keys and shapes fit; the class count from
    `num_classes`, else the file, else the shape of its head.
    """
    path = resolve_source(path)
    state, info = read_checkpoint(path, use_ema=use_ema)
    name = model_name or info.arch or guess_architecture(state)
    if not name:
        raise StlBenchError(
            f"checkpoint {path} does not record its architecture and fits no FAN variant; pass --model NAME"
        )
    check_model_name(name)
    classes = num_classes or info.num_classes or _classes_in_state(state)
    model_kwargs = dict(info.model_kwargs)
    model_kwargs.update(kwargs)
    if classes is not None:
        model_kwargs["num_classes"] = classes
    model = create_model(name, **model_kwargs)
    state = filter_state_dict(state, model)
    check_compatible(state, model, Path(path), name)
    model.load_state_dict(state, strict=True)
    info.arch = name
    info.num_classes = classes
    return model, info


def trained_input_hw(info: CheckpointInfo) -> tuple[tuple[int, int] | None, str]:
    """(H, W) a checkpoint should be evaluated at, and where that came from.

    FAN's weights do not depend on the input size (Fourier positional encoding,
    convolutional stems), so a 384-px fine-tune loads into the 224-px architecture
    without complaint, and would silently be scored at 224. The file's own record wins;
    an official file that records nothing is matched to its model card by name.
    """
    if info.input_hw:
        return info.input_hw, "the checkpoint"
    from stl_bench.fan.cards import card_for_file

    card = card_for_file(info.path)
    if card and card["arch"] == info.arch:
        return (int(card["input_size"][-2]), int(card["input_size"][-1])), f"model card {card['name']}"
    return None, ""
