"""The resumable result store: one small JSON file per finished cell, written atomically.

A full IN-C evaluation is 95 cells; a job killed after 60 of them should not redo them.
Each cell is saved the moment its counts are summed, through `stl_bench.io` (a temporary
file renamed into place), so a kill leaves either the whole cell or nothing; the
temporaries a kill leaves are removed when the next run starts. Each cell records the setup
it was computed with (checkpoint, head, weights, preprocessing, scoring mode): a cell
made with another setup is stale and computed again, never mixed in.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.metrics import CellCounts
from stl_bench.evaluate.suites import CellKey
from stl_bench.io import remove_stale_temporaries, write_text

log = logging.getLogger(__name__)

STORE_VERSION = 1


@dataclass
class StoredCell:
    key: CellKey
    counts: CellCounts
    setup: dict[str, Any]
    seconds: float


class ResultStore:
    """`<run dir>/cells/<suite>[__<corruption>__<severity>].json`."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.cell_dir = self.run_dir / "cells"

    def _path(self, key: CellKey) -> Path:
        name = key.suite if key.corruption == "none" else f"{key.suite}__{key.corruption}__{key.severity}"
        return self.cell_dir / f"{name}.json"

    def save(self, key: CellKey, counts: CellCounts, setup: dict[str, Any], seconds: float) -> None:
        payload = {"version": STORE_VERSION, "key": asdict(key), "setup": setup,
                   "seconds": seconds, "counts": asdict(counts)}
        write_text(self._path(key), json.dumps(payload, indent=1, sort_keys=True))

    def remove_stale_temporaries(self) -> int:
        """Delete cell files a killed run left half-written (call once, on the writing rank)."""
        removed = remove_stale_temporaries(self.cell_dir)
        if removed:
            log.info("removed %d unfinished cell file(s) from %s", removed, self.cell_dir)
        return removed

    def load(self) -> dict[CellKey, StoredCell]:
        cells: dict[CellKey, StoredCell] = {}
        if not self.cell_dir.is_dir():
            return cells
        for path in sorted(self.cell_dir.glob("*.json")):
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
                key = CellKey(**payload["key"])
                counts = CellCounts(**payload["counts"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StlBenchError(
                    f"result cell {path} is unreadable ({exc}); delete it and re-run to compute it again"
                ) from exc
            cells[key] = StoredCell(key, counts, payload.get("setup", {}), float(payload.get("seconds", 0.0)))
        return cells

    def usable(self, setups: dict[CellKey, dict[str, Any]], warn: bool = True) -> dict[CellKey, StoredCell]:
        """Stored cells whose setup matches this run's; the rest are reported as stale."""
        good: dict[CellKey, StoredCell] = {}
        for key, cell in self.load().items():
            want = setups.get(key)
            if want is None:
                continue
            if cell.setup != want:
                if not warn:
                    continue
                changed = sorted(k for k in set(want) | set(cell.setup) if want.get(k) != cell.setup.get(k))
                log.warning("%s: stored result was made with other settings (%s); computing it again",
                            key.id, ", ".join(changed))
                continue
            good[key] = cell
        return good
