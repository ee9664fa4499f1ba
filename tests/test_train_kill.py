"""Kill -9 a training run at chosen moments, resume it with `--output X --resume` alone, and
get the uninterrupted run's final state bit for bit: weights, EMA, optimizer, scaler,
scheduler, position, best.pt and the metrics rows (all but their timings).

Each kill lands exactly where it is asked for through the trainer's test-only hook
(`STL_BENCH_TEST_KILL=<moment>:<step>`, stl_bench/train/faults.py): after an optimizer
step, while last.pt is being written (its temporary complete, not yet renamed), or right
after it is in place. Killed runs are chained: each resume is killed again at a later
moment, so every resume but the last starts from a resumed run.

The default suite forks the test process to run each killed CLI call (the same `main`
as `python -m stl_bench train`, without paying the interpreter and import start-up each
time); the slow variant runs real `python -m stl_bench train` subprocesses.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from stl_bench.cli import main
from stl_bench.data.demo import ensure_demo_data
from stl_bench.train.faults import ENV

# 3 epochs of 5 steps; checkpoints mid-epoch at steps 2, 4, 6, 8, 12, 14 and at each epoch's
# end (5, 10, 15). The demo recipe keeps every random draw: crops, RandAugment, erasing,
# mixup, and drop path is switched on.
RECIPE = ["--preset", "demo", "--batch-size", "16", "--epochs", "3", "--steps-per-epoch", "5",
          "--checkpoint-every", "2", "--drop-path", "0.1", "--model-ema-decay", "0.9", "--no-progress",
          "--threads", "1"]
TIMING = {"images_per_s", "epoch_time_s"}
# (kill moment, the step of last.pt it leaves: None = no checkpoint yet, only config.json)
# before the first checkpoint; right before one; while the epoch's end writes best.pt and last.pt;
# right after an epoch's end; mid-epoch
BASELINE_KILLS = [("step:1", None), ("step:4", 2), ("saving:5", 4), ("saved:10", 10), ("step:13", 12)]
STUDENT_KILLS = [("step:1", None), ("step:3", 2), ("saving:4", 2), ("saved:8", 8)]
Launch = Callable[[list[str], str], int]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """96 training and 20 validation digits (the demo's loading code, a fraction of its time)."""
    full = ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")
    small = tmp_path_factory.mktemp("digits_small")
    for split, per_class in (("train", 10), ("val", 2)):
        for digit in range(10):
            (small / split / str(digit)).mkdir(parents=True)
            for path in sorted((full / split / str(digit)).glob("*.png"))[:per_class]:
                shutil.copy(path, small / split / str(digit) / path.name)
    return small


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_checkpoint) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "labeler.pt", seed=3)


def _child(argv: list[str], kill: str) -> None:
    # Data-loader workers forked from this process, as from `stl-bench train` itself: started
    # through the forkserver (this process's inherited default), their parent would be the
    # server, so PyTorch's watchdog (it waits for the parent to change) would never see this
    # process die, and each SIGKILL below would leave them running for good.
    multiprocessing.set_start_method("fork", force=True)
    os.environ[ENV] = kill
    sys.exit(main(argv))


def _forkserver() -> multiprocessing.context.BaseContext:
    """Children forked from a clean server process that has imported the CLI once: cheap to
    start, and free of this process's autograd threads (an earlier test's backward pass
    makes a plain fork of the test process unable to run autograd)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["stl_bench.cli", "stl_bench.train.loop"])
    return ctx


def forked(argv: list[str], kill: str) -> int:
    """The CLI in a process forked from a clean server, armed to SIGKILL itself at `kill`."""
    proc = _forkserver().Process(target=_child, args=(argv, kill))
    proc.start()
    proc.join(600)
    return proc.exitcode


def python_m(argv: list[str], kill: str) -> int:
    """`python -m stl_bench ...` in a fresh interpreter, armed to SIGKILL itself at `kill`."""
    done = subprocess.run([sys.executable, "-m", "stl_bench", *argv], env={**os.environ, ENV: kill},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    return done.returncode


def torchrun(argv: list[str], kill: str = "") -> int:
    """Two processes over gloo (both armed: each SIGKILLs itself at `kill`, and torchrun reports it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stl_bench",
           *argv]
    done = subprocess.run(cmd, env={**os.environ, ENV: kill, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    if not kill:
        assert done.returncode == 0, done.stderr[-3000:]
        return 0
    assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-3000:]
    return -signal.SIGKILL


def kill_and_resume(launch: Launch, argv: list[str], out: Path, kills: list[tuple[str, int | None]],
                    finish: Callable[[list[str]], int] = main) -> None:
    """Start the run, kill it at each moment in turn (resuming in between), then let a resume finish it."""
    for kill, left in kills:
        assert launch(argv, kill) == -signal.SIGKILL, f"the run was not killed at {kill}"
        if left is None:
            assert not (out / "last.pt").exists() and (out / "config.json").is_file()
        else:  # the previous checkpoint is whole, whatever the kill interrupted
            assert torch.load(out / "last.pt", weights_only=True)["step"] == left, kill
        if kill.startswith("saving:"):
            assert list(out.glob(".last.pt.*")), "the interrupted write left no temporary"
        argv = ["train", "--output", str(out), "--resume"]  # the run's own files say the rest
    assert finish(argv) == 0
    assert not list(out.glob(".*.tmp*")), "a stale temporary survived the resume"


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Equal structure, and torch.equal (same dtype, every element) for every tensor."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where} keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where} differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(ref: Path, got: Path, may_differ: tuple[str, ...] = ("output",), steps: tuple[int, int] = (15, 3)
                    ) -> None:
    """Both checkpoints identical (but for the config keys in `may_differ`), and the metrics rows."""
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (ref, got))
        for key in may_differ:
            a["config"].pop(key), b["config"].pop(key)
        assert_identical(a, b, name)
        if name == "last.pt":
            assert (a["step"], a["epoch"], a["epoch_sums"]) == (*steps, [])
    rows_a, rows_b = (_rows(d) for d in (ref, got))
    assert [r["epoch"] for r in rows_a] == list(range(steps[1]))
    assert rows_a == rows_b


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _reference(argv: list[str], out: Path) -> Path:
    assert main([*argv, "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def baseline(digits: Path, tmp_path_factory) -> tuple[list[str], Path]:
    argv = ["train", *RECIPE, "--stage", "baseline", "--model", "fan_nano_4_p4_32", "--workers", "0",
            "--data", str(digits)]
    return argv, _reference(argv, tmp_path_factory.mktemp("ref") / "baseline")


@pytest.fixture(scope="module")
def student(digits: Path, teacher: Path, tmp_path_factory) -> tuple[list[str], Path]:
    """Stage 2 with an online labeler: Gumbel-sampled token labels every step, one data worker."""
    argv = ["train", *RECIPE, "--stage", "student", "--teacher", str(teacher), "--workers", "1",
            "--data", str(digits)]
    return argv, _reference(argv, tmp_path_factory.mktemp("ref") / "student")


def test_baseline_killed_five_times_resumes_bit_exactly(baseline, tmp_path: Path) -> None:
    argv, ref = baseline
    out = tmp_path / "run"
    kill_and_resume(forked, [*argv, "--output", str(out)], out, BASELINE_KILLS)
    assert_same_run(ref, out)


def test_student_with_gumbel_labels_and_a_worker_resumes_bit_exactly(student, tmp_path: Path) -> None:
    argv, ref = student
    out = tmp_path / "run"
    kill_and_resume(forked, [*argv, "--output", str(out)], out, STUDENT_KILLS)
    assert_same_run(ref, out)


def test_another_world_size_is_refused(baseline, tmp_path: Path, capsys) -> None:
    _, ref = baseline
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["world_size"] = 2  # as if two processes had trained it
    torch.save(ckpt, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--output", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert "trained by 2 process(es), this resume has 1" in err and "torchrun" in err and "\n" not in err
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_python_m_subprocesses_killed_and_resumed(baseline, tmp_path: Path) -> None:
    argv, ref = baseline
    out = tmp_path / "run"
    kill_and_resume(python_m, [*argv, "--output", str(out)], out, [("step:1", None), ("saving:4", 2), ("step:7", 6)])
    assert_same_run(ref, out)


@pytest.mark.slow
def test_labeler_with_two_workers_and_accumulation_resumes_bit_exactly(digits: Path, tmp_path: Path) -> None:
    argv = ["train", *RECIPE, "--stage", "labeler", "--workers", "2", "--batch-size", "8", "--grad-accum-steps", "2",
            "--data", str(digits)]
    ref = _reference(argv, tmp_path / "ref")
    out = tmp_path / "run"
    kill_and_resume(forked, [*argv, "--output", str(out)], out,
                    [("step:2", None), ("step:5", 4), ("saving:10", 8), ("saved:12", 12), ("step:14", 12)])
    assert_same_run(ref, out)


@pytest.mark.slow
def test_the_number_of_workers_never_changes_the_result(baseline, tmp_path: Path) -> None:
    argv, ref = baseline
    two = _reference([*argv, "--workers", "2"], tmp_path / "two")
    assert_same_run(ref, two, may_differ=("output", "workers"))


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_bit_exactly(digits: Path, tmp_path: Path) -> None:
    """Per-rank step streams and every rank's epoch sums survive a kill of the whole group."""
    argv = ["train", *RECIPE, "--stage", "labeler", "--workers", "0", "--steps-per-epoch", "3", "--epochs", "2",
            "--data", str(digits)]
    torchrun([*argv, "--output", str(tmp_path / "ref")])
    out = tmp_path / "run"
    kill_and_resume(torchrun, [*argv, "--output", str(out)], out, [("step:5", 4)], finish=torchrun)
    assert_same_run(tmp_path / "ref", out, steps=(6, 2))


def test_checkpoints_by_time_keep_the_loss_of_work_small(baseline, tmp_path: Path) -> None:
    argv, _ = baseline
    out = tmp_path / "run"
    # every step is "late" here: a kill after step 3 finds the checkpoint of step 2, written by the clock
    argv = [*argv, "--checkpoint-every", "0", "--checkpoint-minutes", "1e-9", "--epochs", "1", "--output", str(out)]
    assert forked(argv, "step:3") == -signal.SIGKILL
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], len(ckpt["epoch_sums"])) == (2, 0, 1)
    assert ckpt["epoch_sums"][0][4] == 2  # the epoch's steps so far, for its metrics row
