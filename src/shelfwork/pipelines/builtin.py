"""`noop` and `sleep`: smoke tests and benchmarks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..context import StepContext
from ..pipeline import Pipeline, step


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=86400, description="how long to sleep")
    steps: int = Field(default=1, ge=1, le=1000, description="progress updates along the way")


def nothing(ctx: StepContext) -> Any:
    """Do nothing: measures the engine's own cost."""
    return None


def nap(ctx: StepContext) -> dict[str, float]:
    """Sleep in slices, reporting progress and honouring cancel."""
    p: SleepParams = ctx.params  # type: ignore[assignment]
    slice_ = p.seconds / p.steps
    for i in range(p.steps):
        ctx.progress(i, p.steps, f"slept {i * slice_:.1f}s of {p.seconds:.1f}s")
        ctx.sleep(slice_)
    ctx.progress(p.steps, p.steps, "done", force=True)
    return {"slept": p.seconds}


noop = Pipeline("noop", steps=[step(nothing)], description="does nothing; for smoke tests")
sleep = Pipeline(
    "sleep", steps=[step(nap)], params=SleepParams, description="sleeps; for demos and tests"
)

PIPELINES = [noop, sleep]
