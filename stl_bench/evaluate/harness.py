"""Plan, resume and run the suites a user asked for: the library entry point of `eval`.

Validates every suite before computing anything (a wrong folder found after an hour
of IN-C is an hour lost), asks the result store which cells are already done with the
same setup, and runs only the rest, saving each cell as it completes and, within a long
pass, its running sums every `LoopConfig.save_every_s` seconds (on-the-fly IN-C finishes
all its cells only with its last batch). Under torchrun, rank 0 decides which cells run
and the other ranks follow that decision. Several models evaluated together share the
passes they have in common (one decode and one set of corruptions for all), each keeping
its own cells, saved progress and store, exactly as if it had run alone.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from stl_bench.deploy.runner import Runner
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.loop import (
    LoopConfig, PassMember, PassProgress, PassResult, ViewTransform, run_pass, transform_key)
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.evaluate.results import ResultStore, StoredCell
from stl_bench.evaluate.suites import (
    CellKey, ModelClasses, Pass, SuiteOptions, SuitePlan, SuiteSpec, View, plan_suite)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSetup:
    """What identifies a result: the same setup gives the same numbers."""

    model: str
    checkpoint: str
    head: str
    weights: str
    preprocessing: str


@dataclass
class EvalOutcome:
    """Every cell of the asked suites that exists now (stored earlier or computed now)."""

    plans: list[SuitePlan]
    cells: dict[CellKey, StoredCell]
    computed: list[CellKey] = field(default_factory=list)
    complete: bool = True
    images_scored: int = 0
    seconds: float = 0.0
    bad_files: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images_scored / self.seconds if self.seconds > 0 else float("nan")


def cell_setup(key: CellKey, setup: EvalSetup, kind: str, options: SuiteOptions) -> dict[str, Any]:
    """The settings a cell's numbers depend on (stored with the cell, compared on resume)."""
    out: dict[str, Any] = asdict(setup)
    if kind in ("in-a", "in-r"):
        out["a_r_mode"] = options.a_r_mode
    if kind == "in-c":
        out["inc_mode"] = "on-the-fly" if options.inc_on_the_fly else "files"
    return out


@dataclass
class ModelEval:
    """One model of an evaluation: its runner, where its cells go and what identifies them."""

    runner: Runner
    store: ResultStore
    setup: EvalSetup
    prep: Preprocessing | None = None
    """None: from the runner's data config"""


def evaluate(
    runner: Runner,
    specs: list[SuiteSpec],
    options: SuiteOptions,
    store: ResultStore,
    setup: EvalSetup,
    loop: LoopConfig | None = None,
    dist: DistContext | None = None,
    prep: Preprocessing | None = None,
    view_transform: ViewTransform | None = None,
    max_cells: int | None = None,
    inc_group: int | None = None,
) -> EvalOutcome:
    """Evaluate the missing cells of `specs` for one model and return all of their cells
    (`evaluate_models` with one model; its errors are raised)."""
    [outcome] = evaluate_models([ModelEval(runner, store, setup, prep)], specs, options, loop=loop, dist=dist,
                                view_transform=view_transform, max_cells=max_cells, inc_group=inc_group)
    if isinstance(outcome, StlBenchError):
        raise outcome
    return outcome


def evaluate_models(
    models: list[ModelEval],
    specs: list[SuiteSpec],
    options: SuiteOptions,
    loop: LoopConfig | None = None,
    dist: DistContext | None = None,
    view_transform: ViewTransform | None = None,
    max_cells: int | None = None,
    inc_group: int | None = None,
) -> list[EvalOutcome | StlBenchError]:
    """Evaluate the missing cells of `specs` for several models, sharing passes, and return
    each model's outcome (or, for a model the suites do not fit, its error: the others run).

    Each model gets exactly the cells, passes and saved progress a run of it alone would:
    its own missing cells, cut into the same passes (`inc_group`) and `max_cells` budget.
    A pass of several models with the same cells, files and workers' geometry is walked
    once for all of them (`run_pass`); the rest run on their own. `max_cells` stops after
    that many cells per model (a run can be chopped into jobs; tests use it to simulate a
    kill). `inc_group` bounds how many on-the-fly IN-C cells share one decode pass: all
    of them by default (each file decoded once, running sums saved as the pass goes);
    smaller groups finish cells sooner at the cost of decoding again.
    """
    if inc_group is not None and inc_group < 1:
        raise StlBenchError(f"--inc-group must be at least 1, got {inc_group}")
    if max_cells is not None and max_cells < 0:
        raise StlBenchError(f"--max-cells must be 0 or more, got {max_cells}")
    loop = loop or LoopConfig()
    dist = dist or DistContext()
    jobs: list[_Job | StlBenchError] = []
    for model in models:
        try:
            jobs.append(_Job.plan(model, specs, options, dist, max_cells, inc_group))
        except StlBenchError as exc:
            jobs.append(exc)
    live = [job for job in jobs if isinstance(job, _Job)]
    passes = _PassRunner(loop, dist, view_transform)
    try:
        for group in _shared_units(live):
            passes.run(group)
    finally:
        passes.close()
    return [job.finish(dist) if isinstance(job, _Job) else job for job in jobs]


Unit = tuple[Pass, list[View]]
"""Some views of one pass: what one walk over its files computes"""


@dataclass
class _Job:
    """One model's plan: its suites, cell setups, outcome so far and the units still to run."""

    model: ModelEval
    prep: Preprocessing
    setups: dict[CellKey, dict[str, Any]]
    outcome: EvalOutcome
    units: list[Unit]

    @classmethod
    def plan(cls, model: ModelEval, specs: list[SuiteSpec], options: SuiteOptions, dist: DistContext,
             max_cells: int | None, inc_group: int | None) -> "_Job":
        info = model.runner.info
        prep = model.prep or Preprocessing.from_data_config(info.data_config)
        classes = ModelClasses.of(info.num_classes, info.class_names)
        plans = [plan_suite(spec, classes, options) for spec in specs]
        setups = {v.key: cell_setup(v.key, model.setup, plan.spec.kind, options)
                  for plan in plans for p in plan.passes for v in p.views}
        if dist.is_main:  # the one writer: no other process is mid-file in the store now
            model.store.remove_stale_temporaries()
        done = set(_broadcast_done(model.store, setups, dist))
        outcome = EvalOutcome(plans=plans, cells={})
        units = _units(plans, done, outcome, max_cells, inc_group)
        for pass_, _ in units:  # scanned against this model's classes now: a misfit fails before any pass
            pass_.index()
        return cls(model, prep, setups, outcome, units)

    def finish(self, dist: DistContext) -> EvalOutcome:
        dist.barrier()  # rank 0 has written every cell before anyone reads the store
        store, outcome = self.model.store, self.outcome
        outcome.cells = store.usable(self.setups, warn=False) if dist.is_main else {}
        if dist.is_main:
            store.drop_finished_progress(outcome.cells)
        return outcome


def _broadcast_done(store: ResultStore, setups: dict[CellKey, dict[str, Any]], dist: DistContext) -> list[CellKey]:
    """The cells rank 0 finds done; its error (an unreadable cell file) is raised on every
    rank, so no process is left waiting in a collective the others skipped."""
    answer: tuple[str, Any] | None = None
    if dist.is_main:
        try:
            answer = ("done", sorted(store.usable(setups)))
        except StlBenchError as exc:
            answer = ("error", str(exc))
    kind, value = dist.broadcast(answer)
    if kind == "error":
        raise StlBenchError(value)
    return value


def _units(plans: list[SuitePlan], done: set[CellKey], outcome: EvalOutcome, max_cells: int | None,
           inc_group: int | None) -> list[Unit]:
    """The passes (cut into `inc_group` views) of the cells not done, up to `max_cells` cells."""
    units: list[Unit] = []
    budget = max_cells
    for plan in plans:
        todo = [(p, [v for v in p.views if v.key not in done]) for p in plan.passes]
        todo = [(p, views) for p, views in todo if views]
        if not todo:
            log.info("%s: all %d cell(s) already done", plan.spec.name, sum(len(p.views) for p in plan.passes))
            continue
        for pass_, views in todo:
            group = inc_group or len(views)
            for start in range(0, len(views), group):
                chunk = views[start:start + group]
                if budget is not None:
                    if len(chunk) > budget:
                        outcome.complete = False
                        chunk = chunk[:budget]
                    budget -= len(chunk)
                if chunk:
                    units.append((pass_, chunk))
    return units


def _shared_units(jobs: list[_Job]) -> Iterator[list[tuple[_Job, Pass, list[View]]]]:
    """Each model's units in its own order, each joined by the units of later models that
    can share its walk (same suite, cells, files and workers' geometry)."""
    pending = [list(job.units) for job in jobs]
    for i, job in enumerate(jobs):
        while pending[i]:
            pass_, views = pending[i].pop(0)
            group = [(job, pass_, views)]
            for k in range(i + 1, len(jobs)):
                match = next((n for n, (other, other_views) in enumerate(pending[k])
                              if _can_share(job, pass_, views, jobs[k], other, other_views)), None)
                if match is not None:
                    group.append((jobs[k], *pending[k].pop(match)))
            yield group


def _can_share(a: _Job, a_pass: Pass, a_views: list[View], b: _Job, b_pass: Pass, b_views: list[View]) -> bool:
    return (a_pass.suite == b_pass.suite and a_pass.geometry == b_pass.geometry
            and [v.key for v in a_views] == [v.key for v in b_views]
            and transform_key(a_pass, a.prep) == transform_key(b_pass, b.prep)
            and a_pass.index().samples == b_pass.index().samples)


class _PassRunner:
    """Runs one pass over some views for one or more models: resumes each model's saved
    sums, saves them as it goes, stores each model's finished cells, then forgets the sums."""

    def __init__(self, loop: LoopConfig, dist: DistContext, view_transform: ViewTransform | None) -> None:
        self.loop, self.dist, self.view_transform = loop, dist, view_transform
        self.bar: Any = None
        self.bar_suite = ""

    def run(self, group: list[tuple[_Job, Pass, list[View]]]) -> None:
        pass_, views = group[0][1], group[0][2]
        transform = self._transform() if pass_.geometry == "inc-source" else None
        bar = self._bar(pass_.suite)
        if bar is not None:
            shard = self.dist.shard(range(len(pass_.index().samples)))
            bar.total = (bar.total or 0) + len(shard) * len(views) * len(group)
            bar.refresh()
        names, members = [], []
        for job, p, vs in group:
            name, identity = progress_identity(p, vs, job.setups, self.loop, self.dist)
            store = job.model.store
            names.append(name)
            members.append(PassMember(
                job.model.runner, job.prep, vs, store.load_progress(name, identity) or PassProgress.start(vs),
                save=lambda progress, store=store, name=name, identity=identity:
                    store.save_progress(name, identity, progress)))
        results = run_pass(pass_, members, self.loop, self.dist, transform,
                           progress=bar.update if bar is not None else None)
        if _all_unreadable(results[0]):
            for (job, _, _), name in zip(group, names):
                job.model.store.drop_progress(name)  # a re-run after the files are fixed reads them again
            bad = next(iter(results[0].counts.values())).bad
            raise StlBenchError(
                f"{pass_.suite}: none of the {bad} image file(s) in {pass_.root} could be read; check that they "
                "are images (not truncated or placeholder files), then re-run")
        for (job, _, vs), result, name in zip(group, results, names):
            _record(job.outcome, result, len(vs), job.model.store, job.setups, self.dist)
            job.model.store.drop_progress(name)

    def _transform(self) -> ViewTransform:
        if self.view_transform is None:
            from stl_bench.evaluate.inc_fly import CorruptionViews

            self.view_transform = CorruptionViews.default()
        return self.view_transform

    def _bar(self, suite: str) -> Any:
        """One progress bar per suite in a row (rank 0, when asked for)."""
        if not (self.loop.progress and self.dist.is_main):
            return None
        if self.bar is None or self.bar_suite != suite:
            self.close()
            self.bar, self.bar_suite = _progress_bar(suite, True), suite
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_identity(pass_: Pass, views: list[View], setups: dict[CellKey, dict[str, Any]], loop: LoopConfig,
                      dist: DistContext) -> tuple[str, dict[str, Any]]:
    """The name of a pass's saved sums on this process and everything they are only valid
    for: the cells and their setups, the exact file list, the batch size and the shard."""
    ids = [v.key.id for v in views]
    root = pass_.index().root
    listing = "\n".join(f"{p.relative_to(root).as_posix()}\t{t}" for p, t in pass_.index().samples)
    tag = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    identity = {"cells": ids, "setups": [setups[v.key] for v in views], "geometry": pass_.geometry,
                "files": hashlib.sha256(listing.encode()).hexdigest(), "batch_size": loop.batch_size,
                "rank": dist.rank, "world_size": dist.world_size}
    return f"{pass_.suite}.{tag}.r{dist.rank}of{dist.world_size}", identity


def _all_unreadable(result: PassResult) -> bool:
    """No image scored and some unreadable: every file of the pass failed to decode."""
    counts = list(result.counts.values())
    return bool(counts) and all(c.n == 0 for c in counts) and counts[0].bad > 0


def _record(outcome: EvalOutcome, result: PassResult, n_views: int, store: ResultStore,
            setups: dict[CellKey, dict[str, Any]], dist: DistContext) -> None:
    """Save a pass's finished cells (rank 0) and add them to the outcome (every rank)."""
    per_cell = result.seconds / n_views
    for key, counts in result.counts.items():
        if dist.is_main:
            store.save(key, counts, setups[key], per_cell)
        outcome.computed.append(key)
    outcome.images_scored += result.images_now
    outcome.seconds += result.seconds_now
    outcome.bad_files.extend(result.bad_files)


def _progress_bar(name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, desc=name, unit="img", dynamic_ncols=True, leave=True)
