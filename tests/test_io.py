"""The one atomic writer: whole or not at all, modes like open(), stale temporaries found."""
from __future__ import annotations

import os
import stat

import pytest

from stl_bench.errors import StlBenchError
from stl_bench.io import (atomic_folder, atomic_open, atomic_path, copy_file, current_umask, ensure_writable_folder,
                          is_temporary, remove_stale_temporaries, save_torch, write_bytes, write_text)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_whole_files_and_leaves_no_temporary(tmp_path):
    write_text(tmp_path / "a.csv", "x\n1\n")
    write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.csv").read_text() == "x\n1\n"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "sub"]


def test_a_failing_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = write_text(tmp_path / "results.csv", "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        assert _mode(write_text(tmp_path / "shared.csv", "x")) == 0o644
        os.umask(0o077)
        assert _mode(write_text(tmp_path / "private.csv", "x")) == 0o600
    finally:
        os.umask(old)


def test_replaced_files_keep_their_mode(tmp_path):
    target = tmp_path / "leaderboard.csv"
    target.write_text("old")
    target.chmod(0o640)
    old = os.umask(0o077)
    try:
        write_text(target, "new")
    finally:
        os.umask(old)
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_path_writers_keep_the_suffix_and_torch_files_load(tmp_path):
    import torch

    with atomic_path(tmp_path / "m.onnx", suffix=".onnx") as tmp:
        assert tmp.name.endswith(".onnx") and is_temporary(tmp)
        tmp.write_bytes(b"graph")
    assert (tmp_path / "m.onnx").read_bytes() == b"graph"
    save_torch({"w": torch.arange(3)}, tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt")["w"].tolist() == [0, 1, 2]
    copy_file(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()


def test_folders_appear_whole(tmp_path):
    final = tmp_path / "digits"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("1")
            raise RuntimeError("killed")
    assert not final.exists() and not any(tmp_path.iterdir())
    final.mkdir()  # an empty folder the user made is replaced
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"


def test_stale_temporaries_are_found_by_name_only(tmp_path):
    (tmp_path / ".cells.csv.k3j2.tmp").write_text("half")
    (tmp_path / ".model.onnx.abcd.tmp.onnx").write_text("half")
    (tmp_path / ".hidden_config").write_text("keep")
    (tmp_path / "result.tmp.csv").write_text("keep")
    nested = tmp_path / "gaussian_noise" / "3"
    nested.mkdir(parents=True)
    (nested / ".img.JPEG.x1.tmp").write_text("half")
    assert remove_stale_temporaries(tmp_path) == 2
    assert remove_stale_temporaries(tmp_path, recursive=True) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".hidden_config", "result.tmp.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_is_one_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StlBenchError, match="cannot write .*locked"):
            write_text(locked / "x.csv", "x")
        with pytest.raises(StlBenchError, match="cannot write the output folder .*locked"):
            ensure_writable_folder(locked)
    finally:
        locked.chmod(0o700)


def test_an_output_under_a_file_is_one_clear_error(tmp_path):
    blocker = write_text(tmp_path / "not_a_folder", "x")  # what root cannot write into either
    with pytest.raises(StlBenchError, match="cannot write .*not_a_folder"):
        write_text(blocker / "x.csv", "x")
    with pytest.raises(StlBenchError, match="cannot write the output folder .*not_a_folder"):
        ensure_writable_folder(blocker / "run")
    with pytest.raises(StlBenchError, match="cannot write .*not_a_folder"):
        with atomic_folder(blocker / "tree"):
            pass
