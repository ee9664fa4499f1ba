"""One inference interface shared by PyTorch, ONNX Runtime, TensorRT and a served endpoint.

The evaluation harness, the benchmarks and the app only ever see a `Runner`: they hand
it a normalised NCHW float batch and get class logits, and token logits where the model
has them. This module holds the base types only; each backend module adds a subclass,
and `stl_bench.deploy.open.open_runner` picks one from a path or URL.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from stl_bench.errors import StlBenchError
from stl_bench.fan.model import fuse_token_head


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
        raise StlBenchError(f"unknown head '{head}'; choose one of {', '.join(HEADS)}")
    if head == "auto":
        return "fused" if has_tokens else "cls"
    if head == "fused" and not has_tokens:
        raise StlBenchError("the fused head needs a token-label model (a `*_token` variant); use --head cls")
    return head
