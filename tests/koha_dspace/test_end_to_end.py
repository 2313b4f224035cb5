"""The koha-dspace pipeline end to end: a real engine (SQLite, local threads) against the emulated
Koha and DSpace, checking what a cataloguer and a repository manager would see afterwards: the
Koha record's 956/856, DSpace's items and files, the inbox/Processed/Error folders, the job."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pymarc
import pytest
from pypdf import PdfWriter

from shelfwork.connectors.dspace import DSpace
from shelfwork.engine import Engine
from shelfwork.jobs import JobView
from shelfwork.pipelines import koha_dspace
from shelfwork.pipelines.koha_dspace.config import SYSTEM
from shelfwork.pipelines.koha_dspace.files import fingerprint_of
from shelfwork.pipelines.koha_dspace.marc import (
    IntegrationState,
    integration_state,
    parse_marcxml,
)
from shelfwork.pipelines.koha_dspace.pipeline import REVIEW_NOTE
from shelfwork.sandbox.pdfs import corrupt_pdf, scanned_pdf, text_pdf
from shelfwork.sandbox.peers import DSPACE_USER, Peers
from shelfwork.sandbox.records import Book, marcxml
from tests.support.dspace import Session

MODULE = "shelfwork.pipelines.koha_dspace"


@dataclass
class World:
    peers: Peers
    folder: Path
    engine: Engine

    @property
    def inbox(self) -> Path:
        return self.folder / "inbox"

    def book(self, n: int, pdf: str | None = "text", **fields: Any) -> Book:
        """Catalogue book `n` in Koha and put its PDF (text/scanned/corrupt/None) in the inbox."""
        fields.setdefault("title", f"Book number {n}")
        fields.setdefault("author", "Author, Some")
        fields.setdefault("year", "2020")
        fields.setdefault("file", f"scans/book-{n}.pdf")
        book = Book(n, **fields)
        if pdf is not None:
            target = self.inbox / book.file
            target.parent.mkdir(parents=True, exist_ok=True)
            {"text": text_pdf, "scanned": scanned_pdf, "corrupt": corrupt_pdf}[pdf](target)
        self.peers.koha.add_record(n, marcxml(book))
        return book

    def run(self, n: int, timeout: float = 60.0) -> JobView:
        job = self.engine.submit("koha-dspace", {"biblionumber": n})
        view = self.engine.wait(job.job_id, timeout=timeout)
        assert view.finished, f"job {view.id} still {view.state}"
        return view

    def record(self, n: int) -> pymarc.Record:
        return parse_marcxml(self.peers.koha.record(n), biblionumber=n)

    def clear_956(self, n: int, *codes: str) -> None:
        """Someone deletes these subfields of biblio `n`'s 956 in Koha."""
        record = self.record(n)
        for code in codes:
            record["956"].delete_subfield(code)
        self.peers.koha.add_record(n, pymarc.record_to_xml(record, namespace=True))

    def state(self, n: int) -> IntegrationState:
        return integration_state(self.record(n))

    def items_for(self, n: int) -> list[Any]:
        return self.peers.dspace.items_with("dc.identifier.other", f"koha:{n}")

    def files(self, folder: str) -> list[str]:
        root = self.folder / folder
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


WorldFactory = Callable[..., World]


@pytest.fixture
def world(peers: Peers, make_engine: Any, tmp_path: Path) -> WorldFactory:
    def make(**config: Any) -> World:
        config.setdefault("pdf_retry_delay", 0.05)
        systems = {SYSTEM: peers.integrator_config(tmp_path, **config)}
        engine = make_engine(
            koha_dspace.PIPELINES,
            pipeline_modules=[MODULE],
            systems=systems,
            tracker_profile="dev",
            max_running=4,
        )
        return World(peers, tmp_path, engine)

    return make


def assert_imported(w: World, n: int, view: JobView) -> IntegrationState:
    assert view.state == "succeeded", view.error
    state = w.state(n)
    items = w.items_for(n)
    assert len(items) == 1, f"{len(items)} DSpace items for koha:{n}"
    item = items[0]
    assert state.status == "imported"
    assert state.uuid == item.uuid
    assert list(state.handle_urls) == item.values("dc.identifier.uri")
    assert view.result["handle_url"] == state.handle_urls[0]
    return state


# --- the paths a cataloguer meets --------------------------------------------------------------


def test_success_with_cover(world: WorldFactory, backend: str) -> None:
    """On both configurations: SQLite + local threads, PostgreSQL + a Celery worker."""
    w = world()
    w.book(1, title="Кобзар", author="Шевченко, Тарас", language="ukr")
    view = w.run(1)
    state = assert_imported(w, 1, view)
    # The file was renamed first, into Processed, and DSpace holds exactly those bytes.
    assert w.files("processed") == ["book-1_v01.pdf"]
    assert w.files("inbox") == []
    item = w.items_for(1)[0]
    assert item.values("dc.title") == ["Кобзар"]  # Cyrillic kept intact
    assert item.values("dc.contributor.author") == ["Шевченко, Тарас"]
    stored = [b for b in w.peers.dspace.bitstreams.values()]
    assert len(stored) == 1
    assert stored[0].md5 == fingerprint_of(w.folder / "processed" / "book-1_v01.pdf").md5
    # One cover in Koha, and 956$c points at it on the OPAC.
    covers = w.peers.koha.covers_of(1)
    assert len(covers) == 1
    assert (
        state.cover_url == f"{w.peers.koha_url}/cgi-bin/koha/opac-image.pl?imagenumber={covers[0]}"
    )
    assert state.message is None
    assert view.warnings == []


def test_cover_failure_is_a_warning_and_the_job_succeeds(world: WorldFactory) -> None:
    w = world()
    w.book(2)
    w.peers.koha.fail_next(10, 500, "/cgi-bin/koha/tools/upload-file.pl")
    view = w.run(2)
    state = assert_imported(w, 2, view)
    assert state.cover_url is None
    assert w.peers.koha.covers_of(2) == []
    assert any("cover" in str(w_["message"]) for w_ in view.warnings)
    assert state.message is not None and "cover" in state.message and "HTTP 500" in state.message
    attempts = {s.name: s.attempts for s in view.steps}
    assert attempts["upload_cover"] == 3  # the seed's three tries


def test_dspace_failure_moves_the_file_to_error_and_marks_koha(world: WorldFactory) -> None:
    w = world()
    w.book(3)
    w.peers.dspace.fail_next(100, 500, "/submission/workspaceitems")
    view = w.run(3, timeout=90)
    assert view.state == "failed"
    assert "HTTP 500" in (view.error or "")
    assert w.files("processed") == []
    assert w.files("error") == ["book-3_v01.pdf", "book-3_v01.pdf.error.json"]
    state = w.state(3)
    assert state.status == "error"
    assert state.message and "HTTP 500" in state.message
    assert w.items_for(3) == []


def test_duplicate_by_956_3_reuses_the_item(world: WorldFactory) -> None:
    w = world()
    w.book(4)
    first = w.run(4)
    uuid = assert_imported(w, 4, first).uuid
    # A new scan arrives for the same record (956$y cleared by a person), $3 still names the item.
    text_pdf(w.inbox / "scans/book-4.pdf", 1)
    w.clear_956(4, "y")
    second = w.run(4)
    assert second.state == "succeeded", second.error
    assert second.result["uuid"] == uuid
    assert len(w.items_for(4)) == 1
    assert len(w.state(4).handle_urls) == 1


def test_duplicate_by_identifier_search_reuses_the_item(world: WorldFactory) -> None:
    w = world()
    w.book(5)
    w.run(5)
    uuid = w.state(5).uuid
    # Someone strips 956$3 and $y from the record: the identifier search still finds the item.
    w.clear_956(5, "3", "y")
    text_pdf(w.inbox / "scans/book-5.pdf", 1)
    again = w.run(5)
    assert again.state == "succeeded", again.error
    assert len(w.items_for(5)) == 1
    assert w.state(5).uuid == uuid
    assert again.result["uuid"] == uuid


def test_rerun_of_a_finished_record_changes_nothing(world: WorldFactory) -> None:
    w = world()
    w.book(6)
    w.run(6)
    before = w.peers.koha.record(6)
    puts = w.peers.koha.calls["PUT /api/v1/biblios"]
    uploads = w.peers.koha.calls["POST /cgi-bin/koha/tools/upload-file.pl"]
    items = len(w.peers.dspace.items)
    again = w.run(6)
    assert again.state == "succeeded", again.error
    assert w.peers.koha.record(6) == before
    assert w.peers.koha.calls["PUT /api/v1/biblios"] == puts
    assert w.peers.koha.calls["POST /cgi-bin/koha/tools/upload-file.pl"] == uploads
    assert len(w.peers.dspace.items) == items
    assert again.result["koha_updated"] is False


def test_double_click_returns_the_same_job(world: WorldFactory) -> None:
    w = world()
    w.book(7)
    w.peers.dspace.latency = 0.3
    first = w.engine.submit("koha-dspace", {"biblionumber": 7})
    second = w.engine.submit("koha-dspace", {"biblionumber": 7})
    assert second.job_id == first.job_id and not second.created
    assert w.engine.wait(first.job_id).state == "succeeded"


def test_review_workflow_item_is_archived_later_by_the_tracker(
    world: WorldFactory, backend: str
) -> None:
    w = world(review=True)
    w.book(8)
    view = w.run(8)
    assert view.state == "succeeded", view.error
    assert view.result["in_review"] is True and view.result["handle_url"] is None
    state = w.state(8)
    assert state.status == "imported" and state.handle_urls == ()
    assert state.message and "awaiting review" in state.message
    entity = w.engine.trackers.get("dspace-review", view.result["uuid"])
    assert entity.state == "IN_REVIEW"
    # Nothing changes while the item waits.
    w.engine.trackers.force_poll("dspace-review", entity.key)
    assert w.engine.trackers.get("dspace-review", entity.key).state == "IN_REVIEW"
    w.peers.dspace.approve(view.result["uuid"])
    w.engine.trackers.force_poll("dspace-review", entity.key)
    assert w.engine.trackers.get("dspace-review", entity.key).state == "ARCHIVED"
    state = w.state(8)
    item = w.items_for(8)[0]
    assert list(state.handle_urls) == item.values("dc.identifier.uri") != []
    assert state.message is None  # the review note went; nothing else was said


@pytest.mark.parametrize("generation", ["22.11", "24.05"])
def test_koha_login_generations(generation: str, world: WorldFactory) -> None:
    w = world()
    w.peers.koha.generation = generation  # type: ignore[assignment]
    w.book(9)
    view = w.run(9)
    state = assert_imported(w, 9, view)
    assert state.cover_url is not None and len(w.peers.koha.covers_of(9)) == 1
    posts = w.peers.koha.calls["POST /cgi-bin/koha/mainpage.pl"]
    assert posts >= 1


def test_oauth2_and_admin_deposit_path(world: WorldFactory) -> None:
    w = world(auth="oauth2", deposit="admin")
    w.book(10, pdf="scanned")
    view = w.run(10)
    assert_imported(w, 10, view)
    assert w.peers.dspace.calls["POST /core/items"] == 1
    assert w.peers.dspace.calls["POST /submission/workspaceitems"] == 0
    assert w.peers.koha.calls["POST /api/v1/oauth/token"] >= 1


def test_overlay_rule_that_keeps_old_fields_fails_the_job(world: WorldFactory) -> None:
    w = world()
    w.book(11)
    w.peers.koha.overlay_keep = {"956", "856"}
    view = w.run(11)
    assert view.state == "failed"
    assert "did not keep" in (view.error or "")
    assert w.files("error") == ["book-11_v01.pdf", "book-11_v01.pdf.error.json"]


# --- bad input: each gives a clear error, the file is kept, nothing is lost ---------------------


def test_missing_file(world: WorldFactory) -> None:
    w = world()
    w.book(20, pdf=None)
    view = w.run(20)
    assert view.state == "failed"
    assert "book-20.pdf not found in inbox" in (view.error or "")
    state = w.state(20)
    assert state.status == "error" and "not found" in (state.message or "")


def test_no_956(world: WorldFactory) -> None:
    w = world()
    w.book(21, pdf=None, file=None)
    view = w.run(21)
    assert view.state == "failed"
    assert "no 956$u" in (view.error or "")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("../outside.pdf", ".."),
        ("/etc/passwd", "absolute"),
        ("scans/../../outside.pdf", ".."),
        ("link/secret.pdf", "outside"),
    ],
)
def test_956u_escaping_the_inbox_is_refused(
    reference: str, expected: str, world: WorldFactory
) -> None:
    w = world()
    outside = w.folder / "outside"
    outside.mkdir()
    text_pdf(outside / "secret.pdf")
    text_pdf(w.folder / "outside.pdf")
    w.inbox.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, w.inbox / "link")
    w.book(22, pdf=None, file=reference)
    view = w.run(22)
    assert view.state == "failed"
    assert expected in (view.error or "").lower(), view.error
    # Nothing was moved: the files outside are where they were.
    assert (outside / "secret.pdf").exists() and (w.folder / "outside.pdf").exists()
    assert w.files("processed") == []
    assert w.state(22).status == "error"


def _encrypted(path: Path) -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt("a secret")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        writer.write(out)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("corrupt", "corrupt pdf"),
        ("not-pdf", "not a pdf"),
        ("empty", "empty file"),
        ("encrypted", "encrypted"),
    ],
)
def test_bad_pdfs_go_to_error_with_a_sidecar(kind: str, expected: str, world: WorldFactory) -> None:
    w = world()
    book = w.book(23, pdf="corrupt" if kind == "corrupt" else None)
    path = w.inbox / str(book.file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "not-pdf":
        path.write_bytes(b"PK\x03\x04 this is a zip, not a scan")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "encrypted":
        _encrypted(path)
    view = w.run(23)
    assert view.state == "failed"
    assert expected in (view.error or "").lower(), view.error
    assert w.files("error") == ["book-23_v01.pdf", "book-23_v01.pdf.error.json"]
    assert w.state(23).status == "error"
    assert w.items_for(23) == []


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE record [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<record xmlns="http://www.loc.gov/MARC21/slim"><leader>00000nam a2200000 a 4500</leader>
<datafield tag="245" ind1="1" ind2="0"><subfield code="a">&xxe;</subfield></datafield>
<datafield tag="956" ind1=" " ind2=" "><subfield code="u">scans/x.pdf</subfield></datafield>
</record>"""
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b']><record xmlns="http://www.loc.gov/MARC21/slim"><datafield tag="245" ind1="1" ind2="0">'
    b'<subfield code="a">&lol9;</subfield></datafield></record>'
)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"<record><datafield tag='245'>", "biblio 24"),
        (XXE, "doctype"),
        (LAUGHS, "doctype"),
    ],
    ids=["malformed", "xxe", "billion-laughs"],
)
def test_hostile_or_broken_marcxml(payload: bytes, expected: str, world: WorldFactory) -> None:
    w = world()
    with w.peers.koha._lock:
        w.peers.koha.records[24] = payload  # what a broken Koha could send
    view = w.run(24)
    assert view.state == "failed"
    assert expected in (view.error or "").lower(), view.error
    assert "root:" not in (view.error or "")  # /etc/passwd was never read


def test_koha_wrong_password(world: WorldFactory, peers: Peers) -> None:
    w = world()
    w.book(25)
    peers.koha.staff_users["integrator"] = "changed by someone"
    view = w.run(25)
    assert view.state == "failed"
    # Koha/REST/V1/Auth.pm `_basic_auth`: a refused password is 403 "Invalid password"
    assert "403" in (view.error or "")
    assert "Koha refused the password of API user 'integrator'" in (view.error or "")
    assert w.files("inbox") == ["scans/book-25.pdf"]  # never taken


def test_koha_missing_record(world: WorldFactory) -> None:
    w = world()
    view = w.run(26)
    assert view.state == "failed"
    assert "404" in (view.error or "") and "26" in (view.error or "")


def test_koha_missing_permission(world: WorldFactory, peers: Peers) -> None:
    w = world()
    w.book(27)
    peers.koha.permissions["integrator"] = frozenset({"catalogue", "upload_local_cover_images"})
    view = w.run(27)
    assert view.state == "failed"
    assert "403" in (view.error or "") and "permission" in (view.error or "").lower()
    # DSpace got the item before Koha refused the write; the file is in Error, the item kept.
    assert w.files("error") == ["book-27_v01.pdf", "book-27_v01.pdf.error.json"]


def test_koha_timeout(world: WorldFactory, peers: Peers) -> None:
    w = world()
    w.book(28)
    peers.koha.latency = 2.0
    config = w.engine.settings.systems[SYSTEM]
    config["koha"]["timeout"] = 0.3
    w.engine.settings.systems[SYSTEM] = config
    from shelfwork.pipelines.koha_dspace import config as config_module

    config_module._cache.clear()
    view = w.run(28, timeout=90)
    assert view.state == "failed"
    assert "timeout" in (view.error or "").lower()
    assert w.files("inbox") == ["scans/book-28.pdf"]


def test_dspace_field_outside_the_form_is_refused_before_any_write(world: WorldFactory) -> None:
    # the README's mapping for a local form, used against DSpace's stock form
    w = world(crosswalk={"300": {"field": "dc.format.extent", "subfields": "a"}})
    w.book(29, pages="120 p.")
    view = w.run(29)
    assert view.state == "failed"
    assert "dc.format.extent" in (view.error or "")
    assert w.peers.dspace.workspace_items == {}
    assert w.state(29).status == "error"


def test_dspace_expired_token_and_csrf_rotation_are_survived(world: WorldFactory) -> None:
    w = world()
    w.book(30)
    w.peers.dspace.rotate_csrf_every_response = True
    w.peers.dspace.jwt_ttl = 0.5  # always near its end: the client logs in again before use
    w.peers.dspace.latency = 0.2
    # and one token runs out while in use: the workspace item's creation is answered 401
    w.peers.dspace.expire_tokens_at("POST /submission/workspaceitems")
    view = w.run(30)
    assert_imported(w, 30, view)
    assert w.peers.dspace.answered[401] >= 1, "no token ran out while in use"
    assert w.peers.dspace.calls["POST /submission/workspaceitems"] == 2  # refused, then made


def test_dspace_422_is_not_retried_and_quoted(world: WorldFactory) -> None:
    w = world()
    w.book(33)
    w.peers.dspace.fail_next(1, 422, "/submission/workspaceitems/")
    view = w.run(33)
    assert view.state == "failed"
    assert "422" in (view.error or "") and "Injected fault" in (view.error or "")
    deposit = next(s for s in view.steps if s.name == "deposit")
    assert deposit.attempts == 1  # DSpace would refuse the same request again
    assert w.state(33).status == "error"
    assert w.files("error") == ["book-33_v01.pdf", "book-33_v01.pdf.error.json"]


def test_dspace_403_refusal_fails_with_the_answer(world: WorldFactory) -> None:
    w = world()
    w.book(31)
    w.peers.dspace.fail_next(100, 403, "/submission/workspaceitems")
    view = w.run(31)
    assert view.state == "failed"
    assert "403" in (view.error or "")
    assert w.files("error") == ["book-31_v01.pdf", "book-31_v01.pdf.error.json"]


def test_dspace_passing_500_is_retried(world: WorldFactory) -> None:
    w = world()
    w.book(32)
    w.peers.dspace.fail_next(1, 500, "/submission/workspaceitems")
    view = w.run(32)
    assert_imported(w, 32, view)
    deposit = next(s for s in view.steps if s.name == "deposit")
    assert deposit.attempts == 2


def test_review_item_removed_by_the_reviewer_is_reported_to_koha(world: WorldFactory) -> None:
    w = world(review=True)
    w.book(34)
    view = w.run(34)
    uuid = view.result["uuid"]
    with w.peers.dspace.lock:  # a reviewer rejects and deletes the submission
        for wf_id in [k for k, v in w.peers.dspace.workflow_items.items() if v.item == uuid]:
            del w.peers.dspace.workflow_items[wf_id]
        del w.peers.dspace.items[uuid]
    w.engine.trackers.force_poll("dspace-review", uuid)
    assert w.engine.trackers.get("dspace-review", uuid).state == "GONE"
    state = w.state(34)
    assert state.status == "error" and "removed during review" in (state.message or "")


# --- issue 10: what the real DSpace does that the emulator used to hide ------------------------


def test_a_book_with_its_extent_and_notes_deposits_against_the_stock_form(
    world: WorldFactory,
) -> None:
    """A3: 300 $a (and 505, 540, 651) have no field in DSpace's stock submission-forms.xml; the
    default crosswalk leaves them out instead of having the deposit refused with 422."""
    w = world()
    w.book(40, pages="256 с. : іл. ; 21 см", abstract="Збірка.", subjects=["Поезія"])
    view = w.run(40)
    assert_imported(w, 40, view)
    item = w.items_for(40)[0]
    assert item.values("dc.description.abstract") == ["Збірка"]
    assert "dc.format.extent" not in item.metadata


def test_a_rejection_in_review_is_written_to_koha_and_ends_the_tracking(
    world: WorldFactory,
) -> None:
    """A6: XmlWorkflowServiceImpl.sendWorkflowItemBackSubmission returns the item to the
    submitter's workspace; the tracker says so in Koha at its next poll instead of polling on."""
    w = world(review=True)
    w.book(41)
    view = w.run(41)
    uuid = view.result["uuid"]
    w.engine.trackers.force_poll("dspace-review", uuid)
    assert w.engine.trackers.get("dspace-review", uuid).state == "IN_REVIEW"
    w.peers.dspace.reject(uuid, "reviewer@example.org", "the scan lacks pages 3-5")
    w.engine.trackers.force_poll("dspace-review", uuid)
    entity = w.engine.trackers.get("dspace-review", uuid)
    assert entity.state == "REJECTED"
    state = w.state(41)
    assert state.status == "error" and state.uuid == uuid
    assert state.message is not None
    assert "rejected in DSpace review" in state.message
    assert "the scan lacks pages 3-5" in state.message
    assert "workspace item" in state.message
    assert REVIEW_NOTE not in state.message
    assert len(w.items_for(41)) == 1


def test_a_rerun_after_a_rejection_makes_no_second_item(world: WorldFactory) -> None:
    w = world(review=True)
    w.book(42)
    uuid = w.run(42).result["uuid"]
    w.peers.dspace.reject(uuid, "reviewer@example.org", "wrong file")
    w.engine.trackers.force_poll("dspace-review", uuid)
    text_pdf(w.inbox / "scans/book-42.pdf", 1)  # a new scan; 956$3 still names the item
    again = w.run(42)
    assert again.state == "failed"
    assert "workspace item" in (again.error or "")
    assert len(w.items_for(42)) == 1
    # and when 956$3 was cleared too, the identifier search finds the same item
    w.clear_956(42, "3")
    text_pdf(w.inbox / "scans/book-42.pdf", 1)
    third = w.run(42)
    assert third.state == "failed" and "rejected in DSpace review" in (third.error or "")
    assert len(w.items_for(42)) == 1


def test_the_tracker_finds_an_item_in_review_when_reading_it_fails_once(
    world: WorldFactory,
) -> None:
    """A5: review.py's fallback searches the submitter's own items (configuration=workspace)."""
    w = world(review=True)
    w.book(43)
    uuid = w.run(43).result["uuid"]
    w.peers.dspace.fail_next(1, 404, f"/core/items/{uuid}")
    w.engine.trackers.force_poll("dspace-review", uuid)
    assert w.peers.dspace.summary()["faults"]["pending"] == []  # the read did fail
    assert w.engine.trackers.get("dspace-review", uuid).state == "IN_REVIEW"
    assert w.state(43).status == "imported"


# --- re-runs that go wrong, and records whose scan moved on (review findings) -------------------


def test_a_failed_rerun_leaves_an_integrated_record_imported(world: WorldFactory) -> None:
    w = world()
    w.book(35)
    w.run(35)
    good = w.state(35)
    w.peers.dspace.fail_next(100, 503, "/core/items")
    failed = w.run(35, timeout=90)
    assert failed.state == "failed"
    state = w.state(35)
    assert state.status == "imported" and state.uuid == good.uuid
    assert state.handle_urls == good.handle_urls
    assert state.message and "503" in state.message
    w.peers.dspace.clear_faults()  # DSpace is back
    again = w.run(35)
    assert again.state == "succeeded", again.error
    assert len(w.items_for(35)) == 1


def test_a_failure_after_the_deposit_records_the_item_and_a_rerun_reuses_it(
    world: WorldFactory,
) -> None:
    w = world()
    w.book(36)
    w.peers.koha.overlay_keep = {"856"}  # Koha keeps refusing the 856: finalize fails
    failed = w.run(36)
    assert failed.state == "failed" and "did not keep" in (failed.error or "")
    state = w.state(36)
    item = w.items_for(36)[0]
    assert state.status == "error" and state.uuid == item.uuid  # $3 written with the error
    assert w.files("error") == ["book-36_v01.pdf", "book-36_v01.pdf.error.json"]
    w.peers.koha.overlay_keep = set()
    again = w.run(36)  # no file in the inbox: 956$3 is enough
    assert again.state == "succeeded", again.error
    assert again.result["uuid"] == item.uuid and len(w.items_for(36)) == 1
    assert w.state(36).status == "imported"


def test_a_rerun_while_the_item_waits_in_review_does_not_make_a_second_item(
    world: WorldFactory,
) -> None:
    w = world(review=True)
    w.book(37)
    first = w.run(37)
    uuid = first.result["uuid"]
    w.clear_956(37, "3", "y")  # someone clears $3 and $y, and a new scan arrives
    text_pdf(w.inbox / "scans/book-37.pdf", 1)
    again = w.run(37)
    assert again.state == "succeeded", again.error
    assert again.result["uuid"] == uuid
    assert len(w.peers.dspace.items_with("dc.identifier.other", "koha:37")) == 1


def test_the_tracker_does_not_overwrite_a_record_that_moved_to_another_item(
    world: WorldFactory,
) -> None:
    w = world(review=True)
    w.book(38)
    uuid = w.run(38).result["uuid"]
    record = w.record(38)
    record["956"]["3"] = "11111111-2222-3333-4444-555555555555"
    w.peers.koha.add_record(38, pymarc.record_to_xml(record, namespace=True))
    w.peers.dspace.approve(uuid)
    w.engine.trackers.force_poll("dspace-review", uuid)
    entity = w.engine.trackers.get("dspace-review", uuid)
    assert entity.state == "GONE"
    assert w.state(38).uuid == "11111111-2222-3333-4444-555555555555"
    assert w.state(38).handle_urls == ()


def test_a_refused_staff_login_is_not_retried(world: WorldFactory) -> None:
    w = world()
    w.book(39)
    w.peers.koha.add_staff_user("covers", "right password")
    config = w.engine.settings.systems[SYSTEM]
    config["koha"] |= {"staff_user": "covers", "staff_password": "wrong password"}
    from shelfwork.pipelines.koha_dspace import config as config_module

    config_module._cache.clear()
    view = w.run(39)
    assert view.state == "succeeded", view.error  # the cover is optional
    cover = next(s for s in view.steps if s.name == "upload_cover")
    assert cover.attempts == 1  # not three failed logins against FailedLoginAttempts
    assert w.peers.koha.calls["POST /cgi-bin/koha/mainpage.pl"] == 1


def test_a_killed_claim_is_found_again_with_brackets_in_the_name(tmp_path: Path) -> None:
    from shelfwork.pipelines.koha_dspace.pipeline import _claimed_earlier

    processed = tmp_path / "processed"
    processed.mkdir()
    scan = text_pdf(processed / "Kobzar [1840]_v01.pdf", 1)
    claimed = {
        "stem": "Kobzar [1840]",
        "size": scan.stat().st_size,
        "md5": fingerprint_of(scan).md5,
    }
    assert _claimed_earlier(processed, claimed) == scan


# --- issue 10 review: what a real DSpace would leave behind, and what a cataloguer reads -------


def test_a_record_the_form_cannot_take_leaves_nothing_in_dspace_and_integrates_once_fixed(
    world: WorldFactory,
) -> None:
    """The stock form requires a date of issue (and on 8_x a type): DSpace would make the workspace
    item, take the file and only list the gap in `errors`, so a later run found a half-made item in
    the account's workspace. The gap is found before anything is written; once the cataloguer
    fixes the record, the next run deposits normally."""
    w = world()
    w.book(44, year=None)
    view = w.run(44)
    assert view.state == "failed"
    assert w.peers.dspace.items == {} and w.peers.dspace.workspace_items == {}
    note = w.state(44).message or ""
    assert w.state(44).status == "error"
    assert "requires dc.date.issued (You must enter at least the year.)" in note
    w.book(44)  # the year entered, the scan put back in the inbox
    again = w.run(44)
    assert_imported(w, 44, again)


def test_a_damaged_copy_in_dspace_is_reported_without_server_paths(world: WorldFactory) -> None:
    w = world()
    w.book(45)
    w.peers.dspace.corrupt_next_uploads(1)
    view = w.run(45)
    assert view.state == "failed"
    note = w.state(45).message or ""
    assert "book-45_v01.pdf" in note and "MD5" in note
    assert str(w.folder) not in note and "/server/api" not in note


def test_an_item_deposited_again_after_a_rejection_gets_its_handle(world: WorldFactory) -> None:
    """A6: the note tells the cataloguer to deposit the rejected item again in DSpace, then to
    integrate again; that run finds the item in review and the tracker, ended at REJECTED, follows
    it again until DSpace archives it."""
    w = world(review=True)
    w.book(46)
    uuid = w.run(46).result["uuid"]
    w.peers.dspace.reject(uuid, "reviewer@example.org", "wrong cover page")
    w.engine.trackers.force_poll("dspace-review", uuid)
    assert w.engine.trackers.get("dspace-review", uuid).state == "REJECTED"
    assert "integrate again" in (w.state(46).message or "")
    # the submitter deposits the workspace item again in DSpace
    with DSpace(w.peers.dspace_url, DSPACE_USER, w.peers.dspace_password) as ds:
        ds.login()
        back = ds.in_progress(uuid)
    assert back is not None and back.stage == "workspace"
    with httpx.Client(timeout=10) as http:
        submitter = Session(http, w.peers.dspace_url)
        assert submitter.login((DSPACE_USER, w.peers.dspace_password)).status_code == 200
        deposited = submitter.deposit(back.id)
    assert deposited.status_code == 201, deposited.text
    again = w.run(46)
    assert again.state == "succeeded", again.error
    assert again.result["uuid"] == uuid and again.result["in_review"]
    assert w.engine.trackers.get("dspace-review", uuid).state == "IN_REVIEW"
    w.peers.dspace.approve(uuid)
    w.engine.trackers.force_poll("dspace-review", uuid)
    assert w.engine.trackers.get("dspace-review", uuid).state == "ARCHIVED"
    state = w.state(46)
    assert state.status == "imported" and state.handle_urls
    assert len(w.items_for(46)) == 1
