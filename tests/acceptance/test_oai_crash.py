"""A harvest SIGKILLed mid-way resumes from its stored resumption token in another process,
without fetching a finished page again, and ends with every record exactly once.

On both configurations: SQLite with a server that runs the harvest in its own threads (killed; the
test's process then takes over), and PostgreSQL with a server and a Celery worker (the worker is
killed; the server reclaims the expired lease and a new worker resumes the harvest).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shelfwork.config import Settings, load_settings
from shelfwork.engine import Engine
from shelfwork.pipelines.oai.snapshots import Snapshots
from tests.support.cluster import Cluster, crash_backend
from tests.support.oai_provider import LOOPBACK_HOSTS, Repository, generate_items, running

PAGE = 20
ITEMS = 600  # 30 pages


def harvest_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, base_url: str
) -> Settings:
    return load_settings(
        env={},
        **crash_backend(backend, request, tmp_path),
        lease_ttl=3.0,
        poll_interval=0.05,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "rules_dir": str(tmp_path / "rules"),
                "retry_backoff": 0.01,
                "allow_private_hosts": LOOPBACK_HOSTS,
                "networks": [{"acronym": "LB", "name": "LB", "base_url": base_url}],
            }
        },
    )


@pytest.mark.slow
def test_killed_harvest_resumes_from_its_token(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    items = generate_items(ITEMS, seed=17)
    for provider in running(Repository(items), batch_size=PAGE):
        provider.faults.slow = 10_000
        provider.faults.slow_seconds = 0.12
        settings = harvest_settings(backend, request, tmp_path, provider.url)
        celery = settings.executor == "celery"
        killed = "worker" if celery else "server"  # the role of the process running the harvest
        logs = tmp_path / "logs"
        logs.mkdir()
        cluster = Cluster(settings, logs)
        engine = Engine(settings)  # not started: only reads while the other processes work
        snapshots = Snapshots(engine.store)
        resumed: Engine | None = None
        try:
            cluster.start("server", module="tests.support.oai_crash")
            if celery:
                cluster.start("worker", "2")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                cluster.check_alive()
                rows = snapshots.list("LB", limit=1)
                if rows and rows[0].pages >= 8:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(cluster.logged())
            cluster.kill_all(killed)  # the process running the harvest dies
            killed_at = len(provider.faults.log)
            snapshot = snapshots.list("LB", limit=1)[0]
            committed_pages = snapshot.pages
            stored_token = snapshot.resume["token"]["value"]
            fetched_before = [
                e.arguments.get("resumptionToken") for e in provider.faults.requests("ListRecords")
            ]
            assert committed_pages >= 8

            if celery:  # the server reclaims the expired lease; a new worker resumes the job
                cluster.start("worker", "2")
                job = engine.wait(snapshot.job_id, timeout=120)
            else:  # another server (this process) reclaims the expired lease and resumes it
                resumed = engine.start()
                job = resumed.wait(snapshot.job_id, timeout=120)
        finally:
            cluster.stop()
            if resumed is not None:
                resumed.stop()
        assert job.state == "succeeded", f"{job.error}\n{cluster.logged()}"
        after = [
            e for e in provider.faults.log[killed_at:] if e.arguments.get("verb") == "ListRecords"
        ]
        # the resumed run starts at the stored token; no page it had committed is fetched again
        assert after[0].arguments.get("resumptionToken") == stored_token
        finished_tokens = set(fetched_before[:committed_pages]) - {None}
        assert not finished_tokens & {e.arguments.get("resumptionToken") for e in after}
        total_pages = -(-ITEMS // PAGE)
        assert len(after) == total_pages - committed_pages
        final = snapshots.get(snapshot.id)
        assert final.state == "harvested" and final.pages == total_pages
        rows = snapshots.records(snapshot.id, limit=10_000)
        assert sorted(r.identifier for r in rows) == sorted(i.identifier for i in items)
        assert final.total == sum(not i.deleted for i in items)
        reclaims = [
            str(e["message"])
            for e in engine.jobs.events(snapshot.job_id)
            if e["kind"] == "reclaimed"
        ]
        assert any(m.startswith(f"lease of {killed}:") for m in reclaims), reclaims
        engine.store.dispose()
