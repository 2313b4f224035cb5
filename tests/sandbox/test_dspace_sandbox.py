"""Contract tests of the DSpace emulator, with raw httpx (no shelfwork client).

Each test names the contract point of koha-dspace-contracts.md it checks (B1, B2a, B2b, B3, B4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from shelfwork.sandbox import RunningServer, serve
from shelfwork.sandbox.dspace import DSpaceState, create_app, form_fields, stock_form
from tests.support import dspace as support

ADMIN = ("admin@example.org", "admin-pass")
SUBMITTER = ("submitter@example.org", "submitter-pass")
OTHER = ("other@example.org", "other-pass")


@dataclass
class Env:
    state: DSpaceState
    server: RunningServer
    open_collection: str
    review_collection: str

    @property
    def api(self) -> str:
        return f"{self.server.url}/server/api"


@pytest.fixture
def env() -> Iterator[Env]:
    state = DSpaceState()
    state.add_user(*ADMIN, admin=True)
    state.add_user(*SUBMITTER)
    state.add_user(*OTHER)
    open_collection = state.add_collection("Theses")
    review_collection = state.add_collection("Reviewed", workflow=True)
    server = serve(create_app(state), "dspace-contract")
    try:
        yield Env(state, server, open_collection, review_collection)
    finally:
        server.stop()


class Session(support.Session):
    """The bare B1 dance against the served emulator (tests/support/dspace.py)."""

    def __init__(self, env: Env) -> None:
        super().__init__(httpx.Client(timeout=10), env.api)

    def complete(self, collection: str, title: str, pdf: bytes = b"%PDF-1.4 test") -> int:
        ws = self.workspace(collection)
        response = self.patch(
            ws["id"],
            [
                {
                    "op": "add",
                    "path": "/sections/traditionalpageone/dc.title",
                    "value": [{"value": title}],
                },
                {
                    "op": "add",
                    "path": "/sections/traditionalpageone/dc.date.issued",
                    "value": [{"value": "2021"}],
                },
                {
                    "op": "add",
                    "path": "/sections/traditionalpageone/dc.type",
                    "value": [{"value": "Book"}],
                },
                {"op": "add", "path": "/sections/license/granted", "value": True},
            ],
        )
        assert response.status_code == 200, response.text
        upload = self.call(
            "POST",
            f"/submission/workspaceitems/{ws['id']}",
            files={"file": ("scan.pdf", pdf, "application/pdf")},
        )
        assert upload.status_code == 201, upload.text
        return int(ws["id"])


def logged_in(env: Env, user: tuple[str, str] = SUBMITTER) -> Session:
    session = Session(env)
    assert session.login(user).status_code == 200
    return session


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def stale_post(env: Env, token: str, jwt: str | None) -> httpx.Response:
    """A write whose header and cookie agree on `token`, from a client that kept no newer one."""
    with httpx.Client(cookies={"DSPACE-XSRF-COOKIE": token}) as http:
        return http.post(
            f"{env.api}/submission/workspaceitems",
            params={"owningCollection": env.open_collection},
            headers={"X-XSRF-TOKEN": token, "Authorization": f"Bearer {jwt}"},
        )


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert {"timestamp", "error", "message", "path"} <= set(body)
    assert body["path"].startswith("/server/api/")
    return body


# ---------------------------------------------------------------------------------------- B1


def test_b1_csrf_endpoint_gives_header_and_httponly_cookie(env: Env) -> None:
    response = httpx.get(f"{env.api}/security/csrf")
    assert response.status_code == 204
    token = response.headers["DSPACE-XSRF-TOKEN"]
    cookie = response.headers["set-cookie"]
    assert f"DSPACE-XSRF-COOKIE={token}" in cookie
    assert "httponly" in cookie.lower()


def test_b1_login_gives_signed_jwt_and_rotates_csrf_token(env: Env) -> None:
    session = Session(env)
    first = session.csrf().headers["DSPACE-XSRF-TOKEN"]
    response = session.login(SUBMITTER)
    assert response.status_code == 200
    assert response.headers["Authorization"].startswith("Bearer ")
    assert session.jwt is not None and session.jwt.count(".") == 2
    claims = jwt_claims(session.jwt)
    assert claims["exp"] > time.time() + 1700  # B1: 30 minutes by default
    assert claims["eid"]
    rotated = response.headers["DSPACE-XSRF-TOKEN"]
    assert rotated != first
    # the pre-login token no longer works, even with a matching cookie
    stale = stale_post(env, first, session.jwt)
    body = assert_error_shape(stale, 403)
    assert body["message"] == "Access is denied. Invalid CSRF token."


def test_b1_login_without_csrf_header_is_403_json(env: Env) -> None:
    with httpx.Client() as http:
        http.get(f"{env.api}/security/csrf")
        response = http.post(
            f"{env.api}/authn/login", data={"user": SUBMITTER[0], "password": SUBMITTER[1]}
        )
    body = assert_error_shape(response, 403)
    assert body["error"] == "Forbidden"
    assert "Invalid CSRF token" in body["message"]
    assert "DSPACE-XSRF-TOKEN" in response.headers  # a fresh token to retry with


def test_b1_header_without_cookie_is_refused(env: Env) -> None:
    token = httpx.get(f"{env.api}/security/csrf").headers["DSPACE-XSRF-TOKEN"]
    response = httpx.post(
        f"{env.api}/authn/login",
        data={"user": SUBMITTER[0], "password": SUBMITTER[1]},
        headers={"X-XSRF-TOKEN": token},
    )
    assert_error_shape(response, 403)


def test_b1_csrf_query_parameter_is_accepted(env: Env) -> None:
    with httpx.Client() as http:
        token = http.get(f"{env.api}/security/csrf").headers["DSPACE-XSRF-TOKEN"]
        response = http.post(
            f"{env.api}/authn/login",
            params={"_csrf": token},
            data={"user": SUBMITTER[0], "password": SUBMITTER[1]},
        )
    assert response.status_code == 200


def test_b1_bad_password_is_401_with_www_authenticate(env: Env) -> None:
    session = Session(env)
    response = session.login((SUBMITTER[0], "wrong"))
    assert assert_error_shape(response, 401)["error"] == "Unauthorized"
    assert "password" in response.headers["WWW-Authenticate"]
    assert "wrong" not in response.text
    assert "Authorization" not in response.headers


def test_b1_status_reports_authentication(env: Env) -> None:
    session = Session(env)
    assert session.call("GET", "/authn/status").json()["authenticated"] is False
    session.login(SUBMITTER)
    status = session.call("GET", "/authn/status").json()
    assert status["authenticated"] is True and status["type"] == "status"


def test_b1_write_without_bearer_is_401_json(env: Env) -> None:
    session = Session(env)
    session.csrf()
    response = session.call(
        "POST",
        "/submission/workspaceitems",
        params={"owningCollection": env.open_collection},
        json={},
    )
    assert_error_shape(response, 401)


def test_b1_tampered_jwt_is_401(env: Env) -> None:
    session = logged_in(env)
    assert session.jwt is not None
    head, _payload, signature = session.jwt.split(".")
    claims = jwt_claims(session.jwt)
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    session.jwt = f"{head}.{forged}.{signature}"
    assert_error_shape(session.call("GET", "/authn/status"), 401)


def test_b1_expired_jwt_is_401_and_login_again_works(env: Env) -> None:
    session = logged_in(env)
    env.state.expire_tokens()
    response = session.call(
        "POST", "/submission/workspaceitems", params={"owningCollection": env.open_collection}
    )
    assert_error_shape(response, 401)
    assert session.login(SUBMITTER).status_code == 200
    assert session.workspace(env.open_collection)["type"] == "workspaceitem"


def test_b1_jwt_lifetime_follows_jwt_ttl(env: Env) -> None:
    env.state.jwt_ttl = 0.5
    session = logged_in(env)
    assert session.call("GET", "/authn/status").json()["authenticated"] is True
    time.sleep(0.7)
    assert_error_shape(session.call("GET", "/authn/status"), 401)


def test_b1_renewal_with_bearer_only(env: Env) -> None:
    session = logged_in(env)
    old = session.jwt
    response = session.call("POST", "/authn/login")
    assert response.status_code == 200
    session.jwt = response.headers["Authorization"].split(" ", 1)[1]
    assert session.jwt != old
    assert session.call("GET", "/authn/status").json()["authenticated"] is True


def test_b1_logout_is_204_and_ends_the_token(env: Env) -> None:
    session = logged_in(env)
    assert session.call("POST", "/authn/logout").status_code == 204
    assert_error_shape(session.call("GET", "/authn/status"), 401)


def test_b1_rotation_on_every_response_invalidates_the_previous_token(env: Env) -> None:
    session = logged_in(env)
    env.state.rotate_csrf_every_response = True
    before = session.token
    response = session.call("GET", "/authn/status")
    assert response.headers["DSPACE-XSRF-TOKEN"] != before
    assert "DSPACE-XSRF-COOKIE" in response.headers["set-cookie"]
    # a client that follows the header works ...
    assert session.workspace(env.open_collection)["type"] == "workspaceitem"
    # ... one that keeps the old token gets the CSRF 403
    stale = stale_post(env, before or "", session.jwt)
    assert assert_error_shape(stale, 403)["message"] == "Access is denied. Invalid CSRF token."


# ---------------------------------------------------------------------------------------- B2a


def test_b2a_submission_definition_sections_and_forms(env: Env) -> None:
    session = logged_in(env)
    definition = session.call(
        "GET",
        "/config/submissiondefinitions/search/findByCollection",
        params={"uuid": env.open_collection},
    ).json()
    assert definition["id"] == "traditional"
    sections = session.call("GET", definition["_links"]["sections"]["href"]).json()
    listed = {s["id"]: s for s in sections["_embedded"]["submissionsections"]}
    assert {"traditionalpageone", "traditionalpagetwo", "upload", "license"} <= set(listed)
    form = session.call("GET", listed["traditionalpageone"]["_links"]["config"]["href"]).json()
    fields = {
        m["metadata"]
        for row in form["rows"]
        for f in row["fields"]
        for m in f["selectableMetadata"]
    }
    assert fields == set(form_fields(stock_form())["traditionalpageone"])


def test_b2a_workspace_item_has_integer_id_errors_and_item_link(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    assert isinstance(ws["id"], int) and ws["type"] == "workspaceitem"
    messages = {e["message"]: e["paths"] for e in ws["errors"]}
    assert "/sections/traditionalpageone/dc.title" in messages["error.validation.required"]
    assert "/sections/traditionalpageone/dc.date.issued" in messages["error.validation.required"]
    assert messages["error.validation.license.notgranted"] == ["/sections/license"]
    item_href = ws["_links"]["item"]["href"]
    assert item_href.startswith("http://")  # B4: absolute links
    item = session.call("GET", item_href).json()
    assert item["inArchive"] is False and item["handle"] is None
    second = session.workspace(env.open_collection)
    assert second["id"] == ws["id"] + 1


def test_b2a_patch_add_starts_a_field_and_slash_dash_appends(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    path = "/sections/traditionalpageone/dc.contributor.author"
    first = session.patch(
        ws["id"], [{"op": "add", "path": path, "value": [{"value": "Шевченко, Тарас"}]}]
    )
    assert first.status_code == 200, first.text
    second = session.patch(
        ws["id"], [{"op": "add", "path": f"{path}/-", "value": {"value": "Франко, Іван"}}]
    )
    values = second.json()["sections"]["traditionalpageone"]["dc.contributor.author"]
    assert [v["value"] for v in values] == ["Шевченко, Тарас", "Франко, Іван"]
    assert [v["place"] for v in values] == [0, 1]
    replaced = session.patch(
        ws["id"], [{"op": "replace", "path": f"{path}/0", "value": {"value": "Леся Українка"}}]
    )
    values = replaced.json()["sections"]["traditionalpageone"]["dc.contributor.author"]
    assert values[0]["value"] == "Леся Українка"
    removed = session.patch(ws["id"], [{"op": "remove", "path": path}])
    assert "dc.contributor.author" not in removed.json()["sections"]["traditionalpageone"]


def test_b2a_patch_path_must_start_with_sections(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    response = session.patch(
        ws["id"], [{"op": "add", "path": "/metadata/dc.title", "value": [{"value": "x"}]}]
    )
    assert "sections" in assert_error_shape(response, 400)["message"]


def test_b2a_field_outside_the_form_is_422_naming_field_and_section(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    ops = [
        {
            "op": "add",
            "path": "/sections/traditionalpageone/dc.title",
            "value": [{"value": "Kept?"}],
        },
        # dc.subject belongs to page two
        {"op": "add", "path": "/sections/traditionalpageone/dc.subject", "value": [{"value": "x"}]},
    ]
    body = assert_error_shape(session.patch(ws["id"], ops), 422)
    assert "dc.subject" in body["message"] and "traditionalpageone" in body["message"]
    # nothing from the refused document was applied
    after = session.call("GET", f"/submission/workspaceitems/{ws['id']}").json()
    assert after["sections"]["traditionalpageone"] == {}


def test_b2a_patch_accepts_json_and_json_patch_but_not_other_types(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    op = [{"op": "add", "path": "/sections/traditionalpageone/dc.title", "value": [{"value": "T"}]}]
    assert (
        session.patch(ws["id"], op, headers={"Content-Type": "application/json"}).status_code == 200
    )
    assert_error_shape(session.patch(ws["id"], op, headers={"Content-Type": "text/plain"}), 415)


def test_b2a_upload_lists_file_with_md5_size_and_url(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    response = session.call(
        "POST",
        f"/submission/workspaceitems/{ws['id']}",
        files={"file": ("скан.pdf", pdf, "application/pdf")},
    )
    assert response.status_code == 201
    (listed,) = response.json()["sections"]["upload"]["files"]
    assert listed["sizeBytes"] == len(pdf)
    assert listed["checkSum"] == {"checkSumAlgorithm": "MD5", "value": hashlib.md5(pdf).hexdigest()}
    assert listed["metadata"]["dc.title"][0]["value"] == "скан.pdf"
    assert session.call("GET", listed["url"]).content == pdf


def test_b2a_deposit_with_missing_fields_is_422(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    body = assert_error_shape(session.deposit(ws["id"]), 422)
    # SubmissionService.createWorkflowItem: the reasons are the workspace item's own `errors`
    assert body["message"] == "Start workflow failed due to validation error on workspaceitem"
    listed = session.call("GET", f"/submission/workspaceitems/{ws['id']}").json()["errors"]
    assert any(e["message"] == "error.validation.license.notgranted" for e in listed)


def test_b2a_deposit_without_workflow_is_empty_201_and_archives(env: Env) -> None:
    session = logged_in(env)
    ws_id = session.complete(env.open_collection, "Кобзар")
    item_href = session.call("GET", f"/submission/workspaceitems/{ws_id}").json()["_links"]["item"][
        "href"
    ]
    item_uuid = session.call("GET", item_href).json()["uuid"]
    response = session.deposit(ws_id)
    assert response.status_code == 201
    assert response.content == b""
    item = session.call("GET", f"/core/items/{item_uuid}").json()
    assert item["inArchive"] is True
    assert item["handle"].startswith("123456789/")
    # B4: canonical URL written at archive time
    assert (
        item["metadata"]["dc.identifier.uri"][0]["value"]
        == f"{env.server.url}/handle/{item['handle']}"
    )
    assert "dc.date.accessioned" in item["metadata"]
    assert session.call("GET", f"/submission/workspaceitems/{ws_id}").status_code == 404


def test_b2a_deposit_into_workflow_returns_workflowitem_and_no_handle(env: Env) -> None:
    session = logged_in(env)
    ws_id = session.complete(env.review_collection, "Reviewed item")
    item_uuid = session.call("GET", f"/submission/workspaceitems/{ws_id}/item").json()["uuid"]
    response = session.deposit(ws_id)
    assert response.status_code == 201
    workflow = response.json()
    assert workflow["type"] == "workflowitem" and isinstance(workflow["id"], int)
    item = session.call("GET", f"/core/items/{item_uuid}").json()
    assert item["inArchive"] is False and item["handle"] is None
    assert "dc.identifier.uri" not in item["metadata"]
    # approval (the reviewer) archives it: handle and uri appear
    approved = httpx.post(f"{env.server.url}/_sandbox/approve/{workflow['id']}")
    assert approved.status_code == 200
    item = session.call("GET", f"/core/items/{item_uuid}").json()
    assert item["inArchive"] is True and item["handle"]
    assert item["metadata"]["dc.identifier.uri"][0]["value"].endswith(item["handle"])


def test_b2a_deposit_by_someone_else_is_403(env: Env) -> None:
    session = logged_in(env)
    ws_id = session.complete(env.open_collection, "Mine")
    intruder = logged_in(env, OTHER)
    assert_error_shape(intruder.deposit(ws_id), 403)
    assert_error_shape(intruder.call("GET", f"/submission/workspaceitems/{ws_id}"), 403)


# ---------------------------------------------------------------------------------------- B2b


def admin_item(session: Session, env: Env, title: str, **metadata: str) -> dict[str, Any]:
    body = {
        "name": title,
        "metadata": {
            "dc.title": [{"value": title, "language": "uk", "authority": None, "confidence": -1}],
            **{k.replace("_", "."): [{"value": v}] for k, v in metadata.items()},
        },
        "inArchive": True,
        "discoverable": True,
        "withdrawn": False,
        "type": "item",
    }
    response = session.call(
        "POST", "/core/items", params={"owningCollection": env.open_collection}, json=body
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_b2b_admin_creation_is_refused_to_non_admins(env: Env) -> None:
    session = logged_in(env)
    response = session.call(
        "POST",
        "/core/items",
        params={"owningCollection": env.open_collection},
        json={"metadata": {}},
    )
    assert_error_shape(response, 403)


def test_b2b_admin_item_is_archived_with_handle_uri_and_identifiers(env: Env) -> None:
    session = logged_in(env, ADMIN)
    item = admin_item(session, env, "Назва", dc_identifier_other="koha:42")
    assert item["inArchive"] is True and item["handle"]
    assert item["metadata"]["dc.title"][0]["value"] == "Назва"
    assert item["metadata"]["dc.identifier.uri"][0]["value"].endswith(item["handle"])
    ids = session.call("GET", f"/core/items/{item['uuid']}/identifiers").json()
    assert {"identifierType": "handle", "value": item["handle"]}.items() <= ids["identifiers"][
        0
    ].items()
    assert item["_links"]["bundles"]["href"].startswith(env.server.url)


def test_b2b_unregistered_field_is_422(env: Env) -> None:
    session = logged_in(env, ADMIN)
    response = session.call(
        "POST",
        "/core/items",
        params={"owningCollection": env.open_collection},
        json={"metadata": {"dc.nonsense": [{"value": "x"}]}, "inArchive": True},
    )
    assert "dc.nonsense" in assert_error_shape(response, 422)["message"]


def test_b2b_bundle_and_bitstream_with_md5(env: Env) -> None:
    session = logged_in(env, ADMIN)
    item = admin_item(session, env, "With file")
    bundle = session.call(
        "POST", f"/core/items/{item['uuid']}/bundles", json={"name": "ORIGINAL", "metadata": {}}
    )
    assert bundle.status_code == 201
    again = session.call("POST", f"/core/items/{item['uuid']}/bundles", json={"name": "ORIGINAL"})
    assert_error_shape(again, 400)
    bundle_uuid = bundle.json()["uuid"]
    pdf = b"%PDF-1.7 " + "данні".encode() * 500
    properties = {
        "name": "scan_v01.pdf",
        "metadata": {"dc.description": [{"value": "скан"}]},
        "bundleName": "ORIGINAL",
    }
    created = session.call(
        "POST",
        f"/core/bundles/{bundle_uuid}/bitstreams",
        files={
            "file": ("upload.bin", pdf, "application/pdf"),
            "properties": (None, json.dumps(properties), "application/json"),
        },
    )
    assert created.status_code == 201, created.text
    bitstream = created.json()
    assert bitstream["name"] == "scan_v01.pdf"
    assert bitstream["sizeBytes"] == len(pdf) and bitstream["sequenceId"] == 1
    assert bitstream["checkSum"] == {
        "checkSumAlgorithm": "MD5",
        "value": hashlib.md5(pdf).hexdigest(),
    }
    assert session.call("GET", bitstream["_links"]["content"]["href"]).content == pdf
    listed = session.call("GET", f"/core/bundles/{bundle_uuid}/bitstreams").json()
    assert [b["uuid"] for b in listed["_embedded"]["bitstreams"]] == [bitstream["uuid"]]
    bundles = session.call("GET", f"/core/items/{item['uuid']}/bundles").json()
    assert [b["name"] for b in bundles["_embedded"]["bundles"]] == ["ORIGINAL"]


def test_b2b_bitstream_without_file_is_400_and_declared_sizes_are_not_checked(env: Env) -> None:
    """BundleRestRepository.processBitstreamCreation uses only name and metadata of `properties`
    (issue 10, A7: the RestContract's 412 does not exist in the code)."""
    session = logged_in(env, ADMIN)
    item = admin_item(session, env, "Checked")
    bundle = session.call(
        "POST", f"/core/items/{item['uuid']}/bundles", json={"name": "ORIGINAL"}
    ).json()
    url = f"/core/bundles/{bundle['uuid']}/bitstreams"
    no_file = session.call("POST", url, files={"properties": (None, "{}", "application/json")})
    assert_error_shape(no_file, 400)
    wrong = {
        "name": "a.pdf",
        "sizeBytes": 99,
        "checkSum": {"checkSumAlgorithm": "MD5", "value": "0" * 32},
    }
    stored = session.call(
        "POST",
        url,
        files={
            "file": ("a.pdf", b"abc", "application/pdf"),
            "properties": (None, json.dumps(wrong), "application/json"),
        },
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["sizeBytes"] == 3
    assert stored.json()["checkSum"]["value"] == hashlib.md5(b"abc").hexdigest()


# ---------------------------------------------------------------------------------------- B3


def test_b3_get_unknown_item_is_404(env: Env) -> None:
    response = httpx.get(f"{env.api}/core/items/00000000-0000-0000-0000-000000000000")
    assert_error_shape(response, 404)


def test_b3_withdrawn_item_comes_back_without_metadata_for_non_admins(env: Env) -> None:
    admin = logged_in(env, ADMIN)
    item = admin_item(admin, env, "Withdrawn")
    env.state.withdraw(item["uuid"])
    seen = httpx.get(f"{env.api}/core/items/{item['uuid']}").json()
    assert seen["withdrawn"] is True and seen["metadata"] == {}
    assert admin.call("GET", f"/core/items/{item['uuid']}").json()["metadata"]


def search(session: Session, **params: Any) -> dict[str, Any]:
    """A search (dsoType=item unless given; None leaves the filter out)."""
    sent = {k: v for k, v in {"dsoType": "item", **params}.items() if v is not None}
    response = session.call("GET", "/discover/search/objects", params=sent)
    assert response.status_code == 200, response.text
    return response.json()["_embedded"]["searchResult"]


def hit_uuids(result: dict[str, Any]) -> list[str]:
    return [o["_embedded"]["indexableObject"]["uuid"] for o in result["_embedded"]["objects"]]


def test_b3_phrase_query_on_an_identifier(env: Env) -> None:
    admin = logged_in(env, ADMIN)
    wanted = admin_item(admin, env, "A", dc_identifier_other="koha:42")
    admin_item(admin, env, "B", dc_identifier_other="koha:420")
    result = search(admin, query='dc.identifier.other:"koha:42"')
    assert hit_uuids(result) == [wanted["uuid"]]
    assert result["page"]["totalElements"] == 1
    hit = result["_embedded"]["objects"][0]["_embedded"]["indexableObject"]
    assert {"uuid", "name", "handle", "metadata", "inArchive", "withdrawn"} <= set(hit)
    # unquoted, with the colon escaped
    assert hit_uuids(search(admin, query=r"dc.identifier.other:koha\:42")) == [wanted["uuid"]]


def test_b3_plain_words_match_titles(env: Env) -> None:
    admin = logged_in(env, ADMIN)
    kobzar = admin_item(admin, env, "Кобзар: вибране")
    admin_item(admin, env, "Лісова пісня")
    assert hit_uuids(search(admin, query="кобзар")) == [kobzar["uuid"]]


def test_b3_items_in_progress_are_hidden_except_in_mydspace_configurations(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    session.patch(
        ws["id"],
        [
            {
                "op": "add",
                "path": "/sections/traditionalpageone/dc.identifier.other",
                "value": [{"value": "koha:7"}],
            }
        ],
    )
    query = 'dc.identifier.other:"koha:7"'
    assert search(session, query=query)["page"]["totalElements"] == 0
    # a workspace item is indexed as a WorkspaceItem, not an Item: no dsoType=item here
    mine = search(session, query=query, configuration="workspace", dsoType=None)
    assert mine["page"]["totalElements"] == 1
    assert search(session, query=query, configuration="workspace")["page"]["totalElements"] == 0
    other = logged_in(env, OTHER)
    theirs = search(other, query=query, configuration="workspace", dsoType=None)
    assert theirs["page"]["totalElements"] == 0


def test_b3_paging_block_and_absolute_next_links(env: Env) -> None:
    admin = logged_in(env, ADMIN)
    created = [
        admin_item(admin, env, f"Paged {n}", dc_publisher="Видавництво")["uuid"] for n in range(5)
    ]
    first = search(admin, query='dc.publisher:"Видавництво"', size=2)
    assert first["page"] == {"size": 2, "totalElements": 5, "totalPages": 3, "number": 0}
    seen = hit_uuids(first)
    link = first["_links"]["next"]["href"]
    assert link.startswith(env.server.url)
    while link:
        page = admin.call("GET", link).json()["_embedded"]["searchResult"]
        seen += hit_uuids(page)
        link = page["_links"].get("next", {}).get("href")
    assert seen == created


# ---------------------------------------------------------------------------------------- B4


def test_b4_handle_null_until_archived_and_links_absolute(env: Env) -> None:
    session = logged_in(env)
    ws = session.workspace(env.open_collection)
    item = session.call("GET", f"/submission/workspaceitems/{ws['id']}/item").json()
    assert item["handle"] is None
    assert all(v["href"].startswith(env.server.url) for v in item["_links"].values())
    env.state.canonical_prefix = "https://repo.example.org/handle/"
    ws_id = session.complete(env.open_collection, "Canonical")
    uuid = session.call("GET", f"/submission/workspaceitems/{ws_id}/item").json()["uuid"]
    session.deposit(ws_id)
    archived = session.call("GET", f"/core/items/{uuid}").json()
    assert archived["metadata"]["dc.identifier.uri"][0]["value"] == (
        "https://repo.example.org/handle/" + archived["handle"]
    )


# ---------------------------------------------------------------------------------------- faults


def test_faults_fail_next_by_prefix_then_recover(env: Env) -> None:
    session = logged_in(env)
    env.state.fail_next(2, 500, "/core/items")
    url = f"/core/items/{'1' * 8}-1111-1111-1111-{'1' * 12}"
    assert_error_shape(session.call("GET", url), 500)
    assert session.call("GET", "/authn/status").status_code == 200  # other paths untouched
    assert_error_shape(session.call("GET", url), 500)
    assert session.call("GET", url).status_code == 404


def test_faults_expire_tokens_at_a_chosen_call_and_answers_are_counted(env: Env) -> None:
    session = logged_in(env)
    env.state.expire_tokens_at("GET /authn/status")
    assert session.call("GET", "/security/csrf").status_code == 204  # another call: no effect
    assert_error_shape(session.call("GET", "/authn/status"), 401)  # the token ran out here
    assert session.login(SUBMITTER).status_code == 200
    assert session.call("GET", "/authn/status").status_code == 200  # once only
    assert env.state.answered[401] == 1 and env.state.answered[200] >= 2


def test_faults_down_answers_503(env: Env) -> None:
    env.state.down = True
    assert httpx.get(f"{env.api}/security/csrf").status_code == 503
    env.state.down = False
    assert httpx.get(f"{env.api}/security/csrf").status_code == 204


def test_faults_latency_delays_answers(env: Env) -> None:
    env.state.latency = 0.3
    started = time.monotonic()
    httpx.get(f"{env.api}/security/csrf")
    assert time.monotonic() - started >= 0.3


def test_faults_corrupted_storage_changes_the_stored_md5(env: Env) -> None:
    session = logged_in(env)
    env.state.corrupt_next_uploads(1)
    ws = session.workspace(env.open_collection)
    pdf = b"%PDF-1.4 original"
    response = session.call(
        "POST",
        f"/submission/workspaceitems/{ws['id']}",
        files={"file": ("a.pdf", pdf, "application/pdf")},
    )
    (listed,) = response.json()["sections"]["upload"]["files"]
    assert listed["checkSum"]["value"] != hashlib.md5(pdf).hexdigest()


def test_control_api_summary_faults_and_approve(env: Env) -> None:
    control = f"{env.server.url}/_sandbox"
    answer = httpx.post(
        f"{control}/faults",
        json={"latency": 0.01, "fail_next": {"count": 1, "status": 502, "path_prefix": "/authn"}},
    )
    assert answer.status_code == 200 and answer.json()["latency"] == 0.01
    assert httpx.get(f"{env.api}/authn/status").status_code == 502
    summary = httpx.get(f"{control}/summary").json()
    assert summary["calls"]["GET /authn/status"] == 1
    assert env.open_collection in summary["collections"]
    assert httpx.post(f"{control}/approve/999").status_code == 404
    assert httpx.post(f"{control}/reject/999", json={"reason": "x"}).status_code == 404
    session = logged_in(env)
    ws_id = session.complete(env.review_collection, "Sent back")
    uuid = session.call("GET", f"/submission/workspaceitems/{ws_id}/item").json()["uuid"]
    assert session.deposit(ws_id).status_code == 201
    back = httpx.post(
        f"{control}/reject/{uuid}", json={"reviewer": "r@example.org", "reason": "blurred"}
    )
    assert back.status_code == 200 and back.json()["uuid"] == uuid
    assert back.json()["workspaceitem"] in httpx.get(f"{control}/summary").json()["workspace_items"]
