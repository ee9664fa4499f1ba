"""The trainer: one loop for the baseline and both STL stages, as a package.

`config` (the run's flags as nested dataclasses, presets), `data` (folders, sampler,
loaders), `setup` (everything built once into a `Run` by `build_run`), `loop` (`train`,
`train_one_epoch`, `evaluate`), `state` (checkpoint dict, resume checks),
`metrics` (the per-epoch CSV/JSONL log), `seeding` (random streams keyed by step and image,
so a resume is exact), `faults` (a test-only kill hook). `train(cfg)` is the entry point.
"""
from __future__ import annotations

from stl_bench.train.config import (
    PRESETS,
    AugmentConfig,
    EmaConfig,
    OptimConfig,
    RuntimeConfig,
    StlConfig,
    TrainConfig,
    field_docs,
    flag_fields,
    resolve_config,
)
from stl_bench.train.data import ResumableSampler, resolve_data_root, scan_splits
from stl_bench.train.loop import evaluate, train, train_one_epoch
from stl_bench.train.metrics import METRICS_CSV, METRICS_JSONL, MetricsLog
from stl_bench.train.setup import Run, build_model, build_objective, build_run
from stl_bench.train.resume import MAY_CHANGE, resume_config
from stl_bench.train.seeding import SampleKey, seed_image, seed_step
from stl_bench.train.state import BEST, LAST, checkpoint_dict, load_resume

__all__ = [
    "AugmentConfig", "BEST", "EmaConfig", "LAST", "MAY_CHANGE", "METRICS_CSV", "METRICS_JSONL", "MetricsLog",
    "OptimConfig", "PRESETS", "ResumableSampler", "Run", "RuntimeConfig", "SampleKey", "StlConfig", "TrainConfig",
    "build_model", "build_objective", "build_run", "checkpoint_dict", "evaluate", "field_docs", "flag_fields",
    "load_resume", "resolve_config", "resolve_data_root", "resume_config", "scan_splits", "seed_image", "seed_step",
    "train", "train_one_epoch",
]
