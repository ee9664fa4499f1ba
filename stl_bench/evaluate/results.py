"""The resumable result store: one small JSON file per finished cell, written atomically.

A full IN-C evaluation is 95 cells; a job killed after 60 of them should not redo them.
Each cell is saved the moment its counts are summed, through `stl_bench.io` (a temporary
file renamed into place), so a kill leaves either the whole cell or nothing; the
temporaries a kill leaves are removed when the next run starts. Each cell records the setup
it was computed with (checkpoint, head, weights, preprocessing, scoring mode): a cell
made with another setup is stale and computed again, never mixed in.

A pass whose cells only finish with its last batch (on-the-fly IN-C: 95 cells, one walk)
also saves its running sums now and then under `cells/partial/`, one file per process,
with an identity (cells, setups, files, batch size, shard): a re-run resumes from the
last saved batch only when all of it matches, and starts the pass again otherwise.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Collection

from stl_bench.errors import StlBenchError
from stl_bench.evaluate.loop import PassProgress
from stl_bench.evaluate.metrics import CellCounts
from stl_bench.evaluate.suites import CellKey
from stl_bench.io import is_temporary, remove_stale_temporaries, write_text

log = logging.getLogger(__name__)

STORE_VERSION = 1


@dataclass
class StoredCell:
    key: CellKey
    counts: CellCounts
    setup: dict[str, Any]
    seconds: float


class ResultStore:
    """`<run dir>/cells/<suite>[__<corruption>__<severity>].json`, the saved progress of
    unfinished passes in `cells/partial/`, and the run's outputs beside `cells/`."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.cell_dir = self.run_dir / "cells"
        self.partial_dir = self.cell_dir / "partial"
        self.long_csv = self.run_dir / "results_long.csv"
        self.figure = self.run_dir / "ce_per_corruption.png"

    def _path(self, key: CellKey) -> Path:
        name = key.suite if key.corruption == "none" else f"{key.suite}__{key.corruption}__{key.severity}"
        return self.cell_dir / f"{name}.json"

    def save(self, key: CellKey, counts: CellCounts, setup: dict[str, Any], seconds: float) -> None:
        payload = {"version": STORE_VERSION, "key": asdict(key), "setup": setup,
                   "seconds": seconds, "counts": asdict(counts)}
        write_text(self._path(key), json.dumps(payload, indent=1, sort_keys=True))

    def remove_stale_temporaries(self) -> int:
        """Delete the temporaries of every file a run writes here (cells, saved progress, long
        CSV, figure) that a killed run left; call once, on rank 0, before any process writes.

        In the run folder itself only our outputs' temporaries go: `--out` may be a folder
        other programs write to as well.
        """
        removed = remove_stale_temporaries(self.cell_dir) + remove_stale_temporaries(self.partial_dir)
        for output in (self.long_csv, self.figure):
            for path in self.run_dir.glob(f".{output.name}.*"):
                if is_temporary(path) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d unfinished file(s) a killed run left in %s", removed, self.run_dir)
        return removed

    # -- saved progress of unfinished passes --------------------------------------------------
    def _progress_path(self, name: str) -> Path:
        return self.partial_dir / f"{name}.json"

    def save_progress(self, name: str, identity: dict[str, Any], progress: PassProgress) -> None:
        """Save a pass's running sums (floats as JSON writes them: exact, so a resume is too)."""
        payload = {"version": STORE_VERSION, "identity": identity, "batches": progress.batches,
                   "seconds": progress.seconds, "bad": progress.bad,
                   "counts": [{"key": asdict(k), "counts": asdict(c)} for k, c in progress.counts.items()]}
        write_text(self._progress_path(name), json.dumps(payload, sort_keys=True))

    def load_progress(self, name: str, identity: dict[str, Any]) -> PassProgress | None:
        """The saved sums of pass `name` if they were made with exactly `identity`, else None."""
        path = self._progress_path(name)
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("identity") != json.loads(json.dumps(identity)):
                log.info("%s: saved progress was made with other settings or files; starting the pass again", name)
                return None
            counts = {CellKey(**item["key"]): CellCounts(**item["counts"]) for item in payload["counts"]}
            progress = PassProgress(int(payload["batches"]), counts, [int(i) for i in payload["bad"]],
                                    float(payload["seconds"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("saved progress %s is unreadable (%s); starting the pass again", path, exc)
            return None
        log.info("%s: resuming after batch %d (saved progress)", name, progress.batches)
        return progress

    def drop_progress(self, name: str) -> None:
        self._progress_path(name).unlink(missing_ok=True)

    def drop_finished_progress(self, stored: Collection[CellKey]) -> None:
        """Forget saved passes whose cells are all stored (a kill between saving a pass's
        cells and forgetting its progress leaves one)."""
        ids = {k.id for k in stored}
        for path in sorted(self.partial_dir.glob("*.json")):
            try:
                cells = json.loads(path.read_text(encoding="utf-8"))["identity"]["cells"]
            except (ValueError, KeyError, TypeError, OSError):
                continue
            if set(cells) <= ids:
                path.unlink(missing_ok=True)
        if self.partial_dir.is_dir() and not any(self.partial_dir.iterdir()):
            self.partial_dir.rmdir()

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
