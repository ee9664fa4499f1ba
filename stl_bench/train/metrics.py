"""The run's per-epoch log: metrics.jsonl and metrics.csv, one row per epoch, rewritten whole."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from stl_bench.io import write_text

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


class MetricsLog:
    """One row per epoch in metrics.jsonl and metrics.csv; both files are replaced atomically on each row."""

    def __init__(self, out: Path, keep_before_epoch: int | None) -> None:
        self.jsonl, self.csv = out / METRICS_JSONL, out / METRICS_CSV
        self.rows: list[dict[str, Any]] = []
        if keep_before_epoch is not None and self.jsonl.exists():
            # a killed run may have logged the epoch it is about to redo
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] < keep_before_epoch]
        self._rewrite()

    def _rewrite(self) -> None:
        write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        write_text(self.csv, self._csv_text())

    def _csv_text(self) -> str:
        cols: list[str] = []
        for r in self.rows:
            cols.extend(k for k in r if k not in cols)  # a later epoch may add columns (e.g. validation)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._rewrite()

    def best(self, key: str) -> float:
        vals = [r[key] for r in self.rows if r.get(key) is not None]
        return max(vals) if vals else -1.0
