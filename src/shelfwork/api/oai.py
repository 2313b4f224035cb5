"""The OAI-PMH endpoints: `/oai/{network}`, one repository per network, GET and POST.

Public and read-only like every OAI-PMH endpoint (harvesters send no credentials). Arguments are
read from the raw query string or form body so a repeated argument reaches the protocol logic
(pipelines/oai/provider.py) as repeated, which answers badArgument for it. Protocol errors are
HTTP 200 with an <error> element, as OAI-PMH requires. HTTP errors, in plain text: an unknown
network (404), a POST body that is not a form (415) or too large (413), the database unreachable
(503 with Retry-After, OAI-PMH's flow control), and a record or configuration the repository cannot
serve (500, logged with the record's identifier).

The routes stay out of the OpenAPI document: OAI-PMH is described by its own specification, and
the document at /api/v1 is the JSON API's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError, DatabaseUnavailable
from ..pipelines.oai.provider import (
    DEFAULT_TOKEN_LIFETIME,
    RecordSource,
    RecordSourceError,
    check_secret,
    respond,
)

log = logging.getLogger("shelfwork.api.oai")

XML_CONTENT_TYPE = "text/xml; charset=utf-8"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: the largest POST body read; a legitimate request is a few hundred bytes
MAX_BODY = 64 * 1024
#: seconds a harvester is asked to wait while the database is unreachable
RETRY_AFTER = 60


def oai_router(
    sources: Callable[[str, str], RecordSource | None],
    *,
    token_secret: bytes,
    page_size: int = 100,
    token_lifetime: timedelta | None = DEFAULT_TOKEN_LIFETIME,
) -> APIRouter:
    """Routes answering OAI-PMH for each network `sources` knows (None: no such network).

    `sources(network, url)` gets the URL the request came to, without its query: the base URL
    to announce when no public URL is configured.

    `sources` and the source's methods are called in a worker thread, so they may block on the
    database. `token_secret` signs resumption tokens: keep it stable across restarts and shared
    by every node behind one URL, or harvests in progress get badResumptionToken.
    """
    check_secret(token_secret)
    router = APIRouter(tags=["OAI-PMH"], include_in_schema=False)

    def answer(network: str, query: str, url: str) -> Response:
        arguments: dict[str, list[str]] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            arguments.setdefault(name, []).append(value)
        try:
            source = sources(network, url)
            if source is None:
                return PlainTextResponse("no OAI-PMH repository for this network", status_code=404)
            body = respond(
                arguments,
                source,
                now=datetime.now(UTC),
                page_size=page_size,
                token_secret=token_secret,
                token_lifetime=token_lifetime,
            )
        except DatabaseUnavailable:
            # OAI-PMH flow control: harvesters wait Retry-After and ask again
            return PlainTextResponse(
                "the repository is unavailable; try again later",
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        except (RecordSourceError, ConfigError):
            # our fault, not the harvester's: logged for us, not explained to them
            log.exception("OAI-PMH repository of network %r could not answer", network)
            return PlainTextResponse(
                "the repository could not answer this request; the fault has been logged",
                status_code=500,
            )
        return Response(body, media_type=XML_CONTENT_TYPE)

    @router.get("/oai/{network}")
    async def oai_get(network: str, request: Request) -> Response:
        return await run_in_threadpool(answer, network, request.url.query, _base(request))

    @router.post("/oai/{network}")
    async def oai_post(network: str, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != FORM_CONTENT_TYPE:
            return PlainTextResponse(
                f"an OAI-PMH POST must be {FORM_CONTENT_TYPE}", status_code=415
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse(
                    f"the request body is larger than {MAX_BODY} bytes", status_code=413
                )
        query = bytes(body).decode("utf-8", errors="replace")
        return await run_in_threadpool(answer, network, query, _base(request))

    return router


def _base(request: Request) -> str:
    return str(request.url.replace(query="", fragment="")).rstrip("?")
