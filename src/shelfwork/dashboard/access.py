"""Who may see a dashboard page or post its forms, and what they see when they may not.

Pages need a dashboard session (no session: to the login page and back). Fragments fetched by the
page script answer 401 instead, so the script can say the session ended. Form posts need the
session's CSRF token and, to change anything, the operator role.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response

from ..api.auth import Principal, check_csrf, session_principal
from ..api.errors import ApiError
from ..errors import ShelfworkError
from .i18n import Translator, language_of
from .rendering import Pages


class LoginNeeded(ShelfworkError):
    """No dashboard session: the browser goes to the login page, and back to `next_path` after."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path
        super().__init__("log in to see this page")


class Word(str):
    """A field value that is itself an i18n key (a role name), translated when shown."""


class PageRefused(ShelfworkError):
    """A page or form cannot be shown or done; `key` says why, in the reader's language."""

    def __init__(self, status: int, key: str, **fields: object) -> None:
        self.status = status
        self.key = key
        self.fields = fields
        super().__init__(key)


def forbidden(user: Principal, role: str) -> PageRefused:
    """The refusal for a user below `role`, naming both roles."""
    return PageRefused(
        403, "error.forbidden", role=Word(f"role.{role}"), have=Word(f"role.{user.role}")
    )


def pages_of(request: Request) -> Pages:
    pages: Pages = request.app.state.dashboard
    return pages


async def page_user(request: Request) -> Principal:
    user = await session_principal(request)
    if user is None:
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginNeeded(request.url.path + query)
    return user


async def fragment_user(request: Request) -> Principal:
    user = await session_principal(request)
    if user is None:
        raise PageRefused(401, "live.session_ended")
    return user


def acting(role: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A form post by a logged-in user with `role` or more, carrying the session's CSRF token."""

    async def dependency(request: Request) -> Principal:
        user = await session_principal(request)
        if user is None:
            raise LoginNeeded("/")
        try:
            await check_csrf(request, user)
        except ApiError:
            raise PageRefused(403, "error.csrf") from None
        if not user.allows(role):
            raise forbidden(user, role)
        return user

    return dependency


PageUser = Annotated[Principal, Depends(page_user)]
FragmentUser = Annotated[Principal, Depends(fragment_user)]
OperatorForm = Annotated[Principal, Depends(acting("operator"))]


async def to_login(_request: Request, exc: LoginNeeded) -> Response:
    return RedirectResponse(f"/login?{urlencode({'next': exc.next_path})}", status_code=303)


async def refused_page(request: Request, exc: PageRefused) -> Response:
    user = await session_principal(request) if exc.status != 401 else None
    t = Translator(language_of(request))
    fields = {k: t(v) if isinstance(v, Word) else v for k, v in exc.fields.items()}
    return pages_of(request).render(
        request, "error.html", user, status=exc.status, message=t(exc.key, **fields)
    )
