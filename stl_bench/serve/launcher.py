"""Start, describe and stop a served model: the embedded Ray instance or a cluster.

Embedded default (no `--address`): a local Ray instance with token authentication on,
its node address and dashboard kept off the network where Ray allows it
(`_node_ip_address=127.0.0.1`, no dashboard), and the HTTP port on 127.0.0.1, behind
Ray Serve's Python proxy, or HAProxy with `ingress="haproxy"` (`ingress.py`).
`--address auto|ray://...` joins an existing cluster instead; replicas then land
wherever the cluster has the CPUs and GPUs asked for.

Everything a user can get wrong at start-up (a missing model file, a taken port, a
model that fails to open in its replica) is checked here and becomes one
`StlBenchError` line, before or instead of Ray's tracebacks.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stl_bench.deploy.runner import is_endpoint_url
from stl_bench.errors import StlBenchError
from stl_bench.serve import ingress as ingresses
from stl_bench.serve.protocol import HEALTH, PREDICT, ServeConfig

log = logging.getLogger(__name__)

AUTH_ENV = "RAY_AUTH_MODE"
_INSTALL = 'Ray Serve is not installed; pip install "stl-bench[serve]" (or "ray[serve]")'


@dataclass
class LaunchOptions:
    """Where and how wide to serve (the HTTP side and Ray's resources)."""

    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    replicas: int = 1
    cpus_per_replica: float | None = None  # default: this machine's cores / replicas (embedded)
    gpus_per_replica: float = 0.0
    metrics_port: int | None = None  # Ray's Prometheus endpoint (embedded instance); None: Ray picks
    ingress: str = "proxy"  # embedded instance: Ray Serve's Python proxy, or haproxy (its high-throughput mode)

    def __post_init__(self) -> None:
        ingresses.check(self.ingress)
        if not 0 < self.port < 65536:
            raise StlBenchError(f"--port must be 1..65535, not {self.port}")
        if self.replicas < 1:
            raise StlBenchError(f"--replicas must be at least 1, not {self.replicas}")
        if self.cpus_per_replica is not None and self.cpus_per_replica <= 0:
            raise StlBenchError("--cpus-per-replica must be positive")
        if self.gpus_per_replica < 0:
            raise StlBenchError("--gpus-per-replica must not be negative")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def cpus(self) -> float:
        if self.cpus_per_replica is not None:
            return self.cpus_per_replica
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return float(max(1, cores // self.replicas))


def app_args(cfg: ServeConfig, launch: LaunchOptions) -> dict[str, Any]:
    """The application builder's arguments (also the `args:` of a written config)."""
    args = cfg.to_dict()
    if cfg.threads is None and launch.gpus_per_replica == 0:
        args["threads"] = max(1, int(launch.cpus()))  # one intra-op thread per reserved core
    return {**args, "replicas": launch.replicas, "cpus_per_replica": launch.cpus(),
            "gpus_per_replica": launch.gpus_per_replica}


def preflight(cfg: ServeConfig, launch: LaunchOptions) -> None:
    """Fail fast, in one line, on what would otherwise fail inside Ray minutes later."""
    if cfg.source and not is_endpoint_url(cfg.source):
        path = Path(cfg.source)
        if not path.exists():
            raise StlBenchError(f"model file {path} does not exist; check the path")
        if not path.is_file():
            raise StlBenchError(f"{path} is a folder; pass a checkpoint, an .onnx file or an engine")
        if not os.access(path, os.R_OK):
            raise StlBenchError(f"model file {path} is not readable; check its permissions")
    if launch.address is None and os.environ.get(AUTH_ENV, "").lower() == "disabled":
        raise StlBenchError(f"{AUTH_ENV}=disabled would open the embedded Ray instance's ports to anyone on the "
                            f"network; unset {AUTH_ENV} (stl-bench serve keeps Ray's token authentication on)")
    check_port_free(launch.host, launch.port)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StlBenchError(f"port {port} on {host} is already in use; stop what holds it or pick another "
                                    "with --port") from None
            raise StlBenchError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port") from None


def curl_example(launch: LaunchOptions, image: str = "photo.jpg") -> str:
    return f"curl -s -F image=@{image} {launch.url}{PREDICT}"


def write_config(path: Path, cfg: ServeConfig, launch: LaunchOptions) -> Path:
    """The Ray Serve config file for this application (`serve deploy FILE`, KubeRay's RayService)."""
    import yaml

    from stl_bench.io import write_text

    config = {
        "proxy_location": "HeadOnly" if launch.address is None else "EveryNode",
        "http_options": {"host": launch.host, "port": launch.port},
        "applications": [{
            "name": "stl-bench",
            "route_prefix": "/",
            "import_path": "stl_bench.serve.deployment:build_app",
            "args": app_args(cfg, launch),
        }],
    }
    text = ("# Ray Serve config written by `stl-bench serve --write-config`; deploy with `serve deploy "
            f"{Path(path).name}`\n# on a running Ray cluster whose nodes have stl-bench installed and the model "
            "file at the path below.\n# HAProxy ingress (Ray Serve's high-throughput mode) is the cluster's choice: "
            "start its nodes with\n# " + " ".join(f"{k}={v}" for k, v in ingresses.HAPROXY_ENV.items())
            + " (KubeRay: the pods' env).\n") + yaml.safe_dump(config, sort_keys=False)
    path = Path(path)
    try:
        write_text(path, text)
    except OSError as exc:
        raise StlBenchError(f"cannot write {path} ({exc.strerror}); pick a writable --write-config path") from None
    return path


def _replica_error(exc: Exception) -> str:
    """The user-facing line inside Ray's deploy-failure text (a replica's StlBenchError)."""
    text = str(exc)
    match = re.search(r"StlBenchError: (.+)", text)
    if match:
        return match.group(1).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


class Server:
    """A running application; `stop()` takes down what `start` brought up."""

    def __init__(self, launch: LaunchOptions, embedded: bool, haproxy: dict[str, str] | None = None) -> None:
        self.launch = launch
        self.embedded = embedded
        self.haproxy = haproxy or {}  # HAProxy's statistics and metrics ports

    @property
    def ingress(self) -> str:
        """What answers on the port: proxy or haproxy (embedded), a joined cluster's own choice."""
        return self.launch.ingress if self.embedded else "the cluster's ingress"

    @property
    def url(self) -> str:
        return self.launch.url

    @property
    def metrics_url(self) -> str | None:
        """Ray's Prometheus endpoint on this node (Ray Serve's request, latency and batch
        metrics, and ours: stl_bench_images, stl_bench_batch_images, stl_bench_inference_ms)."""
        from ray._private import worker

        node = getattr(worker, "_global_node", None)
        port = getattr(node, "metrics_export_port", None) if node is not None else None
        return f"http://127.0.0.1:{port}/metrics" if port else None

    def stop(self) -> None:
        """Embedded: Serve and Ray go. Joined cluster: only this application is deleted (the
        cluster and its other Serve applications stay), then the driver disconnects."""
        import ray
        from ray import serve

        from stl_bench.serve.deployment import APP_NAME

        try:
            if self.embedded:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            if ray.is_initialized():
                ray.shutdown()


def start(cfg: ServeConfig, launch: LaunchOptions, ready_timeout_s: float = 600.0) -> Server:
    """Bring the application up and return once `/v1/health` answers 200."""
    preflight(cfg, launch)
    embedded = launch.address is None
    haproxy = {}
    if embedded:
        haproxy = ingresses.configure(launch.ingress)  # before Ray's processes start: they read it once
    else:
        use_local_token_to_join()
    try:
        import ray
        from ray import serve
    except ImportError:
        raise StlBenchError(_INSTALL) from None
    from stl_bench.serve.deployment import APP_NAME, build_app

    if embedded:
        # Ray >= 2.52 turns token authentication on for a new local instance when RAY_AUTH_MODE
        # is unset (preflight refused "disabled"); checked below, never switched off here.
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", namespace="stl-bench",
                 logging_level=logging.WARNING, log_to_driver=True, _metrics_export_port=launch.metrics_port)
        if not token_auth_enabled():
            ray.shutdown()
            raise StlBenchError(f"Ray {ray.__version__} started without token authentication; upgrade to "
                                f"ray>=2.52 or set {AUTH_ENV}=token")
    else:
        ray.init(address=launch.address, namespace="stl-bench", logging_level=logging.WARNING)
    server = Server(launch, embedded, haproxy)
    try:
        quiet = {"log_level": "WARNING"}  # per-request access lines stay in Ray's log files, not the console
        serve.start(http_options={"host": launch.host, "port": launch.port},
                    proxy_location="HeadOnly" if embedded else "EveryNode", logging_config=quiet)
        serve.run(build_app(app_args(cfg, launch)), name=APP_NAME, route_prefix="/", blocking=False,
                  logging_config=quiet)
        wait_healthy(launch.url, ready_timeout_s)
    except StlBenchError:
        server.stop()
        raise
    except Exception as exc:  # Ray's deploy failures carry the replica's traceback as text
        server.stop()
        raise StlBenchError(f"the model could not be served: {_replica_error(exc)}") from None
    return server


def use_local_token_to_join() -> None:
    """Authenticate to a cluster with this machine's Ray token, as `--address auto` does.

    Ray's driver sends its token only in token mode; given an explicit address with
    RAY_AUTH_MODE unset it connects without one and the cluster refuses it. Set before
    `import ray` (Ray reads the mode once per process).
    """
    if os.environ.get(AUTH_ENV):
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ[AUTH_ENV] = "token"


def token_auth_enabled() -> bool:
    """Whether this process's Ray runs with token authentication (Ray's own view of it)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:  # a Ray without token authentication at all
        return False
    return get_authentication_mode() == AuthenticationMode.TOKEN


def wait_healthy(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + HEALTH, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise StlBenchError(f"{url}{HEALTH} did not answer within {timeout_s:.0f} s")
        time.sleep(0.25)


class StopSignals:
    """Ctrl-C and SIGTERM set an event instead of raising, from the moment start-up begins,
    so a stop that arrives while Ray is still coming up shuts everything down cleanly too."""

    def __enter__(self) -> threading.Event:
        self.event = threading.Event()
        self.previous = {sig: signal.signal(sig, lambda *_: self.event.set())
                         for sig in (signal.SIGINT, signal.SIGTERM)}
        return self.event

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def serve_until_stopped(server: Server, stop: threading.Event) -> None:
    """Block until `stop` is set (Ctrl-C or SIGTERM), then shut down cleanly."""
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down")
        server.stop()
