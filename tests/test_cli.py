"""The `stl-bench` command line: --help everywhere, `models`, and one clear line for bad input."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from stl_bench.cli import _command_modules, build_parser, main


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    top = capsys.readouterr().out
    for module in _command_modules():
        assert module.NAME in top
        with pytest.raises(SystemExit) as exc:
            main([module.NAME, "--help"])
        assert exc.value.code == 0
        assert len(capsys.readouterr().out) > 100  # options are explained


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "Start with" in capsys.readouterr().out


def test_models_lists_cards_and_variants(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "stl_fan_hybrid_large" in out and "fan_large_16_p4_hybrid_token" in out and "84.7" in out
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "fan_nano_4_p4_32_token" in out and "26,502,944" in out
    assert main(["models", "--show", "fan_vit_tiny"]) == 0
    assert "fan_vit_tiny.pth.tar" in capsys.readouterr().out


@pytest.fixture(scope="module")
def nano_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "nano.pth"
    model = timm.create_model("fan_nano_4_p4_32_token", num_classes=10)
    torch.save({"state_dict": model.state_dict(), "arch": "fan_nano_4_p4_32_token"}, path)
    return path


def test_models_inspect(capsys, nano_checkpoint):
    assert main(["models", "--inspect", str(nano_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "fan_nano_4_p4_32_token" in out and "token grid (8, 8)" in out and "loaded strictly" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "fan_nano_4_p4_32_tokn"], "unknown model 'fan_nano_4_p4_32_tokn'. Did you mean: fan_nano_4_p4_32_token"),
        (["--model", "fan_tiny_12_p16_224"], "does not fit model fan_tiny_12_p16_224"),
    ],
)
def test_bad_model_input_is_one_line(capsys, nano_checkpoint, argv, message):
    assert main(["models", "--inspect", str(nano_checkpoint), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_one_line_without_traceback(tmp_path, nano_checkpoint):
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(nano_checkpoint.read_bytes()[:1000])
    text = tmp_path / "notes.pth"
    text.write_text("just text")
    cases = [(tmp_path / "missing.pth", "does not exist", 2), (truncated, "truncated", 1), (text, "not a readable", 1)]
    for path, message, code in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "stl_bench", "models", "--inspect", str(path)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == code
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_parser_builds_without_heavy_imports():
    """`stl-bench --help` must not pull onnxruntime, gradio or tensorrt in."""
    code = (
        "import sys; from stl_bench.cli import build_parser; build_parser(); "
        "print(','.join(m for m in ('onnxruntime', 'gradio', 'tensorrt', 'onnx') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert build_parser().prog == "stl-bench"


def test_the_command_table_is_the_one_list_and_helpers_are_ignored(tmp_path, monkeypatch):
    """Only the modules named in COMMANDS are commands, in its order; any other module is left alone."""
    import pkgutil

    import stl_bench.cli as cli
    import stl_bench.commands as pkg

    modules = _command_modules()
    assert [m.NAME for m in modules] == list(cli.COMMANDS)
    on_disk = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    assert set(cli.COMMANDS) <= on_disk
    # a helper module beside the commands (no NAME, no run) and a broken extra module
    extra = tmp_path / "extra_commands"
    extra.mkdir()
    (extra / "_util.py").write_text("def shared_flag(p):\n    pass\n")
    (extra / "helpers.py").write_text("raise RuntimeError('not a command and never imported')\n")
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(extra)])
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    assert list(actions[0].choices) == list(cli.COMMANDS)
    assert main(["models"]) == 0


# Number flags left to the command's own check, and why.
UNCHECKED_NUMBERS = {
    ("export", "--opset"),  # the exporter owns the supported opset range and names it
    # checked together with the engine's --max-batch, in one message listing every bad Triton setting
    ("export", "--triton-max-batch"), ("export", "--triton-instances"), ("export", "--triton-queue-delay-us"),
}


def test_every_number_flag_has_a_range_check():
    """A plain type=int/float accepts -4 and 0; every number flag names its range instead."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    plain = {(name, action.option_strings[0] if action.option_strings else action.dest)
             for name, parser in sub.choices.items() for action in parser._actions if action.type in (int, float)}
    assert plain == UNCHECKED_NUMBERS


@pytest.mark.parametrize("check, good, bad, words", [
    ("positive_int", [("3", 3)], ["0", "-4", "2.5", "x", ""], "must be a positive integer"),
    ("non_negative_int", [("0", 0), ("7", 7)], ["-1", "1e3"], "integer of 0 or more"),
    ("positive_float", [("1e-3", 1e-3)], ["0", "-0.1", "nan", "inf", "x"], "must be a positive number"),
    ("non_negative_float", [("0", 0.0)], ["-1e-9", "nan"], "number of 0 or more"),
    ("probability", [("0", 0.0), ("1", 1.0), (".3", 0.3)], ["1.01", "-0.1"], "in [0, 1]"),
    ("port", [("1", 1), ("65535", 65535)], ["0", "65536", "-80", "http"], "port number in 1..65535"),
    ("device", [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1")], ["gpu", "cuda:x", "auto", ""], "device"),
    ("device_or_auto", [("auto", "auto"), ("cpu", "cpu")], ["cuda:-1", "tpu"], "device"),
    ("severity_list", [("1,3,3,5", "1,3,5"), (" 2 ", "2")], ["0", "6", "1,x", ",", "1.5"], "1..5"),
    ("corruption_list", [("fog,fog", "fog"), ("extra", "speckle_noise,gaussian_blur,spatter,saturate")],
     ["fgo", ",", "noise"], "corruption"),
    ("file_size", [("10mb", "10mb"), ("1 GB", "1GB"), ("512kb", "512kb")], ["10", "1.5mb", "lots", "mb"], "unit"),
])
def test_argument_checks(check, good, bad, words):
    import argparse

    from stl_bench.commands import arguments

    fn = getattr(arguments, check)
    for text, value in good:
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
            fn(text)


def test_ranges_with_open_ends():
    import argparse

    from stl_bench.commands.arguments import fraction, int_range

    crop = fraction(low_open=True)
    assert crop("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("in (0, 1], got 0")):
        crop("0")
    drop = fraction(high_open=True)
    assert drop("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("in [0, 1), got 1")):
        drop("1")
    assert int_range(18, 23)("20") == 20
    with pytest.raises(argparse.ArgumentTypeError, match="18..23"):
        int_range(18, 23)("11")


def test_path_checks_name_the_path_and_create_nothing(tmp_path):
    import argparse

    from stl_bench.commands.arguments import (existing_file, existing_folder, model_source, named_folder,
                                              output_file, output_folder)

    (tmp_path / "f.pt").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    assert existing_file(str(tmp_path / "f.pt")) == tmp_path / "f.pt"
    assert existing_folder(str(tmp_path / "d")) == tmp_path / "d"
    assert output_folder(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert output_file(str(tmp_path / "new" / "lb.csv")) == tmp_path / "new" / "lb.csv"
    assert output_file("relative.csv") == Path("relative.csv")
    assert named_folder(f"v2={tmp_path / 'd'}") == f"v2={tmp_path / 'd'}"
    # sources: files that exist, endpoints and bare model names pass as given
    for source in (str(tmp_path / "f.pt"), "http://127.0.0.1:8000", "https://host/x", "fan_nano_4_p4_32_token"):
        assert model_source(source) == source
    refused = [
        (existing_file, tmp_path / "nope.pt", "does not exist; check the path"),
        (existing_file, tmp_path / "d", "is a folder, not a file"),
        (existing_folder, tmp_path / "nope", "does not exist; check the path"),
        (existing_folder, tmp_path / "f.pt", "is a file, not a folder"),
        (model_source, tmp_path / "nope.onnx", "does not exist"),
        (model_source, tmp_path / "d", "is a folder"),
        (output_folder, tmp_path / "f.pt", "is a file, not a folder"),
        (output_folder, tmp_path / "f.pt" / "run", "is a file, not a folder"),
        (output_file, tmp_path / "d", "is a folder; pass a file name"),
        (output_file, tmp_path / "f.pt" / "x" / "lb.csv", "is a file, not a folder"),
        (named_folder, f"v2={tmp_path / 'nope'}", "does not exist"),
    ]
    for check, value, words in refused:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            check(str(value))
        assert words in str(err.value) and str(value).split("=")[-1] in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.pt"]  # nothing made, no probe left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path):
    import argparse

    from stl_bench.commands.arguments import output_file, output_folder

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for check, value in ((output_folder, ro), (output_folder, ro / "new"), (output_file, ro / "lb.csv")):
            with pytest.raises(argparse.ArgumentTypeError, match="cannot write"):
                check(str(value))
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_a_refused_flag_is_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--batch-size", "-4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stl-bench eval: error: argument --batch-size: must be a positive integer, got -4")
    assert err.count("\n") == 1


def test_checked_values_reach_the_command(monkeypatch, tmp_path):
    """The checks hand commands what they used to get: numbers, paths and comma lists they split."""
    args = build_parser().parse_args(["corrupt", str(tmp_path), str(tmp_path / "out"), "--corruptions", "fog,extra",
                                      "--severities", "5,1", "--batch-size", "4"])
    assert args.batch_size == 4 and args.severities == "5,1" and args.dst == tmp_path / "out"
    assert args.corruptions == "fog,speckle_noise,gaussian_blur,spatter,saturate"
    args = build_parser().parse_args(["train", "--lr", "1e-3", "--scale", "0.5", "1", "--output", str(tmp_path)])
    assert args.lr == 1e-3 and args.scale == [0.5, 1.0] and args.output == str(tmp_path)
    args = build_parser().parse_args(["demo", "--corruptions", "fog,snow", "--severities", "2,3"])
    assert args.corruptions == ("fog", "snow") and args.severities == (2, 3)


def test_train_checks_name_real_flags():
    """A check keyed by a misspelt field would silently check nothing."""
    from stl_bench.commands.train import _CHECKS
    from stl_bench.train.config import flag_fields

    assert set(_CHECKS) <= {f.name for f, _ in flag_fields()}
