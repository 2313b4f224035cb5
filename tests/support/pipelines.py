"""Pipelines used by tests: counted side effects, failures on demand, parallel branches."""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shelfwork.context import StepContext
from shelfwork.pipeline import Pipeline, Retry, branch, parallel, step

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


# --- fork-join with compensation ------------------------------------------------------------

COMPENSATED: list[str] = []


class ForkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_cover: bool = False
    fail_deposit: bool = False
    fail_prepare: bool = False
    tag: str = "x"


def prepare(ctx: StepContext) -> dict[str, Any]:
    p: ForkParams = ctx.params  # type: ignore[assignment]
    count(f"prepare:{p.tag}")
    if p.fail_prepare:
        raise FileNotFoundError("inbox/book.pdf does not exist")
    return {"file": "processed/book_v01.pdf"}


def cover(ctx: StepContext) -> dict[str, Any]:
    p: ForkParams = ctx.params  # type: ignore[assignment]
    count(f"cover:{p.tag}")
    if p.fail_cover:
        raise RuntimeError("cover upload refused")
    return {"cover": "cover-1"}


def deposit(ctx: StepContext) -> dict[str, Any]:
    p: ForkParams = ctx.params  # type: ignore[assignment]
    count(f"deposit:{p.tag}")
    assert ctx.results["prepare"] == {"file": "processed/book_v01.pdf"}
    if p.fail_deposit:
        raise RuntimeError("DSpace answered 500")
    return {"handle": "123456789/1"}


def finalize(ctx: StepContext) -> dict[str, Any]:
    return {
        name: {"state": o.state, "result": o.result, "error": o.error}
        for name, o in sorted(ctx.branches.items())
    }


def move_to_error(ctx: StepContext, exc: BaseException) -> None:
    p: ForkParams = ctx.params  # type: ignore[assignment]
    COMPENSATED.append(f"{p.tag}:{type(exc).__name__}:{exc}")


fork_pipeline = Pipeline(
    "fork",
    params=ForkParams,
    steps=[
        step(prepare),
        parallel(
            branch("cover_branch", cover, critical=False),
            branch("dspace_branch", deposit, critical=True),
        ),
        step(finalize),
    ],
    compensate=move_to_error,
)


# --- a job that blocks until released, for crash/lease/cancel tests ----------------------------

GATES: dict[str, threading.Event] = {}


class GateParams(BaseModel):
    gate: str
    hold: float = 30.0


def first(ctx: StepContext) -> str:
    count(f"first:{ctx.params.gate}")  # type: ignore[attr-defined]
    return "first done"


def wait_gate(ctx: StepContext) -> str:
    p: GateParams = ctx.params  # type: ignore[assignment]
    n = count(f"gate:{p.gate}")
    gate = GATES.setdefault(p.gate, threading.Event())
    deadline = time.monotonic() + p.hold
    while not gate.is_set() and time.monotonic() < deadline:
        ctx.sleep(0.02)
    return f"gate run {n}"


def gate_compensate(ctx: StepContext, exc: BaseException) -> None:
    COMPENSATED.append(f"gate:{ctx.params.gate}:{type(exc).__name__}")  # type: ignore[attr-defined]


gate_pipeline = Pipeline(
    "gate",
    params=GateParams,
    steps=[step(first), step(wait_gate)],
    context=lambda p: f"gate:{p.gate}",
    compensate=gate_compensate,
)

ALL = [flaky_pipeline, fork_pipeline, gate_pipeline]
