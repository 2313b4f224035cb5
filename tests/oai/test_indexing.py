"""INDEX actions end to end: the built-in search and Solr (the sandbox's emulator) get every valid
record of the last good known snapshot, then only what changed: changed records replaced,
deleted and newly invalid ones removed; a full re-index clears first."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi import FastAPI
from lxml import etree
from oaipmh_scythe import Scythe
from oaipmh_scythe.config import HTTPConfig
from sickle import Sickle
from sqlalchemy import create_engine, inspect, text

from shelfwork.api.oai import oai_router
from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from shelfwork.pipelines.oai.config import oai_config
from shelfwork.pipelines.oai.exposure import sources_for
from shelfwork.pipelines.oai.provider import respond
from shelfwork.sandbox import serve
from shelfwork.sandbox.solr import SolrState, serve_solr
from shelfwork.search import BuiltinSearch
from shelfwork.store.database import alembic_config
from tests.oai.conftest import insert_old_network
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Provider,
    Repository,
    in_set,
    running,
)
from tests.support.oai_schemas import oai_schema

RULES = """
name = "years"
[[rules]]
id = "year"
type = "year_range"
field = "dc.date"
lower = 1000
"""


def items() -> list[Item]:
    start = datetime(2024, 1, 1)
    made = []
    for n in range(60):
        made.append(
            Item(
                f"oai:idx:{n:03d}",
                start.replace(minute=n),
                ("col",) if n % 2 else ("col:sub",),
                deleted=n % 10 == 9,
                fields={
                    "title": [f"Cañón número {n}" if n % 3 else f"Жёлтый том {n}"],
                    "creator": [f"Autor {n % 7}"],
                    "date": ["1500" if n % 5 else "0999"],
                },
            )
        )
    return made


@pytest.fixture
def provider() -> Iterator[Provider]:
    yield from running(Repository(items()), batch_size=20)


@pytest.fixture
def solr() -> Iterator[SolrState]:
    state = SolrState()
    server = serve_solr(state)
    yield state
    server.stop()


def run(
    engine: Engine, *actions: str, incremental: bool | None = None, network: str = "IX"
) -> list[Any]:
    before = {job.id for job in engine.jobs.list(limit=500)}
    first = engine.submit(
        "oai-run", {"network": network, "actions": list(actions), "incremental": incremental}
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = [j for j in engine.jobs.list(limit=500) if j.id not in before]
        done = all(j.state in ("succeeded", "failed") for j in jobs)
        if done and len(jobs) == 1 + len(actions):
            assert all(j.state == "succeeded" for j in jobs), [(j.pipeline, j.error) for j in jobs]
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"run {first.job_id} did not end")


def sent(engine: Engine, job: Any) -> int:
    """How many changes the job's index step sent."""
    step = next(s for s in engine.jobs.get(job.id).steps if s.name == "index")
    return int(step.result["items"])


def solr_ids(state: SolrState) -> set[str]:
    return set(state.committed("oai"))


def test_builtin_and_solr_get_only_what_changed(
    backend: str, make_engine: Any, tmp_path: Path, provider: Provider, solr: SolrState
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "years.toml").write_text(RULES, encoding="utf-8")
    engine = make_engine(
        oai.PIPELINES,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "allow_private_hosts": LOOPBACK_HOSTS,
                "rules_dir": str(rules),
                "solr": {"url": solr.url, "core": "oai", "batch": 7},
                "networks": [
                    {
                        "acronym": "IX",
                        "name": "Index",
                        "base_url": provider.url,
                        "validation": "years.toml",
                    }
                ],
            }
        },
    )
    search = BuiltinSearch(engine.store)
    search.clear("IX")
    actions = ("HARVEST", "VALIDATE", "INDEX_BUILTIN", "INDEX_SOLR")
    run(engine, *actions)
    valid = {i.identifier for i in items() if not i.deleted and i.fields["date"] != ["0999"]}
    assert search.count("IX") == len(valid)
    assert solr_ids(solr) == {f"IX:{i}" for i in valid}
    hits = search.search("canon", network="IX", limit=100)  # accents folded
    assert hits.total == sum(1 for i in valid if int(i[-3:]) % 3)
    assert search.search("жёлтый", network="IX").total > 0
    assert search.search("", network="IX", set_spec="col", limit=1).total == len(valid)

    # upstream: one valid record deleted, one made invalid, one retitled
    time.sleep(1.1)
    repository = provider.repository
    gone, spoiled, retitled = sorted(valid)[:3]
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    changes = {
        gone: Item(gone, now, deleted=True),
        spoiled: Item(spoiled, now, fields={"title": ["x"], "date": ["0999"]}),
        retitled: Item(retitled, now, ("col",), fields={"title": ["Brand new"], "date": ["1900"]}),
    }
    repository.items = sorted(
        [changes.get(i.identifier, i) for i in repository.items],
        key=lambda i: (i.datestamp, i.identifier),
    )
    time.sleep(1.1)
    jobs = run(engine, *actions)
    indexed = {j.params["target"]: j for j in jobs if j.pipeline == "oai-index"}
    assert set(indexed) == {"builtin", "solr"}
    for job in indexed.values():  # two removals and one replacement, nothing else
        assert sent(engine, job) == 3
    remaining = valid - {gone, spoiled}
    assert search.count("IX") == len(remaining)
    assert solr_ids(solr) == {f"IX:{i}" for i in remaining}
    assert search.search('"brand new"', network="IX").hits[0].identifier == retitled
    assert solr.committed("oai")[f"IX:{retitled}"]["dc_title"] == ["Brand new"]

    # a full re-index clears the target of the network and sends everything again
    jobs = run(engine, "INDEX_SOLR", incremental=False)
    index_job = next(j for j in jobs if j.pipeline == "oai-index")
    assert sent(engine, index_job) == len(remaining)
    assert solr_ids(solr) == {f"IX:{i}" for i in remaining}
    search.clear("IX")


# --- the OAI provider's target (INDEX_OAI) ---------------------------------------------------

SECRET = b"indexing-test-secret-0123456789abcdef"
OAI = "http://www.openarchives.org/OAI/2.0/"
#: set specs differing only in case are different sets; bio:cell is inside bio
SET_OF = {0: ("bio",), 1: ("BIO",), 2: ("bio:cell",), 3: ("chem",), 4: ("bio", "chem")}


def exposed_items() -> list[Item]:
    start = datetime(2024, 5, 1)
    return [
        Item(
            f"oai:ex:{n:02d}",
            start.replace(minute=n),
            SET_OF[n % 5],
            fields={"title": [f"Record {n}"], "date": ["2001"]},
        )
        for n in range(20)
    ]


@pytest.fixture
def upstream() -> Iterator[Provider]:
    yield from running(Repository(exposed_items()), batch_size=7)


@dataclass
class Exposure:
    engine: Engine
    url: str
    source: Any

    def ask(self, **arguments: str) -> etree._Element:
        body = respond(
            {name: [value] for name, value in arguments.items()},
            self.source("EX", self.url),
            now=datetime.now(UTC),
            page_size=5,
            token_secret=SECRET,
        )
        return etree.fromstring(body)


@pytest.fixture
def exposure(backend: str, make_engine: Any, upstream: Provider) -> Iterator[Exposure]:
    """A network harvested, validated and exposed once (everything full), and its provider
    served over HTTP."""
    engine = make_engine(
        oai.PIPELINES,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "allow_private_hosts": LOOPBACK_HOSTS,
                "networks": [
                    {
                        "acronym": "EX",
                        "name": "Exposed",
                        "base_url": upstream.url,
                        "properties": {"index_oai": True},
                    }
                ],
            }
        },
    )
    run(engine, "HARVEST", "VALIDATE", "INDEX_OAI", incremental=False, network="EX")
    sources = sources_for(engine.store, oai_config(engine.settings))
    app = FastAPI()
    app.include_router(oai_router(sources, token_secret=SECRET, page_size=5))
    server = serve(app, "indexing-oai")
    try:
        yield Exposure(engine, f"{server.url}/oai/EX", sources)
    finally:
        server.stop()


def identifiers(answer: etree._Element, *, deleted: bool | None = None) -> list[str]:
    headers = answer.iter(f"{{{OAI}}}header")
    return [
        h.findtext(f"{{{OAI}}}identifier") or ""
        for h in headers
        if deleted is None or (h.get("status") == "deleted") is deleted
    ]


def in_sets(*specs: str) -> list[str]:
    """Identifiers of the items in any of `specs` or below them (hierarchy)."""
    return sorted(i.identifier for i in exposed_items() if any(in_set(i, spec) for spec in specs))


def test_set_specs_match_exactly_and_hierarchically(exposure: Exposure) -> None:
    sickle = Sickle(exposure.url, max_retries=0, timeout=30)
    upper = [r.header.identifier for r in sickle.ListRecords(metadataPrefix="oai_dc", set="BIO")]
    assert sorted(upper) == in_sets("BIO") and upper  # not bio's records
    lower = [h.identifier for h in sickle.ListIdentifiers(metadataPrefix="oai_dc", set="bio")]
    assert sorted(lower) == in_sets("bio")  # bio:cell's records too
    assert set(in_sets("bio:cell")) <= set(lower)
    cell = exposure.ask(verb="ListIdentifiers", metadataPrefix="oai_dc", set="bio:cell")
    assert sorted(identifiers(cell)) == in_sets("bio:cell")
    for missing in ("Bio", "bio:", "bi", "cell", "bio:cel"):
        answer = exposure.ask(verb="ListIdentifiers", metadataPrefix="oai_dc", set=missing)
        assert identifiers(answer) == [], missing
    with Scythe(exposure.url, http_config=HTTPConfig(http_method="POST", timeout=30)) as scythe:
        posted = [
            h.identifier for h in scythe.list_identifiers(metadata_prefix="oai_dc", set_="BIO")
        ]
    assert sorted(posted) == in_sets("BIO")
    specs = {s.setSpec for s in sickle.ListSets()}
    assert {"bio", "BIO", "bio:cell", "chem"} <= specs


def test_a_full_rebuild_keeps_deletions(exposure: Exposure, upstream: Provider) -> None:
    repository = upstream.repository
    items = {i.identifier: i for i in repository.items}
    marked, vanished = "oai:ex:00", "oai:ex:02"  # in bio, and in bio:cell
    items[marked] = Item(marked, datetime(2024, 6, 1), items[marked].sets, deleted=True)
    del items[vanished]
    repository.items = sorted(items.values(), key=lambda i: (i.datestamp, i.identifier))
    run(exposure.engine, "HARVEST", "VALIDATE", "INDEX_OAI", incremental=False, network="EX")
    run(exposure.engine, "INDEX_OAI", incremental=False, network="EX")  # and once more

    identify = exposure.ask(verb="Identify")
    assert identify.findtext(f".//{{{OAI}}}deletedRecord") == "persistent"
    for gone in (marked, vanished):
        answer = exposure.ask(verb="GetRecord", identifier=gone, metadataPrefix="oai_dc")
        assert answer.find(f"{{{OAI}}}error") is None, etree.tostring(answer)
        assert identifiers(answer, deleted=True) == [gone]
    sickle = Sickle(exposure.url, max_retries=0, timeout=30)
    headers = list(sickle.ListIdentifiers(metadataPrefix="oai_dc", ignore_deleted=False))
    assert sorted(h.identifier for h in headers if h.deleted) == [marked, vanished]
    assert len(headers) == 20
    in_bio = list(sickle.ListIdentifiers(metadataPrefix="oai_dc", set="bio", ignore_deleted=False))
    assert {h.identifier for h in in_bio if h.deleted} == {marked, vanished}  # sets kept
    with Scythe(exposure.url, http_config=HTTPConfig(http_method="POST", timeout=30)) as scythe:
        assert scythe.get_record(identifier=vanished).deleted


def test_a_record_deleted_restored_and_deleted_again(
    exposure: Exposure, upstream: Provider
) -> None:
    """Each turn is seen by the provider, with a datestamp that never goes back, whether the
    index run is full or incremental."""
    repository = upstream.repository
    original = {i.identifier: i for i in repository.items}
    flip = "oai:ex:04"  # in bio and chem

    def upstream_has(deleted: bool) -> None:
        item = original[flip]
        repository.items = [
            Item(flip, item.datestamp, item.sets, deleted=True) if deleted and i is item else i
            for i in original.values()
        ]

    def exposed() -> tuple[bool, datetime, list[str]]:
        answer = exposure.ask(verb="GetRecord", identifier=flip, metadataPrefix="oai_dc")
        header = answer.find(f".//{{{OAI}}}header")
        assert header is not None, etree.tostring(answer)
        stamp = datetime.fromisoformat(header.findtext(f"{{{OAI}}}datestamp") or "")
        specs = [s.text or "" for s in header.iter(f"{{{OAI}}}setSpec")]
        return header.get("status") == "deleted", stamp, specs

    sickle = Sickle(exposure.url, max_retries=0, timeout=30)
    seen = [exposed()]
    assert seen[-1] == (False, seen[-1][1], ["bio", "chem"])
    for deleted, index_incrementally in ((True, False), (False, True), (True, False)):
        upstream_has(deleted)
        run(exposure.engine, "HARVEST", "VALIDATE", incremental=False, network="EX")
        run(exposure.engine, "INDEX_OAI", incremental=index_incrementally, network="EX")
        seen.append(exposed())
        assert seen[-1][0] is deleted
        assert seen[-1][1] >= seen[-2][1]
        assert seen[-1][2] == ["bio", "chem"]  # a deleted record stays in its sets
        chem = sickle.ListIdentifiers(metadataPrefix="oai_dc", set="chem", ignore_deleted=False)
        assert (flip, deleted) in {(h.identifier, h.deleted) for h in chem}
    last = exposure.ask(verb="GetRecord", identifier=flip, metadataPrefix="oai_dc")
    assert last.find(f".//{{{OAI}}}metadata") is None  # deleted again: no metadata


def test_migration_0003_fills_in_the_sets_of_exposed_records(empty_database: str) -> None:
    url = empty_database
    command.upgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    now = "2024-01-01 00:00:00.000000"
    with engine.begin() as conn:
        insert_old_network(conn, now)
        for target, identifier, sets in (
            # a spec OAI-PMH cannot carry, and one too long to store, are left out
            ("oai", "oai:old:1", json.dumps(["a:b:c", "BIO", "a", "no spaces", "x" * 600])),
            ("oai", "oai:old:2", "[]"),
            ("oai", "oai:old:3", "null"),
            ("builtin", "oai:old:1", '["a"]'),
        ):
            conn.execute(
                text(
                    "INSERT INTO oai_index_entries (network, target, identifier, sets, deleted, "
                    "changed_at) VALUES ('OLD', :target, :identifier, :sets, false, :t)"
                ),
                {"target": target, "identifier": identifier, "sets": sets, "t": now},
            )
    command.upgrade(alembic_config(url), "head")
    memberships = text("SELECT target, set_spec, identifier FROM oai_entry_sets ORDER BY set_spec")
    with engine.connect() as conn:
        rows = conn.execute(memberships).all()
    assert [tuple(r) for r in rows] == [
        ("oai", "BIO", "oai:old:1"),
        ("oai", "a", "oai:old:1"),
        ("oai", "a:b", "oai:old:1"),
        ("oai", "a:b:c", "oai:old:1"),
    ]
    # and back: the table goes, the entries stay; upgrading again fills it in again
    command.downgrade(alembic_config(url), "0002")
    assert "oai_entry_sets" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM oai_index_entries")).scalar_one() == 4
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(memberships).all()] == [tuple(r) for r in rows]
    engine.dispose()


def test_a_record_that_only_changed_sets_is_exposed_again(
    exposure: Exposure, upstream: Provider
) -> None:
    repository = upstream.repository
    moved = "oai:ex:03"  # in chem, now in BIO; its metadata is the same
    repository.items = [
        Item(i.identifier, i.datestamp, ("BIO",), fields=i.fields) if i.identifier == moved else i
        for i in repository.items
    ]
    run(exposure.engine, "HARVEST", "VALIDATE", incremental=False, network="EX")
    jobs = run(exposure.engine, "INDEX_OAI", network="EX")  # incremental
    assert sent(exposure.engine, next(j for j in jobs if j.pipeline == "oai-index")) == 1
    record = exposure.ask(verb="GetRecord", identifier=moved, metadataPrefix="oai_dc")
    assert [s.text for s in record.iter(f"{{{OAI}}}setSpec")] == ["BIO"]
    upper = exposure.ask(verb="ListIdentifiers", metadataPrefix="oai_dc", set="BIO")
    assert moved in identifiers(upper)
    chem = exposure.ask(verb="ListIdentifiers", metadataPrefix="oai_dc", set="chem")
    assert moved not in identifiers(chem)


def test_set_specs_the_protocol_cannot_carry_are_not_exposed(
    exposure: Exposure, upstream: Provider, tmp_path: Path
) -> None:
    """A hostile or broken upstream's setSpecs that are too long or not setSpecs: the record is
    exposed all the same (on PostgreSQL a 600-character spec must not fail the index run), its
    header carries only the specs OAI-PMH allows, and ListSets lists only those."""
    repository = upstream.repository
    odd = "oai:ex:05"  # in bio
    long_spec, spaced = "x" * 600, "no spaces allowed"
    repository.items = [
        Item(i.identifier, i.datestamp, (*i.sets, long_spec, spaced), fields=i.fields)
        if i.identifier == odd
        else i
        for i in repository.items
    ]
    run(exposure.engine, "HARVEST", "VALIDATE", "INDEX_OAI", incremental=False, network="EX")
    schema = oai_schema(tmp_path)
    record = exposure.ask(verb="GetRecord", identifier=odd, metadataPrefix="oai_dc")
    assert schema.validate(record), schema.error_log.last_error
    assert [s.text for s in record.iter(f"{{{OAI}}}setSpec")] == ["bio"]
    listed = exposure.ask(verb="ListSets")
    assert schema.validate(listed), schema.error_log.last_error
    specs = {s.text for s in listed.iter(f"{{{OAI}}}setSpec")}
    assert long_spec not in specs and spaced not in specs and "bio" in specs
    in_bio = exposure.ask(verb="ListIdentifiers", metadataPrefix="oai_dc", set="bio")
    assert schema.validate(in_bio), schema.error_log.last_error
