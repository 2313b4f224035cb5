"""SIGKILL a shelfwork server in the middle of integrations, start another, and check every record
ends integrated once: one DSpace item, one cover, one 856, one file in Processed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shelfwork.config import Settings
from shelfwork.engine import Engine
from shelfwork.pipelines.koha_dspace.config import SYSTEM
from shelfwork.pipelines.koha_dspace.marc import integration_state, parse_marcxml
from shelfwork.sandbox.pdfs import text_pdf
from shelfwork.sandbox.peers import Peers, start_peers
from shelfwork.sandbox.records import Book, marcxml

REPO = Path(__file__).resolve().parents[2]
SERVER = (
    "import sys, threading\n"
    "from shelfwork.config import Settings\n"
    "from shelfwork.engine import Engine\n"
    "Engine(Settings.model_validate_json(sys.argv[1]), kind='server').start()\n"
    "threading.Event().wait()\n"
)
RECORDS = range(41, 47)

pytestmark = pytest.mark.slow


@pytest.fixture
def peers() -> Iterator[Peers]:
    running = start_peers()
    yield running
    running.stop()


def start_server(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", SERVER, settings.model_dump_json()],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # no shutdown code runs, as in a power cut
    proc.wait(timeout=10)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unrecorded(client: Engine, peers: Peers) -> set[int]:
    """Workspace items DSpace holds that no job's deposit checkpoint names."""
    recorded = {c.get("id") for c in client.jobs.checkpoints("deposit") if isinstance(c, dict)}
    with peers.dspace.lock:
        return set(peers.dspace.workspace_items) - recorded


def test_killed_mid_integration_resumes_without_a_second_item_or_cover(
    peers: Peers, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'shelfwork.db'}",
        pipeline_modules=["shelfwork.pipelines.koha_dspace"],
        systems={SYSTEM: peers.integrator_config(tmp_path, pdf_retry_delay=0.05)},
        tracker_profile="dev",
        max_running=3,
        lease_ttl=2.0,
        poll_interval=0.1,
    )
    for n in RECORDS:
        book = Book(n, f"Book {n}", author="Author, Some", year="2001", file=f"b{n}.pdf")
        text_pdf(tmp_path / "inbox" / f"b{n}.pdf", 2)
        peers.koha.add_record(n, marcxml(book))
    # Slow peers keep jobs inside their remote calls long enough to be killed there.
    peers.dspace.latency = 0.25
    peers.koha.latency = 0.05
    client = Engine(settings, kind="cli")
    jobs = [client.submit("koha-dspace", {"biblionumber": n}).job_id for n in RECORDS]
    log = tmp_path / "servers.log"

    first = start_server(settings, log)
    # Kill 1: the moment DSpace has made a workspace item whose id no job has recorded yet (the
    # run dies between DSpace's answer and its checkpoint), with other items half-made.
    wait_until("an unrecorded workspace item", lambda: unrecorded(client, peers), timeout=90)
    kill(first)
    orphans = unrecorded(client, peers)
    assert orphans, "the kill came too late to leave an unrecorded workspace item"
    second = start_server(settings, log)
    # Kill 2: later, while covers are being uploaded and Koha records written.
    wait_until(
        "a cover upload and a Koha write",
        lambda: (
            peers.koha.calls["POST /cgi-bin/koha/tools/upload-file.pl"] >= 2
            and peers.koha.calls["PUT /api/v1/biblios"] >= 1
        ),
        timeout=90,
    )
    kill(second)
    third = start_server(settings, log)
    try:
        views = [client.wait(job, timeout=120) for job in jobs]
    finally:
        kill(third)
    problems = [f"job {v.id}: {v.state} {v.error}" for v in views if v.state != "succeeded"]
    assert not problems, "\n".join(problems) + "\n" + log.read_text()[-3000:]
    for n in RECORDS:
        items = peers.dspace.items_with("dc.identifier.other", f"koha:{n}")
        assert len(items) == 1, f"biblio {n}: {len(items)} DSpace items"
        files = [
            b
            for b in peers.dspace.bitstreams.values()
            if b.name.startswith(f"b{n}_")  # one ORIGINAL file per item
        ]
        assert len(files) == 1, f"biblio {n}: {len(files)} bitstreams"
        assert len(peers.koha.covers_of(n)) == 1, f"biblio {n}: covers {peers.koha.covers_of(n)}"
        state = integration_state(parse_marcxml(peers.koha.record(n)))
        assert state.status == "imported" and state.uuid == items[0].uuid
        assert len(state.handle_urls) == 1
        assert sorted(p.name for p in (tmp_path / "processed").glob(f"b{n}_v*.pdf")) == [
            f"b{n}_v01.pdf"
        ]
    # Nothing was left behind in DSpace: a workspace item created just before a kill, before
    # the job could record its id, was taken over by the resumed run (see _create_by_submission).
    assert peers.dspace.workspace_items == {}
    took_over = [
        e
        for job in jobs
        for e in client.jobs.events(job)
        if "took over empty workspace item" in str(e["message"])
    ]
    assert len(took_over) >= len(orphans)
    reclaimed = sum(1 for job in jobs for e in client.jobs.events(job) if e["kind"] == "reclaimed")
    assert reclaimed >= 2
    client.store.dispose()
