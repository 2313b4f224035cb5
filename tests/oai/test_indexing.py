"""INDEX actions end to end: the built-in search and Solr (the sandbox's emulator) get every valid
record of the last good known snapshot, then only what changed: changed records replaced,
deleted and newly invalid ones removed; a full re-index clears first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from shelfwork.sandbox.solr import SolrState, serve_solr
from shelfwork.search import BuiltinSearch
from tests.support.oai_provider import Item, Provider, Repository, running

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


def run(engine: Engine, *actions: str, incremental: bool | None = None) -> list[Any]:
    before = {job.id for job in engine.jobs.list(limit=500)}
    first = engine.submit(
        "oai-run", {"network": "IX", "actions": list(actions), "incremental": incremental}
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
