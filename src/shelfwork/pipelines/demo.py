"""Small pipelines that show the engine's behaviour in `shelfwork engine-demo` (and in the CLI tests).

`demo-deposit` is a fork-join integration in miniature: fetch a record, then in parallel render a
cover (an optional branch: its failure becomes a warning) and deposit it in a repository (a critical
branch: its failure fails the job and runs the compensation), then finalise. `demo-flaky` calls a
"remote" that times out a few times before it answers, to show per-step retries with backoff.

List `shelfwork.pipelines.demo` under `[pipelines] modules` to submit them from the command line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..context import StepContext
from ..pipeline import Pipeline, Retry, branch, parallel, step


class DepositParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record: str = Field(default="demo-1", min_length=1, description="record to integrate")
    fail_cover: bool = Field(default=False, description="make the optional cover branch fail")
    fail_deposit: bool = Field(default=False, description="make the critical deposit fail")
    pause: float = Field(default=0.4, ge=0, le=10, description="seconds each step takes")


def fetch(ctx: StepContext) -> dict[str, Any]:
    """Read the record from the source system."""
    p: DepositParams = ctx.params  # type: ignore[assignment]
    ctx.progress(0, 4, f"fetching {p.record}", force=True)
    ctx.sleep(p.pause)
    ctx.progress(1, 4, f"fetched {p.record}", force=True)
    return {"record": p.record, "title": f"Title of {p.record}"}


def render_cover(ctx: StepContext) -> dict[str, Any]:
    """Render a cover image (optional: the record is still useful without one)."""
    p: DepositParams = ctx.params  # type: ignore[assignment]
    ctx.sleep(p.pause)
    if p.fail_cover:
        raise RuntimeError("cover service answered HTTP 503")
    return {"cover": f"{p.record}.png"}


def deposit(ctx: StepContext) -> dict[str, Any]:
    """Deposit the record in the repository (critical: without it the integration failed)."""
    p: DepositParams = ctx.params  # type: ignore[assignment]
    ctx.sleep(p.pause)
    if p.fail_deposit:
        raise ConnectionError("repository refused the deposit (HTTP 500)")
    ctx.progress(3, 4, "deposited", force=True)
    return {"handle": f"123456789/{p.record}"}


def finalize(ctx: StepContext) -> dict[str, Any]:
    """Record where the item went, and whether it got a cover."""
    p: DepositParams = ctx.params  # type: ignore[assignment]
    cover = ctx.results.get("cover")
    ctx.progress(4, 4, "done", force=True)
    return {
        "record": p.record,
        "handle": ctx.results["deposit"]["handle"],
        "cover": cover["cover"] if isinstance(cover, dict) else None,
    }


def move_to_error_folder(ctx: StepContext, exc: BaseException) -> None:
    """Compensation: put the source record back where a person will look at it."""
    p: DepositParams = ctx.params  # type: ignore[assignment]
    ctx.log.warning(f"compensation: moved {p.record} to the error folder ({exc})")


deposit_pipeline = Pipeline(
    "demo-deposit",
    params=DepositParams,
    description="fork-join demo: optional cover branch, critical deposit branch, compensation",
    context=lambda p: f"record:{p.record}",
    steps=[
        step(fetch),
        parallel(branch("cover", render_cover, critical=False), branch("repository", deposit)),
        step(finalize),
    ],
    compensate=move_to_error_folder,
)


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_attempts: int = Field(default=2, ge=0, le=10, description="attempts that time out")
    pause: float = Field(default=0.2, ge=0, le=10, description="seconds each attempt takes")


def call_remote(ctx: StepContext) -> dict[str, Any]:
    """Call a remote system that times out on the first `fail_attempts` attempts."""
    p: FlakyParams = ctx.params  # type: ignore[assignment]
    ctx.progress(ctx.attempt - 1, p.fail_attempts + 1, f"attempt {ctx.attempt}", force=True)
    ctx.sleep(p.pause)
    if ctx.attempt <= p.fail_attempts:
        raise TimeoutError(f"remote did not answer (attempt {ctx.attempt})")
    ctx.progress(p.fail_attempts + 1, p.fail_attempts + 1, "answered", force=True)
    return {"attempts": ctx.attempt}


flaky_pipeline = Pipeline(
    "demo-flaky",
    params=FlakyParams,
    description="retry demo: a remote call that times out before it answers",
    steps=[step(call_remote, retry=Retry(attempts=4, delay=0.3, factor=2, max_delay=2))],
)

PIPELINES = [deposit_pipeline, flaky_pipeline]
