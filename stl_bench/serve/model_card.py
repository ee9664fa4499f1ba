"""What `GET /v1/model` says about the served model, from the runner that serves it.

A client needs this to trust and to feed the endpoint: which architecture and weights
(the checkpoint's SHA-256), which backend and precision, the classes, and the exact
preprocessing (a client that sends preprocessed arrays must match it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stl_bench.deploy.runner import Runner
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.serve.protocol import ServeConfig


def token_grid_of(runner: Runner) -> tuple[int, int] | None:
    """The (rows, cols) token grid of a token-label model, else None."""
    if not runner.info.has_tokens:
        return None
    meta = getattr(runner, "metadata", None)
    if meta is not None and getattr(meta, "token_grid", None):
        return tuple(meta.token_grid)
    model = getattr(runner, "model", None)
    size = tuple(runner.info.data_config["input_size"][-2:])
    if model is not None and hasattr(model, "token_grid"):
        return tuple(model.token_grid(size))
    return None


def _precision(runner: Runner, cfg: ServeConfig) -> str:
    declared = runner.info.extra.get("precision")
    if declared:
        return str(declared)
    return {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[cfg.amp]


def _checkpoint_sha256(runner: Runner, cfg: ServeConfig, source_sha256: str) -> str:
    """The weights' identity: the checkpoint file's hash (or, for an export, the one it records)."""
    recorded = runner.info.extra.get("checkpoint_sha256")
    if recorded:
        return str(recorded)
    return "" if cfg.source and Path(cfg.source).suffix.lower() == ".onnx" else source_sha256


def describe_runner(runner: Runner, cfg: ServeConfig, prep: Preprocessing,
                    grid: tuple[int, int] | None) -> dict[str, Any]:
    info = runner.info
    file_sha = ""
    if cfg.source and Path(cfg.source).is_file():
        from stl_bench.fan.checkpoint import file_sha256

        file_sha = file_sha256(cfg.source)
    model = getattr(runner, "model", None)
    params = sum(p.numel() for p in model.parameters()) if model is not None else info.extra.get("params")
    return {
        "name": info.name,
        "backend": info.backend,
        "precision": _precision(runner, cfg),
        "device": str(runner.device),
        "head": info.head,
        "has_tokens": info.has_tokens,
        "token_grid": list(grid) if grid else None,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "weights": info.weights,
        "params": params,
        "source": Path(cfg.source).name if cfg.source else None,
        "source_sha256": file_sha,
        "checkpoint_sha256": _checkpoint_sha256(runner, cfg, file_sha),
        "input_size": list(prep.input_size),
        "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in info.data_config.items()},
        "preprocessing": prep.describe(),
        "max_batch": cfg.max_batch,
        "max_body_mb": cfg.max_body_mb,
    }
