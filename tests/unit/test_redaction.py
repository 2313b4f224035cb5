"""Secrets kept out of what people and logs see: credentials in remote URLs, credential headers in
debug dumps, and remote answers quoted only as a short, one-line excerpt."""

from __future__ import annotations

import logging

import httpx
import pytest

from shelfwork.connectors import (
    EXCERPT,
    RemoteRefused,
    RemoteUnavailable,
    error_for,
    transport_error,
)
from shelfwork.redaction import SecretFilter, excerpt, redact_text, redact_url

LEAKY = "https://shelfwork:hunter2@koha.library.example/api/v1/biblios/42?x=1"


def test_userinfo_is_removed_from_urls_and_text() -> None:
    assert redact_url(LEAKY) == "https://***@koha.library.example/api/v1/biblios/42?x=1"
    assert redact_url("http://token@dspace.example/server") == "http://***@dspace.example/server"
    assert redact_url("https://koha.example/a@b") == "https://koha.example/a@b"  # not userinfo
    text = f"GET {LEAKY} failed; retried http://u:p%40ss@[::1]:8080/x"
    cleaned = redact_text(text)
    assert "hunter2" not in cleaned and "p%40ss" not in cleaned and "shelfwork:" not in cleaned
    assert "koha.library.example/api/v1/biblios/42" in cleaned and "[::1]:8080/x" in cleaned


def test_a_remote_error_never_carries_the_credentials_of_its_url() -> None:
    err = RemoteRefused("koha", f"reading {LEAKY}", method="GET", url=LEAKY, status=404, body="")
    assert "hunter2" not in str(err) and "hunter2" not in (err.url or "")
    assert "koha.library.example/api/v1/biblios/42" in str(err)
    request = httpx.Request("GET", LEAKY)
    response = httpx.Response(404, request=request, text="no such biblio")
    from_response = error_for("koha", response, "read biblio 42")
    assert "hunter2" not in str(from_response) and "hunter2" not in (from_response.url or "")
    failed = transport_error(
        "koha", httpx.ConnectError(f"cannot reach {LEAKY}", request=request), "read biblio 42"
    )
    assert isinstance(failed, RemoteUnavailable) and "hunter2" not in str(failed)


def test_a_quoted_remote_answer_is_one_short_clean_line() -> None:
    hostile = "<html>\x1b[31mred\x1b[0m\r\nline two\x00\x07 and a tail " + "x" * 5000
    quoted = excerpt(hostile)
    assert len(quoted) <= EXCERPT
    assert all(ch >= " " for ch in quoted) and "\x1b" not in quoted
    assert quoted.startswith("<html> red line two and a tail")
    err = RemoteRefused("dspace", "refused", method="POST", url="https://d.example/x", body=hostile)
    assert err.body == quoted and "\n" not in str(err) and "\x1b" not in str(err)
    assert excerpt("") == "" and excerpt(None) == ""


@pytest.mark.parametrize(
    "message",
    [
        # httpcore's trace of response headers (what `--debug` printed before)
        "receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'OK', "
        "[(b'Authorization', b'Bearer eyJhbGciOiJIUzI1NiJ9.SECRET.SIG'), "
        "(b'DSPACE-XSRF-TOKEN', b'SECRET-xsrf'), "
        "(b'Set-Cookie', b'CGISESSID=SECRET-session; path=/; HttpOnly'), "
        "(b'Content-Type', b'application/json')])",
        # a dict of headers
        "headers={'authorization': 'Basic SECRET==', 'Cookie': 'CGISESSID=SECRET', "
        "'X-XSRF-TOKEN': 'SECRET', 'csrf-token': 'SECRET', 'accept': 'application/json'}",
        # raw header lines
        "Authorization: Bearer SECRET.jwt.value\nCookie: DSPACE-XSRF-COOKIE=SECRET\n"
        "Set-Cookie: CGISESSID=SECRET; path=/\nAccept: application/json",
        # a URL with credentials
        f"HTTP Request: GET {LEAKY.replace('hunter2', 'SECRET')} 200",
    ],
)
def test_the_log_filter_removes_credential_headers_and_url_credentials(message: str) -> None:
    record = logging.LogRecord(
        "httpcore.http11", logging.DEBUG, __file__, 1, "%s", (message,), None
    )
    assert SecretFilter().filter(record) is True  # the record is kept, with the secrets gone
    shown = record.getMessage()
    assert "SECRET" not in shown
    assert "[redacted]" in shown or "***@" in shown
    assert "application/json" in shown or "HTTP Request" in shown  # the rest stays


def test_the_clients_show_no_credentials_when_printed() -> None:
    """A client lands in a log line or a traceback's locals as its repr."""
    from shelfwork.connectors.dspace import DSpace
    from shelfwork.connectors.koha import KohaRest, KohaStaff

    url = "https://svc:hunter2@repository.example/server/api"
    clients = [
        DSpace(url, "integrator@example", "pw-secret-1"),
        KohaRest(url, basic=("rest", "pw-secret-2")),
        KohaStaff(url, "staff", "pw-secret-3"),
    ]
    for client in clients:
        shown = repr(client)
        assert "hunter2" not in shown and "pw-secret" not in shown, shown
        client.close()  # type: ignore[attr-defined]
    assert "repository.example" in repr(clients[0])


def test_the_workspace_lock_is_named_without_url_credentials() -> None:
    """The lock's name reaches the lock lists and, when another job holds it too long, the job's
    error (LockHeld names it), which every viewer reads."""
    from shelfwork.pipelines.koha_dspace.pipeline import workspace_lock

    name = workspace_lock("https://svc:hunter2@repository.example/server/api", "depositor")
    assert "hunter2" not in name and "svc" not in name
    assert name == "dspace-workspace:https://***@repository.example/server/api:depositor"
    plain = workspace_lock("https://repository.example/server/api", "depositor")
    assert plain == "dspace-workspace:https://repository.example/server/api:depositor"


def test_the_public_cover_url_carries_no_credentials() -> None:
    """956$c is shown in the OPAC to anyone, and in the job's result and the button's /status:
    credentials someone put into opac_url (copied from the REST URL) must not go with it."""
    from shelfwork.connectors.koha import opac_cover_url

    url = opac_cover_url("https://shelfwork:hunter2@opac.example/", imagenumber=5, biblionumber=1)
    assert url == "https://opac.example/cgi-bin/koha/opac-image.pl?imagenumber=5"
    plain = opac_cover_url("http://opac.example:8080", imagenumber=None, biblionumber=7)
    assert plain == "http://opac.example:8080/cgi-bin/koha/opac-image.pl?biblionumber=7"
