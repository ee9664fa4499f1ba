"""The shared folder layer: layout errors are clear, single bad files are skipped and counted."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from stl_bench.data.folders import ImageDataset, collate_skip_bad, list_class_folders, scan_image_folder
from stl_bench.errors import StlBenchError


def _tree(root, classes=("b", "a"), per_class=2, mode="RGB"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, (12, 10), color=(i * 40) if mode == "L" else (i * 40, 10, 200)).save(root / c / f"{i}.png")
    return root


def test_scan_sorts_classes_and_labels(tmp_path):
    index = scan_image_folder(_tree(tmp_path))
    assert index.classes == ["a", "b"]
    assert [p.parent.name for p, _ in index.samples] == ["a", "a", "b", "b"]
    assert index.targets == [0, 0, 1, 1]


def test_numeric_folders_sort_as_numbers(tmp_path):
    _tree(tmp_path, classes=("10", "9", "1"), per_class=1)
    assert list_class_folders(tmp_path, numeric=True) == ["1", "9", "10"]
    assert list_class_folders(tmp_path) == ["1", "10", "9"]


def test_fixed_class_list_gives_the_heads_labels(tmp_path):
    _tree(tmp_path, classes=("n2", "n7"), per_class=1)
    index = scan_image_folder(tmp_path, classes=["n0", "n2", "n5", "n7"])
    assert index.targets == [1, 3]
    with pytest.raises(StlBenchError, match="not in the expected class list"):
        scan_image_folder(tmp_path, classes=["n0", "n2"])


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("file", "is a file"),
    ("empty", "no class sub-folders"),
    ("no_images", "no image files"),
])
def test_layout_errors(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "no_images":
        (root / "cls").mkdir(parents=True)
        (root / "cls" / "readme.txt").write_text("x")
    with pytest.raises(StlBenchError, match=message):
        scan_image_folder(root)


def test_bad_files_are_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "d", per_class=3)
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "b" / "2.png").write_bytes(b"not an image")
    Image.new("CMYK", (8, 8)).save(root / "b" / "cmyk.jpg")
    Image.new("RGBA", (8, 8)).save(root / "b" / "rgba.png")
    Image.new("L", (8, 8)).save(root / "b" / "gray.png")
    index = scan_image_folder(root)
    to_tensor = lambda im: torch.from_numpy(__import__("numpy").asarray(im.resize((8, 8)))).permute(2, 0, 1)
    loader = DataLoader(ImageDataset(index.samples, to_tensor), batch_size=4, collate_fn=collate_skip_bad,
                        num_workers=1)
    seen, bad = 0, []
    for batch in loader:
        assert batch.images.shape[1:] == (3, 8, 8)
        assert len(batch.images) == len(batch.targets) == len(batch.indices)
        seen += len(batch.images)
        bad += batch.bad_indices
    assert seen == len(index.samples) - 2
    assert sorted(index.samples[i][0].name for i in bad) == ["1.png", "2.png"]


def test_unknown_class_folder_check_is_one_function(tmp_path):
    from stl_bench.data.folders import check_known_classes

    check_known_classes(tmp_path, ["a", "b"], {"a", "b", "c"})  # all known: silent
    with pytest.raises(StlBenchError) as exc:
        check_known_classes(tmp_path, ["a", "x", "y"], ["a"], what="among the model's 1 classes",
                            fix="use another model", context="in-v2")
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path} (in-v2): 2 of its 3 class folders (x, y) are not among the model's 1 classes")
    assert msg.endswith("use another model")
