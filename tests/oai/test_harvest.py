"""The `oai-harvest` pipeline against an independent provider (the `oaipmh` package's
BatchingServer on loopback) behind the fault layer: snapshots, catalog, store, incremental
`from`, token restarts, repeated tokens, poisoned pages, throttling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shelfwork.batch import dead_letters
from shelfwork.connectors.oaipmh import parse_datestamp
from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from shelfwork.pipelines.oai.snapshots import Snapshots
from shelfwork.pipelines.oai.storage import MetadataStore
from shelfwork.store.models import DeadLetter
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Provider,
    Repository,
    generate_items,
    running,
)

BATCH = 25


@pytest.fixture
def items() -> list[Item]:
    return generate_items(230, seed=11)


@pytest.fixture
def provider(items: list[Item]) -> Iterator[Provider]:
    yield from running(Repository(list(items)), batch_size=BATCH)


def oai_settings(tmp_path: Path, url: str, **network: Any) -> dict[str, Any]:
    return {
        "pipeline_modules": ["shelfwork.pipelines.oai"],
        "systems": {
            "oai": {
                "rules_dir": str(tmp_path / "rules"),
                "retry_backoff": 0.01,
                "allow_private_hosts": LOOPBACK_HOSTS,
                "networks": [
                    {"acronym": "LB", "name": "Loopback", "base_url": url, **network},
                ],
            }
        },
    }


@pytest.fixture
def engine(make_engine: Any, tmp_path: Path, provider: Provider) -> Engine:
    return make_engine(oai.PIPELINES, **oai_settings(tmp_path, provider.url))


def run_harvest(engine: Engine, **params: Any) -> Any:
    submitted = engine.submit("oai-harvest", {"network": "LB", **params})
    return engine.wait(submitted.job_id, timeout=60)


def catalog(engine: Engine, snapshot_id: int) -> dict[str, Any]:
    rows = Snapshots(engine.store).records(snapshot_id, limit=100_000)
    return {row.identifier: row for row in rows}


def newest(engine: Engine) -> Any:
    return Snapshots(engine.store).list("LB", limit=1)[0]


def check_catalog(engine: Engine, snapshot_id: int, items: list[Item]) -> None:
    rows = catalog(engine, snapshot_id)
    assert set(rows) == {item.identifier for item in items}
    blobs = MetadataStore(engine.store)
    for item in items:
        row = rows[item.identifier]
        assert row.deleted is item.deleted
        assert sorted(row.sets) == sorted(item.sets)
        if item.deleted:
            assert row.metadata_hash is None
        else:
            text = blobs.get("LB", row.metadata_hash).decode()
            assert item.fields["creator"][0] in text


def test_full_harvest_fills_catalog_and_store(
    backend: str, engine: Engine, provider: Provider, items: list[Item]
) -> None:
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    snap = newest(engine)
    assert snap.state == "harvested"
    assert not snap.incremental
    assert snap.pages == -(-len(items) // BATCH)
    assert snap.deleted == sum(item.deleted for item in items)
    assert snap.total == sum(not item.deleted for item in items)
    assert snap.response_date and snap.identify["granularity"] == "YYYY-MM-DDThh:mm:ssZ"
    check_catalog(engine, snap.id, items)
    assert provider.faults.requests()[0].arguments["verb"] == "Identify"


def test_network_from_config_gets_schedule_and_identical_blobs_are_shared(
    make_engine: Any, tmp_path: Path, provider: Provider, items: list[Item]
) -> None:
    engine = make_engine(oai.PIPELINES, **oai_settings(tmp_path, provider.url, cron="0 3 * * *"))
    schedule = engine.schedules.get("oai:LB")
    assert schedule.pipeline == "oai-run" and schedule.context == "network:LB"
    assert run_harvest(engine, incremental=False).state == "succeeded"
    assert run_harvest(engine, incremental=False).state == "succeeded"
    first, second = Snapshots(engine.store).list("LB")[::-1]
    assert not second.incremental
    blobs = MetadataStore(engine.store)
    # two full snapshots of the same records share every blob
    assert blobs.count("LB") == sum(not item.deleted for item in items)
    assert catalog(engine, first.id).keys() == catalog(engine, second.id).keys()


def test_incremental_uses_previous_response_date_and_copies_forward(
    backend: str, engine: Engine, provider: Provider, items: list[Item]
) -> None:
    assert run_harvest(engine).state == "succeeded"
    first = newest(engine)
    repository = provider.repository
    # changed at the first harvest's responseDate (`from` is inclusive; naive UTC for the
    # provider); the second harvest starts a second later, so a third sees nothing new
    later = parse_datestamp(first.response_date).replace(tzinfo=None)
    gone = next(item for item in items if not item.deleted)
    changed = [
        Item(gone.identifier, later, gone.sets, deleted=True),
        Item("oai:loopback:new-1", later, ("art",), fields={"title": ["N"], "creator": ["C"]}),
    ]
    repository.items = sorted(
        [i for i in repository.items if i.identifier != gone.identifier] + changed,
        key=lambda i: (i.datestamp, i.identifier),
    )
    provider.faults.log.clear()
    time.sleep(1.1)
    assert run_harvest(engine).state == "succeeded"
    second = newest(engine)
    assert second.incremental and second.previous_id == first.id
    assert second.harvest_from == first.response_date
    lists = provider.faults.requests("ListRecords")
    assert lists[0].arguments["from"] == first.response_date
    assert second.harvested == 1 and second.deleted == 1 and second.pages == 1
    rows = catalog(engine, second.id)
    assert rows[gone.identifier].deleted and rows["oai:loopback:new-1"].metadata_hash
    assert len(rows) == len(items) + 1
    # nothing new: the third harvest is 'empty', and later actions pass it over
    assert run_harvest(engine).state == "succeeded"
    assert newest(engine).state == "empty"


def test_day_granularity_repository_gets_a_day_from(
    make_engine: Any, tmp_path: Path, items: list[Item]
) -> None:
    repository = Repository(list(items), granularity="YYYY-MM-DD")
    for provider in running(repository, batch_size=BATCH):
        engine = make_engine(oai.PIPELINES, **oai_settings(tmp_path, provider.url))
        assert run_harvest(engine).state == "succeeded"
        provider.faults.log.clear()
        assert run_harvest(engine).state == "succeeded"
        sent = provider.faults.requests("ListRecords")[0].arguments["from"]
        assert len(sent) == 10 and sent == newest(engine).harvest_from


def test_bad_resumption_token_restarts_the_list(
    engine: Engine, provider: Provider, items: list[Item]
) -> None:
    # the third page's token is refused once: the list starts again, nothing is lost
    provider.faults.refused_tokens = 0
    original = provider.faults.take

    calls = {"n": 0}

    def take(name: str) -> bool:
        if name == "refused_tokens":
            calls["n"] += 1
            return calls["n"] == 2
        return original(name)

    provider.faults.take = take  # type: ignore[method-assign]
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    snap = newest(engine)
    check_catalog(engine, snap.id, items)
    lists = provider.faults.requests("ListRecords")
    assert sum("resumptionToken" not in e.arguments for e in lists) == 2
    log = [line.message for line in Snapshots(engine.store).log_lines(snap.id)]
    assert any("list restarted from the beginning" in line for line in log)


def test_tokens_refused_every_time_fail_after_the_restarts(
    engine: Engine, provider: Provider
) -> None:
    provider.faults.refuse_tokens = True
    job = run_harvest(engine)
    assert job.state == "failed"
    assert "refused resumption tokens 4 times" in job.error
    assert newest(engine).state == "harvest_failed"


def test_repeated_token_fails_the_harvest_not_loops(engine: Engine, provider: Provider) -> None:
    provider.faults.repeated_tokens = 1
    job = run_harvest(engine)
    assert job.state == "failed"
    assert "repeated" in job.error.lower() or "already" in job.error.lower()
    snap = newest(engine)
    assert snap.state == "harvest_failed" and snap.error
    assert len(provider.faults.requests("ListRecords")) <= 3


def test_poisoned_records_go_to_dead_letters_and_the_run_goes_on(
    backend: str, engine: Engine, provider: Provider, items: list[Item]
) -> None:
    provider.faults.poisoned = 3  # the page and its two retries: then it is salvaged
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    assert any("dead letters" in str(w) for w in job.warnings)
    snap = newest(engine)
    assert snap.bad == 3
    letters = dead_letters(engine.store, job_id=job.id)
    reasons = " | ".join(letter.reason for letter in letters)
    assert len(letters) == 3
    assert "malformed XML" in reasons
    assert "DOCTYPE or ENTITY" in reasons
    assert "not valid UTF-8" in reasons
    first_page = {
        item.identifier for item in sorted(items, key=lambda i: (i.datestamp, i.identifier))[:BATCH]
    }
    assert {letter.item_key for letter in letters} <= first_page
    rows = catalog(engine, snap.id)
    assert len(rows) == len(items) - 3
    with engine.store.read() as conn:
        payloads = conn.execute(select(DeadLetter.__table__.c.payload)).all()
    assert all("passwd" not in str(p) or "ENTITY" in str(p) for p in payloads)


def test_throttled_pages_wait_and_succeed(engine: Engine, provider: Provider) -> None:
    provider.faults.failing = 2
    provider.faults.retry_after = "0"
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    statuses = [e.status for e in provider.faults.requests()]
    assert statuses.count(503) == 2
