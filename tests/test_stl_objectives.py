"""The stage objectives and the labeler checks that run before training starts."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import stl_bench  # noqa: F401  (registers the FAN models)
from stl_bench.errors import StlBenchError
from stl_bench.fan.model import TokenPairForward
from stl_bench.stl.gumbel import smooth
from stl_bench.stl.objectives import (
    BaselineObjective,
    LabelerObjective,
    OnlineTeacher,
    StepInputs,
    StudentObjective,
    load_teacher,
)

CLASSES = [str(d) for d in range(10)]


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (-target * logits.log_softmax(-1)).sum(-1).mean()


def _nano(num_classes: int = 10, token: bool = True) -> torch.nn.Module:
    name = "fan_nano_4_p4_32_token" if token else "fan_nano_4_p4_32"
    return timm.create_model(name, num_classes=num_classes)


def save_teacher(path: Path, arch: str = "fan_nano_4_p4_32_token", num_classes: int = 10,
                 class_names: list[str] | None = None) -> Path:
    """A randomly initialised labeler in our training-checkpoint format."""
    model = timm.create_model(arch, num_classes=num_classes)
    torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "arch": arch, "num_classes": num_classes,
                "model_kwargs": {}, "class_names": class_names or [str(i) for i in range(num_classes)],
                "optimizer": {}, "scaler": {}, "scheduler": {}, "epoch": 1, "step": 1, "rng": {}, "config": {},
                "stl_bench_version": stl_bench.__version__}, path)
    return path


def _batch(b: int = 4) -> StepInputs:
    targets = smooth(torch.nn.functional.one_hot(torch.arange(b) % 10, 10).float(), 0.1)
    return StepInputs(images=torch.randn(b, 3, 32, 32), targets=targets, clean=torch.randn(b, 3, 32, 32))


def test_labeler_loss_is_class_plus_mean_token_loss() -> None:
    model = _nano()
    batch = _batch()
    loss, parts = LabelerObjective()(TokenPairForward(model), batch)
    cls_logits, tokens = model.forward_tokens(batch.images)
    expect = _soft_ce(cls_logits, batch.targets) + _soft_ce(tokens.mean(1), batch.targets)
    assert torch.allclose(loss, expect, atol=1e-5)
    assert set(parts) == {"loss_cls", "loss_token"}
    loss.backward()
    assert model.aux_head.weight.grad.abs().sum() > 0


def test_student_loss_uses_the_teacher_on_the_clean_view() -> None:
    torch.manual_seed(0)
    student, teacher = _nano().train(), _nano()
    batch = _batch()
    source = OnlineTeacher(teacher, mode="argmax", smoothing=0.1)
    loss, _ = StudentObjective(source, cls_weight=1.0, dense_weight=0.5)(TokenPairForward(student), batch)
    cls_logits, tokens = student.forward_tokens(batch.images)
    t_tokens = teacher.forward_tokens(batch.clean)[1]
    labels = smooth(torch.nn.functional.one_hot(t_tokens.argmax(-1), 10).float(), 0.1)
    expect = _soft_ce(cls_logits, batch.targets) + 0.5 * _soft_ce(tokens.reshape(-1, 10), labels.reshape(-1, 10))
    assert torch.allclose(loss, expect, atol=1e-5)
    loss.backward()
    # the official self-labeling code leaves the student in eval mode: ours stays in train mode
    assert student.training and not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_baseline_on_a_plain_model() -> None:
    model = _nano(token=False)
    batch = _batch()
    loss, parts = BaselineObjective()(model, batch)
    assert torch.allclose(loss, _soft_ce(model(batch.images), batch.targets), atol=1e-5)


def test_token_stage_on_a_plain_model_is_a_clear_error() -> None:
    with pytest.raises(StlBenchError, match="token-label model"):
        LabelerObjective()(_nano(token=False), _batch())


def test_load_teacher_accepts_a_matching_labeler(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "t.pt")
    teacher = load_teacher(path, 10, CLASSES, (8, 8), (32, 32), torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_of_another_class_count(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "t.pt", num_classes=5)
    with pytest.raises(StlBenchError, match="predicts 5 classes but the training data has 10"):
        load_teacher(path, 10, CLASSES, (8, 8), (32, 32), torch.device("cpu"))


def test_teacher_of_another_class_order(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "t.pt", class_names=CLASSES[::-1])
    with pytest.raises(StlBenchError, match="class order"):
        load_teacher(path, 10, CLASSES, (8, 8), (32, 32), torch.device("cpu"))


def test_teacher_of_another_token_grid(tmp_path: Path) -> None:
    # patch 16: a 2x2 grid at 32 px where the student has 8x8
    path = save_teacher(tmp_path / "t.pt", arch="fan_tiny_12_p16_224_token")
    with pytest.raises(StlBenchError, match="2x2 token grid .* student has 8x8"):
        load_teacher(path, 10, CLASSES, (8, 8), (32, 32), torch.device("cpu"))


def test_teacher_without_token_head(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "t.pt", arch="fan_nano_4_p4_32")
    with pytest.raises(StlBenchError, match="no token-label head"):
        load_teacher(path, 10, CLASSES, (8, 8), (32, 32), torch.device("cpu"))
