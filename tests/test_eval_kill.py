"""`stl-bench eval` SIGKILLed at chosen moments, then run again: the same cells, CSV and row.

The moments are exact: `STL_BENCH_TEST_KILL_AFTER=n` makes the process SIGKILL itself right
after its n-th file is in place (`stl_bench.io`), and `STL_BENCH_EVAL_SAVE_EVERY_S=0` makes
a pass save its running sums after every batch. The run: IN-1K (7 images) and on-the-fly
IN-C (2 corruptions x 2 severities) in batches of 2, so its files, in order, are:

    1-3  in1k progress (after batches 1..3)       4      the in1k cell
    5-7  in-c progress (after batches 1..3)       8-11   the four in-c cells
    12   results_long.csv                         13     the leaderboard

After each kill the test also leaves the temporaries a kill in mid-write would leave, and
the re-run must remove them. Counts are compared exactly (floats included).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stl_bench.io import is_temporary

REPO = Path(__file__).resolve().parents[1]
VARYING = ("date", "images_per_s")  # the clock's columns: the only ones allowed to differ


def _run(case: dict, out: Path, lb: Path, kill: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "STL_BENCH_EVAL_SAVE_EVERY_S": "0" if kill is not None else "60"}
    env.pop("STL_BENCH_TEST_KILL_AFTER", None)
    if kill is not None:
        env["STL_BENCH_TEST_KILL_AFTER"] = str(kill)
    cmd = [sys.executable, "-m", "stl_bench", "eval", str(case["ckpt"]), "--in1k", str(case["val"]),
           "--in-c", str(case["val"]), "--inc-on-the-fly", "--inc-corruptions", "gaussian_noise,contrast",
           "--inc-severities", "1,3", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress",
           "--no-figure", "--out", str(out), "--leaderboard", str(lb)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _results(out: Path, lb: Path) -> dict:
    cells = {p.name: json.loads(p.read_text())["counts"] for p in sorted((out / "cells").glob("*.json"))}
    row = pd.read_csv(lb, dtype=str).iloc[0].drop(list(VARYING)).to_dict()
    return {"cells": cells, "long": (out / "results_long.csv").read_text(), "row": row}


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_checkpoint) -> dict:
    """Data, a tiny checkpoint and the results of an uninterrupted run."""
    root = tmp_path_factory.mktemp("evalkill")
    rng = np.random.default_rng(0)
    for i in range(7):
        path = root / "val" / str(i % 3) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    case = {"val": root / "val", "ckpt": tiny_checkpoint(root / "tiny.pth", 0, arch="alexnet_mini_32")}
    done = _run(case, root / "ref", root / "ref.csv")
    assert done.returncode == 0, done.stderr
    case["expected"] = _results(root / "ref", root / "ref.csv")
    assert len(case["expected"]["cells"]) == 5
    return case


def _leave_half_files(out: Path) -> list[Path]:
    """What a kill in the middle of a write leaves: a temporary beside each kind of file."""
    half = [out / "cells" / ".in-c__contrast__3.json.k1ll.tmp", out / "cells" / "partial" / ".in-c.x.json.k1ll.tmp",
            out / ".results_long.csv.k1ll.tmp", out / ".ce_per_corruption.png.k1ll.tmp"]
    for path in half:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    return half


def _progress(out: Path, suite: str) -> int | None:
    saved = sorted((out / "cells" / "partial").glob(f"{suite}.*.json"))
    return json.loads(saved[0].read_text())["batches"] if saved else None


def _kill_and_resume(case: dict, tmp_path: Path, kill: int) -> dict:
    out, lb = tmp_path / "run", tmp_path / "lb.csv"
    killed = _run(case, out, lb, kill=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = {"cells": sorted(p.stem for p in (out / "cells").glob("*.json")),
             "in1k": _progress(out, "in1k"), "in-c": _progress(out, "in-c"), "lb": lb.exists(),
             "long": (out / "results_long.csv").exists()}
    half = _leave_half_files(out)
    resumed = _run(case, out, lb)
    assert resumed.returncode == 0, resumed.stderr
    state["log"] = resumed.stderr
    assert not [p for p in half if p.exists()]
    assert not [p for p in out.rglob("*") if is_temporary(p)] and not (out / "cells" / "partial").exists()
    assert _results(out, lb) == case["expected"]
    return state


def test_killed_inside_the_on_the_fly_pass_resumes_from_the_saved_batch(case, tmp_path):
    state = _kill_and_resume(case, tmp_path, kill=6)
    assert state["cells"] == ["in1k"] and state["in-c"] == 2
    assert re.search(r"in-c\.\w+\.r0of1: resuming after batch 2", state["log"])


@pytest.mark.slow
@pytest.mark.parametrize("kill,cells,in1k,inc", [
    (2, [], 2, None),                       # inside the plain in1k pass
    (4, ["in1k"], 3, None),                 # the in1k cell saved, its progress not yet forgotten
    (9, ["in-c__gaussian_noise__1", "in-c__gaussian_noise__3", "in1k"], None, 3),   # 2 of 4 in-c cells saved
])
def test_killed_at_other_moments_resumes_bit_for_bit(case, tmp_path, kill, cells, in1k, inc):
    state = _kill_and_resume(case, tmp_path, kill=kill)
    assert (state["cells"], state["in1k"], state["in-c"]) == (cells, in1k, inc)


@pytest.mark.slow
def test_killed_between_the_csv_and_the_leaderboard(case, tmp_path):
    state = _kill_and_resume(case, tmp_path, kill=12)
    assert len(state["cells"]) == 5 and state["long"] and not state["lb"]
