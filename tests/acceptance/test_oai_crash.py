"""A harvest SIGKILLed mid-way resumes from its stored resumption token in another process,
without fetching a finished page again, and ends with every record exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shelfwork.config import load_settings
from shelfwork.engine import Engine
from shelfwork.pipelines.oai.snapshots import Snapshots
from tests.support.oai_provider import LOOPBACK_HOSTS, Repository, generate_items, running

REPO = Path(__file__).resolve().parents[2]
PAGE = 20
ITEMS = 600  # 30 pages


@pytest.mark.slow
def test_killed_harvest_resumes_from_its_token(tmp_path: Path) -> None:
    items = generate_items(ITEMS, seed=17)
    for provider in running(Repository(items), batch_size=PAGE):
        provider.faults.slow = 10_000
        provider.faults.slow_seconds = 0.12
        settings = load_settings(
            env={},
            database_url=f"sqlite:///{tmp_path / 'shelfwork.db'}",
            lease_ttl=3.0,
            poll_interval=0.05,
            pipeline_modules=["shelfwork.pipelines.oai"],
            systems={
                "oai": {
                    "rules_dir": str(tmp_path / "rules"),
                    "retry_backoff": 0.01,
                    "allow_private_hosts": LOOPBACK_HOSTS,
                    "networks": [{"acronym": "LB", "name": "LB", "base_url": provider.url}],
                }
            },
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
        log = (tmp_path / "server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.oai_crash", settings.model_dump_json()],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            engine = Engine(settings)  # not started: only reads while the other process works
            snapshots = Snapshots(engine.store)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = snapshots.list("LB", limit=1)
                if rows and rows[0].pages >= 8:
                    break
                time.sleep(0.05)
            else:
                pytest.fail((tmp_path / "server.log").read_text())
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        killed_at = len(provider.faults.log)
        snapshot = snapshots.list("LB", limit=1)[0]
        committed_pages = snapshot.pages
        stored_token = snapshot.resume["token"]["value"]
        fetched_before = [
            e.arguments.get("resumptionToken") for e in provider.faults.requests("ListRecords")
        ]
        assert committed_pages >= 8

        resumed = engine.start()
        try:
            job = resumed.wait(snapshot.job_id, timeout=120)
        finally:
            resumed.stop()
        assert job.state == "succeeded", job.error
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
        events = [e["kind"] for e in resumed.jobs.events(snapshot.job_id)]
        assert "reclaimed" in events
