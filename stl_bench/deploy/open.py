"""`open_runner`: whatever a user points at, as a `Runner`.

The one place that knows every backend: a checkpoint becomes a `TorchRunner`, an ONNX
file an `OnnxRunner`, a TensorRT engine a `TensorRTRunner`, a `stl-bench serve` URL an
`HttpRunner`. The base types stay in `stl_bench.deploy.runner`, so the backends import
them without importing each other; the backends are imported here only when asked for,
so opening a checkpoint never loads ONNX Runtime or TensorRT.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from stl_bench.deploy.runner import ENGINE_SUFFIXES, Runner, RunnerInfo, TorchRunner, is_endpoint_url, resolve_head
from stl_bench.errors import StlBenchError
from stl_bench.fan.hub import resolve_source

log = logging.getLogger(__name__)


def open_runner(
    source: str | None = None,
    *,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    head: str = "auto",
    use_ema: bool = False,
    num_classes: int | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    img_size: int | None = None,
) -> Runner:
    """Open whatever a user points at as a `Runner`.

    `source` is a checkpoint (`.pth`, `.pth.tar`, `.pt`, `.safetensors`), the name of a
    model card (its released checkpoint, from the weights cache: `fan/hub.py`), an ONNX
    file, a TensorRT engine or the URL of a `stl-bench serve` endpoint; with no source,
    `model_name` builds a randomly initialised model (for benchmarks and smoke tests; a
    warning says so). A checkpoint's input size is `img_size` if given, else what the
    file or its model card records (a 384-px fine-tune is scored at 384), else the
    architecture's default. Exported files carry theirs and ignore `img_size`.
    """
    if source is not None:
        if is_endpoint_url(source):
            from stl_bench.serve.http_runner import HttpRunner

            return HttpRunner.open(str(source), head=head)
        path = Path(resolve_source(source))
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            from stl_bench.deploy.onnx_runner import OnnxRunner

            return OnnxRunner.open(path, device=device, head=head)
        if suffix in ENGINE_SUFFIXES:
            from stl_bench.deploy.tensorrt_runner import TensorRTRunner

            return TensorRTRunner.open(path, device=device, head=head)
        model, info = _checkpoint_model(path, model_name, use_ema, num_classes, img_size)
    else:
        model, info = _random_model(model_name, num_classes)
    info.head = resolve_head(head, info.has_tokens)
    return TorchRunner(model, info, device=device, amp_dtype=amp_dtype, channels_last=channels_last)


def _checkpoint_model(path: Path, model_name: str | None, use_ema: bool, num_classes: int | None,
                      img_size: int | None) -> tuple[torch.nn.Module, RunnerInfo]:
    """A checkpoint's model, at the input size it was trained at unless `img_size` says otherwise."""
    from stl_bench.fan.factory import create_model_from_checkpoint, trained_input_hw

    model, ckpt = create_model_from_checkpoint(path, model_name, use_ema=use_ema, num_classes=num_classes)
    hw, why = ((img_size, img_size), "--img-size") if img_size else trained_input_hw(ckpt)
    info = _torch_info(model, ckpt.arch, hw, why)
    info.weights, info.class_names = f"{ckpt.weights}:{path.name}", ckpt.class_names
    info.extra = {"checkpoint": str(path), "checkpoint_format": ckpt.format}
    return model, info


def _random_model(model_name: str | None, num_classes: int | None) -> tuple[torch.nn.Module, RunnerInfo]:
    from stl_bench.fan.factory import create_model

    if not model_name:
        raise StlBenchError("nothing to run: pass a checkpoint, an ONNX file or an engine, or --model NAME")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    model = create_model(model_name, **kwargs)
    log.warning("%s has random weights: no checkpoint was given", model_name)
    info = _torch_info(model, model_name, None, "")
    info.weights = "random-init"
    return model, info


def _torch_info(model: torch.nn.Module, name: str, hw: Any, why: str) -> RunnerInfo:
    """The runner info of a PyTorch model; `hw` (H, W), when given, overrides its default input size."""
    import timm.data

    data_config = timm.data.resolve_data_config({}, model=model)
    if hw and tuple(hw) != tuple(data_config["input_size"][1:]):  # trained at another size than the default
        data_config["input_size"] = (data_config["input_size"][0], *hw)
        log.info("%s: input %dx%d (from %s)", name, hw[0], hw[1], why)
    return RunnerInfo(
        name=name,
        backend="torch",
        num_classes=int(getattr(model, "num_classes", 0)),
        data_config=data_config,
        has_tokens=bool(getattr(model, "has_token_head", False)),
    )
