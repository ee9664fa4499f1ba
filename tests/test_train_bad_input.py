"""Bad input: one clear message each, exit code 1, and nothing already written lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stl_bench.cli import main
from stl_bench.data.demo import ensure_demo_data

QUICK = ["--preset", "demo", "--stage", "labeler", "--batch-size", "8", "--epochs", "1", "--steps-per-epoch", "2",
         "--aa", "none", "--reprob", "0", "--mixup", "0.2", "--workers", "0", "--no-progress", "--threads", "1",
         "--warmup-epochs", "0"]


def _fails(capsys, args: list[str], *fragments: str) -> None:
    assert main(["train", *QUICK, *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


def test_missing_data_folder(capsys, tmp_path: Path) -> None:
    _fails(capsys, ["--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], "does not exist")


def test_no_train_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _fails(capsys, ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")], "no 'train' folder")


def test_empty_train_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "data" / "train").mkdir(parents=True)
    _fails(capsys, ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")], "no class sub-folders")


def test_class_folders_without_images(capsys, tmp_path: Path) -> None:
    for c in "ab":
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        (tmp_path / "data" / "train" / c / "readme.txt").write_text("not an image")
    _fails(capsys, ["--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")], "no image files")


def test_student_needs_one_label_source(capsys, tmp_path: Path) -> None:
    _fails(capsys, ["--stage", "student", "--data", "demo", "--output", str(tmp_path / "o")], "--teacher", "--token-labels")


def test_unreadable_and_truncated_images_are_skipped_and_counted(tmp_path_factory, tmp_path: Path, caplog) -> None:
    full = ensure_demo_data(tmp_path_factory.getbasetemp() / "demo_digits")
    data = tmp_path / "data"
    for digit in "01":
        (data / "train" / digit).mkdir(parents=True)
        for p in sorted((full / "train" / digit).glob("*.png"))[:8]:
            shutil.copy(p, data / "train" / digit / p.name)
    good = next((data / "train" / "0").glob("*.png")).read_bytes()
    (data / "train" / "0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "train" / "1" / "garbage.png").write_bytes(b"not a png at all")
    out = tmp_path / "run"
    # batch 18 = every image in one step, so both bad files are met (and one odd-count drop for mixup)
    assert main(["train", *QUICK, "--batch-size", "18", "--steps-per-epoch", "1", "--val-split", "",
                 "--data", str(data), "--output", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["bad_images"] == 2 and row["train_images"] == 16
    assert "2 unreadable image(s)" in caplog.text


def test_label_command_refuses_to_overwrite(capsys, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    assert main(["label", "--teacher", str(tmp_path / "missing.pt"), "--data", "demo", "--output", str(out)]) == 1
    assert "already holds token labels" in capsys.readouterr().err
    assert (out / "meta.json").read_text() == "{}"


@pytest.mark.parametrize("flag", [["--stage", "nope"], ["--label-mode", "threshold"], ["--batch-size", "7"]])
def test_bad_flags(capsys, tmp_path: Path, flag: list[str]) -> None:
    _fails(capsys, ["--data", "demo", "--output", str(tmp_path / "o"), *flag])


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--lr", "-1"], ["--drop-path", "1"], ["--crop-pct", "0"],
                                  ["--workers", "-1"], ["--device", "gpu"], ["--scale", "0", "1"]])
def test_bad_values_are_refused_while_parsing(capsys, tmp_path: Path, flag: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", *QUICK, "--data", "demo", "--output", str(tmp_path / "o"), *flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stl-bench train: error: argument " + flag[0]) and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("preset", ["defaults", "demo", "fan_tiny_hybrid", "fan_large_hybrid"])
def test_every_recipe_value_passes_the_flag_checks(preset: str) -> None:
    """The checks refuse nonsense, never a value a shipped recipe uses."""
    from dataclasses import MISSING

    from stl_bench.cli import build_parser
    from stl_bench.train.config import PRESETS, flag_fields

    values = {f.name: f.default for f, _ in flag_fields() if f.default is not MISSING}
    values.update(PRESETS.get(preset, {}))
    argv = ["train"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, *map(str, value if isinstance(value, tuple) else (value,))]
    args = build_parser().parse_args(argv)
    assert args.batch_size == values["batch_size"] and args.lr == values["lr"]
