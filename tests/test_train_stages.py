"""End to end on the demo digits with the tiny FAN: stage 1, offline labels, stage 2 (online
and offline), and the baseline, each through `stl-bench` and each with its loss going down."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stl_bench.cli import main
from stl_bench.data.demo import ensure_demo_data

# Small and quick: 64 images, 4 steps of 16 per epoch, light augmentation, no mixing.
FAST = [
    "--preset", "demo", "--batch-size", "16", "--epochs", "3",
    "--warmup-epochs", "0", "--aa", "none", "--reprob", "0", "--mixup", "0", "--workers", "0",
    "--val-split", "", "--no-progress", "--lr", "3e-3", "--model-ema-decay", "0.9", "--threads", "1",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A 64-image slice of the demo digits (the same loading code, a fraction of the time)."""
    full = ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")
    small = tmp_path_factory.mktemp("demo_small")
    for digit in range(10):
        (small / "train" / str(digit)).mkdir(parents=True)
        for path in sorted((full / "train" / str(digit)).glob("*.png"))[: 7 if digit < 4 else 6]:
            shutil.copy(path, small / "train" / str(digit) / path.name)
    return small


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _loss_went_down(run: Path) -> None:
    rows = _rows(run)
    assert len(rows) == 3
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1, [r["train_loss"] for r in rows]


@pytest.fixture(scope="module")
def labeler(demo: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "labeler"
    assert main(["train", *FAST, "--stage", "labeler", "--data", str(demo), "--output", str(out)]) == 0
    return out


def test_stage1_labeler(labeler: Path) -> None:
    _loss_went_down(labeler)
    rows = _rows(labeler)
    assert rows[-1]["train_loss_token"] < rows[0]["train_loss_token"]
    ckpt = torch.load(labeler / "last.pt", weights_only=True)
    expected = {"model", "model_ema", "arch", "num_classes", "model_kwargs", "class_names", "optimizer", "scaler",
                "scheduler", "epoch", "step", "world_size", "epoch_sums", "config", "stl_bench_version"}
    assert set(ckpt) == expected
    assert ckpt["arch"] == "fan_nano_4_p4_32_token" and ckpt["num_classes"] == 10
    assert ckpt["class_names"] == [str(d) for d in range(10)] and ckpt["epoch"] == 3 and ckpt["step"] == 12
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert (labeler / "metrics.csv").read_text().startswith("epoch,")


def test_the_lead_loader_reads_our_checkpoint(labeler: Path) -> None:
    from stl_bench.fan.factory import create_model_from_checkpoint

    model, info = create_model_from_checkpoint(labeler / "last.pt", use_ema=True)
    assert info.arch == "fan_nano_4_p4_32_token" and info.num_classes == 10 and model.has_token_head


def test_stage2_online(labeler: Path, demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    assert main(["train", *FAST, "--stage", "student", "--teacher", str(labeler / "last.pt"),
                 "--data", str(demo), "--output", str(out)]) == 0
    _loss_went_down(out)


def test_stage2_offline(labeler: Path, demo: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    assert main(["label", "--teacher", str(labeler / "last.pt"), "--data", str(demo), "--output", str(labels),
                 "--topk", "3", "--workers", "0", "--no-progress"]) == 0
    meta = json.loads((labels / "meta.json").read_text())
    assert meta["grid"] == [8, 8] and meta["topk"] == 3 and len(meta["files"]) == 64
    out = tmp_path / "student"
    assert main(["train", *FAST, "--stage", "student", "--token-labels", str(labels),
                 "--data", str(demo), "--output", str(out)]) == 0
    _loss_went_down(out)


def test_baseline(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    assert main(["train", *FAST, "--stage", "baseline", "--data", str(demo), "--output", str(out)]) == 0
    _loss_went_down(out)
    assert "train_loss_token" not in _rows(out)[0]


def test_stage2_teacher_sees_the_unmixed_clean_view(labeler: Path, demo: Path, tmp_path: Path, monkeypatch) -> None:
    from stl_bench.stl.objectives import OnlineTeacher

    seen: list = []
    original = OnlineTeacher.__call__

    def spy(self, batch):
        seen.append((batch.images.detach().clone(), batch.clean.clone(), self.teacher.training))
        return original(self, batch)

    monkeypatch.setattr(OnlineTeacher, "__call__", spy)
    # mixup on every batch; no colour ops and no erasing, so before mixing student view == clean view
    assert main(["train", *FAST, "--stage", "student", "--teacher", str(labeler / "last.pt"), "--mixup", "1.0",
                 "--mixup-prob", "1.0", "--cutmix", "0", "--epochs", "1", "--steps-per-epoch", "1",
                 "--data", str(demo), "--output", str(tmp_path / "s")]) == 0
    images, clean, teacher_training = seen[0]
    assert not teacher_training
    mixed_pair = clean.flip(0)
    # images = lam * clean + (1 - lam) * clean.flip(0): solve for lam, check the fit
    a, r = (clean - mixed_pair).flatten(), (images - mixed_pair).flatten()
    lam = float((a @ r) / (a @ a))
    assert 0.0 < lam < 1.0 and not torch.allclose(images, clean)
    assert torch.allclose(images, lam * clean + (1 - lam) * mixed_pair, atol=1e-4)


def test_amp_channels_last_accumulation_and_clipping(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "amp"
    assert main(["train", *FAST, "--stage", "labeler", "--amp", "on", "--amp-dtype", "bfloat16", "--channels-last",
                 "--grad-accum-steps", "2", "--clip-grad", "1.0", "--epochs", "1", "--batch-size", "8",
                 "--data", str(demo), "--output", str(out)]) == 0
    row = _rows(out)[0]
    # 64 images / (8 x 2 accumulated) = 4 optimizer steps, every image seen once
    assert row["step"] == 4 and row["train_images"] == 64
