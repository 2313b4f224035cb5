"""Contract tests of the DSpace emulator against the real DSpace project.

Every expected shape, status and field below was read from DSpace/DSpace (branches `dspace-7_x` @9a9c310
and `dspace-8_x` @996efc1: `dspace-server-webapp` integration tests and matchers, `dspace/config`) or from
DSpace/RestContract (@830cd66); each test names its source. The emulator is driven over HTTP with raw
requests (no shelfwork client), so an emulator that drifts from the real shape fails here even when
shelfwork's connector and its own tests agree with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from shelfwork.sandbox.dspace import DSpaceState, create_app
from tests.support import dspace as support

ADMIN = ("admin@example.org", "admin-pass")
SUBMITTER = ("submitter@example.org", "submitter-pass")
REVIEWER = ("reviewer@example.org", "reviewer-pass")
BASE = "http://testserver/server/api/"  # the ITs' REST_SERVER_URL, here on the test client's host

#: dspace/config/submission-forms.xml, forms `traditionalpageone` / `traditionalpagetwo`, identical on
#: dspace-7_x and dspace-8_x except that 8_x makes dc.type required. One tuple per row; per field:
#: (input type as the REST form shows it, selectable metadata, mandatory, repeatable). A qualdrop_value
#: field shows as `onebox` with one selectable metadata per value pair (SubmissionFormConverter.getField).
STOCK_PAGE_ONE = (
    (("onebox", ("dc.contributor.author",), False, True),),
    (("onebox", ("dc.title",), True, False),),
    (("onebox", ("dc.title.alternative",), False, True),),
    (("date", ("dc.date.issued",), True, False), ("onebox", ("dc.publisher",), False, False)),
    (("onebox", ("dc.identifier.citation",), False, False),),
    (("series", ("dc.relation.ispartofseries",), False, True),),
    (
        (
            "onebox",
            (
                "dc.identifier.issn",
                "dc.identifier.other",
                "dc.identifier.ismn",
                "dc.identifier.govdoc",
                "dc.identifier.uri",
                "dc.identifier.isbn",
            ),
            False,
            True,
        ),
    ),
    (("dropdown", ("dc.type",), True, True),),  # required on dspace-8_x
    (("dropdown", ("dc.language.iso",), False, False),),
)
STOCK_PAGE_TWO = (
    (("tag", ("dc.subject",), False, True),),
    (("textarea", ("dc.description.abstract",), False, False),),
    (("textarea", ("dc.description.sponsorship",), False, False),),
    (("textarea", ("dc.description",), False, False),),
)
#: dspace/config/item-submission.xml, submission-process "traditional" (both branches):
#: (step id, step type, heading)
STOCK_STEPS = (
    ("collection", "collection", ""),
    ("traditionalpageone", "submission-form", "submit.progressbar.describe.stepone"),
    ("traditionalpagetwo", "submission-form", "submit.progressbar.describe.steptwo"),
    ("upload", "upload", "submit.progressbar.upload"),
    ("license", "license", "submit.progressbar.license"),
)


@dataclass
class Env:
    state: DSpaceState
    http: TestClient
    collection: str
    review_collection: str


@pytest.fixture
def env() -> Iterator[Env]:
    state = DSpaceState()
    state.add_user(*ADMIN, admin=True)
    state.add_user(*SUBMITTER)
    state.add_user(*REVIEWER)
    collection = state.add_collection("Books")
    review = state.add_collection("Reviewed", workflow=True, reviewers=[REVIEWER[0]])
    with TestClient(create_app(state), base_url="http://testserver") as http:
        yield Env(state, http, collection, review)


class Session(support.Session):
    """One logged-in user speaking the raw REST API (tests/support/dspace.py) to the app in this
    process, at the ITs' REST_SERVER_URL."""

    def __init__(self, env: Env, user: tuple[str, str]) -> None:
        super().__init__(TestClient(env.http.app, base_url="http://testserver"), BASE.rstrip("/"))
        answer = self.login(user)
        assert answer.status_code == 200, answer.text

    def submit(self, collection: str, title: str, identifier: str) -> tuple[int, str]:
        """A complete submission, deposited; returns (workspace item id, item uuid)."""
        ws = self.workspace(collection)
        page = "/sections/traditionalpageone"
        answer = self.patch(
            ws["id"],
            [
                {"op": "add", "path": f"{page}/dc.title", "value": [{"value": title}]},
                {"op": "add", "path": f"{page}/dc.date.issued", "value": [{"value": "2010"}]},
                {"op": "add", "path": f"{page}/dc.type", "value": [{"value": "Book"}]},
                {
                    "op": "add",
                    "path": f"{page}/dc.identifier.other",
                    "value": [{"value": identifier}],
                },
                {"op": "add", "path": "/sections/license/granted", "value": True},
            ],
        )
        assert answer.status_code == 200, answer.text
        upload = self.call(
            "POST",
            f"/submission/workspaceitems/{ws['id']}",
            files={"file": ("scan.pdf", b"%PDF-1.4 contract", "application/pdf")},
        )
        assert upload.status_code == 201, upload.text
        item = self.json("GET", f"/submission/workspaceitems/{ws['id']}/item")
        deposit = self.deposit(ws["id"])
        assert deposit.status_code == 201, deposit.text
        return int(ws["id"]), str(item["uuid"])

    def search(self, **params: Any) -> dict[str, Any]:
        return self.json("GET", "/discover/search/objects", params=params)


def objects(result: dict[str, Any]) -> list[dict[str, Any]]:
    return list(result["_embedded"]["searchResult"]["_embedded"]["objects"])


# --- A1: submission definitions and sections ------------------------------------------------------


def test_sections_of_a_definition_are_embedded_as_submissionsections(env: Env) -> None:
    """SubmissionDefinitionsControllerIT.findSections (7_x and 8_x): `_embedded.submissionsections`,
    each `type` submissionsection, a form step's `_links.config` at config/submissionforms/<id> and its
    `_links.self` at config/submissionsections/<id>; the steps are item-submission.xml's `traditional`."""
    session = Session(env, SUBMITTER)
    answer = session.json("GET", "/config/submissiondefinitions/traditional/sections")
    assert set(answer["_embedded"]) == {"submissionsections"}
    listed = answer["_embedded"]["submissionsections"]
    assert [(s["id"], s["sectionType"], s["header"]) for s in listed] == list(STOCK_STEPS)
    page_one = next(s for s in listed if s["id"] == "traditionalpageone")
    assert page_one["type"] == "submissionsection"
    assert (
        page_one["_links"]["config"]["href"] == BASE + "config/submissionforms/traditionalpageone"
    )
    assert (
        page_one["_links"]["self"]["href"] == BASE + "config/submissionsections/traditionalpageone"
    )
    upload = next(s for s in listed if s["id"] == "upload")
    # SubmissionSectionHalLinkFactory: an upload step links its config at submissionuploads
    assert upload["_links"]["config"]["href"] == BASE + "config/submissionuploads/upload"
    license_step = next(s for s in listed if s["id"] == "license")
    assert "config" not in license_step["_links"]


def test_definition_found_by_collection_has_the_matcher_shape(env: Env) -> None:
    """SubmissionDefinitionsControllerIT.findByCollection + SubmissionDefinitionsMatcher
    .matchSubmissionDefinition(true, "traditional", "traditional"): isDefault, name, id, type, self and
    sections links."""
    session = Session(env, SUBMITTER)
    found = session.json(
        "GET",
        "/config/submissiondefinitions/search/findByCollection",
        params={"uuid": env.collection},
    )
    assert found["isDefault"] is True
    assert found["name"] == found["id"] == "traditional"
    assert found["type"] == "submissiondefinition"
    assert found["_links"]["self"]["href"] == BASE + "config/submissiondefinitions/traditional"
    assert found["_links"]["sections"]["href"] == (
        BASE + "config/submissiondefinitions/traditional/sections"
    )
    assert set(found["_links"]) == {"collections", "sections", "self"}  # matchLinks


def test_unauthenticated_config_reads_are_401(env: Env) -> None:
    """SubmissionDefinitionsControllerIT.findSections / findByCollection and
    SubmissionFormsControllerIT.findTraditionalPageOne: anonymous reads answer 401."""
    for path in (
        "/server/api/config/submissiondefinitions/traditional/sections",
        f"/server/api/config/submissiondefinitions/search/findByCollection?uuid={env.collection}",
        "/server/api/config/submissionforms/traditionalpageone",
    ):
        assert env.http.get(path).status_code == 401, path


# --- A3: the stock form ---------------------------------------------------------------------------


def rows_of(form: dict[str, Any]) -> tuple[tuple[tuple[Any, ...], ...], ...]:
    return tuple(
        tuple(
            (
                f["input"]["type"],
                tuple(m["metadata"] for m in f["selectableMetadata"]),
                f["mandatory"],
                f["repeatable"],
            )
            for f in row["fields"]
        )
        for row in form["rows"]
    )


def test_default_form_is_the_stock_submission_forms_xml(env: Env) -> None:
    """dspace/config/submission-forms.xml (dspace-8_x) as SubmissionFormConverter shows it; field shape
    from SubmissionFormsControllerIT.findTraditionalPageOne / findFieldWithValuePairsConfig and
    SubmissionFormFieldMatcher (mandatoryMessage and style absent unless set, a value-pairs dropdown
    names its vocabulary in selectableMetadata[0].controlledVocabulary)."""
    session = Session(env, SUBMITTER)
    one = session.json("GET", "/config/submissionforms/traditionalpageone")
    assert (one["id"], one["name"], one["type"]) == (
        "traditionalpageone",
        "traditionalpageone",
        "submissionform",
    )
    assert one["_links"]["self"]["href"] == BASE + "config/submissionforms/traditionalpageone"
    assert rows_of(one) == STOCK_PAGE_ONE
    two = session.json("GET", "/config/submissionforms/traditionalpagetwo")
    assert rows_of(two) == STOCK_PAGE_TWO
    title = one["rows"][1]["fields"][0]
    assert title["label"] == "Title"
    assert title["mandatoryMessage"] == "You must enter a main title for this item."
    author = one["rows"][0]["fields"][0]
    assert "mandatoryMessage" not in author and "style" not in author
    date, publisher = one["rows"][3]["fields"]
    # dspace-8_x since 8.4 (commit 470985b "change style for date pickers"); 7_x keeps col-sm-*
    assert (date["style"], publisher["style"]) == ("col-md-4", "col-md-8")
    dc_type = one["rows"][7]["fields"][0]
    assert dc_type["selectableMetadata"][0]["controlledVocabulary"] == "common_types"
    assert dc_type["selectableMetadata"][0]["closed"] is True
    identifiers = one["rows"][6]["fields"][0]["selectableMetadata"]
    assert [m["label"] for m in identifiers] == [
        "ISSN",
        "Other",
        "ISMN",
        "Gov't Doc #",
        "URI",
        "ISBN",
    ]


def test_the_dspace_7_stock_form_does_not_require_a_type(env: Env) -> None:
    """dspace-7_x's submission-forms.xml has no <required> on dc.type; dspace-8_x has one."""
    from shelfwork.sandbox.dspace import stock_form

    state = DSpaceState()
    state.add_user(*SUBMITTER)
    old = state.add_collection("Seven", form=stock_form("dspace-7_x"))
    with TestClient(create_app(state), base_url="http://testserver") as http:
        session = Session(Env(state, http, old, old), SUBMITTER)
        ws = session.workspace(old)
        one = session.json("GET", "/config/submissionforms/traditionalpageone")
    date, publisher = one["rows"][3]["fields"]
    assert (date["style"], publisher["style"]) == ("col-sm-4", "col-sm-8")
    required = next(e for e in ws["errors"] if e["message"] == "error.validation.required")
    assert sorted(required["paths"]) == [
        "/sections/traditionalpageone/dc.date.issued",
        "/sections/traditionalpageone/dc.title",
    ]


def test_a_field_the_form_lacks_is_422_with_describe_steps_message(env: Env) -> None:
    """DescribeStep.doPatchProcessing (7_x and 8_x): a field not present in the section's form is an
    UnprocessableEntityException "The field <key> is not present in section <form>", which
    DSpaceApiExceptionControllerAdvice answers 422 in Spring Boot's error shape."""
    session = Session(env, SUBMITTER)
    ws = session.workspace(env.collection)
    for key in ("dc.format.extent", "dc.rights", "dc.coverage.spatial"):
        answer = session.patch(
            ws["id"],
            [
                {
                    "op": "add",
                    "path": f"/sections/traditionalpagetwo/{key}",
                    "value": [{"value": "x"}],
                }
            ],
        )
        assert answer.status_code == 422, key
        body = answer.json()
        assert body["message"] == f"The field {key} is not present in section traditionalpagetwo"
        assert {"timestamp", "status", "error", "message", "path"} <= set(body)


# --- A2: creating a workspace item ----------------------------------------------------------------


def test_creating_a_workspace_item_with_a_json_body(env: Env) -> None:
    """WorkspaceItemRestRepositoryIT.createEmptyWorkspateItemTest / validationErrorsRequiredMetadataTest:
    POST workspaceitems?owningCollection= with Content-Type application/json → 201, an integer id and
    `errors` of message error.validation.required with /sections/<form>/<field> paths (the IT's test
    configuration requires title and date; the stock 8_x form also dc.type)."""
    session = Session(env, SUBMITTER)
    created = session.workspace(env.collection)
    assert isinstance(created["id"], int) and created["type"] == "workspaceitem"
    required = next(e for e in created["errors"] if e["message"] == "error.validation.required")
    assert sorted(required["paths"]) == [
        "/sections/traditionalpageone/dc.date.issued",
        "/sections/traditionalpageone/dc.title",
        "/sections/traditionalpageone/dc.type",
    ]
    # WorkspaceItemMatcher.matchLinks
    assert created["_links"]["self"]["href"] == f"{BASE}submission/workspaceitems/{created['id']}"
    assert {"item", "collection", "submitter", "submissionDefinition"} <= set(created["_links"])


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
    ids=["no-content-type", "text-plain", "form"],
)
def test_creating_a_workspace_item_without_json_is_415(env: Env, headers: dict[str, str]) -> None:
    """RestResourceController.post consumes only application/json and application/hal+json (the other
    POST mappings take text/uri-list and multipart/form-data), so Spring finds no handler and its
    ResponseEntityExceptionHandler (which DSpaceApiExceptionControllerAdvice extends) answers 415 with an
    Accept header; on dspace-8_x (Spring 6) the body is a ProblemDetail (application/problem+json)."""
    session = Session(env, SUBMITTER)
    answer = session.call(
        "POST",
        "/submission/workspaceitems",
        params={"owningCollection": env.collection},
        headers=headers,
        content=b"" if "form" not in str(headers) else b"a=b",
    )
    assert answer.status_code == 415, answer.text
    accepted = {t.strip() for t in answer.headers["Accept"].split(",")}
    assert {"application/json", "application/hal+json", "text/uri-list"} <= accepted
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"] == "about:blank"
    assert problem["title"] == "Unsupported Media Type"
    assert problem["status"] == 415
    assert problem["detail"].startswith("Content-Type '")
    assert env.state.workspace_items == {}


def test_a_complete_workspace_item_has_no_errors_key(env: Env) -> None:
    """WorkspaceItemRestRepositoryIT.validationErrorsRequiredMetadataTest: a workspace item that lacks
    nothing has no `errors` at all (`$.errors` doesNotExist; BaseObjectRest's errors are
    @JsonInclude(NON_EMPTY))."""
    session = Session(env, SUBMITTER)
    ws = session.workspace(env.collection)
    page = "/sections/traditionalpageone"
    session.patch(
        ws["id"],
        [
            {"op": "add", "path": f"{page}/dc.title", "value": [{"value": "Whole"}]},
            {"op": "add", "path": f"{page}/dc.date.issued", "value": [{"value": "2010"}]},
            {"op": "add", "path": f"{page}/dc.type", "value": [{"value": "Book"}]},
            {"op": "add", "path": "/sections/license/granted", "value": True},
        ],
    )
    upload = session.call(
        "POST",
        f"/submission/workspaceitems/{ws['id']}",
        files={"file": ("scan.pdf", b"%PDF-1.4 contract", "application/pdf")},
    )
    assert upload.status_code == 201 and "errors" not in upload.json()
    assert "errors" not in session.json("GET", f"/submission/workspaceitems/{ws['id']}")


def test_an_unknown_collection_has_no_definition_and_takes_no_workspace_item(env: Env) -> None:
    """SubmissionDefinitionRestRepository.findByCollection returns null for a collection DSpace does
    not have, which RestResourceController's search answers 204 with no body; SubmissionService
    .createWorkspaceItem throws RESTAuthorizationException("collectionUUID=… not found"), which
    DSpaceApiExceptionControllerAdvice.handleAuthorizeException answers 403 "Access is denied" to a
    logged-in caller (7_x and 8_x)."""
    session = Session(env, SUBMITTER)
    unknown = "00000000-0000-4000-8000-000000000000"
    found = session.call(
        "GET", "/config/submissiondefinitions/search/findByCollection", params={"uuid": unknown}
    )
    assert found.status_code == 204 and found.content == b""
    created = session.call(
        "POST", "/submission/workspaceitems", params={"owningCollection": unknown}, json={}
    )
    assert created.status_code == 403
    assert created.json()["message"] == "Access is denied"
    assert env.state.workspace_items == {}


def test_depositing_an_incomplete_workspace_item_is_422(env: Env) -> None:
    """SubmissionService.createWorkflowItem (7_x and 8_x): a workspace item with validation errors is
    an UnprocessableEntityException "Start workflow failed due to validation error on
    workspaceitem" (422, Spring Boot's error shape); a URI naming no workspace item is 422 too
    (WorkflowItemRestRepositoryIT.unvalidCreateWorkflowItemTest)."""
    session = Session(env, SUBMITTER)
    ws = session.workspace(env.collection)
    answer = session.call(
        "POST",
        "/workflow/workflowitems",
        content=f"{BASE}submission/workspaceitems/{ws['id']}",
        headers={"Content-Type": "text/uri-list"},
    )
    assert answer.status_code == 422
    body = answer.json()
    assert body["message"] == "Start workflow failed due to validation error on workspaceitem"
    assert {"timestamp", "status", "error", "message", "path"} <= set(body)
    assert env.state.workflow_items == {} and ws["id"] in env.state.workspace_items
    nothing = session.call(
        "POST",
        "/workflow/workflowitems",
        content="/api/submission/workspaceitems/not-a-number",
        headers={"Content-Type": "text/uri-list"},
    )
    assert nothing.status_code == 422


# --- A5: finding one's own submissions ------------------------------------------------------------


def test_workspace_configuration_lists_own_workspace_workflow_and_archived_items(env: Env) -> None:
    """DiscoveryRestControllerIT.discoverSearchObjectsWorkspaceConfigurationTest: configuration=workspace
    returns the caller's archived items, workspace items and workflow items (each a `discover` hit whose
    _links.indexableObject is /api/core/items, /api/submission/workspaceitems or
    /api/workflow/workflowitems; WorkflowItemMatcher: type workflowitem, metadata under
    sections.traditionalpageone), only the caller's own, even for an administrator
    (SolrServiceWorkspaceWorkflowRestrictionPlugin: submitter_authority filter)."""
    session = Session(env, SUBMITTER)
    in_progress = session.workspace(env.collection)
    _, archived = session.submit(env.collection, "Archived now", "koha:1")
    _, reviewed = session.submit(env.review_collection, "Waiting", "koha:2")
    admin = Session(env, ADMIN)
    admin.workspace(env.collection)

    result = session.search(configuration="workspace")
    assert result["type"] == "discover" and result["configuration"] == "workspace"
    hits = objects(result)
    kinds = sorted(h["_embedded"]["indexableObject"]["type"] for h in hits)
    assert kinds == ["item", "workflowitem", "workspaceitem"]
    assert all(h["type"] == "discover" for h in hits)
    by_kind = {h["_embedded"]["indexableObject"]["type"]: h for h in hits}
    assert "/api/core/items/" in by_kind["item"]["_links"]["indexableObject"]["href"]
    assert (
        "/api/submission/workspaceitems/"
        in (by_kind["workspaceitem"]["_links"]["indexableObject"]["href"])
    )
    workflow = by_kind["workflowitem"]["_embedded"]["indexableObject"]
    assert (
        by_kind["workflowitem"]["_links"]["indexableObject"]["href"]
        == (workflow["_links"]["self"]["href"])
    )
    assert workflow["_links"]["self"]["href"].startswith(BASE + "workflow/workflowitems/")
    assert workflow["sections"]["traditionalpageone"]["dc.title"][0]["value"] == "Waiting"
    assert {"item", "collection", "submitter", "submissionDefinition"} <= set(workflow["_links"])
    linked = session.json("GET", workflow["_links"]["item"]["href"])
    assert (linked["type"], linked["uuid"], linked["inArchive"]) == ("item", reviewed, False)
    assert by_kind["workspaceitem"]["_embedded"]["indexableObject"]["id"] == in_progress["id"]
    assert by_kind["item"]["_embedded"]["indexableObject"]["uuid"] == archived
    assert reviewed != archived
    # PageMatcher.pageEntryWithTotalPagesAndElements(0, 20, 1, 3)
    assert result["_embedded"]["searchResult"]["page"] == {
        "number": 0,
        "size": 20,
        "totalPages": 1,
        "totalElements": 3,
    }
    # the administrator sees only their own submission here
    mine = objects(admin.search(configuration="workspace"))
    assert [h["_embedded"]["indexableObject"]["type"] for h in mine] == ["workspaceitem"]


def test_dso_type_item_keeps_only_items_in_the_workspace_configuration(env: Env) -> None:
    """DiscoverQueryBuilder.buildCommonDiscoverQuery + SolrServiceImpl: dsoType adds the filter
    search.resourcetype:<type>, so with dsoType=item an item waiting in a workflow (indexed as an
    XmlWorkflowItem, InprogressSubmissionIndexFactoryImpl) is left out; an unknown dsoType is an
    IllegalArgumentException (DiscoverQueryBuilder.getDsoType), answered 400."""
    session = Session(env, SUBMITTER)
    session.submit(env.review_collection, "Waiting", "koha:3")
    query = 'dc.identifier.other:"koha:3"'
    assert objects(session.search(configuration="workspace", query=query, dsoType="item")) == []
    workflow_only = session.search(
        configuration="workspace", query=query, dsoType="XmlWorkflowItem"
    )
    assert [h["_embedded"]["indexableObject"]["type"] for h in objects(workflow_only)] == [
        "workflowitem"
    ]
    wrong = session.call("GET", "/discover/search/objects", params={"dsoType": "nonsense"})
    assert wrong.status_code == 400


def test_workflow_configuration_lists_a_reviewers_tasks_only(env: Env) -> None:
    """DiscoveryRestControllerIT.discoverSearchObjectsWorkflowConfigurationTest: the submitter sees
    nothing under configuration=workflow (page 0, 20, 0, 0); a reviewer sees pool tasks
    (SearchResultMatcher.match("workflow", "pooltask", "pooltasks"), PoolTaskMatcher links) embedding the
    workflow item; discovery.xml's workflowConfiguration filters PoolTask OR ClaimedTask, so dsoType=item
    finds nothing there either."""
    session = Session(env, SUBMITTER)
    session.submit(env.review_collection, "Waiting", "koha:4")
    mine = session.search(configuration="workflow")
    assert objects(mine) == []
    assert mine["_embedded"]["searchResult"]["page"] == {
        "number": 0,
        "size": 20,
        "totalPages": 0,
        "totalElements": 0,
    }
    reviewer = Session(env, REVIEWER)
    (task,) = objects(reviewer.search(configuration="workflow"))
    assert "/api/workflow/pooltasks/" in task["_links"]["indexableObject"]["href"]
    pooltask = task["_embedded"]["indexableObject"]
    assert pooltask["type"] == "pooltask"
    assert pooltask["_links"]["self"]["href"] == f"{BASE}workflow/pooltasks/{pooltask['id']}"
    assert {"eperson", "workflowitem", "group"} <= set(pooltask["_links"])
    embedded = pooltask["_embedded"]["workflowitem"]
    assert embedded["type"] == "workflowitem"
    assert embedded["sections"]["traditionalpageone"]["dc.title"][0]["value"] == "Waiting"
    assert objects(reviewer.search(configuration="workflow", dsoType="item")) == []


def test_items_by_uuid_for_workspace_and_workflow_items(env: Env) -> None:
    """WorkspaceItemRestRepositoryIT.findByItemUuidTest / ...DoesntExistTest / ...MissingParameterTest
    and WorkflowItemRestRepositoryIT.findByItemUuid*: search/item?uuid= gives the wrapper (200), 204 when
    the item has none, 400 without uuid."""
    session = Session(env, SUBMITTER)
    ws = session.workspace(env.collection)
    item = session.json("GET", f"/submission/workspaceitems/{ws['id']}/item")
    found = session.json(
        "GET", "/submission/workspaceitems/search/item", params={"uuid": item["uuid"]}
    )
    assert found["id"] == ws["id"] and found["type"] == "workspaceitem"
    none = session.call("GET", "/workflow/workflowitems/search/item", params={"uuid": item["uuid"]})
    assert none.status_code == 204
    assert session.call("GET", "/submission/workspaceitems/search/item").status_code == 400
    _, waiting = session.submit(env.review_collection, "Waiting", "koha:5")
    flowing = session.json("GET", "/workflow/workflowitems/search/item", params={"uuid": waiting})
    assert flowing["type"] == "workflowitem"
    gone = session.call("GET", "/submission/workspaceitems/search/item", params={"uuid": waiting})
    assert gone.status_code == 204


# --- A6: a reviewer's rejection -------------------------------------------------------------------


def test_rejection_returns_the_item_to_the_submitters_workspace(env: Env) -> None:
    """TaskRestRepositoriesIT.rejectTest: after a reject the workflow item is gone, the submitter's
    findBySubmitter lists a workspace item with the same metadata and the item is not archived
    (XmlWorkflowServiceImpl.sendWorkflowItemBackSubmission → returnToWorkspace: a new workspace item,
    submitter policies restored, provenance "… Rejected by <name> (<email>), reason: <reason> on <date>
    (GMT)"). While in review the submitter may read the item (grantSubmitterReadPolicies) but not its
    provenance (metadata.hide.dc.description.provenance, ItemConverter.getPermissionFilteredMetadata);
    once back in the workspace the submitter can edit it and sees it."""
    session = Session(env, SUBMITTER)
    ws_id, uuid = session.submit(env.review_collection, "Rejected book", "koha:6")
    in_review = session.json("GET", f"/core/items/{uuid}")
    assert in_review["inArchive"] is False
    assert "dc.description.provenance" not in in_review["metadata"]
    # XmlWorkflowServiceImpl.recordStart (from activateFirstStep): "Submitted by <name> (<email>)
    # on <date> workflow start=Step: reviewstep - action:claimaction" + the bitstream lines
    # (InstallItemServiceImpl.getBitstreamProvenanceMessage); an administrator sees it
    seen = Session(env, ADMIN).json("GET", f"/core/items/{uuid}")["metadata"]
    (started,) = [v["value"] for v in seen["dc.description.provenance"]]
    assert started.startswith(f"Submitted by {SUBMITTER[0]} ({SUBMITTER[0]}) on ")
    assert (
        " workflow start=Step: reviewstep - action:claimaction\nNo. of bitstreams: 1\n" in started
    )
    assert "scan.pdf: 17 bytes, checksum: " in started and started.endswith(" (MD5)\n")
    env.state.reject(uuid, REVIEWER[0], "the scan is missing pages")
    flowing = session.call("GET", "/workflow/workflowitems/search/item", params={"uuid": uuid})
    assert flowing.status_code == 204
    back = session.json("GET", "/submission/workspaceitems/search/item", params={"uuid": uuid})
    assert back["id"] != ws_id
    assert back["sections"]["traditionalpageone"]["dc.title"][0]["value"] == "Rejected book"
    # the granted license is the item's LICENSE bitstream (LicenseStep.getData, LicenseValidation)
    # and returnToWorkspace leaves it ("FIXME: Remove license"): nothing is missing, so the
    # submitter can deposit it again as it is
    assert back["sections"]["license"]["granted"] is True and "errors" not in back
    again = session.call(
        "POST",
        "/workflow/workflowitems",
        content=f"{BASE}submission/workspaceitems/{back['id']}",
        headers={"Content-Type": "text/uri-list"},
    )
    assert again.status_code == 201 and again.json()["type"] == "workflowitem"
    assert session.json("GET", f"/core/items/{uuid}")["inArchive"] is False
    env.state.reject(uuid, REVIEWER[0], "still wrong")
    back = session.json("GET", "/submission/workspaceitems/search/item", params={"uuid": uuid})
    me = session.json("GET", "/authn/status")["_links"]["eperson"]["href"].rsplit("/", 1)[-1]
    listed = session.json(
        "GET", "/submission/workspaceitems/search/findBySubmitter", params={"uuid": me}
    )
    assert [w["id"] for w in listed["_embedded"]["workspaceitems"]] == [back["id"]]
    item = session.json("GET", f"/core/items/{uuid}")
    assert item["inArchive"] is False
    provenance = [v["value"] for v in item["metadata"]["dc.description.provenance"]]
    assert any(
        f"Rejected by {REVIEWER[0]} ({REVIEWER[0]}), reason: the scan is missing pages on " in p
        for p in provenance
    )


# --- A7: bitstream upload on the administrator path -----------------------------------------------


def test_bitstream_properties_are_not_checked_against_the_bytes(env: Env) -> None:
    """BundleRestRepository.processBitstreamCreation reads `properties` as a BitstreamRest (Jackson,
    unknown keys refused → 422 "The properties parameter was incorrect") and uses only its name and
    metadata: a declared sizeBytes/checkSum is never compared with the upload
    (BundleUploadBitstreamControllerIT.uploadBitstreamAllPossibleFieldsProperties sends them null);
    two files are 422 (…uploadBitstreamMultipleFiles)."""
    admin = Session(env, ADMIN)
    item = admin.json(
        "POST",
        "/core/items",
        201,
        params={"owningCollection": env.collection},
        json={
            "name": "Direct",
            "metadata": {"dc.title": [{"value": "Direct"}]},
            "inArchive": True,
            "discoverable": True,
        },
    )
    bundle = admin.json(
        "POST", f"/core/items/{item['uuid']}/bundles", 201, json={"name": "ORIGINAL"}
    )
    url = f"/core/bundles/{bundle['uuid']}/bitstreams"
    declared = {
        "name": "a.pdf",
        "sizeBytes": 99,
        "checkSum": {"checkSumAlgorithm": "MD5", "value": "0" * 32},
    }
    stored = admin.json(
        "POST",
        url,
        201,
        files={
            "file": ("a.pdf", b"abc", "application/pdf"),
            "properties": (None, json.dumps(declared), "application/json"),
        },
    )
    assert stored["sizeBytes"] == 3
    assert stored["checkSum"]["value"] == "900150983cd24fb0d6963f7d28e17f72"  # md5("abc")
    unknown = admin.call(
        "POST",
        url,
        files={
            "file": ("b.pdf", b"abc", "application/pdf"),
            "properties": (None, json.dumps({"name": "b.pdf", "nonsense": 1}), "application/json"),
        },
    )
    assert unknown.status_code == 422
    assert unknown.json()["message"].startswith("The properties parameter was incorrect")
    two = admin.call(
        "POST",
        url,
        files=[
            ("file", ("c.pdf", b"abc", "application/pdf")),
            ("file", ("d.pdf", b"abc", "application/pdf")),
        ],
    )
    assert two.status_code == 422


def test_creating_an_item_directly_needs_in_archive_and_a_known_collection(env: Env) -> None:
    """ItemRestRepository.createAndReturn (7_x and 8_x) reads the body as an ItemRest, whose
    inArchive defaults to false, and refuses inArchive false with a DSpaceBadRequestException (400,
    ItemRestRepositoryIT.testCreateItemInArchiveFalseBadRequestException); an owningCollection that
    names no collection is 400 too ("The given owningCollection parameter is invalid",
    …testCreateItemInvalidCollectionBadRequestException)."""
    admin = Session(env, ADMIN)
    body = {"metadata": {"dc.title": [{"value": "Direct"}]}}
    for extra in ({}, {"inArchive": False}):
        answer = admin.call(
            "POST",
            "/core/items",
            params={"owningCollection": env.collection},
            json={**body, **extra},
        )
        assert answer.status_code == 400, extra
    unknown = admin.call(
        "POST",
        "/core/items",
        params={"owningCollection": "00000000-0000-4000-8000-000000000000"},
        json={**body, "inArchive": True},
    )
    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("The given owningCollection parameter is invalid")
    assert env.state.items == {}
