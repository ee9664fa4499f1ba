"""The reference errors CE divides by: a fixed table by name, or a reference model's run.

mCE is only defined relative to a reference model, and two mCEs compare only when they
divide by the same errors. For ImageNet that is AlexNet (the built-in table, `alexnet`).
For the demo digits (10 classes, 32 px) there is no published AlexNet row, so the
package ships a table of its stand-in, `alexnet_mini_32`, averaged over training seeds
(`digits`, made by benchmarks/make_digits_normalizer.py): retraining the reference per
run would let its seed and the CPU's kernels move every mCE. Any other reference is a
model evaluated with this same tool: its long-format CSV
(`suite, corruption, severity, n, correct, error`) is the table.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from stl_bench.data.corruptions.names import SEVERITIES
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.alexnet import ALEXNET_CLEAN_ERROR, ALEXNET_ERROR_BY_SEVERITY

TABLES = Path(__file__).resolve().parent / "tables"
DIGITS_TABLE = TABLES / "digits_alexnet_mini_32.csv"


@dataclass(frozen=True)
class CEReference:
    """Per-(corruption, severity) top-1 errors (fractions) and the clean error of a reference.

    `name` is recorded in every leaderboard row, because the reference decides the value
    of mCE: two mCEs are comparable only when they name the same reference.
    """

    name: str
    errors: dict[str, dict[int, float]] = field(default_factory=dict)
    clean_error: float = math.nan

    def severities(self, corruption: str) -> dict[int, float]:
        return self.errors.get(corruption, {})


def alexnet_reference() -> CEReference:
    """The ImageNet-C paper's normaliser (torchvision AlexNet), keyed by corruption name."""
    errors = {c: {s + 1: e for s, e in enumerate(v)} for c, v in ALEXNET_ERROR_BY_SEVERITY.items()}
    return CEReference(name="alexnet", errors=errors, clean_error=ALEXNET_CLEAN_ERROR)


def load_reference_csv(path: Path | str, clean_suite: str = "in1k", inc_suite: str = "in-c",
                       name: str | None = None) -> CEReference:
    """A reference from a long-format CSV written by `stl-bench eval` for a reference model.

    The `in-c` rows give the per-cell errors; the `in1k` row (the model's clean
    validation set) gives the clean error that relative CE subtracts. Without `name`,
    the reference is named after the file and its run folder (`csv:<folder>/<file>`),
    so two leaderboard rows scored against different runs' files do not look alike.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise StlBenchError(
            f"normaliser file {path} does not exist; pass a known name ({', '.join(KNOWN_NAMES)}) or the "
            "long-format CSV (results_long.csv) of a reference model evaluated with `stl-bench eval`"
        )
    try:
        table = pd.read_csv(path, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise StlBenchError(f"normaliser file {path} is not a readable CSV ({exc})") from exc
    needed = {"suite", "corruption", "severity", "error"}
    if not needed <= set(table.columns):
        raise StlBenchError(
            f"normaliser file {path} lacks the columns {sorted(needed - set(table.columns))}; "
            "expected the results_long.csv that `stl-bench eval` writes"
        )
    inc = table[table["suite"] == inc_suite]
    if inc.empty:
        raise StlBenchError(
            f"normaliser file {path} has no `{inc_suite}` rows; evaluate the reference model with --in-c first"
        )
    errors: dict[str, dict[int, float]] = {}
    for row in inc.itertuples(index=False):
        errors.setdefault(str(row.corruption), {})[int(row.severity)] = float(row.error)
    clean = table[table["suite"] == clean_suite]
    clean_error = float(clean["error"].iloc[0]) if not clean.empty else math.nan
    folder = path.resolve().parent.name
    return CEReference(name=name or f"csv:{folder + '/' if folder else ''}{path.name}", errors=errors,
                       clean_error=clean_error)


def digits_reference() -> CEReference:
    """The demo digits' fixed table: alexnet_mini_32's errors averaged over training seeds."""
    if not DIGITS_TABLE.is_file():
        raise StlBenchError(f"the digits normaliser table {DIGITS_TABLE} is missing from this install; "
                            "reinstall stl-bench or regenerate it with benchmarks/make_digits_normalizer.py")
    return load_reference_csv(DIGITS_TABLE, name="digits")


NAMED: dict[str, Callable[[], CEReference]] = {"alexnet": alexnet_reference, "digits": digits_reference}
KNOWN_NAMES = tuple(NAMED)
LABELS = {"alexnet": "AlexNet (ImageNet-C table)", "digits": "alexnet_mini_32 (digits table)"}


def reference_label(name: str) -> str:
    """How figures and summaries name a reference: what it is, not only its key."""
    return LABELS.get(name, name)


def _looks_like_path(spec: str) -> bool:
    return spec.lower().endswith(".csv") or "/" in spec or "\\" in spec or Path(spec).exists()


def resolve_reference(spec: str, corruptions: Iterable[str] | None = None,
                      severities: Iterable[int] = SEVERITIES) -> CEReference:
    """A known name (`alexnet`, `digits`) or a path to a reference model's long-format CSV.

    With `corruptions`, the reference must cover every (corruption, severity) the run
    will score: a hole would silently leave that corruption without a CE.
    """
    key = spec.strip().lower()
    if key in NAMED:
        reference = NAMED[key]()
    elif _looks_like_path(spec):
        reference = load_reference_csv(spec)
    else:
        close = difflib.get_close_matches(key, KNOWN_NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise StlBenchError(f"unknown normaliser {spec!r}{hint}; known names: {', '.join(KNOWN_NAMES)}, "
                            "or the path of a reference model's results_long.csv")
    if corruptions is not None:
        require_cells(reference, corruptions, severities)
    return reference


def require_cells(reference: CEReference, corruptions: Iterable[str], severities: Iterable[int] = SEVERITIES) -> None:
    """Raise one line naming the first corruption (and severities) the reference lacks."""
    severities = tuple(severities)
    for corruption in corruptions:
        lacking = [s for s in severities if s not in reference.severities(corruption)]
        if lacking:
            which = "" if len(lacking) == len(severities) else f" severities {','.join(map(str, lacking))}"
            raise StlBenchError(
                f"normaliser {reference.name} lacks {corruption}{which}, which this run scores; pass a "
                f"normaliser that covers it ({', '.join(KNOWN_NAMES)} cover all 19 x 5) or leave {corruption} "
                "out with --inc-corruptions"
            )
