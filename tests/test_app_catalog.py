"""The app's model catalogue: demo discovery, roles, class names, EMA weights, failures."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import stl_bench  # noqa: F401  (registers the FAN models in timm)
from stl_bench.deploy.runner import RunnerInfo
from stl_bench.deploy.class_names import class_names_for
from stl_bench.ui.catalog import build_catalog, find_demo_checkpoints

NANO = "fan_nano_4_p4_32_token"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(path: Path, ema: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model(NANO, num_classes=10)
    obj = {"model": model.state_dict(), "arch": NANO, "num_classes": 10, "class_names": list("abcdefghij")}
    if ema:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["head.bias"] = torch.full_like(state["head.bias"], 7.0)  # tell the two weight sets apart
        obj["model_ema"] = state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_demo_discovery_prefers_best_and_accepts_both_suffixes(tmp_path):
    _save(tmp_path / "labeler" / "last.pt")
    _save(tmp_path / "labeler" / "best.pt")
    _save(tmp_path / "student" / "last.pth")
    (tmp_path / "baseline").mkdir()
    found = find_demo_checkpoints(tmp_path)
    assert found == {"labeler": tmp_path / "labeler" / "best.pt", "student": tmp_path / "student" / "last.pth"}
    catalog = build_catalog(demo_root=tmp_path)
    assert list(catalog.entries) == ["labeler", "student"]
    assert catalog.pair() is not None
    assert catalog.entries["labeler"].class_names == list("abcdefghij")
    assert "labeler: fan_nano_4_p4_32_token · torch · best.pt" == catalog.entries["labeler"].label


def test_teacher_and_models_get_roles_and_unique_keys(tmp_path):
    teacher = _save(tmp_path / "t.pth")
    first = _save(tmp_path / "a" / "model.pth")
    second = _save(tmp_path / "b" / "model.pth")
    catalog = build_catalog(models=[first, second], teacher=teacher, demo_root=tmp_path / "ignored")
    assert list(catalog.entries) == ["labeler", "student", "model"]
    assert catalog.entries["student"].source == first and catalog.entries["model"].role is None
    assert catalog.demo_root is None  # files were named: the demo folder is not searched


def test_ema_weights_are_used_when_present(tmp_path):
    path = _save(tmp_path / "run" / "best.pt", ema=True)
    auto = build_catalog(models=[path]).entries["best"].runner
    plain = build_catalog(models=[path], weights="model").entries["best"].runner
    assert torch.all(auto.model.head.bias == 7.0)
    assert not torch.all(plain.model.head.bias == 7.0)
    no_ema = _save(tmp_path / "other.pth")
    assert build_catalog(models=[no_ema]).entries["other"].runner is not None  # auto falls back
    forced = build_catalog(models=[no_ema], weights="ema").entries["other"]
    assert forced.runner is None and "EMA" in forced.error


def test_failures_are_kept_as_messages(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a pickle")
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": timm.create_model("fan_nano_4_p4_32_token", num_classes=3).state_dict(),
                "arch": NANO, "num_classes": 10}, wrong)
    catalog = build_catalog(models=[garbage, wrong, tmp_path / "missing.onnx"])
    errors = {k: e.error for k, e in catalog.entries.items()}
    assert all(errors.values()), errors
    assert "does not exist" in errors["missing"]
    assert catalog.first_key() == "garbage"  # none opened: the menu still lists them
    assert all("(failed to open)" in e.label for e in catalog.entries.values())


def test_class_names_from_checkpoint_imagenet_or_indices():
    def info(n, names=None):
        return RunnerInfo(name="m", backend="torch", num_classes=n, data_config={}, class_names=names)

    assert class_names_for(info(3, ["x", "y", "z"])) == ["x", "y", "z"]
    assert class_names_for(info(4)) == ["0", "1", "2", "3"]
    imagenet = class_names_for(info(1000))
    assert imagenet[1] == "goldfish"
    assert len(set(imagenet)) == 1000  # two "crane"s and two "maillot"s made unique
    assert [n for n in imagenet if n.startswith("crane")] == ["crane [134]", "crane [517]"]
    assert class_names_for(info(2, ["same", "same"])) == ["same [0]", "same [1]"]


def test_empty_catalogue_names_the_demo_command(tmp_path):
    catalog = build_catalog(demo_root=tmp_path / "runs")
    assert catalog.entries == {} and catalog.pair() is None
    assert "stl-bench demo" in catalog.empty_message and str(tmp_path / "runs") in catalog.empty_message
    with pytest.raises(Exception, match="stl-bench demo"):
        catalog.get("labeler")
