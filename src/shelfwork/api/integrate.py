"""The seed-compatible endpoints existing Koha scripts call: `POST /integrate {biblionumber}` ->
`{task_id}`, then `GET /status/{task_id}` every 2 s until it is done.

They sit outside /api/v1 because those scripts know these paths; auth is the API's bearer
tokens: the `integrator` role (the staff button's token: these two endpoints and nothing else),
or operator to integrate and viewer to read. A task is a `koha-dspace` job; a second click on a
record whose job is still queued or running gets the same task id back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import JobNotFound
from ..jobs import JobView
from ..store.models import FINAL_STATES
from .auth import Integrator, Principal, require_integrator_or
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import MAX_ID, Progress, job_url

PIPELINE = "koha-dspace"
router = APIRouter(tags=["koha integration"])

Status = Literal["queued", "running", "done", "error", "cancelled", "attention"]
_STATUS: dict[str, Status] = {
    "queued": "queued",
    "running": "running",
    "succeeded": "done",
    "failed": "error",
    "cancelled": "cancelled",
}


class IntegrateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    biblionumber: int = Field(
        ge=1, le=2**31 - 1, description="Koha biblionumber of the record (a number or digits)."
    )

    @field_validator("biblionumber", mode="before")
    @classmethod
    def _not_a_flag(cls, value: Any) -> Any:
        """Scripts send 42 or "42"; true is a mistake, not record 1."""
        if isinstance(value, bool):
            raise ValueError("biblionumber must be a number, not true/false")
        return value


class IntegrateOut(BaseModel):
    task_id: str = Field(description="Poll GET /status/{task_id}.")
    created: bool = Field(description="False when the record's job was already queued or running.")
    status_url: str
    job_url: str


class StatusOut(BaseModel):
    task_id: str
    biblionumber: int | None
    status: Status = Field(description="queued, running, done, error, cancelled or attention.")
    state: str = Field(description="The job's own state.")
    progress: Progress
    warnings: list[str]
    error: str | None
    handle_url: str | None = Field(description="856$u written to Koha (when done).")
    cover_url: str | None = Field(description="956$c written to Koha (when done).")
    item_uuid: str | None = Field(description="DSpace item (956$3).")
    in_review: bool = Field(description="The DSpace item waits in a review workflow.")
    job_url: str


@router.post(
    "/integrate",
    status_code=202,
    response_model=IntegrateOut,
    responses=responses(401, 403, 404, 422, 429, 503),
    summary="Integrate a Koha record into DSpace (seed-compatible)",
)
def integrate(
    body: IntegrateIn,
    request: Request,
    response: Response,
    who: Annotated[Principal, Depends(require_integrator_or("operator"))],
) -> IntegrateOut:
    """Queue the `koha-dspace` job for the record and answer at once with its task id.

    404 (`not_enabled`) when this server does not load the integrator's pipeline module."""
    engine = engine_of(request)
    if PIPELINE not in engine.registry:
        raise ApiError(
            404,
            "not_enabled",
            "the koha-dspace pipeline is not enabled on this server: add "
            "'shelfwork.pipelines.koha_dspace' to [pipelines] modules",
        )
    result = engine.submit(
        PIPELINE, {"biblionumber": body.biblionumber}, note=f"submitted by {who.who} (/integrate)"
    )
    task = str(result.job_id)
    response.headers["Location"] = f"/status/{task}"
    return IntegrateOut(
        task_id=task,
        created=result.created,
        status_url=f"/status/{task}",
        job_url=job_url(result.job_id),
    )


@router.get(
    "/status/{task_id}",
    response_model=StatusOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="Where an integration task is (seed-compatible)",
)
def status(
    task_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The task id /integrate gave.")],
    request: Request,
    _who: Integrator,
) -> StatusOut:
    try:
        job = engine_of(request).get(task_id)
    except JobNotFound:
        job = None
    if job is None or job.pipeline != PIPELINE:
        raise ApiError(404, "not_found", f"no integration task {task_id}")
    return _status(job)


def _status(job: JobView) -> StatusOut:
    result: dict[str, Any] = job.result if isinstance(job.result, dict) else {}
    warnings = [
        str(w.get("message")) if isinstance(w, dict) else str(w) for w in (job.warnings or [])
    ]
    return StatusOut(
        task_id=str(job.id),
        biblionumber=(job.params or {}).get("biblionumber"),
        status="attention"
        if job.attention and job.state not in FINAL_STATES
        else _STATUS[job.state],
        state=job.state,
        progress=Progress(
            done=job.progress_done,
            total=job.progress_total,
            percent=100.0 if job.state == "succeeded" else job.percent,
            message=job.progress_message,
        ),
        warnings=warnings,
        error=job.error,
        handle_url=result.get("handle_url"),
        cover_url=result.get("cover_url"),
        item_uuid=result.get("uuid"),
        in_review=bool(result.get("in_review")),
        job_url=job_url(job.id),
    )
