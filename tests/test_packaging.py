"""The package as a user installs it: a plain (non-editable) wheel, away from the source tree.

`stl-bench models` and the leaderboard read the model cards, and `--normalizer digits`
reads the fixed CE table; in a wheel install there is no repository around the package,
so the cards and the tables must travel inside it. Built from a copy
of the sources so that the build leaves nothing in the checkout (about 15 s on 2 cores).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted(p.name for p in (REPO / "stl_bench" / "cards").glob("*.md"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the sources, then `pip install --target` of that wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "stl_bench", src / "stl_bench", ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)], cwd=tmp)
    wheels = list((tmp / "dist").glob("stl_bench-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target),
          str(wheels[0])], cwd=tmp)
    return target


def _python(target: Path, code: str, *args: str) -> str:
    """Run code with only the installed copy of stl_bench importable, from a folder outside the repository."""
    env = {k: v for k, v in os.environ.items() if k != "STL_BENCH_MODELS_DIR"}
    env.update(PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE="1", GRADIO_ANALYTICS_ENABLED="False")
    return _run([sys.executable, *(["-c", code] if code else []), *args], cwd=target.parent, env=env).stdout


def test_wheel_install_finds_every_model_card(installed):
    code = ("import json, stl_bench; from stl_bench.fan.cards import cards_dir, load_cards; "
            "print(json.dumps([stl_bench.__file__, str(cards_dir()), sorted(load_cards())]))")
    module_file, folder, names = json.loads(_python(installed, code).strip().splitlines()[-1])
    assert Path(module_file).is_relative_to(installed)  # the wheel's copy, not the checkout's
    assert Path(folder) == installed / "stl_bench" / "cards"
    assert sorted(p.name for p in Path(folder).glob("*.md")) == CARDS
    assert len(names) == len(CARDS)


def test_wheel_install_lists_the_cards_from_the_command_line(installed):
    out = _python(installed, "", "-m", "stl_bench", "models")
    assert f"{len(CARDS)} cards in {installed / 'stl_bench' / 'cards'}" in out
    assert "stl_fan_hybrid_tiny_labeler" in out


def test_wheel_install_has_the_digits_normaliser_table(installed):
    code = ("import json; from stl_bench.evaluate.reference import resolve_reference, DIGITS_TABLE; "
            "r = resolve_reference('digits'); "
            "print(json.dumps([str(DIGITS_TABLE), r.name, sorted(r.errors), r.errors['fog'][3], r.clean_error]))")
    path, name, corruptions, fog3, clean = json.loads(_python(installed, code).strip().splitlines()[-1])
    shipped = REPO / "stl_bench" / "evaluate" / "tables"
    assert Path(path).parent == installed / "stl_bench" / "evaluate" / "tables"
    assert sorted(p.name for p in Path(path).parent.iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert (Path(path).with_suffix(".json")).is_file()  # the metadata travels with the table
    assert name == "digits" and len(corruptions) == 19 and 0 < fog3 < 1 and 0 <= clean < 1


def test_models_readme_points_at_the_one_copy_of_the_cards():
    assert len(CARDS) >= 18
    assert sorted(p.name for p in (REPO / "models").iterdir()) == ["README.md"]
    assert "stl_bench/cards/" in (REPO / "models" / "README.md").read_text()


def test_scipy_is_a_test_dependency_only():
    """pyproject lists scipy under the test extras: nothing in the library may import it."""
    importers = []
    for path in (REPO / "stl_bench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            importers += [str(path.relative_to(REPO)) for n in names if n.split(".")[0] == "scipy"]
    assert importers == []
