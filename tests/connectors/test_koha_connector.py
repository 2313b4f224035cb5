"""The Koha connector against the emulated Koha served on loopback (`shelfwork.sandbox.serve`):
REST reads and writes (A1), both auth schemes and their renewal (A2), the staff login of both
generations (A3) and the cover upload (A4), plus the faults a real Koha shows."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from urllib.parse import quote_plus

import httpx
import lxml.html
import pymarc
import pytest
from PIL import Image

from shelfwork.connectors import AuthFailed, NotFound, RemoteRefused, RemoteUnavailable
from shelfwork.connectors.koha import (
    KohaRest,
    KohaStaff,
    cover_error,
    lacks_permission,
    opac_cover_url,
)
from shelfwork.sandbox.koha import KohaState
from tests.support import koha as support

USER, PASSWORD = "cataloguer", "Very-Secret-Pw-1"
READER, READER_PASSWORD = "reader", "Reader-Secret-Pw-2"
CLIENT_ID, CLIENT_SECRET = "shelfwork-client", "Client-Secret-Value-3"


def record_xml(title: str, uri: str) -> bytes:
    record = pymarc.Record()
    record.add_field(
        pymarc.Field(tag="001", data=title),
        pymarc.Field(
            tag="245",
            indicators=pymarc.Indicators("1", "0"),
            subfields=[pymarc.Subfield("a", title)],
        ),
        pymarc.Field(
            tag="956", indicators=pymarc.Indicators("4", "0"), subfields=[pymarc.Subfield("u", uri)]
        ),
    )
    return pymarc.record_to_xml(record, namespace=True)


def with_links(marcxml: bytes, uri_956: str, uri_856: str) -> bytes:
    """What the pipeline does: change only 956 and 856, keep everything else."""
    record = pymarc.parse_xml_to_array(io.BytesIO(marcxml))[0]
    assert record is not None
    record.remove_fields("956", "856")
    for tag, uri in (("956", uri_956), ("856", uri_856)):
        record.add_ordered_field(
            pymarc.Field(
                tag=tag,
                indicators=pymarc.Indicators("4", "0"),
                subfields=[pymarc.Subfield("u", uri)],
            )
        )
    return pymarc.record_to_xml(record, namespace=True)


def uris(marcxml: bytes, tag: str) -> list[str]:
    record = pymarc.parse_xml_to_array(io.BytesIO(marcxml))[0]
    assert record is not None
    return [field["u"] for field in record.get_fields(tag)]


def jpeg(color: str = "navy") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 180), color).save(buffer, "JPEG")
    return buffer.getvalue()


class Koha(support.Koha):
    def rest(self, **kwargs: object) -> KohaRest:
        if "basic" not in kwargs and "client_credentials" not in kwargs:
            kwargs["client_credentials"] = (CLIENT_ID, CLIENT_SECRET)
        return KohaRest(self.url, **kwargs)  # type: ignore[arg-type]

    def staff(self, userid: str = USER, password: str = PASSWORD, **kwargs: object) -> KohaStaff:
        return KohaStaff(self.url, userid, password, **kwargs)  # type: ignore[arg-type]


def with_users_clients_and_a_record(state: KohaState) -> None:
    state.add_staff_user(USER, PASSWORD)
    state.add_staff_user(READER, READER_PASSWORD, {"catalogue"})
    state.add_oauth_client(CLIENT_ID, CLIENT_SECRET, USER)
    state.add_oauth_client("reader-client", "reader-secret", READER)
    state.add_record(42, record_xml("Forty-two", "http://old.example/42"))


@pytest.fixture
def make_koha() -> Iterator[Callable[..., Koha]]:
    with support.koha_factory(with_users_clients_and_a_record, Koha) as make:
        yield make


@pytest.fixture
def koha(make_koha: Callable[..., Koha]) -> Koha:
    return make_koha()


def assert_no_secret(error: Exception) -> None:
    for secret in (PASSWORD, READER_PASSWORD, CLIENT_SECRET):
        assert secret not in str(error)


# -- A1/A2 REST ------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "oauth"])
def test_get_then_put_changes_only_the_links(koha: Koha, auth: str) -> None:
    kwargs = {"basic": (USER, PASSWORD)} if auth == "basic" else {}
    with koha.rest(**kwargs) as rest:
        original = rest.get_marcxml(42)
        assert original == koha.state.record(42)
        rest.put_marcxml(42, with_links(original, "http://repo.example/h/1", "http://repo/856"))
        stored = rest.get_marcxml(42)
    assert uris(stored, "956") == ["http://repo.example/h/1"]
    assert uris(stored, "856") == ["http://repo/856"]
    assert koha.state.calls["PUT /api/v1/biblios"] == 1


def test_oauth_token_is_fetched_once_and_reused(koha: Koha) -> None:
    with koha.rest() as rest:
        rest.get_marcxml(42)
        rest.get_marcxml(42)
    assert koha.state.calls["POST /api/v1/oauth/token"] == 1
    assert koha.state.calls["GET /api/v1/biblios"] == 2


def test_expired_oauth_token_is_renewed_on_401(koha: Koha) -> None:
    with koha.rest() as rest:
        rest.get_marcxml(42)
        koha.state.expire_tokens()
        assert rest.get_marcxml(42) == koha.state.record(42)
    assert koha.state.calls["POST /api/v1/oauth/token"] == 2
    assert koha.state.calls["GET /api/v1/biblios"] == 3  # the refused call, then the retry


def test_oauth_token_is_renewed_before_its_expiry(koha: Koha) -> None:
    koha.state.token_ttl = 10  # within the connector's renewal margin: renew at every use
    with koha.rest() as rest:
        rest.get_marcxml(42)
        rest.get_marcxml(42)
    assert koha.state.calls["POST /api/v1/oauth/token"] == 2
    assert koha.state.calls["GET /api/v1/biblios"] == 2  # never refused


def test_overlay_rule_keeping_956_is_visible_on_the_next_get(koha: Koha) -> None:
    """A1: the PUT answers 200 but an overlay rule kept the old 956; only a re-GET shows it."""
    koha.state.overlay_keep.add("956")
    with koha.rest() as rest:
        changed = with_links(rest.get_marcxml(42), "http://repo.example/h/1", "http://repo/856")
        rest.put_marcxml(42, changed)  # no error
        stored = rest.get_marcxml(42)
    assert uris(stored, "956") == ["http://old.example/42"]
    assert uris(stored, "856") == ["http://repo/856"]


def test_missing_biblio_is_not_found(koha: Koha) -> None:
    with koha.rest() as rest, pytest.raises(NotFound) as caught:
        rest.get_marcxml(999)
    assert "biblio 999 not found in Koha" in str(caught.value)
    assert caught.value.status == 404
    assert "Bibliographic record not found" in caught.value.body


def test_basic_auth_disabled_is_auth_failed_saying_so(koha: Koha) -> None:
    koha.state.set_syspref("RESTBasicAuth", False)
    with koha.rest(basic=(USER, PASSWORD)) as rest, pytest.raises(AuthFailed) as caught:
        rest.get_marcxml(42)
    assert "Basic authentication disabled" in str(caught.value)
    assert_no_secret(caught.value)


def test_wrong_basic_password_is_auth_failed_naming_the_user(koha: Koha) -> None:
    """A2 [V] Koha/REST/V1/Auth.pm `_basic_auth`: 403 with required_permissions null."""
    with koha.rest(basic=(USER, "Wrong-" + PASSWORD)) as rest, pytest.raises(AuthFailed) as caught:
        rest.get_marcxml(42)
    assert caught.value.status == 403
    assert f"Koha refused the password of API user {USER!r}" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_expired_basic_password_is_auth_failed_saying_so(koha: Koha) -> None:
    koha.state.expire_password(USER)
    with koha.rest(basic=(USER, PASSWORD)) as rest, pytest.raises(AuthFailed) as caught:
        rest.get_marcxml(42)
    assert caught.value.status == 403
    assert f"the password of Koha API user {USER!r} has expired" in str(caught.value)
    assert_no_secret(caught.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("Invalid password", "Koha refused the password of API user 'u'"),
        ("Password has expired", "the password of Koha API user 'u' has expired"),
        ("Something else", "Koha refused API user 'u': Something else"),
    ],
)
def test_403_with_null_required_permissions_is_auth_failed(error: str, expected: str) -> None:
    """A2: Koha's exact body (`required_permissions` present and null) must not break the
    permission message (it did: dict(None) raised TypeError)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": error, "required_permissions": None})

    rest = KohaRest("http://koha.invalid", basic=("u", "p"), transport=httpx.MockTransport(answer))
    with rest, pytest.raises(AuthFailed) as caught:
        rest.get_marcxml(42)
    assert expected in str(caught.value)
    assert caught.value.status == 403


def test_missing_permission_names_the_permission(koha: Koha) -> None:
    with koha.rest(client_credentials=("reader-client", "reader-secret")) as rest:
        marcxml = rest.get_marcxml(42)
        with pytest.raises(AuthFailed) as caught:
            rest.put_marcxml(42, marcxml)
    assert "editcatalogue: edit_catalogue" in str(caught.value)
    assert caught.value.status == 403


def test_locked_record_is_auth_failed_naming_the_lock(koha: Koha) -> None:
    koha.state.locked.add(42)
    with koha.rest() as rest, pytest.raises(AuthFailed) as caught:
        rest.put_marcxml(42, rest.get_marcxml(42))
    assert "biblio 42 is a locked record" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b"<record",
        b"",
        b'<record xmlns="http://www.loc.gov/MARC21/slim"><leader>00000nam a2200000 a 4500</leader>'
        b"</record>",
        b"<collection/>",
    ],
    ids=["broken", "empty", "no-fields", "no-record"],
)
def test_unparsable_record_is_refused_before_it_is_sent(koha: Koha, body: bytes) -> None:
    """A1: released Koha answers such a body with a bare 500 (or stores the empty record),
    so the connector never sends it."""
    before = koha.state.record(42)
    with koha.rest() as rest, pytest.raises(RemoteRefused) as caught:
        rest.put_marcxml(42, body)
    assert not isinstance(caught.value, AuthFailed)
    assert "writing biblio 42: not sent" in str(caught.value)
    assert koha.state.calls["PUT /api/v1/biblios"] == 0
    assert koha.state.record(42) == before


def test_bad_record_400_of_newer_koha_is_refused_not_retried(koha: Koha) -> None:
    """A1: Koha main (2026) answers 400 bad_record for a body that has no fields."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400,
            json={"error": "Unable to parse record from request body", "error_code": "bad_record"},
        )

    rest = KohaRest("http://koha.invalid", basic=("u", "p"), transport=httpx.MockTransport(answer))
    with rest, pytest.raises(RemoteRefused) as caught:
        rest.put_marcxml(42, koha.state.record(42))
    assert not isinstance(caught.value, AuthFailed)
    assert "Koha could not parse the MARCXML" in str(caught.value)


def test_put_500_is_remote_unavailable_naming_koha_s_log(koha: Koha) -> None:
    """A1 [V] Koha/REST/Plugin/Exceptions.pm: an exception in `update` is a 500 with
    error_code internal_server_error; only Koha's log says why."""
    koha.state.fail_next(1, status=500, path_prefix="/api/v1/biblios")
    with koha.rest() as rest, pytest.raises(RemoteUnavailable) as caught:
        rest.put_marcxml(42, koha.state.record(42))
    assert caught.value.status == 500
    assert "Koha failed while storing biblio 42" in str(caught.value)


def test_406_is_refused_with_the_accepted_types() -> None:
    """A1: Koha's 406 lists the types it accepts; the connector quotes them."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(406, json=["application/json", "application/marcxml+xml"])

    rest = KohaRest("http://koha.invalid", basic=("u", "p"), transport=httpx.MockTransport(answer))
    with rest, pytest.raises(RemoteRefused) as caught:
        rest.get_marcxml(42)
    assert "application/marcxml+xml" in str(caught.value)
    assert caught.value.status == 406


@pytest.mark.parametrize(
    ("credentials", "syspref_on", "expected"),
    [
        ((CLIENT_ID, "wrong-secret"), True, "refused the client id or secret"),
        ((CLIENT_ID, CLIENT_SECRET), False, "RESTOAuth2ClientCredentials"),
    ],
)
def test_token_refusals_are_auth_failed(
    koha: Koha, credentials: tuple[str, str], syspref_on: bool, expected: str
) -> None:
    koha.state.set_syspref("RESTOAuth2ClientCredentials", syspref_on)
    with koha.rest(client_credentials=credentials) as rest, pytest.raises(AuthFailed) as caught:
        rest.get_marcxml(42)
    assert expected in str(caught.value)
    assert_no_secret(caught.value)
    assert koha.state.calls["GET /api/v1/biblios"] == 0


def test_500_is_remote_unavailable_and_the_next_call_succeeds(koha: Koha) -> None:
    koha.state.fail_next(1, status=500, path_prefix="/api/v1/biblios")
    with koha.rest() as rest:
        with pytest.raises(RemoteUnavailable) as caught:
            rest.get_marcxml(42)
        assert caught.value.status == 500
        assert rest.get_marcxml(42) == koha.state.record(42)


def test_latency_beyond_the_timeout_is_remote_unavailable(koha: Koha) -> None:
    koha.state.latency = 1.0
    rest = koha.rest(basic=(USER, PASSWORD), timeout=0.2)
    with rest, pytest.raises(RemoteUnavailable) as caught:
        rest.get_marcxml(42)
    assert "reading biblio 42" in str(caught.value)


def test_koha_down_is_remote_unavailable(koha: Koha) -> None:
    koha.state.down = True
    with koha.rest(basic=(USER, PASSWORD)) as rest, pytest.raises(RemoteUnavailable):
        rest.get_marcxml(42)


def test_refused_connection_is_remote_unavailable(koha: Koha) -> None:
    url = koha.url
    koha.server.stop()
    rest = KohaRest(url, basic=(USER, PASSWORD), timeout=2)
    with rest, pytest.raises(RemoteUnavailable):
        rest.get_marcxml(42)


def test_rest_works_while_a_staff_session_is_open_on_2405(koha: Koha) -> None:
    """A2: separate cookie jars — a staff session never makes a REST PUT need a CSRF token."""
    with koha.staff() as staff, koha.rest(basic=(USER, PASSWORD)) as rest:
        staff.login()
        rest.put_marcxml(42, with_links(rest.get_marcxml(42), "http://a/1", "http://a/2"))
    assert uris(koha.state.record(42), "956") == ["http://a/1"]


# -- A3 staff login --------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_login_detects_the_generation(make_koha: Callable[..., Koha], generation: str) -> None:
    koha = make_koha(generation)
    with koha.staff() as staff:
        staff.login()
        assert staff.generation == generation


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_bad_password_names_the_user_not_the_password(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    koha = make_koha(generation)
    with koha.staff(password="Not-" + PASSWORD) as staff, pytest.raises(AuthFailed) as caught:
        staff.login()
    assert USER in str(caught.value)
    assert "invalid username or password" in str(caught.value)
    assert PASSWORD not in str(caught.value)


#: auth.tt (openfifth 49e7476): the 24.05 login form and the `login_error` div of each refusal
LOGIN_FORM_2405 = (
    '<form action="/cgi-bin/koha/mainpage.pl" method="post" name="loginform" id="loginform">'
    '<input type="hidden" name="csrf_token" value="t0k3n" />'
    '<input type="hidden" name="op" value="cud-login" />'
    '<input type="hidden" name="koha_login_context" value="intranet" />'
    '<input type="text" name="login_userid" id="userid" value="" />'
    '<input type="password" name="login_password" id="password" value="" /></form>'
)


@pytest.mark.parametrize(
    "login_error",
    [
        "Error: Your password has expired! You must contact the library to reset your password",
        "Error: This account has been locked!",
        "Помилка: Неправильне ім’я користувача або пароль",
    ],
    ids=["expired", "locked", "translated"],
)
def test_login_refusal_quotes_koha_s_login_error(login_error: str) -> None:
    """A3: Koha answers a refused login with its login page again; the reason is only in
    auth.tt's #login_error (wrong password, expired password, locked account, each translated
    in a localised Koha). Quote it rather than blame the login fields."""
    posted: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        error = ""
        if request.method == "POST":
            posted.append(request.content)
            error = f'<div id="login_error">{login_error}</div>'
        page = f"<html><body><div id='login'>{error}{LOGIN_FORM_2405}</div></body></html>"
        return httpx.Response(200, html=page)

    staff = KohaStaff("http://koha.invalid", USER, PASSWORD, transport=httpx.MockTransport(answer))
    with staff, pytest.raises(AuthFailed) as caught:
        staff.login()
    message = str(caught.value)
    assert f"Koha refused the login of {USER!r}: {login_error}" in message
    assert "login fields" not in message
    assert PASSWORD not in message
    assert len(posted) == 1


@pytest.mark.parametrize(
    ("login_error", "links", "expected"),
    [
        ("Помилка: Ви не маєте дозволу на доступ до цієї сторінки.", True, True),
        ("Error: You do not have permission to access this page.", False, True),
        ("Error: Session timed out. Please log in again", False, False),
        ("", False, False),
    ],
    ids=["translated", "english", "timed-out", "plain-login"],
)
def test_lacks_permission_reads_auth_tt_s_markers(
    login_error: str, links: bool, expected: bool
) -> None:
    """A3 [V] auth.tt: only the `nopermission` branch adds the a#previous_page link, in every
    language; the English sentence is the fallback for pages without it."""
    extra = '<p><a id="previous_page" href="#">[Page précédente]</a></p>' if links else ""
    error = f'<div id="login_error">{login_error}</div>' if login_error else ""
    page = f"<html><body>{error}{LOGIN_FORM_2405}{extra}</body></html>"
    assert lacks_permission(lxml.html.fromstring(page)) is expected


def echoing_500(request: httpx.Request) -> httpx.Response:
    """A server error page that echoes the request (as debug error pages do)."""
    if request.method == "GET":
        return httpx.Response(200, html=f"<html><body>{LOGIN_FORM_2405}</body></html>")
    echoed = request.content.decode()
    return httpx.Response(500, text=f"Internal Server Error while handling {echoed}")


@pytest.mark.parametrize("password", [PASSWORD, "pa ss&wörd!"], ids=["plain", "form-encoded"])
def test_staff_login_error_never_quotes_the_password_koha_echoes(password: str) -> None:
    staff = KohaStaff(
        "http://koha.invalid", USER, password, transport=httpx.MockTransport(echoing_500)
    )
    with staff, pytest.raises(RemoteUnavailable) as caught:
        staff.login()
    assert caught.value.status == 500
    for form in (password, quote_plus(password)):
        assert form not in str(caught.value)
        assert form not in (caught.value.body or "")


def test_staff_page_error_never_quotes_the_session_cookie_koha_echoes() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "cookie" not in request.headers:
            return httpx.Response(200, html=f"<html><body>{LOGIN_FORM_2405}</body></html>")
        if request.method == "POST":
            return httpx.Response(
                200,
                html='<html><body><meta name="csrf-token" content="c" />Welcome</body></html>',
                headers={"Set-Cookie": "CGISESSID=Sess-Secret-987; path=/; HttpOnly"},
            )
        return httpx.Response(500, text=f"died; cookie {request.headers['cookie']}")

    staff = KohaStaff("http://koha.invalid", USER, PASSWORD, transport=httpx.MockTransport(answer))
    with staff, pytest.raises(RemoteUnavailable) as caught:
        staff.upload_cover(42, jpeg())
    assert "died" in (caught.value.body or "")
    assert "Sess-Secret-987" not in str(caught.value)


@pytest.mark.parametrize("auth", ["basic", "oauth"])
def test_rest_error_never_quotes_the_credentials_koha_echoes(auth: str) -> None:
    """A 500 page that echoes the request headers must not carry the Basic credentials or the
    bearer token into the error."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "Tok-En-123", "expires_in": 3600})
        seen.append(request.headers["authorization"].split(" ", 1)[1])
        return httpx.Response(500, text=f"died; credentials were {seen[-1]}")

    transport = httpx.MockTransport(answer)
    if auth == "basic":
        rest = KohaRest("http://koha.invalid", basic=(USER, PASSWORD), transport=transport)
    else:
        rest = KohaRest(
            "http://koha.invalid",
            client_credentials=(CLIENT_ID, CLIENT_SECRET),
            transport=transport,
        )
    with rest, pytest.raises(RemoteUnavailable) as caught:
        rest.get_marcxml(42)
    assert "died" in (caught.value.body or "")
    for secret in (seen[0], PASSWORD, CLIENT_SECRET):
        assert secret not in str(caught.value)


def test_token_error_never_quotes_the_secret_koha_echoes() -> None:
    rest = KohaRest(
        "http://koha.invalid",
        client_credentials=(CLIENT_ID, CLIENT_SECRET),
        transport=httpx.MockTransport(echoing_500),
    )
    with rest, pytest.raises(RemoteUnavailable) as caught:
        rest.get_marcxml(42)
    assert caught.value.status == 500
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in (caught.value.body or "")


# -- A4 cover upload -------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_upload_cover_returns_the_new_imagenumber(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    koha = make_koha(generation)
    with koha.staff() as staff:
        number = staff.upload_cover(42, jpeg())
    assert number is not None
    assert koha.state.covers_of(42) == [number]
    assert koha.state.calls["POST /cgi-bin/koha/tools/upload-file.pl"] == 1


def test_second_upload_replaces_the_first(koha: Koha) -> None:
    koha.state.set_syspref("AllowMultipleCovers", True)  # replace=1 must still replace
    with koha.staff() as staff:
        first = staff.upload_cover(42, jpeg("red"))
        second = staff.upload_cover(42, jpeg("green"))
    assert first != second
    assert koha.state.covers_of(42) == [second]


def test_upload_logs_in_again_when_the_session_expired(koha: Koha) -> None:
    with koha.staff() as staff:
        staff.upload_cover(42, jpeg("red"))
        koha.state.expire_tokens()
        number = staff.upload_cover(42, jpeg("blue"))
    assert koha.state.covers_of(42) == [number]
    assert koha.state.calls["POST /cgi-bin/koha/mainpage.pl"] == 2  # two logins


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_upload_of_a_non_image_is_refused_with_opnimg(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    """A4: Koha shows only text (no code) in the alert; the connector names the code and says
    what it means."""
    koha = make_koha(generation)
    with koha.staff() as staff, pytest.raises(RemoteRefused) as caught:
        staff.upload_cover(42, b"%PDF-1.7 definitely not a picture", "cover.pdf")
    message = str(caught.value)
    assert "Koha could not read the file as an image (GIF, JPEG, PNG or XPM) (OPNIMG)" in message
    assert "Cannot process file as an image." in caught.value.body
    assert not isinstance(caught.value, AuthFailed)
    assert koha.state.covers_of(42) == []


def test_upload_for_an_unknown_biblio_is_dberr_on_2211(make_koha: Callable[..., Koha]) -> None:
    koha = make_koha("22.11")
    with koha.staff() as staff, pytest.raises(RemoteRefused) as caught:
        staff.upload_cover(4242, jpeg())
    assert "Koha could not store the image" in str(caught.value)
    assert "(DBERR)" in str(caught.value)


def test_upload_for_an_unknown_biblio_is_a_500_on_2405(koha: Koha) -> None:
    """A4 [P] (main-derived upload-cover-image.pl): the biblio is looked up before anything
    else, and an unknown one dies with a 500."""
    with koha.staff() as staff, pytest.raises(RemoteUnavailable) as caught:
        staff.upload_cover(4242, jpeg())
    assert caught.value.status == 500


def cover_answer(markup: str) -> str:
    return f"<html><body><h1>Upload local cover image</h1>{markup}</body></html>"


@pytest.mark.parametrize(
    ("text", "code", "meaning"),
    [
        (
            "Failed to unzip archive.<br />Please ensure you are uploading a valid zip file and "
            "try again.",
            "UZIPFAIL",
            "Koha could not unzip the upload",
        ),
        (
            "Cannot open folder index (idlink.txt or datalink.txt) to read.<br />Please verify "
            "that it exists.",
            "OPNLINK",
            "idlink.txt",
        ),
        (
            "Cannot process file as an image.<br />Please ensure you only upload GIF, JPEG, PNG, "
            "or XPM images.",
            "OPNIMG",
            "Koha could not read the file as an image",
        ),
        (
            "Unrecognized or missing field delimiter.<br />Please verify that you are using "
            "either a single quote or a tab.",
            "DELERR",
            "delimiter",
        ),
        ("Unable to save image to database.", "DBERR", "Koha could not store the image"),
        (
            "An unknown error has occurred.<br />Please review the error log for more details.",
            "unknown",
            "Koha reported an unknown error",
        ),
    ],
)
@pytest.mark.parametrize(
    "wrap",
    [
        # main (upload-images.tt, Bootstrap 5): results in #upload_results, alert-warning
        lambda text: (
            '<h2>Image upload results :</h2><div id="upload_results"><div class="alert '
            f'alert-warning"><p><strong>{text}</strong></p></div><h3>0 images found</h3></div>'
        ),
        # older releases: a "dialog alert" inside the results list
        lambda text: (
            '<p>Image upload results :</p><ul><li>0 images found</li><div class="dialog'
            f' alert"><p><b>{text}</b></p></div></li></ul>'
        ),
    ],
    ids=["main", "older"],
)
def test_cover_error_maps_koha_s_texts(
    text: str, code: str, meaning: str, wrap: Callable[[str], str]
) -> None:
    """A4 [V] koha-tmpl/.../tools/upload-images.tt: each error code is shown as its text only."""
    found = cover_error(lxml.html.fromstring(cover_answer(wrap(text))))
    assert found is not None
    assert found[0] == code
    assert meaning in found[1]


def test_cover_error_in_a_translated_older_page_is_unknown() -> None:
    """A4: a translated Koha shows the error in its own language; in the older markup (no
    #upload_results) the non-empty div.dialog.alert must still count as an error, or a failed
    upload would pass for a success."""
    page = (
        "<p>Результати завантаження зображень :</p><ul><li>0 зображень знайдено</li>"
        '<div class="dialog alert"><p><b>Не вдається обробити файл як зображення.</b></p>'
        "</div></li></ul>"
    )
    found = cover_error(lxml.html.fromstring(cover_answer(page)))
    assert found is not None and found[0] == "unknown"


def test_cover_error_ignores_hidden_empty_alerts_and_pages_without_results() -> None:
    page = (
        '<div id="email_error" class="alert alert-warning" style="display: none;"></div>'
        '<ul class="thumbnails"><li id="imagenumber-5" class="thumbnail"></li></ul>'
    )
    assert cover_error(lxml.html.fromstring(cover_answer(page))) is None


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_login_of_a_two_factor_user_says_so(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    """A3 [V] auth.tt + C4::Auth::checkauth: a 2FA user gets a second #loginform asking for
    otp_token; the connector must say that, not "wrong login fields"."""
    koha = make_koha(generation)
    koha.state.set_syspref("TwoFactorAuthentication", "enabled")
    koha.state.add_staff_user("twofa", "Two-Factor-Pw-4", two_factor=True)
    with koha.staff("twofa", "Two-Factor-Pw-4") as staff, pytest.raises(AuthFailed) as caught:
        staff.upload_cover(42, jpeg())
    message = str(caught.value)
    assert "the Koha staff user 'twofa' has two-factor authentication on" in message
    assert "use a staff user without it for cover uploads" in message
    assert "Two-Factor-Pw-4" not in message
    assert koha.state.calls["POST /cgi-bin/koha/tools/upload-file.pl"] == 0


def test_login_when_koha_enforces_two_factor_setup_says_so(koha: Koha) -> None:
    koha.state.set_syspref("TwoFactorAuthentication", "enforced")
    with koha.staff() as staff, pytest.raises(AuthFailed) as caught:
        staff.login()
    message = str(caught.value)
    assert f"Koha wants the staff user {USER!r} to set up two-factor authentication" in message
    assert "TwoFactorAuthentication" in message


def test_upload_without_the_permission_is_auth_failed(koha: Koha) -> None:
    with koha.staff(READER, READER_PASSWORD) as staff, pytest.raises(AuthFailed) as caught:
        staff.upload_cover(42, jpeg())
    assert READER in str(caught.value) and "permission" in str(caught.value)
    assert_no_secret(caught.value)
    assert koha.state.covers_of(42) == []


def test_upload_failure_under_latency_is_remote_unavailable(koha: Koha) -> None:
    with koha.staff(timeout=0.3) as staff:
        staff.login()
        koha.state.latency = 1.0
        with pytest.raises(RemoteUnavailable):
            staff.upload_cover(42, jpeg())


def test_upload_5xx_is_remote_unavailable(koha: Koha) -> None:
    koha.state.fail_next(1, status=500, path_prefix="/cgi-bin/koha/tools/upload-file.pl")
    with koha.staff() as staff, pytest.raises(RemoteUnavailable):
        staff.upload_cover(42, jpeg())


# -- OPAC URLs -------------------------------------------------------------------------------------


def test_opac_cover_urls_serve_the_cover(koha: Koha) -> None:
    with koha.staff() as staff:
        number = staff.upload_cover(42, jpeg())
    by_number = opac_cover_url(koha.url + "/", imagenumber=number, biblionumber=42)
    fallback = opac_cover_url(koha.url, imagenumber=None, biblionumber=42)
    assert by_number == f"{koha.url}/cgi-bin/koha/opac-image.pl?imagenumber={number}"
    assert fallback == f"{koha.url}/cgi-bin/koha/opac-image.pl?biblionumber=42"
    with httpx.Client(timeout=5) as public:
        image = public.get(by_number)
        same = public.get(fallback)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    assert same.content == image.content
    assert Image.open(io.BytesIO(image.content)).size == (120, 180)
