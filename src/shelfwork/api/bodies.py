"""Request bodies: capped, and read only for callers who may send them.

FastAPI reads and parses a route's body before it runs the route's dependencies, auth included,
so without this a caller with no token could make the server read and parse any amount of data
before hearing 401. `RequestBodies` (ASGI middleware) runs first, for every request that carries
a body:

- The cap is `[api] max_body` bytes, and `PUBLIC_BODY` on routes anyone may post to (the login
  form, OAI-PMH POSTs). A declared Content-Length over the cap is a 413 before a byte is read; a
  chunked body is counted as it is read and cut with a 413 at the cap.
- Every other route needs a valid token (`Authorization: Bearer`) or a dashboard session before
  its body is read: 401 otherwise (a dashboard form goes to the login page). A verified token is
  kept on the request, so the route's own auth does not look it up again; a session is checked
  again there, with its CSRF token.
- The whole body must arrive within `[api] body_timeout` seconds of the request's headers (408
  otherwise): without a deadline a client that withholds or trickles its body holds the
  connection for as long as it likes, and the login form needs no token. (The headers have their
  own deadline, api/server.py.)
- An answer sent before the body was read to its end says `Connection: close`, so the server
  stops reading (uvicorn would otherwise read and drop the rest to keep the connection).
- A client that hangs up before its body ended gets no answer and leaves no traceback in the
  log (otherwise anyone could fill the log by hanging up halfway through a login form).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, cookie_parser
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import SESSION_COOKIE, Auth, Principal
from .errors import error_response

log = logging.getLogger("shelfwork.api")
#: bytes a route open to anyone accepts (a login form is well under 2 KiB)
PUBLIC_BODY = 64 * 1024
#: paths anyone may post to: they authenticate the caller themselves, if at all
PUBLIC_PATHS = ("/login", "/logout", "/oai/")
#: paths whose callers are programs (JSON errors); the rest are dashboard pages (login redirect)
API_PATHS = ("/api/", "/integrate", "/status/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """The body went past the cap while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


class BodyTooSlow(HTTPException):
    """The body did not arrive in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"the request body did not arrive within {seconds:g} s; send it at once"
        )


def too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes, the most this route accepts"


def _starts(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `path` is one of `prefixes`: a path, or a folder when it ends with "/"."""
    return any(path.startswith(p) if p.endswith("/") else path == p for p in prefixes)


class RequestBodies:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, *, max_body: int, body_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        chunked = "transfer-encoding" in headers
        if not chunked and not declared:
            await self.app(scope, receive, send)  # no body to guard
            return
        path: str = scope["path"]
        public = _starts(path, PUBLIC_PATHS)
        limit = PUBLIC_BODY if public else self.max_body
        if declared is not None and declared > limit:
            await _unread(error_response(413, "too_large", too_large(limit)), scope, send)
            return
        if not public and scope["method"] not in SAFE_METHODS:
            refusal = await self._authenticate(scope, headers)
            if refusal is not None:
                await _unread(refusal, scope, send)
                return
        await self._counted(scope, receive, send, limit)

    async def _authenticate(self, scope: Scope, headers: Headers) -> Response | None:
        """None if the caller may send a body here, else the answer to give without reading it."""
        auth: Auth = scope["app"].state.auth
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token = credentials.strip()
            principal = auth.tokens.cached(token) or await run_in_threadpool(
                auth.tokens.authenticate, token
            )
            if principal is None:
                return error_response(
                    401,
                    "unauthorized",
                    "the API token is unknown, revoked or expired",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            _keep(scope, principal)
            return None
        cookie = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        if cookie and await run_in_threadpool(auth.sessions.authenticate, cookie) is not None:
            return None  # the route checks the session again, with its CSRF token
        if not _starts(scope["path"], API_PATHS):
            return RedirectResponse("/login?next=%2F", status_code=303)
        return error_response(
            401,
            "unauthorized",
            "authentication required: send 'Authorization: Bearer <token>' "
            "(make one with `shelfwork token create`) or log in",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a receive that counts the body, stops it at `limit` and at the
        deadline. Once the body has ended, receive waits as long as the app likes (for a
        disconnect)."""
        seen = 0
        ended = gone = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout

        async def counting_receive() -> Message:
            nonlocal seen, ended, gone
            if ended:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.body_timeout) from None
            gone = message["type"] == "http.disconnect"
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    ended = True
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not ended:
                message["headers"] = [*message.get("headers", []), CLOSE]
            await send(message)

        try:
            await self.app(scope, counting_receive, closing_send)
        except ClientDisconnect:
            if not gone:
                raise
            log.debug(
                "%s %s: the client left before its body ended", scope["method"], scope["path"]
            )


async def _unread(response: Response, scope: Scope, send: Send) -> None:
    """Answer without reading the body, and end the connection after the answer."""
    response.headers["Connection"] = "close"

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


def _keep(scope: Scope, principal: Principal) -> None:
    """Where `auth.identify` looks for the principal it already knows (request.state)."""
    scope["state"] = {**scope.get("state", {}), "principal": principal}


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
