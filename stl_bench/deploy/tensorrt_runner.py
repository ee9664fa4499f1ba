"""TensorRT engines behind the `Runner` interface, on torch CUDA tensors.

`execute_async_v3` reads and writes device memory at the addresses it is given; torch
owns that memory (no pycuda), and the work is queued on torch's current stream, so the
outputs are ordered with whatever the caller does next. Everything that can be checked
without a GPU (sidecar, platform, batch against the profile) is checked before the
engine is touched.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from stl_bench.deploy.onnx_format import INPUT_NAME, LOGITS, TOKEN_LOGITS, OnnxMetadata
from stl_bench.deploy.runner import Prediction, Runner, RunnerInfo, resolve_head
from stl_bench.deploy.tensorrt import (
    EngineSidecar,
    Platform,
    check_batch,
    check_platform,
    import_tensorrt,
    read_sidecar,
)
from stl_bench.errors import StlBenchError
from stl_bench.fan.model import fuse_token_head

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "int8": torch.int8,
                 "uint8": torch.uint8}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _TORCH_DTYPES:
        raise StlBenchError(f"engine tensor dtype {name} has no torch equivalent here")
    return _TORCH_DTYPES[name]


class TensorRTRunner(Runner):
    """A deserialized engine with one execution context (one profile, dynamic batch)."""

    def __init__(self, path: Path, engine: Any, sidecar: EngineSidecar, info: RunnerInfo,
                 device: torch.device) -> None:
        self.path = path
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise StlBenchError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self.sidecar = sidecar
        self.metadata: OnnxMetadata = sidecar.onnx_metadata
        self.info = info
        self.device = device
        self._input = sidecar.tensor(INPUT_NAME)
        self._outputs = [t for t in sidecar.tensors if t.mode == "output"]

    @classmethod
    def open(cls, path: Path | str, device: str | torch.device = "cuda", head: str = "auto") -> "TensorRTRunner":
        """Open an engine built by `stl-bench export` on this machine's GPU."""
        path = Path(path)
        sidecar = read_sidecar(path)
        meta = sidecar.onnx_metadata
        resolved_head = resolve_head(head, meta.has_tokens)
        torch_device = torch.device(device)
        if torch_device.type != "cuda":
            raise StlBenchError(f"TensorRT engines run on a CUDA device, not '{device}'; use --device cuda")
        trt = import_tensorrt()
        if torch_device.index is not None:
            torch.cuda.set_device(torch_device)
        check_platform(sidecar, Platform.current(), path)
        blob = path.read_bytes()
        want = sidecar.extra.get("engine_sha256")
        if want and hashlib.sha256(blob).hexdigest() != want:
            raise StlBenchError(f"engine {path} does not match its sidecar (an interrupted rebuild?); rebuild it")
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
        if engine is None:
            raise StlBenchError(f"TensorRT {trt.__version__} could not deserialize {path}; rebuild it on this machine")
        info = RunnerInfo(
            name=meta.arch,
            backend="tensorrt",
            num_classes=meta.num_classes,
            data_config=dict(meta.data_config),
            has_tokens=meta.has_tokens,
            head=resolved_head,
            weights=meta.weights or "engine",
            class_names=meta.class_names,
            extra={"engine": str(path), "precision": meta.precision, "tensorrt": trt.__version__,
                   "profile": [sidecar.profile.min, sidecar.profile.opt, sidecar.profile.max]},
        )
        return cls(path, engine, sidecar, info, torch.device("cuda", torch.cuda.current_device()))

    def predict(self, images: torch.Tensor) -> Prediction:
        want = tuple(self._input.shape[1:])
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise StlBenchError(f"engine {self.path.name} takes [B, {', '.join(map(str, want))}] batches, "
                                f"not {list(images.shape)}")
        batch = int(images.shape[0])
        check_batch(batch, self.sidecar.profile, self.path)
        x = images.to(self.device, dtype=torch_dtype(self._input.dtype), non_blocking=True).contiguous()
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        results: dict[str, torch.Tensor] = {}
        for spec in self._outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=torch_dtype(spec.dtype), device=self.device)
            self.context.set_tensor_address(spec.name, out.data_ptr())
            results[spec.name] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.path.name} for batch {batch}")
        logits = results[LOGITS].float()
        tokens = results[TOKEN_LOGITS].float() if self.metadata.has_tokens else None
        if self.info.head == "fused" and tokens is not None:
            logits = fuse_token_head(logits, tokens)
        return Prediction(logits, tokens)
