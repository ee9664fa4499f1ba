"""The built-in demo data: sklearn's digits written once as a train/val ImageFolder tree."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from stl_bench.data.demo import CLASS_NAMES, default_demo_root, ensure_demo_data
from stl_bench.data.folders import scan_image_folder
from stl_bench.errors import StlBenchError


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")


def test_tree_has_all_digits_split_80_20_stratified(demo_root: Path) -> None:
    train = scan_image_folder(demo_root / "train")
    val = scan_image_folder(demo_root / "val")
    assert train.classes == CLASS_NAMES == val.classes
    assert len(train.samples) + len(val.samples) == 1797
    assert len(val.samples) == 360  # sklearn rounds 20% of 1797 up
    for c in range(10):
        n_train, n_val = train.targets.count(c), val.targets.count(c)
        assert 0.17 < n_val / (n_train + n_val) < 0.23, f"class {c} is not split 80/20"
    assert not {p.name for p, _ in train.samples} & {p.name for p, _ in val.samples}


def test_images_are_32px_rgb_with_ink(demo_root: Path) -> None:
    path = next((demo_root / "train" / "7").glob("*.png"))
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (32, 32)
        lo, hi = img.convert("L").getextrema()
    assert lo < 20 and hi > 200  # black background, bright strokes


def test_second_call_reuses_the_tree(demo_root: Path) -> None:
    stamp = {p: p.stat().st_mtime_ns for p in (demo_root / "val" / "3").glob("*.png")}
    assert ensure_demo_data(demo_root) == demo_root
    assert {p: p.stat().st_mtime_ns for p in (demo_root / "val" / "3").glob("*.png")} == stamp
    assert not [p for p in demo_root.parent.iterdir() if p.name.startswith(f".{demo_root.name}-")]


def test_env_var_moves_the_default_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STL_BENCH_DATA", str(tmp_path))
    assert default_demo_root() == tmp_path / "demo_digits"


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StlBenchError, match="not a complete demo data folder"):
        ensure_demo_data(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
