"""`stl-bench serve --address`: join a Ray cluster started apart, serve, leave it running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'stl-bench[serve]')")

pytestmark = pytest.mark.slow


def test_serve_joins_a_cluster_and_leaves_it_running(http, tiny_checkpoint, free_port, digit_png, tmp_path):
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command, from this interpreter's Ray
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    gcs_port = free_port()
    subprocess.run([*ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, env=env,
                   capture_output=True, timeout=180)
    try:
        ckpt = tiny_checkpoint(tmp_path / "m.pt", seed=1)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "stl_bench", "serve", str(ckpt), "--address",
                                 f"127.0.0.1:{gcs_port}", "--port", str(port)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            http.wait_health(url, proc)
            status, out = http.request(url + "/v1/predict", digit_png.read_bytes(), "image/png")
            assert status == 200 and out["predictions"][0]["top_k"]
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0
        # the driver left; the cluster it joined is still there
        probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{gcs_port}'); "
                                "print(int(ray.cluster_resources().get('CPU', 0)))"],
                               capture_output=True, text=True, env={**env, "RAY_AUTH_MODE": "token"}, timeout=120)
        assert probe.returncode == 0 and int(probe.stdout.strip().splitlines()[-1]) >= 1, probe.stderr[-500:]
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
