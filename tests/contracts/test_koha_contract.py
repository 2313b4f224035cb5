"""Contract tests of the emulated Koha against Koha's own tests and templates.

Every expectation here is taken from Koha-Community/Koha (read through the stored index; the
commit is named where the behaviour differs between versions) and the libraries whose behaviour
Koha's answers are made of, never from our client:

* `t/db_dependent/api/v1/auth_basic.t` and `Koha/REST/V1/Auth.pm` (`under`,
  `authenticate_api_request`, `_basic_auth`) for REST authentication;
* `t/db_dependent/api/v1/biblios.t` (`get() tests`, `put() tests`, `put() locked record`,
  `put() malformed body tests`), `Koha/REST/V1/Biblios.pm` (`update`),
  `api/v1/swagger/paths/biblios.yaml` and `Koha/REST/Plugin/{Responses,Exceptions}.pm` for
  biblios;
* `koha-tmpl/intranet-tmpl/prog/en/modules/tools/upload-images.tt` and
  `tools/upload-cover-image.pl` for the cover upload page;
* `koha-tmpl/intranet-tmpl/prog/en/modules/auth.tt`, `includes/auth-two-factor.inc`,
  `C4/Auth.pm` (`checkauth`) and `t/db_dependent/Auth.t` for the login page and the two-factor
  prompt;
* Mojolicious (`respond_to`, `accepts`, Types `detect`), Mojolicious::Plugin::OpenAPI 5.09
  (`_render`) and JSON::Validator (OpenAPIv2 `_validate_body`, `negotiate_content_type`,
  Error) for the Accept handling, MARC::Record (`MARC::File::USMARC::decode`) for ISO 2709.

An emulator that drifts from these shapes fails here. Marks as in the contract notes: [V]
read in the source, [P] seen in a fork or one version only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx
import lxml.html
import pymarc
import pytest
from PIL import Image

from shelfwork.sandbox.koha import KohaState
from tests.support.koha import (
    Koha,
    basic,
    koha_factory,
    login_form,
    meta_csrf,
    process,
    staff_login,
    upload_temp,
)

USER, PASSWORD = "tomasito", "AbcdEFG123"  # auth_basic.t's patron and password
READER, READER_PASSWORD = "reader", "thePassword123"  # biblios.t's password, flags 0 + catalogue
TWOFA, TWOFA_PASSWORD = "twofa", "Two-Factor-Pw-9"
MARCXML = "application/marcxml+xml"

#: biblios.yaml: what GET /biblios/{biblio_id} produces, in the spec's order
PRODUCES = [
    "application/json",
    MARCXML,
    "application/marc-in-json",
    "application/marc",
    "text/plain",
]
#: Koha/REST/Plugin/Exceptions.pm `unhandled_exception`
INTERNAL_ERROR = {
    "error": "Something went wrong, check Koha logs for details.",
    "error_code": "internal_server_error",
}
#: Biblios.pm `update` (main, commit 034db09)
BAD_RECORD = {"error": "Unable to parse record from request body", "error_code": "bad_record"}


def record_xml(title: str) -> bytes:
    record = pymarc.Record()
    record.add_field(
        pymarc.Field(tag="001", data="2504398"),
        pymarc.Field(
            tag="245",
            indicators=pymarc.Indicators("1", "0"),
            subfields=[pymarc.Subfield("a", title)],
        ),
    )
    return pymarc.record_to_xml(record, namespace=True)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 60), "teal").save(buffer, "JPEG")
    return buffer.getvalue()


def with_the_tests_patrons(state: KohaState) -> None:
    state.add_staff_user(USER, PASSWORD)
    state.add_staff_user(READER, READER_PASSWORD, {"catalogue"})
    state.add_staff_user(TWOFA, TWOFA_PASSWORD, two_factor=True)
    state.add_record(42, record_xml("The unbearable lightness of being"))


@pytest.fixture
def make_koha() -> Iterator[Callable[..., Koha]]:
    with koha_factory(with_the_tests_patrons, Koha) as make:
        yield make


@pytest.fixture
def koha(make_koha: Callable[..., Koha]) -> Koha:
    return make_koha()


# -- REST authentication: auth_basic.t 'failure tests' + Auth.pm ---------------------------------


def test_basic_auth_wrong_password_is_403_invalid_password(koha: Koha) -> None:
    """auth_basic.t 'failure tests': status_is(403, 'Failed authentication, invalid password'),
    /error 'Invalid password'. Auth.pm `under` renders Authorization::Unauthorized with its
    (here undefined) required_permissions, so the key is present and null. [V]"""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers=basic(USER, "123456789"))
    assert response.status_code == 403
    assert response.json() == {"error": "Invalid password", "required_permissions": None}


def test_basic_auth_unknown_user_is_the_same_403(koha: Koha) -> None:
    """Auth.pm `_basic_auth`: checkpw_internal fails for an unknown userid as for a wrong
    password, so no answer tells which of the two was wrong. [V]"""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers=basic("nobody", PASSWORD))
    assert response.status_code == 403
    assert response.json() == {"error": "Invalid password", "required_permissions": None}


def test_basic_auth_expired_password_is_403_password_has_expired(koha: Koha) -> None:
    """auth_basic.t 'failure tests': an expired password_expiration_date gives
    status_is(403) and /error 'Password has expired'. [V]"""
    koha.state.expire_password(USER)
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers=basic(USER, PASSWORD))
    assert response.status_code == 403
    assert response.json() == {"error": "Password has expired", "required_permissions": None}


def test_no_credentials_is_401_authentication_failure(koha: Koha) -> None:
    """auth_basic.t 'failure tests': status_is(401, 'No credentials passed'); the body is
    Auth.pm's Authentication::Required 'Authentication failure.'. [V]"""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication failure."}


def test_basic_auth_disabled_is_401(koha: Koha) -> None:
    """auth_basic.t 'failure tests': RESTBasicAuth 0 → status_is(401, 'Basic authentication is
    disabled'), /error 'Basic authentication disabled'. [V]"""
    koha.state.set_syspref("RESTBasicAuth", False)
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers=basic(USER, PASSWORD))
    assert response.status_code == 401
    assert response.json() == {"error": "Basic authentication disabled"}


def test_bad_bearer_token_is_401(koha: Koha) -> None:
    """Auth.pm `authenticate_api_request`: a Bearer that fails never falls back. [V]"""
    with koha.client() as client:
        response = client.get("/api/v1/biblios/42", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication failure."}


@pytest.mark.parametrize(
    ("method", "permissions"),
    [("GET", {"catalogue": "1"}), ("PUT", {"editcatalogue": "edit_catalogue"})],
)
def test_missing_permission_is_403_naming_the_spec_s_permissions(
    koha: Koha, method: str, permissions: dict[str, str]
) -> None:
    """biblios.t 'get() tests' / 'put() tests': a patron without the flag gets 403; the
    permissions are biblios.yaml's x-koha-authorization; auth_basic.t checks /error
    'Authorization failure. Missing required permission(s).'. [V]"""
    koha.state.add_staff_user("flagless", "thePassword123", set())
    with koha.client() as client:
        response = client.request(
            method,
            "/api/v1/biblios/42",
            headers={**basic("flagless", "thePassword123"), "Content-Type": MARCXML},
            content=record_xml("X") if method == "PUT" else None,
        )
    assert response.status_code == 403
    assert response.json() == {
        "error": "Authorization failure. Missing required permission(s).",
        "required_permissions": permissions,
    }


# -- GET /biblios/{biblio_id}: biblios.t 'get() tests' ------------------------------------------


def test_get_with_an_accept_outside_the_spec_is_400(koha: Koha) -> None:
    """biblios.t 'get() tests': Accept 'application/weird+format' → status_is(400). [V] How:
    respond_to finds no format and Biblios.pm `get` renders its 406 through the `openapi`
    handler, whose response validation (Mojolicious::Plugin::OpenAPI 5.09 `_render`,
    JSON::Validator OpenAPIv2 `_validate_body`) finds the Accept outside `produces` and answers
    400 {errors, status} with JSON::Validator::Error's 'Expected %1 - got %3.'. [V]"""
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/42",
            headers={**basic(READER, READER_PASSWORD), "Accept": "application/weird+format"},
        )
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "message": f"Expected {', '.join(PRODUCES)} - got application/weird+format.",
                "path": "/header/Accept",
            }
        ],
        "status": 400,
    }


@pytest.mark.parametrize("accept", ["*/*", None], ids=["wildcard", "absent"])
def test_get_with_a_wildcard_or_no_accept_is_406_listing_the_types(
    koha: Koha, accept: str | None
) -> None:
    """Mojolicious (mojo b4de430) `respond_to`: with no format detected from the Accept header
    (Types `detect` maps no type for */*) it tries the renderer's default_format, 'html', which
    Biblios.pm `get` does not offer, so its `any` branch renders the 406 list. The openapi
    response check then passes: */* negotiates by wildcard and an absent Accept is not
    checked (`_validate_body` runs only `if ($val->{accept})`). [V]"""
    with koha.client() as client:
        client.headers.update(basic(READER, READER_PASSWORD))
        if accept is None:
            del client.headers["accept"]  # httpx sends */* unless told otherwise
        else:
            client.headers["accept"] = accept
        response = client.get("/api/v1/biblios/42")
    assert ("accept" in response.request.headers) == (accept is not None)
    assert response.status_code == 406
    assert response.json() == PRODUCES


def test_get_naming_json_anywhere_in_the_accept_is_the_json_object(koha: Koha) -> None:
    """Biblios.pm `get` matches 'application/json' anywhere in the Accept before anything else
    and renders with `json =>`, which the openapi handler never validates: even a q=0 JSON gets
    JSON. [V]"""
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/42",
            headers={
                **basic(READER, READER_PASSWORD),
                "Accept": "application/json;q=0, application/marcxml+xml",
            },
        )
    assert response.status_code == 200
    assert response.json()["biblio_id"] == 42


def test_get_of_a_missing_biblio_with_a_foreign_accept_is_400(koha: Koha) -> None:
    """Responses.pm `render_resource_not_found` renders through the `openapi` handler, so its
    404 gets the same Accept check as any other error answer. [V]"""
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/999",
            headers={**basic(READER, READER_PASSWORD), "Accept": "text/html"},
        )
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "/header/Accept"


@pytest.mark.parametrize("accept", PRODUCES)
def test_get_in_each_format_the_spec_produces_is_200(koha: Koha, accept: str) -> None:
    """biblios.t 'get() tests': status_is(200) for each of the five types. [V]"""
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/42", headers={**basic(READER, READER_PASSWORD), "Accept": accept}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(accept)
    if accept == "application/json":
        assert response.json()["title"] == "The unbearable lightness of being"


def test_get_of_a_deleted_biblio_is_404_not_found(koha: Koha) -> None:
    """biblios.t 'get() tests' (main): status_is(404), /error 'Bibliographic record not found';
    error_code from Responses.pm `render_resource_not_found`. Releases before it answered
    'Object not found.' [V]"""
    with koha.client() as client:
        response = client.get(
            "/api/v1/biblios/999",
            headers={**basic(READER, READER_PASSWORD), "Accept": "application/marc"},
        )
    assert response.status_code == 404
    assert response.json() == {"error": "Bibliographic record not found", "error_code": "not_found"}


# -- PUT /biblios/{biblio_id}: biblios.t 'put() tests' and Biblios.pm `update` -------------------


def put_42(
    koha: Koha, body: bytes, content_type: str = MARCXML, accept: str | None = None
) -> httpx.Response:
    """PUT /api/v1/biblios/42 as USER (Basic), with this body and Content-Type."""
    headers = {**basic(USER, PASSWORD), "Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    with koha.client() as client:
        return client.put("/api/v1/biblios/42", content=body, headers=headers)


def test_put_answers_200_with_the_id(koha: Koha) -> None:
    """biblios.t 'put() tests': status_is(200)->json_has('/id'); Biblios.pm renders
    {id => $biblio->id}. [V]"""
    response = put_42(koha, record_xml("Introduction to Attic Greek (Using marcxml) /"))
    assert response.status_code == 200
    assert response.json() == {"id": 42}


def test_put_answer_200_ignores_the_accept_header(koha: Koha) -> None:
    """biblios.yaml: PUT's 200 response has no schema, so Mojolicious::Plugin::OpenAPI
    `_render` has no body parameter to check the Accept against (JSON::Validator OpenAPIv2
    `parameters_for_response` adds one only `if exists $response->{schema}`): a PUT that
    succeeds answers 200 whatever the Accept. [V]"""
    response = put_42(koha, record_xml("Accepted anyway"), accept=MARCXML)
    assert response.status_code == 200
    assert response.json() == {"id": 42}


def test_put_refusal_with_an_accept_outside_produces_is_400(koha: Koha) -> None:
    """Biblios.pm `update` renders its locked-record 403 with `openapi =>`; the 403 has a schema,
    so the response check compares the Accept with PUT's `produces` (application/json) and
    answers 400 instead. [V]"""
    koha.state.locked.add(42)
    response = put_42(koha, record_xml("X"), accept="text/html")
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {"message": "Expected application/json - got text/html.", "path": "/header/Accept"}
        ],
        "status": 400,
    }


def test_put_on_a_locked_record_is_403(koha: Koha) -> None:
    """biblios.t 'put() locked record': status_is(403), /error 'You do not have permission to
    edit a locked record'. [V]"""
    koha.state.locked.add(42)
    response = put_42(koha, record_xml("X"))
    assert response.status_code == 403
    assert response.json() == {"error": "You do not have permission to edit a locked record"}


def test_put_with_another_content_type_is_406_listing_the_accepted_ones(koha: Koha) -> None:
    """Biblios.pm `update`: any other Content-Type renders 406 with this list. [V]"""
    response = put_42(koha, b"{}", "text/plain")
    assert response.status_code == 406
    assert response.json() == [
        "application/json",
        MARCXML,
        "application/marc-in-json",
        "application/marc",
    ]


#: biblios.t 'put() malformed body tests' (main, commit 034db09): each is refused with 400
MALFORMED = [
    (
        "application/marc-in-json",
        b'{"leader":"00000nam a2200000 a 4500","fields":[{"245":{"ind1":"1","ind2":"0",'
        b'"subfields":[{"a":"STOP HERE ON PURPOSE!!!',
    ),
    ("application/marc-in-json", b'{"foo":"bar"}'),
    ("application/marc-in-json", b'{"leader":"00000nam a2200000 a 4500","fields":[]}'),
    (
        MARCXML,
        b'<?xml version="1.0" encoding="UTF-8"?><record><leader>00000nam a2200000 a 4500</leader>'
        b'<datafield tag="245" ind1="1" ind2="0"><subfield code="a">TRUNCATED',
    ),
    (
        MARCXML,
        b'<?xml version="1.0" encoding="UTF-8"?><record><leader>00000nam a2200000 a 4500'
        b"</leader></record>",
    ),
    ("application/marc", b"this is not a valid usmarc record"),
]
MALFORMED_IDS = [
    "mij-truncated",
    "mij-not-marc",
    "mij-no-fields",
    "xml-truncated",
    "xml-no-fields",
    "usmarc-garbage",
]


#: MARC::File::USMARC `decode` (gitpan/MARC-Record f50646b) does not die on a body whose first
#: five bytes are not a number: it returns an empty record with this warning, which Biblios.pm
#: `update` (main) appends to its error
USMARC_WARNING = 'Record length "this " is not numeric in record 1'


@pytest.mark.parametrize(("content_type", "body"), MALFORMED, ids=MALFORMED_IDS)
def test_put_malformed_body_is_400_bad_record_in_main(
    koha: Koha, content_type: str, body: bytes
) -> None:
    """biblios.t 'put() malformed body tests': status_is(400) and the biblio unchanged. The body
    is Biblios.pm `update`'s bad_record error (main, 2026), with the record's `warnings()`
    after a colon when the parser left any (only the ISO 2709 parser does here). [V]"""
    expected = dict(BAD_RECORD)
    if content_type == "application/marc":
        expected["error"] += f": {USMARC_WARNING}"
    koha.state.put_checks_record = True
    before = koha.state.record(42)
    response = put_42(koha, body, content_type)
    assert response.status_code == 400
    assert response.json() == expected
    assert koha.state.record(42) == before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [MALFORMED[0], MALFORMED[3]],
    ids=["mij-truncated", "xml-truncated"],
)
def test_put_unparsable_body_is_500_in_released_versions(
    koha: Koha, content_type: str, body: bytes
) -> None:
    """Biblios.pm `update` before the bad_record check (Koha-Community 51d5081, openfifth
    24.x copy): nothing catches the MARC parser's die, so `unhandled_exception` answers 500.
    [V] for the code path; that these two bodies make the parser die is inferred (main wraps
    the parsers in try/catch for them). Garbage ISO 2709 does not die (next test)."""
    before = koha.state.record(42)
    response = put_42(koha, body, content_type)
    assert response.status_code == 500
    assert response.json() == INTERNAL_ERROR
    assert koha.state.record(42) == before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [MALFORMED[4], MALFORMED[5]],
    ids=["xml-no-fields", "usmarc-garbage"],
)
def test_put_of_a_record_without_fields_empties_the_biblio_in_released_versions(
    koha: Koha, content_type: str, body: bytes
) -> None:
    """Biblios.pm `update` (main) says why it now checks `$record->fields`: the parsers return
    a record with no fields (for garbage ISO 2709 MARC::File::USMARC `decode` returns one with
    a warning instead of dying [V]), and released versions pass it to ModBiblio, blanking the
    biblio. The blanking is inferred from main's comment; the stored bytes are [U]."""
    response = put_42(koha, body, content_type)
    assert response.status_code == 200
    stored = pymarc.parse_xml_to_array(io.BytesIO(koha.state.record(42)))[0]
    assert stored is not None and stored.get("245") is None


# -- cover upload: upload-images.tt and upload-cover-image.pl ------------------------------------


def process_cover(
    koha: Koha, generation: str, data: bytes, biblionumber: str = "42"
) -> httpx.Response:
    with koha.client() as client:
        token = meta_csrf(staff_login(client, generation, USER, PASSWORD).text)
        fileid = upload_temp(client, token, data).json()["fileid"]
        return process(client, fileid, token, biblionumber=biblionumber)


def test_cover_error_is_text_in_div_alert_warning_without_a_code(koha: Koha) -> None:
    """upload-images.tt (main, commit 03b15b8): under `uploadimage`, an h2 'Image upload
    results :', then #upload_results holding div.alert.alert-warning with the error's two
    sentences in <p><strong>, then 'N images found'. No data-error, no code. [V]"""
    response = process_cover(koha, "24.05", b"%PDF-1.4 not an image")
    assert response.status_code == 200
    page = lxml.html.fromstring(response.text)
    assert [h.text_content() for h in page.xpath("//h2")] == ["Image upload results :"]
    alerts = page.xpath("//div[@id='upload_results']/div[@class='alert alert-warning']")
    assert len(alerts) == 1
    strong = alerts[0].xpath("./p/strong")[0]
    assert strong.text == "Cannot process file as an image."
    assert strong.xpath("./br") and strong.xpath("./br")[0].tail == (
        "Please ensure you only upload GIF, JPEG, PNG, or XPM images."
    )
    assert page.xpath("//*[@data-error]") == []
    assert "OPNIMG" not in response.text
    assert page.xpath("//div[@id='upload_results']/h3")[0].text_content() == "0 images found"


def test_cover_error_on_older_releases_is_a_dialog_alert(make_koha: Callable[..., Koha]) -> None:
    """upload-images.tt of the YUI era (Koha-Community 0ad9220, ~17.x): 'Image upload results :'
    in a <p>, the error in div.dialog.alert with <b>. No 20.x-23.x copy is in the index, so
    that 22.11 still had this markup is [U]; the connector reads both markups and any text.
    upload-cover-image.pl (01d5cfc): with replace, an unknown biblionumber dies inside the eval
    → DBERR, 'Unable to save image to database.'. [V]"""
    koha = make_koha("22.11")
    response = process_cover(koha, "22.11", jpeg(), biblionumber="777")
    assert response.status_code == 200
    page = lxml.html.fromstring(response.text)
    alert = page.xpath("//div[@class='dialog alert']")
    assert len(alert) == 1
    assert alert[0].xpath("./p/b")[0].text_content() == "Unable to save image to database."
    assert page.xpath("//*[@data-error]") == []


def test_cover_success_on_older_releases_shows_the_count(make_koha: Callable[..., Koha]) -> None:
    """upload-cover-image.pl (01d5cfc): a processed image sets total=1 and uploadimage; the
    template shows '[% total %] images found'. [V] (markup [P] as above)"""
    koha = make_koha("22.11")
    response = process_cover(koha, "22.11", jpeg())
    assert response.status_code == 200
    assert "1 images found" in response.text
    assert len(koha.state.covers_of(42)) == 1


def test_cover_success_redirects_to_the_cover_list_on_2405(koha: Koha) -> None:
    """upload-cover-image.pl (main-derived pders01 fork): no error and no zip results → redirect
    to upload-cover-image.pl?biblionumber=N. [P]"""
    response = process_cover(koha, "24.05", jpeg())
    assert response.status_code == 302
    assert response.headers["location"] == (
        "/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber=42"
    )


def test_cover_for_an_unknown_biblio_is_a_500_on_2405(koha: Koha) -> None:
    """upload-cover-image.pl (pders01 fork): `Koha::Biblios->find($biblionumber)` then
    `$biblio->cover_images` on undef dies before any processing → 500. [P]"""
    response = process_cover(koha, "24.05", jpeg(), biblionumber="777")
    assert response.status_code == 500
    assert koha.state.covers_of(777) == []


# -- staff login: auth.tt -------------------------------------------------------------------------


def test_page_without_its_permission_is_the_login_page_with_auth_tt_s_markers(koha: Koha) -> None:
    """auth.tt (openfifth 49e7476, Koha-Community 016105c): a logged-in user who lacks a
    page's permission gets the login page (200) with #login_error 'You do not have permission
    to access this page.' and, in this branch only, the a#previous_page and a#mainpage links
    (the language-independent marker). upload-cover-image.pl needs tools:
    upload_local_cover_images. [V]"""
    with koha.client() as client:
        staff_login(client, "24.05", READER, READER_PASSWORD)
        response = client.get("/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber=42")
    page = lxml.html.fromstring(response.text)
    assert response.status_code == 200
    assert login_form(response.text) is not None
    assert "You do not have permission to access this page." in " ".join(
        page.xpath("//div[@id='login_error']")[0].text_content().split()
    )
    assert page.xpath("//a[@id='previous_page']") and page.xpath("//a[@id='mainpage']")


# -- two-factor authentication: auth.tt and C4::Auth::checkauth ----------------------------------


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_two_factor_user_gets_a_second_loginform_asking_for_otp_token(
    make_koha: Callable[..., Koha], generation: str
) -> None:
    """C4::Auth `checkauth`: with TwoFactorAuthentication not 'disabled' and the patron's
    auth_method 'two-factor', a right password leaves the session 'waiting-for-2FA' and shows
    auth.tt's TwoFA_prompt: the same id="loginform", with otp_token instead of the user
    fields (24.05+: csrf_token and op=cud-login too), title 'Two-factor authentication'. [V]"""
    koha = make_koha(generation)
    koha.state.set_syspref("TwoFactorAuthentication", "enabled")
    with koha.client() as client:
        answer = staff_login(client, generation, TWOFA, TWOFA_PASSWORD)
        again = client.get("/cgi-bin/koha/mainpage.pl")
        code = {"otp_token": "123456", "koha_login_context": "intranet"}
        if generation == "24.05":
            code |= {"op": "cud-login", "csrf_token": meta_csrf(answer.text) or ""}
        wrong_code = client.post("/cgi-bin/koha/mainpage.pl", data=code)
    assert answer.status_code == 200
    for page in (answer, again):
        form = login_form(page.text)
        assert form is not None
        names = set(form.xpath(".//input/@name"))
        assert "otp_token" in names
        assert not {"login_userid", "login_password", "userid", "password"} & names
        assert ("csrf_token" in names) == (generation == "24.05")
        assert (
            lxml.html.fromstring(page.text)
            .findtext(".//title")
            .startswith("Two-factor authentication")
        )
    assert "Invalid two-factor code" in wrong_code.text  # the emulator knows no TOTP secret


def test_session_waiting_for_two_factor_is_not_logged_in(koha: Koha) -> None:
    """check_cookie_auth answers 'additional-auth-needed': upload-file.pl (status ne 'ok') is
    denied, and Auth.pm gives the REST cookie no user → 401. [V]"""
    koha.state.set_syspref("TwoFactorAuthentication", "enabled")
    with koha.client() as client:
        token = meta_csrf(staff_login(client, "24.05", TWOFA, TWOFA_PASSWORD).text)
        upload = client.post(
            "/cgi-bin/koha/tools/upload-file.pl",
            params={"temp": 1},
            files={"file": ("cover.jpg", jpeg(), "image/jpeg")},
            headers={"CSRF-TOKEN": token or ""},
        )
        rest = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
    assert upload.json() == {"status": "denied", "fileid": None, "errors": None}
    assert rest.status_code == 401
    assert rest.json() == {"error": "Authentication failure."}


def test_a_session_waiting_for_two_factor_is_logged_in_once_the_syspref_is_disabled(
    koha: Koha,
) -> None:
    """t/db_dependent/Auth.t (TwoFactorAuthentication subtest): with the syspref back to
    'disabled', check_cookie_auth answers 'ok' for a session still flagged waiting-for-2FA
    ('User authenticated, pref was disabled, access OK'), so REST with that cookie works. [V]"""
    koha.state.set_syspref("TwoFactorAuthentication", "enabled")
    with koha.client() as client:
        staff_login(client, "24.05", TWOFA, TWOFA_PASSWORD)
        waiting = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
        koha.state.set_syspref("TwoFactorAuthentication", "disabled")
        let_in = client.get("/api/v1/biblios/42", headers={"Accept": MARCXML})
    assert waiting.status_code == 401
    assert let_in.status_code == 200
    assert let_in.content == koha.state.record(42)


def test_enforced_two_factor_without_setup_shows_the_registration_form(koha: Koha) -> None:
    """C4::Auth `checkauth`: TwoFactorAuthentication 'enforced' and auth_method 'password' →
    'waiting-for-2FA-setup'; auth.tt's TwoFA_setup shows auth-two-factor.inc's
    #registration-form and no #loginform at all. [V]"""
    koha.state.set_syspref("TwoFactorAuthentication", "enforced")
    with koha.client() as client:
        answer = staff_login(client, "24.05", USER, PASSWORD)
    page = lxml.html.fromstring(answer.text)
    assert answer.status_code == 200
    assert login_form(answer.text) is None
    assert page.xpath("//div[@id='registration-form']//input[@id='pin_code']")
    assert page.findtext(".//title").startswith("Two-factor authentication setup")
