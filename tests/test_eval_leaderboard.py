"""Leaderboard CSV semantics and the reported-vs-measured comparison."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from stl_bench.cli import main
from stl_bench.evaluate.leaderboard import compare_with_cards, load_model_cards, merge_row, update_leaderboard

BASE = {"model": "fan_tiny", "checkpoint": "abc123", "head": "fused", "weights": "ema", "preprocessing": "p"}


def test_rows_are_added_updated_and_never_dropped(tmp_path):
    path = tmp_path / "lb.csv"
    update_leaderboard(path, {**BASE, "in1k_top1": 79.0, "inc_acc": 57.0, "inc_mode": "files"})
    update_leaderboard(path, {**BASE, "model": "other", "in1k_top1": 70.0})
    update_leaderboard(path, {**BASE, "in_a": 15.5, "a_r_mode": "official", "in1k_top1": 79.5})
    table = pd.read_csv(path, dtype={"checkpoint": str})
    assert len(table) == 2
    row = table[table["model"] == "fan_tiny"].iloc[0]
    assert row["in1k_top1"] == 79.5 and row["inc_acc"] == 57.0 and row["in_a"] == 15.5
    assert table[table["model"] == "other"].iloc[0]["in1k_top1"] == 70.0
    # another head of the same checkpoint is another row
    update_leaderboard(path, {**BASE, "head": "cls", "in1k_top1": 78.0})
    assert len(pd.read_csv(path)) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_changed_setting_clears_the_metrics_it_governed():
    table = merge_row(None, {**BASE, "in_a": 20.0, "in_r": 40.0, "a_r_mode": "official", "in1k_top1": 80.0})
    table = merge_row(table, {**BASE, "in_a": 12.0, "a_r_mode": "all1000"})
    row = table.iloc[0]
    assert row["in_a"] == 12.0 and row["a_r_mode"] == "all1000" and row["in1k_top1"] == 80.0
    assert row["in_r"] is None or (isinstance(row["in_r"], float) and math.isnan(row["in_r"]))


def test_key_columns_are_required():
    with pytest.raises(ValueError, match="key column"):
        merge_row(None, {"model": "x", "in1k_top1": 1.0})


def _card(path, name, arch, reported):
    path.write_text(f"---\nname: {name}\ntitle: {name}\narch: {arch}\ninput_size: [3, 224, 224]\n"
                    f"params: 7400000\nreported: {reported}\nurl: ''\n---\n\nA card.\n")


def test_reported_vs_measured_from_cards(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    _card(cards / "fan_tiny.md", name="fan-t-hybrid", arch="fan_tiny", reported="{in1k_top1: 80.1, inc_acc: 57.4}")
    (cards / "notes.txt").write_text("not a card")
    loaded = load_model_cards(cards)
    assert list(loaded) == ["fan-t-hybrid"]
    table = merge_row(None, {**BASE, "in1k_top1": 79.6})
    cmp = compare_with_cards(table, loaded)
    assert list(cmp["metric"]) == ["in1k_top1", "inc_acc"]
    assert cmp.iloc[0]["difference"] == pytest.approx(-0.5)
    assert math.isnan(cmp.iloc[1]["measured"])
    assert compare_with_cards(table, {}).empty


def test_leaderboard_command(tmp_path, capsys):
    path = tmp_path / "lb.csv"
    update_leaderboard(path, {**BASE, "in1k_top1": 79.6, "params": 7_400_000})
    cards = tmp_path / "cards"
    cards.mkdir()
    _card(cards / "t.md", name="t", arch="fan_tiny", reported="{in1k_top1: 80.1}")
    assert main(["leaderboard", str(path), "--cards", str(cards)]) == 0
    out = capsys.readouterr().out
    assert "fan_tiny" in out and "79.60" in out and "80.10" in out and "-0.50" in out
    assert main(["leaderboard", str(tmp_path / "missing.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err
