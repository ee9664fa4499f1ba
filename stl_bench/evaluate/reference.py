"""The reference errors CE divides by: AlexNet's table, or a reference model's own run.

mCE is only defined relative to a reference model. For ImageNet that is AlexNet (the
built-in table). For another class set (the 10-class demo data, a 32 px model) there is
no published AlexNet row, so the reference is any model evaluated with this same tool:
its long-format CSV (`suite, corruption, severity, n, correct, error`) is the table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.alexnet import ALEXNET_CLEAN_ERROR, ALEXNET_ERROR_BY_SEVERITY


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


def load_reference_csv(path: Path | str, clean_suite: str = "in1k", inc_suite: str = "in-c") -> CEReference:
    """A reference from a long-format CSV written by `stl-bench eval` for a reference model.

    The `in-c` rows give the per-cell errors; the `in1k` row (the model's clean
    validation set) gives the clean error that relative CE subtracts.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise StlBenchError(
            f"normaliser file {path} does not exist; pass `--normalizer alexnet` or the long-format "
            "CSV (results_long.csv) of a reference model evaluated with `stl-bench eval`"
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
    return CEReference(name=f"csv:{path.name}", errors=errors, clean_error=clean_error)


def resolve_reference(spec: str) -> CEReference:
    """`alexnet` (the default) or a path to a reference model's long-format CSV."""
    return alexnet_reference() if spec.lower() == "alexnet" else load_reference_csv(spec)
