"""The `oai-harvest` pipeline against an independent provider (the `oaipmh` package's
BatchingServer on loopback) behind the fault layer: snapshots, catalog, store, incremental
`from`, token restarts, repeated tokens, poisoned pages, throttling, counts of distinct records,
empty full harvests, per-network limits; and a hostile upstream (gzip bomb)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select, text

from shelfwork.batch import dead_letters
from shelfwork.connectors.oaipmh import parse_datestamp
from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from shelfwork.pipelines.oai import harvest
from shelfwork.pipelines.oai.snapshots import HARVEST_DONE, Snapshots
from shelfwork.pipelines.oai.storage import MetadataStore
from shelfwork.store.database import Store, alembic_config
from shelfwork.store.models import DeadLetter
from tests.oai.conftest import insert_old_network
from tests.support.oai_hostile import Hostile, gzip_bomb
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Provider,
    Repository,
    generate_items,
    in_set,
    running,
)

BATCH = 25


@pytest.fixture
def items() -> list[Item]:
    return generate_items(230, seed=11)


@pytest.fixture
def provider(items: list[Item]) -> Iterator[Provider]:
    yield from running(Repository(list(items)), batch_size=BATCH)


def oai_settings(
    tmp_path: Path, url: str, oai_options: dict[str, Any] | None = None, **network: Any
) -> dict[str, Any]:
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
                **(oai_options or {}),
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
    # provider); the second harvest's page says it was taken a second later, so a third sees
    # nothing new (no waiting for the clock to move)
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
    a_second_later = parse_datestamp(first.response_date) + timedelta(seconds=1)
    provider.faults.response_dates = [a_second_later.strftime("%Y-%m-%dT%H:%M:%SZ")]
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
    # C6: the two pages delivered twice are counted once
    assert snap.harvested == sum(not item.deleted for item in items)
    assert snap.deleted == sum(item.deleted for item in items)


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


def test_overlapping_sets_count_each_record_once(
    make_engine: Any, tmp_path: Path, provider: Provider, items: list[Item]
) -> None:
    """C6: a record in `hist:modern` is listed by both sets; the snapshot counts records, not
    list entries."""
    engine = make_engine(
        oai.PIPELINES, **oai_settings(tmp_path, provider.url, sets=["hist", "hist:modern"])
    )
    assert run_harvest(engine).state == "succeeded"
    snap = newest(engine)
    chosen = [item for item in items if in_set(item, "hist")]
    twice = [item for item in items if in_set(item, "hist:modern")]
    assert twice, "the premise: some records are listed twice"
    assert snap.harvested == sum(not item.deleted for item in chosen)
    assert snap.deleted == sum(item.deleted for item in chosen)
    assert snap.total == snap.harvested
    check_catalog(engine, snap.id, chosen)


def test_refused_records_delivered_twice_are_counted_once(
    engine: Engine, provider: Provider, items: list[Item]
) -> None:
    """C6: the first page is poisoned both times it is delivered (a token refused later
    restarts the list): its three refused records count once, as do the stored ones."""
    provider.faults.poisoned = 3  # the page and its two retries
    calls = {"n": 0}
    original = provider.faults.take

    def take(name: str) -> bool:
        if name == "refused_tokens":
            calls["n"] += 1
            if calls["n"] == 3:
                # the refusal's own answer takes one; the restarted first page and its two
                # retries the other three
                provider.faults.poisoned = 4
                return True
            return False
        return original(name)

    provider.faults.take = take  # type: ignore[method-assign]
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    snap = newest(engine)
    assert len(dead_letters(engine.store, job_id=job.id)) == 6
    assert snap.bad == 3
    assert snap.harvested == sum(not item.deleted for item in items) - 3
    assert snap.deleted == sum(item.deleted for item in items)


def test_next_from_is_the_first_pages_response_date(
    engine: Engine, provider: Provider, items: list[Item]
) -> None:
    """D3: every page carries its own responseDate; the next incremental harvest asks `from`
    the first page's (the moment the list was taken), not the last one's."""
    provider.faults.response_dates = [f"2024-03-25T{hour:02d}:00:00Z" for hour in range(10, 20)]
    assert run_harvest(engine).state == "succeeded"
    first = newest(engine)
    assert first.pages == 10 and not provider.faults.response_dates
    assert first.response_date == "2024-03-25T10:00:00Z"
    provider.faults.log.clear()
    assert run_harvest(engine).state == "succeeded"
    assert provider.faults.requests("ListRecords")[0].arguments["from"] == "2024-03-25T10:00:00Z"


def test_a_refused_token_restarts_from_the_harvests_from_less_the_overlap(
    make_engine: Any, tmp_path: Path, provider: Provider
) -> None:
    """D4: the harvester's own restart after badResumptionToken asks `from` = the harvest's
    `from` (12:00:00) less restart_overlap (1800 s): 11:30:00, written out here."""
    engine = make_engine(
        oai.PIPELINES, **oai_settings(tmp_path, provider.url, {"restart_overlap": 1800})
    )
    provider.faults.response_dates = ["2024-03-08T12:00:00Z"]
    assert run_harvest(engine).state == "succeeded"
    assert newest(engine).response_date == "2024-03-08T12:00:00Z"
    provider.faults.log.clear()
    provider.faults.refused_tokens = 1  # the first token of the incremental list
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    starts = [
        e.arguments.get("from")
        for e in provider.faults.requests("ListRecords")
        if "resumptionToken" not in e.arguments
    ]
    assert starts == ["2024-03-08T12:00:00Z", "2024-03-08T11:30:00Z"]
    log = [line.message for line in Snapshots(engine.store).log_lines(newest(engine).id)]
    assert any("list restarted from 2024-03-08T11:30:00Z" in line for line in log)


def test_records_opened_with_their_namespace_are_salvaged_not_lost(
    backend: str, engine: Engine, provider: Provider, items: list[Item]
) -> None:
    """C4: on a poisoned page whose records open `<record xmlns=...>` (legal), every record is
    stored or dead-lettered under its own identifier; the counts are exact."""
    provider.faults.poisoned = 3
    provider.faults.namespaced = 3
    job = run_harvest(engine)
    assert job.state == "succeeded", job.error
    first_page = sorted(items, key=lambda i: (i.datestamp, i.identifier))[:BATCH]
    poisoned = [item.identifier for item in first_page if not item.deleted][:3]
    letters = dead_letters(engine.store, job_id=job.id)
    assert sorted(letter.item_key for letter in letters) == sorted(poisoned)
    snap = newest(engine)
    assert snap.bad == 3
    rows = catalog(engine, snap.id)
    assert set(rows) == {item.identifier for item in items} - set(poisoned)
    assert snap.harvested + snap.deleted == len(items) - 3


def test_an_empty_full_harvest_of_a_network_with_records_is_suspicious(
    backend: str, engine: Engine, provider: Provider, items: list[Item]
) -> None:
    """C5: a full harvest that finds nothing (noRecordsMatch) where the last one found records
    is flagged, and nothing builds on it: not VALIDATE, not the next incremental harvest."""
    assert run_harvest(engine).state == "succeeded"
    good = newest(engine)
    provider.repository.items = []
    job = run_harvest(engine, incremental=False)
    assert job.state == "succeeded", job.error
    assert any("suspicious" in str(w) for w in job.warnings)
    snap = newest(engine)
    assert snap.state == "suspicious" and snap.total == 0 and not snap.incremental
    log = [line.message for line in Snapshots(engine.store).log_lines(snap.id)]
    assert any(f"snapshot {good.id} had {good.total} records" in line for line in log)
    assert Snapshots(engine.store).latest("LB", HARVEST_DONE).id == good.id
    provider.repository.items = list(items)
    assert run_harvest(engine).state == "succeeded"
    assert newest(engine).previous_id == good.id


def test_an_empty_full_harvest_passes_when_the_network_allows_it(
    make_engine: Any, tmp_path: Path, provider: Provider
) -> None:
    """C5: the network setting accept_empty_harvest lets an emptied repository through."""
    engine = make_engine(
        oai.PIPELINES,
        **oai_settings(tmp_path, provider.url, properties={"accept_empty_harvest": True}),
    )
    assert run_harvest(engine).state == "succeeded"
    provider.repository.items = []
    assert run_harvest(engine, incremental=False).state == "succeeded"
    assert newest(engine).state == "harvested" and newest(engine).total == 0


# the `items` fixture overridden: the provider and engine fixtures serve an empty repository
@pytest.mark.parametrize("items", [[]], ids=["empty"])
def test_a_first_harvest_that_finds_nothing_is_not_suspicious(engine: Engine) -> None:
    assert run_harvest(engine).state == "succeeded"
    assert newest(engine).state == "harvested"


@pytest.mark.parametrize("items", [[]], ids=["empty"])
def test_an_empty_full_harvest_after_an_empty_one_is_not_suspicious(engine: Engine) -> None:
    """C5: only a network that had records is held back: a repository still empty is taken."""
    assert run_harvest(engine).state == "succeeded"
    assert run_harvest(engine, incremental=False).state == "succeeded"
    assert [s.state for s in Snapshots(engine.store).list("LB")] == ["harvested"] * 2


def test_a_full_harvest_of_deletions_only_is_not_suspicious(
    engine: Engine, provider: Provider, items: list[Item]
) -> None:
    """C5: a repository that reports every record deleted said something: that is not an
    empty answer, and it is taken."""
    assert run_harvest(engine).state == "succeeded"
    provider.repository.items = [
        Item(item.identifier, item.datestamp, item.sets, deleted=True) for item in items
    ]
    job = run_harvest(engine, incremental=False)
    assert job.state == "succeeded", job.error
    snap = newest(engine)
    assert snap.state == "harvested" and snap.total == 0 and snap.deleted == len(items)
    assert not any("suspicious" in str(w) for w in job.warnings)


def test_a_networks_limits_reach_its_client(
    make_engine: Any, tmp_path: Path, provider: Provider
) -> None:
    """B4/C1: the byte cap, deadline, timeout and retry budget are set per network."""
    limits = {
        "max_page_bytes": 4096,
        "request_deadline": 7.5,
        "timeout": 3.0,
        "retries": 2,
        "max_wait": 4.0,
        "max_total_wait": 9.0,
    }
    engine = make_engine(oai.PIPELINES, **oai_settings(tmp_path, provider.url, limits=limits))
    network = oai.Networks(engine.store).get("LB")
    assert network.limits == limits
    ctx = SimpleNamespace(engine=engine, sleep=time.sleep)
    with harvest.client_for(network, ctx) as client:  # type: ignore[arg-type]
        assert (client.max_bytes, client.deadline, client.retries) == (4096, 7.5, 2)
        assert (client.max_wait, client.max_total_wait, client.backoff) == (4.0, 9.0, 0.01)
    # a page bigger than the cap fails the harvest at once (it would be as big again)
    job = run_harvest(engine)
    assert job.state == "failed" and "inflates past 4096 bytes" in job.error
    assert newest(engine).state == "harvest_failed"
    assert len(provider.faults.requests("ListRecords")) == 1


def test_a_gzip_bomb_fails_the_harvest_without_filling_anything(
    make_engine: Any, tmp_path: Path
) -> None:
    """B4: a hostile upstream's gzip bomb stops at the network's byte cap."""
    with Hostile() as hostile:
        hostile.route("/oai", gzip_bomb(30 << 20))
        engine = make_engine(
            oai.PIPELINES,
            **oai_settings(tmp_path, f"{hostile.url}/oai", limits={"max_page_bytes": 1 << 20}),
        )
        job = run_harvest(engine)
        assert job.state == "failed" and "inflates past 1048576 bytes" in job.error
        assert hostile.requests == ["/oai"]  # Identify is what the bomb answered


def test_a_loopback_repository_is_refused_unless_allowed(
    make_engine: Any, tmp_path: Path, provider: Provider
) -> None:
    """B2: the default (no allow_private_hosts) never contacts a repository on loopback."""
    settings = oai_settings(tmp_path, provider.url)
    del settings["systems"]["oai"]["allow_private_hosts"]
    engine = make_engine(oai.PIPELINES, **settings)
    job = run_harvest(engine)
    assert job.state == "failed" and "loopback" in job.error
    assert provider.faults.requests() == []


def test_migration_0004_adds_limits_and_harvested_by_and_goes_back(empty_database: str) -> None:
    """Migration 0004 on both backends: rows from before it get no limits (the defaults) and no
    harvest (counted as new when delivered again); downgrading drops both columns and keeps
    the rows; upgrading again brings them back empty."""
    url = empty_database
    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    now = "2024-01-01 00:00:00.000000"
    with engine.begin() as conn:
        insert_old_network(conn, now)
        snapshot = conn.execute(
            text(
                "INSERT INTO oai_snapshots (network, state, incremental, pages, harvested, "
                "deleted, total, valid, invalid, transformed, bad, started_at) VALUES "
                "('OLD', 'valid', false, 1, 1, 0, 1, 1, 0, 0, 0, :t) RETURNING id"
            ),
            {"t": now},
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO oai_records (snapshot_id, identifier, datestamp, sets, deleted, "
                "transformed) VALUES (:s, 'oai:old:1', '2024-01-01', '[]', false, false)"
            ),
            {"s": snapshot},
        )
    command.upgrade(alembic_config(url), "0004")
    columns = {
        table: {c["name"] for c in inspect(engine).get_columns(table)}
        for table in ("oai_networks", "oai_records")
    }
    assert "limits" in columns["oai_networks"] and "harvested_by" in columns["oai_records"]
    with engine.begin() as conn:
        assert conn.execute(text("SELECT limits FROM oai_networks")).scalar_one() is None
        assert conn.execute(text("SELECT harvested_by FROM oai_records")).scalar_one() is None
        conn.execute(text("""UPDATE oai_networks SET limits = '{"retries": 2}'"""))
        conn.execute(text("UPDATE oai_records SET harvested_by = :s"), {"s": snapshot})
    engine.dispose()
    store = Store(url)
    network = oai.Networks(store).get("OLD")  # the code reads what the migration made
    assert oai.config.HarvestLimits.model_validate(network.limits).retries == 2
    store.dispose()
    command.downgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    assert "limits" not in {c["name"] for c in inspect(engine).get_columns("oai_networks")}
    assert "harvested_by" not in {c["name"] for c in inspect(engine).get_columns("oai_records")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM oai_records")).scalar_one() == 1
        assert conn.execute(text("SELECT count(*) FROM oai_networks")).scalar_one() == 1
    engine.dispose()
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT limits FROM oai_networks")).scalar_one() is None
        assert conn.execute(text("SELECT harvested_by FROM oai_records")).scalar_one() is None
    engine.dispose()
