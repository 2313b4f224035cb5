"""Every API error is JSON `{error, detail}` (plus `fields` naming each bad input) with the status
that says what to do: 401/403 authenticate or ask for a role, 404 nothing there, 409 not in this
state, 422 fix the named fields, 429 wait `Retry-After` seconds, 503 the database is down.

Bad input never becomes a 500: request validation, the engine's own errors and unknown routes all
map here; a 500 means a bug, and its traceback goes to the log, not to the caller.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    BadParams,
    DatabaseUnavailable,
    InvalidTransition,
    JobNotFound,
    LockHeld,
    PreconditionFailed,
    QueueFull,
    ScheduleError,
    ShelfworkError,
    TrackerError,
    UnknownPipeline,
)

log = logging.getLogger("shelfwork.api")


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: str = Field(description="A short machine-readable code, e.g. `bad_params`.")
    detail: str = Field(description="What went wrong and what to do, for a person.")
    fields: dict[str, str] | None = Field(
        default=None,
        description="For 422: each bad input (`params.seconds`, `priority`, ...) and why.",
    )


class AccessError(ShelfworkError):
    """A token, user or session operation cannot be done as asked (the message says why)."""


class ApiError(Exception):
    """Raised by routes and dependencies; rendered as ErrorOut with `status`."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.fields = fields
        self.headers = headers


def error_response(
    status: int,
    error: str,
    detail: str,
    *,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=error, detail=detail, fields=fields).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def from_engine(exc: ShelfworkError) -> ApiError:
    """The API's answer to an error the engine raised on purpose."""
    if isinstance(exc, JobNotFound):
        return ApiError(404, "job_not_found", str(exc))
    if isinstance(exc, UnknownPipeline):
        return ApiError(422, "unknown_pipeline", str(exc), fields={"pipeline": str(exc)})
    if isinstance(exc, BadParams):
        fields = {f"params.{name}": reason for name, reason in exc.errors.items()}
        return ApiError(422, "bad_params", str(exc), fields=fields)
    if isinstance(exc, PreconditionFailed):
        return ApiError(409, "precondition_failed", exc.reason)
    if isinstance(exc, QueueFull):
        seconds = str(max(1, math.ceil(exc.retry_after)))
        return ApiError(429, "queue_full", str(exc), headers={"Retry-After": seconds})
    if isinstance(exc, (InvalidTransition, LockHeld)):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return ApiError(503, "unavailable", "the metadata database is unreachable; try again")
    if isinstance(exc, (ScheduleError, TrackerError, AccessError)):
        return ApiError(422, "invalid", str(exc))
    return ApiError(400, "bad_request", str(exc))


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "(body)"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into ErrorOut."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.error, exc.detail, fields=exc.fields, headers=exc.headers
        )

    @app.exception_handler(ShelfworkError)
    async def engine_error(_request: Request, exc: ShelfworkError) -> JSONResponse:
        e = from_engine(exc)
        return error_response(e.status, e.error, e.detail, fields=e.fields, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for err in exc.errors():
            name = _field_name(err.get("loc", ()))
            fields.setdefault(name, str(err.get("msg", "invalid")))
        detail = "invalid request: " + "; ".join(f"{k}: {v}" for k, v in fields.items())
        return error_response(422, "invalid_request", detail, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer with."""
    text = {
        401: "No valid token or session.",
        403: "The caller's role is not enough (or the CSRF token is missing).",
        404: "Not found.",
        409: "Not possible in the current state.",
        422: "Invalid input; `fields` names each bad one.",
        429: "Too many requests; see Retry-After.",
        503: "The metadata database is unreachable.",
    }
    return {c: {"model": ErrorOut, "description": text.get(c, "Error.")} for c in codes}
