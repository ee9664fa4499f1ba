"""The leaderboard CSV: one row per evaluated model, updated in place by later runs.

A row is keyed by model, checkpoint hash, head, weights and preprocessing: results that
differ in any of these are different results and get different rows. A later run of
the same key overwrites the columns it measured and keeps the others, so evaluating
IN-A next week does not erase last week's IN-C. Settings that only some metrics depend
on (the IN-A/IN-R scoring mode, the CE reference, files vs on-the-fly IN-C) travel with
those metrics: when a setting changes, the old metrics that depended on it are cleared
rather than left beside a setting they were not measured with. Rows of other models are
never touched; the file is rewritten atomically under a lock. Each row also carries a
`name`, the run folder or file of the evaluated source (`labeler` and `student` are two
checkpoints of one architecture): a reader tells rows apart by it, not by hash.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

from stl_bench.errors import StlBenchError
from stl_bench.io import write_text

log = logging.getLogger(__name__)

KEY_COLUMNS = ["model", "checkpoint", "head", "weights", "preprocessing"]
NAME_COLUMN = "name"
# Checkpoint file names that say nothing about the run: such a source is named by its folder.
GENERIC_STEMS = {"last", "best", "checkpoint", "model", "model_best", "pytorch_model", "weights", "ema", "final"}
INFO_COLUMNS = ["params", "input_size", "backend", "images_per_s", "date", "versions", "checkpoint_path",
                "a_r_mode", "normalizer", "inc_mode", "bad_images", "notes"]
METRIC_ORDER = ["in1k_top1", "in1k_top5", "in1k_ece", "inc_acc", "inc_mce", "inc_rel_mce", "inc_extra_mce",
                "inc_acc_all", "inc_ece", "in_a", "in_a_ece", "in_r", "in_r_ece"]
SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    "a_r_mode": ("in_a", "in_r"),
    "normalizer": ("inc_mce", "inc_rel_mce", "inc_extra_mce", "ce_"),
    "inc_mode": ("inc_", "ce_"),
}
# Reported numbers in model cards (percent) and the leaderboard column each compares with.
CARD_METRICS = {"in1k_top1": "in1k_top1", "inc_acc": "inc_acc", "inc_mce": "inc_mce", "in_a": "in_a", "in_r": "in_r"}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the CSV between concurrent eval jobs."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_name(source: str | None, model: str = "") -> str:
    """The name a reader knows a run by: its file's stem, or its folder for `last.pt` and the like."""
    if not source:
        return model
    if "://" in source:
        return source
    path = Path(source)
    stem = path.name.split(".")[0]
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return stem or model


def _parse(path: Path):
    """The CSV at `path` as a table, or the one-line reason it is not a leaderboard."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"checkpoint": str})
    except pd.errors.EmptyDataError:
        return "it is empty"
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"it is not a readable CSV: {first}"
    lacking = [c for c in KEY_COLUMNS if c not in table.columns]
    if lacking:
        return f"it lacks the key column(s) {', '.join(lacking)}"
    return _with_names(table)


def _with_names(table):
    """Older leaderboards have no `name` column: derive it from each row's checkpoint path."""
    if table.empty:
        return table
    if NAME_COLUMN not in table.columns:
        table.insert(0, NAME_COLUMN, None)
    table[NAME_COLUMN] = table[NAME_COLUMN].astype(object)
    paths = table["checkpoint_path"] if "checkpoint_path" in table.columns else [None] * len(table)
    for i, (name, source, model) in enumerate(zip(table[NAME_COLUMN], paths, table["model"])):
        if _missing(name):
            table.iat[i, table.columns.get_loc(NAME_COLUMN)] = run_name(None if _missing(source) else str(source),
                                                                        str(model))
    return table


def read_leaderboard(path: Path | str):
    path = Path(path)
    if not path.is_file():
        raise StlBenchError(f"leaderboard {path} does not exist; run `stl-bench eval` first (it writes one)")
    table = _parse(path)
    if isinstance(table, str):
        raise StlBenchError(f"leaderboard {path} is not a leaderboard ({table}); restore or delete it")
    return table


def _ordered(columns: list[str]) -> list[str]:
    first = [c for c in [NAME_COLUMN] + KEY_COLUMNS + INFO_COLUMNS[:2] if c in columns]
    metrics = [c for c in METRIC_ORDER if c in columns]
    ce = sorted(c for c in columns if c.startswith("ce_"))
    rest_info = [c for c in INFO_COLUMNS[2:] if c in columns]
    known = set(first) | set(metrics) | set(ce) | set(rest_info)
    other = sorted(c for c in columns if c not in known)
    return first + metrics + other + ce + rest_info


def merge_row(table, row: dict[str, Any]):
    """The leaderboard with `row` merged in (pure: no file access)."""
    import pandas as pd

    missing_keys = [k for k in KEY_COLUMNS if _missing(row.get(k))]
    if missing_keys:
        raise ValueError(f"leaderboard row lacks key column(s) {missing_keys}")
    row = {k: v for k, v in row.items()}
    if table is None or table.empty:
        table = pd.DataFrame(columns=KEY_COLUMNS)
    table = table.copy()
    for col in row:
        if col not in table.columns:
            table[col] = pd.Series([None] * len(table), dtype=object)
    table = table.astype({c: object for c in table.columns})
    match = table.index[
        (table[KEY_COLUMNS].astype(str) == pd.Series({k: str(row[k]) for k in KEY_COLUMNS})).all(axis=1)
    ]
    if len(match) == 0:
        table.loc[len(table)] = {c: row.get(c) for c in table.columns}
        table = table.reset_index(drop=True)
    else:
        i = match[0]
        for setting, prefixes in SETTING_GROUPS.items():
            new, old = row.get(setting), table.at[i, setting] if setting in table.columns else None
            if _missing(new) or _missing(old) or str(new) == str(old):
                continue
            stale = [c for c in table.columns if c.startswith(prefixes) and _missing(row.get(c))]
            if stale:
                log.warning("%s changed (%s -> %s): clearing %s measured with the old setting",
                            setting, old, new, ", ".join(stale))
                for c in stale:
                    table.at[i, c] = None
        for col, val in row.items():
            if not _missing(val):
                table.at[i, col] = val
    return table[_ordered(list(table.columns))]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _versions() -> str:
    import timm
    import torch

    import stl_bench

    return f"stl-bench {stl_bench.__version__}, torch {torch.__version__}, timm {timm.__version__}"


def leaderboard_row(
    setup: Any,
    summary: Any,
    *,
    params: int | None,
    input_size: Sequence[int],
    backend: str,
    images_per_s: float,
    checkpoint_path: str | None,
    kinds: Collection[str],
    options: Any,
    normalizer: str,
) -> dict[str, Any]:
    """One run's row: its key (`setup`'s KEY_COLUMNS), facts about the run, then its metrics.

    `summary` is the report's `Summary` and `options` the run's `SuiteOptions`. A setting
    is recorded only when a suite that depends on it ran (the IN-A/IN-R mode with IN-A or
    IN-R, the CE reference and the IN-C mode with IN-C), so that merging never clears
    metrics over a setting this run did not use.
    """
    import datetime

    inc = "in-c" in kinds
    return {
        NAME_COLUMN: run_name(str(checkpoint_path) if checkpoint_path else None, setup.model),
        **{k: getattr(setup, k) for k in KEY_COLUMNS},
        "params": params,
        "input_size": "x".join(str(v) for v in input_size),
        "backend": backend,
        "images_per_s": _round(images_per_s, 2),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "checkpoint_path": str(checkpoint_path) if checkpoint_path else "",
        "a_r_mode": options.a_r_mode if set(kinds) & {"in-a", "in-r"} else None,
        "normalizer": normalizer if inc else None,
        "inc_mode": ("on-the-fly" if options.inc_on_the_fly else "files") if inc else None,
        "bad_images": summary.bad_images,
        "notes": "; ".join(summary.notes) or None,
        **{k: _round(v, 4) for k, v in summary.metrics.items()},
    }


def update_leaderboard(path: Path | str, row: dict[str, Any]):
    """Merge `row` into the CSV at `path` (created if absent) and rewrite it atomically.

    A file there that is not a leaderboard (garbage, empty, another CSV) is left as it is:
    it may be the user's, and rewriting it would lose it. The new row is saved beside it
    instead, so nothing this run computed is lost, and the error says where.
    """
    import pandas as pd

    path = Path(path)
    with _locked(path):
        table = _parse(path) if path.is_file() else None
        if isinstance(table, str):
            tag = f"{_safe(row.get(NAME_COLUMN))}-{_safe(row.get('checkpoint'))}"
            saved = path.with_name(f"{path.stem}.unmerged-{tag}.csv")
            write_text(saved, pd.DataFrame([row]).to_csv(index=False, float_format="%.4f"))
            raise StlBenchError(
                f"leaderboard {path} was left untouched because {table}; this run's row is saved in {saved} "
                "(its cells and results_long.csv are in the eval --out folder); restore or delete "
                f"{path.name} and re-run the same command to merge the row (stored cells are reused)")
        merged = merge_row(table, row)
        write_text(path, merged.to_csv(index=False, float_format="%.4f"))
    return merged


def _safe(text: Any) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text or "run"))[:60]


# -- model cards ---------------------------------------------------------------------------------
def load_model_cards(cards_dir: Path | str | None = None) -> dict[str, dict]:
    """Model cards keyed by name (the Markdown cards of `stl_bench/cards/`, or of `cards_dir`).

    A missing folder is not an error: there is simply nothing to compare with.
    """
    from stl_bench.fan.cards import load_cards

    return load_cards(Path(cards_dir) if cards_dir else None)


def _card_for(row: Any, cards: dict[str, dict]) -> dict | None:
    """The card a leaderboard row measured: by the released file's name (downloads keep it),
    then by card name, then by architecture only where one card with reported numbers has
    it (`fan_base_16_p4_hybrid` has three: in1k, in22k and 384 px, which must not be mixed)."""
    from stl_bench.fan.cards import card_file_name

    path = row.get("checkpoint_path")
    if not _missing(path):
        by_file = [c for c in cards.values() if card_file_name(c) == Path(str(path)).name]
        if by_file:
            return by_file[0]
    for key in (row.get(NAME_COLUMN), row.get("model")):
        if not _missing(key):
            by_name = [c for n, c in cards.items() if str(key) in (n, c.get("name"))]
            if by_name:
                return by_name[0]
    same_arch = [c for c in cards.values() if c.get("arch") == row.get("model") and c.get("reported")]
    return same_arch[0] if len(same_arch) == 1 else None


def compare_with_cards(table, cards: dict[str, dict]):
    """Long table: model, metric, reported, measured, difference (measured - reported)."""
    import pandas as pd

    rows = []
    for _, r in table.iterrows():
        card = _card_for(r, cards)
        if card is None:
            continue
        for key, col in CARD_METRICS.items():
            reported = (card.get("reported") or {}).get(key)
            if reported is None:
                continue
            measured = r.get(col)
            measured = float(measured) if not _missing(measured) else math.nan
            rows.append({"model": r["model"], "checkpoint": r.get("checkpoint"), "head": r.get("head"),
                         "metric": key, "reported": float(reported), "measured": measured,
                         "difference": measured - float(reported)})
    return pd.DataFrame(rows, columns=["model", "checkpoint", "head", "metric", "reported", "measured",
                                       "difference"])
