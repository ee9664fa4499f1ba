"""TensorRT engines from stl-bench ONNX files, for TensorRT 10 and 11 alike.

Networks are built strongly typed: TensorRT 11 removed the FP16/BF16/INT8 builder
flags, so the precision of every layer comes from the ONNX graph (export an FP16 graph
with `--fp16` for a half-precision engine); TensorRT 10 accepts the same flag. An
engine only runs with the TensorRT version and the GPU architecture it was built for,
so a JSON sidecar (`<engine>.json`) records both, together with the input/output specs,
the optimization profile and the ONNX file's stl-bench metadata; the runner checks it
before deserializing anything. Engines, sidecars and timing caches are written to a
temporary name and renamed.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stl_bench.deploy.onnx_format import INPUT_NAME, OnnxMetadata, read_metadata
from stl_bench.errors import StlBenchError
from stl_bench.io import write_bytes, write_text

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "stl-bench-engine"
SIDECAR_VERSION = 1
_INSTALL = "install TensorRT 10 or 11 for your CUDA (see benchmarks/README.md: NVIDIA's pip index or an NGC container)"


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch sizes: the engine accepts min..max, tuned for opt."""

    min: int = 1
    opt: int = 8
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise StlBenchError(
                f"batch profile must satisfy 1 <= min <= opt <= max; got min={self.min} opt={self.opt} max={self.max}"
            )


@dataclass(frozen=True)
class Platform:
    """What an engine is tied to: the TensorRT version and the GPU (architecture and name)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0" for an H100

    @classmethod
    def current(cls) -> "Platform":
        trt = import_tensorrt()
        import torch

        major, minor = torch.cuda.get_device_capability()
        return cls(trt.__version__, torch.cuda.get_device_name(), f"{major}.{minor}")


@dataclass
class TensorSpec:
    name: str
    mode: str  # "input" or "output"
    dtype: str  # torch dtype name: float32, float16, bfloat16, int32, int64, bool
    shape: list[int]  # -1 for the dynamic batch


@dataclass
class EngineSidecar:
    """The JSON kept beside an engine: platform, profile, IO specs, model metadata."""

    platform: Platform
    profile: BatchProfile
    tensors: list[TensorSpec]
    metadata: dict[str, str]  # the ONNX file's stl-bench metadata_props
    onnx_sha256: str = ""
    workspace_bytes: int = 0
    built_at: str = ""
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path) -> "EngineSidecar":
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError(f"it holds a JSON {type(raw).__name__}, not an object")
            if raw.get("format") != SIDECAR_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}")
            return cls(
                platform=Platform(**raw["platform"]),
                profile=BatchProfile(**raw["profile"]),
                tensors=[TensorSpec(**t) for t in raw["tensors"]],
                metadata=dict(raw["metadata"]),
                onnx_sha256=raw.get("onnx_sha256", ""),
                workspace_bytes=int(raw.get("workspace_bytes", 0)),
                built_at=raw.get("built_at", ""),
                format_version=int(raw.get("format_version", SIDECAR_VERSION)),
                extra=dict(raw.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StlBenchError(f"{source} is not an stl-bench engine sidecar ({exc}); rebuild the engine") from None

    @property
    def onnx_metadata(self) -> OnnxMetadata:
        return OnnxMetadata.from_props(self.metadata, "the engine sidecar")

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise KeyError(name)


def sidecar_path(engine: Path | str) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path | str) -> EngineSidecar:
    """The sidecar of an engine; a missing one is a clear error (the engine alone is opaque)."""
    engine = Path(engine)
    if not engine.is_file():
        raise StlBenchError(f"engine {engine} does not exist; check the path or build it with `stl-bench export`")
    path = sidecar_path(engine)
    if not path.is_file():
        raise StlBenchError(
            f"engine {engine} has no sidecar {path.name} (platform, IO specs, preprocessing); "
            "rebuild it with `stl-bench export MODEL.onnx --output ENGINE`"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StlBenchError(f"{path} is not a readable engine sidecar ({type(exc).__name__}); rebuild the engine") \
            from None
    return EngineSidecar.from_json(text, path)


def check_platform(sidecar: EngineSidecar, here: Platform, engine: Path | str) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture.

    TensorRT deserializes only engines of its own version, and kernels are compiled for
    one compute capability; a different GPU name of the same architecture is allowed
    (tactics may be slower) and logged.
    """
    built = sidecar.platform
    problems = []
    if built.tensorrt_version != here.tensorrt_version:
        problems.append(f"TensorRT {built.tensorrt_version} (this machine has {here.tensorrt_version})")
    if built.compute_capability != here.compute_capability:
        problems.append(
            f"{built.gpu_name} (sm {built.compute_capability}; this machine has {here.gpu_name}, "
            f"sm {here.compute_capability})"
        )
    if problems:
        raise StlBenchError(
            f"engine {engine} was built for {' and '.join(problems)}; engines are tied to both, rebuild it here "
            f"with `stl-bench export MODEL.onnx --output {Path(engine).name}`"
        )
    if built.gpu_name != here.gpu_name:
        log.warning("engine %s was tuned on %s and runs on %s (same architecture)",
                    engine, built.gpu_name, here.gpu_name)


def check_batch(batch: int, profile: BatchProfile, engine: Path | str) -> None:
    """A batch outside the optimization profile is an error that names the profile."""
    if not profile.min <= batch <= profile.max:
        raise StlBenchError(
            f"batch {batch} is outside engine {Path(engine).name}'s profile ({profile.min}..{profile.max}); "
            f"use --batch-size <= {profile.max} or rebuild with --max-batch {batch}"
        )


# --------------------------------------------------------------------------- environment
def tensorrt_unavailable_reason() -> str | None:
    """None where engines can be built and run here, else one line saying why not."""
    reasons = []
    try:
        import torch

        if not torch.cuda.is_available():
            reasons.append("no NVIDIA GPU is visible to PyTorch (torch.cuda.is_available() is False)")
    except ImportError:
        reasons.append("PyTorch is not installed")
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a stub package without libnvinfer
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        reasons.append(f"TensorRT's Python package cannot be imported ({detail}); {_INSTALL}")
    return "; ".join(reasons) or None


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line StlBenchError saying what is missing."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise StlBenchError(f"TensorRT engines need an NVIDIA GPU and TensorRT: {reason}")
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise StlBenchError(
            f"TensorRT {trt.__version__} is too old: stl-bench builds with TensorRT 10 or 11; {_INSTALL}"
        )
    return trt


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
           "BOOL": "bool", "INT8": "int8", "UINT8": "uint8", "FP8": "float8_e4m3fn"}


def _dtype_name(trt_dtype: Any) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    return _DTYPES.get(name, name.lower())


# --------------------------------------------------------------------------- build
ATTENTION_MIN_TENSORRT = (10, 14)  # the first ONNX parser that reads the `Attention` op


def check_parser_supports(onnx_ops: set[str], tensorrt_version: str, onnx_path: Path | str) -> None:
    """Refuse, before a long parse, a graph with an op this TensorRT's parser lacks.

    stl-bench's default export (opset 23) writes token mixing as one ONNX `Attention`
    node; older TensorRT needs the decomposed graph of `--opset 20`.
    """
    version = tuple(int(p) for p in tensorrt_version.split(".")[:2] if p.isdigit())
    if "Attention" in onnx_ops and version < ATTENTION_MIN_TENSORRT:
        need = ".".join(map(str, ATTENTION_MIN_TENSORRT))
        raise StlBenchError(
            f"{onnx_path} uses the ONNX Attention op, which TensorRT reads from {need} on (this is "
            f"{tensorrt_version}); re-export it with `stl-bench export ... --opset 20`, or upgrade TensorRT"
        )


def _graph_ops(onnx_path: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {n.op_type for n in graph.node if n.domain in ("", "ai.onnx")}


def build_engine(
    onnx_path: Path | str,
    engine_path: Path | str,
    *,
    profile: BatchProfile = BatchProfile(),
    workspace_gib: float = 4.0,
    timing_cache: Path | str | None = None,
    optimization_level: int | None = None,
) -> EngineSidecar:
    """Parse an stl-bench ONNX file, build a strongly typed engine, write it and its sidecar.

    The timing cache (a file reused across builds, created if missing) saves most of the
    tactic search when the same layers are built again; the workspace limit caps the
    scratch memory tactics may ask for.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    meta = read_metadata(onnx_path)  # refuses foreign ONNX files before any GPU work
    trt = import_tensorrt()
    check_parser_supports(_graph_ops(onnx_path), trt.__version__, onnx_path)
    platform = Platform.current()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_network(trt, builder, logger, onnx_path)  # the parser owns the network's weights
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    channels, height, width = (int(v) for v in meta.data_config["input_size"])
    shapes = [(b, channels, height, width) for b in (profile.min, profile.opt, profile.max)]
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)

    log.info("building a TensorRT %s engine for %s on %s (batch %d..%d, opt %d); this takes minutes",
             trt.__version__, meta.arch, platform.gpu_name, profile.min, profile.max, profile.opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StlBenchError(
            f"TensorRT could not build an engine from {onnx_path} (see its log above); "
            f"try a larger --workspace-gib than {workspace_gib} or a smaller --max-batch than {profile.max}"
        )
    blob = bytes(serialized)
    sidecar = EngineSidecar(
        platform=platform, profile=profile, tensors=_tensor_specs(network), metadata=meta.to_props(),
        onnx_sha256=_file_sha256(onnx_path), workspace_bytes=int(workspace_gib * (1 << 30)),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"onnx": onnx_path.name, "precision": meta.precision,
               "engine_sha256": hashlib.sha256(blob).hexdigest()},
    )
    # Engine first, sidecar last: the sidecar's hash names the engine it describes, so
    # an engine whose sidecar write was cut off is recognised as undescribed on open.
    write_bytes(engine_path, blob)
    write_text(sidecar_path(engine_path), sidecar.to_json())
    if cache_path is not None:
        write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    log.info("wrote %s and %s", engine_path, sidecar_path(engine_path).name)
    return sidecar


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """A strongly typed network parsed from `onnx_path` (every layer's precision from the
    graph), and its parser, which must outlive the build: it holds the weights."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise StlBenchError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors[:500]}")
    return network, parser


def _tensor_specs(network: Any) -> list[TensorSpec]:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return ([TensorSpec(t.name, "input", _dtype_name(t.dtype), [int(d) for d in t.shape]) for t in inputs]
            + [TensorSpec(t.name, "output", _dtype_name(t.dtype), [int(d) for d in t.shape]) for t in outputs])


def _file_sha256(path: Path) -> str:
    from stl_bench.fan.checkpoint import file_sha256

    return file_sha256(path)
