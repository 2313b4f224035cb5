"""Waiting in tests for something another thread or process does: a condition polled until a
deadline (never a fixed sleep that hopes the other side was quick enough)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shelfwork.engine import Engine


def wait_until(
    condition: Callable[[], bool],
    *,
    what: str = "the condition",
    timeout: float = 20.0,
    interval: float = 0.01,
) -> None:
    """Return once `condition()` holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(interval)


def wait_idle(engine: Engine, timeout: float = 60.0) -> list[Any]:
    """Every job, once none is queued or running (chains hand over from job to job)."""
    found: list[Any] = []

    def idle() -> bool:
        # One consistent read: a chain's next job is submitted before the job handing over
        # ends, so when every job read has ended, none is still to come.
        found[:] = engine.jobs.list(limit=100)
        return bool(found) and all(job.finished for job in found)

    wait_until(idle, what="no job is queued or running", timeout=timeout, interval=0.05)
    return found
