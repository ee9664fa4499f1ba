"""An exported graph against PyTorch: the check an export must pass before it is kept.

The exporter traces, the graph rewrites reorder arithmetic and FP16 rounds it; any of
them can change what the model answers. The check runs the file in ONNX Runtime (CPU)
and the model in PyTorch on the same batches and compares both outputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from stl_bench.deploy.graph_rewrites import GraphOptions, prepare_for_export
from stl_bench.deploy.onnx_format import LOGITS, TOKEN_LOGITS, OnnxMetadata


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


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows (images, or tokens) whose argmax over the last axis is the same."""
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def _compare(reference: nn.Module, runner: Any, meta: OnnxMetadata, source: str, x: torch.Tensor,
             onnx_path: Path | str) -> list[ParityRow]:
    """The rows of one batch: one per output the file has."""
    with torch.inference_mode():
        want = reference(x)
    want = want if isinstance(want, tuple) else (want,)
    got = runner.predict(x)
    pairs = [(LOGITS, got.logits, want[0])]
    if meta.has_tokens:
        pairs.append((TOKEN_LOGITS, got.token_logits, want[1]))
    rows = []
    for name, g, w in pairs:
        if g.shape != w.shape:
            raise RuntimeError(f"{onnx_path}: {name} has shape {tuple(g.shape)}, PyTorch gives {tuple(w.shape)}")
        rows.append(ParityRow(source, len(x), name, float((g - w).abs().max()), agreement(g, w)))
    return rows


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
    from stl_bench.data.real_images import real_images
    from stl_bench.deploy.onnx_runner import OnnxRunner

    runner = OnnxRunner.open(onnx_path, device="cpu", head="cls")
    meta: OnnxMetadata = runner.metadata
    reference = prepare_for_export(model, meta.data_config["input_size"], meta.has_tokens, GraphOptions.none())
    gen = torch.Generator().manual_seed(seed)
    input_size = tuple(meta.data_config["input_size"])
    if real is None:
        real = real_images(meta.data_config, max(real_count, *batch_sizes))
    rows: list[ParityRow] = []
    for bs in batch_sizes:
        rows += _compare(reference, runner, meta, "random", torch.randn(bs, *input_size, generator=gen), onnx_path)
        rows += _compare(reference, runner, meta, "real", real[torch.arange(bs) % len(real)], onnx_path)
    # the whole real set at once: the agreement figure that gates FP16
    rows += _compare(reference, runner, meta, "real", real, onnx_path)
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
