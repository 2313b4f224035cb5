"""The outbound address policy: which addresses are refused by default, the allow-list, and a
transport that checks every connection (each redirect hop) and connects to what it checked."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shelfwork.connectors import tls_context
from shelfwork.outbound import (
    PUBLIC_ONLY,
    AddressPolicy,
    AddressRefused,
    request_deadline,
)
from tests.support.oai_hostile import (
    REPO_TEST_CERT,
    REPO_TEST_KEY,
    Hostile,
    drip_body,
    drip_headers,
    plain,
    redirect,
)

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.0.10", "private"),
    ("fc00::1", "private"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("100.64.0.1", "non-public"),  # shared address space (carrier-grade NAT)
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("240.0.0.1", "private"),
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    assert PUBLIC_ONLY.refusal(address) == kind


def test_the_refusal_reads_as_a_sentence() -> None:
    with pytest.raises(AddressRefused) as caught:
        PUBLIC_ONLY.resolve("0.0.0.0", 80)
    assert "resolves to an unspecified address" in str(caught.value)
    with pytest.raises(AddressRefused) as caught:
        PUBLIC_ONLY.resolve("10.0.0.1", 80)
    assert "resolves to a private address" in str(caught.value)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert PUBLIC_ONLY.refusal(address) is None


def test_the_allow_list_lets_exactly_its_networks_through() -> None:
    local = AddressPolicy.allowing(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert local.refusal("127.0.0.1") is None
    assert local.refusal("::ffff:127.0.0.1") is None  # the same destination
    assert local.refusal("10.200.3.4") is None
    assert local.refusal("fd12::1") is None
    assert local.refusal("127.0.0.2") == "loopback"
    assert local.refusal("192.168.1.1") == "private"
    assert local.refusal("169.254.169.254") == "link-local"
    with pytest.raises(ValueError, match="host names are not accepted"):
        AddressPolicy.allowing(["localhost"])


def test_a_name_with_any_refused_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(AddressRefused, match="private"):
        PUBLIC_ONLY.resolve("mixed.test", 80)
    assert not PUBLIC_ONLY.permits_url("http://mixed.test/oai")


def client(policy: AddressPolicy, **options: Any) -> httpx.Client:
    return httpx.Client(transport=policy.transport(tls_context()), follow_redirects=True, **options)


def test_loopback_server_is_not_reached_by_default() -> None:
    with Hostile() as hostile:
        hostile.route("/oai", plain(200, b"secret"))
        with client(PUBLIC_ONLY) as http, pytest.raises(AddressRefused, match="loopback"):
            http.get(f"{hostile.url}/oai")
        assert hostile.requests == []
        with client(AddressPolicy.allowing(["127.0.0.1"])) as http:
            assert http.get(f"{hostile.url}/oai").text == "secret"
        assert hostile.requests == ["/oai"]


def test_every_redirect_hop_is_checked() -> None:
    """An allowed host that redirects to a refused one (another loopback address that is not
    allowed, and the cloud metadata address) does not get the request through."""
    with Hostile("127.0.0.2") as inside, Hostile() as front:
        inside.route("/secret", plain(200, b"internal"))
        front.route("/hop", redirect(f"{inside.url}/secret"))
        front.route("/meta", redirect("http://169.254.169.254/latest/meta-data/"))
        with client(AddressPolicy.allowing(["127.0.0.1"])) as http:
            with pytest.raises(AddressRefused, match="loopback"):
                http.get(f"{front.url}/hop")
            with pytest.raises(AddressRefused, match="link-local"):
                http.get(f"{front.url}/meta")
        assert inside.requests == [] and front.requests == ["/hop", "/meta"]
        # without the policy the hop would have gone through (the test's premise)
        with httpx.Client(follow_redirects=True, trust_env=False) as plain_http:
            assert plain_http.get(f"{front.url}/hop").text == "internal"


def test_the_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lookup per connection, and the socket connects to its answer: a name that would
    resolve differently a moment later (DNS rebinding) has no second lookup to slip into."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def once_allowed(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        if host == "repository.test":
            if lookups.count(host) == 1:
                return real("127.0.0.1", port, *args, **kwargs)
            return real("127.0.0.2", port, *args, **kwargs)  # what a rebinding would answer
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", once_allowed)
    with Hostile() as hostile:
        hostile.route("/oai", plain(200, b"ok"))
        with client(AddressPolicy.allowing(["127.0.0.1"])) as http:
            assert http.get(f"http://repository.test:{hostile.port}/oai").text == "ok"
        # (connecting to the literal address looks it up too, numerically: no DNS there)
        assert [name for name in lookups if name == "repository.test"] == ["repository.test"]


@pytest.mark.parametrize("route", [drip_body(0.05), drip_headers(0.05)])
def test_a_request_deadline_bounds_a_dripping_server(route: Any) -> None:
    """A server that sends a byte every 50 ms never trips a 1 s read timeout; the deadline of
    the whole request ends it."""
    with Hostile() as hostile:
        hostile.route("/drip", route)
        with client(AddressPolicy.allowing(["127.0.0.1"]), timeout=1.0) as http:
            started = time.monotonic()
            with (
                pytest.raises(httpx.TimeoutException),
                request_deadline(0.6),
                http.stream("GET", f"{hostile.url}/drip") as answer,
            ):
                for _ in answer.iter_raw():
                    pass
            assert time.monotonic() - started < 1.5


def test_url_exists_checks_follow_the_same_policy() -> None:
    """validation.py's URL checker connects through the policy: the allow-list lets a local
    server be checked, and its redirect into a refused address counts as "does not exist"."""
    from shelfwork.pipelines.oai.validation import UrlChecker

    with Hostile("127.0.0.2") as inside, Hostile() as front:
        inside.route("/doc", plain(200, b""))
        front.route("/doc", plain(200, b""))
        front.route("/moved", redirect(f"{inside.url}/doc", 301))
        default = UrlChecker()
        local = UrlChecker(addresses=AddressPolicy.allowing(["127.0.0.1"]))
        try:
            assert not default.exists(f"{front.url}/doc")
            assert local.exists(f"{front.url}/doc")
            assert not local.exists(f"{front.url}/moved")
        finally:
            default.close()
            local.close()
        assert front.requests == ["/doc", "/moved"] and inside.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:{port}/",  # 127.0.0.1 as one decimal number
        "http://017700000001:{port}/",  # ... in octal
        "http://0x7f.1:{port}/",  # hex and a short form
        "http://127.1:{port}/",
        "http://0.0.0.0:{port}/",
        "http://[::]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
        "http://[::127.0.0.1]:{port}/",  # IPv4-compatible (deprecated): reserved
        "http://[fe80::1%25lo]:{port}/",  # with a zone
        "http://good.example@127.0.0.1:{port}/",  # user info is not the host
        "http://LOCALHOST:{port}/",
    ],
)
def test_other_spellings_of_a_refused_address_are_refused(url: str) -> None:
    """Whatever way the host is written, it is judged by the address it resolves to, and the
    server is never reached."""
    with Hostile() as hostile:
        hostile.route("/", plain(200, b"reached"))
        with client(PUBLIC_ONLY) as http, pytest.raises(AddressRefused):
            http.get(url.format(port=hostile.port))
        assert hostile.requests == []


def test_tls_is_checked_against_the_name_while_connecting_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HTTPS through the guarded transport connects to the address it checked, but sends the
    host name as SNI and verifies the certificate against the name: a certificate for
    repo.test passes for https://repo.test and fails for its address."""
    (tmp_path / "cert.pem").write_text(REPO_TEST_CERT)
    (tmp_path / "key.pem").write_text(REPO_TEST_KEY)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    real = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return real("127.0.0.1" if host == "repo.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    trusting = ssl.create_default_context(cadata=REPO_TEST_CERT)
    policy = AddressPolicy.allowing(["127.0.0.1"])
    with Hostile(tls=server_side) as hostile:
        hostile.route("/oai", plain(200, b"over tls"))
        with httpx.Client(transport=policy.transport(trusting)) as http:
            assert http.get(f"https://repo.test:{hostile.port}/oai").text == "over tls"
            with pytest.raises(httpx.ConnectError, match=r"certificate|hostname|IP address"):
                http.get(f"https://127.0.0.1:{hostile.port}/oai")
        assert hostile.server_names[0] == "repo.test"
        assert hostile.requests == ["/oai"]
