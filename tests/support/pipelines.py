"""Pipelines used by tests: counted side effects, failures on demand, parallel branches."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shelfwork.context import StepContext
from shelfwork.pipeline import Pipeline, Retry, step

CALLS: dict[str, int] = {}
_mutex = threading.Lock()


def count(name: str) -> int:
    with _mutex:
        CALLS[name] = CALLS.get(name, 0) + 1
        return CALLS[name]


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_times: int = Field(default=0, ge=0)
    key: str = "flaky"


def flaky(ctx: StepContext) -> dict[str, Any]:
    p: FlakyParams = ctx.params  # type: ignore[assignment]
    n = count(p.key)
    if n <= p.fail_times:
        raise ConnectionError(f"remote refused (call {n})")
    return {"calls": n, "attempt": ctx.attempt}


flaky_pipeline = Pipeline(
    "flaky",
    params=FlakyParams,
    steps=[step(flaky, retry=Retry(attempts=3, delay=0.01, factor=2))],
)
