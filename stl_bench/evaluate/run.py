"""One evaluation run, from a model source to its written results: what `stl-bench eval` does.

Opens the runner (checkpoint, ONNX file, TensorRT engine, model name or served endpoint),
derives the preprocessing and the setup that identifies its results, runs the harness
(resumable, sharded under torchrun), then on rank 0 writes the long CSV, the CE figure
and the leaderboard row. The CLI only turns flags into an `EvalRequest` and prints the
`EvalResult`; notebooks and benchmarks call `run_evaluation` the same way.

`run_evaluations` takes one request per model and scores them all on each decoded (and
corrupted) batch: on-the-fly IN-C spends its time making corruptions, so several models
cost little more than one. Each model's outputs are those of its own `run_evaluation`.
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
    from stl_bench.evaluate.harness import EvalOutcome, ModelEval
    from stl_bench.evaluate.loop import LoopConfig
    from stl_bench.evaluate.preprocess import Preprocessing
    from stl_bench.evaluate.reference import CEReference
    from stl_bench.evaluate.report import Summary

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


@dataclass
class EvalFailure:
    """A source that could not be evaluated (it did not load, the suites do not fit it, or its
    outputs could not be written); its finished cells, if any, stay saved."""

    request: EvalRequest
    error: StlBenchError

    @property
    def source(self) -> str | None:
        return self.request.source

    def describe(self) -> str:
        """One line naming the source (or the model built by name) and what went wrong."""
        return f"{self.source or self.request.model or 'the model'}: {self.error}"


@dataclass
class EvalBatch:
    """What `run_evaluations` produced: a result per source that ran, in order, and the failures."""

    results: list[EvalResult]
    failures: list[EvalFailure]


# Settings of the one shared walk over the files: every request of a call must agree on them.
SHARED_FIELDS = ("suites", "options", "device", "batch_size", "workers", "max_cells", "inc_group", "progress",
                 "save_every_s")


def run_evaluation(request: EvalRequest) -> EvalResult:
    """Evaluate the missing cells of `request.suites`, then (rank 0) write every output;
    a failure is raised (`run_evaluations` with one request)."""
    batch = run_evaluations([request])
    if batch.failures:
        raise batch.failures[0].error
    return batch.results[0]


def run_evaluations(requests: Sequence[EvalRequest]) -> EvalBatch:
    """Evaluate several models in one go: each decoded (and, for on-the-fly IN-C, corrupted)
    batch is made once and scored by every model, and each model gets the run folder, cells,
    long CSV, figure and leaderboard row a separate `run_evaluation` would give it.

    The requests differ in the model (source, model, head, ema, num_classes, img_size, amp,
    channels_last) and outputs (out, leaderboard, figure, normalizer); they must agree on
    `SHARED_FIELDS`. Wrong settings or unwritable outputs refuse the whole call before any
    model loads; a model that fails to load, that the suites do not fit or whose outputs
    cannot be written is an `EvalFailure` and the others still run.
    """
    from stl_bench.distributed import DistContext
    from stl_bench.evaluate.harness import evaluate_models

    requests = list(requests)
    for request in requests:
        request.check()
    _check_shared(requests)
    references = [_reference(r) for r in requests]  # fail before any model loads
    for request in requests:
        _check_outputs_writable(request.out, request.leaderboard)
    if not requests:
        return EvalBatch([], [])
    dist = DistContext.from_env(requests[0].device)
    order = {id(r): n for n, r in enumerate(requests)}
    failures: list[EvalFailure] = []
    loaded = _open_models(requests, dist, failures)
    first = requests[0]
    outcomes = evaluate_models([m.model for m in loaded], first.suites, first.options, loop=_loop(first, dist),
                               dist=dist, max_cells=first.max_cells, inc_group=first.inc_group)
    results = []
    for item, outcome in zip(loaded, outcomes):
        if isinstance(outcome, StlBenchError):
            failures.append(EvalFailure(item.request, outcome))
        elif not dist.is_main:
            results.append(EvalResult(is_main=False, run_dir=item.model.store.run_dir))
        else:
            try:
                results.append(_write_outputs(item, outcome, references[order[id(item.request)]]))
            except StlBenchError as exc:
                failures.append(EvalFailure(item.request, exc))
    failures.sort(key=lambda f: order[id(f.request)])
    return EvalBatch(results, failures)


def _reference(request: EvalRequest) -> "CEReference":
    """The request's CE normaliser, which must cover every corruption the run will score."""
    from stl_bench.evaluate.reference import resolve_reference

    scores_inc = any(s.kind == "in-c" for s in request.suites)
    return resolve_reference(request.normalizer, request.options.inc_corruptions if scores_inc else None,
                             request.options.inc_severities)


def _check_shared(requests: list[EvalRequest]) -> None:
    for request in requests[1:]:
        differ = [name for name in SHARED_FIELDS if getattr(request, name) != getattr(requests[0], name)]
        if differ:
            raise StlBenchError(f"models evaluated together share {', '.join(differ)}; request for "
                                f"{request.source} differs from the first: evaluate it in its own call")


def _loop(request: EvalRequest, dist: Any) -> "LoopConfig":
    from stl_bench.evaluate.loop import LoopConfig

    return LoopConfig(
        batch_size=request.batch_size or (256 if dist.device.type == "cuda" else 64),
        workers=request.workers if request.workers is not None else min(8, os.cpu_count() or 1),
        progress=request.progress, save_every_s=request.save_every_s,
    )


@dataclass
class _Loaded:
    """A request whose model is open, with its setup and store."""

    request: EvalRequest
    model: "ModelEval"
    prep: "Preprocessing"


def _open_models(requests: list[EvalRequest], dist: Any, failures: list[EvalFailure]) -> list[_Loaded]:
    """Open each request's model; one that fails (or repeats an earlier one's run folder) is
    a failure and the rest go on."""
    loaded: list[_Loaded] = []
    for request in requests:
        try:
            item = _open_model(request, dist)
            twin = next((x for x in loaded if x.model.store.run_dir == item.model.store.run_dir), None)
            if twin is not None:
                raise StlBenchError(f"its run folder {item.model.store.run_dir} is that of {twin.request.source} "
                                    "in the same call; evaluate each model once per call")
        except StlBenchError as exc:
            failures.append(EvalFailure(request, exc))
            continue
        loaded.append(item)
    return loaded


def _open_model(request: EvalRequest, dist: Any) -> _Loaded:
    from stl_bench.deploy import open as opener
    from stl_bench.deploy.runner import is_endpoint_url
    from stl_bench.evaluate.harness import EvalSetup, ModelEval
    from stl_bench.evaluate.preprocess import Preprocessing
    from stl_bench.evaluate.results import ResultStore

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
    return _Loaded(request, ModelEval(runner, ResultStore(run_dir), setup, prep), prep)


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


def _write_outputs(item: _Loaded, outcome: "EvalOutcome", reference: "CEReference") -> EvalResult:
    """Rank 0: the long CSV, the CE figure and the leaderboard row of a finished (or stopped) run."""
    store = item.model.store
    try:
        return _write(item, outcome, reference)
    except (StlBenchError, OSError) as exc:
        raise StlBenchError(
            f"{exc}; the {len(outcome.cells)} finished cell(s) are saved in {store.cell_dir}: fix that and re-run "
            "the same command to write the outputs (nothing is computed again)") from None


def _write(item: _Loaded, outcome: "EvalOutcome", reference: "CEReference") -> EvalResult:
    from stl_bench.evaluate.leaderboard import leaderboard_row, update_leaderboard
    from stl_bench.evaluate.report import long_table, summarize
    from stl_bench.io import write_text

    request, runner, setup, store, prep = (item.request, item.model.runner, item.model.setup, item.model.store,
                                           item.prep)
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
