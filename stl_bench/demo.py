"""`stl-bench demo`: the whole toolkit on the built-in digits, on a CPU.

The demo runs the same commands a user would, in order, through the CLI's own entry
point, so what it shows is what the commands do: train the plain tiny-FAN baseline, the
STL token labeler and the STL student; evaluate the three on the clean validation split
and on the ImageNet-C corruptions made on the fly; export the student to ONNX with its
parity check. Every step saves its results as it goes, so a re-run skips finished
training runs, finished evaluation cells and an existing export.

mCE divides by the fixed `digits` table shipped with the package (the AlexNet-style
`alexnet_mini_32`, averaged over training seeds), never by a CNN trained in this run:
that CNN's errors moved with its seed and with the CPU's kernels, and every mCE with
them. `with_reference` still trains and scores that CNN, as a check on the table.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stl_bench.errors import StlBenchError
from stl_bench.io import atomic_folder, is_temporary

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRun:
    """One training run of the demo: its folder name, stage and model."""

    name: str
    stage: str
    model: str
    role: str


RUNS = (
    DemoRun("baseline", "baseline", "fan_nano_4_p4_32", "plain tiny FAN"),
    DemoRun("labeler", "labeler", "fan_nano_4_p4_32_token", "STL stage 1: token labeler"),
    DemoRun("student", "student", "fan_nano_4_p4_32_token", "STL stage 2: student"),
)
# The normaliser's architecture, trained only on request: the `digits` table is its errors.
REFERENCE_RUN = DemoRun("alexnet_mini", "baseline", "alexnet_mini_32", "the digits normaliser's CNN")
CHECKPOINT = "last.pt"


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are the README's main job."""

    output: Path = Path("stl_bench_runs/demo")
    data: Path | None = None
    epochs: int | None = None  # None: the `demo` training preset's own
    seed: int = 42
    corruptions: tuple[str, ...] | None = None  # None: all 15 + 4
    severities: tuple[int, ...] | None = None  # None: 1..5
    max_train_samples: int | None = None
    inc_per_class: int | None = 10  # None: the whole validation split for IN-C
    normalizer: str = "digits"  # a known name or a reference model's results_long.csv
    with_reference: bool = False  # also train and score alexnet_mini_32
    export: bool = True
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def leaderboard(self) -> Path:
        return self.output / "leaderboard.csv"

    def run_dir(self, name: str) -> Path:
        return self.output / name

    @property
    def runs(self) -> tuple[DemoRun, ...]:
        return ((REFERENCE_RUN,) if self.with_reference else ()) + RUNS

    @property
    def inc_folder(self) -> Path:
        return self.output / f"val_inc_{self.inc_per_class}_per_class"

    @property
    def onnx_path(self) -> Path:
        return self.output / "student.onnx"


def _cli(argv: list[str]) -> None:
    from stl_bench.cli import main

    log.info("$ stl-bench %s", " ".join(argv))
    code = main(argv)
    if code:
        raise StlBenchError(f"demo step `stl-bench {' '.join(argv[:1])}` failed (exit {code}); see the message above. "
                            "Re-running `stl-bench demo` keeps every finished step")


def _train_argv(cfg: DemoConfig, run: DemoRun, data: Path) -> list[str]:
    argv = ["train", "--preset", "demo", "--stage", run.stage, "--model", run.model, "--data", str(data),
            "--output", str(cfg.run_dir(run.name)), "--seed", str(cfg.seed), "--resume"]
    if cfg.epochs is not None:
        argv += ["--epochs", str(cfg.epochs)]
    if cfg.max_train_samples:
        argv += ["--max-train-samples", str(cfg.max_train_samples)]
    if run.stage == "student":
        argv += ["--teacher", str(cfg.run_dir("labeler") / CHECKPOINT)]
    if not cfg.progress:
        argv += ["--no-progress"]
    return argv


def _train(cfg: DemoConfig, run: DemoRun, data: Path) -> None:
    _cli(_train_argv(cfg, run, data))


def _relay(stream, name: str) -> None:
    for line in stream:
        sys.stderr.write(f"[{name}] {line}")


def _train_side_by_side(cfg: DemoConfig, runs: tuple[DemoRun, ...], data: Path) -> None:
    """Train runs that do not depend on each other at once, one thread each.

    The demo's models are so small that one training leaves much of two cores idle
    between its small kernels: two one-thread runs side by side took 0.69x the time of
    the same two runs one after the other with two threads (AMD EPYC, 2 cores), and the
    thread count does not change the weights (same seed, same numbers with 1 or 2).
    Each run is the `stl-bench train` command in its own process, its lines prefixed
    with its name; a failed run does not stop the other, whose work is saved either way.
    """
    import subprocess

    started = []
    for run in runs:
        argv = [*_train_argv(cfg, run, data), "--threads", "1", "--no-progress"]  # two bars would clash
        log.info("$ stl-bench %s  (side by side)", " ".join(argv))
        proc = subprocess.Popen([sys.executable, "-m", "stl_bench", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        relay = threading.Thread(target=_relay, args=(proc.stdout, run.name), daemon=True)
        relay.start()
        started.append((run, proc, relay))
    failed = []
    for run, proc, relay in started:
        code = proc.wait()
        relay.join()
        if code:
            failed.append(f"{run.name} (exit {code})")
    if failed:
        raise StlBenchError(f"demo training of {', '.join(failed)} failed; see its [name] lines above. "
                            "Re-running `stl-bench demo` keeps every finished step")


def inc_subset(cfg: DemoConfig, data: Path) -> Path:
    """The images IN-C is scored on: the first `inc_per_class` of each validation class.

    Each image costs 95 corrupted views at 224 px (the benchmark's own pipeline), which
    for this tiny model dominate the demo's time; a fixed stratified subset keeps the
    demo within minutes on 2 cores. The clean accuracy always uses the whole split.
    """
    import shutil

    if cfg.inc_per_class is None:
        return data / "val"
    target = cfg.inc_folder
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)  # incomplete: an older layout's, or the user's
    for stale in target.parent.glob(f".{target.name}.*"):  # a killed demo's half-copied subset
        if is_temporary(stale):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_folder(target) as staging:
        for class_dir in sorted(p for p in (data / "val").iterdir() if p.is_dir()):
            (staging / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[: cfg.inc_per_class]:
                shutil.copy2(image, staging / class_dir.name / image.name)
        (staging / ".complete").write_text("")
    return target


def _evaluate(cfg: DemoConfig, runs: tuple[DemoRun, ...], data: Path) -> None:
    """All models in one `stl-bench eval` call: each image is decoded, and each of its 95
    corrupted views made, once for all of them (the corruptions are most of the time)."""
    argv = ["eval", *(str(cfg.run_dir(run.name) / CHECKPOINT) for run in runs), "--in1k", str(data / "val"),
            "--in-c", str(inc_subset(cfg, data)), "--inc-on-the-fly", "--normalizer", cfg.normalizer,
            "--out", str(cfg.output / "eval"), "--leaderboard", str(cfg.leaderboard), "--device", "cpu",
            "--workers", "1"]
    if cfg.corruptions:
        argv += ["--inc-corruptions", ",".join(cfg.corruptions)]
    if cfg.severities:
        argv += ["--inc-severities", ",".join(map(str, cfg.severities))]
    if not cfg.progress:
        argv += ["--no-progress"]
    _cli(argv)


def _export(cfg: DemoConfig, data: Path) -> None:
    if cfg.onnx_path.exists():
        log.info("%s exists; skipping the export (delete it to export again)", cfg.onnx_path)
        return
    _cli(["export", str(cfg.run_dir("student") / CHECKPOINT), "--output", str(cfg.onnx_path), "--tokens",
          "--images", str(data / "val")])


def _timed(cfg: DemoConfig, step: str, fn, *args) -> None:
    start = time.perf_counter()
    fn(*args)
    cfg.timings[step] = time.perf_counter() - start


def run_demo(cfg: DemoConfig) -> "pd.DataFrame":
    """Run (or finish) every demo step and return the summary table."""
    from stl_bench.data.corruptions.names import ALL_CORRUPTIONS, SEVERITIES
    from stl_bench.data.demo import ensure_demo_data
    from stl_bench.evaluate.reference import resolve_reference

    # A normaliser that cannot score every corruption asked for fails now, not after training.
    resolve_reference(cfg.normalizer, cfg.corruptions or ALL_CORRUPTIONS, cfg.severities or SEVERITIES)
    cfg.output.mkdir(parents=True, exist_ok=True)
    data = ensure_demo_data(cfg.data)
    independent = tuple(run for run in cfg.runs if run.stage != "student")
    if len(independent) > 1:
        _timed(cfg, "train " + " + ".join(run.name for run in independent), _train_side_by_side, cfg, independent,
               data)
    for run in cfg.runs:
        if run.stage == "student" or len(independent) == 1:
            _timed(cfg, f"train {run.name}", _train, cfg, run, data)
    _timed(cfg, "eval " + " + ".join(run.name for run in cfg.runs), _evaluate, cfg, cfg.runs, data)
    if cfg.export:
        _timed(cfg, "export student", _export, cfg, data)
    return summary_table(cfg)


SUMMARY_COLUMNS = ["name", "model", "role", "head", "clean top-1", "IN-C acc", "mCE", "relative mCE", "extra mCE",
                   "normalizer"]


def summary_table(cfg: DemoConfig) -> "pd.DataFrame":
    """One row per demo model from the leaderboard: clean accuracy and corruption robustness."""
    import pandas as pd

    from stl_bench.evaluate.leaderboard import read_leaderboard

    table = read_leaderboard(cfg.leaderboard)
    rows = []
    for run in cfg.runs:
        ckpt = str(cfg.run_dir(run.name) / CHECKPOINT)
        match = table[table["checkpoint_path"] == ckpt]
        if match.empty:
            continue
        row = match.iloc[-1]
        rows.append({
            "name": row.get("name"), "model": row.get("model"), "role": run.role, "head": row.get("head"),
            "clean top-1": row.get("in1k_top1"), "IN-C acc": row.get("inc_acc"),
            "mCE": row.get("inc_mce"), "relative mCE": row.get("inc_rel_mce"),
            "extra mCE": row.get("inc_extra_mce"), "normalizer": row.get("normalizer"),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)



def format_summary(table: "pd.DataFrame", cfg: DemoConfig) -> str:
    from stl_bench.evaluate.reference import reference_label

    shown = table.drop(columns=["normalizer"])
    lines = [shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"), ""]
    lines.append(f"Accuracies in %; mCE = mean corruption error relative to {reference_label(cfg.normalizer)} "
                 "(100 = as robust as that reference, lower is better), over the 15 standard corruptions.")
    lines.append(f"leaderboard: {cfg.leaderboard}; per-corruption CSVs and CE figures: {cfg.output / 'eval'}/*/")
    if cfg.onnx_path.exists():
        lines.append(f"ONNX export of the student (parity-checked): {cfg.onnx_path}")
    if cfg.timings:
        total = sum(cfg.timings.values())
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in cfg.timings.items()) + f"; total {total:.0f}s")
    student, labeler = cfg.run_dir("student") / CHECKPOINT, cfg.run_dir("labeler") / CHECKPOINT
    lines.append(f"open the app on these models: stl-bench app --teacher {labeler} --model {student}"
                 f" --model {cfg.run_dir('baseline') / CHECKPOINT}")
    return "\n".join(lines)
