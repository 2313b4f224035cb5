"""Dashboard login and logout (form posts; the dashboard's pages are mounted on the same app).

GET /login shows a form carrying a login-CSRF token that must match a cookie set with it (a double
submit, so no other site can log a browser in as someone else). POST /login checks the rate limit,
then the password, then opens a session and redirects to `next` (a path on this site only).
POST /logout ends the session; it needs the session's CSRF token.

The page is `app.state.login_page(request, csrf, error, next_path) -> str` (HTML): the dashboard may
replace it with its own template.
"""

from __future__ import annotations

import hmac
import math
import secrets
from html import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from .auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    LoginRefused,
    LoginThrottled,
    auth_of,
    check_csrf,
    cookie_secure,
    session_principal,
)
from .errors import ApiError, error_response

router = APIRouter(include_in_schema=False)
LOGIN_FORM_TTL = 3600


def safe_next(value: object, default: str = "/") -> str:
    """A local path to go to after login; anything that could leave the site becomes `default`."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 32 for c in value) or len(value) > 2000:
        return default
    return value


def render_login_page(request: Request, csrf: str, error: str | None, next_path: str) -> str:
    """A plain login page; the dashboard replaces it through `app.state.login_page`."""
    message = f'<p role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shelfwork: log in</title></head>
<body><main><h1>shelfwork</h1>{message}
<form method="post" action="/login">
<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
<input type="hidden" name="next" value="{escape(next_path)}">
<label>User name <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required>
</label>
<button type="submit">Log in</button>
</form></main></body></html>"""


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _form_page(request: Request, status: int, error: str | None, next_path: str) -> HTMLResponse:
    """The login page with a fresh login-CSRF token, and its cookie."""
    csrf = secrets.token_urlsafe(32)
    html = request.app.state.login_page(request, csrf, error, next_path)
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        max_age=LOGIN_FORM_TTL,
        path="/login",
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
    )
    return response


def _refuse(
    request: Request,
    status: int,
    error: str,
    detail: str,
    next_path: str,
    headers: dict[str, str] | None = None,
) -> Response:
    if _wants_json(request):
        return error_response(status, error, detail, headers=headers)
    response = _form_page(request, status, detail, next_path)
    response.headers.update(headers or {})
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _form_page(request, 200, None, safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    username = str(form.get("username") or "")
    password = str(form.get("password") or "")
    sent = str(form.get(CSRF_FIELD) or "")
    next_path = safe_next(form.get("next"))
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _refuse(
            request, 403, "csrf_failed", "the login form expired; please try again", next_path
        )
    if not username or not password:
        return _refuse(request, 401, "unauthorized", "enter a user name and password", next_path)
    ip = request.client.host if request.client else "unknown"
    auth = auth_of(request)
    try:
        principal, cookie = await run_in_threadpool(auth.login, username, password, ip)
    except LoginThrottled as exc:
        seconds = str(max(1, math.ceil(exc.retry_after)))
        return _refuse(
            request, 429, "too_many_logins", str(exc), next_path, {"Retry-After": seconds}
        )
    except LoginRefused as exc:
        return _refuse(request, 401, "unauthorized", str(exc), next_path)
    if _wants_json(request):
        response: Response = JSONResponse(
            {"name": principal.name, "role": principal.role, "csrf_token": principal.csrf_token}
        )
    else:
        response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(auth.settings.session_ttl),
        path="/",
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    principal = await session_principal(request)
    if principal is not None:
        try:
            await check_csrf(request, principal)
        except ApiError as exc:
            return error_response(exc.status, exc.error, exc.detail)
        await run_in_threadpool(auth_of(request).sessions.end, request.cookies[SESSION_COOKIE])
    response: Response = RedirectResponse("/login", status_code=303)
    if _wants_json(request):
        response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
