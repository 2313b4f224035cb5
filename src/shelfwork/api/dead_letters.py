"""Dead letters: items batch steps could not process, kept for a person to inspect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select

from ..store.models import DeadLetter
from .auth import Viewer
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import MAX_ID, NO_CONTROL, DeadLetterOut, DeadLetterPage

router = APIRouter(tags=["dead letters"])
dead_t = DeadLetter.__table__


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    responses=responses(401, 403, 422),
    summary="Dead letters, oldest first",
)
def list_dead_letters(
    request: Request,
    _who: Viewer,
    job_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    pipeline: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL)] = None,
    step: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL)] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeadLetterPage:
    q = select(dead_t).order_by(dead_t.c.id).limit(limit)
    if job_id is not None:
        q = q.where(dead_t.c.job_id == job_id)
    if pipeline is not None:
        q = q.where(dead_t.c.pipeline == pipeline)
    if step is not None:
        q = q.where(dead_t.c.step == step)
    if cursor:
        q = q.where(dead_t.c.id > int(cursor))
    with engine_of(request).store.read() as conn:
        items = [DeadLetterOut(**r._mapping) for r in conn.execute(q).all()]
    return DeadLetterPage(
        items=items, next_cursor=str(items[-1].id) if len(items) == limit else None
    )


@router.get(
    "/dead-letters/{letter_id}",
    response_model=DeadLetterOut,
    responses=responses(401, 403, 404, 422),
    summary="One dead letter",
)
def get_dead_letter(
    letter_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, _who: Viewer
) -> DeadLetterOut:
    with engine_of(request).store.read() as conn:
        row = conn.execute(select(dead_t).where(dead_t.c.id == letter_id)).first()
    if row is None:
        raise ApiError(404, "not_found", f"no dead letter {letter_id}")
    return DeadLetterOut(**row._mapping)
