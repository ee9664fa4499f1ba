"""Plan, resume and run the suites a user asked for: the library entry point of `eval`.

Validates every suite before computing anything (a wrong folder found after an hour
of IN-C is an hour lost), asks the result store which cells are already done with the
same setup, and runs only the rest, saving each cell as it completes and, within a long
pass, its running sums every `LoopConfig.save_every_s` seconds (on-the-fly IN-C finishes
all its cells only with its last batch). Under torchrun, rank 0 decides which cells run
and the other ranks follow that decision.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from stl_bench.deploy.runner import Runner
from stl_bench.distributed import DistContext
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.loop import LoopConfig, PassResult, ViewTransform, run_pass
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
    """Evaluate the missing cells of `specs` and return all of their cells.

    `max_cells` stops after that many cells (a run can be chopped into jobs; tests use
    it to simulate a kill). `inc_group` bounds how many on-the-fly IN-C cells share one
    decode pass: all of them by default (each file decoded once, running sums saved as
    the pass goes); smaller groups finish cells sooner at the cost of decoding again.
    """
    if inc_group is not None and inc_group < 1:
        raise StlBenchError(f"--inc-group must be at least 1, got {inc_group}")
    if max_cells is not None and max_cells < 0:
        raise StlBenchError(f"--max-cells must be 0 or more, got {max_cells}")
    loop = loop or LoopConfig()
    dist = dist or DistContext()
    prep = prep or Preprocessing.from_data_config(runner.info.data_config)
    classes = ModelClasses.of(runner.info.num_classes, runner.info.class_names)
    plans = [plan_suite(spec, classes, options) for spec in specs]

    setups = {v.key: cell_setup(v.key, setup, plan.spec.kind, options)
              for plan in plans for p in plan.passes for v in p.views}
    if dist.is_main:  # the one writer: no other process is mid-file in the store now
        store.remove_stale_temporaries()
    done = set(dist.broadcast(sorted(store.usable(setups)) if dist.is_main else None))
    outcome = EvalOutcome(plans=plans, cells={})
    passes = _PassRunner(runner, prep, loop, dist, store, setups, view_transform)
    budget = max_cells
    for plan in plans:
        todo = [(p, [v for v in p.views if v.key not in done]) for p in plan.passes]
        todo = [(p, views) for p, views in todo if views]
        if not todo:
            log.info("%s: all %d cell(s) already done", plan.spec.name, sum(len(p.views) for p in plan.passes))
            continue
        bar = _progress_bar(plan.spec.name, loop.progress and dist.is_main)
        try:
            for pass_, views in todo:
                group = inc_group or len(views)
                for start in range(0, len(views), group):
                    chunk = views[start:start + group]
                    if budget is not None:
                        if budget <= 0:
                            outcome.complete = False
                            return _finish(outcome, store, setups, dist)
                        chunk = chunk[:budget]
                        budget -= len(chunk)
                    passes.run(pass_, chunk, outcome, bar)
        finally:
            if bar is not None:
                bar.close()
    return _finish(outcome, store, setups, dist)


@dataclass
class _PassRunner:
    """Runs one pass over some of its views: resumes its saved sums, saves them as it goes,
    stores its finished cells, then forgets the sums."""

    runner: Runner
    prep: Preprocessing
    loop: LoopConfig
    dist: DistContext
    store: ResultStore
    setups: dict[CellKey, dict[str, Any]]
    view_transform: ViewTransform | None = None

    def run(self, pass_: Pass, views: list[View], outcome: EvalOutcome, bar: Any) -> None:
        transform = None
        if pass_.geometry == "inc-source":
            if self.view_transform is None:
                from stl_bench.evaluate.inc_fly import CorruptionViews

                self.view_transform = CorruptionViews.default()
            transform = self.view_transform
        if bar is not None:
            bar.total = (bar.total or 0) + len(self.dist.shard(range(len(pass_.index().samples)))) * len(views)
            bar.refresh()
        name, identity = progress_identity(pass_, views, self.setups, self.loop, self.dist)
        result = run_pass(self.runner, pass_, views, self.prep, self.loop, self.dist, transform,
                          progress=bar.update if bar is not None else None,
                          resume=self.store.load_progress(name, identity),
                          save=lambda progress: self.store.save_progress(name, identity, progress))
        if _all_unreadable(result):
            self.store.drop_progress(name)  # a re-run after the files are fixed reads them again
            bad = next(iter(result.counts.values())).bad
            raise StlBenchError(
                f"{pass_.suite}: none of the {bad} image file(s) in {pass_.root} could be read; check that they "
                "are images (not truncated or placeholder files), then re-run")
        _record(outcome, result, len(views), self.store, self.setups, self.dist)
        self.store.drop_progress(name)


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


def _finish(outcome: EvalOutcome, store: ResultStore, setups: dict[CellKey, dict[str, Any]],
            dist: DistContext) -> EvalOutcome:
    dist.barrier()  # rank 0 has written every cell before anyone reads the store
    outcome.cells = store.usable(setups, warn=False) if dist.is_main else {}
    if dist.is_main:
        store.drop_finished_progress(outcome.cells)
    return outcome


def _progress_bar(name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, desc=name, unit="img", dynamic_ncols=True, leave=True)
