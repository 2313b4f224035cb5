"""The seed-compatible endpoints existing Koha scripts call: `POST /integrate {biblionumber}` ->
`{task_id}`, then `GET /status/{task_id}` every 2 s until it is done.

They sit outside /api/v1 because those scripts know these paths; auth is the API's bearer
tokens: the `integrator` role (the staff button's token: these two endpoints and nothing else),
or operator to integrate and viewer to read. A task is a `koha-dspace` job; a second click on a
record whose job is still queued or running gets the same task id back.

The integrator token sits in every staff browser, and task ids are sequential, so what it reads
is scoped: it names the record as well as the task (`/status/{task_id}?biblionumber=N`, the
`status_url` /integrate answers; the Koha page knows its biblionumber), a task of another record
is "not found", and the error and warnings it sees are fixed sentences for a cataloguer, in
English or Ukrainian (Accept-Language or `?lang=uk`), saying at which step it stopped and what
to check, never the job's own text (server paths, internal URLs, what a remote answered) nor the
job's API URL. Viewer and higher tokens read the job's own text, with or without biblionumber.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import JobNotFound
from ..jobs import JobView
from ..redaction import excerpt
from ..store.models import FINAL_STATES
from .auth import INTEGRATOR, Integrator, Principal, require_integrator_or
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
    task_id: str = Field(description="Poll GET /status/{task_id}?biblionumber=N (status_url).")
    created: bool = Field(description="False when the record's job was already queued or running.")
    status_url: str = Field(description="Where to poll: /status/{task_id}?biblionumber=N.")
    job_url: str


class StatusOut(BaseModel):
    task_id: str
    biblionumber: int | None
    status: Status = Field(description="queued, running, done, error, cancelled or attention.")
    state: str = Field(description="The job's own state.")
    progress: Progress
    warnings: list[str] = Field(
        description="The job's warnings; for the integrator role, a sentence per step instead."
    )
    error: str | None = Field(
        description="Why the job failed; for the integrator role, a sentence for a cataloguer "
        "(the step, what to check) instead of the job's own text."
    )
    handle_url: str | None = Field(description="856$u written to Koha (when done).")
    cover_url: str | None = Field(description="956$c written to Koha (when done).")
    item_uuid: str | None = Field(description="DSpace item (956$3).")
    in_review: bool = Field(description="The DSpace item waits in a review workflow.")
    job_url: str | None = Field(description="The job in the API (not for the integrator role).")


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
    status_url = f"/status/{task}?biblionumber={body.biblionumber}"
    response.headers["Location"] = status_url
    return IntegrateOut(
        task_id=task,
        created=result.created,
        status_url=status_url,
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
    who: Integrator,
    biblionumber: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**31 - 1,
            description="The task's Koha record. Required for the integrator role, which reads "
            "a task only with its record (another record's task is not found) and gets the "
            "error and warnings as sentences for a cataloguer instead of the job's own text.",
        ),
    ] = None,
) -> StatusOut:
    """422 when the integrator role leaves out biblionumber; 404 when the task is not a
    koha-dspace job for that record."""
    scoped = who.role == INTEGRATOR
    if scoped and biblionumber is None:
        raise ApiError(
            422,
            "invalid_request",
            "the integrator role reads a task together with its record: "
            "/status/{task_id}?biblionumber=N (the status_url /integrate answered)",
            fields={"biblionumber": "required for the integrator role"},
        )
    try:
        job = engine_of(request).get(task_id)
    except JobNotFound:
        job = None
    if (
        job is None
        or job.pipeline != PIPELINE
        or (biblionumber is not None and (job.params or {}).get("biblionumber") != biblionumber)
    ):
        raise ApiError(404, "not_found", f"no integration task {task_id} for this record")
    view = _status(job)
    return _for_cataloguers(view, job, _language(request)) if scoped else view


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


# --- what the integrator role sees --------------------------------------------------------------

#: steps (and the branch of the cover) of the koha-dspace pipeline that have a sentence of their own
STEPS = ("fetch_record", "take_file", "check_file", "deposit", "upload_cover", "finalize")
COVER = ("cover", "upload_cover")
#: steps whose failure a cataloguer can act on: a hint says what to check
HINTS = ("fetch_record", "take_file", "check_file")


def _language(request: Request) -> str:
    """`?lang=uk` (as the dashboard), else the browser's Accept-Language, else English."""
    from ..dashboard.i18n import LANGUAGES, requested_language

    asked = requested_language(request)
    if asked:
        return asked
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in LANGUAGES:
            return tag
    return "en"


def _for_cataloguers(view: StatusOut, job: JobView, lang: str) -> StatusOut:
    """The status with fixed sentences instead of the job's own error and warning texts, which
    may name server paths and internal URLs and quote what a remote system answered."""
    from ..dashboard.i18n import Translator

    t = Translator(lang)
    task = str(job.id)

    def step_name(name: str | None) -> str:
        return t(f"status.step.{name}" if name in STEPS else "status.step.other")

    error = None
    if job.state == "cancelled":
        error = t("status.error.cancelled")
    elif job.state == "failed":
        failed = [s.name for s in job.steps if s.state == "failed"]
        where = next((name for name in failed if name in STEPS), failed[0] if failed else None)
        fetched = next((s.result for s in job.steps if s.name == "fetch_record"), None)
        file = excerpt(str(fetched.get("file") or ""), 120) if isinstance(fetched, dict) else ""
        parts = [t("status.error.stopped", step=step_name(where))]
        if where in HINTS and (file or where == "fetch_record"):
            parts.append(t(f"status.error.hint.{where}", file=file))
        parts.append(t("status.error.ask", task=task))
        error = " ".join(parts)
    warnings: list[str] = []
    for warning in job.warnings or []:
        name = warning.get("step") if isinstance(warning, dict) else None
        if name in COVER:
            sentence = t("status.warning.cover")
        elif name == "finalize" and view.in_review:
            continue  # the review note: in_review says it
        else:
            sentence = t("status.warning.step", step=step_name(name), task=task)
        if sentence not in warnings:
            warnings.append(sentence)
    return view.model_copy(update={"error": error, "warnings": warnings, "job_url": None})
