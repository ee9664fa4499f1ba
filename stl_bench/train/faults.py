"""Test-only fault injection: a training process SIGKILLs itself at a chosen moment.

The kill tests (tests/test_train_kill.py) need a kill to land at an exact point of a
run, which racing a timer against a subprocess cannot promise. Setting
`STL_BENCH_TEST_KILL=<moment>:<step>` arms one point:

* `step:N`   right after optimizer step N, before any checkpoint of that step is written;
* `saving:N` while last.pt of step N is being written: its temporary is complete but not
  yet renamed, so the previous last.pt must survive;
* `saved:N`  right after last.pt of step N is in place.

Not for normal use; unset (always, outside tests) it costs one environment lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "STL_BENCH_TEST_KILL"


def kill_if(moment: str, step: int) -> None:
    """SIGKILL this process (no clean-up, like an OOM kill or a pre-empted node) if armed here."""
    if os.environ.get(ENV) == f"{moment}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
