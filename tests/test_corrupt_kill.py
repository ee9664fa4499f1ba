"""`stl-bench corrupt` SIGKILLed at chosen moments, then run again: the same tree, byte for byte.

`STL_BENCH_TEST_KILL_AFTER=n` makes the process SIGKILL itself right after its n-th file is
in place (`stl_bench.io`). The tree: 5 images x 2 corruptions x 2 severities = 20 JPEGs,
written in batches of 2 by one writing thread (`--workers 0`), so a kill after file n
leaves exactly n of them. After each kill the test also leaves the temporaries a kill in
mid-write would leave (the re-run must remove them and write those files whole).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CELLS = [(c, s) for c in ("gaussian_noise", "fog") for s in (1, 3)]


def _run(src: Path, dst: Path, kill: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("STL_BENCH_TEST_KILL_AFTER", None)
    if kill is not None:
        env["STL_BENCH_TEST_KILL_AFTER"] = str(kill)
    cmd = [sys.executable, "-m", "stl_bench", "corrupt", str(src), str(dst), "--size", "0",
           "--corruptions", "gaussian_noise,fog", "--severities", "1,3", "--batch-size", "2", "--workers", "0",
           "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _tree(dst: Path) -> dict[str, bytes]:
    """Every file under `dst`, hidden ones included, by relative path."""
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in sorted(dst.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """A source tree and the tree an uninterrupted run writes from it."""
    root = tmp_path_factory.mktemp("corruptkill")
    rng = np.random.default_rng(1)
    for i in range(5):
        path = root / "src" / ("cat", "dog")[i % 2] / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    done = _run(root / "src", root / "ref")
    assert done.returncode == 0, done.stderr
    expected = _tree(root / "ref")
    assert len(expected) == 20
    return {"src": root / "src", "expected": expected}


def _leave_half_files(dst: Path) -> list[Path]:
    half = [dst / c / str(s) / "cat" / f".img0.JPEG.k1ll{c[0]}{s}.tmp.JPEG" for c, s in CELLS]
    for path in half:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8 half a jpeg")
    return half


def _kill_then_finish(case: dict, dst: Path, kills: list[int]) -> list[int]:
    """Kill a run after each count in `kills` (each re-run resumes the last), then finish."""
    left = []
    for kill in kills:
        killed = _run(case["src"], dst, kill=kill)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left.append(len(_tree(dst)))
        _leave_half_files(dst)
    done = _run(case["src"], dst)
    assert done.returncode == 0, done.stderr
    assert "removed 4 unfinished file(s)" in done.stderr
    assert _tree(dst) == case["expected"]      # same names, same bytes, no temporaries
    return left


def test_killed_midway_resumes_to_the_same_bytes(case, tmp_path):
    assert _kill_then_finish(case, tmp_path / "out", [9]) == [9]


@pytest.mark.slow
@pytest.mark.parametrize("kills", [[1], [19], [7, 7]])
def test_killed_at_other_moments_resumes_to_the_same_bytes(case, tmp_path, kills):
    """After the first file, before the last, and killed twice (the second run resumes the first)."""
    left = _kill_then_finish(case, tmp_path / "out", kills)
    assert left == list(np.cumsum(kills))
