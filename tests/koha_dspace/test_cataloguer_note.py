"""What the pipeline writes into Koha's 956$z when a job fails or warns (`short_note`).

Every cataloguer reads that subfield, so it says where the job stopped and why in the pipeline's
own words, and never an internal address (a URL, an IP address, a server path) nor what a remote
system answered (a stack trace, a database host, a JSON or HTML page). The job itself keeps all
of that for the administrator. The texts here are made by the real connectors and engine errors,
so a change of wording there is seen here.
"""

from __future__ import annotations

import json

import httpx
import pytest

from shelfwork.connectors import RemoteRefused, error_for, transport_error
from shelfwork.connectors.dspace import ChecksumMismatch, InProgress, Item
from shelfwork.errors import StepFailed
from shelfwork.pipelines.koha_dspace.marc import MAX_NOTE
from shelfwork.pipelines.koha_dspace.pipeline import parked_note, short_note

API = "http://svc:s3cret@dspace.internal.example:8080/server/api"
INTERNAL = ("dspace.internal", "db01", "10.1.2.3", "://", "s3cret", "/srv/", "/server/api")


def failed(step: str, exc: BaseException, attempts: int = 1) -> str:
    """The job error the engine records for a step that ran out of attempts."""
    return str(StepFailed(step, exc, attempts))


def answered(status: int, body: str, content_type: str, path: str = "/core/items/x") -> str:
    request = httpx.Request("GET", f"{API}{path}")
    response = httpx.Response(
        status, text=body, headers={"Content-Type": content_type}, request=request
    )
    return failed("deposit", error_for("DSpace", response, "reading item x"))


def assert_internal_free(note: str) -> None:
    for text in INTERNAL:
        assert text not in note, (text, note)


def test_a_remote_that_cannot_be_reached_is_named_without_its_address() -> None:
    request = httpx.Request("POST", f"{API}/authn/login")
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=request)
    error = failed("deposit", transport_error("DSpace", refused, "login as shelfwork@example"), 4)
    assert "dspace.internal.example" in error  # the job keeps it, for the administrator
    note = short_note(error)
    assert note.startswith("deposit (4 tries): DSpace: login as shelfwork@example")
    assert "Connection refused" in note
    assert_internal_free(note)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            "java.lang.IllegalStateException at org.dspace.core.Context "
            "jdbc:postgresql://db01:5432/dspace (10.1.2.3)",
            "text/plain",
        ),
        (json.dumps({"message": "Connection to db01 refused", "path": "/server/api"}), "json"),
        ("<html><body><h1>502</h1><p>upstream db01 at 10.1.2.3</p></body></html>", "text/html"),
    ],
    ids=["text", "json", "html"],
)
def test_what_a_remote_answered_stays_in_the_job(body: str, content_type: str) -> None:
    error = answered(500, body, content_type)
    assert "db01" in error
    note = short_note(error)
    assert note == "deposit: DSpace: reading item x (HTTP 500)", note


def test_server_paths_and_urls_in_a_message_are_hidden() -> None:
    denied = PermissionError(13, "Permission denied", "/srv/scans/processed/2026/kobzar_v01.pdf")
    note = short_note(failed("take_file", denied))
    assert "kobzar_v01.pdf" in note and "Permission denied" in note  # the file's own name stays
    assert_internal_free(note)
    vanished = RemoteRefused("DSpace", f"item at {API}/core/items/1 vanished; see 10.1.2.3:8080")
    note = short_note(failed("deposit", vanished))
    assert note.startswith("deposit: DSpace: item at ") and note.endswith("vanished; see [address]")
    assert_internal_free(note)


def test_a_failed_branch_is_named_by_the_branch() -> None:
    body = json.dumps({"message": "Service Unavailable from 10.1.2.3"})
    error = f"critical branch 'dspace' failed: {answered(503, body, 'application/json')}"
    assert short_note(error) == "dspace: DSpace: reading item x (HTTP 503)"


def test_the_pipelines_own_words_are_kept() -> None:
    form = RemoteRefused(
        "DSpace",
        "collection 5ad50035's submission form requires dc.date.issued (You must enter at least "
        "the year.), which the record does not give",
    )
    assert short_note(failed("deposit", form)) == (
        "deposit: DSpace: collection 5ad50035's submission form requires dc.date.issued (You "
        "must enter at least the year.), which the record does not give"
    )
    damaged = ChecksumMismatch("book-45_v01.pdf", "ab" * 16, "cd" * 16, bitstream="b-1")
    note = short_note(failed("deposit", damaged))
    assert "MD5 of book-45_v01.pdf" in note and "(bitstream b-1)" in note
    assert short_note("scans/book-20.pdf not found in inbox") == (
        "scans/book-20.pdf not found in inbox"  # the record's own 956$u, relative, stays
    )


def test_the_workspace_note_keeps_what_to_do_within_956z() -> None:
    """956$z holds MAX_NOTE characters; a long reason and account name must not push the
    instruction out of the note."""
    reason = "The scan is missing pages 3 to 5 and the title page belongs to another book entirely"
    item = Item(
        uuid="0b7c2f7e-1d5b-4f0e-8d7e-6a0d9d1f3c11",
        name="Kobzar",
        handle=None,
        in_archive=False,
        withdrawn=False,
        metadata={
            "dc.description.provenance": [
                "Step: reviewstep - action:reviewaction Rejected by Reviewer Name "
                f"(reviewer@library.example.org), reason: {reason} on 2026-01-02T03:04:05Z (GMT) "
            ]
        },
    )
    where = InProgress("workspace", 123456)
    for note in (
        parked_note(item, where, "shelfwork-integration@library.example.org", rejected=True),
        parked_note(
            Item(item.uuid, "Kobzar", None, False, False, {}),
            where,
            "shelfwork-integration@library.example.org",
        ),
    ):
        # written by the tracker as it is, or by a re-run as its job's error
        failed = (
            "critical branch 'dspace' failed: step 'deposit' failed after 1 attempt(s): "
            f"biblio 2147483647: {note}"
        )
        for written in (note, short_note(failed)):
            assert len(written) <= MAX_NOTE, (len(written), written)
            assert written.endswith("then integrate again"), written
            assert "workspace item 123456" in written


def test_a_note_about_an_unreachable_repository_names_no_internal_url() -> None:
    """A request that got no answer (refused, timed out) is quoted with its method and URL but no
    status; 956$z must not carry the repository's internal address either."""
    request = httpx.Request("GET", "http://dspace.internal:8080/server/api/core/items/x")
    refused = transport_error(
        "DSpace", httpx.ConnectError("[Errno 111] Connection refused", request=request), "read x"
    )
    text = f"critical branch 'dspace' failed: step 'deposit' failed after 4 attempt(s): {refused}"
    note = short_note(text)
    assert "dspace.internal" not in note and "/server/api" not in note, note
    assert note.startswith("dspace (4 tries): DSpace: read x: ConnectError"), note
