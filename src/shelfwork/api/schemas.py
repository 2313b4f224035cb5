"""Request and response bodies of the API, as the OpenAPI document shows them.

Strings that end up in indexed columns refuse control characters (PostgreSQL rejects NUL bytes, and
nobody means them), integers are bounded to what the columns hold: bad input is a 422, never a 500.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..jobs import JobView
from ..store.models import JOB_STATES

NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
MAX_ID = 2**62  # job, event and dead-letter ids are 64-bit; larger numbers cannot name anything
MAX_SMALL_ID = 2**31 - 1  # ids of tables that stay small (tokens) are 32-bit
MAX_PRIORITY = 1_000_000

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=NO_CONTROL)]
LaneName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_CONTROL)]
Priority = Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Role = Literal["viewer", "operator", "admin"]
# Tokens may also be "integrator": the Koha button's, for /integrate and /status only.
TokenRole = Literal["integrator", "viewer", "operator", "admin"]
assert set(JobState.__args__) == set(JOB_STATES)  # type: ignore[attr-defined]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- jobs ---------------------------------------------------------------------------------------


class SubmitIn(Strict):
    pipeline: Name = Field(description="Pipeline name (GET /api/v1/pipelines lists them).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Checked against the pipeline's params schema."
    )
    context: Key | None = Field(
        default=None, description="Jobs in one context run one at a time, in order."
    )
    lane: LaneName | None = Field(default=None, description="At most one running job per lane.")
    priority: Priority = Field(default=0, description="Higher runs first.")
    dedup_key: Key | None = Field(
        default=None, description="While a job with this key is live, that job is returned."
    )


class SubmitOut(BaseModel):
    id: int
    state: JobState
    url: str = Field(description="Where to follow the job.")
    created: bool = Field(description="False when `dedup_key` matched a live job.")


class Progress(BaseModel):
    done: float | None
    total: float | None
    percent: float | None
    message: str | None


class StepOut(BaseModel):
    name: str
    branch: str | None
    state: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    error: str | None


class JobOut(BaseModel):
    id: int
    pipeline: str
    pipeline_version: str
    state: JobState
    params: dict[str, Any]
    context: str | None
    lane: str | None
    priority: int
    dedup_key: str | None
    schedule_id: int | None
    progress: Progress
    warnings: list[Any]
    result: Any = None
    error: str | None
    attention: str | None = Field(description="Why the job is held for a person (release it).")
    cancel_requested: bool
    runs: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    url: str
    steps: list[StepOut] | None = Field(default=None, description="Only in single-job views.")

    @classmethod
    def of(cls, view: JobView, *, steps: bool) -> JobOut:
        return cls(
            id=view.id,
            pipeline=view.pipeline,
            pipeline_version=view.pipeline_version,
            state=view.state,  # type: ignore[arg-type]
            params=view.params or {},
            context=view.context,
            lane=view.lane,
            priority=view.priority,
            dedup_key=view.dedup_key,
            schedule_id=view.schedule_id,
            progress=Progress(
                done=view.progress_done,
                total=view.progress_total,
                percent=view.percent,
                message=view.progress_message,
            ),
            warnings=list(view.warnings or []),
            result=view.result,
            error=view.error,
            attention=view.attention,
            cancel_requested=view.cancel_requested,
            runs=view.runs,
            created_at=view.created_at,
            started_at=view.started_at,
            finished_at=view.finished_at,
            duration=view.duration,
            url=job_url(view.id),
            steps=[
                StepOut(
                    name=s.name,
                    branch=s.branch,
                    state=s.state,
                    attempts=s.attempts,
                    started_at=s.started_at,
                    finished_at=s.finished_at,
                    duration=s.duration,
                    error=s.error,
                )
                for s in view.steps
            ]
            if steps
            else None,
        )


def job_url(job_id: int) -> str:
    return f"/api/v1/jobs/{job_id}"


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class EventOut(BaseModel):
    id: int
    job_id: int
    at: datetime
    kind: str
    level: str
    step: str | None
    message: str
    data: Any = None


class EventPage(BaseModel):
    items: list[EventOut]
    next_after_id: int | None = Field(
        description="Pass as `after_id` for more; null when these were the newest."
    )


# --- pipelines ----------------------------------------------------------------------------------


class PipelineOut(BaseModel):
    name: str
    version: str
    description: str
    system: str
    params_schema: dict[str, Any]
    plan: list[dict[str, Any]]


class PipelineList(BaseModel):
    items: list[PipelineOut]


# --- schedules ----------------------------------------------------------------------------------


class ScheduleIn(Strict):
    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
    ]
    pipeline: Name
    cron: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL)] = (
        Field(description="Five fields (or six with seconds), or @hourly/@daily/...")
    )
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)] = (
        "UTC"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    context: Key | None = None
    lane: LaneName | None = None
    priority: Priority = 0
    misfire: Literal["run_once", "skip"] = "run_once"
    when_busy: Literal["skip", "queue"] = "skip"
    paused: bool = False


class ScheduleOut(BaseModel):
    id: int
    name: str
    pipeline: str
    params: dict[str, Any]
    cron: str
    timezone: str
    context: str | None
    lane: str | None
    priority: int
    misfire: str
    when_busy: str
    paused: bool
    paused_by: str | None
    source: str = Field(description="`api` or `config` (change those in the config file).")
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    last_job_id: int | None
    created_at: datetime
    updated_at: datetime | None
    upcoming: list[datetime] | None = Field(
        default=None, description="The next firings (single-schedule view only)."
    )


class ScheduleList(BaseModel):
    items: list[ScheduleOut]


class ScheduleRunOut(BaseModel):
    id: int
    schedule_id: int
    at: datetime
    planned_for: datetime
    outcome: str
    job_id: int | None
    missed: int
    detail: str | None


class ScheduleRunList(BaseModel):
    items: list[ScheduleRunOut]


# --- trackers -----------------------------------------------------------------------------------


class TrackerOut(BaseModel):
    name: str
    description: str
    states: list[str]
    final: list[str]
    counts: dict[str, int] = Field(description="Entities per state.")
    too_long: int = Field(description="Entities flagged as too long in their state.")


class TrackerList(BaseModel):
    items: list[TrackerOut]
    lag: float = Field(description="Seconds the most overdue poll is behind.")


class TrackIn(Strict):
    key: Key
    state: Name
    data: dict[str, Any] = Field(default_factory=dict)


class TransitionIn(Strict):
    state: Name
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    data: dict[str, Any] | None = None


class AcknowledgeIn(Strict):
    note: Annotated[str, StringConstraints(max_length=2000)] = ""


class EntityOut(BaseModel):
    id: int
    tracker: str
    key: str
    state: str
    data: dict[str, Any]
    entered_state_at: datetime
    acknowledged_at: datetime | None
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    interval: float | None
    unchanged_polls: int
    polls: int
    too_long: bool
    error: str | None
    created_at: datetime


class EntityPage(BaseModel):
    items: list[EntityOut]
    next_cursor: str | None


class TransitionOut(BaseModel):
    id: int
    at: datetime
    kind: str
    from_state: str | None
    to_state: str
    reason: str
    by: str
    data: Any = None


class TransitionList(BaseModel):
    items: list[TransitionOut]


# --- locks, dead letters, tokens, health ----------------------------------------------------------


class LockOut(BaseModel):
    name: str
    owner: str
    job_id: int | None
    acquired_at: datetime
    expires_at: datetime
    expired: bool


class LockList(BaseModel):
    items: list[LockOut]


class DeadLetterOut(BaseModel):
    id: int
    job_id: int | None
    pipeline: str | None
    step: str | None
    item_key: str
    reason: str
    payload: Any = None
    created_at: datetime


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None


class TokenIn(Strict):
    role: TokenRole
    name: Name | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    role: TokenRole
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool


class TokenCreated(TokenOut):
    token: str = Field(description="The secret. It is shown only this once: store it now.")


class TokenList(BaseModel):
    items: list[TokenOut]


class MeOut(BaseModel):
    kind: Literal["token", "user"]
    name: str
    role: Role


class CheckOut(BaseModel):
    ok: bool
    kind: str | None = None


class HealthOut(BaseModel):
    ok: bool
    database: CheckOut
    executor: CheckOut
