"""Networks' cron firings end to end: each network's actions run in order in its context, two
networks' INDEX_OAI jobs share the `index:oai` lane and never overlap, and a firing while the
network's run is still going is skipped (and recorded), not queued twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Provider,
    Repository,
    generate_items,
    running,
)


@pytest.fixture
def provider() -> Iterator[Provider]:
    yield from running(Repository(generate_items(150, seed=23)), batch_size=25)


def overlaps(a: Any, b: Any) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def settle(engine: Engine, expected: int, timeout: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = engine.jobs.list(limit=200)
        if len(jobs) >= expected and all(j.state in ("succeeded", "failed") for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"{len(engine.jobs.list(limit=200))} jobs, not all ended")


def test_cron_runs_respect_context_and_lanes(
    make_engine: Any, tmp_path: Path, provider: Provider
) -> None:
    provider.faults.slow = 10_000
    provider.faults.slow_seconds = 0.03
    network = {"base_url": provider.url, "cron": "0 3 * * *", "properties": {"index_oai": True}}
    engine = make_engine(
        oai.PIPELINES,
        max_running=4,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "allow_private_hosts": LOOPBACK_HOSTS,
                "rules_dir": str(tmp_path / "rules"),
                "networks": [
                    {"acronym": "A", "name": "A", **network},
                    {"acronym": "B", "name": "B", **network},
                ],
            }
        },
    )
    slot = engine.schedules.get("oai:A").next_run_at
    assert engine.schedules.get("oai:B").next_run_at == slot
    assert engine.schedules.fire_due(now=slot + timedelta(seconds=1)) == 2
    # the next slot comes while both runs are still going (a chain's next job is queued before
    # the one handing over ends, so a network stays busy until its chain is done): skipped
    assert engine.schedules.fire_due(now=slot + timedelta(days=1, seconds=1)) == 2
    jobs = settle(engine, expected=2 * 4)
    assert all(job.state == "succeeded" for job in jobs), [(j.pipeline, j.error) for j in jobs]
    for acronym in ("A", "B"):
        mine = sorted((j for j in jobs if j.context == f"network:{acronym}"), key=lambda j: j.id)
        assert [j.pipeline for j in mine] == ["oai-run", "oai-harvest", "oai-validate", "oai-index"]
        for before, after in pairwise(mine):  # one job per network at a time, in order
            assert not overlaps(before, after)
        runs = engine.schedules.runs(f"oai:{acronym}")
        assert sorted(r.outcome for r in runs) == ["skipped_busy", "submitted"]
    indexes = [j for j in jobs if j.pipeline == "oai-index"]
    assert {j.lane for j in indexes} == {"index:oai"}
    assert not overlaps(*indexes)
    # harvests of the two networks did run side by side (different contexts, no lane)
    harvests = [j for j in jobs if j.pipeline == "oai-harvest"]
    assert overlaps(*harvests)
