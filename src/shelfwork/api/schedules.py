"""Schedules: list, create, pause, resume, delete, and what each firing did.

Schedules defined in the config file (`source: config`) can be paused and resumed here but are
changed or removed only in the file: trying is a 409 that says so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from ..errors import ScheduleError
from ..schedules import ScheduleNotFound, ScheduleView
from .auth import Operator, Viewer
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import (
    NO_CONTROL,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
    ScheduleRunList,
    ScheduleRunOut,
)

log = logging.getLogger("shelfwork.api")
router = APIRouter(tags=["schedules"])
ScheduleName = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL)]
UPCOMING = 5


def _out(
    view: ScheduleView, *, upcoming: bool = False, request: Request | None = None
) -> ScheduleOut:
    out = ScheduleOut(**asdict(view))
    if upcoming and request is not None and not view.paused:
        out.upcoming = engine_of(request).schedules.upcoming(view.name, UPCOMING)
    return out


def _not_found(exc: ScheduleNotFound) -> ApiError:
    return ApiError(404, "not_found", str(exc))


@router.get(
    "/schedules",
    response_model=ScheduleList,
    responses=responses(401, 403, 422),
    summary="Schedules by name",
)
def list_schedules(
    request: Request,
    _who: Viewer,
    paused: bool | None = None,
    source: Annotated[str | None, Query(pattern="^(api|config)$")] = None,
) -> ScheduleList:
    views = engine_of(request).schedules.list(source=source, paused=paused)
    return ScheduleList(items=[_out(v) for v in views])


@router.post(
    "/schedules",
    status_code=201,
    response_model=ScheduleOut,
    responses=responses(401, 403, 409, 422),
    summary="Create a schedule",
)
def create_schedule(body: ScheduleIn, request: Request, who: Operator) -> ScheduleOut:
    """422 names what is wrong (cron, time zone, pipeline, params); 409 if the name is taken."""
    schedules = engine_of(request).schedules
    if _exists(request, body.name):
        raise ApiError(409, "conflict", f"schedule {body.name!r} already exists")
    try:
        view = schedules.add(
            body.name,
            body.pipeline,
            body.cron,
            timezone=body.timezone,
            params=body.params,
            context=body.context,
            lane=body.lane,
            priority=body.priority,
            misfire=body.misfire,
            when_busy=body.when_busy,
            paused=body.paused,
        )
    except ScheduleError as exc:
        if _exists(request, body.name):  # created meanwhile by someone else
            raise ApiError(409, "conflict", f"schedule {body.name!r} already exists") from None
        raise ApiError(422, "invalid_schedule", str(exc)) from None
    log.info("schedule %s created by %s", body.name, who.who)
    return _out(view, upcoming=True, request=request)


def _exists(request: Request, name: str) -> bool:
    try:
        engine_of(request).schedules.get(name)
    except ScheduleNotFound:
        return False
    return True


@router.get(
    "/schedules/{name}",
    response_model=ScheduleOut,
    responses=responses(401, 403, 404, 422),
    summary="One schedule, with its next firings",
)
def get_schedule(name: ScheduleName, request: Request, _who: Viewer) -> ScheduleOut:
    try:
        return _out(engine_of(request).schedules.get(name), upcoming=True, request=request)
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None


@router.post(
    "/schedules/{name}/pause",
    response_model=ScheduleOut,
    responses=responses(401, 403, 404, 422),
    summary="Stop a schedule firing (survives restarts)",
)
def pause_schedule(name: ScheduleName, request: Request, who: Operator) -> ScheduleOut:
    try:
        return _out(engine_of(request).schedules.pause(name, by=who.who))
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None


@router.post(
    "/schedules/{name}/resume",
    response_model=ScheduleOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Fire again from the next slot",
)
def resume_schedule(name: ScheduleName, request: Request, who: Operator) -> ScheduleOut:
    """409 for a schedule paused in the config file (unpause it there)."""
    try:
        view = engine_of(request).schedules.resume(name, by=who.who)
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None
    except ScheduleError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return _out(view, upcoming=True, request=request)


@router.delete(
    "/schedules/{name}",
    status_code=204,
    responses=responses(401, 403, 404, 409, 422),
    summary="Delete a schedule and its run history (its jobs stay)",
)
def delete_schedule(name: ScheduleName, request: Request, who: Operator) -> None:
    """409 for a schedule defined in the config file (remove it there)."""
    try:
        engine_of(request).schedules.delete(name)
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None
    except ScheduleError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    log.info("schedule %s deleted by %s", name, who.who)


@router.get(
    "/schedules/{name}/runs",
    response_model=ScheduleRunList,
    responses=responses(401, 403, 404, 422),
    summary="What a schedule did at each firing, newest first",
)
def schedule_runs(
    name: ScheduleName,
    request: Request,
    _who: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ScheduleRunList:
    try:
        runs = engine_of(request).schedules.runs(name, limit)
    except ScheduleNotFound as exc:
        raise _not_found(exc) from None
    return ScheduleRunList(items=[ScheduleRunOut(**asdict(r)) for r in runs])
