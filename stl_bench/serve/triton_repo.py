"""A Triton Inference Server model repository for an exported ONNX file or TensorRT engine.

Why: NVIDIA Triton is the standard inference server for ONNX and TensorRT models. It
batches concurrent requests on the server (dynamic batching), runs several model
instances per device, and speaks HTTP/gRPC with ready-made clients, none of which an
exported file gives by itself. Triton serves a *model repository*, a folder laid out as

    REPO/
      NAME/
        config.pbtxt          platform, batch size, inputs/outputs, batching, instances
        labels.txt            class names, one per line (when the export records them)
        1/                    the version
          model.onnx          (or model.plan for a TensorRT engine, plus model.plan.json)

and `tritonserver --model-repository REPO` serves every model in it. The configuration is
read from the exported graph itself (names, data types and shapes of its inputs and
outputs; for an engine, from the sidecar the engine build wrote), never typed by hand,
and `validate_triton_repo` cross-checks it against the graph again. The stl-bench
metadata a client needs (preprocessing, head, class count) travels in the config's
`parameters`, so a client asks the server (`get_model_config`) instead of carrying files.

Not run on this machine: Triton ships as NVIDIA's docker container
(`nvcr.io/nvidia/tritonserver`), which needs docker and, for GPU instances or engines,
the NVIDIA container toolkit; the repository is checked by parsing it with Triton's own
protobuf schema (`tritonclient`'s `model_config_pb2`).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from stl_bench.deploy.onnx_format import INPUT_NAME, LOGITS, TOKEN_LOGITS, OnnxMetadata
from stl_bench.deploy.runner import ENGINE_SUFFIXES
from stl_bench.errors import StlBenchError
from stl_bench.io import copy_file, write_bytes

log = logging.getLogger(__name__)

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", TENSORRT_PLATFORM: "model.plan"}
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
METADATA_KEY = "stl_bench_metadata"
KINDS = ("auto", "cpu", "gpu")
# The weight of the token logits in the fused STL head, as in
# `stl_bench.fan.model.fuse_token_head` (clients fuse: logits + w * token_logits.max(1)).
FUSED_TOKEN_WEIGHT = 0.5
_INSTALL = 'pip install "stl-bench[serve]" (or pip install "tritonclient[grpc]")'
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# ONNX element types (onnx.TensorProto names) and the sidecar's torch dtype names -> Triton.
_ONNX_TYPES = {
    "FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "DOUBLE": "TYPE_FP64",
    "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
    "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING",
}
_TORCH_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
    "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorIO:
    """One model input or output as Triton sees it: dims without the batch dimension."""

    name: str
    data_type: str  # a Triton DataType name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class _Source:
    """What a repository is written from: the file, its platform, its IO and its metadata."""

    path: Path
    platform: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    metadata: OnnxMetadata
    companions: tuple[tuple[Path, str], ...]  # (file, name in the version folder): weights, sidecar
    batch_limit: int | None = None  # an engine's largest profile batch; ONNX graphs have none


# --------------------------------------------------------------------------- protobuf
def import_model_config() -> tuple[Any, Any]:
    """Triton's config schema (`model_config_pb2`) and protobuf's `text_format`, imported only
    when a repository is written or checked, so stl-bench runs without tritonclient."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise StlBenchError(
            f"a Triton model repository needs tritonclient's config schema ({exc}); {_INSTALL}"
        ) from None
    return model_config_pb2, text_format


# --------------------------------------------------------------------------- reading the model
def _model_platform(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX_PLATFORM
    if suffix in ENGINE_SUFFIXES:
        return TENSORRT_PLATFORM
    raise StlBenchError(
        f"{path} is neither an ONNX file nor a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}); "
        "export one with `stl-bench export`"
    )


def _drop_batch(name: str, shape: Sequence[int | str | None], path: Path) -> tuple[int, ...]:
    """The dims after the batch dim; the batch must be dynamic and everything else fixed,
    because the config's dims leave the batch out (max_batch_size > 0) and list the rest."""
    if not shape or (isinstance(shape[0], int) and shape[0] > 0):
        raise StlBenchError(
            f"{path}: {name} has shape {list(shape)} without a dynamic batch dimension; "
            "re-export it with `stl-bench export` (its batch dimension is dynamic)"
        )
    rest = list(shape[1:])
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise StlBenchError(
            f"{path}: {name} has symbolic dims besides the batch ({list(shape)}); Triton needs them fixed: "
            "re-export at one input size with `stl-bench export --img-size N`"
        )
    return tuple(int(d) for d in rest)


def _load_graph(path: Path) -> Any:
    """The ONNX ModelProto without its weights: graph IO, metadata and weight file names only."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ... depending on the damage
        raise StlBenchError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None


def _graph_tensors(proto: Any, path: Path) -> tuple[tuple[TensorIO, ...], tuple[TensorIO, ...]]:
    import onnx

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}

    def convert(value: Any) -> TensorIO:
        tensor_type = value.type.tensor_type
        type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        if type_name not in _ONNX_TYPES:
            raise StlBenchError(f"{path}: {value.name} has ONNX type {type_name}, which Triton cannot serve")
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        return TensorIO(value.name, _ONNX_TYPES[type_name], _drop_batch(value.name, shape, path))

    inputs = tuple(convert(v) for v in graph.input if v.name not in initializers)
    return inputs, tuple(convert(v) for v in graph.output)


def onnx_tensors(path: Path) -> tuple[tuple[TensorIO, ...], tuple[TensorIO, ...]]:
    """The graph's inputs and outputs (weights are not loaded): the one source of the config's IO."""
    return _graph_tensors(_load_graph(path), path)


def _external_data(proto: Any, path: Path) -> tuple[tuple[Path, str], ...]:
    """Weight side files the graph points at (graphs over 2 GiB): copied beside model.onnx
    under the same names, since the graph refers to them by relative path."""
    names = {entry.value for t in proto.graph.initializer for entry in t.external_data if entry.key == "location"}
    files = []
    for name in sorted(names):
        if Path(name).name != name or not (path.parent / name).is_file():
            raise StlBenchError(
                f"{path} keeps weights in '{name}', which is not a file beside it; re-export it with `stl-bench export`"
            )
        files.append((path.parent / name, name))
    return tuple(files)


def _engine_source(path: Path) -> _Source:
    """An engine's IO from its sidecar (the engine itself is opaque without TensorRT)."""
    from stl_bench.deploy.tensorrt import read_sidecar, sidecar_path

    sidecar = read_sidecar(path)
    rebuild = f"rebuild the engine with `stl-bench export MODEL.onnx --output {path.name}`"
    if not sidecar.tensors or any(not spec.shape for spec in sidecar.tensors):
        raise StlBenchError(f"{sidecar_path(path)} records no tensor shapes; {rebuild}")
    if sidecar.profile.min != 1:
        raise StlBenchError(
            f"engine {path} accepts batches from {sidecar.profile.min}, but Triton's batcher sends any size from 1; "
            f"{rebuild} --min-batch 1"
        )
    specs: dict[str, list[TensorIO]] = {"input": [], "output": []}
    for spec in sidecar.tensors:
        if spec.dtype not in _TORCH_TYPES:
            raise StlBenchError(f"{path}: {spec.name} is {spec.dtype}, which Triton cannot serve; {rebuild}")
        io = TensorIO(spec.name, _TORCH_TYPES[spec.dtype], _drop_batch(spec.name, spec.shape, path))
        specs[spec.mode].append(io)
    return _Source(path, TENSORRT_PLATFORM, tuple(specs["input"]), tuple(specs["output"]), sidecar.onnx_metadata,
                   ((sidecar_path(path), MODEL_FILES[TENSORRT_PLATFORM] + ".json"),), sidecar.profile.max)


def _read_source(path: Path) -> _Source:
    if not path.is_file():
        raise StlBenchError(f"model file {path} does not exist; check the path or export it with `stl-bench export`")
    platform = _model_platform(path)
    if platform == TENSORRT_PLATFORM:
        return _engine_source(path)
    proto = _load_graph(path)  # once: a big graph's proto takes seconds to parse
    # refuses files without stl-bench metadata, with the fix (re-export)
    meta = OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, path)
    inputs, outputs = _graph_tensors(proto, path)
    return _Source(path, ONNX_PLATFORM, inputs, outputs, meta, _external_data(proto, path))


# --------------------------------------------------------------------------- the config
def client_metadata(meta: OnnxMetadata) -> dict[str, Any]:
    """What a client needs besides the tensors: preprocessing, head, classes, provenance."""
    data = meta.data_config
    return {
        "arch": meta.arch,
        "num_classes": meta.num_classes,
        "has_tokens": meta.has_tokens,
        "head": "fused" if meta.has_tokens else "cls",
        "fused_token_weight": FUSED_TOKEN_WEIGHT if meta.has_tokens else None,
        "input": INPUT_NAME,
        "outputs": [LOGITS, TOKEN_LOGITS] if meta.has_tokens else [LOGITS],
        "input_size": [int(v) for v in data["input_size"]],
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "interpolation": str(data.get("interpolation", "bicubic")),
        "crop_pct": float(data.get("crop_pct", 1.0)),
        "crop_mode": str(data.get("crop_mode", "center")),
        "token_grid": list(meta.token_grid) if meta.token_grid else None,
        "precision": meta.precision,
        "labels": LABELS_FILE if meta.class_names else None,
        "checkpoint_sha256": meta.checkpoint_sha256,
        "weights": meta.weights,
        "stl_bench_version": meta.stl_bench_version,
    }


def _resolve_kind(kind: str, platform: str, path: Path) -> str:
    if kind not in KINDS:
        raise StlBenchError(f"unknown instance kind '{kind}'; choose one of {', '.join(KINDS)}")
    if platform == TENSORRT_PLATFORM and kind == "cpu":
        raise StlBenchError(f"{path} is a TensorRT engine, which runs on a GPU only; use kind gpu (or auto)")
    if kind == "auto":
        return "gpu" if platform == TENSORRT_PLATFORM else "cpu"
    return kind


def _check_numbers(max_batch_size: int, preferred: Sequence[int], delay_us: int, instances: int, version: int) -> None:
    problems = []
    if max_batch_size < 1:
        problems.append(f"max batch size {max_batch_size} (use 1 or more)")
    if any(b < 1 for b in preferred):
        problems.append(f"preferred batch sizes {list(preferred)} (use positive sizes)")
    if delay_us < 0:
        problems.append(f"queue delay {delay_us} us (use 0 or more)")
    if instances < 1:
        problems.append(f"{instances} instances (use 1 or more)")
    if version < 1:
        problems.append(f"version {version} (use 1 or more)")
    if problems:
        raise StlBenchError("bad Triton settings: " + "; ".join(problems))


def build_config(source: _Source, name: str, *, max_batch_size: int, preferred_batch_sizes: Sequence[int],
                 max_queue_delay_us: int, instances: int, kind: str) -> Any:
    """The `ModelConfig` message for `source` (tensors from the graph, batching, instances, metadata)."""
    pb, _ = import_model_config()
    config = pb.ModelConfig(name=name, platform=source.platform, max_batch_size=max_batch_size)
    for io in source.inputs:
        config.input.add(name=io.name, data_type=pb.DataType.Value(io.data_type), dims=list(io.dims))
    for io in source.outputs:
        out = config.output.add(name=io.name, data_type=pb.DataType.Value(io.data_type), dims=list(io.dims))
        if io.name == LOGITS and source.metadata.class_names:
            out.label_filename = LABELS_FILE  # Triton's classification extension returns names, not indices
    preferred = sorted({int(b) for b in preferred_batch_sizes if b <= max_batch_size})
    if len(preferred) < len(set(preferred_batch_sizes)):
        log.info("preferred batch sizes above max_batch_size %d dropped: %s", max_batch_size,
                 sorted(set(preferred_batch_sizes) - set(preferred)))
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    metadata = json.dumps(client_metadata(source.metadata), separators=(",", ":"))
    config.parameters[METADATA_KEY].string_value = metadata
    return config


def config_text(config: Any, source_name: str) -> str:
    """The config as Triton's text format, with a comment saying where it came from."""
    from stl_bench import __version__

    _, text_format = import_model_config()
    body = text_format.MessageToString(config, use_short_repeated_primitives=True)
    return f"# Triton model configuration written by stl-bench {__version__} from {source_name}\n{body}"


# --------------------------------------------------------------------------- writing
def default_name(arch: str) -> str:
    """The architecture, made safe for a folder and a Triton model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arch).lstrip(".-") or "model"


def _check_name(name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise StlBenchError(
            f"Triton model name '{name}' must be letters, digits, '_', '.' and '-' (not starting with '.' or '-'); "
            "pass another name"
        )


def check_repo_folder(repo: Path) -> None:
    """Refuse a repository path that is a file or lies in a folder this user cannot write;
    nothing is created. The exporter calls it before a long export, so it fails in seconds."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise StlBenchError(f"Triton repository {repo} is a file, not a folder; pass a folder")
    existing = next((p for p in (repo, *repo.absolute().parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise StlBenchError(f"cannot write the Triton repository {repo}: {existing} is not writable; "
                            "choose a folder you can write to")


def check_target(repo: Path, name: str, overwrite: bool) -> Path:
    """`repo/name`, refused if it exists (unless `overwrite`) or cannot be written; nothing is created."""
    _check_name(name)
    repo = Path(repo)
    model_dir = repo / name
    check_repo_folder(repo)
    if model_dir.exists() and not overwrite:
        raise StlBenchError(
            f"Triton model folder {model_dir} already exists; remove it, choose another name, or overwrite it "
            "(--triton-overwrite / overwrite=True)"
        )
    if model_dir.exists() and not model_dir.is_dir():
        raise StlBenchError(f"{model_dir} is a file, not a Triton model folder; remove it or choose another name")
    if model_dir.exists() and not os.access(model_dir, os.W_OK | os.X_OK):
        raise StlBenchError(f"cannot overwrite {model_dir}: it is not writable; choose another name or folder")
    return model_dir


def write_triton_repo(
    model_file: Path,
    repo: Path,
    name: str | None = None,
    *,
    max_batch_size: int = 64,
    preferred_batch_sizes: Sequence[int] = (8, 16, 32),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    kind: str = "auto",
    version: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write `repo/<name>/config.pbtxt` (+ labels.txt) and `repo/<name>/<version>/model.onnx|model.plan`.

    `kind` "auto" puts engines on the GPU and ONNX graphs on the CPU. With `overwrite`,
    this version's files and the config are replaced; other version folders are kept
    (Triton serves the highest by default). Returns the model folder.
    """
    model_file, repo = Path(model_file), Path(repo)
    _check_numbers(max_batch_size, preferred_batch_sizes, max_queue_delay_us, instances, version)
    source = _read_source(model_file)
    resolved_kind = _resolve_kind(kind, source.platform, model_file)
    _check_batch_limit(source, max_batch_size)
    name = name if name is not None else default_name(source.metadata.arch)
    model_dir = check_target(repo, name, overwrite)
    config = build_config(source, name, max_batch_size=max_batch_size, preferred_batch_sizes=preferred_batch_sizes,
                          max_queue_delay_us=max_queue_delay_us, instances=instances, kind=resolved_kind)
    text = config_text(config, model_file.name)
    try:
        _write_files(source, model_dir, version, text)
    except OSError as exc:
        raise StlBenchError(f"cannot write the Triton repository {repo} ({exc}); choose a folder you can write to") \
            from None
    others = sorted(p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name != str(version))
    if others:
        log.warning("%s also holds versions %s; Triton serves the highest by default", model_dir, ", ".join(others))
    log.debug("wrote Triton model %s (%s, %s) to %s", name, source.platform, resolved_kind, model_dir)
    return model_dir


def _check_batch_limit(source: _Source, max_batch_size: int) -> None:
    """An engine refuses batches above its profile, so Triton must never form one."""
    if source.batch_limit is not None and max_batch_size > source.batch_limit:
        raise StlBenchError(
            f"Triton max batch size {max_batch_size} is above engine {source.path}'s profile (up to "
            f"{source.batch_limit}); pass a max batch size <= {source.batch_limit} (--triton-max-batch), "
            f"or rebuild the engine with --max-batch {max_batch_size}"
        )


def _write_files(source: _Source, model_dir: Path, version: int, text: str) -> None:
    """Model and companions first, labels, then the config last: the config is what makes
    Triton load a model, so it appears only once everything it names is in place."""
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    for other in set(MODEL_FILES.values()) - {MODEL_FILES[source.platform]}:
        for stale in (version_dir / other, version_dir / f"{other}.json"):
            stale.unlink(missing_ok=True)  # an earlier model of this name on the other platform
    # stl_bench.io writes whole files only: a polling Triton never loads a half-copied model
    copy_file(source.path, version_dir / MODEL_FILES[source.platform])
    for src, dst_name in source.companions:
        copy_file(src, version_dir / dst_name)
    labels = model_dir / LABELS_FILE
    if source.metadata.class_names:
        data = "".join(f"{c}\n" for c in source.metadata.class_names).encode()
        write_bytes(labels, data)
    elif labels.exists():
        labels.unlink()  # a stale list from an earlier model of this name
    write_bytes(model_dir / CONFIG_FILE, text.encode())


# --------------------------------------------------------------------------- checking
def read_config(model_dir: Path) -> Any:
    """Parse `model_dir/config.pbtxt` with Triton's schema; a bad file names itself."""
    pb, text_format = import_model_config()
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise StlBenchError(f"{path} does not exist; write the repository with `stl-bench export ... --triton-repo`")
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise StlBenchError(f"{path} is not a valid Triton model configuration ({exc}); re-write it") from None


def _versions(model_dir: Path, model_file: str) -> list[Path]:
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise StlBenchError(f"{model_dir} has no version folder (1/, 2/, ...); re-write the repository")
    for version in versions:
        if not (version / model_file).is_file():
            raise StlBenchError(f"{version} has no {model_file}; re-write the repository")
    return versions


def _config_tensors(config: Any, field: str) -> dict[str, TensorIO]:
    pb, _ = import_model_config()
    return {t.name: TensorIO(t.name, pb.DataType.Name(t.data_type), tuple(t.dims)) for t in getattr(config, field)}


def _cross_check(config: Any, path: Path, model_file: Path,
                 inputs: Sequence[TensorIO], outputs: Sequence[TensorIO]) -> None:
    """Every config input/output must match the model's by name, data type and dims."""
    for field, actual in (("input", inputs), ("output", outputs)):
        declared = _config_tensors(config, field)
        want = {t.name: t for t in actual}
        if set(declared) != set(want):
            raise StlBenchError(
                f"{path}: {field}s {sorted(declared)} but {model_file} has {sorted(want)}; re-write the repository"
            )
        for tensor_name, got in declared.items():
            if got != want[tensor_name]:
                raise StlBenchError(
                    f"{path}: {field} '{tensor_name}' is {got.data_type} {list(got.dims)} but {model_file} has "
                    f"{want[tensor_name].data_type} {list(want[tensor_name].dims)}; re-write the repository"
                )


def _check_settings(config: Any, path: Path, model_dir: Path) -> None:
    pb, _ = import_model_config()
    if config.name and config.name != model_dir.name:
        raise StlBenchError(f"{path}: name '{config.name}' differs from its folder '{model_dir.name}'; "
                            "Triton requires them to match")
    if config.platform not in MODEL_FILES:
        raise StlBenchError(f"{path}: platform '{config.platform}' is not one stl-bench writes "
                            f"({', '.join(MODEL_FILES)})")
    if config.max_batch_size < 1:
        raise StlBenchError(f"{path}: max_batch_size {config.max_batch_size}; stl-bench models take a batch dim")
    too_big = [b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size]
    if too_big:
        raise StlBenchError(f"{path}: preferred batch sizes {too_big} exceed max_batch_size {config.max_batch_size}")
    gpu_only = config.platform == TENSORRT_PLATFORM
    if gpu_only and any(g.kind == pb.ModelInstanceGroup.KIND_CPU for g in config.instance_group):
        raise StlBenchError(f"{path}: a TensorRT engine cannot run in a KIND_CPU instance group; use KIND_GPU")
    for out in config.output:
        if out.label_filename and not (model_dir / out.label_filename).is_file():
            raise StlBenchError(f"{path}: output '{out.name}' names {out.label_filename}, which is missing")


def validate_triton_repo(model_dir: Path) -> Any:
    """Parse `model_dir/config.pbtxt` and check it against the model files; return the ModelConfig.

    Checks the platform's model file in every version folder and that every configured
    input/output has the graph's name, data type and dims (ONNX graphs; engines against
    the sidecar copied beside them), so a hand-edited config fails here and not at
    `tritonserver` start-up.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    path = model_dir / CONFIG_FILE
    _check_settings(config, path, model_dir)
    model_file = MODEL_FILES[config.platform]
    for version in _versions(model_dir, model_file):
        file = version / model_file
        if config.platform == ONNX_PLATFORM:
            _cross_check(config, path, file, *onnx_tensors(file))
        elif (version / (model_file + ".json")).is_file():
            source = _engine_source(file)
            _cross_check(config, path, file, source.inputs, source.outputs)
            _check_batch_limit(source, config.max_batch_size)
    return config


def client_metadata_of(config: Any) -> dict[str, Any]:
    """The stl-bench metadata a config carries (what a client reads from `get_model_config`)."""
    return json.loads(config.parameters[METADATA_KEY].string_value)
