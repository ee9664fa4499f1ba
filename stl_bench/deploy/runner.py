"""One inference interface shared by PyTorch, ONNX Runtime and TensorRT.

The evaluation harness, the benchmarks and the app only ever see a `Runner`: they hand
it a normalised NCHW float batch and get class logits, and token logits where the model
has them. Each backend module adds a subclass; `open_runner` picks one from a path.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from stl_bench.fan.model import fuse_token_head  # noqa: F401  (re-exported for the runners)


@dataclass
class Prediction:
    """What a runner returns for one batch.

    `logits` are the class logits [B, C] of the head the runner was opened with (plain
    class head or the fused STL head). `token_logits` are per-patch logits [B, N, C]
    for token-label models, else None.
    """

    logits: torch.Tensor
    token_logits: torch.Tensor | None = None


@dataclass
class RunnerInfo:
    """What a caller needs to feed a runner and to label its results.

    `data_config` holds timm's keys: input_size (C, H, W), mean, std, interpolation,
    crop_pct. `head` is "cls" or "fused" (class logits + 0.5 x per-class max over tokens).
    """

    name: str
    backend: str
    num_classes: int
    data_config: dict[str, Any]
    has_tokens: bool = False
    head: str = "cls"
    weights: str = ""
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(ABC):
    """Base class: `predict` maps a normalised float batch to a `Prediction`."""

    info: RunnerInfo
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """Class (and token) logits for a normalised NCHW float batch."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images).logits


class TorchRunner(Runner):
    """Runs an `nn.Module` (any timm model, or a FAN/STL model) in eval mode.

    For FAN token models the module's `forward_tokens` gives both outputs; the fused
    head is computed here so that every backend scores the same quantity.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        info: RunnerInfo,
        device: str | torch.device = "cpu",
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.info = info

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if self.info.has_tokens:
                cls_logits, token_logits = self.model.forward_tokens(x)
                logits = fuse_token_head(cls_logits, token_logits) if self.info.head == "fused" else cls_logits
                return Prediction(logits.float(), token_logits.float())
            return Prediction(self.model(x).float())


HEADS = ("auto", "cls", "fused")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def is_endpoint_url(source: object) -> bool:
    """Whether `source` names a `stl-bench serve` endpoint rather than a file."""
    return bool(source) and str(source).lower().startswith(("http://", "https://"))


def resolve_head(head: str, has_tokens: bool) -> str:
    """"auto" means the fused head for token models (how STL's numbers were measured)."""
    if head not in HEADS:
        from stl_bench.errors import StlBenchError

        raise StlBenchError(f"unknown head '{head}'; choose one of {', '.join(HEADS)}")
    if head == "auto":
        return "fused" if has_tokens else "cls"
    if head == "fused" and not has_tokens:
        from stl_bench.errors import StlBenchError

        raise StlBenchError("the fused head needs a token-label model (a `*_token` variant); use --head cls")
    return head


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

    `source` is a checkpoint (`.pth`, `.pth.tar`, `.pt`, `.safetensors`), an ONNX file,
    a TensorRT engine or the URL of a `stl-bench serve` endpoint; with no source, `model_name` builds a randomly initialised
    model (for benchmarks and smoke tests; a warning says so). A checkpoint's input size
    is `img_size` if given, else what the file or its model card records (a 384-px
    fine-tune is scored at 384), else the architecture's default. Exported files carry
    theirs and ignore `img_size`.
    """
    import logging
    from pathlib import Path

    import timm.data

    from stl_bench.errors import StlBenchError
    from stl_bench.fan.factory import create_model, create_model_from_checkpoint, trained_input_hw

    if source is not None:
        if is_endpoint_url(source):
            from stl_bench.serve.http_runner import HttpRunner

            return HttpRunner.open(str(source), head=head)
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            from stl_bench.deploy.onnx_runner import OnnxRunner

            return OnnxRunner.open(path, device=device, head=head)
        if suffix in ENGINE_SUFFIXES:
            from stl_bench.deploy.tensorrt_runner import TensorRTRunner

            return TensorRTRunner.open(path, device=device, head=head)
        model, ckpt = create_model_from_checkpoint(path, model_name, use_ema=use_ema, num_classes=num_classes)
        name, weights, class_names = ckpt.arch, f"{ckpt.weights}:{path.name}", ckpt.class_names
        extra = {"checkpoint": str(path), "checkpoint_format": ckpt.format}
    else:
        if not model_name:
            raise StlBenchError("nothing to run: pass a checkpoint, an ONNX file or an engine, or --model NAME")
        kwargs = {"num_classes": num_classes} if num_classes else {}
        model = create_model(model_name, **kwargs)
        logging.getLogger(__name__).warning("%s has random weights: no checkpoint was given", model_name)
        name, weights, class_names, extra = model_name, "random-init", None, {}
    has_tokens = bool(getattr(model, "has_token_head", False))
    data_config = timm.data.resolve_data_config({}, model=model)
    if img_size:
        hw, why = (img_size, img_size), "--img-size"
    elif source is not None:
        hw, why = trained_input_hw(ckpt)
    else:
        hw, why = None, ""
    if hw and tuple(hw) != tuple(data_config["input_size"][1:]):  # trained at another size than the default
        data_config["input_size"] = (data_config["input_size"][0], *hw)
        logging.getLogger(__name__).info("%s: input %dx%d (from %s)", name, hw[0], hw[1], why)
    info = RunnerInfo(
        name=name,
        backend="torch",
        num_classes=int(getattr(model, "num_classes", 0)),
        data_config=data_config,
        has_tokens=has_tokens,
        head=resolve_head(head, has_tokens),
        weights=weights,
        class_names=class_names,
        extra=extra,
    )
    return TorchRunner(model, info, device=device, amp_dtype=amp_dtype, channels_last=channels_last)
