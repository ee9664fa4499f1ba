"""Leaderboard CSV semantics and the reported-vs-measured comparison."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from stl_bench.cli import main
from stl_bench.errors import StlBenchError
from stl_bench.evaluate.leaderboard import (
    compare_with_cards,
    load_model_cards,
    merge_row,
    read_leaderboard,
    run_name,
    update_leaderboard,
)

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


def test_a_run_is_named_by_its_folder_or_file():
    assert run_name("stl_bench_runs/demo/labeler/last.pt") == "labeler"
    assert run_name("stl_bench_runs/demo/student/last.pt") == "student"
    assert run_name("exports/student.onnx") == "student"
    assert run_name("stl_fan_hybrid_small.pth.tar") == "stl_fan_hybrid_small"
    assert run_name("runs/fan_s/model_best.pth.tar") == "fan_s"
    assert run_name("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert run_name(None, "fan_tiny") == run_name("", "fan_tiny") == "fan_tiny"


def test_two_checkpoints_of_one_architecture_are_told_apart_by_name(tmp_path):
    path = tmp_path / "lb.csv"
    update_leaderboard(path, {**BASE, "name": "labeler", "checkpoint": "aaa", "in1k_top1": 97.0})
    update_leaderboard(path, {**BASE, "name": "student", "checkpoint": "bbb", "in1k_top1": 97.5})
    table = pd.read_csv(path)
    assert list(table.columns[:2]) == ["name", "model"] and list(table["name"]) == ["labeler", "student"]
    assert main(["leaderboard", str(path)]) == 0


def test_an_old_leaderboard_without_names_still_reads_and_gains_them(tmp_path, capsys):
    path = tmp_path / "lb.csv"
    pd.DataFrame([{**BASE, "in1k_top1": 79.0, "checkpoint_path": "runs/labeler/last.pt"},
                  {**BASE, "checkpoint": "def456", "in1k_top1": 78.0, "checkpoint_path": ""}]).to_csv(path, index=False)
    assert list(read_leaderboard(path)["name"]) == ["labeler", "fan_tiny"]
    assert main(["leaderboard", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[0] == "name" and "labeler" in out
    update_leaderboard(path, {**BASE, "name": "student", "checkpoint": "ccc", "in1k_top1": 80.0})
    table = pd.read_csv(path, dtype={"checkpoint": str})
    assert list(table["name"]) == ["labeler", "fan_tiny", "student"] and len(table) == 3
    assert list(table["in1k_top1"]) == [79.0, 78.0, 80.0]


@pytest.mark.parametrize("content, reason", [
    ("", "it is empty"),
    ("model,checkpoint\nm,c\nm,c,x,y\n", "not a readable CSV"),
    ('"half a quoted field\n', "not a readable CSV"),
    ("a,b\n1,2\n", "lacks the key column(s) model"),
])
def test_a_broken_leaderboard_is_left_alone_and_the_new_row_kept(tmp_path, capsys, content, reason):
    path = tmp_path / "lb.csv"
    path.write_text(content)
    with pytest.raises(StlBenchError) as err:
        update_leaderboard(path, {**BASE, "name": "student", "in1k_top1": 97.5})
    message = str(err.value)
    assert "\n" not in message and str(path) in message and reason in message
    assert path.read_text() == content  # not written over
    saved = [p for p in tmp_path.iterdir() if p.name.startswith("lb.unmerged-student-")]
    assert len(saved) == 1 and str(saved[0]) in message
    row = pd.read_csv(saved[0], dtype={"checkpoint": str}).iloc[0]
    assert row["name"] == "student" and row["checkpoint"] == "abc123" and row["in1k_top1"] == 97.5
    # `stl-bench leaderboard` says the same in one line
    assert main(["leaderboard", str(path)]) == 1
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and str(path) in err_text and reason in err_text


def test_a_row_is_compared_with_the_card_of_its_released_file():
    """Three released cards share fan_base_16_p4_hybrid: the file name picks one, an unknown
    file of that architecture matches none rather than the first."""
    cards = load_model_cards()
    row = {**BASE, "model": "fan_base_16_p4_hybrid", "in1k_top1": 85.0}
    by_file = merge_row(None, {**row, "checkpoint_path": "/cache/fan_hybrid_base_in22k_1k.pth.tar"})
    cmp = compare_with_cards(by_file, cards)
    assert cmp.set_index("metric")["reported"].to_dict() == {"in1k_top1": 85.3, "inc_acc": 70.5}
    unknown = merge_row(None, {**row, "checkpoint_path": "/runs/mine/last.pt"})
    assert compare_with_cards(unknown, cards).empty
    single = merge_row(None, {**BASE, "model": "fan_tiny_8_p4_hybrid", "in1k_top1": 79.0})
    assert not compare_with_cards(single, cards).empty  # one card has that architecture
