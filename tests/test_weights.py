"""Released weights by name: timm pretrained tags from the model cards, the download cache, card names as sources.

Everything runs against a local HTTP server started here: fabricated checkpoints in the
official layout (`state_dict`, `state_dict_ema`, a pickled `argparse.Namespace`) for
the tiny `fan_nano_4_p4_32_token`, described by test-only cards in a temporary
`$STL_BENCH_MODELS_DIR`, served under official-style names, behind a Drive-style
confirm page, under the mirror layout, and by servers that misbehave.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from stl_bench.cli import main
from stl_bench.errors import StlBenchError
from stl_bench.fan import hub
from stl_bench.fan import model as fan_model
from stl_bench.fan.cards import card_file_name, load_cards, pretrained_tag
from eval_kit import write_coded

ARCH = "fan_nano_4_p4_32_token"
TAG = "stl_digits_32"
FILE = "stl_nano_digits.pth.tar"
ROOT = Path(__file__).resolve().parents[1]


def _official_bytes(seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    """An official-layout checkpoint of the nano token model (10 classes) and the weights it should load as."""
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=10)
    state = model.state_dict()
    # older official files call the positional encoding `pos_embeder`: the filter function renames it
    official = {k.replace("pos_embed.", "pos_embeder.", 1): v for k, v in state.items()}
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in official.items()}
    buf = io.BytesIO()
    torch.save({"state_dict": official, "state_dict_ema": ema, "epoch": 299,
                "args": argparse.Namespace(model=ARCH, num_classes=10, img_size=32)}, buf)
    return buf.getvalue(), state


BODY, STATE = _official_bytes(0)


# -- the server ---------------------------------------------------------------------------------
@dataclass
class Site:
    """What the local server serves: path -> (behaviour, body), and every request it saw."""

    routes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    hits: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, prefix: str = "/") -> int:
        return sum(1 for path, _ in self.hits if path.startswith(prefix))


def _confirm_page(file_id: str) -> bytes:
    # Drive's large-file page, as it is today: one line, a form with hidden inputs
    return (
        '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
        '<p>Google Drive can\'t scan this file for viruses.</p>'
        '<form id="download-form" action="/download" method="get">'
        '<input type="submit" value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-123"></form>'
        '</body></html>'
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream", length: int | None = None,
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _ranged(self, body: bytes, honour_range: bool = True) -> None:
        rng = self.headers.get("Range")
        if rng and honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(body)}"})
            return self._send(206, body[start:], headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                                                           "Accept-Ranges": "bytes"})
        self._send(200, body, headers={"Accept-Ranges": "bytes"} if honour_range else None)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        self.site.hits.append((self.path, self.headers.get("Range")))
        kind, body = self.site.routes.get(url.path, ("404", b""))
        rng = self.headers.get("Range")
        if kind == "file":
            self._ranged(body)
        elif kind == "cut":  # the first transfer breaks off half way; range requests then work
            if rng:
                return self._ranged(body)
            self._send(200, body[: len(body) // 2], length=len(body), headers={"Accept-Ranges": "bytes"})
        elif kind == "cut_then_drop":  # breaks off, then the server goes away before answering
            if rng:
                self.close_connection = True
                return
            self._send(200, body[: len(body) // 2], length=len(body), headers={"Accept-Ranges": "bytes"})
        elif kind == "cut_no_range":  # breaks off every time and ignores Range: nothing to resume
            self._send(200, body[: len(body) // 2], length=len(body))
        elif kind == "long_claim":  # announces more bytes than the file has
            if rng:
                return self._ranged(body)
            self._send(200, body, length=len(body) + 100, headers={"Accept-Ranges": "bytes"})
        elif kind == "bad_range":  # breaks off, then answers the range with a wrong Content-Length
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                return self._send(206, body[start:], length=len(body), headers={
                    "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
            self._send(200, body[: len(body) // 2], length=len(body), headers={"Accept-Ranges": "bytes"})
        elif kind == "html":
            self._send(200, b"<html><head><title>Sign in - Google Accounts</title></head><body></body></html>",
                       ctype="text/html; charset=utf-8")
        elif kind == "drive":  # the confirm page, then the file only with the form's fields
            query = urllib.parse.parse_qs(url.query)
            if query.get("confirm") == ["t"] and query.get("uuid") == ["u-123"]:
                return self._ranged(body)
            self._send(200, _confirm_page(query.get("id", ["?"])[0]), ctype="text/html; charset=utf-8")
        else:
            self._send(404, b"not found", ctype="text/plain")


@pytest.fixture(scope="module")
def site():
    s = Site()
    handler = type("Handler", (_Handler,), {"site": s})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    s.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield s
    server.shutdown()
    server.server_close()


# -- test cards -------------------------------------------------------------------------------
def _card(name: str, url: str, file: str, role: str = "student") -> str:
    return f"""---
name: {name}
title: nano STL student (test)
arch: {ARCH}
role: {role}
training_data: digits
num_classes: 10
input_size: [3, 32, 32]
crop_pct: 1.0
interpolation: bilinear
mean: [0.5, 0.5, 0.5]
std: [0.25, 0.25, 0.25]
params: 1
eval_head: fused
reported:
  in1k_top1: 50.0
url: {url}
file: {file}
license: CC-BY-NC-SA-4.0 (weights)
---

A card for tests.
"""


@pytest.fixture
def env(site, tmp_path):
    """Test cards (official-style, Drive-style) registered in timm, an empty cache, a fresh route table."""
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "nano.md").write_text(_card("stl_nano_digits", f"{site.base}/releases/v1/{FILE}", FILE))
    (cards / "drive.md").write_text(_card("stl_nano_drive", f"{site.base}/uc?export=download&id=NANO",
                                          "shared-drive file (NANO)", role="labeler"))
    site.routes.clear()
    site.hits.clear()
    site.routes[f"/releases/v1/{FILE}"] = ("file", BODY)
    cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("STL_BENCH_WEIGHTS_MIRROR", "STL_BENCH_OFFLINE", "HF_HUB_OFFLINE"):
            mp.delenv(name, raising=False)
        mp.setenv("STL_BENCH_MODELS_DIR", str(cards))
        mp.setenv("STL_BENCH_CACHE", str(cache))
        fan_model.refresh_pretrained_tags()
        yield type("Env", (), {"cards": cards, "cache": cache, "site": site, "mp": mp})
    fan_model.refresh_pretrained_tags()


def _only_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _cache_is_clean(cache: Path) -> None:
    """No checkpoint, no index, no partial file: a failed download leaves nothing behind."""
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == []


# -- timm tags ------------------------------------------------------------------------------
def test_every_card_is_a_pretrained_tag_and_defaults_keep_the_untrained_data_config():
    cards = load_cards()
    assert set(timm.list_pretrained("fan_*")) == {f"{c['arch']}.{pretrained_tag(c)}" for c in cards.values()}
    assert len(cards) == 18
    assert {"fan_small_12_p4_hybrid_token.stl_in1k", "fan_small_12_p4_hybrid.fan_in1k",
            "fan_base_16_p4_hybrid.fan_in22k_ft_in1k_384"} <= set(timm.list_pretrained("fan_*"))
    cfg = timm.models.get_pretrained_cfg("fan_base_16_p4_hybrid.fan_in22k_ft_in1k_384")
    assert cfg.input_size == (3, 384, 384) and cfg.url.endswith("/fan_hybrid_base_in22k_1k_384.pth.tar")
    assert "CC-BY-NC-SA-4.0" in cfg.license
    fields = ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")
    for arch in fan_model.FAN_MODEL_NAMES:
        default = timm.models.get_pretrained_cfg(arch)
        untrained = timm.models.get_pretrained_cfg(f"{arch}.untrained")
        assert all(getattr(default, f) == getattr(untrained, f) for f in fields), arch
    assert timm.models.get_pretrained_cfg("fan_small_12_p4_hybrid_token").tag == "stl_in1k"  # not the labeler
    assert timm.models.get_pretrained_cfg("fan_base_16_p4_hybrid").tag == "fan_in22k_ft_in1k"  # best at 224


def test_pretrained_true_downloads_once_converts_and_loads_strictly(env):
    assert f"{ARCH}.{TAG}" in timm.list_pretrained("fan_nano*")
    assert timm.models.get_pretrained_cfg(ARCH).tag == "untrained"  # a 10-class card changes no default
    model = timm.create_model(f"{ARCH}.{TAG}", pretrained=True)
    loaded = model.state_dict()
    assert loaded.keys() == STATE.keys() and all(torch.equal(loaded[k], STATE[k]) for k in STATE)
    cfg = model.pretrained_cfg
    assert (cfg["input_size"], cfg["interpolation"], cfg["crop_pct"], cfg["num_classes"]) == ((3, 32, 32), "bilinear",
                                                                                              1.0, 10)
    assert (cfg["mean"], cfg["std"]) == ((0.5,) * 3, (0.25,) * 3) and model.num_classes == 10
    assert env.site.count() == 1
    cached = env.cache / FILE
    record = json.loads((env.cache / f"{FILE}.json").read_text())
    assert record["size"] == len(BODY) == cached.stat().st_size
    assert record["sha256"] == hashlib.sha256(BODY).hexdigest() and record["card"] == "stl_nano_digits"
    assert sorted(p.name for p in env.cache.iterdir()) == [FILE, f"{FILE}.json"]  # no .part, no temporaries
    again = timm.create_model(f"{ARCH}.{TAG}", pretrained=True)
    assert env.site.count() == 1  # the cache answered
    assert torch.equal(again.head.weight, model.head.weight)
    assert timm.create_model(ARCH).pretrained_cfg["tag"] == "untrained"  # building by name is unchanged


def test_mirror_replaces_the_hosts(env, tmp_path):
    env.site.routes[f"/mirror/stl_nano_digits/{FILE}"] = ("file", BODY)
    env.site.routes.pop(f"/releases/v1/{FILE}")
    env.mp.setenv("STL_BENCH_WEIGHTS_MIRROR", f"{env.site.base}/mirror/")
    path = hub.fetch("stl_nano_digits", progress=False)
    assert path.read_bytes() == BODY
    assert [p for p, _ in env.site.hits] == [f"/mirror/stl_nano_digits/{FILE}"]
    folder = tmp_path / "mirror" / "stl_nano_drive"  # a file:// folder in the same layout
    folder.mkdir(parents=True)
    (folder / "stl_nano_drive.pth.tar").write_bytes(BODY)
    assert hub.fetch("stl_nano_drive", mirror=(tmp_path / "mirror").as_uri()).read_bytes() == BODY
    assert env.site.count() == 1


@pytest.mark.parametrize("parser", ["built-in", "gdown"])
def test_drive_confirm_page_is_followed(env, parser):
    if parser == "gdown":
        pytest.importorskip("gdown", reason="the [weights] extra (gdown) is not installed")
    else:
        env.mp.setitem(sys.modules, "gdown.download", None)  # import fails: the page is read without gdown
    env.site.routes["/uc"] = ("drive", BODY)
    env.site.routes["/download"] = ("drive", BODY)
    path = hub.fetch("stl_nano_drive", progress=False)
    assert path.name == "stl_nano_drive.pth.tar" and path.read_bytes() == BODY
    pages = [urllib.parse.urlsplit(p) for p, _ in env.site.hits]
    assert [p.path for p in pages] == ["/uc", "/download"]
    assert urllib.parse.parse_qs(pages[1].query) == {"id": ["NANO"], "export": ["download"], "confirm": ["t"],
                                                     "uuid": ["u-123"]}
    model = timm.create_model(f"{ARCH}.stl_labeler_digits_32", pretrained=True)  # the Drive card's tag, from cache
    assert torch.equal(model.head.weight, STATE["head.weight"]) and env.site.count() == 2


def test_interrupted_transfer_resumes_with_a_range_request(env):
    env.site.routes[f"/releases/v1/{FILE}"] = ("cut", BODY)
    path = hub.fetch("stl_nano_digits", progress=False)
    assert path.read_bytes() == BODY
    assert env.site.hits == [(f"/releases/v1/{FILE}", None), (f"/releases/v1/{FILE}", f"bytes={len(BODY) // 2}-")]


def test_transfer_cut_by_the_network_keeps_its_part_for_the_next_run(env):
    env.site.routes[f"/releases/v1/{FILE}"] = ("cut_then_drop", BODY)
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits", progress=False)
    assert "run the same command again to resume" in _only_line(exc)
    assert sorted(p.name for p in env.cache.iterdir()) == [f"{FILE}.part"]  # the partial, never the file
    assert (env.cache / f"{FILE}.part").read_bytes() == BODY[: len(BODY) // 2]
    env.site.routes[f"/releases/v1/{FILE}"] = ("file", BODY)
    assert hub.fetch("stl_nano_digits", progress=False).read_bytes() == BODY
    assert env.site.hits[-1] == (f"/releases/v1/{FILE}", f"bytes={len(BODY) // 2}-")


def test_partial_file_of_an_earlier_run_is_resumed(env):
    env.cache.mkdir()
    (env.cache / f"{FILE}.part").write_bytes(BODY[:1000])  # what a killed download leaves
    assert hub.cache_status(load_cards()["stl_nano_digits"]).startswith("partial")
    assert hub.fetch("stl_nano_digits", progress=False).read_bytes() == BODY
    assert env.site.hits == [(f"/releases/v1/{FILE}", "bytes=1000-")]
    assert not (env.cache / f"{FILE}.part").exists()


def test_changed_cached_file_is_caught_size_always_hash_on_request(env):
    path = hub.fetch("stl_nano_digits", progress=False)
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits")
    assert "records" in _only_line(exc) and "stl-bench models --download stl_nano_digits" in str(exc.value)
    data = bytearray(BODY)
    data[-10] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    assert hub.fetch("stl_nano_digits") == path  # the size matches: no hashing unless asked
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits", verify=True)
    assert "SHA-256" in _only_line(exc)
    assert env.site.count() == 1


@pytest.mark.parametrize("kind, body, message", [
    ("404", b"", "HTTP 404"),
    ("html", b"", "HTML page (Sign in - Google Accounts)"),
    ("file", b"this is not a checkpoint at all", "not a PyTorch checkpoint"),
    ("file", b"", "empty body"),
    ("cut_no_range", BODY, "cannot resume"),
    ("long_claim", BODY, "Content-Length mismatch"),
    ("bad_range", BODY, "Content-Length mismatch"),
], ids=["404", "html", "not-a-checkpoint", "empty", "truncated-no-resume", "truncated-long-claim", "bad-range"])
def test_bad_downloads_are_one_line_and_leave_nothing(env, kind, body, message):
    env.site.routes[f"/releases/v1/{FILE}"] = (kind, body)
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits", progress=False)
    assert message in _only_line(exc)
    _cache_is_clean(env.cache)


def test_unknown_card_names_suggest_the_closest(env):
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digit")
    assert "did you mean stl_nano_digits" in _only_line(exc)
    with pytest.raises(StlBenchError) as exc:
        hub.resolve_source("stl_nano_drvie")
    assert "neither a file nor a model card; did you mean stl_nano_drive" in _only_line(exc)
    assert hub.resolve_source("runs/last.pth") == "runs/last.pth"  # paths pass through untouched
    assert env.site.count() == 0


@pytest.mark.parametrize("var", ["STL_BENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_downloads_and_names_the_command(env, var):
    env.mp.setenv(var, "1")
    with pytest.raises(StlBenchError) as exc:
        hub.resolve_source("stl_nano_digits")
    assert "`stl-bench models --download stl_nano_digits`" in _only_line(exc)
    assert env.site.count() == 0
    _cache_is_clean(env.cache)


def test_unreachable_host_is_one_line(env, free_port):
    (env.cards / "nano.md").write_text(_card("stl_nano_digits", f"http://127.0.0.1:{free_port()}/{FILE}", FILE))
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits", progress=False)
    assert "cannot reach" in _only_line(exc) and "STL_BENCH_WEIGHTS_MIRROR" in str(exc.value)
    _cache_is_clean(env.cache)


def test_unwritable_cache_is_reported_before_any_request(env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    env.mp.setenv("STL_BENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(StlBenchError) as exc:
        hub.fetch("stl_nano_digits")
    assert "cannot write the weights cache folder" in _only_line(exc)
    assert env.site.count() == 0


def test_offline_eval_of_an_uncached_card_is_one_line(env, tmp_path, capsys):
    write_coded(tmp_path / "digits" / "0" / "0.png", 1, size=(32, 32))
    env.mp.setenv("STL_BENCH_OFFLINE", "1")
    args = ["eval", "stl_nano_drive", "--in1k", str(tmp_path / "digits"), "--workers", "0", "--no-progress",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--leaderboard", str(tmp_path / "lb.csv")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "stl-bench models --download stl_nano_drive" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "lb.csv").exists()


def test_a_card_name_is_a_labeler_for_stl_bench_label(env, tmp_path):
    for d in range(10):
        write_coded(tmp_path / "digits" / str(d) / "0.png", d, size=(32, 32))
    out = tmp_path / "labels"
    assert main(["label", "--teacher", "stl_nano_digits", "--data", str(tmp_path / "digits"), "--split", "",
                 "--output", str(out), "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    assert (out / "meta.json").is_file() and env.site.count() == 1


def test_a_card_name_is_a_teacher_for_stl_bench_train(env, tmp_path):
    for d in range(10):
        write_coded(tmp_path / "digits" / "train" / str(d) / "0.png", d, size=(32, 32))
    out = tmp_path / "student"
    assert main(["train", "--preset", "demo", "--stage", "student", "--teacher", "stl_nano_digits",
                 "--data", str(tmp_path / "digits"), "--output", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "10", "--workers", "0", "--val-split", "", "--no-progress", "--threads", "1",
                 "--aa", "none", "--reprob", "0", "--mixup", "0"]) == 0
    assert (out / "metrics.jsonl").is_file() and env.site.count() == 1


@pytest.mark.slow
def test_download_then_eval_by_card_name_end_to_end(env, tmp_path):
    """`stl-bench models --download CARD --mirror URL`, then `stl-bench eval CARD`, in fresh processes."""
    env.site.routes[f"/m/stl_nano_digits/{FILE}"] = ("file", BODY)
    for d in range(3):
        write_coded(tmp_path / "digits" / str(d) / "0.png", 10 * d, size=(32, 32))
    run_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "stl_bench"]
    out = subprocess.run([*cli, "models", "--download", "stl_nano_digits", "--mirror", f"{env.site.base}/m",
                          "--no-progress"], env=run_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CC-BY-NC-SA-4.0" in out.stdout and f"{env.site.base}/m/stl_nano_digits/{FILE}" in out.stdout
    listed = subprocess.run([*cli, "models"], env=run_env, capture_output=True, text=True, timeout=300)
    assert "stl_nano_digits" in listed.stdout and f"weights cache: {env.cache}" in listed.stdout
    lb = tmp_path / "lb.csv"
    ev = subprocess.run([*cli, "eval", "stl_nano_digits", "--in1k", str(tmp_path / "digits"), "--workers", "0",
                         "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run"), "--leaderboard", str(lb),
                         "--no-figure"], env={**run_env, "STL_BENCH_OFFLINE": "1"}, capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr
    row = pd.read_csv(lb, dtype={"checkpoint": str}).iloc[0]
    assert row["checkpoint"] == hashlib.sha256(BODY).hexdigest()[:16] and row["input_size"] == "32x32"
    assert row["head"] == "fused" and env.site.count() == 1
