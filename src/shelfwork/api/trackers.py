"""Trackers: entities by state, their audit trail, and what people do to them (track, force a
poll, acknowledge a too-long flag, set a state by hand).

Entity keys may contain slashes (a repository handle such as `123456789/42`): the key is the rest
of the path up to the action (`.../entities/123456789/42/poll`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import func, select

from ..errors import TrackerError
from ..store.models import TrackedEntity
from ..trackers import TrackedView, Trackers
from .auth import Operator, Viewer
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import (
    NO_CONTROL,
    AcknowledgeIn,
    EntityOut,
    EntityPage,
    TrackerList,
    TrackerOut,
    TrackIn,
    TransitionIn,
    TransitionList,
    TransitionOut,
)

log = logging.getLogger("shelfwork.api")
router = APIRouter(tags=["trackers"])
entities_t = TrackedEntity.__table__
TrackerName = Annotated[str, Path(min_length=1, max_length=100, pattern=NO_CONTROL)]
EntityKey = Annotated[
    str, Path(min_length=1, max_length=300, pattern=NO_CONTROL, description="Entity key.")
]


def _trackers(request: Request, name: str) -> Trackers:
    """The engine's trackers, after checking `name` is registered (404 otherwise)."""
    trackers = engine_of(request).trackers
    try:
        trackers.tracker(name)
    except TrackerError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return trackers


def _entity(trackers: Trackers, name: str, key: str) -> TrackedView:
    try:
        return trackers.get(name, key)
    except TrackerError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


def _out(view: TrackedView) -> EntityOut:
    fields = asdict(view)
    return EntityOut(**{k: fields[k] for k in EntityOut.model_fields})


@router.get(
    "/trackers",
    response_model=TrackerList,
    responses=responses(401, 403),
    summary="Registered trackers with their entities counted by state",
)
def list_trackers(request: Request, _who: Viewer) -> TrackerList:
    trackers = engine_of(request).trackers
    names = trackers.names()
    counts: dict[str, dict[str, int]] = {n: {} for n in names}
    too_long: dict[str, int] = dict.fromkeys(names, 0)
    if names:
        with engine_of(request).store.read() as conn:
            for tracker, state, flagged, n in conn.execute(
                select(
                    entities_t.c.tracker,
                    entities_t.c.state,
                    entities_t.c.too_long,
                    func.count(),
                )
                .where(entities_t.c.tracker.in_(names))
                .group_by(entities_t.c.tracker, entities_t.c.state, entities_t.c.too_long)
            ).all():
                counts[tracker][state] = counts[tracker].get(state, 0) + n
                if flagged:
                    too_long[tracker] += n
    items = []
    for name in names:
        t = trackers.tracker(name)
        items.append(
            TrackerOut(
                name=name,
                description=t.description,
                states=list(t.states),
                final=list(t.final),
                counts=counts[name],
                too_long=too_long[name],
            )
        )
    return TrackerList(items=items, lag=trackers.lag())


@router.get(
    "/trackers/{tracker}/entities",
    response_model=EntityPage,
    responses=responses(401, 403, 404, 422),
    summary="A tracker's entities, optionally in one state",
)
def list_entities(
    tracker: TrackerName,
    request: Request,
    _who: Viewer,
    state: Annotated[str | None, Query(max_length=100, pattern=NO_CONTROL)] = None,
    too_long: bool | None = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EntityPage:
    trackers = _trackers(request, tracker)
    views = trackers.list(
        tracker, state, too_long, after_id=int(cursor) if cursor else 0, limit=limit
    )
    return EntityPage(
        items=[_out(v) for v in views],
        next_cursor=str(views[-1].id) if len(views) == limit else None,
    )


@router.post(
    "/trackers/{tracker}/entities",
    status_code=201,
    response_model=EntityOut,
    responses={200: {"model": EntityOut, "description": "Already tracked: returned as it is."}}
    | responses(401, 403, 404, 422),
    summary="Start tracking an entity",
)
def track_entity(
    tracker: TrackerName, body: TrackIn, request: Request, response: Response, who: Operator
) -> EntityOut:
    """Idempotent: an entity already tracked under this key is returned (200) unchanged."""
    trackers = _trackers(request, tracker)
    try:
        existing = trackers.get(tracker, body.key)
    except TrackerError:
        existing = None
    if existing is not None:
        response.status_code = 200
        return _out(existing)
    return _out(trackers.track(tracker, body.key, body.state, body.data, by=who.who))


@router.get(
    "/trackers/{tracker}/entities/{key:path}/transitions",
    response_model=TransitionList,
    responses=responses(401, 403, 404, 422),
    summary="An entity's audit trail, oldest first",
)
def entity_transitions(
    tracker: TrackerName, key: EntityKey, request: Request, _who: Viewer
) -> TransitionList:
    trackers = _trackers(request, tracker)
    _entity(trackers, tracker, key)
    items = trackers.transitions(tracker, key)
    return TransitionList(
        items=[
            TransitionOut(**{k: getattr(t, k) for k in TransitionOut.model_fields}) for t in items
        ]
    )


@router.get(
    "/trackers/{tracker}/entities/{key:path}",
    response_model=EntityOut,
    responses=responses(401, 403, 404, 422),
    summary="One entity",
)
def get_entity(tracker: TrackerName, key: EntityKey, request: Request, _who: Viewer) -> EntityOut:
    return _out(_entity(_trackers(request, tracker), tracker, key))


def _act(exc: TrackerError) -> ApiError:
    return ApiError(409, "conflict", str(exc))


@router.post(
    "/trackers/{tracker}/entities/{key:path}/poll",
    response_model=EntityOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Poll an entity now",
)
def force_poll(tracker: TrackerName, key: EntityKey, request: Request, who: Operator) -> EntityOut:
    """Runs the tracker's handler in this request, even if the entity is flagged too long. 409 if
    it is in a final state or being polled right now."""
    trackers = _trackers(request, tracker)
    _entity(trackers, tracker, key)
    try:
        return _out(trackers.force_poll(tracker, key, by=who.who))
    except TrackerError as exc:
        raise _act(exc) from None


@router.post(
    "/trackers/{tracker}/entities/{key:path}/acknowledge",
    response_model=EntityOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Clear a too-long flag and restart its clock",
)
def acknowledge(
    tracker: TrackerName,
    key: EntityKey,
    request: Request,
    who: Operator,
    body: AcknowledgeIn | None = None,
) -> EntityOut:
    trackers = _trackers(request, tracker)
    _entity(trackers, tracker, key)
    try:
        return _out(trackers.acknowledge(tracker, key, by=who.who, note=body.note if body else ""))
    except TrackerError as exc:
        raise _act(exc) from None


@router.post(
    "/trackers/{tracker}/entities/{key:path}/transition",
    response_model=EntityOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Set an entity's state by hand",
)
def transition(
    tracker: TrackerName, key: EntityKey, body: TransitionIn, request: Request, who: Operator
) -> EntityOut:
    """422 for a state the tracker does not have; 409 if the entity is already in it."""
    trackers = _trackers(request, tracker)
    entity = _entity(trackers, tracker, key)
    if body.state not in trackers.tracker(tracker).states:
        states = ", ".join(trackers.tracker(tracker).states)
        raise ApiError(
            422,
            "invalid",
            f"{body.state!r} is not a state of tracker {tracker!r}; its states: {states}",
            fields={"state": f"not one of: {states}"},
        )
    try:
        view = trackers.transition(entity, body.state, body.reason, body.data, by=who.who)
    except TrackerError as exc:
        raise _act(exc) from None
    log.info("%s/%s set to %s by %s", tracker, key, body.state, who.who)
    return _out(view)
