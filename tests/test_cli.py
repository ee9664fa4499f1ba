"""The `stl-bench` command line: --help everywhere, `models`, and one clear line for bad input."""
from __future__ import annotations

import subprocess
import sys

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
    for path, message in [(tmp_path / "missing.pth", "does not exist"), (truncated, "truncated"), (text, "not a readable")]:
        proc = subprocess.run(
            [sys.executable, "-m", "stl_bench", "models", "--inspect", str(path)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 1
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
