"""The Gradio app, served in-process on a free local port and driven like a user would.

`gradio_client` calls the page's `analyze` endpoint (the same queue the browser uses);
one test drives headless Chromium through Playwright when Debian's `chromium` is
installed (`scripts/install_chromium.sh`, run by `scripts/test.sh`).
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import stl_bench  # noqa: F401  (registers the FAN models in timm)
from stl_bench.commands.app import example_files
from stl_bench.deploy.open import open_runner
from stl_bench.stl.tokenmaps import token_grid
from stl_bench.ui.drawing import class_color
from stl_bench.ui.catalog import build_catalog, open_entry
from stl_bench.ui.images import prepare
from stl_bench.ui.outputs import OutputFiles

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from stl_bench.ui.blocks import _analyze, build_demo, launch  # noqa: E402

NANO = "fan_nano_4_p4_32_token"
DIGITS = [str(i) for i in range(10)]
EXAMPLES = Path(__file__).resolve().parents[1] / "app" / "examples"
CHROMIUM = os.environ.get("STL_BENCH_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """What `stl-bench app` does (--threads 1): on 2 shared cores one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """A folder laid out as `stl-bench demo` writes it: labeler/ and student/ runs."""
    root = tmp_path_factory.mktemp("demo_runs")
    tiny_checkpoint(root / "labeler" / "best.pt", seed=0)
    tiny_checkpoint(root / "student" / "last.pt", seed=1)
    return root


@pytest.fixture(scope="module")
def served(free_port, demo_dir, tmp_path_factory):
    """The app on 127.0.0.1 with the demo runs plus a broken checkpoint; yields (url, demo, catalog)."""
    broken = tmp_path_factory.mktemp("broken") / "broken.pth"
    broken.write_text("this is not a checkpoint")
    catalog = build_catalog(demo_root=demo_dir)
    catalog.entries["broken"] = open_entry("broken", broken, None)
    demo = build_demo(catalog, example_files(EXAMPLES))
    launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True, max_file_size="1mb")
    try:
        yield demo.local_url, demo, catalog
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served[0], verbose=False)


def analyze(client: Client, image, model: str = "student", opacity: float = 0.5, seed: int = 0):
    return client.predict(image, model, opacity, seed, api_name="/analyze")


def test_demo_runs_are_found_and_served_on_localhost(served):
    url, demo, catalog = served
    assert demo.server_name == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    assert {"labeler", "student", "broken"} <= set(catalog.entries)
    assert catalog.entries["labeler"].runner.info.has_tokens
    assert catalog.entries["broken"].runner is None and catalog.entries["broken"].error
    assert catalog.pair() is not None


def test_example_image_returns_the_patch_grid_and_classes(digit_png, client, demo_dir):
    top5, label_map, confidence, kept, compare, details, status = analyze(client, handle_file(str(digit_png)))
    # the page's numbers equal a direct computation with the library
    runner = open_runner(str(demo_dir / "student" / "last.pt"), use_ema=False)
    pred = runner.predict(prepare(Image.open(digit_png).convert("RGB"), runner.info.data_config).batch)
    assert token_grid(pred.token_logits.shape[1], (32, 32)) == (8, 8)
    expected = pred.token_logits[0].argmax(-1).reshape(8, 8).tolist()
    assert details["grid"] == [8, 8]
    assert details["labels"] == [[DIGITS[c] for c in row] for row in expected]
    assert sum(details["classes_present"].values()) == 64
    assert set(details["classes_present"]) <= set(DIGITS)
    assert len(details["confidence"]) == 8 and all(0.0 < p <= 1.0 for row in details["confidence"] for p in row)

    assert len(top5["confidences"]) == 5
    probs = [c["confidence"] for c in top5["confidences"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert top5["label"] == details["top5"][0]["class"]

    # at opacity 1 the centre of every patch in the label map shows its class's colour
    full = np.asarray(Image.open(analyze(client, handle_file(str(digit_png)), opacity=1.0)[1]).convert("RGB"))
    assert full.shape[1] == 384 and full.shape[0] > 384  # the legend sits below the map
    centres = [[tuple(full[r * 48 + 24, c * 48 + 24]) for c in range(8)] for r in range(8)]
    assert centres == [[class_color(c) for c in row] for row in expected]

    assert Image.open(kept).size == (384, 384)
    assert Image.open(confidence).width == 384
    assert Image.open(compare).width > 2 * 384  # labeler and student side by side
    assert "8×8 patches" in status and "answered in" in status and "agree on" in status
    assert details["gumbel_kept"] == sum(map(sum, _kept(details)))


def _kept(details: dict) -> list[list[int]]:
    return [[int(a == b) for a, b in zip(la, sa)] for la, sa in zip(details["labels"], details["gumbel_sampled"])]


def test_gumbel_seed_reproduces_and_changes_the_draw(digit_png, client):
    a = analyze(client, handle_file(str(digit_png)), seed=7)[5]
    b = analyze(client, handle_file(str(digit_png)), seed=7)[5]
    c = analyze(client, handle_file(str(digit_png)), seed=8)[5]
    assert a["gumbel_sampled"] == b["gumbel_sampled"]
    assert a["labels"] == c["labels"] and a["gumbel_sampled"] != c["gumbel_sampled"]


@pytest.mark.parametrize("content, message", [
    (b"just some text\n", "not an image file"),
    (b"", "not an image file"),
])
def test_bad_uploads_give_a_message(digit_png, client, tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        analyze(client, handle_file(str(path)))
    # the queue is still healthy afterwards
    assert analyze(client, handle_file(str(digit_png)))[5]["grid"] == [8, 8]


def test_missing_image_wrong_checkpoint_and_unknown_model_give_messages(digit_png, client):
    with pytest.raises(AppError, match="Upload an image"):
        analyze(client, None)
    with pytest.raises(AppError, match="could not be opened"):
        analyze(client, handle_file(str(digit_png)), model="broken")
    with pytest.raises(AppError, match="nope"):  # Gradio checks dropdown values itself
        analyze(client, handle_file(str(digit_png)), model="nope")


def test_oversized_and_odd_images(digit_png, client, served, tmp_path):
    url = served[0]
    # over the upload limit (1 MB in this server): refused before it reaches the handler
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    big = tmp_path / "noise.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > 1_000_000
    with pytest.raises(ValueError, match="maximum file size"):  # the client knows the limit
        analyze(client, handle_file(str(big)))
    # and the server enforces it for clients that do not
    response = httpx.post(f"{url}gradio_api/upload", files={"files": ("noise.png", big.read_bytes(), "image/png")})
    assert response.status_code == 413
    # grayscale, CMYK and an extreme aspect ratio
    gray = tmp_path / "gray.png"
    Image.open(digit_png).convert("L").save(gray)
    assert "grayscale" in analyze(client, handle_file(str(gray)))[6]
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(digit_png).convert("CMYK").save(cmyk)
    assert "CMYK" in analyze(client, handle_file(str(cmyk)))[6]
    strip = tmp_path / "strip.png"
    Image.new("RGB", (2000, 20), (9, 9, 9)).save(strip)
    with pytest.raises(AppError, match="aspect ratio"):
        analyze(client, handle_file(str(strip)))


def test_twenty_concurrent_requests_all_come_back(digit_png, client):
    image = handle_file(str(digit_png))
    start = time.perf_counter()
    jobs = [client.submit(image, "labeler" if i % 2 else "student", 0.5, i, api_name="/analyze") for i in range(20)]
    results = [job.result(timeout=120) for job in jobs]
    elapsed = time.perf_counter() - start
    assert [r[5]["gumbel_seed"] for r in results] == list(range(20))
    assert all(r[5]["grid"] == [8, 8] for r in results)
    print(f"20 concurrent requests answered in {elapsed:.2f} s")


def test_answers_in_well_under_a_second(digit_png, client):
    """Request to response through the queue, nano model on CPU (two maps plus the comparison)."""
    image = handle_file(str(digit_png))
    analyze(client, image)  # warm-up
    round_trips, server = [], []
    for seed in range(5):
        start = time.perf_counter()
        details = analyze(client, image, seed=seed)[5]
        round_trips.append((time.perf_counter() - start) * 1e3)
        server.append(details["timing_ms"]["total"])
    print(f"round trip median {statistics.median(round_trips):.0f} ms, server {statistics.median(server):.0f} ms")
    assert statistics.median(server) < 500
    assert statistics.median(round_trips) < 1500  # includes the client downloading five PNGs


def test_port_in_use_is_a_clear_error(served):
    from stl_bench.errors import StlBenchError

    busy = int(served[0].rstrip("/").rsplit(":", 1)[1])
    demo = build_demo(build_catalog(demo_root=None), [])
    with pytest.raises(StlBenchError, match=f"cannot serve on 127.0.0.1:{busy}.*--port"):
        launch(demo, port=busy, prevent_thread_lock=True, quiet=True)


def test_no_models_says_which_command_makes_them(digit_png, tmp_path):
    catalog = build_catalog(demo_root=tmp_path / "nothing")
    assert catalog.entries == {}
    with pytest.raises(gr.Error, match="stl-bench demo"):
        _analyze(catalog, str(digit_png), None, 0.5, 0, OutputFiles(tmp_path))
    build_demo(catalog, [])  # the page still builds, with the message as its status


def test_plain_classifier_gives_top5_without_maps(tiny_checkpoint, digit_png, tmp_path):
    path = tiny_checkpoint(tmp_path / "plain.pth", seed=0, arch="fan_nano_4_p4_32")
    catalog = build_catalog(models=[path])
    top5, label_map, confidence, kept, compare, details, status = _analyze(catalog, str(digit_png), "plain", 0.5, 0,
                                                                              OutputFiles(tmp_path))
    assert len(top5) == 5 and confidence is None and kept is None and "grid" not in details
    assert "no token head" in status


def test_imagenet_model_gets_a_14x14_grid_imagenet_names_and_a_short_legend(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("fan_tiny_12_p16_224_token", num_classes=1000)
    path = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "arch": "fan_tiny_12_p16_224_token", "num_classes": 1000}, path)
    catalog = build_catalog(models=[path])
    out = _analyze(catalog, str(EXAMPLES / "synthetic_ball_on_grass.png"), "tiny", 0.5, 0, OutputFiles(tmp_path))
    details = out[5]
    assert details["grid"] == [14, 14] and details["input_size"] == [3, 224, 224]
    names = set(catalog.entries["tiny"].class_names)
    assert "goldfish" in names and set(details["classes_present"]) <= names
    assert sum(details["classes_present"].values()) == 196
    label_map = Image.open(out[1])
    # 12 legend rows at most (11 classes + "more classes"), whatever the number of classes present
    rows = min(len(details["classes_present"]), 12)
    assert label_map.width == 448 and 448 + rows * 20 < label_map.height <= 448 + 8 + 12 * 26
    assert Image.open(out[2]).width == 448


@pytest.mark.slow
def test_onnx_backend_gives_the_same_maps(digit_png, tmp_path, demo_dir):
    pytest.importorskip("onnxruntime")
    from stl_bench.deploy.export_onnx import export_onnx
    from stl_bench.deploy.onnx_format import metadata_for
    from stl_bench.fan.factory import create_model_from_checkpoint

    model, _ = create_model_from_checkpoint(demo_dir / "student" / "last.pt")
    onnx_path = export_onnx(model.eval(), tmp_path / "student.onnx",
                            metadata_for(model, NANO, tokens=True, class_names=DIGITS))
    catalog = build_catalog(models=[onnx_path, demo_dir / "student" / "last.pt"])
    assert catalog.entries["student"].runner.info.backend == "onnxruntime-cpu"
    files = OutputFiles(tmp_path / "out")
    via_onnx = _analyze(catalog, str(digit_png), "student", 0.5, 3, files)[5]
    via_torch = _analyze(catalog, str(digit_png), "student-2", 0.5, 3, files)[5]
    assert via_onnx["grid"] == via_torch["grid"] == [8, 8]
    agree = np.mean(np.array(via_onnx["labels"]) == np.array(via_torch["labels"]))
    assert agree >= 0.95  # fp32 parity is ~1e-6; only a near-tie could flip a patch
    np.testing.assert_allclose(via_onnx["confidence"], via_torch["confidence"], atol=2e-3)


def test_browser_loads_the_page_runs_an_example_and_screenshots(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(reason=f"no chromium at {CHROMIUM}: run scripts/install_chromium.sh (apt-get install chromium)")
    url = served[0]
    shot = Path(os.environ.get("STL_BENCH_SCREENSHOT", tmp_path / "app.png"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            page.get_by_text("STL token-label maps").first.wait_for(timeout=30_000)
            # an example click loads the image and analyses it (no race with the Analyze button)
            start = time.perf_counter()
            page.get_by_text("digits 3 and 7 cut and pasted").first.click()
            page.locator("#status").get_by_text("8×8 patches").wait_for(timeout=30_000)
            maps = page.locator(".tokenmap img")
            maps.first.wait_for(timeout=10_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.tokenmap img')].filter(i => i.complete && i.naturalWidth >= 384)"
                ".length >= 3", timeout=10_000)
            print(f"browser: example click to maps shown {(time.perf_counter() - start) * 1e3:.0f} ms")
            # a second submission with the button, on the loaded image, also answers
            page.get_by_label("Gumbel seed").fill("5")
            page.get_by_role("button", name="Analyze").click()
            page.locator("#status").get_by_text("seed 5").wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
