"""ONNX Runtime behind the `Runner` interface (CPU, CUDA and TensorRT execution providers).

ONNX Runtime lists the CUDA and TensorRT providers even where they cannot run and then
silently runs everything on the CPU, which makes a "GPU" benchmark or evaluation a
CPU one without a word. The session's providers are therefore checked after creation
and a mismatch is an error that says what to install.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stl_bench.deploy.onnx_format import LOGITS, TOKEN_LOGITS, OnnxMetadata
from stl_bench.deploy.runner import Prediction, Runner, RunnerInfo, resolve_head
from stl_bench.errors import StlBenchError
from stl_bench.fan.model import fuse_token_head

log = logging.getLogger(__name__)

# device -> (provider that must be first in the session, providers to ask for)
PROVIDERS: dict[str, tuple[str, list[str]]] = {
    "cpu": ("CPUExecutionProvider", ["CPUExecutionProvider"]),
    "cuda": ("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": ("TensorrtExecutionProvider",
                 ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
}
_INSTALL_HINT = {
    "CUDAExecutionProvider": "install onnxruntime-gpu built for your CUDA (and uninstall onnxruntime: both "
                             "provide the `onnxruntime` module) on a machine with an NVIDIA GPU",
    "TensorrtExecutionProvider": "install onnxruntime-gpu and TensorRT's libraries (see benchmarks/README.md) "
                                 "on a machine with an NVIDIA GPU",
}
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}
OPT_LEVELS = ("disable", "basic", "extended", "all")


def _split_device(device: str | torch.device) -> tuple[str, int]:
    """"cpu", "cuda", "cuda:1", "tensorrt", "tensorrt:1" -> (kind, device id)."""
    text = str(device).lower()
    kind, _, index = text.partition(":")
    if kind not in PROVIDERS:
        raise StlBenchError(f"unknown ONNX Runtime device '{device}'; use cpu, cuda[:N] or tensorrt[:N]")
    return kind, int(index) if index else 0


def session_options(threads: int = 0, opt_level: str = "all", spin: bool | None = None) -> Any:
    """Session options: graph optimization level, intra-op threads (0 = ORT's default,
    one per physical core) and whether idle threads spin (`None` keeps ORT's default)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if opt_level not in levels:
        raise StlBenchError(f"unknown graph optimization level '{opt_level}'; use one of {', '.join(OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[opt_level]
    so.intra_op_num_threads = int(threads)
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # ORT's warnings about unused initializers etc. are noise here
    return so


def create_session(path: Path | str, device: str | torch.device = "cpu", threads: int = 0,
                   opt_level: str = "all", spin: bool | None = None) -> Any:
    """An `InferenceSession` on the asked provider, verified to really use it."""
    import onnxruntime as ort

    kind, index = _split_device(device)
    primary, names = PROVIDERS[kind]
    available = ort.get_available_providers()
    if primary not in available:
        raise StlBenchError(
            f"ONNX Runtime {ort.__version__} has no {primary} (available: {', '.join(available)}); "
            f"{_INSTALL_HINT.get(primary, '')}"
        )
    options: list[Any] = []
    for name in names:
        if name == "CPUExecutionProvider":
            options.append((name, {}))
        elif name == "TensorrtExecutionProvider":
            cache = str(Path(path).resolve().parent / ".ort_trt_cache")
            options.append((name, {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                   "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}))
        else:
            options.append((name, {"device_id": index}))
    try:
        session = ort.InferenceSession(str(path), session_options(threads, opt_level, spin), providers=options)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all user-facing here
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StlBenchError(f"ONNX Runtime cannot load {path}: {first}") from None
    used = session.get_providers()
    if not used or used[0] != primary:
        raise StlBenchError(
            f"ONNX Runtime fell back to {', '.join(used)} instead of {primary} for {path}; "
            f"{_INSTALL_HINT.get(primary, '')}"
        )
    log.debug("ONNX Runtime session on %s for %s", used, path)
    return session


class OnnxRunner(Runner):
    """An exported stl-bench ONNX file in ONNX Runtime.

    Inputs and outputs cross as torch tensors. On CPU they go through NumPy (zero-copy
    for contiguous float32); on a GPU provider they are bound in place with IO binding,
    so a CUDA batch never visits the host.
    """

    def __init__(self, session: Any, metadata: OnnxMetadata, info: RunnerInfo, device: torch.device) -> None:
        self.session = session
        self.metadata = metadata
        self.info = info
        self.device = device
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        self._input_type = inp.type
        self._outputs = [o.name for o in session.get_outputs()]

    @classmethod
    def open(cls, path: Path | str, device: str | torch.device = "cpu", head: str = "auto", threads: int = 0,
             opt_level: str = "all", spin: bool | None = None) -> "OnnxRunner":
        """Open an stl-bench ONNX export; `device` is cpu, cuda[:N] or tensorrt[:N]."""
        path = Path(path)
        if not path.is_file():
            raise StlBenchError(f"ONNX file {path} does not exist; check the path")
        session = create_session(path, device, threads=threads, opt_level=opt_level, spin=spin)
        meta = OnnxMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), path)
        outputs = [o.name for o in session.get_outputs()]
        if outputs[:1] != [LOGITS] or (meta.has_tokens and TOKEN_LOGITS not in outputs):
            raise StlBenchError(f"{path} has outputs {outputs}; an stl-bench export has {LOGITS} (and {TOKEN_LOGITS})")
        kind, index = _split_device(device)
        torch_device = torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)
        info = RunnerInfo(
            name=meta.arch,
            backend=f"onnxruntime-{kind}",
            num_classes=meta.num_classes,
            data_config=dict(meta.data_config),
            has_tokens=meta.has_tokens,
            head=resolve_head(head, meta.has_tokens),
            weights=meta.weights or "onnx",
            class_names=meta.class_names,
            extra={"onnx": str(path), "precision": meta.precision, "providers": session.get_providers(),
                   "checkpoint_sha256": meta.checkpoint_sha256},
        )
        return cls(session, meta, info, torch_device)

    def _run_host(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.detach().to("cpu").contiguous().numpy().astype(_NUMPY_TYPES.get(self._input_type, np.float32),
                                                                    copy=False)
        return [torch.from_numpy(o) for o in self.session.run(self._outputs, {self._input_name: x})]

    def _output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        classes = self.metadata.num_classes
        if name == TOKEN_LOGITS:
            if not self.metadata.token_grid:
                raise StlBenchError(
                    f"{self.info.extra['onnx']} has token logits but no token_grid metadata; re-export it"
                )
            gh, gw = self.metadata.token_grid
            return batch, gh * gw, classes
        return batch, classes

    def _run_bound(self, images: torch.Tensor) -> list[torch.Tensor]:
        """IO binding on the GPU: ORT reads and writes torch's CUDA memory directly."""
        x = images.to(self.device, dtype=_TORCH_TYPES.get(self._input_type, torch.float32)).contiguous()
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self._input_name, "cuda", index, _NUMPY_TYPES.get(self._input_type, np.float32),
                           tuple(x.shape), x.data_ptr())
        outputs = []
        for out in self.session.get_outputs():
            y = torch.empty(self._output_shape(out.name, x.shape[0]), device=self.device,
                            dtype=_TORCH_TYPES.get(out.type, torch.float32))
            binding.bind_output(out.name, "cuda", index, _NUMPY_TYPES.get(out.type, np.float32), tuple(y.shape),
                                y.data_ptr())
            outputs.append(y)
        torch.cuda.current_stream(self.device).synchronize()  # x must be written before ORT's stream reads it
        self.session.run_with_iobinding(binding)
        return outputs

    def predict(self, images: torch.Tensor) -> Prediction:
        want = tuple(self.info.data_config["input_size"])
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise StlBenchError(
                f"{self.metadata.arch} ONNX export takes [B, {', '.join(map(str, want))}] "
                f"batches, not {list(images.shape)}; resize with the file's preprocessing (runner.info.data_config)"
            )
        outs = self._run_bound(images) if self.device.type == "cuda" else self._run_host(images)
        logits = outs[0].float()
        tokens = outs[1].float() if self.metadata.has_tokens else None
        if self.info.head == "fused" and tokens is not None:
            logits = fuse_token_head(logits, tokens)
        return Prediction(logits, tokens)
