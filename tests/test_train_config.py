"""The training configuration: presets match the official recipe, flags come with their help."""
from __future__ import annotations

import pytest
import timm

import stl_bench  # noqa: F401
from stl_bench.cli import build_parser
from stl_bench.errors import StlBenchError
from stl_bench.stl.gumbel import LABEL_MODES
from stl_bench.train.config import PRESETS, TrainConfig, field_docs, flag_fields, resolve_config

# DESIGN.md section 1: size -> (model, batch per GPU, lr, warmup, drop path)
OFFICIAL = {
    "fan_tiny_hybrid": ("fan_tiny_8_p4_hybrid_token", 128, 2e-3, 5, 0.05),
    "fan_small_hybrid": ("fan_small_12_p4_hybrid_token", 128, 2e-3, 5, 0.25),
    "fan_base_hybrid": ("fan_base_16_p4_hybrid_token", 64, 4e-3, 10, 0.35),
    "fan_large_hybrid": ("fan_large_16_p4_hybrid_token", 64, 4e-3, 10, 0.45),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_a_valid_config_for_a_registered_model(preset: str) -> None:
    cfg = resolve_config(preset)
    assert timm.is_model(cfg.model) and cfg.model.endswith("_token")


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_official_recipe(preset: str) -> None:
    cfg = resolve_config(preset)
    model, batch, lr, warmup, drop_path = OFFICIAL[preset]
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.warmup_epochs, cfg.drop_path) == (model, batch, lr, warmup, drop_path)
    assert (cfg.opt, cfg.weight_decay, cfg.epochs, cfg.cooldown_epochs, cfg.warmup_lr, cfg.min_lr) == (
        "adamw", 0.05, 350, 10, 1e-6, 1e-6)
    assert (cfg.aa, cfg.reprob, cfg.remode, cfg.mixup, cfg.cutmix, cfg.mixup_switch_prob, cfg.smoothing) == (
        "rand-m9-mstd0.5-inc1", 0.3, "pixel", 0.8, 1.0, 0.5, 0.1)
    assert (cfg.model_ema_decay, cfg.amp, cfg.seed, cfg.clip_grad) == (0.99992, "on", 42, None)
    assert (cfg.label_mode, cfg.gumbel_tau, cfg.token_smoothing, cfg.cls_weight, cfg.dense_weight) == (
        "gumbel", 1.0, 0.1, 1.0, 1.0)


def test_flags_override_the_preset() -> None:
    cfg = resolve_config("fan_small_hybrid", lr=1e-3, stage="student")
    assert cfg.lr == 1e-3 and cfg.stage == "student" and cfg.batch_size == 128


def test_every_field_is_documented_and_a_flag() -> None:
    docs = field_docs(TrainConfig)
    assert set(docs) == {f.name for f, _ in flag_fields()}
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f, _ in flag_fields():
        assert f"--{f.name.replace('_', '-')}" in help_text
    assert " ".join(docs["label_mode"].split()[:3]) in " ".join(help_text.split())


def test_config_round_trips_through_json() -> None:
    cfg = resolve_config("demo", stage="student", teacher="t.pt")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_label_modes_agree() -> None:
    for mode in LABEL_MODES:
        resolve_config(label_mode=mode)
    with pytest.raises(StlBenchError, match="unknown preset"):
        resolve_config("fan_huge")
