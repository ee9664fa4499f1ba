"""Plan, resume and run the suites a user asked for: the library entry point of `eval`.

Validates every suite before computing anything (a wrong folder found after an hour
of IN-C is an hour lost), asks the result store which cells are already done with the
same setup, and runs only the rest, saving each cell as it completes. Under torchrun,
rank 0 decides which cells run and the other ranks follow that decision.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from stl_bench.deploy.runner import Runner
from stl_bench.distributed import DistContext
from stl_bench.evaluate.loop import LoopConfig, ViewTransform, run_pass
from stl_bench.evaluate.preprocess import Preprocessing
from stl_bench.evaluate.results import ResultStore, StoredCell
from stl_bench.evaluate.suites import CellKey, ModelClasses, SuiteOptions, SuitePlan, SuiteSpec, plan_suite

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
    decode pass: all of them by default (each file decoded once); smaller groups save
    finished cells sooner at the cost of decoding again.
    """
    loop = loop or LoopConfig()
    dist = dist or DistContext()
    prep = prep or Preprocessing.from_data_config(runner.info.data_config)
    classes = ModelClasses.of(runner.info.num_classes, runner.info.class_names)
    plans = [plan_suite(spec, classes, options) for spec in specs]

    setups = {v.key: cell_setup(v.key, setup, plan.spec.kind, options)
              for plan in plans for p in plan.passes for v in p.views}
    if dist.is_main:  # the one writer: no other process is mid-file in the store now
        store.remove_stale_temporaries()
    done_keys = dist.broadcast(sorted(store.usable(setups)) if dist.is_main else None)
    done = set(done_keys)
    outcome = EvalOutcome(plans=plans, cells={})
    budget = max_cells

    for plan in plans:
        todo = [(p, [v for v in p.views if v.key not in done]) for p in plan.passes]
        todo = [(p, views) for p, views in todo if views]
        if not todo:
            log.info("%s: all %d cell(s) already done", plan.spec.name, sum(len(p.views) for p in plan.passes))
            continue
        if view_transform is None and any(p.geometry == "inc-source" for p, _ in todo):
            from stl_bench.evaluate.inc_fly import CorruptionViews

            view_transform = CorruptionViews.default()
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
                    if bar is not None:
                        bar.total = (bar.total or 0) + len(dist.shard(range(len(pass_.index().samples)))) * len(chunk)
                        bar.refresh()
                    result = run_pass(runner, pass_, chunk, prep, loop, dist,
                                      view_transform if pass_.geometry == "inc-source" else None,
                                      progress=bar.update if bar is not None else None)
                    _record(outcome, result, len(chunk), store, setups, dist)
                    if budget is not None:
                        budget -= len(chunk)
        finally:
            if bar is not None:
                bar.close()
    return _finish(outcome, store, setups, dist)


def _record(outcome: EvalOutcome, result: Any, n_views: int, store: ResultStore,
            setups: dict[CellKey, dict[str, Any]], dist: DistContext) -> None:
    """Save a pass's finished cells (rank 0) and add them to the outcome (every rank)."""
    per_cell = result.seconds / n_views
    for key, counts in result.counts.items():
        if dist.is_main:
            store.save(key, counts, setups[key], per_cell)
        outcome.computed.append(key)
        outcome.images_scored += counts.n
    outcome.seconds += result.seconds
    outcome.bad_files.extend(result.bad_files)


def _finish(outcome: EvalOutcome, store: ResultStore, setups: dict[CellKey, dict[str, Any]],
            dist: DistContext) -> EvalOutcome:
    dist.barrier()  # rank 0 has written every cell before anyone reads the store
    outcome.cells = store.usable(setups, warn=False) if dist.is_main else {}
    return outcome


def _progress_bar(name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, desc=name, unit="img", dynamic_ncols=True, leave=True)
