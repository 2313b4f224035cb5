"""The FastAPI application: `create_app(engine)`.

/api/v1/...            the JSON API (OpenAPI at /api/v1/openapi.json, its reference page at
                       /api/v1/docs, see docs.py); a bearer token or a dashboard session
/healthz, /metrics     for load balancers and Prometheus, no token
/integrate, /status    the Koha integrator's seed-compatible endpoints (same tokens as the API)
/login, /logout        dashboard sessions (see login.py); the dashboard mounts its pages on this
                       app and uses `auth.session_principal` and `auth.require(...)`

The app does not start or stop the engine: `server.serve` does (so tests can hand in one of theirs).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import (
    dead_letters,
    docs,
    health,
    integrate,
    jobs,
    locks,
    login,
    networks,
    pipelines,
    schedules,
    search,
    tokens,
    trackers,
)
from .auth import CSRF_HEADER, Auth
from .bodies import RequestBodies
from .errors import install

if TYPE_CHECKING:
    from ..engine import Engine

API_PREFIX = "/api/v1"
DESCRIPTION = """\
Durable integration jobs: submit and follow jobs, read pipelines, manage schedules, trackers,
locks and dead letters.

**Auth.** Send `Authorization: Bearer <token>` (make one with
`shelfwork token create --role viewer|operator|admin`; `integrator` for the Koha button: /integrate and /status only). Reading needs `viewer`, anything that changes
something needs `operator`, tokens and locks need `admin`.

**Errors** are JSON `{error, detail}`; a 422 adds `fields`, naming each bad input
(`params.<name>` for a pipeline's params). A full queue is a 429 with `Retry-After`.

**Limits.** A request body is read only once its token is checked; a body larger than the
server's `max_body` (1 MiB by default) is a 413, and one that does not arrive within its
`body_timeout` (30 s) is a 408.
"""


def create_app(
    engine: Engine, *, stream_poll: float = 0.5, token_cache_ttl: float = 0.0
) -> FastAPI:
    """The API over a (started or not) engine. `stream_poll`: how often event streams look for
    new events, in seconds. `token_cache_ttl`: seconds a verified API token is trusted without
    reading its row again (0: every request reads it; see auth.py)."""
    app = FastAPI(
        title="shelfwork",
        version=_version(),
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # docs.py serves /api/v1/docs itself: no third-party script here
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.engine = engine
    app.state.auth = Auth(engine.store, engine.settings, token_cache_ttl=token_cache_ttl)
    app.state.stream_poll = stream_poll
    app.state.closing = False
    app.state.login_page = login.render_login_page
    install(app)

    api = APIRouter(prefix=API_PREFIX)
    for module in (
        docs,
        jobs,
        pipelines,
        schedules,
        trackers,
        dead_letters,
        locks,
        tokens,
        networks,
        search,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(integrate.router)  # /integrate, /status: paths Koha scripts already call
    app.include_router(login.router)
    if "oai-run" in engine.registry:  # shelfwork's own OAI-PMH provider, at /oai/<network>
        from ..pipelines.oai import config_for, exposure
        from .oai import oai_router

        config = config_for(engine)
        app.include_router(
            oai_router(
                exposure.sources_for(engine.store, config),
                token_secret=config.token_secret(engine.store),
                page_size=config.provider_page_size,
            )
        )
    from ..dashboard import mount as mount_dashboard  # here: the dashboard imports this package

    mount_dashboard(app)

    # Inside CORS, so a refusal still carries the CORS headers a Koha page needs to read it.
    app.add_middleware(
        RequestBodies,
        max_body=engine.settings.max_body,
        body_timeout=engine.settings.body_timeout,
    )
    if engine.settings.cors_origins:
        # Cross-origin callers (the Koha staff client) send tokens, never cookies: with
        # credentials off, no foreign page can act with a dashboard session.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(engine.settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", CSRF_HEADER],
            expose_headers=["Retry-After", "Location"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)
    return app


def _version() -> str:
    try:
        return metadata.version("shelfwork")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class SecurityHeaders:
    """Headers every response carries: no MIME sniffing, no framing (clickjacking), no referrer
    leaking paths to other sites; and `Cache-Control: no-store` on answers that carry a token's
    secret or set or end a session, so no browser cache or proxy keeps them."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
    )
    NO_STORE = (b"cache-control", b"no-store")
    NO_STORE_PATHS = ("/login", "/logout", f"{API_PREFIX}/me", f"{API_PREFIX}/tokens")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path: str = scope["path"]
        headers = self.HEADERS
        if any(path == p or path.startswith(p + "/") for p in self.NO_STORE_PATHS):
            headers = (*headers, self.NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in headers if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
