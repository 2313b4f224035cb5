"""Clients for the outside systems shelfwork talks to, one module per system.

Every client raises a `RemoteError` subclass that names the system, the request and what the remote
answered, so a job record tells a person which system refused what and why. Credentials in the
request's URL never appear in it, and the answer is quoted as a short one-line excerpt (control
characters and terminal escapes removed; see shelfwork.redaction). Whether a step should
retry follows from the class: `RemoteUnavailable` (timeouts, refused connections, 5xx, 429) is
worth another attempt; `RemoteRefused` (the other 4xx) is not, the same request would be refused
again.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx

from ..errors import ShelfworkError
from ..redaction import EXCERPT as EXCERPT  # the clients quote remote answers this short
from ..redaction import excerpt, redact_text, redact_url


@cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process for every client: building one loads the CA bundle,
    which costs more CPU than a whole step's HTTP calls (bench/RESULTS.md, integrator)."""
    return ssl.create_default_context()


class RemoteError(ShelfworkError):
    """A remote system failed or refused a request."""

    def __init__(
        self,
        system: str,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        self.system = system
        self.method = method
        self.url = redact_url(url) if url is not None else None
        self.status = status
        self.body = excerpt(body)
        where = f" ({method} {self.url}" if method and self.url else ""
        if where:
            where += f" -> HTTP {status})" if status is not None else ")"
        answer = f": {self.body}" if self.body else ""
        super().__init__(redact_text(f"{system}: {message}{where}{answer}"))


class RemoteUnavailable(RemoteError):
    """Timeout, refused connection, 5xx or 429: the same request may succeed later."""


class RemoteRefused(RemoteError):
    """A 4xx the remote will repeat for the same request (bad input, missing record...)."""


class AuthFailed(RemoteRefused):
    """Credentials were refused (401/403 at login, or a token that cannot be renewed)."""


class NotFound(RemoteRefused):
    """The remote has no such record or item (404)."""


def error_class(status: int) -> type[RemoteError]:
    """Which RemoteError an HTTP error status means: passing (5xx, 429) or not."""
    if status >= 500 or status == 429:
        return RemoteUnavailable
    if status in (401, 403):
        return AuthFailed
    if status == 404:
        return NotFound
    return RemoteRefused


def error_for(system: str, response: httpx.Response, message: str) -> RemoteError:
    """The RemoteError subclass that fits `response`'s status, quoting its body."""
    status = response.status_code
    request = response.request
    cls = error_class(status)
    try:
        body = response.text
    except Exception:  # a streamed or undecodable body
        body = ""
    return cls(
        system, message, method=request.method, url=str(request.url), status=status, body=body
    )


def transport_error(system: str, exc: httpx.HTTPError, message: str) -> RemoteUnavailable:
    """A RemoteUnavailable for a request that got no answer (timeout, refused, reset)."""
    request = getattr(exc, "_request", None)
    return RemoteUnavailable(
        system,
        f"{message}: {type(exc).__name__}: {exc}".rstrip(": "),
        method=request.method if request is not None else None,
        url=str(request.url) if request is not None else None,
    )
