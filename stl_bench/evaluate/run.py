"""One evaluation run, from a model source to its written results: what `stl-bench eval` does.

Opens the runner (checkpoint, ONNX file, TensorRT engine, model name or served endpoint),
derives the preprocessing and the setup that identifies its results, runs the harness
(resumable, sharded under torchrun), then on rank 0 writes the long CSV, the CE figure
and the leaderboard row. The CLI only turns flags into an `EvalRequest` and prints the
`EvalResult`; notebooks and benchmarks call `run_evaluation` the same way.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.suites import SUITE_KINDS, SuiteOptions, SuiteSpec

if TYPE_CHECKING:
    import torch

    from stl_bench.deploy.runner import Runner, RunnerInfo
    from stl_bench.evaluate.harness import EvalOutcome, EvalSetup
    from stl_bench.evaluate.reference import CEReference
    from stl_bench.evaluate.report import Summary
    from stl_bench.evaluate.results import ResultStore

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
DEFAULT_LEADERBOARD = Path("eval_runs/leaderboard.csv")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class EvalRequest:
    """Everything one evaluation run needs; field defaults are the CLI's defaults."""

    source: str | None
    """checkpoint, .onnx file, TensorRT engine or `stl-bench serve` URL (None: `model` by name)"""
    suites: list[SuiteSpec]
    options: SuiteOptions = field(default_factory=SuiteOptions)
    model: str | None = None
    head: str = "auto"
    ema: bool = False
    num_classes: int | None = None
    normalizer: str = "alexnet"
    device: str | None = None
    amp: str = "auto"
    channels_last: bool = False
    img_size: int | None = None
    batch_size: int | None = None
    """images per batch (None: 256 on GPU, 64 on CPU)"""
    workers: int | None = None
    """decoding processes (None: up to 8)"""
    max_cells: int | None = None
    inc_group: int | None = None
    progress: bool = True
    out: Path | None = None
    """run folder (None: eval_runs/<model>-<hash>-<head>[-served])"""
    leaderboard: Path = DEFAULT_LEADERBOARD
    figure: bool = True
    save_every_s: float = 60.0
    """seconds between saves of a long pass's running sums (the most a kill can lose)"""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse sizes no run can use, in one line naming the flag (also when set after construction)."""
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--workers", self.workers, 0),
                                 ("--inc-group", self.inc_group, 1), ("--max-cells", self.max_cells, 0),
                                 ("save_every_s", self.save_every_s, 0)):
            if value is not None and value < low:
                raise StlBenchError(f"{flag} must be at least {low}, got {value}")


@dataclass
class EvalResult:
    """What a run produced; on ranks other than 0 only `is_main` (False) and `run_dir` mean anything."""

    is_main: bool
    run_dir: Path
    title: str = ""
    outcome: "EvalOutcome | None" = None
    summary: "Summary | None" = None
    long_csv: Path | None = None
    figure: Path | None = None
    leaderboard: Path | None = None


def suite_specs(
    in1k: str | None = None,
    in_a: str | None = None,
    in_r: str | None = None,
    in_c: str | None = None,
    folders: Sequence[str] = (),
) -> list[SuiteSpec]:
    """The suites asked for: the four named ones, then `NAME=DIR` folder suites, checked."""
    specs = [SuiteSpec(kind, kind, Path(value))
             for kind, value in (("in1k", in1k), ("in-a", in_a), ("in-r", in_r), ("in-c", in_c)) if value]
    for item in folders:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise StlBenchError(f"--folder expects NAME=DIR (for example in-v2=/data/imagenetv2), got {item!r}")
        if name in SUITE_KINDS or not _PLAIN_NAME.fullmatch(name):
            raise StlBenchError(f"--folder name {name!r} is reserved or not a plain name; pick e.g. in-v2 or sketch")
        specs.append(SuiteSpec(name, "folder", Path(path)))
    if not specs:
        raise StlBenchError("no suite given; pass at least one of --in1k, --in-a, --in-r, --in-c, --folder NAME=DIR")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise StlBenchError(f"suite names repeat: {names}")
    return specs


def amp_dtype(choice: str, device: "torch.device") -> "torch.dtype | None":
    """The autocast dtype for `--amp`: auto is bf16 on a GPU and full precision on a CPU."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None,
             "auto": torch.bfloat16 if device.type == "cuda" else None}
    if choice not in table:
        raise StlBenchError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {choice!r}")
    return table[choice]


def checkpoint_id(source: str | None, info: "RunnerInfo", served: bool) -> str:
    """The first 16 hex digits of the weights' hash: what keys cells and leaderboard rows."""
    from stl_bench.fan.checkpoint import file_sha256

    if served:
        return (info.extra.get("checkpoint_sha256") or "served")[:16]
    return file_sha256(source)[:16] if source else "random-init"


def default_run_dir(info: "RunnerInfo", checkpoint: str, served: bool) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.name)
    # a served model's cells never mix with an in-process run of the same checkpoint
    return Path("eval_runs") / f"{safe}-{checkpoint[:12]}-{info.head}{'-served' if served else ''}"


def run_evaluation(request: EvalRequest) -> EvalResult:
    """Evaluate the missing cells of `request.suites`, then (rank 0) write every output."""
    from stl_bench.deploy import open as opener
    from stl_bench.deploy.runner import is_endpoint_url
    from stl_bench.distributed import DistContext
    from stl_bench.evaluate.harness import EvalSetup, evaluate
    from stl_bench.evaluate.loop import LoopConfig
    from stl_bench.evaluate.preprocess import Preprocessing
    from stl_bench.evaluate.reference import resolve_reference
    from stl_bench.evaluate.results import ResultStore

    request.check()
    scores_inc = any(s.kind == "in-c" for s in request.suites)
    reference = resolve_reference(request.normalizer,  # fail before the model loads
                                  request.options.inc_corruptions if scores_inc else None,
                                  request.options.inc_severities)
    _check_outputs_writable(request.out, request.leaderboard)
    dist = DistContext.from_env(request.device)
    device = dist.device
    runner = opener.open_runner(
        request.source, model_name=request.model, device=device, head=request.head, use_ema=request.ema,
        num_classes=request.num_classes, amp_dtype=amp_dtype(request.amp, device),
        channels_last=request.channels_last, img_size=request.img_size)
    info = runner.info
    prep = Preprocessing.from_data_config(info.data_config)
    served = is_endpoint_url(request.source)
    checkpoint = checkpoint_id(request.source, info, served)
    setup = EvalSetup(model=info.name, checkpoint=checkpoint, head=info.head, weights=info.weights or "",
                      preprocessing=prep.describe())
    run_dir = Path(request.out) if request.out else default_run_dir(info, checkpoint, served)
    if request.out is None:
        _check_outputs_writable(run_dir, None)
    loop = LoopConfig(
        batch_size=request.batch_size or (256 if device.type == "cuda" else 64),
        workers=request.workers if request.workers is not None else min(8, os.cpu_count() or 1),
        progress=request.progress, save_every_s=request.save_every_s,
    )
    store = ResultStore(run_dir)
    outcome = evaluate(runner, request.suites, request.options, store, setup, loop=loop,
                       dist=dist, prep=prep, max_cells=request.max_cells, inc_group=request.inc_group)
    if not dist.is_main:
        return EvalResult(is_main=False, run_dir=run_dir)
    try:
        return _write_outputs(request, runner, setup, prep, outcome, reference, store)
    except (StlBenchError, OSError) as exc:
        raise StlBenchError(
            f"{exc}; the {len(outcome.cells)} finished cell(s) are saved in {store.cell_dir}: fix that and re-run "
            "the same command to write the outputs (nothing is computed again)") from None


def _check_outputs_writable(run_dir: Path | None, leaderboard: Path | None) -> None:
    """Unwritable output folders fail here, before any image is decoded (every rank checks,
    so no rank waits for one that stopped)."""
    from stl_bench.io import ensure_writable_folder

    if run_dir is not None:
        ensure_writable_folder(Path(run_dir), "--out run")
    if leaderboard is not None:
        ensure_writable_folder(Path(leaderboard).parent, "--leaderboard")
        if Path(leaderboard).exists():  # a broken leaderboard is refused before the work, not after it
            from stl_bench.evaluate.leaderboard import read_leaderboard

            read_leaderboard(leaderboard)


def _write_outputs(request: EvalRequest, runner: "Runner", setup: "EvalSetup", prep: Any,
                   outcome: "EvalOutcome", reference: "CEReference", store: "ResultStore") -> EvalResult:
    """Rank 0: the long CSV, the CE figure and the leaderboard row of a finished (or stopped) run."""
    from stl_bench.evaluate.leaderboard import leaderboard_row, update_leaderboard
    from stl_bench.evaluate.report import long_table, summarize
    from stl_bench.io import write_text

    info = runner.info
    summary = summarize(outcome.plans, outcome.cells, reference)
    long_csv = write_text(store.long_csv, long_table(outcome.cells).to_csv(index=False))
    figure = None
    if summary.corruption is not None and request.figure:
        from stl_bench.evaluate.figures import plot_ce

        figure = plot_ce(summary.corruption, info.name, reference.name, store.figure)
    if not outcome.complete:
        summary.notes.insert(0, f"stopped after --max-cells {request.max_cells}; re-run the same command to continue")
    row = leaderboard_row(
        setup, summary, params=_parameter_count(runner), input_size=prep.input_size, backend=info.backend,
        images_per_s=outcome.images_per_s, checkpoint_path=request.source,
        kinds={s.kind for s in request.suites}, options=request.options, normalizer=reference.name)
    update_leaderboard(Path(request.leaderboard), row)
    return EvalResult(is_main=True, run_dir=store.run_dir, outcome=outcome, summary=summary, long_csv=long_csv,
                      figure=figure, leaderboard=Path(request.leaderboard),
                      title=f"{info.name} ({info.head} head, weights {info.weights or 'n/a'})")


def _parameter_count(runner: "Runner") -> int | None:
    """Counted on an in-process model; an exported or served one reports its own, if it does."""
    import torch

    model = getattr(runner, "model", None)
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    params = runner.info.extra.get("params")
    return int(params) if params else None


def describe_result(result: EvalResult) -> str:
    """The summary table and where everything went, as the CLI prints it."""
    from stl_bench.evaluate.report import format_summary

    outcome = result.outcome
    assert outcome is not None and result.summary is not None, "describe_result is for rank 0's result"
    speed = outcome.images_per_s if outcome.computed else None  # nothing computed: no speed to show
    lines = [
        format_summary(result.title, result.summary, speed),
        f"cells: {len(outcome.computed)} computed now, {len(outcome.cells)} stored in {result.run_dir}",
        f"wrote {result.long_csv}" + (f", {result.figure}" if result.figure else "")
        + f"; updated {result.leaderboard}",
    ]
    return "\n".join(lines)
