"""The stl-bench ONNX file format: tensor names, opsets and the metadata a file carries.

An exported file has to stand alone: a runner reads the preprocessing, the class names
and the provenance from the file's `metadata_props`, never from a side file. This
module is the contract between the exporter that writes such files and the runners,
the TensorRT builder and the Triton repository writer that read them; it imports
neither side (opening a file must not load the exporter or its custom ops).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stl_bench.errors import StlBenchError

if TYPE_CHECKING:
    import torch.nn as nn

INPUT_NAME = "input"
LOGITS = "logits"
TOKEN_LOGITS = "token_logits"
DEFAULT_OPSET = 23  # the ONNX `Attention` op; 20 for TensorRT before 10.14
SUPPORTED_OPSETS = range(18, 24)
META_PREFIX = "stl_bench."
META_FORMAT_VERSION = "1"


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


def metadata_for(model: "nn.Module", arch: str, *, tokens: bool, class_names: Sequence[str] | None = None,
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


def write_metadata(proto: Any, metadata: OnnxMetadata) -> None:
    """Replace a ModelProto's `metadata_props` with `metadata`'s."""
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        proto.metadata_props.add(key=key, value=value)


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
