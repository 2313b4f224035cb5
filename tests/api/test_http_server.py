"""The HTTP server as `shelfwork serve` configures it (`server.http_config`), run in a thread on a
free loopback port: deadlines for each request's headers and body (slowloris), and client
addresses taken from X-Forwarded-For only when the peer is a configured proxy."""

from __future__ import annotations

import re
import select as io_select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.api.server import http_config
from shelfwork.engine import Engine
from shelfwork.store.models import LoginAttempt


@dataclass
class Running:
    url: str
    port: int
    engine: Engine


Start = Callable[..., Running]


@pytest.fixture
def start_server(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Start]:
    monkeypatch.setattr(PasswordHasher, "n", 2**8)
    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(*, dual_stack: bool = False, **overrides: Any) -> Running:
        """`dual_stack`: listen on "::" for IPv4 too, as `serve --host ::` does; an IPv4 client
        then arrives as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
        engine = make_engine(start=False, **overrides)
        app = create_app(engine)
        if dual_stack:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        host = "::" if dual_stack else "127.0.0.1"
        server = uvicorn.Server(http_config(app, engine.settings, host, port, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        return Running(f"http://127.0.0.1:{port}", port, engine)

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def trickle_headers(s: socket.socket, limit: float) -> tuple[bool, float]:
    """Play slowloris on a connection whose request headers have begun: add one header byte
    whenever the server has said nothing for 0.1 s. Returns (closed by the server, seconds until
    then or `limit`)."""
    started = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - started < limit:
        try:
            if s.recv(1024) == b"":
                return True, time.monotonic() - started
        except TimeoutError:
            s.sendall(b"x")
        except (ConnectionResetError, BrokenPipeError):
            return True, time.monotonic() - started
    return False, limit


def held_open_for(port: int, limit: float) -> tuple[bool, float]:
    """Start a request on a new connection and trickle its headers (`trickle_headers`)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: shelfwork\r\nX-Slow: ")
        return trickle_headers(s, limit)


def test_a_client_that_never_finishes_its_headers_is_disconnected(start_server: Start) -> None:
    site = start_server(header_timeout=0.5)
    closed, after = held_open_for(site.port, limit=6.0)
    assert closed, "the server kept a connection whose headers never ended"
    assert 0.4 <= after < 3.0, after
    with httpx.Client(base_url=site.url) as client:  # normal requests, kept alive, still work
        assert client.get("/login").status_code == 200
        assert client.get("/login").status_code == 200


def body_held_open_for(port: int, limit: float) -> tuple[bytes, float]:
    """Send a login form's headers and the start of its body, then add one body byte whenever
    the server has said nothing for 0.1 s. Returns (the answer, seconds until the server ended
    the connection, or `limit`)."""
    head = (
        b"POST /login HTTP/1.1\r\nHost: shelfwork\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n"
        b"username=admin&password="
    )
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        started = time.monotonic()
        s.settimeout(0.1)
        while time.monotonic() - started < limit:
            try:
                piece = s.recv(65536)
            except TimeoutError:
                s.sendall(b"x")
                continue
            except (ConnectionResetError, BrokenPipeError):
                piece = b""
            if piece == b"":
                return answer, time.monotonic() - started
            answer += piece
    return answer, limit


def test_a_client_that_trickles_its_body_is_answered_and_disconnected(
    start_server: Start,
) -> None:
    """The login form needs no token: a body sent a byte at a time must not hold a connection."""
    site = start_server(body_timeout=0.5)
    answer, after = body_held_open_for(site.port, limit=6.0)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert 0.4 <= after < 3.0, after


def test_the_header_deadline_holds_on_a_kept_alive_connection(start_server: Start) -> None:
    """After a first request on a connection, the next request's headers have the same deadline."""
    site = start_server(header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", site.port)) as s:
        s.sendall(b"GET /login HTTP/1.1\r\nHost: shelfwork\r\n\r\n")
        s.settimeout(5.0)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        s.sendall(b"GET /login HTTP/1.1\r\nX-Slow: ")
        closed, after = trickle_headers(s, limit=6.0)
    assert closed, "the second request's headers were allowed to trickle forever"
    assert 0.4 <= after < 3.0, after


def reset_after(port: int, limit: float) -> float | None:
    """Ask for the API reference (about 100 KB, no token needed) thirty times on one connection
    and read none of it. Returns the seconds until the server reset the connection, or None if
    it still held it after `limit`."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /api/v1/docs HTTP/1.1\r\nHost: shelfwork\r\n\r\n" * 30)
        started = time.monotonic()
        poller = io_select.poll()
        poller.register(s, io_select.POLLRDHUP)  # errors and hang-ups are always reported
        while time.monotonic() - started < limit:
            for _, flags in poller.poll(100):
                if flags & (io_select.POLLERR | io_select.POLLHUP | io_select.POLLRDHUP):
                    return time.monotonic() - started
    return None


def test_a_client_that_reads_no_answer_is_disconnected(start_server: Start) -> None:
    """A client that asks and never reads would hold the connection (and the answer in memory)
    for as long as it likes, with no token needed for public pages."""
    site = start_server(send_timeout=0.5)
    after = reset_after(site.port, limit=6.0)
    assert after is not None, "the server kept a connection whose client read nothing"
    assert after < 3.0, after
    with httpx.Client(base_url=site.url) as client:  # a client that reads is not affected
        assert client.get("/api/v1/docs").status_code == 200


def failed_login_from(site: Running, forwarded_for: str) -> None:
    with httpx.Client(base_url=site.url) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = client.post(
            "/login",
            data={"username": "admin", "password": "a wrong guess", "csrf_token": csrf.group(1)},
            headers={"X-Forwarded-For": forwarded_for},
        )
        assert answer.status_code == 401, answer.text


def recorded_addresses(site: Running) -> set[str]:
    with site.engine.store.read() as conn:
        return set(conn.execute(select(LoginAttempt.__table__.c.ip)).scalars())


def test_x_forwarded_for_is_ignored_by_default(start_server: Start) -> None:
    """Anyone can send the header: believing it would let a client pick the address its failed
    logins count against."""
    site = start_server()
    failed_login_from(site, "203.0.113.9")
    assert recorded_addresses(site) == {"127.0.0.1"}


def test_x_forwarded_for_is_believed_from_a_configured_proxy(start_server: Start) -> None:
    site = start_server(trusted_proxies=["127.0.0.1/32"])
    failed_login_from(site, "203.0.113.9")
    assert recorded_addresses(site) == {"203.0.113.9"}


@pytest.mark.parametrize(
    "proxies",
    [["127.0.0.1"], ["127.0.0.0/8"], ["127.0.0.1/8"], ["10.0.0.0/8", "127.0.0.1/24"]],
    ids=["address", "network", "network-written-with-its-address", "second-entry"],
)
def test_every_accepted_way_of_naming_a_proxy_is_believed(
    start_server: Start, proxies: list[str]
) -> None:
    """The setting accepts a network written with host bits (127.0.0.1/8, as `ip addr` shows
    it); uvicorn would take that for a host name and trust nobody."""
    site = start_server(trusted_proxies=proxies)
    failed_login_from(site, "203.0.113.9")
    assert recorded_addresses(site) == {"203.0.113.9"}


def test_a_proxy_is_believed_on_a_dual_stack_socket(start_server: Start) -> None:
    """Listening on "::" (serve --host ::), the IPv4 proxy arrives as ::ffff:127.0.0.1."""
    site = start_server(dual_stack=True, trusted_proxies=["127.0.0.1"])
    failed_login_from(site, "203.0.113.9")
    assert recorded_addresses(site) == {"203.0.113.9"}


def pushed_before_refusal(
    port: int, head: bytes, limit: int, *, chunked: bool = False
) -> tuple[bytes, int]:
    """Send `head`, then body bytes until the server stops taking them (or `limit` bytes).
    Returns the server's answer and how many body bytes got into the connection."""
    pushed = 0
    chunk = b" " * (256 * 1024)
    if chunked:
        chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        s.settimeout(1.0)  # the server stopped reading once a send stalls this long
        try:
            while pushed < limit:
                s.sendall(chunk)
                pushed += len(chunk)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        answer = b""
        try:
            while piece := s.recv(65536):
                answer += piece
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, pushed


def test_a_300_mb_body_without_a_token_is_refused_without_being_read(start_server: Start) -> None:
    """The server answers 401 after the headers and closes; the client gets only what the
    kernel buffers into the connection, not 300 MB."""
    site = start_server()
    size = 300 * 1024 * 1024
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: shelfwork\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    answer, pushed = pushed_before_refusal(site.port, head, limit=64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413 ")  # declared over the 1 MiB cap: refused at once
    assert pushed < 16 * 1024 * 1024, pushed
    chunked_head = (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: shelfwork\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer, pushed = pushed_before_refusal(
        site.port, chunked_head, limit=64 * 1024 * 1024, chunked=True
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert pushed < 16 * 1024 * 1024, pushed
