"""Outbound connections: which addresses shelfwork may reach, and a transport that keeps to them.

A URL that comes from configuration, the API or harvested data (an OAI network's base_url, a link
a `url_exists` rule follows) must not make the server probe its own network or its cloud's
metadata service. So loopback, private, link-local, shared, reserved and multicast addresses are
refused unless an operator lists them (`allow_private_hosts`, for a local setup), IPv6 forms that
embed an IPv4 address (mapped `::ffff:a.b.c.d`, 6to4, NAT64) are judged by that address, and a
name is refused when any of its addresses is.

The check is made where the connection is made (`GuardedBackend`): the host is resolved once,
every address is checked, and the socket connects to a checked address, so no second lookup lets
a DNS answer that changed in between (rebinding) through. Every redirect hop to a new host opens
its own connection and is checked the same way. A transport from `AddressPolicy.transport` never
goes through an environment proxy (whose own address would be all it could check).

`request_deadline` bounds a whole request (connect, headers, body), which per-read timeouts do
not: a server that sends one byte a second never trips a read timeout.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .errors import ShelfworkError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: the well-known NAT64 prefix (RFC 6052): its last 32 bits are an IPv4 address
NAT64 = IPv6Network("64:ff9b::/96")


class AddressRefused(ShelfworkError):
    """A host is, or resolves to, an address outside the public internet that is not allowed."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        article = "an" if reason[:1] in "aeiou" else "a"
        super().__init__(
            f"host {host} is refused: it is or resolves to {article} {reason} address "
            "(list it in allow_private_hosts for a local setup)"
        )


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public(address: IPAddress) -> str | None:
    """What kind of non-public address `address` is ("loopback", "private"...); None if public."""
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return non_public(inner)
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return None if address.is_global else "non-public"


def parse_address(text: str) -> IPAddress:
    """An address as getaddrinfo or a URL writes it (an IPv6 zone such as %eth0 is dropped)."""
    return ip_address(text.strip("[]").split("%", 1)[0])


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the networks an operator allowed (`AddressPolicy()`: public only)."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, entries: Iterable[str]) -> AddressPolicy:
        """From config: addresses or networks ("127.0.0.1", "10.0.0.0/8", "::1")."""
        networks = []
        for entry in entries:
            try:
                networks.append(ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (such as 10.0.0.0/8); host "
                    "names are not accepted, since what a name resolves to can change"
                ) from None
        return cls(tuple(networks))

    def refusal(self, address: IPAddress | str) -> str | None:
        """Why a connection to `address` is refused; None when it may be made."""
        if isinstance(address, str):
            address = parse_address(address)
        candidates = [address]
        if isinstance(address, IPv6Address) and (inner := embedded_ipv4(address)) is not None:
            candidates.append(inner)
        if any(a in network for a in candidates for network in self.allowed):
            return None
        return non_public(address)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, each checked; AddressRefused when any one is
        refused (a name with one public and one private address is not let through). OSError
        when the name does not resolve."""
        try:
            literal: IPAddress | None = parse_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            found = [str(literal)]
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in found:
            reason = self.refusal(address)
            if reason is not None:
                raise AddressRefused(host, reason)
        return found

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is, or resolves to, a refused address now (configuration and
        API input are refused early; connections are checked again when made). A name that does
        not resolve passes: the request will fail on its own."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise AddressRefused(url, "missing")
        try:
            self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError):
            return

    def permits_url(self, url: str) -> bool:
        try:
            self.check_url(url)
        except AddressRefused:
            return False
        return True

    def transport(self, ssl_context: ssl.SSLContext) -> httpx.BaseTransport:
        """An httpx transport whose every connection goes through this policy."""
        return GuardedTransport(self, ssl_context)


#: public addresses only: the default wherever nothing was configured
PUBLIC_ONLY = AddressPolicy()


# --- the deadline of one request --------------------------------------------------------------

_deadline: ContextVar[float | None] = ContextVar("shelfwork_request_deadline", default=None)


@contextmanager
def request_deadline(seconds: float | None) -> Iterator[None]:
    """Within this block, connections made by a guarded transport fail (as timeouts) once
    `seconds` have passed, whatever each read's own timeout; None: no deadline."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline_passed() -> bool:
    end = _deadline.get()
    return end is not None and time.monotonic() >= end


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` shortened to what is left before the deadline; `error` once it has passed."""
    end = _deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes stop at the current request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy allows, to exactly the addresses it checked."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    _bounded(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return DeadlineStream(stream)
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise AddressRefused(path, "Unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport over a `GuardedBackend` (no environment proxy)."""

    def __init__(self, policy: AddressPolicy, ssl_context: ssl.SSLContext) -> None:
        # HTTPTransport's own __init__ would build a pool without the backend; everything else it
        # does (requests, responses, mapping httpcore's errors to httpx's) works on `_pool`
        self.policy = policy
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy),
        )
