"""Fixtures shared by several test files (instead of tests importing from each other).

Session-scoped fixtures hand out plain functions, so module-scoped fixtures (a server
started once per file) can use them too.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import timm
import torch

import stl_bench  # noqa: F401  (registers the FAN variants in timm)

NANO = "fan_nano_4_p4_32_token"
DIGITS = [str(i) for i in range(10)]
EXAMPLES = Path(__file__).resolve().parents[1] / "app" / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_checkpoint(path: Path, seed: int, arch: str = NANO) -> Path:
    """A tiny stl-bench training checkpoint (random weights from `seed`) for the 10 digits."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "arch": arch, "num_classes": 10, "class_names": DIGITS,
                "stl_bench_version": "0.1.0"}, path)
    return path


def _request(url: str, data: bytes | None = None, ctype: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"{}")
        except ValueError:  # Ray's proxy answers 404/503 in plain text while the app deploys
            return err.code, {"text": text.decode(errors="replace")}


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stl-bench serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if _request(url + "/v1/health", timeout=5)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy in {timeout} s")


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial layer scales, temperatures, norms and biases (a fresh model has ones
    and zeros there, which would hide a wrong fold of the export rewrites)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("gamma") or leaf == "temperature" or (leaf == "weight" and p.dim() == 1):
                p.uniform_(0.5, 1.5)
            elif leaf == "bias":
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="session")
def trained_looking() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """`trained_looking(model)`: give a fresh model's scales, norms and biases non-trivial values."""
    return _trained_looking


@pytest.fixture
def lookup(monkeypatch) -> dict:
    """Make `open_runner` return a lookup model whose predictions the test chose.

    The test puts its logits table in `lookup["table"]`; the keyword arguments the
    command passed to `open_runner` land in `lookup["kwargs"]`.
    """
    import stl_bench.deploy.open as opener
    from eval_kit import make_runner

    state: dict = {}

    def fake_open_runner(source=None, **kwargs):
        state["kwargs"] = kwargs
        return make_runner(state["table"], name="lookup_model", head="cls")

    monkeypatch.setattr(opener, "open_runner", fake_open_runner)
    return state


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function that returns a free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Callable[..., Path]:
    """`tiny_checkpoint(path, seed, arch=NANO)`: write a tiny 10-digit checkpoint and return its path."""
    return _save_checkpoint


@pytest.fixture(scope="session")
def digit_png() -> Path:
    """A real digit image shipped with the app (a 3)."""
    return EXAMPLES / "digit_3.png"


@pytest.fixture(scope="session")
def http() -> SimpleNamespace:
    """`http.request(url, data, ctype)` -> (status, json) and `http.wait_health(url, proc)` for served endpoints."""
    return SimpleNamespace(request=_request, wait_health=_wait_health)
