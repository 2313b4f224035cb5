"""Request bodies: capped, and read only for callers who may send them.

The app is driven at the ASGI level with a body fed chunk by chunk, so each test counts the bytes
the app actually pulled (read and parsed), not how long something took."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shelfwork.api.bodies import PUBLIC_BODY

from .conftest import Api, ApiFactory

MiB = 1024 * 1024
CHUNK = 64 * 1024
BIG = 16 * MiB  # far above the default cap of 1 MiB
LIMIT = 20.0  # seconds one request through the app may take in these tests


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    pulled: int  # body bytes the app asked for

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Body:
    """`size` bytes in CHUNK-sized pieces, made only when the app asks for them."""

    size: int
    start: bytes = b""
    stall_at: int | None = None  # after this many bytes, nothing more ever arrives
    gone_at: int | None = None  # after this many bytes, the client disconnects
    pulled: int = 0
    done: bool = False
    _pieces: Iterator[bytes] = field(init=False)

    def __post_init__(self) -> None:
        def pieces() -> Iterator[bytes]:
            sent = 0
            if self.start:
                sent += len(self.start)
                yield self.start
            filler = b" " * CHUNK
            while sent < self.size:
                piece = filler[: self.size - sent]
                sent += len(piece)
                yield piece

        self._pieces = pieces()

    @property
    def stalled(self) -> bool:
        return self.stall_at is not None and self.pulled >= self.stall_at

    def next(self) -> tuple[bytes, bool]:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self.done = True
            return b"", False
        self.pulled += len(piece)
        return piece, self.pulled < self.size


def call(
    api: Api,
    method: str,
    path: str,
    body: Body,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
) -> Answer:
    """One request through the whole app (middleware included), as uvicorn would make it."""
    app = api.client.app
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"host", b"testserver"))
    if chunked:
        raw.append((b"transfer-encoding", b"chunked"))
    else:
        raw.append((b"content-length", str(body.size).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if body.gone_at is not None and body.pulled >= body.gone_at:
            return {"type": "http.disconnect"}
        if finished.is_set() or body.done or body.stalled:
            await finished.wait()
            return {"type": "http.disconnect"}
        piece, more = body.next()
        if not more:
            body.done = True
        return {"type": "http.request", "body": piece, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    async def run() -> None:
        # a bound, so a server that waits forever for a stalled body fails the test
        await asyncio.wait_for(app(scope, receive, send), LIMIT)  # type: ignore[arg-type]

    asyncio.run(run())
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:  # nothing was answered (the client had gone)
        return Answer(0, {}, b"", body.pulled)
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    found = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return Answer(start["status"], found, content, body.pulled)


@pytest.fixture
def api(api_for: ApiFactory) -> Api:
    return api_for()


JOB = b'{"pipeline": "noop", "params": {}, "context": "'


@pytest.mark.parametrize(
    ("size", "chunked"), [(BIG, True), (MiB // 2, False)], ids=["chunked", "content-length"]
)
def test_a_body_without_a_token_is_refused_unread(api: Api, size: int, chunked: bool) -> None:
    answer = call(api, "POST", "/api/v1/jobs", Body(size, JOB), chunked=chunked)
    assert answer.status == 401 and answer.json()["error"] == "unauthorized"
    assert answer.pulled == 0
    assert answer.headers["connection"] == "close"  # the server reads no more of it either


def test_a_declared_size_over_the_cap_is_refused_unread_even_without_a_token(api: Api) -> None:
    answer = call(api, "POST", "/api/v1/jobs", Body(BIG, JOB))
    assert answer.status == 413 and answer.pulled == 0


def test_a_wrong_token_is_refused_before_the_body_too(api: Api) -> None:
    wrong = {"Authorization": "Bearer swk_0123456789ab_wrongwrongwrongwrongwrong"}
    answer = call(api, "POST", "/api/v1/jobs", Body(BIG, JOB), wrong, chunked=True)
    assert answer.status == 401 and answer.pulled == 0


def test_a_declared_size_over_the_cap_is_refused_unread(api: Api) -> None:
    answer = call(api, "POST", "/api/v1/jobs", Body(BIG, JOB), api.operator)
    assert answer.status == 413 and answer.json()["error"] == "too_large"
    assert "1048576 bytes" in answer.json()["detail"]
    assert answer.pulled == 0 and answer.headers["connection"] == "close"


def test_a_chunked_body_is_counted_and_cut_at_the_cap(api: Api) -> None:
    answer = call(api, "POST", "/api/v1/jobs", Body(BIG, JOB), api.operator, chunked=True)
    assert answer.status == 413 and answer.json()["error"] == "too_large"
    assert answer.pulled <= MiB + CHUNK
    assert answer.headers["connection"] == "close"


def test_the_cap_is_a_setting(api_for: ApiFactory) -> None:
    api = api_for(max_body=4 * MiB)
    context = "x" * (2 * MiB)
    ok = api.client.post(
        "/api/v1/jobs", json={"pipeline": "noop", "context": context}, headers=api.operator
    )
    assert ok.status_code != 413  # 2 MiB passes a 4 MiB cap (the context itself may be refused)
    answer = call(api, "POST", "/api/v1/jobs", Body(5 * MiB, JOB), api.operator, chunked=True)
    assert answer.status == 413 and answer.pulled <= 4 * MiB + CHUNK


def test_ordinary_requests_still_work(api: Api) -> None:
    made = api.client.post("/api/v1/jobs", json={"pipeline": "noop"}, headers=api.operator)
    assert made.status_code == 202, made.text
    assert "connection" not in made.headers  # a body read to its end keeps the connection


def test_routes_open_to_anyone_take_only_a_small_body(api: Api) -> None:
    """The login form (and OAI-PMH POSTs) need no token, so their cap is much smaller."""
    login = call(
        api,
        "POST",
        "/login",
        Body(BIG, b"username=admin&password="),
        {"Content-Type": "application/x-www-form-urlencoded"},
        chunked=True,
    )
    assert login.status == 413 and login.pulled <= PUBLIC_BODY + CHUNK
    declared = call(api, "POST", "/login", Body(BIG), {"Content-Type": "text/plain"})
    assert declared.status == 413 and declared.pulled == 0


def test_only_the_public_paths_themselves_take_bodies_without_a_token(api: Api) -> None:
    for path in ("/loginx", "/login-as-admin", "/oaix"):
        answer = call(api, "POST", path, Body(1024, b"x="), chunked=True)
        assert answer.status in (303, 401) and answer.pulled == 0, path


def test_a_dashboard_form_post_without_a_session_goes_to_the_login_page_unread(api: Api) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = call(api, "POST", "/jobs", Body(BIG, b"pipeline=noop&params="), form, chunked=True)
    assert answer.status == 303 and answer.headers["location"].startswith("/login")
    assert answer.pulled == 0


def test_the_integrator_token_is_capped_too(api: Api) -> None:
    button = {**api.button(), "Content-Type": "application/json"}
    answer = call(api, "POST", "/integrate", Body(BIG, b'{"biblionumber": 1, "x": "'), button)
    assert answer.status == 413 and answer.pulled == 0


def test_a_body_that_stops_arriving_is_cut_at_the_deadline(api_for: ApiFactory) -> None:
    """A client that sends its headers and then withholds or trickles the body would hold the
    connection for as long as it likes; the login form needs no token, so anyone could hold
    every connection the server has. The whole body must arrive within `body_timeout`."""
    api = api_for(body_timeout=0.3)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    start = b"username=admin&password="
    login = call(api, "POST", "/login", Body(4096, start, stall_at=len(start)), form)
    assert login.status == 408 and login.json()["error"] == "timeout"
    assert "0.3 s" in login.json()["detail"]
    assert login.headers["connection"] == "close"
    job = call(api, "POST", "/api/v1/jobs", Body(4096, JOB, stall_at=len(JOB)), api.operator)
    assert job.status == 408 and job.headers["connection"] == "close"
    whole = call(api, "POST", "/api/v1/jobs", Body(4096, JOB + b'"}'), api.operator)
    assert whole.status != 408  # a body that arrives in time is not affected


@pytest.mark.parametrize("path", ["/login", "/api/v1/jobs"])
def test_a_client_that_leaves_mid_body_is_no_server_error(
    api: Api, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody is left to answer; a traceback in the log for each such request would let anyone
    fill the log by hanging up halfway through a login form."""
    form = {"Content-Type": "application/x-www-form-urlencoded", **api.operator}
    with caplog.at_level(logging.INFO):
        answer = call(api, "POST", path, Body(4096, b"username=admin&", gone_at=15), form)
    assert answer.status in (0, 400), answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
