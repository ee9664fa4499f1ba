"""`stl-bench serve` for real: an embedded Ray instance on a free local port, driven over HTTP.

One server (a tiny STL token model) is started for the module in its own process group,
as a user would start it, and stopped with Ctrl-C (SIGINT) at the end, which must exit 0.
Marked slow: Ray takes 15 to 30 s to come up on 2 cores.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'stl-bench[serve]')")

from stl_bench.cli import main  # noqa: E402
from stl_bench.data.folders import load_rgb  # noqa: E402
from stl_bench.deploy.open import open_runner  # noqa: E402
from stl_bench.evaluate.preprocess import Preprocessing  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN_ARCH = "fan_nano_4_p4_32_token"
MAX_BODY_MB = 1


def _multipart(field: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    boundary = "stlbenchboundary7MA4YWxk"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _ingress(name: str):
    from stl_bench.serve.ingress import haproxy_missing

    marks = [pytest.mark.skipif(bool(haproxy_missing()), reason=str(haproxy_missing()))] if name == "haproxy" else []
    return pytest.param(name, marks=marks, id=name)


def _start_up_lines(proc: subprocess.Popen) -> list[str]:
    """What the server printed up to its last start-up line (it is healthy by then)."""
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("Ctrl-C stops the server"):
            break
    return lines


@pytest.fixture(scope="module", params=[_ingress("proxy"), _ingress("haproxy")])
def server(http, tiny_checkpoint, free_port, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("serve")
    ckpt = tiny_checkpoint(root / "student.pt", seed=3, arch=TOKEN_ARCH)
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "stl_bench", "serve", str(ckpt), "--port", str(port), "--max-batch", "16",
           "--batch-wait-ms", "30", "--max-body-mb", str(MAX_BODY_MB), "--metrics-port", str(metrics_port), "--ingress", request.param]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        http.wait_health(url, proc)
        yield {"url": url, "port": port, "proc": proc, "ckpt": ckpt, "root": root, "metrics_port": metrics_port,
               "ingress": request.param, "start_up": _start_up_lines(proc)}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _in_process(ckpt: Path, paths: list[Path]):
    runner = open_runner(str(ckpt))
    prep = Preprocessing.from_data_config(runner.info.data_config)
    x = prep.to_model_input(torch.stack([prep.folder_transform()(load_rgb(p)) for p in paths]))
    return runner, runner.predict(x)


def test_start_up_prints_url_and_curl(http, server):
    assert server["proc"].poll() is None
    text = "\n".join(server["start_up"])
    assert f"serving at {server['url']} through {server['ingress']}" in text
    assert f"curl -s -F image=@photo.jpg {server['url']}/v1/predict" in text
    status, card = http.request(server["url"] + "/v1/model")
    assert status == 200 and card["name"] == TOKEN_ARCH and card["head"] == "fused" and card["token_grid"] == [8, 8]
    assert card["backend"] == "torch" and card["precision"] == "fp32" and len(card["checkpoint_sha256"]) == 64
    assert card["input_size"] == [32, 32] and card["num_classes"] == 10


def test_predictions_equal_the_in_process_runner(digit_png, http, server):
    paths = sorted(digit_png.parent.glob("*.png"))
    runner, want = _in_process(server["ckpt"], paths)
    for i, path in enumerate(paths):
        data = path.read_bytes()
        if i % 2:
            body, ctype = _multipart("image", path.name, data, "image/png")
        else:
            body, ctype = data, "image/png"
        status, out = http.request(server["url"] + "/v1/predict?logits=1&tokens=1&top_k=3", body, ctype)
        assert status == 200, out
        pred = out["predictions"][0]
        assert pred["top_k"][0]["index"] == int(want.logits[i].argmax())
        torch.testing.assert_close(torch.tensor(pred["logits"]), want.logits[i], atol=1e-5, rtol=0)
        tokens = pred["tokens"]
        assert tokens["grid"] == [8, 8]
        assert np.array(tokens["classes"]).flatten().tolist() == want.token_logits[i].argmax(-1).tolist()
        assert out["head"] == "fused" and out["timing"]["batch_images"] >= 1


def test_concurrent_requests_are_batched(http, digit_png, server):
    data = digit_png.read_bytes()
    assert http.request(server["url"] + "/v1/health")[0] == 200

    def one(_):
        return http.request(server["url"] + "/v1/predict", data, "image/png", timeout=120)

    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(one, range(30)))
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:2]
    batch_requests = [out["timing"]["batch_requests"] for _, out in results]
    assert max(batch_requests) > 1 and sum(batch_requests) / len(batch_requests) > 1
    # the same image in batches of different sizes: the same class, probabilities equal to float rounding
    tops = [out["predictions"][0]["top_k"][0] for _, out in results]
    assert len({t["index"] for t in tops}) == 1
    assert max(t["probability"] for t in tops) - min(t["probability"] for t in tops) < 1e-5
    assert http.request(server["url"] + "/v1/health")[0] == 200


def test_prometheus_metrics_count_requests_and_batches(server):
    url = f"http://127.0.0.1:{server['metrics_port']}/metrics"
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            text = ""
        if "stl_bench_batch_images" in text and "ray_serve_num_http_requests" in text:
            break
        time.sleep(2)
    for name in ("ray_serve_num_http_requests", "ray_serve_http_request_latency_ms", "ray_serve_actual_batch_size",
                 "stl_bench_images", "stl_bench_batch_images", "stl_bench_inference_ms"):
        assert name in text, f"{name} missing from {url}"


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


BAD_REQUESTS = {  # case: (body, content type, status); None: made in the test
    "not-image": (b"definitely not an image", "image/jpeg", 400),
    "empty": (b"", "image/png", 400),
    "truncated-jpeg": (None, "image/jpeg", 400),
    "too-big": (b"\xff" * (MAX_BODY_MB * 2**20 + 10), "image/png", 413),
    "1x1": (None, "image/png", 422),
    "20000x20": (None, "image/png", 422),
    "json": (b"{}", "application/json", 415),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(http, digit_png, server, case):
    body, ctype, status = BAD_REQUESTS[case]
    if case == "truncated-jpeg":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        body = buf.getvalue()[:500]
    elif case == "1x1":
        body = _png(1, 1)
    elif case == "20000x20":
        body = _png(20000, 20)
    code, out = http.request(server["url"] + "/v1/predict", body, ctype)
    assert code == status and out["error"], out
    assert http.request(server["url"] + "/v1/predict", digit_png.read_bytes(), "image/png")[0] == 200


def test_eval_through_the_endpoint_equals_in_process(server, tmp_path):
    from stl_bench.data.demo import ensure_demo_data

    val = ensure_demo_data(tmp_path / "digits") / "val"
    common = ["--in1k", str(val), "--workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "16",
              "--leaderboard", str(tmp_path / "lb.csv"), "--no-figure"]
    assert main(["eval", str(server["ckpt"]), "--out", str(tmp_path / "local"), *common]) == 0
    assert main(["eval", server["url"], "--out", str(tmp_path / "served"), *common]) == 0
    board = pd.read_csv(tmp_path / "lb.csv")
    assert len(board) == 2
    local, served = board.iloc[0], board.iloc[1]
    assert served["backend"] == "served:torch" and local["backend"] == "torch"
    assert served["in1k_top1"] == local["in1k_top1"] and served["checkpoint"] == local["checkpoint"]
    assert served["in1k_top5"] == local["in1k_top5"]


def _listening(pid: int) -> list[tuple[str, int, str]]:
    psutil = pytest.importorskip("psutil")
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_http_port_listens_on_loopback_only(server):
    sockets = _listening(server["proc"].pid)
    http = [s for s in sockets if s[1] == server["port"]]
    assert http and all(ip == "127.0.0.1" for ip, _, _ in http), http
    exposed = sorted({name for ip, _, name in sockets if ip not in ("127.0.0.1", "::1")})
    print("listening beyond loopback:", sorted(s for s in sockets if s[0] not in ("127.0.0.1", "::1")))
    print("on loopback:", sorted(s for s in sockets if s[0] in ("127.0.0.1", "::1")))
    # Ray's own gRPC services bind every interface whatever _node_ip_address says (protected by
    # its token authentication); the README's security note names them: nothing else may
    ray_services = ("gcs_server", "raylet")
    assert all(n in ray_services or n.startswith("ray::") or n.startswith("python") or n == "haproxy"
               for n in exposed), exposed
    # HAProxy (--ingress haproxy): only its statistics and metrics ports, the ones start-up names
    haproxy = {port for ip, port, name in sockets if name == "haproxy" and ip not in ("127.0.0.1", "::1")}
    named = set()
    for line in server["start_up"]:
        if line.startswith("HAProxy's statistics"):
            named = {int(p) for p in re.findall(r"\(:(\d+)/", line)}
    assert haproxy == named and len(named) == (2 if server["ingress"] == "haproxy" else 0), (haproxy, named)


def test_a_killed_replica_is_restarted(http, digit_png, server):
    status, card = http.request(server["url"] + "/v1/model")
    old = card["replica_pid"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            status, card = http.request(server["url"] + "/v1/model", timeout=10)
            if status == 200 and card["replica_pid"] != old:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(1)
    else:
        pytest.fail("Ray Serve did not restart the killed replica within 180 s")
    assert http.request(server["url"] + "/v1/predict", digit_png.read_bytes(), "image/png")[0] == 200


def test_ctrl_c_shuts_down_cleanly(server):
    psutil = pytest.importorskip("psutil")
    proc = server["proc"]
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family  # Ray's processes: GCS, raylet, workers
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    out = "\n".join(server["start_up"]) + proc.stdout.read()
    assert f"serving at http://127.0.0.1:{server['port']}" in out and "curl" in out
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [p.name() for p in alive]  # nothing of Ray is left behind
    with socket.socket() as s:  # the port is free again (TIME_WAIT aside, as servers bind it)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server["port"]))
