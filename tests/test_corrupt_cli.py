"""`stl-bench corrupt`: layout, resume, determinism and the messages for bad input."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stl_bench.cli import main
from stl_bench.errors import StlBenchError
from stl_bench.io import is_temporary

FAST = ["--corruptions", "gaussian_noise,fog", "--severities", "1,3", "--workers", "0", "--no-progress"]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """2 classes x 2 images of 32 x 32 (one PNG, one JPEG per class)."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i, ext in enumerate((".png", ".jpg")):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / cls / f"img{i}{ext}")
    return src


def _outputs(dst: Path) -> list[str]:
    return sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())


def test_layout_and_resume(tree, tmp_path, caplog):
    dst = tmp_path / "out"
    assert main(["corrupt", str(tree), str(dst), "--size", "0", *FAST]) == 0
    expected = sorted(
        f"{c}/{s}/{cls}/img{i}.JPEG"
        for c in ("gaussian_noise", "fog") for s in (1, 3) for cls in ("cat", "dog") for i in (0, 1)
    )
    assert _outputs(dst) == expected
    sample = Image.open(dst / "fog" / "3" / "dog" / "img1.JPEG")
    assert sample.format == "JPEG" and sample.size == (32, 32)

    # A second run writes nothing: every output exists.
    stamps = {p: os.stat(dst / p).st_mtime_ns for p in expected}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["corrupt", str(tree), str(dst), "--size", "0", *FAST]) == 0
    assert "nothing to do" in caplog.text
    assert {p: os.stat(dst / p).st_mtime_ns for p in expected} == stamps

    # A lost file is rewritten, identical (per-sample seeds), and nothing else is touched.
    lost = dst / "gaussian_noise" / "3" / "cat" / "img0.JPEG"
    before = lost.read_bytes()
    lost.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["corrupt", str(tree), str(dst), "--size", "0", "--batch-size", "1", *FAST]) == 0
    assert "1 outputs to write" in caplog.text
    assert lost.read_bytes() == before
    assert not [p for p in dst.rglob("*.tmp")]
    assert not [p for p in dst.rglob(".*") if is_temporary(p)]


def test_library_call_and_stale_temporaries_removed(tree, tmp_path):
    """The tree writer is a library call; a killed run's temporaries are removed on start."""
    from stl_bench.data.corruptions.tree import TreeRequest, write_imagenet_c_tree

    dst = tmp_path / "out"
    stale = dst / "fog" / "1" / "cat" / ".img0.JPEG.k3j2x.tmp.JPEG"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a jpeg")
    request = TreeRequest(tree, dst, ["fog"], [1], size=0, workers=0, progress=False)
    report = write_imagenet_c_tree(request)
    assert (report.images, report.written, report.already, report.unreadable) == (4, 4, 0, [])
    assert not stale.exists()
    assert _outputs(dst) == sorted(f"fog/1/{c}/img{i}.JPEG" for c in ("cat", "dog") for i in (0, 1))
    again = write_imagenet_c_tree(request)
    assert (again.written, again.already) == (0, 4)
    with pytest.raises(StlBenchError, match="--batch-size must be at least 1"):
        TreeRequest(tree, dst, ["fog"], [1], batch_size=0)


def test_imagenet_c_geometry_by_default(tree, tmp_path):
    dst = tmp_path / "out"
    args = ["corrupt", str(tree), str(dst), "--corruptions", "contrast", "--severities", "2",
            "--workers", "0", "--no-progress"]
    assert main(args) == 0
    assert Image.open(dst / "contrast" / "2" / "cat" / "img0.JPEG").size == (224, 224)
    assert main([*args[:3], "--corruptions", "contrast", "--severities", "5", "--size", "24",
                 "--workers", "0", "--no-progress"]) == 0
    assert Image.open(dst / "contrast" / "5" / "cat" / "img0.JPEG").size == (24, 24)


def test_unreadable_images_are_skipped_and_reported(tree, tmp_path, caplog):
    (tree / "cat" / "broken.png").write_bytes(b"not an image")
    dst = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(["corrupt", str(tree), str(dst), "--size", "0", *FAST]) == 0
    assert "skipped 1 unreadable image(s)" in caplog.text and "broken.png" in caplog.text
    assert len(_outputs(dst)) == 16
    assert not (dst / "fog" / "1" / "cat" / "broken.JPEG").exists()


def _error(capsys, argv: list[str], code: int = 1) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:  # a flag refused while parsing: code 2
        rc = exc.code
    assert rc == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " if code == 1 else "stl-bench corrupt: error: ") and "\n" not in err
    return err


def test_bad_input_messages(tree, tmp_path, capsys):
    dst = str(tmp_path / "out")
    assert "does not exist" in _error(capsys, ["corrupt", str(tmp_path / "nowhere"), dst, *FAST], 2)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    assert "no image files" in _error(capsys, ["corrupt", str(empty), dst, *FAST])
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    assert "no class sub-folders" in _error(capsys, ["corrupt", str(flat), dst, *FAST])
    msg = _error(capsys, ["corrupt", str(tree), dst, "--corruptions", "gausian_noise", "--workers", "0"], 2)
    assert "unknown corruption 'gausian_noise'" in msg and "did you mean gaussian_noise" in msg
    assert "1..5" in _error(capsys, ["corrupt", str(tree), dst, "--severities", "0,6", "--workers", "0"], 2)
    assert "inside SRC" in _error(capsys, ["corrupt", str(tree), str(tree / "out"), *FAST])
    (tree / "dog" / "img0.jpeg").write_bytes((tree / "dog" / "img1.jpg").read_bytes())
    assert "would both be written" in _error(capsys, ["corrupt", str(tree), dst, *FAST])


def test_groups_and_help(tree, tmp_path, capsys):
    from stl_bench.commands.corrupt import _parse_corruptions

    assert len(_parse_corruptions("all")) == 19
    assert len(_parse_corruptions("standard")) == 15
    assert _parse_corruptions("extra,fog,fog") == ["speckle_noise", "gaussian_blur", "spatter", "saturate", "fog"]
    with pytest.raises(SystemExit) as exc:
        main(["corrupt", "--help"])
    assert exc.value.code == 0
    assert "DST/<corruption>/<severity>/<class>/<file>.JPEG" in capsys.readouterr().out


def test_unwritable_dst_is_refused_before_any_image_is_decoded(tree, tmp_path, capsys, monkeypatch):
    import stl_bench.data.corruptions.tree as tree_module

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(tree_module, "_corrupt_and_write", lambda *a: pytest.fail("work started"))
    msg = _error(capsys, ["corrupt", str(tree), str(blocker / "out"), *FAST], code=2)
    assert "cannot write" in msg and str(blocker) in msg
