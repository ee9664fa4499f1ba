"""ONNX export of FAN/STL (and other timm) models: the graph, and its FP16 copy.

The file format (tensor names, opsets, the metadata a file carries) lives in
`stl_bench.deploy.onnx_format`, the check against PyTorch that an export must pass in
`stl_bench.deploy.parity`, and the export-time graph rewrites (same arithmetic, cheaper
graph) in `stl_bench.deploy.graph_rewrites`. Files are written through
`stl_bench.io`, so a killed export never leaves a half-written `.onnx` behind.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from stl_bench.deploy.graph_rewrites import GraphOptions, custom_translation_table, prepare_for_export
from stl_bench.deploy.onnx_format import (
    DEFAULT_OPSET,
    INPUT_NAME,
    LOGITS,
    SUPPORTED_OPSETS,
    TOKEN_LOGITS,
    OnnxMetadata,
    write_metadata,
)
from stl_bench.errors import StlBenchError
from stl_bench.io import TEMP_MARK, atomic_path, ensure_writable_folder

log = logging.getLogger(__name__)

# Protobuf cannot hold more than 2 GiB in one message: bigger graphs keep their
# weights in a `<file>.onnx.data` side file (written and renamed with the graph).
_SINGLE_FILE_LIMIT = 1_800_000_000
# Ops that stay FP32 in the FP16 graph: reductions whose range or precision FP16
# cannot hold (LayerNorm's variance, softmax's exp-sum, the channel-attention mean),
# and the Fourier features' trigonometry if they were not folded.
FP16_KEEP_FP32 = (
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Sigmoid", "Sin", "Cos", "Pow", "CumSum", "Range",
)


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


# --------------------------------------------------------------------------- writing
def save_onnx(proto: Any, path: Path) -> Path:
    """Write a ModelProto atomically; weights go to `<name>.data` only above 2 GiB.

    With a side file, both are saved in a scratch folder beside `path` (the graph names
    its side file, so both must be written together) and then each is moved into place
    through `atomic_path` (fsynced, umask mode), data first, so a reader never sees a
    graph whose weights are missing.
    """
    import onnx

    path = Path(path)
    data_final = path.with_name(path.name + ".data")
    if proto.ByteSize() < _SINGLE_FILE_LIMIT:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
        if data_final.exists():
            data_final.unlink()  # a side file left by an earlier, bigger export of the same name
        return path
    ensure_writable_folder(path.parent, "ONNX output")
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_MARK, dir=path.parent))
    try:
        onnx.save_model(proto, str(scratch / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_final.name)
        for final in (data_final, path):
            with atomic_path(final) as tmp:
                (scratch / final.name).replace(tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
    write_metadata(proto, metadata)
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
    write_metadata(half, meta)
    onnx.checker.check_model(half)
    return save_onnx(half, dst)
