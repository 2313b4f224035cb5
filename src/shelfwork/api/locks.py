"""Named locks, for admins: who holds what, and releasing one that is stuck."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request

from .auth import Admin
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import NO_CONTROL, LockList, LockOut

log = logging.getLogger("shelfwork.api")
router = APIRouter(tags=["locks"])


@router.get(
    "/locks",
    response_model=LockList,
    responses=responses(401, 403),
    summary="Locks held now (admin)",
)
def list_locks(request: Request, _who: Admin) -> LockList:
    return LockList(
        items=[
            LockOut(
                name=lock.name,
                owner=lock.owner,
                job_id=lock.job_id,
                acquired_at=lock.acquired_at,
                expires_at=lock.expires_at,
                expired=lock.expired,
            )
            for lock in engine_of(request).locks.list()
        ]
    )


@router.delete(
    "/locks/{name:path}",
    status_code=204,
    responses=responses(401, 403, 404, 409, 422),
    summary="Release a lock whoever holds it (admin)",
)
def release_lock(
    name: Annotated[str, Path(min_length=1, max_length=300, pattern=NO_CONTROL)],
    request: Request,
    who: Admin,
) -> None:
    """For a lock left by something that will not come back. A job holding it loses it: do this
    only when that job is gone or stuck. 409 if the holder changed while this ran."""
    locks = engine_of(request).locks
    held = locks.get(name)
    if held is None:
        raise ApiError(404, "not_found", f"lock {name!r} is not held")
    if not locks.release(name, held.owner):
        raise ApiError(409, "conflict", f"lock {name!r} changed hands meanwhile; look again")
    log.warning("lock %s (held by %s) released by %s", name, held.owner, who.who)
