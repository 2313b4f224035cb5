"""OAI networks over the API: a run by hand chains HARVEST -> VALIDATE -> INDEX_* in the
network's context against an independent provider; snapshots, diagnose, records; networks from
the config file are read-only; API networks get their schedule."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shelfwork.pipelines import oai
from shelfwork.pipelines.oai.snapshots import entries_t
from tests.api.conftest import Api, ApiFactory
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Provider,
    Repository,
    generate_items,
    running,
)
from tests.support.waiting import wait_idle

RULES = """
name = "test driver"

[[rules]]
id = "title"
type = "content_length"
field = "dc.title"
min_length = 1

[[rules]]
id = "year"
type = "year_range"
field = "dc.date"
lower = 100

[[rules]]
id = "creator"
type = "regex"
field = "dc.creator"
pattern = 'Author \\d+'
mandatory = false
"""

TRANSFORM = """
name = "test transform"

[[rules]]
id = "repo"
type = "add_repository_name"
"""


@pytest.fixture
def items() -> list[Item]:
    return generate_items(120, seed=3)


@pytest.fixture
def provider(items: list[Item]) -> Iterator[Provider]:
    yield from running(Repository(list(items), name="Loopback Repo"), batch_size=30)


@pytest.fixture
def api(api_for: ApiFactory, tmp_path: Path, provider: Provider) -> Api:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "driver.toml").write_text(RULES, encoding="utf-8")
    (rules / "transform.toml").write_text(TRANSFORM, encoding="utf-8")
    return api_for(
        start=True,
        pipelines=oai.PIPELINES,
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "rules_dir": str(rules),
                "retry_backoff": 0.01,
                "allow_private_hosts": LOOPBACK_HOSTS,
                "networks": [
                    {
                        "acronym": "LB",
                        "name": "Loopback",
                        "base_url": provider.url,
                        "validation": "driver.toml",
                        "transformation": "transform.toml",
                        "properties": {"index_oai": True, "detailed_diagnose": True},
                    }
                ],
            }
        },
    )


def test_run_chains_actions_and_diagnose_reports(backend: str, api: Api, items: list[Item]) -> None:
    answer = api.client.post("/api/v1/oai/networks/LB/run", headers=api.operator)
    assert answer.status_code == 202, answer.text
    assert answer.json()["actions"] == ["HARVEST", "VALIDATE", "INDEX_OAI"]
    jobs = wait_idle(api.engine)
    by_pipeline = {job.pipeline: job for job in jobs}
    assert set(by_pipeline) == {"oai-run", "oai-harvest", "oai-validate", "oai-index"}
    assert all(job.state == "succeeded" for job in jobs), [(j.pipeline, j.error) for j in jobs]
    assert {job.context for job in jobs} == {"network:LB"}
    assert by_pipeline["oai-index"].lane == "index:oai"
    # the chain ran in order: each job started after the one before it finished
    ordered = sorted(jobs, key=lambda j: j.id)
    for before, after in itertools.pairwise(ordered):
        assert after.started_at >= before.finished_at

    network = api.client.get("/api/v1/oai/networks/LB", headers=api.viewer).json()
    snapshot_id = network["last_good"]
    assert snapshot_id == network["latest"]["id"]
    live = [i for i in items if not i.deleted]
    expected_valid = sum(int(i.fields["date"][0]) >= time.gmtime().tm_year - 100 for i in live)
    report = api.client.get(
        f"/api/v1/oai/snapshots/{snapshot_id}/diagnose", headers=api.viewer
    ).json()
    assert report["total"] == len(live)
    assert report["valid"] == expected_valid
    assert report["invalid"] == len(live) - expected_valid
    assert report["transformed"] == len(live)
    year = report["validation"]["rules"]["year"]
    assert year["invalid_count"] == len(live) - expected_valid
    assert year["valid_values"]["counts"]  # detailed diagnose keeps value histograms
    assert report["transformation"]["rules"]["repo"]["changed"] == len(live)

    invalid = api.client.get(
        f"/api/v1/oai/snapshots/{snapshot_id}/records",
        params={"valid": "false", "limit": 1000},
        headers=api.viewer,
    ).json()["items"]
    assert len(invalid) == len(live) - expected_valid
    assert all(r["failed_rules"] == ["year"] for r in invalid)
    one = api.client.get(
        f"/api/v1/oai/snapshots/{snapshot_id}/record",
        params={"identifier": invalid[0]["identifier"]},
        headers=api.viewer,
    ).json()
    assert "reponame:Loopback Repo" in one["published"]
    assert "reponame:" not in one["original"]

    with api.engine.store.read() as conn:
        exposed = conn.execute(
            select(func.count()).where(entries_t.c.network == "LB", entries_t.c.target == "oai")
        ).scalar_one()
    assert exposed == expected_valid

    detail = api.client.get(f"/api/v1/oai/snapshots/{snapshot_id}", headers=api.viewer).json()
    assert any("last good known" in line["message"] for line in detail["log"])


def test_network_rules(api: Api, provider: Provider) -> None:
    body = {"name": "Other", "base_url": provider.url, "cron": "0 4 * * *"}
    assert (
        api.client.put("/api/v1/oai/networks/NEW", json=body, headers=api.viewer).status_code == 403
    )
    assert api.client.put("/api/v1/oai/networks/NEW", json=body).status_code == 401
    made = api.client.put("/api/v1/oai/networks/NEW", json=body, headers=api.operator)
    assert made.status_code == 200, made.text
    assert made.json()["origin"] == "api"
    assert api.engine.schedules.get("oai:NEW").cron == "0 4 * * *"
    # the config file's network is changed in the file
    taken = api.client.put("/api/v1/oai/networks/LB", json=body, headers=api.operator)
    assert taken.status_code == 409 and "config file" in taken.json()["detail"]
    bad = api.client.put(
        "/api/v1/oai/networks/BAD",
        json={**body, "properties": {"index_everything": True}},
        headers=api.operator,
    )
    assert bad.status_code == 422 and "index_everything" in bad.json()["detail"]
    missing = api.client.put(
        "/api/v1/oai/networks/BAD", json={**body, "validation": "nope.toml"}, headers=api.operator
    )
    assert missing.status_code == 422 and "nope.toml" in missing.json()["detail"]
    escaping = api.client.put(
        "/api/v1/oai/networks/BAD", json={**body, "validation": "../x.toml"}, headers=api.operator
    )
    assert escaping.status_code == 422
    assert api.client.get("/api/v1/oai/networks/ZZ", headers=api.viewer).status_code == 404
    # B2: a URL into the server's own network is refused (only 127.0.0.1 is allowed here)
    for url, kind in (
        ("http://169.254.169.254/latest", "link-local"),
        ("http://10.0.0.5/oai", "private"),
        ("http://[::1]:8080/oai", "loopback"),
    ):
        inside = api.client.put(
            "/api/v1/oai/networks/BAD", json={**body, "base_url": url}, headers=api.operator
        )
        assert inside.status_code == 422 and kind in inside.json()["detail"], inside.text
    # B4/C1: limits per network, checked
    limited = api.client.put(
        "/api/v1/oai/networks/LIM",
        json={**body, "limits": {"retries": 2, "max_page_bytes": 5_000_000}},
        headers=api.operator,
    )
    assert limited.status_code == 200, limited.text
    assert limited.json()["limits"]["retries"] == 2
    assert limited.json()["limits"]["request_deadline"] == 600
    for wrong in (
        '{"retries": -1}',
        '{"max_page_bytes": 10}',
        '{"patience": 3}',
        # no end is no limit: infinity (1e999 is valid JSON, read as inf; PostgreSQL's JSON
        # cannot even store it) and sizes or waits beyond any sense are refused
        '{"request_deadline": 1e999}',
        '{"max_total_wait": "inf"}',
        '{"timeout": "nan"}',
        '{"max_page_bytes": 1000000000000000}',
        '{"max_wait": 1000000000}',
    ):
        refused = api.client.put(
            "/api/v1/oai/networks/LIM",
            content=json.dumps({**body, "limits": "-"}).replace('"-"', wrong),
            headers={**api.operator, "Content-Type": "application/json"},
        )
        assert refused.status_code == 422, (wrong, refused.text)
    assert (
        api.client.post(
            "/api/v1/oai/networks/LB/run", params={"action": "NOPE"}, headers=api.operator
        ).status_code
        == 422
    )
    assert api.client.delete("/api/v1/oai/networks/LB", headers=api.operator).status_code == 409
    assert api.client.delete("/api/v1/oai/networks/NEW", headers=api.operator).status_code == 204
    assert all(s.name != "oai:NEW" for s in api.engine.schedules.list())
    names = [a["name"] for a in api.client.get("/api/v1/oai/actions", headers=api.viewer).json()]
    assert names == ["HARVEST", "VALIDATE", "INDEX_BUILTIN", "INDEX_SOLR", "INDEX_OAI", "CLEAN"]


def test_own_provider_reexposes_valid_records_to_sickle(
    backend: str, api: Api, provider: Provider, items: list[Item]
) -> None:
    from sickle import Sickle

    from shelfwork.api.app import create_app
    from shelfwork.sandbox import free_port, serve

    api.client.post("/api/v1/oai/networks/LB/run", headers=api.operator)
    wait_idle(api.engine)
    live = [i for i in items if not i.deleted]
    year = time.gmtime().tm_year
    valid = {i.identifier for i in live if int(i.fields["date"][0]) >= year - 100}
    port = free_port()
    server = serve(create_app(api.engine), "shelfwork-oai", port=port)
    try:
        endpoint = f"http://127.0.0.1:{port}/oai/LB"
        sickle = Sickle(endpoint, max_retries=0)
        identify = sickle.Identify()
        assert identify.baseURL == endpoint and identify.deletedRecord == "persistent"
        got = {r.header.identifier: r for r in sickle.ListRecords(metadataPrefix="oai_dc")}
        assert set(got) == valid
        sample = got[sorted(valid)[0]]
        assert sample.metadata["source"] == ["reponame:Loopback Repo"]
        seen_at = max(r.header.datestamp for r in got.values())

        # upstream: one valid record deleted, one made invalid (a year out of range)
        time.sleep(1.1)  # past the second of the first exposure
        repository = provider.repository
        first, second = sorted(valid)[:2]
        stamp = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        changed = {
            first: Item(first, stamp, deleted=True),
            second: Item(
                second, stamp, fields={"title": ["T"], "creator": ["C"], "date": ["1066"]}
            ),
        }
        repository.items = sorted(
            [changed.get(i.identifier, i) for i in repository.items],
            key=lambda i: (i.datestamp, i.identifier),
        )
        time.sleep(1.1)
        assert (
            api.client.post("/api/v1/oai/networks/LB/run", headers=api.operator).status_code == 202
        )
        jobs = wait_idle(api.engine)
        assert all(j.state == "succeeded" for j in jobs), [(j.pipeline, j.error) for j in jobs]
        recent = list(
            sickle.ListRecords(metadataPrefix="oai_dc", ignore_deleted=False, **{"from": seen_at})
        )
        deleted = {r.header.identifier for r in recent if r.header.deleted}
        assert deleted == {first, second}
        everything = {
            header.identifier: header.deleted
            for header in sickle.ListIdentifiers(metadataPrefix="oai_dc", ignore_deleted=False)
        }
        assert {k for k, gone in everything.items() if not gone} == valid - {first, second}
    finally:
        server.stop()


def exposed_live(api: Api) -> int:
    with api.engine.store.read() as conn:
        return conn.execute(
            select(func.count()).where(
                entries_t.c.network == "LB",
                entries_t.c.target == "oai",
                entries_t.c.deleted.is_(False),
            )
        ).scalar_one()


def test_an_empty_full_harvest_keeps_the_exposure_until_confirmed(
    backend: str, api: Api, provider: Provider
) -> None:
    """C5: a repository that suddenly lists nothing does not wipe what the network exposes: the
    snapshot is held back as suspicious until an operator confirms it."""
    assert api.client.post("/api/v1/oai/networks/LB/run", headers=api.operator).status_code == 202
    wait_idle(api.engine)
    before = exposed_live(api)
    good = api.client.get("/api/v1/oai/networks/LB", headers=api.viewer).json()["last_good"]
    assert before > 0

    provider.repository.items = []
    again = api.client.post(
        "/api/v1/oai/networks/LB/run", params={"incremental": "false"}, headers=api.operator
    )
    assert again.status_code == 202
    jobs = wait_idle(api.engine)
    assert all(j.state == "succeeded" for j in jobs), [(j.pipeline, j.error) for j in jobs]
    network = api.client.get("/api/v1/oai/networks/LB", headers=api.viewer).json()
    suspicious = network["latest"]
    assert suspicious["state"] == "suspicious" and network["last_good"] == good
    assert exposed_live(api) == before
    detail = api.client.get(f"/api/v1/oai/snapshots/{suspicious['id']}", headers=api.viewer)
    assert any("suspicious" in line["message"] for line in detail.json()["log"])

    path = f"/api/v1/oai/snapshots/{suspicious['id']}/confirm"
    assert api.client.post(path, headers=api.viewer).status_code == 403
    confirmed = api.client.post(path, headers=api.operator)
    assert confirmed.status_code == 200 and confirmed.json()["state"] == "harvested"
    assert api.client.post(path, headers=api.operator).status_code == 409
    assert (
        api.client.post("/api/v1/oai/snapshots/999999/confirm", headers=api.operator).status_code
        == 404
    )
    rerun = api.client.post(
        "/api/v1/oai/networks/LB/run",
        params={"action": ["VALIDATE", "INDEX_OAI"]},
        headers=api.operator,
    )
    assert rerun.status_code == 202
    wait_idle(api.engine)
    assert exposed_live(api) == 0
