"""The trainer package: config.json compatibility, one augmentation recipe, atomic run files,
the import surface callers use and layering (function size: tests/test_architecture.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from stl_bench.data.batch_augment import BatchAugment
from stl_bench.data.transforms import AugmentConfig, TrainViews
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.train import config as train_config
from stl_bench.train.config import PRESETS, TrainConfig, flag_fields, resolve_config
from stl_bench.train.setup import prepare_output

ROOT = Path(__file__).resolve().parents[1]

# config.json of a run written before the trainer became a package (flat keys, this order)
LEGACY_KEYS = [
    "stage", "model", "data", "output", "train_split", "val_split", "teacher", "token_labels", "label_mode",
    "gumbel_tau", "token_smoothing", "cls_weight", "dense_weight", "epochs", "cooldown_epochs", "warmup_epochs",
    "batch_size", "grad_accum_steps", "opt", "lr", "weight_decay", "opt_eps", "sched", "warmup_lr", "min_lr",
    "clip_grad", "drop_path", "img_size", "scale", "ratio", "hflip", "aa", "train_interpolation", "reprob",
    "erase_after_mix", "remode", "recount", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "mixup_mode",
    "smoothing", "crop_pct", "model_ema", "model_ema_decay", "model_ema_warmup", "amp", "amp_dtype",
    "channels_last", "grad_checkpointing", "device", "seed", "workers", "threads", "eval_batch_size",
    "checkpoint_every", "max_train_samples", "steps_per_epoch", "log_every", "progress",
]
# keys added since, each after the key it follows (old files read back with their defaults)
ADDED_AFTER = {"checkpoint_every": "checkpoint_minutes"}
KEYS = [k for legacy in LEGACY_KEYS for k in (legacy, ADDED_AFTER.get(legacy)) if k]
LEGACY_STUDENT = {
    "stage": "student", "model": "fan_nano_4_p4_32_token", "data": "demo", "output": "runs/student",
    "train_split": "train", "val_split": "val", "teacher": "runs/labeler/last.pt", "token_labels": None,
    "label_mode": "gumbel", "gumbel_tau": 1.0, "token_smoothing": 0.1, "cls_weight": 1.0, "dense_weight": 1.0,
    "epochs": 2, "cooldown_epochs": 0, "warmup_epochs": 1, "batch_size": 64, "grad_accum_steps": 1, "opt": "adamw",
    "lr": 0.002, "weight_decay": 0.05, "opt_eps": 1e-08, "sched": "cosine", "warmup_lr": 1e-06, "min_lr": 1e-06,
    "clip_grad": None, "drop_path": 0.0, "img_size": 32, "scale": [0.5, 1.0], "ratio": [0.75, 1.3333333333333333],
    "hflip": 0.0, "aa": "rand-m5-mstd0.5-inc1", "train_interpolation": "random", "reprob": 0.1,
    "erase_after_mix": False, "remode": "pixel", "recount": 1, "mixup": 0.2, "cutmix": 0.0, "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5, "mixup_mode": "batch", "smoothing": 0.1, "crop_pct": 1.0, "model_ema": True,
    "model_ema_decay": 0.999, "model_ema_warmup": True, "amp": "off", "amp_dtype": "float16",
    "channels_last": False, "grad_checkpointing": False, "device": "auto", "seed": 7, "workers": 1, "threads": 1,
    "eval_batch_size": None, "checkpoint_every": 0, "max_train_samples": 256, "steps_per_epoch": None,
    "log_every": 10, "progress": False,
}


def test_config_json_keeps_the_flat_keys_in_their_order() -> None:
    assert list(TrainConfig().to_dict()) == KEYS
    assert [f.name for f, _ in flag_fields()] == KEYS


def test_an_old_config_json_reads_back_and_writes_the_same_dict() -> None:
    assert list(LEGACY_STUDENT) == LEGACY_KEYS
    cfg = TrainConfig.from_dict(LEGACY_STUDENT)
    assert cfg.stl.teacher == "runs/labeler/last.pt" and cfg.optim.batch_size == 64 and cfg.augment.scale == (0.5, 1.0)
    assert cfg.lr == cfg.optim.lr and cfg.aa == cfg.augment.aa  # flat names read through to their group
    written = {k: v for k, v in cfg.to_dict().items() if k in LEGACY_STUDENT}  # added keys carry defaults
    assert list(cfg.to_dict()) == KEYS and cfg.runtime.checkpoint_minutes == 10.0
    assert json.dumps(written, indent=2) == json.dumps(LEGACY_STUDENT, indent=2)


def test_unknown_keys_in_old_files_are_ignored_and_unknown_flags_refused() -> None:
    assert TrainConfig.from_dict({"stage": "labeler", "gone_option": 3}).stage == "labeler"
    with pytest.raises(StlBenchError, match="unknown training option"):
        resolve_config(gone_option=3)
    with pytest.raises(AttributeError):
        TrainConfig().gone_option  # noqa: B018


def test_the_official_preset_states_only_what_differs_from_the_defaults() -> None:
    defaults = TrainConfig().to_dict()
    for key, value in train_config._OFFICIAL.items():
        assert defaults[key] != value, key
    for name, preset in PRESETS.items():
        for key, value in preset.items():
            if key not in {"model", "batch_size", "lr", "warmup_epochs", "drop_path"}:  # the per-size table
                assert defaults[key] != (list(value) if isinstance(value, tuple) else value), (name, key)


def test_one_augmentation_recipe_reaches_both_consumers() -> None:
    cfg = resolve_config("demo")
    views = TrainViews(cfg.augment, (32, 32))
    batch = BatchAugment(cfg.augment, num_classes=10)
    assert views.cfg is cfg.augment and batch.recipe is cfg.augment
    # erasing happens in exactly one place: per image before mixing (the demo) or on the mixed batch
    assert views.erase is not None and batch.erase is None
    official = resolve_config("fan_small_hybrid").augment
    assert TrainViews(official, (32, 32)).erase is None and BatchAugment(official, 10).erase is not None
    assert {f.name for f in fields(AugmentConfig)} <= set(LEGACY_KEYS)  # its fields are the flags


def test_a_run_start_removes_temporaries_a_killed_save_left(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.k3j2x.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "metrics.jsonl"
    keep.write_text("")
    cfg = resolve_config("demo", output=str(out))
    prepare_output(cfg, DistContext(), out, resume=out / "last.pt")
    assert not stale.exists() and keep.exists()


def test_every_name_callers_import_is_there() -> None:
    import stl_bench.train as t

    for name in ("train", "LAST", "BEST", "METRICS_CSV", "METRICS_JSONL", "TrainConfig", "PRESETS", "resolve_config",
                 "field_docs", "resolve_data_root", "scan_splits", "build_model", "build_objective", "seed_step",
                 "seed_image", "resume_config", "MAY_CHANGE", "load_resume", "MetricsLog", "evaluate",
                 "ResumableSampler", "train_one_epoch", "build_run", "Run"):
        assert hasattr(t, name), name


def test_the_trainer_imports_no_cli_or_app_code() -> None:
    code = ("import sys, stl_bench.train; "
            "bad = [m for m in sys.modules if m.startswith(('stl_bench.commands', 'stl_bench.ui', 'gradio', 'ray'))]; "
            "print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
