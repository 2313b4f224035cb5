"""Jobs: submit, read, list, cancel, retry, release, and their audit log (also as a live stream).

Every handler is a plain `def` (FastAPI runs it in its thread pool), so a database call never
blocks the event loop; submitting is one transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine import Engine
from ..errors import ShelfworkError
from .auth import Operator, Viewer
from .errors import responses
from .schemas import (
    MAX_ID,
    NO_CONTROL,
    EventOut,
    EventPage,
    JobOut,
    JobPage,
    JobState,
    SubmitIn,
    SubmitOut,
    job_url,
)

router = APIRouter(tags=["jobs"])
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="Job id.")]
#: an idle stream sends a comment this often, so proxies do not close it
KEEPALIVE = 15.0
STREAM_PAGE = 500


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.post(
    "/jobs",
    status_code=202,
    response_model=SubmitOut,
    responses=responses(401, 403, 409, 422, 429, 503),
    summary="Submit a job",
)
def submit_job(body: SubmitIn, request: Request, response: Response, who: Operator) -> SubmitOut:
    """Validate the params against the pipeline's schema and queue the job.

    422 names each bad param (`fields`, e.g. `params.seconds`), and an unknown pipeline (it is a bad
    value in the body, not a missing resource). 409: the pipeline's precondition refused the job
    (`detail` says why). 429: the queue is full; try again after `Retry-After` seconds. A live job
    with the same `dedup_key` is returned instead of a new one (`created: false`).
    """
    engine = engine_of(request)
    result = engine.submit(
        body.pipeline,
        body.params,
        context=body.context,
        lane=body.lane,
        priority=body.priority,
        dedup_key=body.dedup_key,
        note=f"submitted by {who.who}",
    )
    url = job_url(result.job_id)
    response.headers["Location"] = url
    return SubmitOut(id=result.job_id, state=result.state, url=url, created=result.created)  # type: ignore[arg-type]


@router.get(
    "/jobs",
    response_model=JobPage,
    responses=responses(401, 403, 422, 503),
    summary="List jobs, newest first",
)
def list_jobs(
    request: Request,
    _who: Viewer,
    state: JobState | None = None,
    pipeline: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL)] = None,
    context: Annotated[str | None, Query(max_length=300, pattern=NO_CONTROL)] = None,
    since: Annotated[
        datetime | None, Query(description="Only jobs created at or after this time.")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    views = engine_of(request).jobs.list(
        state=state,
        pipeline=pipeline,
        context=context,
        since=since,
        before_id=int(cursor) if cursor else None,
        limit=limit,
    )
    next_cursor = str(views[-1].id) if len(views) == limit else None
    return JobPage(items=[JobOut.of(v, steps=False) for v in views], next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="One job with its steps and progress",
)
def get_job(job_id: JobId, request: Request, _who: Viewer) -> JobOut:
    return JobOut.of(engine_of(request).get(job_id), steps=True)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Cancel a job",
)
def cancel_job(job_id: JobId, request: Request, who: Operator) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next step boundary or
    cancellation check. 409 if the job has already finished."""
    return JobOut.of(engine_of(request).cancel(job_id, by=who.who), steps=True)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    responses=responses(401, 403, 404, 409, 422, 429, 503),
    summary="Queue a failed or cancelled job again",
)
def retry_job(job_id: JobId, request: Request, who: Operator) -> JobOut:
    """Finished steps are kept and not run again. 409 unless the job failed or was cancelled;
    429 when the queue is full."""
    return JobOut.of(engine_of(request).retry(job_id, by=who.who), steps=True)


@router.post(
    "/jobs/{job_id}/release",
    response_model=JobOut,
    responses=responses(401, 403, 404, 409, 422, 503),
    summary="Let a job held for attention resume on the current pipeline code",
)
def release_job(job_id: JobId, request: Request, who: Operator) -> JobOut:
    """409 if the job is not held (its `attention` is null)."""
    return JobOut.of(engine_of(request).release(job_id, by=who.who), steps=True)


@router.get(
    "/jobs/{job_id}/events",
    response_model=EventPage,
    responses=responses(401, 403, 404, 422, 503),
    summary="A job's audit log, oldest first",
)
def job_events(
    job_id: JobId,
    request: Request,
    _who: Viewer,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Only events after this id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventPage:
    engine = engine_of(request)
    engine.jobs.get(job_id, steps=False)  # 404 for an unknown job, not an empty list
    events = engine.jobs.events(job_id, after_id=after_id, limit=limit)
    items = [EventOut(**e) for e in events]
    return EventPage(items=items, next_after_id=items[-1].id if len(items) == limit else None)


@router.get(
    "/jobs/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events: one `data:` JSON event per audit-log entry (its "
            "`id:` is the event id), then `event: end` with the job's final state.",
        },
        **responses(401, 403, 404, 422, 503),
    },
    summary="Follow a job's audit log live (server-sent events)",
)
async def stream_job_events(
    job_id: JobId,
    request: Request,
    _who: Viewer,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Start after this event.")] = 0,
    last_event_id: Annotated[
        str | None, Header(description="Sent by EventSource on reconnect: resume after it.")
    ] = None,
) -> StreamingResponse:
    """Sends the events so far, then new ones as they are written, and ends once the job has
    finished and all its events were sent. Reconnecting with `Last-Event-ID` resumes."""
    engine = engine_of(request)
    await run_in_threadpool(engine.jobs.get, job_id, steps=False)  # 404 before streaming
    start = after_id
    if last_event_id and last_event_id.strip().isdigit() and len(last_event_id.strip()) < 19:
        start = max(start, int(last_event_id.strip()))
    poll: float = request.app.state.stream_poll
    return StreamingResponse(
        _event_stream(request, engine, job_id, start, poll),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(
    request: Request, engine: Engine, job_id: int, after_id: int, poll: float
) -> AsyncIterator[str]:
    last = after_id
    quiet = 0.0
    yield "retry: 2000\n\n"
    while True:
        try:
            # State first, then events: a job's final event commits with its final state, so
            # once the state read is final, the events read after it holds everything.
            view = await run_in_threadpool(engine.jobs.get, job_id, steps=False)
            events = await run_in_threadpool(_events_after, engine, job_id, last)
        except ShelfworkError as exc:
            yield f"event: error\ndata: {json.dumps({'detail': str(exc)})}\n\n"
            return
        for e in events:
            last = e["id"]
            yield f"id: {last}\ndata: {EventOut(**e).model_dump_json()}\n\n"
        if view.finished and len(events) < STREAM_PAGE:
            yield f"event: end\ndata: {json.dumps({'id': job_id, 'state': view.state})}\n\n"
            return
        if len(events) == STREAM_PAGE:
            continue
        if getattr(request.app.state, "closing", False) or await request.is_disconnected():
            return
        quiet = 0.0 if events else quiet + poll
        if quiet >= KEEPALIVE:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)


def _events_after(engine: Engine, job_id: int, after_id: int) -> list[dict[str, Any]]:
    return engine.jobs.events(job_id, after_id=after_id, limit=STREAM_PAGE)
