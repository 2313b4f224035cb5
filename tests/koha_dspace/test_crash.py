"""SIGKILL the shelfwork process running integrations in the middle of them, start another, and
check every record ends integrated once: one DSpace item, one cover, one 856, one file in
Processed. On SQLite with local threads, and on PostgreSQL with a Celery worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shelfwork.config import Settings
from shelfwork.engine import Engine
from shelfwork.pipelines.koha_dspace.config import SYSTEM
from shelfwork.pipelines.koha_dspace.marc import integration_state, parse_marcxml
from shelfwork.sandbox.pdfs import text_pdf
from shelfwork.sandbox.peers import Peers
from shelfwork.sandbox.records import Book, marcxml
from tests.support.cluster import Cluster, crash_backend

RECORDS = range(41, 47)

pytestmark = pytest.mark.slow


def integration_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, peers: Peers
) -> Settings:
    common: dict[str, Any] = dict(
        pipeline_modules=["shelfwork.pipelines.koha_dspace"],
        systems={SYSTEM: peers.integrator_config(tmp_path, pdf_retry_delay=0.05)},
        tracker_profile="dev",
        max_running=3,
        lease_ttl=2.0,
        poll_interval=0.1,
    )
    if backend == "postgres-celery":
        # a hand-off to a worker that dies before taking the lease (and the message's
        # visibility timeout) runs out in seconds, not the default five minutes
        common["dispatch_ttl"] = 3.0
    return Settings(**crash_backend(backend, request, tmp_path), **common)


def wait_until(
    what: str, condition: Callable[[], bool], cluster: Cluster, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        cluster.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logged()}")
        time.sleep(0.05)


def unrecorded(client: Engine, peers: Peers) -> set[int]:
    """Workspace items DSpace holds that no job's deposit checkpoint names."""
    recorded = {c.get("id") for c in client.jobs.checkpoints("deposit") if isinstance(c, dict)}
    with peers.dspace.lock:
        return set(peers.dspace.workspace_items) - recorded


def test_killed_mid_integration_resumes_without_a_second_item_or_cover(
    peers: Peers, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """SQLite: the server runs the jobs and is killed twice. PostgreSQL + Celery: the worker runs
    them; it is killed, and later the worker and the server together (a power cut); the server
    reclaims the expired leases and a new worker resumes the jobs."""
    settings = integration_settings(backend, request, tmp_path, peers)
    celery = settings.executor == "celery"
    runner = "worker" if celery else "server"  # the process the jobs run in
    for n in RECORDS:
        book = Book(n, f"Book {n}", author="Author, Some", year="2001", file=f"b{n}.pdf")
        text_pdf(tmp_path / "inbox" / f"b{n}.pdf", 2)
        peers.koha.add_record(n, marcxml(book))
    # Slow peers keep jobs inside their remote calls long enough to be killed there.
    peers.dspace.latency = 0.25
    peers.koha.latency = 0.05
    client = Engine(settings, kind="cli")
    jobs = [client.submit("koha-dspace", {"biblionumber": n}).job_id for n in RECORDS]
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(settings, logs)

    def start() -> None:
        if celery and not any(m.role == "server" for m in cluster.members):
            cluster.start("server")
        cluster.start(runner, *(["3"] if celery else []))

    try:
        start()
        # Kill 1: the moment DSpace has made a workspace item whose id no job has recorded yet
        # (the run dies between DSpace's answer and its checkpoint), with other items half-made.
        wait_until(
            "an unrecorded workspace item", lambda: bool(unrecorded(client, peers)), cluster, 90
        )
        cluster.kill_all(runner)
        orphans = unrecorded(client, peers)
        assert orphans, "the kill came too late to leave an unrecorded workspace item"
        start()
        # Kill 2: later, while covers are being uploaded and Koha records written; every process.
        wait_until(
            "a cover upload and a Koha write",
            lambda: (
                peers.koha.calls["POST /cgi-bin/koha/tools/upload-file.pl"] >= 2
                and peers.koha.calls["PUT /api/v1/biblios"] >= 1
            ),
            cluster,
            90,
        )
        cluster.kill_all()
        start()
        views = [client.wait(job, timeout=120) for job in jobs]
    finally:
        cluster.stop()
    problems = [f"job {v.id}: {v.state} {v.error}" for v in views if v.state != "succeeded"]
    assert not problems, "\n".join(problems) + "\n" + cluster.logged()
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
    # Each kill left a run's lease to be taken over. Only reclaims of the killed role's leases
    # count: a job that waited for a worker past dispatch_ttl is reclaimed from its dispatcher too.
    reclaimed = [
        e
        for job in jobs
        for e in client.jobs.events(job)
        if e["kind"] == "reclaimed" and str(e["message"]).startswith(f"lease of {runner}:")
    ]
    assert len(reclaimed) >= 2, [e["message"] for e in reclaimed]
    client.stop(wait=False)
