"""The DSpace client against the DSpace emulator served on loopback (`shelfwork.sandbox.serve`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from shelfwork.connectors import AuthFailed, RemoteRefused, RemoteUnavailable
from shelfwork.connectors.dspace import (
    SUBMISSION_STAGES,
    BadResume,
    ChecksumMismatch,
    DSpace,
    item_from_json,
    lucene_phrase,
    rejection_reason,
    workspace_in_progress,
)
from shelfwork.sandbox import RunningServer, serve
from shelfwork.sandbox.dspace import DSpaceState, create_app

ADMIN = ("admin@example.org", "s3cret-admin")
SUBMITTER = ("submitter@example.org", "s3cret-submitter")

METADATA = {
    "dc.title": ["Кобзар: «вибране» — том 1"],
    "dc.contributor.author": ["Шевченко, Тарас Григорович", "Франко, Іван"],
    "dc.date.issued": ["1840"],
    "dc.type": ["Text"],  # required by DSpace 8's stock form
    "dc.identifier.other": ["koha:42"],
    "dc.language.iso": ["uk"],
    "dc.subject": ["Поезія", 'Слово "про" ґанок і їжу'],
}


@dataclass
class Env:
    state: DSpaceState
    server: RunningServer
    open_collection: str
    review_collection: str
    pdf: Path

    @property
    def api(self) -> str:
        return f"{self.server.url}/server/api"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    state = DSpaceState()
    state.add_user(*ADMIN, admin=True)
    state.add_user(*SUBMITTER)
    open_collection = state.add_collection("Theses")
    review_collection = state.add_collection("Reviewed", workflow=True)
    pdf = tmp_path / "scan_v01.pdf"
    pdf.write_bytes(b"%PDF-1.4\n" + os.urandom(300_000) + b"\n%%EOF\n")
    server = serve(create_app(state), "dspace-connector")
    try:
        yield Env(state, server, open_collection, review_collection, pdf)
    finally:
        server.stop()


@dataclass
class Recorder(httpx.HTTPTransport):
    """A transport that records (method, path, status) and can drop chosen request headers."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)
    drop: tuple[str, ...] = ()
    sent: list[httpx.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for name in self.drop:
            if name in request.headers:
                del request.headers[name]
        self.sent.append(request)
        response = super().handle_request(request)
        self.seen.append((request.method, request.url.path, response.status_code))
        return response

    def statuses(self, status: int) -> list[tuple[str, str, int]]:
        return [s for s in self.seen if s[2] == status]


def client(env: Env, user: tuple[str, str] = SUBMITTER, **kwargs: Any) -> DSpace:
    return DSpace(env.api, user[0], user[1], **kwargs)


class Killed(Exception):
    """The worker died (raised from a progress callback)."""


def killed_at(
    stage: str, checkpoints: list[dict[str, Any]]
) -> Callable[[str, dict[str, Any]], None]:
    """A progress callback that keeps every checkpoint and dies once `stage`'s is written."""

    def progress(reached: str, data: dict[str, Any]) -> None:
        checkpoints.append(data)
        if reached == stage:
            raise Killed

    return progress


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ submission path (B2a)


def test_submission_without_workflow_archives_with_handle_uri_and_intact_cyrillic(env: Env) -> None:
    stages: list[tuple[str, dict[str, Any]]] = []
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection,
            METADATA,
            env.pdf,
            "скан_v01.pdf",
            progress=lambda stage, data: stages.append((stage, data)),
        )
    assert deposit.in_workflow is False
    assert deposit.item.in_archive is True
    assert deposit.item.handle and deposit.item.handle.startswith("123456789/")
    assert deposit.item.uri == f"{env.server.url}/handle/{deposit.item.handle}"
    for key, values in METADATA.items():
        assert deposit.item.metadata[key] == values, key
    assert deposit.bitstream.name == "скан_v01.pdf"
    assert deposit.bitstream.md5 == md5(env.pdf)
    assert deposit.bitstream.size == env.pdf.stat().st_size
    assert [s for s, _ in stages] == list(SUBMISSION_STAGES)
    assert stages[0][1]["id"] == deposit.workspace_id
    assert stages[0][1]["item"] == deposit.item.uuid
    stored = env.state.items[deposit.item.uuid]
    assert stored.values("dc.subject") == METADATA["dc.subject"]
    assert env.state.bitstreams[deposit.bitstream.uuid].content == env.pdf.read_bytes()


def test_submission_into_workflow_has_no_handle_until_approved(env: Env) -> None:
    with client(env) as dspace:
        deposit = dspace.create_by_submission(env.review_collection, METADATA, env.pdf, "a.pdf")
        assert deposit.in_workflow is True
        assert deposit.item.handle is None and deposit.item.uri is None
        assert deposit.item.in_archive is False
        # the tracker's poll
        waiting = dspace.item(deposit.item.uuid)
        assert waiting is not None and waiting.handle is None
        env.state.approve(deposit.item.uuid)
        archived = dspace.item(deposit.item.uuid)
    assert archived is not None and archived.in_archive is True
    assert archived.handle and archived.uri == f"{env.server.url}/handle/{archived.handle}"


def test_sections_come_from_embedded_submissionsections_of_the_stock_form(env: Env) -> None:
    """Issue 10, A1: DSpace lists a definition's sections under `_embedded.submissionsections`."""
    with client(env) as dspace:
        owner = dspace.submission_sections(env.open_collection)
    page_one = {
        "dc.contributor.author",
        "dc.title",
        "dc.title.alternative",
        "dc.date.issued",
        "dc.publisher",
        "dc.identifier.citation",
        "dc.relation.ispartofseries",
        "dc.identifier.issn",
        "dc.identifier.other",
        "dc.identifier.ismn",
        "dc.identifier.govdoc",
        "dc.identifier.uri",
        "dc.identifier.isbn",
        "dc.type",
        "dc.language.iso",
    }
    page_two = {
        "dc.subject",
        "dc.description.abstract",
        "dc.description.sponsorship",
        "dc.description",
    }
    assert owner == {key: "traditionalpageone" for key in page_one} | {
        key: "traditionalpagetwo" for key in page_two
    }


def test_the_workspace_item_is_created_with_a_json_body(env: Env) -> None:
    """Issue 10, A2: RestResourceController.post consumes only application/json or hal+json."""
    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    (created,) = [
        r
        for r in recorder.sent
        if r.method == "POST" and r.url.path == "/server/api/submission/workspaceitems"
    ]
    assert created.headers["Content-Type"] == "application/json"
    assert json.loads(created.content) == {}
    assert created.url.params["owningCollection"] == env.open_collection


def test_field_outside_every_form_section_is_refused_before_any_write(env: Env) -> None:
    narrow = env.state.add_collection(
        "Narrow form",
        form={"narrowpage": {"dc.title", "dc.date.issued", "dc.contributor.author"}},
    )
    with client(env) as dspace, pytest.raises(RemoteRefused) as caught:
        dspace.create_by_submission(narrow, METADATA, env.pdf, "a.pdf")
    message = str(caught.value)
    assert "dc.identifier.other" in message and "dc.subject" in message
    assert env.state.workspace_items == {}
    assert env.state.calls["POST /submission/workspaceitems"] == 0
    assert env.state.calls["PATCH /submission/workspaceitems/{id}"] == 0


def test_missing_required_field_is_refused_before_any_write(env: Env) -> None:
    """A field the form marks mandatory (submission-forms.xml <required>, shown as `mandatory` and
    `mandatoryMessage`) that the metadata lacks would leave a half-made workspace item behind
    (MetadataValidation only reports it); it is refused before anything is created."""
    without = {k: v for k, v in METADATA.items() if k not in ("dc.date.issued", "dc.type")}
    with client(env) as dspace, pytest.raises(RemoteRefused) as caught:
        dspace.create_by_submission(env.open_collection, without, env.pdf, "a.pdf")
    message = str(caught.value)
    assert "dc.date.issued (You must enter at least the year.)" in message
    assert "dc.type (You must choose at least one type.)" in message  # dspace-8_x
    assert env.state.calls["POST /submission/workspaceitems"] == 0
    assert env.state.workspace_items == {} and env.state.items == {}


def test_an_unknown_collection_is_refused_by_name_before_any_write(env: Env) -> None:
    """DSpace answers findByCollection for a collection it does not have with 204 and no body."""
    unknown = "00000000-0000-4000-8000-000000000000"
    with client(env) as dspace, pytest.raises(RemoteRefused) as caught:
        dspace.create_by_submission(unknown, METADATA, env.pdf, "a.pdf")
    assert f"DSpace has no collection {unknown}" in str(caught.value)
    assert env.state.calls["POST /submission/workspaceitems"] == 0


def test_resume_after_a_crash_does_not_create_a_second_workspace_item(env: Env) -> None:
    checkpoints: list[dict[str, Any]] = []
    with client(env) as dspace, pytest.raises(Killed):
        dspace.create_by_submission(
            env.open_collection,
            METADATA,
            env.pdf,
            "a.pdf",
            progress=killed_at("upload", checkpoints),
        )
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert env.state.calls["POST /submission/workspaceitems"] == 1
    assert env.state.calls["POST /submission/workspaceitems/{id}"] == 1  # uploaded once
    assert deposit.workspace_id == checkpoints[0]["id"]
    assert deposit.item.in_archive and len(env.state.items) == 1
    assert len(env.state.bitstreams) == 1
    assert deposit.item.metadata["dc.contributor.author"] == METADATA["dc.contributor.author"]


def test_resume_from_a_checkpoint_written_before_metadata_does_not_duplicate_values(
    env: Env,
) -> None:
    checkpoints: list[dict[str, Any]] = []

    def crash_after_metadata(stage: str, data: dict[str, Any]) -> None:
        if stage == "workspace":
            checkpoints.append(data)  # the metadata checkpoint is never written
        if stage == "metadata":
            raise RuntimeError("worker died")

    with client(env) as dspace, pytest.raises(RuntimeError):
        dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", progress=crash_after_metadata
        )
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert env.state.calls["POST /submission/workspaceitems"] == 1
    assert deposit.item.metadata["dc.contributor.author"] == METADATA["dc.contributor.author"]


def test_resume_when_the_deposit_landed_but_was_not_checkpointed(env: Env) -> None:
    checkpoints: list[dict[str, Any]] = []

    def crash_on_deposit(stage: str, data: dict[str, Any]) -> None:
        if stage == "deposit":
            raise RuntimeError("worker died after the deposit")
        checkpoints.append(data)

    with client(env) as dspace, pytest.raises(RuntimeError):
        dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", progress=crash_on_deposit
        )
    assert checkpoints[-1]["stage"] == "license"
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert env.state.calls["POST /workflow/workflowitems"] == 1
    assert deposit.item.in_archive and deposit.item.uri
    assert len(env.state.items) == 1


def test_a_checkpoint_of_the_other_path_is_refused(env: Env) -> None:
    with client(env) as dspace, pytest.raises(BadResume):
        dspace.create_by_submission(
            env.open_collection,
            METADATA,
            env.pdf,
            "a.pdf",
            resume={"path": "admin", "stage": "item", "item": "x"},
        )


# ------------------------------------------------------------------------ admin path (B2b)


def test_admin_path_creates_archived_item_bundle_and_bitstream(env: Env) -> None:
    stages: list[str] = []
    metadata = {**METADATA, "dc.format.extent": ["320 с."]}
    with client(env, ADMIN) as dspace:
        deposit = dspace.create_as_admin(
            env.open_collection,
            metadata,
            env.pdf,
            "scan.pdf",
            progress=lambda s, _d: stages.append(s),
        )
    assert stages == ["item", "bundle", "bitstream"]
    assert deposit.in_workflow is False and deposit.workspace_id is None
    assert (
        deposit.item.handle and deposit.item.uri and deposit.item.uri.endswith(deposit.item.handle)
    )
    assert deposit.item.metadata["dc.title"] == METADATA["dc.title"]
    assert deposit.bitstream.md5 == md5(env.pdf)
    stored = env.state.bitstreams[deposit.bitstream.uuid]
    assert env.state.bundles[stored.bundle].name == "ORIGINAL"


def test_admin_path_refused_for_a_submitter(env: Env) -> None:
    with client(env) as dspace, pytest.raises(AuthFailed) as caught:
        dspace.create_as_admin(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert caught.value.status == 403


def test_unknown_field_on_admin_path_quotes_dspace_422(env: Env) -> None:
    with client(env, ADMIN) as dspace, pytest.raises(RemoteRefused) as caught:
        dspace.create_as_admin(
            env.open_collection, {"dc.title": ["x"], "dc.nonsense": ["y"]}, env.pdf, "a.pdf"
        )
    assert caught.value.status == 422
    assert "dc.nonsense" in str(caught.value)


def test_admin_resume_reuses_item_and_bundle(env: Env) -> None:
    checkpoints: list[dict[str, Any]] = []
    with client(env, ADMIN) as dspace, pytest.raises(Killed):
        dspace.create_as_admin(
            env.open_collection,
            METADATA,
            env.pdf,
            "a.pdf",
            progress=killed_at("bundle", checkpoints),
        )
    with client(env, ADMIN) as dspace:
        deposit = dspace.create_as_admin(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert len(env.state.items) == 1 and len(env.state.bundles) == 1
    assert deposit.item.uuid == checkpoints[0]["item"]


# ------------------------------------------------------------------------ checksums


def test_corrupted_upload_is_caught_before_deposit_then_resume_replaces_it(env: Env) -> None:
    env.state.corrupt_next_uploads(1)
    checkpoints: list[dict[str, Any]] = []
    with client(env) as dspace, pytest.raises(ChecksumMismatch) as caught:
        dspace.create_by_submission(
            env.open_collection,
            METADATA,
            env.pdf,
            "a.pdf",
            progress=lambda _s, data: checkpoints.append(data),
        )
    error = caught.value
    assert error.file == "a.pdf" and error.expected == md5(env.pdf)
    # the message may reach a cataloguer (956$z): the file's name, never its server path
    assert error.got != error.expected and "a.pdf" in str(error)
    assert str(env.pdf.parent) not in str(error)
    assert env.state.calls["POST /workflow/workflowitems"] == 0
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert deposit.bitstream.md5 == md5(env.pdf)
    assert len(env.state.bitstreams) == 1  # the damaged copy was removed


def test_corrupted_admin_upload_raises_checksum_mismatch(env: Env) -> None:
    env.state.corrupt_next_uploads(1)
    with client(env, ADMIN) as dspace, pytest.raises(ChecksumMismatch):
        dspace.create_as_admin(env.open_collection, METADATA, env.pdf, "a.pdf")


def test_verify_compares_with_the_local_file(env: Env, tmp_path: Path) -> None:
    with client(env, ADMIN) as dspace:
        deposit = dspace.create_as_admin(env.open_collection, METADATA, env.pdf, "a.pdf")
        dspace.verify(deposit.bitstream, env.pdf)
        other = tmp_path / "other.pdf"
        other.write_bytes(b"%PDF-1.4 something else")
        with pytest.raises(ChecksumMismatch):
            dspace.verify(deposit.bitstream, other)
        assert dspace.bitstream_md5(deposit.bitstream.uuid) == md5(env.pdf)


# ------------------------------------------------------------------------ lookup (B3)


def test_item_returns_none_for_404(env: Env) -> None:
    with client(env) as dspace:
        assert dspace.item("00000000-0000-0000-0000-000000000000") is None


def test_find_by_metadata_follows_pages_and_keeps_exact_matches_only(env: Env) -> None:
    with client(env, ADMIN) as dspace:
        made = [
            dspace.create_as_admin(
                env.open_collection,
                {"dc.title": [f"Том {n}"], "dc.publisher": ["Видавництво «Смолоскип»"]},
                env.pdf,
                "a.pdf",
            ).item.uuid
            for n in range(7)
        ]
        # a longer value holding the phrase: Solr finds it, the client drops it
        dspace.create_as_admin(
            env.open_collection,
            {"dc.title": ["Інше"], "dc.publisher": ["Видавництво «Смолоскип» і партнери"]},
            env.pdf,
            "a.pdf",
        )
        before = env.state.calls["GET /discover/search/objects"]
        found = dspace.find_by_metadata("dc.publisher", "Видавництво «Смолоскип»", page_size=3)
        pages = env.state.calls["GET /discover/search/objects"] - before
    assert sorted(i.uuid for i in found) == sorted(made)
    assert pages == 3


def test_find_by_identifier_ignores_lookalikes_and_items_in_progress(env: Env) -> None:
    with client(env, ADMIN) as dspace:
        wanted = dspace.create_as_admin(
            env.open_collection,
            {"dc.title": ["A"], "dc.identifier.other": ["koha:42"]},
            env.pdf,
            "a.pdf",
        )
        for lookalike in ("koha:420", "koha-42"):
            dspace.create_as_admin(
                env.open_collection,
                {"dc.title": ["B"], "dc.identifier.other": [lookalike]},
                env.pdf,
                "a.pdf",
            )
        assert [i.uuid for i in dspace.find_by_metadata("dc.identifier.other", "koha:42")] == [
            wanted.item.uuid
        ]
    with client(env) as dspace:
        reviewed = dspace.create_by_submission(
            env.review_collection,
            {**METADATA, "dc.identifier.other": ["koha:77"]},
            env.pdf,
            "a.pdf",
        )
        assert dspace.find_by_metadata("dc.identifier.other", "koha:77") == []
        mine = dspace.find_own_submissions("dc.identifier.other", "koha:77")
    assert [(s.item.uuid, s.stage) for s in mine] == [(reviewed.item.uuid, "workflow")]


def test_own_submissions_in_review_in_a_workspace_and_archived(env: Env) -> None:
    """Issue 10, A5: configuration=workspace lists the caller's items at every stage; the item in
    review is an XmlWorkflowItem there, so no dsoType=item filter may be sent."""
    metadata = {**METADATA, "dc.identifier.other": ["koha:5"]}
    with client(env) as dspace:
        archived = dspace.create_by_submission(env.open_collection, metadata, env.pdf, "a.pdf")
        waiting = dspace.create_by_submission(env.review_collection, metadata, env.pdf, "a.pdf")
        checkpoints: list[dict[str, Any]] = []
        with pytest.raises(Killed):  # never deposited: stays in the workspace
            dspace.create_by_submission(
                env.open_collection,
                metadata,
                env.pdf,
                "a.pdf",
                progress=killed_at("metadata", checkpoints),
            )
        found = dspace.find_own_submissions("dc.identifier.other", "koha:5")
        lookalike = dspace.find_own_submissions("dc.identifier.other", "koha:50")
    stages = {s.item.uuid: (s.stage, s.id) for s in found}
    assert stages == {
        archived.item.uuid: ("archived", None),
        waiting.item.uuid: ("workflow", stages[waiting.item.uuid][1]),
        checkpoints[0]["item"]: ("workspace", checkpoints[0]["id"]),
    }
    assert isinstance(stages[waiting.item.uuid][1], int)
    assert all(s.item.metadata["dc.identifier.other"] == ["koha:5"] for s in found)
    assert lookalike == []
    # another submitter's items are not theirs
    env.state.add_user("other@example.org", "other-pass")
    with client(env, ("other@example.org", "other-pass")) as other:
        assert other.find_own_submissions("dc.identifier.other", "koha:5") == []


def test_in_progress_tells_review_from_a_rejection_and_reads_the_reason(env: Env) -> None:
    """Issue 10, A6: a reviewer's rejection puts the item back into a (new) workspace item."""
    env.state.add_user("reviewer@example.org", "reviewer-pass")
    with client(env) as dspace:
        waiting = dspace.create_by_submission(env.review_collection, METADATA, env.pdf, "a.pdf")
        review = dspace.in_progress(waiting.item.uuid)
        assert review is not None and review.stage == "workflow"
        item = dspace.item(waiting.item.uuid)
        assert item is not None and rejection_reason(item) is None
        env.state.reject(waiting.item.uuid, "reviewer@example.org", "pages 3-5 missing")
        back = dspace.in_progress(waiting.item.uuid)
        assert back is not None and back.stage == "workspace" and back.id != waiting.workspace_id
        item = dspace.item(waiting.item.uuid)
        assert item is not None and not item.in_archive
        assert rejection_reason(item) == "pages 3-5 missing"
        archived = dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "b.pdf")
        assert dspace.in_progress(archived.item.uuid) is None


def test_find_by_metadata_escapes_quotes_and_backslashes(env: Env) -> None:
    assert lucene_phrase('a "b" \\c') == '"a \\"b\\" \\\\c"'
    tricky = 'Слово "про" \\ похід'
    with client(env, ADMIN) as dspace:
        made = dspace.create_as_admin(
            env.open_collection, {"dc.title": ["T"], "dc.subject": [tricky]}, env.pdf, "a.pdf"
        )
        found = dspace.find_by_metadata("dc.subject", tricky)
    assert [i.uuid for i in found] == [made.item.uuid]
    assert found[0].metadata["dc.subject"] == [tricky]


def test_find_by_metadata_rejects_a_malformed_field_key(env: Env) -> None:
    with client(env) as dspace, pytest.raises(RemoteRefused):
        dspace.find_by_metadata('dc.title OR *:*"', "x")


# ------------------------------------------------------------------------ session (B1)


def test_login_adopts_the_token_rotated_at_login(env: Env) -> None:
    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert recorder.statuses(403) == []
    assert env.state.calls["GET /security/csrf"] == 1
    assert env.state.calls["POST /authn/login"] == 1


def test_rotation_on_every_response_is_followed(env: Env) -> None:
    env.state.rotate_csrf_every_response = True
    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        deposit = dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert deposit.item.in_archive
    assert recorder.statuses(403) == []


def test_a_stale_csrf_token_is_refreshed_and_retried_once(env: Env) -> None:
    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        dspace.login()
        dspace._csrf = "stale-token"  # as if a response's rotation had been missed
        deposit = dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert deposit.item.in_archive
    assert len(recorder.statuses(403)) == 1
    assert env.state.calls["POST /submission/workspaceitems"] == 2  # refused once, then created
    assert len(env.state.items) == 1


def test_csrf_refused_twice_is_auth_failed(env: Env) -> None:
    recorder = Recorder(drop=("X-XSRF-TOKEN",))
    with client(env, transport=recorder) as dspace, pytest.raises(AuthFailed) as caught:
        dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert "CSRF" in str(caught.value)
    assert len(recorder.statuses(403)) == 2


def test_expired_jwt_mid_run_logs_in_again_once(env: Env) -> None:
    def expire_after_workspace(stage: str, _data: dict[str, Any]) -> None:
        if stage == "workspace":
            env.state.expire_tokens()

    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", progress=expire_after_workspace
        )
    assert deposit.item.in_archive
    assert len(recorder.statuses(401)) == 1
    assert env.state.calls["POST /authn/login"] == 2
    assert env.state.calls["POST /submission/workspaceitems"] == 1


def test_jwt_close_to_expiry_is_renewed_before_use(env: Env) -> None:
    env.state.jwt_ttl = 30.0  # always within the 60 s margin
    recorder = Recorder()
    with client(env, transport=recorder) as dspace:
        dspace.item("00000000-0000-0000-0000-000000000000")
        dspace.item("00000000-0000-0000-0000-000000000000")
    assert env.state.calls["POST /authn/login"] == 2
    assert recorder.statuses(401) == []


def test_bad_password_is_auth_failed_without_the_password(env: Env) -> None:
    with (
        client(env, (SUBMITTER[0], "wrong-horse-battery")) as dspace,
        pytest.raises(AuthFailed) as caught,
    ):
        dspace.login()
    assert caught.value.status == 401
    assert "wrong-horse-battery" not in str(caught.value)
    assert SUBMITTER[0] in str(caught.value)


def test_401_after_relogin_is_auth_failed_without_the_token(env: Env) -> None:
    recorder = Recorder(drop=("Authorization",))
    with client(env, transport=recorder) as dspace, pytest.raises(AuthFailed) as caught:
        dspace.create_by_submission(env.open_collection, METADATA, env.pdf, "a.pdf")
    assert caught.value.status == 401
    assert env.state.workspace_items == {}
    assert env.state.calls["POST /authn/login"] == 2
    assert "Bearer" not in str(caught.value) and SUBMITTER[1] not in str(caught.value)


# ------------------------------------------------------------------------ unavailability


def test_500_is_remote_unavailable(env: Env) -> None:
    env.state.fail_next(1, 500, "/core/items")
    with client(env) as dspace, pytest.raises(RemoteUnavailable) as caught:
        dspace.item("00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 500


def test_503_when_down_is_remote_unavailable(env: Env) -> None:
    env.state.down = True
    with client(env) as dspace, pytest.raises(RemoteUnavailable):
        dspace.login()


def test_timeout_is_remote_unavailable(env: Env) -> None:
    env.state.latency = 1.0
    with client(env, timeout=0.2) as dspace, pytest.raises(RemoteUnavailable):
        dspace.login()


def test_refused_connection_is_remote_unavailable(env: Env) -> None:
    url = env.api
    env.server.stop()
    with DSpace(url, *SUBMITTER, timeout=2) as dspace, pytest.raises(RemoteUnavailable):
        dspace.login()


def test_429_mid_creation_is_remote_unavailable_and_resumable(env: Env) -> None:
    checkpoints: list[dict[str, Any]] = []
    env.state.fail_next(1, 429, "/workflow")
    with client(env) as dspace, pytest.raises(RemoteUnavailable):
        dspace.create_by_submission(
            env.open_collection,
            METADATA,
            env.pdf,
            "a.pdf",
            progress=lambda _s, data: checkpoints.append(data),
        )
    with client(env) as dspace:
        deposit = dspace.create_by_submission(
            env.open_collection, METADATA, env.pdf, "a.pdf", resume=checkpoints[-1]
        )
    assert deposit.item.in_archive
    assert env.state.calls["POST /submission/workspaceitems"] == 1


# ------------------------------------------------------------------------ shapes of a real DSpace


def test_a_fresh_workspace_item_is_empty_whatever_optional_steps_it_has() -> None:
    """A step DSpace's stock `traditional` leaves commented out (item-submission.xml) shows data in a
    fresh workspace item: itemAccessConditions `{"discoverable": true, "accessConditions": []}`
    (RestContract workspaceitem-data-access.md), identifiers a nested object
    (workspaceitem-data-identifiers.md). Only metadata values or files make an item non-empty, or a
    killed run's empty item would never be taken over on such a repository."""
    fresh = {
        "id": 7,
        "lastModified": "2026-01-01T00:00:00Z",
        "sections": {
            "collection": "8e0f6b5c-9a1e-4d4b-9c77-2a53f1f0d1a1",
            "traditionalpageone": {},
            "traditionalpagetwo": {},
            "itemAccessConditions": {"discoverable": True, "accessConditions": []},
            "identifiers": {
                "identifiers": {
                    "identifiers": [
                        {
                            "value": "http://localhost:4000/handle/123456789/420",
                            "identifierType": "handle",
                            "identifierStatus": None,
                            "type": "identifier",
                        }
                    ],
                    "displayTypes": ["handle", "doi"],
                }
            },
            "upload": {"primary": None, "files": []},
            "license": {"url": None, "acceptanceDate": None, "granted": False},
        },
        "type": "workspaceitem",
    }
    assert workspace_in_progress(fresh).empty is True
    fresh["sections"]["traditionalpageone"] = {"dc.title": [{"value": "Kobzar", "place": 0}]}
    assert workspace_in_progress(fresh).empty is False


def test_the_uri_is_the_handles_one_when_the_item_has_others() -> None:
    """HandleIdentifierProvider.populateHandleMetadata adds the handle's canonical URL to
    dc.identifier.uri after any value already there (the stock form lets a submitter enter a URI)."""
    item = item_from_json(
        {
            "uuid": "0b7c2f7e-1d5b-4f0e-8d7e-6a0d9d1f3c11",
            "handle": "123456789/7",
            "inArchive": True,
            "metadata": {
                "dc.identifier.uri": [
                    {"value": "https://publisher.example/book/7"},
                    {"value": "https://repo.example/handle/123456789/7"},
                ]
            },
        }
    )
    assert item.uri == "https://repo.example/handle/123456789/7"
