"""Contract tests of the emulated Koha, with raw httpx requests: each test names the contract
point (A1..A4 of koha-dspace-contracts.md) it pins down, so the emulator stays faithful to Koha
rather than to our client."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

import httpx
import lxml.html
import pymarc
import pytest
from PIL import Image

from shelfwork.sandbox.koha import KohaState
from tests.support import koha as support
from tests.support.koha import (
    MAINPAGE,
    Koha,
    hidden_inputs,
    koha_factory,
    login_form,
    meta_csrf,
    process,
    upload_temp,
)

USER, PASSWORD = "cataloguer", "Pa55-word!"
READER, READER_PASSWORD = "reader", "reader-pw"
CLIENT_ID, CLIENT_SECRET = "client-1", "client-secret-1"
MARCXML = "application/marcxml+xml"


def marc_record(title: str, *, uri: str = "http://old.example/1") -> pymarc.Record:
    record = pymarc.Record()
    record.add_field(
        pymarc.Field(tag="001", data=f"id-{title}"),
        pymarc.Field(tag="005", data="20200101000000.0"),
        pymarc.Field(
            tag="245",
            indicators=pymarc.Indicators("1", "0"),
            subfields=[pymarc.Subfield("a", f"{title} /"), pymarc.Subfield("c", "A. Author.")],
        ),
        pymarc.Field(
            tag="500",
            indicators=pymarc.Indicators(" ", " "),
            subfields=[pymarc.Subfield("a", "A general note.")],
        ),
        pymarc.Field(
            tag="956",
            indicators=pymarc.Indicators("4", "0"),
            subfields=[pymarc.Subfield("u", uri)],
        ),
    )
    return record


def marcxml(record: pymarc.Record) -> bytes:
    return pymarc.record_to_xml(record, namespace=True)


def parsed(body: bytes) -> pymarc.Record:
    records = pymarc.parse_xml_to_array(io.BytesIO(body))
    assert records and records[0] is not None
    return records[0]


def jpeg(width: int = 50, height: int = 80, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG")
    return buffer.getvalue()


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return support.basic(user, password)


def with_users_and_a_record(state: KohaState) -> None:
    state.add_staff_user(USER, PASSWORD)
    state.add_staff_user(READER, READER_PASSWORD, {"catalogue"})
    state.add_oauth_client(CLIENT_ID, CLIENT_SECRET, USER)
    state.add_record(42, marcxml(marc_record("Forty-two")))


@pytest.fixture
def make_koha() -> Iterator[Callable[..., Koha]]:
    with koha_factory(with_users_and_a_record, Koha) as make:
        yield make


@pytest.fixture
def koha(make_koha: Callable[..., Koha]) -> Koha:
    return make_koha()


def staff_login(client: httpx.Client, generation: str, path: str = MAINPAGE) -> httpx.Response:
    """Log in as USER, as a browser does."""
    return support.staff_login(client, generation, USER, PASSWORD, path)


# -- A1 REST read and write ------------------------------------------------------------------------


def test_a1_get_with_accept_marcxml_returns_the_stored_record(koha: Koha) -> None:
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML, **basic()})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MARCXML)
    assert response.content == koha.state.record(42)


def test_a1_get_with_accept_json_returns_a_biblio_object(koha: Koha) -> None:
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/42", headers={"Accept": "application/json", **basic()}
        )
    assert response.status_code == 200
    assert response.json()["biblio_id"] == 42
    assert response.json()["title"] == "Forty-two"


def test_a1_get_serves_iso2709_and_text_too(koha: Koha) -> None:
    with koha.client(headers=basic()) as client:
        marc = client.get("/api/v1/biblios/42", headers={"Accept": "application/marc"})
        text = client.get("/api/v1/biblios/42", headers={"Accept": "text/plain"})
    record = next(iter(pymarc.MARCReader(marc.content)))
    assert record is not None and record["245"]["a"] == "Forty-two /"
    assert text.status_code == 200 and "Forty-two" in text.text


def test_a1_get_with_an_empty_accept_is_406(koha: Koha) -> None:
    """A1 [V]: an empty Accept names no format, so respond_to falls back to the default
    format (html), which Biblios.pm `get` does not offer: its 406. The OpenAPI response check
    skips an empty Accept. (*/* and no header: tests/contracts/test_koha_contract.py.)"""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": "", **basic()})
    assert response.status_code == 406
    assert MARCXML in response.json()


def test_a1_get_with_a_known_but_unoffered_format_is_406(koha: Koha) -> None:
    """A1: `text/html, */*` passes the OpenAPI check (the wildcard) but respond_to knows html
    and offers no html, so Biblios.pm's `any` branch lists the types (406)."""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": "text/html, */*", **basic()})
    assert response.status_code == 406
    assert response.json() == [
        "application/json",
        MARCXML,
        "application/marc-in-json",
        "application/marc",
        "text/plain",
    ]


def test_a1_get_picks_the_highest_q(koha: Koha) -> None:
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/42",
            headers={"Accept": "application/marc;q=0.5, text/plain", **basic()},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


def test_a1_get_missing_record_is_404_json(koha: Koha) -> None:
    with koha.client() as client:
        response = client.get("/api/v1/biblios/999", headers={"Accept": MARCXML, **basic()})
    assert response.status_code == 404
    assert response.json() == {
        "error": "Bibliographic record not found",
        "error_code": "not_found",
    }


def test_a1_put_replaces_the_whole_record(koha: Koha) -> None:
    new = pymarc.Record()
    new.add_field(
        pymarc.Field(tag="005", data="19990101000000.0"),
        pymarc.Field(
            tag="245",
            indicators=pymarc.Indicators("0", "0"),
            subfields=[pymarc.Subfield("a", "Replaced")],
        ),
    )
    with koha.client(headers=basic()) as client:
        put = client.put(
            "/api/v1/biblios/42", content=marcxml(new), headers={"Content-Type": MARCXML}
        )
        got = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
    assert put.status_code == 200 and put.json() == {"id": 42}
    record = parsed(got.content)
    assert record["245"]["a"] == "Replaced"
    assert record.get_fields("500") == [] and record.get_fields("956") == []  # gone: replaced
    # ModBiblio: 999$c/$d carry the ids and 005 is the time of the change
    assert record["999"]["c"] == "42" and record["999"]["d"] == "42"
    assert record["005"].data.startswith(time.strftime("%Y"))


def test_a1_put_with_another_content_type_is_406(koha: Koha) -> None:
    with koha.client(headers=basic()) as client:
        response = client.put(
            "/api/v1/biblios/42",
            content=marcxml(marc_record("X")),
            headers={"Content-Type": "application/xml"},
        )
    assert response.status_code == 406
    assert MARCXML in response.json()
    assert parsed(koha.state.record(42))["245"]["a"] == "Forty-two /"


DOCTYPE_BODY = (
    b'<?xml version="1.0"?>\n<!DOCTYPE record [<!ENTITY t "Evil">]>\n'
    b'<record xmlns="http://www.loc.gov/MARC21/slim"><datafield tag="245" ind1="0" ind2="0">'
    b'<subfield code="a">&t;</subfield></datafield></record>'
)


@pytest.mark.parametrize("checks", [False, True], ids=["released", "main"])
@pytest.mark.parametrize("body", [b"", DOCTYPE_BODY], ids=["empty", "doctype"])
def test_a1_put_body_the_parser_dies_on(koha: Koha, body: bytes, checks: bool) -> None:
    """A1: released Koha answers 500 internal_server_error, main 400 bad_record; the record is
    never touched. (A DOCTYPE counts as a parse failure here; Koha's own handling is [U].)"""
    koha.state.put_checks_record = checks
    before = koha.state.record(42)
    with koha.client(headers=basic()) as client:
        response = client.put("/api/v1/biblios/42", content=body, headers={"Content-Type": MARCXML})
    if checks:
        assert response.status_code == 400
        assert response.json()["error_code"] == "bad_record"
    else:
        assert response.status_code == 500
        assert response.json()["error_code"] == "internal_server_error"
    assert koha.state.record(42) == before


def test_a1_put_on_a_locked_record_is_403(koha: Koha) -> None:
    koha.state.locked.add(42)
    with koha.client(headers=basic()) as client:
        response = client.put(
            "/api/v1/biblios/42",
            content=marcxml(marc_record("X")),
            headers={"Content-Type": MARCXML},
        )
    assert response.status_code == 403
    assert response.json() == {"error": "You do not have permission to edit a locked record"}


def test_a1_put_missing_record_is_404(koha: Koha) -> None:
    with koha.client(headers=basic()) as client:
        response = client.put(
            "/api/v1/biblios/7",
            content=marcxml(marc_record("X")),
            headers={"Content-Type": MARCXML},
        )
    assert response.status_code == 404


def test_a1_overlay_rule_silently_keeps_old_956(koha: Koha) -> None:
    """A1: since bug 35380 an overlay rule may keep old fields although the PUT answers 200."""
    koha.state.overlay_keep.add("956")
    changed = marc_record("Forty-two", uri="http://new.example/2")
    changed.add_field(
        pymarc.Field(
            tag="856",
            indicators=pymarc.Indicators("4", "0"),
            subfields=[pymarc.Subfield("u", "http://new.example/856")],
        )
    )
    with koha.client(headers=basic()) as client:
        put = client.put(
            "/api/v1/biblios/42", content=marcxml(changed), headers={"Content-Type": MARCXML}
        )
        got = parsed(client.get("/api/v1/biblios/42", headers={"Accept": MARCXML}).content)
    assert put.status_code == 200
    assert [f["u"] for f in got.get_fields("956")] == ["http://old.example/1"]
    assert [f["u"] for f in got.get_fields("856")] == ["http://new.example/856"]


# -- A2 REST authentication ------------------------------------------------------------------------


def test_a2_no_credentials_is_401_authentication_failure(koha: Koha) -> None:
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication failure."}


def test_a2_basic_auth_disabled_by_syspref_is_401(koha: Koha) -> None:
    koha.state.set_syspref("RESTBasicAuth", False)
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML, **basic()})
    assert response.status_code == 401
    assert response.json() == {"error": "Basic authentication disabled"}


def test_a2_missing_permission_is_403_with_required_permissions(koha: Koha) -> None:
    with koha.client(headers=basic(READER, READER_PASSWORD)) as client:
        read = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
        write = client.put(
            "/api/v1/biblios/42",
            content=marcxml(marc_record("X")),
            headers={"Content-Type": MARCXML},
        )
    assert read.status_code == 200
    assert write.status_code == 403
    assert write.json() == {
        "error": "Authorization failure. Missing required permission(s).",
        "required_permissions": {"editcatalogue": "edit_catalogue"},
    }


def test_a2_client_credentials_token_authorizes_bearer_requests(koha: Koha) -> None:
    with koha.client() as client:
        token = client.post(
            "/api/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        )
        assert token.status_code == 200
        body = token.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
        got = client.get(
            "/api/v1/biblios/42",
            headers={"Accept": MARCXML, "Authorization": f"Bearer {body['access_token']}"},
        )
        assert got.status_code == 200
        koha.state.expire_tokens()
        expired = client.get(
            "/api/v1/biblios/42",
            headers={"Accept": MARCXML, "Authorization": f"Bearer {body['access_token']}"},
        )
    assert expired.status_code == 401
    assert expired.json() == {"error": "Authentication failure."}


def test_a2_token_expires_after_its_ttl(koha: Koha) -> None:
    now = [1_000_000.0]
    koha.state.clock = lambda: now[0]
    with koha.client() as client:
        token = client.post(
            "/api/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        ).json()["access_token"]
        headers = {"Accept": MARCXML, "Authorization": f"Bearer {token}"}
        now[0] += koha.state.token_ttl - 1
        assert client.get("/api/v1/biblios/42", headers=headers).status_code == 200
        now[0] += 1
        assert client.get("/api/v1/biblios/42", headers=headers).status_code == 401


def test_a2_bad_bearer_does_not_fall_back_to_the_cookie(koha: Koha) -> None:
    with koha.client() as client:
        staff_login(client, "24.05")
        cookie_only = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
        with_bad_bearer = client.get(
            "/api/v1/biblios/42", headers={"Accept": MARCXML, "Authorization": "Bearer nope"}
        )
    assert cookie_only.status_code == 200
    assert with_bad_bearer.status_code == 401


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "who", "client_secret": "x"},
            403,
            "unauthorized_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "x"},
            403,
            "access_denied",
        ),
        (
            {"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            400,
            "Unimplemented grant type",
        ),
    ],
)
def test_a2_token_endpoint_refusals(
    koha: Koha, form: dict[str, str], status: int, error: str
) -> None:
    with koha.client() as client:
        response = client.post("/api/v1/oauth/token", data=form)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_a2_client_credentials_syspref_off_is_400(koha: Koha) -> None:
    koha.state.set_syspref("RESTOAuth2ClientCredentials", False)
    with koha.client() as client:
        response = client.post(
            "/api/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
        )
    assert response.status_code == 400
    assert response.json() == {"error": "Unimplemented grant type"}


def test_a2_cookie_put_without_csrf_token_is_403_on_2405(koha: Koha) -> None:
    """A2 [P]: with a CGISESSID cookie a PUT needs the session's CSRF token — even when it also
    sends Basic credentials, which is why REST must not share the staff cookie jar."""
    body = marcxml(marc_record("Cookie"))
    with koha.client() as client:
        page = staff_login(client, "24.05")
        token = meta_csrf(page.text)
        assert token
        bare = client.put("/api/v1/biblios/42", content=body, headers={"Content-Type": MARCXML})
        with_basic = client.put(
            "/api/v1/biblios/42", content=body, headers={"Content-Type": MARCXML, **basic()}
        )
        with_token = client.put(
            "/api/v1/biblios/42",
            content=body,
            headers={"Content-Type": MARCXML, "CSRF-TOKEN": token},
        )
    assert (bare.status_code, bare.text) == (403, "Wrong CSRF token")
    assert with_basic.status_code == 403
    assert with_token.status_code == 200


def test_a2_cookie_put_needs_no_csrf_token_on_2211(make_koha: Callable[..., Koha]) -> None:
    koha = make_koha("22.11")
    with koha.client() as client:
        staff_login(client, "22.11")
        response = client.put(
            "/api/v1/biblios/42",
            content=marcxml(marc_record("Cookie")),
            headers={"Content-Type": MARCXML},
        )
    assert response.status_code == 200


# -- A3 staff login --------------------------------------------------------------------------------


def test_a3_login_page_hidden_inputs_on_2405(koha: Koha) -> None:
    with koha.client() as client:
        page = client.get("/cgi-bin/koha/mainpage.pl")
        assert "CGISESSID" in client.cookies  # the pre-login session the token is tied to
    form = login_form(page.text)
    assert page.status_code == 200 and form is not None
    fields = hidden_inputs(form)
    assert fields["op"] == "cud-login"
    assert fields["koha_login_context"] == "intranet"
    assert fields["csrf_token"]
    names = set(form.xpath(".//input/@name"))
    assert {"login_userid", "login_password"} <= names
    assert not {"userid", "password"} & names


def test_a3_login_page_hidden_inputs_on_2211(make_koha: Callable[..., Koha]) -> None:
    koha = make_koha("22.11")
    with koha.client() as client:
        page = client.get("/cgi-bin/koha/mainpage.pl")
    form = login_form(page.text)
    assert form is not None
    assert hidden_inputs(form) == {"koha_login_context": "intranet"}
    assert {"userid", "password"} <= set(form.xpath(".//input/@name"))


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_a3_login_changes_the_session_and_shows_the_main_page(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    koha = make_koha(generation)
    with koha.client() as client:
        client.get("/cgi-bin/koha/mainpage.pl")
        before = client.cookies.get("CGISESSID")
        answer = staff_login(client, generation)
        after = client.cookies.get("CGISESSID")
    assert answer.status_code == 200
    assert login_form(answer.text) is None
    assert after and after != before
    assert (meta_csrf(answer.text) is not None) == (generation == "24.05")


def test_a3_token_from_before_login_is_refused_after_login(koha: Koha) -> None:
    with koha.client() as client:
        form = login_form(client.get("/cgi-bin/koha/mainpage.pl").text)
        assert form is not None
        old_token = hidden_inputs(form)["csrf_token"]
        answer = staff_login(client, "24.05")
        stale = client.post("/cgi-bin/koha/mainpage.pl", data={"csrf_token": old_token})
        fresh = client.post(
            "/cgi-bin/koha/mainpage.pl", data={"csrf_token": meta_csrf(answer.text)}
        )
    assert (stale.status_code, stale.text) == (403, "Wrong CSRF token")
    assert fresh.status_code == 200


def test_a3_bad_password_shows_the_login_page_with_an_error(koha: Koha) -> None:
    with koha.client() as client:
        answer = support.staff_login(client, "24.05", USER, "wrong")
    assert login_form(answer.text) is not None
    assert "Invalid username or password" in answer.text


def test_a3_csrf_middleware_rules_on_2405(koha: Koha) -> None:
    with koha.client() as client:
        form = login_form(client.get("/cgi-bin/koha/mainpage.pl").text)
        assert form is not None
        token = hidden_inputs(form)["csrf_token"]
        missing = client.post("/cgi-bin/koha/mainpage.pl", data={"op": "cud-login"})
        wrong = client.post("/cgi-bin/koha/mainpage.pl", data={"csrf_token": "1,2"})
        bad_op = client.post("/cgi-bin/koha/mainpage.pl", data={"csrf_token": token, "op": "x"})
        get_cud = client.get("/cgi-bin/koha/mainpage.pl", params={"op": "cud-login"})
        header = client.post("/cgi-bin/koha/mainpage.pl", headers={"CSRF-TOKEN": token})
    for refused in (missing, wrong, bad_op, get_cud):
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/plain")
        assert refused.text == "Wrong CSRF token"
    assert header.status_code == 200  # the header form of the token passes (→ login page)


@pytest.mark.parametrize(("server", "client_generation"), [("24.05", "22.11"), ("22.11", "24.05")])
def test_a3_login_with_the_other_generations_fields_fails(
    make_koha: Callable[..., Koha], server: str, client_generation: str
) -> None:
    koha = make_koha(server)
    with koha.client() as client:
        form = login_form(client.get("/cgi-bin/koha/mainpage.pl").text)
        assert form is not None
        fields = hidden_inputs(form)
        if client_generation == "24.05":
            fields.update(op="cud-login", login_userid=USER, login_password=PASSWORD)
        else:
            fields.update(userid=USER, password=PASSWORD)
        answer = client.post(form.get("action"), data=fields)
    assert login_form(answer.text) is not None


def test_a3_login_from_a_record_page_returns_to_it(koha: Koha) -> None:
    koha.state.set_syspref("IntranetUserJS", "window.shelfworkLoaded = true;")
    with koha.client() as client:
        page = client.get("/cgi-bin/koha/catalogue/detail.pl", params={"biblionumber": 42})
        form = login_form(page.text)
        assert form is not None
        assert form.get("action") == "/cgi-bin/koha/catalogue/detail.pl"
        assert hidden_inputs(form)["biblionumber"] == "42"
        answer = staff_login(client, "24.05", "/cgi-bin/koha/catalogue/detail.pl?biblionumber=42")
        again = client.get("/cgi-bin/koha/catalogue/detail.pl", params={"biblionumber": 42})
    for shown in (answer, again):
        doc = lxml.html.fromstring(shown.text)
        assert doc.body.get("id") == "catalog_detail"
        assert doc.xpath("//div[@id='toolbar'][contains(@class, 'btn-toolbar')]//a")
        assert doc.xpath("//h1")[0].text_content() == "Forty-two"
        assert meta_csrf(shown.text)
        assert shown.text.rstrip().endswith(
            "<script>window.shelfworkLoaded = true;</script>\n</body>\n</html>"
        )


def test_a3_unknown_record_page_redirects_to_404(koha: Koha) -> None:
    with koha.client() as client:
        staff_login(client, "24.05")
        response = client.get("/cgi-bin/koha/catalogue/detail.pl", params={"biblionumber": 9})
    assert response.status_code == 302
    assert response.headers["location"] == "/cgi-bin/koha/errors/404.pl"


def test_a3_expired_session_gets_the_login_page_again(koha: Koha) -> None:
    with koha.client() as client:
        staff_login(client, "24.05")
        assert login_form(client.get("/cgi-bin/koha/mainpage.pl").text) is None
        koha.state.expire_tokens()
        page = client.get("/cgi-bin/koha/mainpage.pl")
    assert login_form(page.text) is not None
    assert "Session timed out" in page.text


def test_a3_user_without_the_page_permission_gets_no_page(koha: Koha) -> None:
    with koha.client() as client:
        main = support.staff_login(client, "24.05", READER, READER_PASSWORD)
        tools = client.get("/cgi-bin/koha/tools/upload-cover-image.pl")
    assert login_form(main.text) is None
    assert login_form(tools.text) is not None
    assert "You do not have permission to access this page" in tools.text


# -- A4 cover upload -------------------------------------------------------------------------------


def test_a4_temporary_upload_answers_json_labelled_text_html(koha: Koha) -> None:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        response = upload_temp(client, token, jpeg())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    body = response.json()
    assert body["status"] == "done" and body["errors"] is None
    assert isinstance(body["fileid"], str) and body["fileid"].isdigit()


def test_a4_temporary_upload_denied_without_session_or_permission(koha: Koha) -> None:
    with koha.client() as anonymous:
        form = login_form(anonymous.get("/cgi-bin/koha/mainpage.pl").text)
        assert form is not None
        no_session = upload_temp(anonymous, hidden_inputs(form)["csrf_token"], jpeg())
    with koha.client() as reader:
        token = meta_csrf(support.staff_login(reader, "24.05", READER, READER_PASSWORD).text)
        no_permission = upload_temp(reader, token, jpeg())
    for denied in (no_session, no_permission):
        assert denied.json() == {"status": "denied", "fileid": None, "errors": None}


def test_a4_temporary_upload_without_csrf_token_is_403_on_2405(koha: Koha) -> None:
    with koha.client() as client:
        staff_login(client, "24.05")
        response = upload_temp(client, None, jpeg())
    assert (response.status_code, response.text) == (403, "Wrong CSRF token")


def imagenumbers(page: str) -> list[int]:
    items = lxml.html.fromstring(page).xpath(
        "//li[@class='thumbnail'][starts-with(@id, 'imagenumber-')]"
    )
    return [int(item.get("id").split("-")[1]) for item in items]


def test_a4_cud_process_redirects_to_the_cover_list_on_2405(koha: Koha) -> None:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        fileid = upload_temp(client, token, jpeg()).json()["fileid"]
        response = process(client, fileid, token)
        listing = client.get("/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber=42")
    assert response.status_code == 302
    assert (
        response.headers["location"] == "/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber=42"
    )
    assert imagenumbers(listing.text) == koha.state.covers_of(42)
    number = koha.state.covers_of(42)[0]
    assert f'<li id="imagenumber-{number}" class="thumbnail">' in listing.text
    assert f'data-coverimg="{number}"' in listing.text


def test_a4_without_op_the_upload_is_not_processed_on_2405(koha: Koha) -> None:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        fileid = upload_temp(client, token, jpeg()).json()["fileid"]
        response = process(client, fileid, None, csrf_token=token or "")
    assert response.status_code == 200
    assert koha.state.covers_of(42) == []


def test_a4_any_uploadedfileid_is_processed_with_200_on_2211(
    make_koha: Callable[..., Koha],
) -> None:
    koha = make_koha("22.11")
    with koha.client() as client:
        staff_login(client, "22.11")
        fileid = upload_temp(client, None, jpeg()).json()["fileid"]
        response = process(client, fileid, None)
    assert response.status_code == 200
    assert "1 images found" in response.text
    assert len(koha.state.covers_of(42)) == 1


def test_a4_replace_leaves_exactly_one_cover(koha: Koha) -> None:
    koha.state.set_syspref("AllowMultipleCovers", True)
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        for color in ("red", "blue"):
            process(client, upload_temp(client, token, jpeg(color=color)).json()["fileid"], token)
        first = koha.state.covers_of(42)
        added = upload_temp(client, token, jpeg(color="green")).json()["fileid"]
        process(client, added, token, replace="")  # AllowMultipleCovers=1 and no replace: adds
        listing = client.get("/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber=42")
    assert len(first) == 1
    assert len(koha.state.covers_of(42)) == 2
    assert imagenumbers(listing.text) == koha.state.covers_of(42)


def test_a4_allow_multiple_covers_off_always_replaces(koha: Koha) -> None:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        for _ in range(2):
            fileid = upload_temp(client, token, jpeg()).json()["fileid"]
            process(client, fileid, token, replace="")
    assert len(koha.state.covers_of(42)) == 1


def test_a4_opac_image_by_imagenumber_and_by_biblionumber(koha: Koha) -> None:
    """A4 [V] Koha/CoverImage.pm: covers are stored as PNG, at most 600x800 (140x200 thumbs)."""
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        process(client, upload_temp(client, token, jpeg(1200, 900)).json()["fileid"], token)
    number = koha.state.covers_of(42)[0]
    with koha.client() as public:
        by_number = public.get("/cgi-bin/koha/opac-image.pl", params={"imagenumber": number})
        by_biblio = public.get("/cgi-bin/koha/opac-image.pl", params={"biblionumber": 42})
        thumb = public.get(
            "/cgi-bin/koha/opac-image.pl", params={"imagenumber": number, "thumbnail": 1}
        )
    assert by_number.status_code == 200 and by_number.headers["content-type"] == "image/png"
    assert by_biblio.content == by_number.content
    assert Image.open(io.BytesIO(by_number.content)).size == (600, 450)
    assert Image.open(io.BytesIO(thumb.content)).size == (140, 105)


def test_a4_opac_image_placeholder_when_syspref_off(koha: Koha) -> None:
    koha.state.set_syspref("OPACLocalCoverImages", False)
    with koha.client() as client:
        response = client.get("/cgi-bin/koha/opac-image.pl", params={"biblionumber": 42})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (1, 1)


@pytest.mark.parametrize("params", [{"imagenumber": "9999"}, {"biblionumber": "42"}])
def test_a4_opac_image_unknown_redirects_to_404(koha: Koha, params: dict[str, str]) -> None:
    with koha.client() as client:
        response = client.get("/cgi-bin/koha/opac-image.pl", params=params)
        followed = client.get("/cgi-bin/koha/opac-image.pl", params=params, follow_redirects=True)
    assert response.status_code == 302
    assert response.headers["location"] == "/cgi-bin/koha/errors/404.pl"
    assert followed.status_code == 404


def test_a4_staff_image_needs_a_session(koha: Koha) -> None:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05").text)
        process(client, upload_temp(client, token, jpeg()).json()["fileid"], token)
        number = koha.state.covers_of(42)[0]
        staff = client.get("/cgi-bin/koha/catalogue/image.pl", params={"imagenumber": number})
    with koha.client() as anonymous:
        refused = anonymous.get("/cgi-bin/koha/catalogue/image.pl", params={"imagenumber": number})
    assert staff.headers["content-type"] == "image/png"
    assert login_form(refused.text) is not None


# -- faults and the control API --------------------------------------------------------------------


def test_fault_fail_next_matches_the_path_prefix_and_counts_down(koha: Koha) -> None:
    koha.state.fail_next(2, status=502, path_prefix="/api/v1/biblios")
    with koha.client(headers={"Accept": MARCXML, **basic()}) as client:
        other = client.get("/cgi-bin/koha/mainpage.pl")
        statuses = [client.get("/api/v1/biblios/42").status_code for _ in range(3)]
    assert other.status_code == 200
    assert statuses == [502, 502, 200]
    assert koha.state.calls["GET /api/v1/biblios"] == 3


def test_fault_down_and_latency(koha: Koha) -> None:
    koha.state.down = True
    with koha.client() as client:
        assert client.get("/cgi-bin/koha/mainpage.pl").status_code == 503
        koha.state.down = False
        koha.state.latency = 0.3
        started = time.monotonic()
        assert client.get("/cgi-bin/koha/mainpage.pl").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_control_api_reports_and_switches_faults(koha: Koha) -> None:
    with koha.client() as client:
        assert client.get("/_sandbox/state").json()["records"] == [42]
        put = client.put("/_sandbox/records/43", content=marcxml(marc_record("Forty-three")))
        faults = client.post(
            "/_sandbox/faults",
            json={"latency": 0.0, "fail_next": {"count": 1, "status": 500, "path_prefix": "/api"}},
        )
        failed = client.get("/api/v1/biblios/43", headers={"Accept": MARCXML, **basic()})
        sysprefs = client.patch("/_sandbox/sysprefs", json={"RESTBasicAuth": False})
        bad = client.patch("/_sandbox/sysprefs", json={"NoSuchPref": 1})
        bad_record = client.put("/_sandbox/records/44", content=b"<nope/>")
    assert put.status_code == 200 and parsed(koha.state.record(43))["245"]["a"] == "Forty-three /"
    assert faults.json()["pending_failures"] == [
        {"remaining": 1, "status": 500, "path_prefix": "/api"}
    ]
    assert failed.status_code == 500
    assert sysprefs.json()["RESTBasicAuth"] is False and not koha.state.syspref("RESTBasicAuth")
    assert bad.status_code == 400 and bad_record.status_code == 400
