"""What each suite is: its files, its class list, its cells and how its logits are scored.

A suite becomes a list of `Pass`es: one walk over one list of files, with one or more
`View`s (cells) scored on the same decoded images. IN-1K, IN-A, IN-R and plain folders
are one pass with one view; a pre-written IN-C tree is one pass per (corruption,
severity) folder; on-the-fly IN-C is one pass over the clean images with a view per
cell, so each file is decoded once for all of them.

Class lists come from timm (`timm/data/_info`), never from a copy here.
"""
from __future__ import annotations

import logging
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from stl_bench.data.folders import FolderIndex, check_known_classes, list_class_folders, scan_image_folder
from stl_bench.errors import StlBenchError
from stl_bench.data.corruptions.names import ALL_CORRUPTIONS, CATEGORIES, SEVERITIES

log = logging.getLogger(__name__)

SUITE_KINDS = ("in1k", "in-a", "in-r", "in-c", "folder")
A_R_MODES = ("official", "all1000")
_SUBSET_TITLE = {"in-a": "ImageNet-A", "in-r": "ImageNet-R"}


# -- class lists ------------------------------------------------------------------------
def _timm_info(name: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:  # pragma: no cover - timm always ships these
        raise StlBenchError(f"timm lacks timm/data/_info/{name}; install timm>=1.0.9")
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


@lru_cache(maxsize=None)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1K wnids in label order (sorted)."""
    return tuple(_timm_info("imagenet_synsets.txt"))


@lru_cache(maxsize=None)
def subset_synsets(suite: str) -> tuple[str, ...]:
    """The 200 wnids of ImageNet-A (`in-a`) or ImageNet-R (`in-r`), sorted."""
    letter = {"in-a": "a", "in-r": "r"}[suite]
    return tuple(_timm_info(f"imagenet_{letter}_synsets.txt"))


@lru_cache(maxsize=None)
def subset_indices(suite: str) -> tuple[int, ...]:
    """Positions of the 200 wnids among the 1000 ImageNet logits (timm's list)."""
    letter = {"in-a": "a", "in-r": "r"}[suite]
    return tuple(int(x) for x in _timm_info(f"imagenet_{letter}_indices.txt"))


@dataclass(frozen=True)
class ModelClasses:
    """The label space of the model's logits: names where known, and their count."""

    num_classes: int
    names: tuple[str, ...] | None = None

    @classmethod
    def of(cls, num_classes: int, class_names: Sequence[str] | None) -> "ModelClasses":
        if class_names is not None and len(class_names) == num_classes:
            return cls(num_classes, tuple(class_names))
        if num_classes == 1000:
            return cls(num_classes, imagenet_synsets())
        return cls(num_classes, None)

    @property
    def is_imagenet(self) -> bool:
        return self.names == imagenet_synsets()


# -- cells ----------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class CellKey:
    """One result cell. Clean suites use corruption "none" and severity 0."""

    suite: str
    corruption: str = "none"
    severity: int = 0

    @property
    def id(self) -> str:
        return self.suite if self.corruption == "none" else f"{self.suite}/{self.corruption}/{self.severity}"


@dataclass
class View:
    """A cell scored on a pass's images.

    `subset` keeps only these logit columns (IN-A/IN-R official scoring), and
    `target_map` maps the model-space target to its position among them.
    `corruption`/`severity` are set for on-the-fly IN-C views.
    """

    key: CellKey
    subset: torch.Tensor | None = None
    target_map: torch.Tensor | None = None
    corruption: str | None = None
    severity: int = 0


@dataclass
class Pass:
    """One walk over the files of `root`: `geometry` is "model" (resize + crop from the
    model's config), "identity" (IN-C files) or "inc-source" (clean images made into
    the 224 px ImageNet-C crop, then corrupted per view)."""

    suite: str
    root: Path
    geometry: str
    views: list[View]
    classes: ModelClasses
    _index: FolderIndex | None = field(default=None, repr=False)

    def index(self) -> FolderIndex:
        if self._index is None:
            self._index = scan_for_model(self.root, self.classes, self.suite)
        return self._index

    def sample_keys(self) -> list[str]:
        """Per-file keys (path relative to the root) for per-sample seeds: the same in
        every run and every shard."""
        root = self.index().root
        return [p.relative_to(root).as_posix() for p, _ in self.index().samples]


@dataclass
class SuiteSpec:
    """A suite the user asked for: a name, its kind and its folder."""

    name: str
    kind: str
    root: Path


@dataclass
class SuiteOptions:
    """Scoring choices that change numbers, so each is recorded next to its results."""

    a_r_mode: str = "official"
    inc_on_the_fly: bool = False
    inc_corruptions: tuple[str, ...] = ALL_CORRUPTIONS
    inc_severities: tuple[int, ...] = SEVERITIES

    def __post_init__(self) -> None:
        if self.a_r_mode not in A_R_MODES:
            raise StlBenchError(f"--a-r-mode must be one of {', '.join(A_R_MODES)}, not {self.a_r_mode!r}")
        unknown = [c for c in self.inc_corruptions if c not in ALL_CORRUPTIONS]
        if unknown:
            raise StlBenchError(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(ALL_CORRUPTIONS)}")
        bad = [s for s in self.inc_severities if s not in SEVERITIES]
        if bad:
            raise StlBenchError(f"severities must be among 1..5, got {bad}")


@dataclass
class SuitePlan:
    """All passes of a suite, and the cells that were asked for but have no files."""

    spec: SuiteSpec
    passes: list[Pass]
    missing: list[str] = field(default_factory=list)


# -- scanning a folder against the model's classes ------------------------------------------
def scan_for_model(root: Path, classes: ModelClasses, suite: str) -> FolderIndex:
    """Index a class-folder tree with labels in the model's label space.

    Numeric folder names (ImageNet-V2's `0..999`, the demo's `0..9`) are label indices.
    Otherwise folder names must be among the model's class names; a model without
    names accepts a folder with exactly as many classes, in sorted order.
    """
    folders = list_class_folders(root, numeric=True)
    if all(f.isdigit() for f in folders):
        too_big = [f for f in folders if int(f) >= classes.num_classes]
        if too_big:
            raise StlBenchError(
                f"{root} ({suite}) has numeric class folders up to {max(int(f) for f in folders)} but the model "
                f"predicts {classes.num_classes} classes; evaluate a model trained on these classes"
            )
        return scan_image_folder(root, classes=[str(i) for i in range(classes.num_classes)])
    if classes.names is not None:
        check_known_classes(root, folders, classes.names, context=suite,
                            what=f"among the model's {classes.num_classes} classes",
                            fix="the model's class count or names do not fit this data set")
        return scan_image_folder(root, classes=list(classes.names))
    if len(folders) != classes.num_classes:
        raise StlBenchError(
            f"{root} ({suite}) has {len(folders)} class folders but the model predicts {classes.num_classes} "
            "classes and carries no class names; evaluate a model trained on these classes"
        )
    log.info("%s: model has no class names; using the %d sorted folder names as its labels", root, len(folders))
    return scan_image_folder(root, numeric=True)


def _check_subset_folder(root: Path, suite: str) -> None:
    """IN-A and IN-R have different 200 wnids: a folder of the other suite is a user error."""
    folders = list_class_folders(root)
    own = set(subset_synsets(suite))
    foreign = [f for f in folders if f not in own]
    if not foreign:
        return
    other = "in-r" if suite == "in-a" else "in-a"
    hint = ""
    if all(f in set(subset_synsets(other)) for f in folders):
        hint = f" They are {_SUBSET_TITLE[other]}'s wnids: pass this folder as --{other} instead."
    elif len(folders) > 200:
        hint = " It looks like a 1000-class folder (ImageNet-1K val?): pass it as --in1k."
    shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
    raise StlBenchError(
        f"{root}: {len(foreign)} of its {len(folders)} class folders ({shown}) are not "
        f"{_SUBSET_TITLE[suite]} wnids.{hint}"
    )


def _subset_view(key: CellKey, suite: str, classes: ModelClasses, mode: str) -> View:
    wnids = subset_synsets(suite)
    if classes.names is None or not set(wnids) <= set(classes.names):
        raise StlBenchError(
            f"{_SUBSET_TITLE[suite]} is scored over 200 of the 1000 ImageNet classes; the model predicts "
            f"{classes.num_classes} classes{'' if classes.names else ' without names'}. Evaluate an "
            "ImageNet-1K model, or drop --" + suite
        )
    if mode == "all1000":
        return View(key)
    if classes.is_imagenet:
        idx = list(subset_indices(suite))
    else:
        pos = {n: i for i, n in enumerate(classes.names)}
        idx = [pos[w] for w in wnids]
    subset = torch.tensor(idx, dtype=torch.long)
    target_map = torch.full((classes.num_classes,), -1, dtype=torch.long)
    target_map[subset] = torch.arange(len(idx))
    return View(key, subset=subset, target_map=target_map)


# -- ImageNet-C trees -------------------------------------------------------------------------
def find_inc_cells(
    root: Path, corruptions: Sequence[str], severities: Sequence[int]
) -> tuple[dict[tuple[str, int], Path], list[str]]:
    """Locate `<root>/[<category>/]<corruption>/<severity>` folders.

    Returns the folders found and, in words, what was asked for but is absent.
    """
    if not root.is_dir():
        raise StlBenchError(
            f"ImageNet-C folder {root} does not exist; expected {root}/<corruption>/<1..5>/<wnid>/*.JPEG "
            "(or with a category level, noise/gaussian_noise/...)"
        )
    found: dict[tuple[str, int], Path] = {}
    missing: list[str] = []
    for c in corruptions:
        candidates = [root / c] + [root / cat / c for cat in CATEGORIES]
        base = next((p for p in candidates if p.is_dir()), None)
        if base is None:
            missing.append(c)
            continue
        lacking = []
        for s in severities:
            if (base / str(s)).is_dir():
                found[(c, s)] = base / str(s)
            else:
                lacking.append(str(s))
        if lacking:
            missing.append(f"{c} (severities {','.join(lacking)})")
    if not found:
        raise StlBenchError(
            f"ImageNet-C folder {root} holds none of the requested corruption folders; expected "
            f"{root}/<corruption>/<1..5>/<wnid>/... with corruption names like gaussian_noise"
        )
    return found, missing


# -- planning ------------------------------------------------------------------------------------
def plan_suite(spec: SuiteSpec, classes: ModelClasses, options: SuiteOptions) -> SuitePlan:
    """Check a suite's folder against its kind and the model, and list its passes."""
    root = Path(spec.root)
    if spec.kind not in SUITE_KINDS:
        raise StlBenchError(f"unknown suite kind {spec.kind!r}; known: {', '.join(SUITE_KINDS)}")
    if spec.kind == "in-c":
        return _plan_inc(spec, root, classes, options)
    if not root.is_dir():
        raise StlBenchError(
            f"{spec.name} folder {root} does not exist; pass the folder that holds one sub-folder per class"
        )
    key = CellKey(spec.name)
    if spec.kind in ("in-a", "in-r"):
        _check_subset_folder(root, spec.kind)
        view = _subset_view(key, spec.kind, classes, options.a_r_mode)
    else:
        view = View(key)
    return SuitePlan(spec, [Pass(spec.name, root, "model", [view], classes)])


def _plan_inc(spec: SuiteSpec, root: Path, classes: ModelClasses, options: SuiteOptions) -> SuitePlan:
    cells = [(c, s) for c in options.inc_corruptions for s in options.inc_severities]
    if options.inc_on_the_fly:
        if not root.is_dir():
            raise StlBenchError(
                f"clean source folder {root} for on-the-fly ImageNet-C does not exist; pass the "
                "ImageNet-1K val folder (one sub-folder per class)"
            )
        names = list_class_folders(root)
        if any(n in ALL_CORRUPTIONS or n in CATEGORIES for n in names):
            raise StlBenchError(
                f"{root} looks like a pre-written ImageNet-C tree (it has corruption folders); "
                "drop --inc-on-the-fly to read it, or pass the clean val folder"
            )
        views = [View(CellKey(spec.name, c, s), corruption=c, severity=s) for c, s in cells]
        return SuitePlan(spec, [Pass(spec.name, root, "inc-source", views, classes)])
    found, missing = find_inc_cells(root, options.inc_corruptions, options.inc_severities)
    passes = [Pass(spec.name, path, "identity", [View(CellKey(spec.name, c, s))], classes)
              for (c, s), path in sorted(found.items(), key=lambda kv: (cells.index(kv[0]),))]
    if missing:
        log.warning("%s: missing in %s: %s", spec.name, root, "; ".join(missing))
    return SuitePlan(spec, passes, missing)
