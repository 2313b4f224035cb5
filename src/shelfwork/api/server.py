"""`serve`: run an engine (scheduler, and with the local executor the jobs) and the HTTP API in one
process, and stop both cleanly.

Stopping (SIGINT or SIGTERM): the HTTP server stops taking requests and closes open event streams,
then the engine stops, letting running jobs finish. A second signal during that wait leaves the
running jobs: their leases expire and another node (or the next `shelfwork serve`) resumes them from
their last committed step.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import struct
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import API_PREFIX, create_app
from .auth import TOKEN_CACHE_TTL

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import Engine

log = logging.getLogger("shelfwork.api")
EXIT_INTERRUPTED = 130
#: seconds open requests (event streams) get to finish once the server is asked to stop
GRACEFUL_HTTP = 5


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    engine: Engine | None = None,
) -> None:
    """Serve the API on host:port until asked to stop; returns once the engine has stopped.
    `engine` (not started) may be given, e.g. one opened with a database check first."""
    from ..engine import Engine

    if engine is None:
        engine = Engine(settings, kind="server")
    app = create_app(engine, token_cache_ttl=TOKEN_CACHE_TTL)
    server = _Server(http_config(app, settings, host, port, log_level=log_level), app)
    second = _SecondSignal()
    previous = second.install()
    try:
        engine.start()
        log.info(
            "shelfwork API on http://%s:%s%s (docs at %s/docs), node %s",
            host,
            port,
            API_PREFIX,
            API_PREFIX,
            engine.node_id,
        )
        server.run()
    finally:
        second.armed_at = time.monotonic()
        running = len(engine.heartbeat.running()) if engine.started else 0
        if running:
            log.warning(
                "stopping: waiting for %d running job(s) to finish (signal again to leave them "
                "for another node)",
                running,
            )
        engine.stop(wait=True)
        second.restore(previous)
    if not server.started:
        raise OSError(f"the HTTP server could not start on {host}:{port} (see the log above)")


def http_config(
    app: FastAPI, settings: Settings, host: str, port: int, *, log_level: str = "info"
) -> uvicorn.Config:
    """How uvicorn serves the app (tests run a server with the same configuration).

    X-Forwarded-For and X-Forwarded-Proto are believed only from `trusted_proxies`: from anyone
    else they would let a client choose the address its failed logins count against. Every
    request's headers must arrive within `header_timeout` seconds, and a client that reads none
    of an answer for `send_timeout` seconds is disconnected (ClientDeadlines)."""
    proxies = forwarded_allow(settings.trusted_proxies)
    protocol = type(
        "H11Protocol",
        (ClientDeadlines,),
        {"header_timeout": settings.header_timeout, "send_timeout": settings.send_timeout},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        http=protocol,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_HTTP,
        lifespan="off",
    )


def forwarded_allow(proxies: list[str]) -> list[str]:
    """`trusted_proxies` as uvicorn needs them: each entry as a network (uvicorn reads
    "10.0.0.1/24", a network written with its host bits, as a host name and trusts nobody), and
    an IPv4 one also as the IPv4-mapped IPv6 network, the form in which a dual-stack socket
    (`serve --host ::`) reports an IPv4 peer (::ffff:10.0.0.1)."""
    allowed: list[str] = []
    for proxy in proxies:
        network = ipaddress.ip_network(str(proxy).strip(), strict=False)
        allowed.append(str(network))
        if network.version == 4:
            mapped = f"::ffff:{network.network_address}/{96 + network.prefixlen}"
            allowed.append(str(ipaddress.ip_network(mapped)))
    return allowed


class ClientDeadlines(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers, and one for a client
    that stops reading.

    uvicorn closes a kept-alive connection that stays silent, but a client that sends a request's
    headers a byte at a time (slowloris) resets that timer with every byte and holds a connection
    forever; a few hundred of them hold every file descriptor. The deadline starts with the
    connection, or with the first byte of the next request on a kept-alive one, and ends when
    h11 has a whole request line and headers. (The body has its own, api/bodies.py.)

    uvicorn also waits as long as it takes for a client to read an answer: one that asks and
    never reads holds the connection and the answer. When the socket's send buffer stays full
    for `send_timeout` seconds (the transport paused writing and never resumed), the connection
    is reset."""

    header_timeout: float = 10.0
    send_timeout: float = 60.0
    _deadline: asyncio.TimerHandle | None = None
    _stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.send_timeout, self._unread)

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def _unstall(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _unread(self) -> None:
        self._stalled = None
        log.info(
            "resetting a connection from %s: it read nothing of an answer for %g s",
            self.client[0] if self.client else "?",
            self.send_timeout,
        )
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # a reset, not a close the kernel would try to deliver for minutes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info(
                "closing a connection from %s: no complete request headers in %g s",
                self.client[0] if self.client else "?",
                self.header_timeout,
            )
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when it is stopping so event streams end at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.closing = True
        super().handle_exit(sig, frame)


class _SecondSignal:
    """Our handlers stay installed under uvicorn's (which restores and re-raises them): a signal
    after `armed_at` (the engine is stopping) ends the process without waiting for jobs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.armed_at: float | None = None

    def install(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self.handle) for s in self.SIGNALS}

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        # The first signal was uvicorn's (re-raised after the HTTP server stopped) or arrives
        # before the engine stops; one delivered twice to the process group within a second is
        # the same request.
        if self.armed_at is not None and time.monotonic() - self.armed_at > 1.0:
            log.warning("stopping now; running jobs resume elsewhere when their leases expire")
            os._exit(EXIT_INTERRUPTED)

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
