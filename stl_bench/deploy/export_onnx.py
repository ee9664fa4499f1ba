"""ONNX export of FAN/STL (and other timm) models: graph, metadata, parity, FP16.

An exported file has to stand alone: a runner reads the preprocessing, the class names
and the provenance from the file's `metadata_props`, never from a side file. The
export is only kept if it gives the same answers as PyTorch (a parity check runs as
part of it), and it is written to a temporary name and renamed, so a killed export
never leaves a half-written `.onnx` behind.

The export-time graph rewrites (same arithmetic, cheaper graph) live in
`stl_bench.deploy.graph_rewrites`.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from stl_bench.deploy.graph_rewrites import GraphOptions, custom_translation_table, prepare_for_export
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
LOGITS = "logits"
TOKEN_LOGITS = "token_logits"
DEFAULT_OPSET = 23  # the ONNX `Attention` op; 20 for TensorRT before 10.14
SUPPORTED_OPSETS = range(18, 24)
META_PREFIX = "stl_bench."
META_FORMAT_VERSION = "1"
# Protobuf cannot hold more than 2 GiB in one message: bigger graphs keep their
# weights in a `<file>.onnx.data` side file (written and renamed with the graph).
_SINGLE_FILE_LIMIT = 1_800_000_000
# Ops that stay FP32 in the FP16 graph: reductions whose range or precision FP16
# cannot hold (LayerNorm's variance, softmax's exp-sum, the channel-attention mean),
# and the Fourier features' trigonometry if they were not folded.
FP16_KEEP_FP32 = (
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Sigmoid", "Sin", "Cos", "Pow", "CumSum", "Range",
)


# --------------------------------------------------------------------------- metadata
@dataclass
class OnnxMetadata:
    """Everything a runner needs besides the graph, stored as ONNX `metadata_props`.

    `data_config` uses timm's keys (input_size, mean, std, interpolation, crop_pct,
    crop_mode) so
    the same transform code serves checkpoints and exported files.
    """

    arch: str
    num_classes: int
    has_tokens: bool
    data_config: dict[str, Any]
    class_names: list[str] | None = None
    checkpoint_sha256: str = ""
    weights: str = ""
    precision: str = "fp32"
    token_grid: tuple[int, int] | None = None
    stl_bench_version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        """Flat string key/values (JSON for structured ones), readable in Netron."""
        props = {
            "format_version": META_FORMAT_VERSION,
            "arch": self.arch,
            "num_classes": str(self.num_classes),
            "has_tokens": json.dumps(self.has_tokens),
            "input_size": json.dumps(list(self.data_config["input_size"])),
            "mean": json.dumps([float(v) for v in self.data_config["mean"]]),
            "std": json.dumps([float(v) for v in self.data_config["std"]]),
            "interpolation": str(self.data_config.get("interpolation", "bicubic")),
            "crop_pct": json.dumps(float(self.data_config.get("crop_pct", 1.0))),
            "crop_mode": str(self.data_config.get("crop_mode", "center")),
            "class_names": json.dumps(self.class_names),
            "checkpoint_sha256": self.checkpoint_sha256,
            "weights": self.weights,
            "precision": self.precision,
            "token_grid": json.dumps(list(self.token_grid) if self.token_grid else None),
            "stl_bench_version": self.stl_bench_version,
        }
        props.update({f"extra.{k}": v for k, v in self.extra.items()})
        return {META_PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: Path | str) -> "OnnxMetadata":
        """Parse `metadata_props`; a file exported by something else fails clearly."""
        ours = {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}
        if "format_version" not in ours:
            raise StlBenchError(
                f"{source} has no stl-bench metadata (preprocessing, classes, architecture); "
                "re-export it with `stl-bench export CHECKPOINT --output FILE.onnx`"
            )
        try:
            data_config = {
                "input_size": tuple(json.loads(ours["input_size"])),
                "mean": tuple(json.loads(ours["mean"])),
                "std": tuple(json.loads(ours["std"])),
                "interpolation": ours["interpolation"],
                "crop_pct": float(json.loads(ours["crop_pct"])),
                "crop_mode": ours.get("crop_mode", "center"),
            }
            grid = json.loads(ours.get("token_grid", "null"))
            return cls(
                arch=ours["arch"],
                num_classes=int(ours["num_classes"]),
                has_tokens=bool(json.loads(ours["has_tokens"])),
                data_config=data_config,
                class_names=json.loads(ours.get("class_names", "null")),
                checkpoint_sha256=ours.get("checkpoint_sha256", ""),
                weights=ours.get("weights", ""),
                precision=ours.get("precision", "fp32"),
                token_grid=tuple(grid) if grid else None,
                stl_bench_version=ours.get("stl_bench_version", ""),
                extra={k[len("extra."):]: v for k, v in ours.items() if k.startswith("extra.")},
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StlBenchError(
                f"{source} has damaged stl-bench metadata ({type(exc).__name__}: {exc}); re-export it"
            ) from None


def metadata_for(model: nn.Module, arch: str, *, tokens: bool, class_names: Sequence[str] | None = None,
                 checkpoint_sha256: str = "", weights: str = "",
                 img_size: int | tuple[int, int] | None = None) -> OnnxMetadata:
    """The metadata of an export of `model` (preprocessing from its timm config; `img_size`,
    an int or (H, W), overrides its input size)."""
    import timm.data

    from stl_bench import __version__

    resolved = timm.data.resolve_data_config({}, model=model)
    data_config = {k: resolved[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    data_config["crop_mode"] = resolved.get("crop_mode", "center")
    if img_size:
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        data_config["input_size"] = (data_config["input_size"][0], *hw)
    num_classes = int(getattr(model, "num_classes", 0))
    if class_names is not None and len(class_names) != num_classes:
        raise StlBenchError(
            f"{len(class_names)} class names for a {num_classes}-class model; fix the checkpoint's class_names"
        )
    grid = tuple(model.token_grid(tuple(data_config["input_size"][-2:]))) if tokens else None
    return OnnxMetadata(
        arch=arch, num_classes=num_classes, has_tokens=tokens, data_config=data_config,
        class_names=list(class_names) if class_names else None, checkpoint_sha256=checkpoint_sha256,
        weights=weights, token_grid=grid, stl_bench_version=__version__,
    )


def read_metadata(path: Path | str) -> OnnxMetadata:
    """The stl-bench metadata of an ONNX file (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise StlBenchError(f"ONNX file {path} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... depending on the damage
        raise StlBenchError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    return OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, path)


# --------------------------------------------------------------------------- atomic writes
@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress prints and its optimizer's INFO logs (hundreds of lines of
    initializer de-duplication) go to the debug log instead of the user's terminal."""
    import contextlib
    import io
    import warnings

    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        if buffer.getvalue():
            log.debug("exporter output:\n%s", buffer.getvalue())


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `final`, renamed onto it only if the block succeeds.

    The file is fsynced before the rename, so a crash never leaves a renamed but empty
    file (a server polling the folder, Triton for one, may load it at once).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            fd = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make exports private
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_onnx(proto: Any, path: Path) -> Path:
    """Write a ModelProto atomically; weights go to `<name>.data` only above 2 GiB.

    With a side file, both are written in a temporary folder and renamed (data first),
    so a reader never sees a graph whose weights are missing.
    """
    import onnx

    path = Path(path)
    if proto.ByteSize() < _SINGLE_FILE_LIMIT:
        stale = path.with_name(path.name + ".data")
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
        if stale.exists():
            stale.unlink()  # a side file left by an earlier, bigger export of the same name
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        data_name = path.name + ".data"
        onnx.save_model(proto, str(tmpdir / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name)
        os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmpdir / path.name, path)
    finally:
        for p in tmpdir.glob("*"):
            p.unlink()
        tmpdir.rmdir()
    return path


# --------------------------------------------------------------------------- export
def _symbolic_batch(proto: Any) -> bool:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return bool(dim.dim_param) and not dim.HasField("dim_value")


def export_onnx(
    model: nn.Module,
    output: Path | str,
    metadata: OnnxMetadata,
    *,
    opset: int = DEFAULT_OPSET,
    options: GraphOptions | None = None,
    trace_batch: int = 2,
) -> Path:
    """Export with the dynamo exporter and a dynamic batch; check the graph; write atomically.

    Traces with `trace_batch` >= 2: a batch-1 example lets the exporter specialise the
    batch dimension to 1. The saved input's batch dim is checked to be symbolic.
    """
    import onnx

    if opset not in SUPPORTED_OPSETS:
        low, high = SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1
        raise StlBenchError(f"--opset {opset} is not supported; use {low}..{high}")
    if trace_batch < 2:
        raise ValueError("trace with a batch of at least 2, or the batch dimension may be frozen")
    output = Path(output)
    input_size = tuple(metadata.data_config["input_size"])
    wrapped = prepare_for_export(model, input_size, metadata.has_tokens, options, opset)
    example = torch.randn(trace_batch, *input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    names = [LOGITS, TOKEN_LOGITS] if metadata.has_tokens else [LOGITS]
    log.info("exporting %s (input %s, outputs %s, opset %d)", metadata.arch, input_size, ", ".join(names), opset)
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapped, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME], output_names=names,
            dynamic_shapes={"x": {0: batch}}, external_data=False, optimize=True, verbose=False,
            custom_translation_table=custom_translation_table(),
        )
    proto = program.model_proto
    if not _symbolic_batch(proto):
        raise RuntimeError(f"the exported graph froze the batch dimension of {INPUT_NAME}; this is an export bug")
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=proto.ByteSize() < _SINGLE_FILE_LIMIT)
    return save_onnx(proto, output)


# --------------------------------------------------------------------------- FP16
def convert_fp16(src: Path | str, dst: Path | str, keep_fp32: Sequence[str] = FP16_KEEP_FP32) -> Path:
    """An FP16 copy of an FP32 graph with FP32 inputs/outputs and `keep_fp32` ops in FP32.

    TensorRT 11 builds strongly typed networks only, so reduced precision has to be in
    the graph itself. onnxconverter-common's converter (not `onnxruntime.transformers`',
    which breaks dynamo graphs) inserts the casts around the blocked ops.
    """
    import onnx
    from onnxconverter_common import float16

    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src))
    meta = OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, src)
    if meta.precision != "fp32":
        raise StlBenchError(f"{src} is already a {meta.precision} graph; convert the FP32 export")
    with _quiet_exporter():  # one warning per weight clipped to FP16's range
        half = float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(keep_fp32))
    meta.precision = "fp16"
    meta.extra["fp32_ops"] = ",".join(keep_fp32)
    del half.metadata_props[:]
    for key, value in meta.to_props().items():
        half.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(half)
    return save_onnx(half, dst)


# --------------------------------------------------------------------------- parity
def real_images(data_config: dict[str, Any], count: int, folder: Path | str | None = None) -> torch.Tensor:
    """`count` normalised real images at the model's input size.

    From `folder` (any image files below it, sorted) when given, else scikit-learn's
    bundled handwritten digits (no download): natural strokes on a flat background
    exercise a model far more like real data than Gaussian noise does.
    """
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(
        input_size=tuple(data_config["input_size"]), is_training=False, crop_pct=data_config.get("crop_pct", 1.0),
        interpolation=data_config.get("interpolation", "bicubic"), mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
    )
    pictures: list[Image.Image] = []
    if folder is not None:
        folder = Path(folder)
        suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes) if folder.is_dir() else []
        if not files:
            raise StlBenchError(f"image folder {folder} holds no image files; pass a folder of .jpg/.png images")
        for p in files[:count]:
            with Image.open(p) as img:
                pictures.append(img.convert("RGB"))
    else:
        from sklearn.datasets import load_digits

        digits = load_digits().images
        for i in range(count):
            gray = (digits[i % len(digits)] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            pictures.append(Image.fromarray(gray, mode="L").resize((32, 32), Image.Resampling.BICUBIC).convert("RGB"))
    while len(pictures) < count:  # a small folder is cycled
        pictures.append(pictures[len(pictures) % max(1, len(pictures))])
    return torch.stack([transform(p) for p in pictures[:count]])


@dataclass
class ParityRow:
    """One comparison: one image source, one batch size, one output."""

    images: str
    batch: int
    output: str
    max_abs_diff: float
    agreement: float  # top-1 (logits) or per-token argmax (token_logits) agreement


@dataclass
class ParityReport:
    """Exported graph vs PyTorch, and whether it passed."""

    path: str
    precision: str
    rows: list[ParityRow]
    atol: float
    min_agreement: float
    passed: bool
    reason: str = ""

    def table(self) -> str:
        head = f"{'images':<8} {'batch':>5} {'output':<13} {'max |diff|':>11} {'agreement':>10}"
        lines = [f"parity of {self.path} ({self.precision}) against PyTorch FP32:", head]
        for r in self.rows:
            lines.append(
                f"{r.images:<8} {r.batch:>5} {r.output:<13} {r.max_abs_diff:>11.3e} {100 * r.agreement:>9.2f}%"
            )
        lines.append(("PASSED" if self.passed else "FAILED") + (f": {self.reason}" if self.reason else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def check_parity(
    model: nn.Module,
    onnx_path: Path | str,
    *,
    batch_sizes: Sequence[int] = (1, 2, 7),
    atol: float = 1e-4,
    min_agreement: float = 0.99,
    real: torch.Tensor | None = None,
    real_count: int = 32,
    seed: int = 0,
) -> ParityReport:
    """Run the file in ONNX Runtime (CPU) and PyTorch on the same batches and compare.

    Random and real images at every batch size (1 included: a frozen batch dimension
    shows up there), then all `real_count` real images in one batch. An FP32 graph
    fails above `atol` on any output; an FP16 graph is judged by top-1 (and
    token-argmax) agreement over the whole real set, which must reach `min_agreement`
    (its absolute differences are printed, not gated: FP16 logits differ by ~1e-3 by
    design).
    """
    from stl_bench.deploy.onnx_runner import OnnxRunner

    runner = OnnxRunner.open(onnx_path, device="cpu", head="cls")
    meta: OnnxMetadata = runner.metadata
    reference = prepare_for_export(model, meta.data_config["input_size"], meta.has_tokens, GraphOptions.none())
    gen = torch.Generator().manual_seed(seed)
    input_size = tuple(meta.data_config["input_size"])
    if real is None:
        real = real_images(meta.data_config, max(real_count, *batch_sizes))
    rows: list[ParityRow] = []

    def compare(source: str, x: torch.Tensor) -> None:
        with torch.inference_mode():
            want = reference(x)
        want = want if isinstance(want, tuple) else (want,)
        got = runner.predict(x)
        pairs = [(LOGITS, got.logits, want[0])]
        if meta.has_tokens:
            pairs.append((TOKEN_LOGITS, got.token_logits, want[1]))
        for name, g, w in pairs:
            if g.shape != w.shape:
                raise RuntimeError(f"{onnx_path}: {name} has shape {tuple(g.shape)}, PyTorch gives {tuple(w.shape)}")
            rows.append(ParityRow(source, len(x), name, float((g - w).abs().max()), _agreement(g, w)))

    for bs in batch_sizes:
        compare("random", torch.randn(bs, *input_size, generator=gen))
        compare("real", real[torch.arange(bs) % len(real)])
    compare("real", real)  # the whole real set at once: the agreement figure that gates FP16
    worst = max(r.max_abs_diff for r in rows)
    pooled = min(r.agreement for r in rows[-(2 if meta.has_tokens else 1):])
    if meta.precision == "fp32":
        passed = worst <= atol
        reason = f"max |diff| {worst:.2e} {'<=' if passed else '>'} atol {atol:.0e}"
    else:
        passed = pooled >= min_agreement
        reason = (f"agreement on {len(real)} real images {100 * pooled:.2f}% {'>=' if passed else '<'} "
                  f"{100 * min_agreement:.2f}% (FP16 is judged by agreement, not by atol)")
    return ParityReport(str(onnx_path), meta.precision, rows, atol, min_agreement, passed, reason)
