"""A hostile upstream for harvester tests: an HTTP server on a raw socket that misbehaves in the
ways a WSGI app cannot (a gzip bomb, a body or headers sent one byte at a time, a redirect to an
address the harvester must not reach).

    with Hostile() as hostile:
        hostile.route("/bomb", gzip_bomb(20 << 20))
        OaiClient(f"{hostile.url}/bomb", ...)

Each route is a function that writes a whole answer to the connection; `Hostile.requests` lists
the paths asked for, so a test can check what reached the server (`tls=` serves HTTPS, with
REPO_TEST_CERT for the name repo.test). Pacing (the drips) waits on the
server's stop event, so stopping the server ends every drip at once.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: a route: (the connection, the server's stop event) -> None
Route = Callable[[socket.socket, threading.Event], None]

#: a self-signed certificate for the name `repo.test` only (no address in it), valid 2020-2120,
#: and its key, for a hostile server over TLS (made with `openssl ca -selfsign`; a test key)
REPO_TEST_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBYDCCAQegAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlyZXBvLnRl
c3QwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CXJlcG8udGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOxEpUyIZf0KaF0s
GicJHjE4q1Fin2M9tXKWUQi/MAGtcMG4+BgFWWNeXuwadPpPE5gvhaX1KPwFhYsp
Uh6okx2jSDBGMBQGA1UdEQQNMAuCCXJlcG8udGVzdDAPBgNVHRMBAf8EBTADAQH/
MB0GA1UdDgQWBBS2JS/1fj7L3RkJwWlJvH6IHfwxhTAKBggqhkjOPQQDAgNHADBE
AiAnbzK5tsyknDnwHgynFViiF1+j9pBQ6VEY/FvNlMIucAIgDs8TE0UlBml5891X
JFPR8ltTMQ+oj4IifP3DStKNxYw=
-----END CERTIFICATE-----
"""
REPO_TEST_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsc7kX76mAb44mx2F
lDl9YxgaaBqwNIHy5gEBrSOsi6ChRANCAATsRKVMiGX9CmhdLBonCR4xOKtRYp9j
PbVyllEIvzABrXDBuPgYBVljXl7sGnT6TxOYL4Wl9Sj8BYWLKVIeqJMd
-----END PRIVATE KEY-----
"""

OAI_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
    b"<responseDate>2024-05-01T10:00:00Z</responseDate>"
    b'<request verb="ListRecords" metadataPrefix="oai_dc">http://hostile.test/oai</request>'
    b"<ListRecords>"
)


def gzip_bomb(size: int) -> Route:
    """A 200 answer whose gzip body is small on the wire and `size` bytes once inflated (an
    OAI-PMH page that goes on with spaces)."""
    body = gzip.compress(OAI_HEAD + b" " * size, compresslevel=9)

    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\n"
            b"Content-Encoding: gzip\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        conn.sendall(head + body)

    return answer


def drip_body(interval: float, *, seconds: float = 10.0) -> Route:
    """Headers at once, then the page one byte every `interval` seconds (for `seconds` at most:
    a harvester without a deadline still gets an end, a broken page, in a test)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nConnection: close\r\n\r\n"
        )
        _drip(conn, stop, OAI_HEAD + b" " * 100_000, interval, seconds)

    return answer


def drip_headers(interval: float, *, seconds: float = 10.0) -> Route:
    """The status line and headers one byte every `interval` seconds."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100_000 + b"\r\n\r\n"
        _drip(conn, stop, head, interval, seconds)

    return answer


def _drip(
    conn: socket.socket, stop: threading.Event, data: bytes, interval: float, seconds: float
) -> None:
    steps = int(seconds / interval)
    for byte in data[:steps]:
        if stop.wait(interval):
            return
        try:
            conn.sendall(bytes([byte]))
        except OSError:  # the client gave up
            return


def redirect(location: str, status: int = 302) -> Route:
    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        conn.sendall(
            f"HTTP/1.1 {status} Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )

    return answer


def unframed(body: bytes, headers: dict[str, str] | None = None) -> Route:
    """A 200 answer without Content-Length: the body ends when the server closes."""

    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        conn.sendall(f"HTTP/1.1 200 OK\r\n{extra}Connection: close\r\n\r\n".encode())
        for start in range(0, len(body), 1 << 16):
            conn.sendall(body[start : start + (1 << 16)])

    return answer


def plain(status: int, body: bytes, headers: dict[str, str] | None = None) -> Route:
    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
            + body
        )

    return answer


@dataclass
class Hostile:
    """The server; a context manager that starts it on `host` (a free port) and stops it."""

    host: str = "127.0.0.1"
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: serve over TLS with this context; each client's SNI name is kept in `server_names`
    tls: ssl.SSLContext | None = None
    server_names: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def route(self, path: str, answer: Route) -> None:
        self.routes[path] = answer

    def __enter__(self) -> Hostile:
        hostile = self
        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                if hostile.tls is not None:
                    try:
                        conn = hostile.tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):  # the client refused the certificate
                        return
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                target = head.split(b" ", 2)[1].decode("ascii", "replace")
                path = target.split("?", 1)[0]
                hostile.requests.append(path)
                answer = hostile.routes.get(path, plain(404, b"no such route"))
                with contextlib.suppress(OSError):
                    answer(conn, hostile.stop)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server((self.host, 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
