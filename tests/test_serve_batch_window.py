"""When the replica closes a batch: as the running model call should end, or at once when idle.

The policy is the replica's own arithmetic on top of Ray Serve's batch queue, so it is
tested here on the deployment class's methods without starting Ray (the live tests see
its effect: concurrent requests batched, answers exact).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")
from stl_bench.serve.deployment import StlBenchModel  # noqa: E402
from stl_bench.serve.protocol import ServeConfig  # noqa: E402

MODEL = StlBenchModel.func_or_class


class _Batcher:
    """Stands in for `predict_batch`: records what the replica sets through Ray Serve's setter."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def set_batch_wait_timeout_s(self, seconds: float) -> None:
        self.waits.append(seconds)


def _replica(batch_wait_ms: float = 10.0, call_ends: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(cfg=ServeConfig(model="fan_nano_4_p4_32", batch_wait_ms=batch_wait_ms), _call_ends=call_ends,
                           _window_s=batch_wait_ms / 1000.0, predict_batch=_Batcher())


def test_an_idle_runner_waits_only_the_batch_wait():
    replica = _replica()
    MODEL._tune_window(replica)
    assert replica.predict_batch.waits == []   # already the base wait: nothing to set


def test_a_busy_runner_gathers_until_its_call_should_end():
    replica = _replica(call_ends=time.perf_counter() + 0.3)
    MODEL._tune_window(replica)
    (wait,) = replica.predict_batch.waits
    assert 0.25 < wait <= 0.3
    replica._call_ends = 0.0   # the call ended: the next batch waits the base again
    MODEL._tune_window(replica)
    assert replica.predict_batch.waits[-1] == pytest.approx(0.01)


def test_an_overdue_call_falls_back_to_the_base_and_long_calls_are_capped():
    replica = _replica(call_ends=time.perf_counter() - 0.5)
    MODEL._tune_window(replica)
    assert replica.predict_batch.waits == []
    replica._call_ends = time.perf_counter() + 30.0
    MODEL._tune_window(replica)
    assert replica.predict_batch.waits == [1.0]
