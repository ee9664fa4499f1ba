"""`stl-bench app` and `python app/app.py`: flags, layering, and a real server process."""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stl_bench.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_flags_and_localhost_default():
    args = build_parser().parse_args(["app", "--model", "a.pt", "--model", "b.onnx", "--teacher", "t.pt"])
    assert args.host == "127.0.0.1" and args.port == 7860
    assert args.model == ["a.pt", "b.onnx"] and args.teacher == "t.pt"
    assert args.threads == 1 and args.concurrency >= 1


def test_library_never_imports_the_app_folder_and_cli_start_stays_light():
    offenders = []
    for path in (REPO / "stl_bench").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "app" or n.startswith("app.")]
    assert offenders == []
    code = ("import sys, stl_bench.cli as c; c.build_parser(); import stl_bench.stl.tokenmaps, stl_bench.ui.drawing, stl_bench.ui.catalog; "
            "print(sorted(m for m in ('gradio', 'gradio_client', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect sends nothing; it picks the outgoing address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_app_script_serves_and_names_the_demo_command_without_models(free_port, tmp_path):
    """`python app/app.py` (the same code as `stl-bench app`) in its own process, no models found."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app" / "app.py"), "--port", str(port), "--demo-dir", str(tmp_path / "none")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 60
        config = None
        while time.time() < deadline and proc.poll() is None:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).json()
                break
            except (httpx.HTTPError, ValueError):
                time.sleep(0.3)
        assert config is not None, proc.communicate(timeout=5)[0] if proc.poll() is not None else "no answer in 60 s"
        texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
        assert any("stl-bench demo" in t for t in texts)
        other = _non_loopback_address()
        if other is not None:  # bound to localhost only: the machine's other address does not answer
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{other}:{port}/config", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_importing_and_building_the_app_writes_nothing_inside_the_package(tmp_path):
    """Gradio writes a `.pyi` beside any module that defines a component class: ours define none.

    Run on a fresh copy of the package (no stub from an earlier run can hide a new one),
    without bytecode, then compare its files before and after.
    """
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(REPO / "stl_bench", copy / "stl_bench", ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    code = ("from stl_bench.ui.blocks import build_demo; from stl_bench.ui.catalog import build_catalog; "
            "import sys; build_demo(build_catalog(demo_root=sys.argv[1])); print('built')")
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
