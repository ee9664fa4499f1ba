"""Which models the app offers: the demo runs by default, or the files named on the command line.

Each model is opened once, at start-up, through `open_runner`, so PyTorch checkpoints and
ONNX files behave the same. A file that fails to open (a wrong checkpoint, a missing ONNX
runtime) does not stop the app: its entry keeps the error, which the page shows when
that model is picked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from stl_bench.deploy.class_names import class_names_for
from stl_bench.deploy.open import open_runner
from stl_bench.deploy.runner import Runner
from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

DEFAULT_DEMO_ROOT = Path("stl_bench_runs") / "demo"
DEMO_ROLES = ("labeler", "student", "baseline")
# The trainer writes best.pt (best validation score) and last.pt; .pth for hand-made files.
CHECKPOINT_NAMES = ("best.pt", "best.pth", "last.pt", "last.pth")
DEMO_COMMAND = "stl-bench demo"
WeightsChoice = Literal["auto", "ema", "model"]


@dataclass
class ModelEntry:
    """One selectable model: where it came from, and its runner or why it has none."""

    key: str
    source: Path
    role: str | None = None
    runner: Runner | None = None
    error: str | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What the model menu shows."""
        head = f"{self.role}: " if self.role else ""
        if self.runner is None:
            return f"{head}{self.source.name} (failed to open)"
        info = self.runner.info
        return f"{head}{info.name} · {info.backend} · {self.source.name}"


def open_entry(key: str, source: Path, role: str | None, device: str = "cpu", head: str = "auto",
               weights: WeightsChoice = "auto") -> ModelEntry:
    """Open one model file; failures become the entry's error message instead of an exception."""
    entry = ModelEntry(key=key, source=source, role=role)
    try:
        if not source.exists():
            raise StlBenchError(f"{source} does not exist")
        is_checkpoint = source.suffix.lower() not in (".onnx", ".engine", ".plan", ".trt")
        runner = None
        if is_checkpoint and weights in ("auto", "ema"):
            # EMA weights are what the trainer scores as "best" and what STL's labeler uses.
            try:
                runner = open_runner(str(source), device=device, head=head, use_ema=True)
            except StlBenchError:
                if weights == "ema":
                    raise
        if runner is None:
            runner = open_runner(str(source), device=device, head=head)
        entry.runner = runner
        entry.class_names = class_names_for(runner.info)
        log.info("opened %s: %s (%s, %d classes, tokens: %s)", key, runner.info.name, runner.info.backend,
                 runner.info.num_classes, runner.info.has_tokens)
    except StlBenchError as exc:
        entry.error = str(exc)
    except Exception as exc:  # any other failure to open one file must not take the app down
        log.exception("could not open %s", source)
        entry.error = f"{source} could not be opened: {exc.__class__.__name__}: {exc}"
    if entry.error:
        log.warning("%s: %s", key, entry.error)
    return entry


def find_demo_checkpoints(root: Path) -> dict[str, Path]:
    """The best (else last) checkpoint of each demo run under `root`, by role."""
    found = {}
    for role in DEMO_ROLES:
        for name in CHECKPOINT_NAMES:
            path = root / role / name
            if path.is_file():
                found[role] = path
                break
    return found


def _role_from_path(path: Path) -> str | None:
    return path.parent.name if path.parent.name in DEMO_ROLES else None


def _unique_key(wanted: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    key, i = wanted, 2
    while key in taken:
        key, i = f"{wanted}-{i}", i + 1
    return key


@dataclass
class Catalog:
    """The models on offer, in menu order, and what to say when there are none."""

    entries: dict[str, ModelEntry]
    demo_root: Path | None = None

    @property
    def empty_message(self) -> str:
        where = f" (looked in {self.demo_root})" if self.demo_root else ""
        return (f"No models are loaded{where}. Run `{DEMO_COMMAND}` to train the demo labeler, student and "
                "baseline, or start the app with `stl-bench app --model PATH` (a checkpoint or .onnx file).")

    def get(self, key: str | None) -> ModelEntry:
        if not self.entries:
            raise StlBenchError(self.empty_message)
        if key not in self.entries:
            raise StlBenchError(f"unknown model '{key}'; choose one of {', '.join(self.entries)}")
        return self.entries[key]

    def first_key(self) -> str | None:
        ok = [k for k, e in self.entries.items() if e.runner is not None]
        return ok[0] if ok else next(iter(self.entries), None)

    def pair(self) -> tuple[ModelEntry, ModelEntry] | None:
        """(labeler, student) when both opened and have token heads: the side-by-side view."""
        by_role = {e.role: e for e in self.entries.values() if e.role and e.runner is not None}
        lab, stu = by_role.get("labeler"), by_role.get("student")
        if lab and stu and lab.runner.info.has_tokens and stu.runner.info.has_tokens:
            return lab, stu
        return None


def build_catalog(models: list[Path] | None = None, teacher: Path | None = None,
                  demo_root: Path | None = DEFAULT_DEMO_ROOT, device: str = "cpu", head: str = "auto",
                  weights: WeightsChoice = "auto") -> Catalog:
    """Open the models named on the command line, or the demo runs when none are named.

    `teacher` is the labeler; with a teacher, the first `--model` is its student (unless
    a file's folder names its role, as the demo's `labeler/`, `student/`, `baseline/` do).
    """
    models = [Path(m) for m in (models or [])]
    specs: list[tuple[str, Path, str | None]] = []
    if teacher is not None:
        specs.append(("labeler", Path(teacher), "labeler"))
    for i, path in enumerate(models):
        role = _role_from_path(path)
        if role is None and teacher is not None and i == 0:
            role = "student"
        specs.append((role or path.stem.removesuffix(".pth"), path, role))
    searched = None
    if not specs and demo_root is not None:
        searched = Path(demo_root)
        specs = [(role, path, role) for role, path in find_demo_checkpoints(searched).items()]
        if not specs:
            log.warning("no demo checkpoints under %s; run `%s` to make them", searched, DEMO_COMMAND)
    entries: dict[str, ModelEntry] = {}
    for wanted, path, role in specs:
        key = _unique_key(wanted, entries)
        entries[key] = open_entry(key, path, role, device=device, head=head, weights=weights)
    return Catalog(entries=entries, demo_root=searched)
