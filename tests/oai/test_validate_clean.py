"""VALIDATE's bad records and identifier rewrites, and CLEAN: a record whose stored metadata is
gone or that a transformer cannot handle is invalid with its reason and dead-lettered while the
run goes on; CLEAN keeps the last good known and the latest snapshot and the blobs they use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shelfwork.batch import dead_letters
from shelfwork.engine import Engine
from shelfwork.pipelines import oai
from shelfwork.pipelines.oai.snapshots import Snapshots
from shelfwork.pipelines.oai.storage import MetadataStore
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Provider,
    Repository,
    generate_items,
    running,
)

TRANSFORM = """
name = "ids"
[[rules]]
id = "network-ids"
type = "rewrite_identifier"
pattern = '^oai:loopback:(\\d+)$'
replacement = 'oai:net:\\1'

[[rules]]
id = "no-space"
type = "rewrite_identifier"
pattern = '^oai:net:00007$'
replacement = 'bad id'
"""


@pytest.fixture
def items() -> list[Item]:
    return generate_items(40, seed=31)


@pytest.fixture
def provider(items: list[Item]) -> Iterator[Provider]:
    yield from running(Repository(list(items)), batch_size=15)


@pytest.fixture
def engine(make_engine: Any, tmp_path: Path, provider: Provider) -> Engine:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ids.toml").write_text(TRANSFORM, encoding="utf-8")
    return make_engine(
        oai.PIPELINES,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "allow_private_hosts": LOOPBACK_HOSTS,
                "rules_dir": str(rules),
                "networks": [
                    {
                        "acronym": "VC",
                        "name": "VC",
                        "base_url": provider.url,
                        "transformation": "ids.toml",
                    }
                ],
            }
        },
    )


def run(engine: Engine, pipeline: str, **params: Any) -> Any:
    job = engine.wait(engine.submit(pipeline, {"network": "VC", **params}).job_id, timeout=60)
    assert job.state == "succeeded", job.error
    return job


def test_bad_records_are_dead_lettered_and_ids_rewritten(
    engine: Engine, tmp_path: Path, items: list[Item]
) -> None:
    run(engine, "oai-harvest")
    snapshots = Snapshots(engine.store)
    snap = snapshots.list("VC", limit=1)[0]
    live = sorted(i.identifier for i in items if not i.deleted)
    lost = next(i for i in live if i != "oai:loopback:00007")
    blobs = MetadataStore(engine.store)
    blobs.forget("VC", snapshots.record(snap.id, lost).metadata_hash)
    job = run(engine, "oai-validate")
    letters = {
        letter.item_key: letter.reason for letter in dead_letters(engine.store, job_id=job.id)
    }
    assert "oai:loopback:00007" in live  # the seed makes it a live record
    expected = {lost, "oai:loopback:00007"}
    assert set(letters) == expected
    assert "missing from the store" in letters[lost]
    assert "no-space" in letters["oai:loopback:00007"]
    done = snapshots.get(snap.id)
    assert done.state == "valid"
    assert done.invalid == len(expected) and done.valid == len(live) - len(expected)
    row = snapshots.record(snap.id, lost)
    assert row.valid is False and "missing" in row.problem
    good = next(i for i in live if i not in expected)
    assert snapshots.record(snap.id, good).published_identifier == good.replace(
        "oai:loopback:", "oai:net:"
    )


def test_clean_keeps_last_good_and_latest(engine: Engine, tmp_path: Path) -> None:
    run(engine, "oai-harvest", incremental=False)
    run(engine, "oai-validate")  # snapshot 1: last good known
    run(engine, "oai-harvest", incremental=False)  # 2: harvested, superseded
    run(engine, "oai-harvest", incremental=False)  # 3: the latest
    snapshots = Snapshots(engine.store)
    ids = [s.id for s in snapshots.list("VC")][::-1]
    assert len(ids) == 3
    blobs = MetadataStore(engine.store)
    orphan = blobs.put("VC", b"<nobody-refers-to-this/>")
    job = run(engine, "oai-clean")
    kept = [s.id for s in snapshots.list("VC")][::-1]
    assert kept == [ids[0], ids[2]]
    assert snapshots.records(ids[1]) == []
    assert not blobs.contains("VC", orphan)
    for snapshot_id in kept:  # every blob a kept snapshot names is still there
        for row in snapshots.records(snapshot_id, limit=1000):
            for digest in {row.metadata_hash, row.published_hash} - {None}:
                assert blobs.contains("VC", digest)
    step = next(s for s in engine.jobs.get(job.id).steps if s.name == "clean")
    assert step.result["deleted"] == [ids[1]] and step.result["blobs_removed"] >= 1


def test_validate_again_only_when_rules_or_records_changed(engine: Engine, tmp_path: Path) -> None:
    run(engine, "oai-harvest")
    first = run(engine, "oai-validate")
    snapshots = Snapshots(engine.store)
    snap = snapshots.list("VC", limit=1)[0]
    assert snap.state == "valid" and snap.ruleset.startswith("(no rules) [")

    def begun(job: Any) -> Any:
        return next(s for s in engine.jobs.get(job.id).steps if s.name == "begin").result

    assert begun(first)["snapshot"] == snap.id
    again = run(engine, "oai-validate")
    assert begun(again) == {"snapshot": None, "unchanged": snap.id}
    assert snapshots.get(snap.id).validated_at == snap.validated_at
    rules = tmp_path / "rules" / "ids.toml"
    rules.write_text(rules.read_text() + "\n# changed\n", encoding="utf-8")
    third = run(engine, "oai-validate")
    assert begun(third)["snapshot"] == snap.id
    assert snapshots.get(snap.id).validated_at > snap.validated_at
