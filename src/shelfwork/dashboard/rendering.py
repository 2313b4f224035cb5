"""Turning templates into responses: the Jinja2 environment (autoescaped), what every page knows
(language, user, CSRF token), how values are shown (times, durations, JSON), and the headers every
dashboard page carries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.auth import CSRF_FIELD, Principal
from ..jobs import JobView
from .i18n import (
    LANGUAGE_COOKIE,
    LANGUAGE_PARAM,
    LANGUAGES,
    Translator,
    language_of,
    login_error,
    span,
)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: pages forbid everything not served by this site: no inline script or style, no framing
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600


def when(value: datetime | None) -> Markup:
    """A moment as `<time>`: UTC in the page (the script shows it in the reader's time zone)."""
    if value is None:
        return Markup("—")
    return Markup('<time datetime="{}">{} UTC</time>').format(
        value.isoformat(), value.strftime("%Y-%m-%d %H:%M:%S")
    )


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def actions_of(job: JobView) -> list[str]:
    """What an operator can do to a job now (the names of the forms on its page)."""
    actions = []
    if job.state in ("queued", "running") and not job.cancel_requested:
        actions.append("cancel")
    if job.state in ("failed", "cancelled"):
        actions.append("retry")
    if job.attention:
        actions.append("release")
    return actions


def _asset_version() -> str:
    """Changes when a static file changes, so browsers fetch the new one."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class Pages:
    """Renders the dashboard's templates with what every page needs."""

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["pretty_json"] = pretty_json
        self.env.filters["short_json"] = short_json
        self.env.globals.update(
            when=when, actions_of=actions_of, csrf_field=CSRF_FIELD, asset=_asset_version()
        )

    def context(self, request: Request, user: Principal | None) -> dict[str, Any]:
        t = Translator(language_of(request))
        query = {k: v for k, v in request.query_params.items() if k not in ("done", "job", "name")}
        return {
            "request": request,
            "path": request.url.path,
            "t": t,
            "lang": t.lang,
            "language_links": [
                (code, f"{request.url.path}?{urlencode({**query, LANGUAGE_PARAM: code})}")
                for code in LANGUAGES
            ],
            "span": lambda seconds: span(t, seconds),
            "user": user,
            "csrf": user.csrf_token if user else "",
            "can_operate": bool(user and user.allows("operator")),
            "is_admin": bool(user and user.allows("admin")),
            "refresh_ms": int(self.refresh * 1000),
        }

    def render(
        self,
        request: Request,
        template: str,
        user: Principal | None,
        *,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(**self.context(request, user), **values)
        return HTMLResponse(html, status_code=status)

    def login_page(self, request: Request, csrf: str, error: str | None, next_path: str) -> str:
        """`app.state.login_page` for login.py: the login form in the reader's language."""
        context = self.context(request, None)
        message = login_error(context["t"], error) if error else None
        return self.env.get_template("login.html").render(
            **context, login_csrf=csrf, error=message, next_path=next_path
        )


class DashboardHeaders:
    """On every HTML response outside the JSON API: a strict Content-Security-Policy, no caching
    (pages hold CSRF tokens), and, when the URL asks for a language (`?lang=uk`), the cookie that
    remembers it. /api/ is left alone: JSON answers, and a docs page with its own policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        language = _asked_language(scope.get("query_string", b""))
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    if b"content-security-policy" not in present:
                        headers.append((b"content-security-policy", CSP.encode()))
                    if b"cache-control" not in present:
                        headers.append((b"cache-control", b"no-store"))
                    if language:
                        cookie = (
                            f"{LANGUAGE_COOKIE}={language}; Max-Age={LANGUAGE_COOKIE_AGE}; "
                            "Path=/; SameSite=Lax; HttpOnly" + ("; Secure" if secure else "")
                        )
                        headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _asked_language(query_string: bytes) -> str | None:
    values: Mapping[str, list[str]] = parse_qs(query_string.decode("latin-1"))
    asked = values.get(LANGUAGE_PARAM, [None])[-1]
    return asked if asked in LANGUAGES else None
