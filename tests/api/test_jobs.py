"""Jobs over HTTP: submit (202, 422 naming each field, 409 precondition, 429 Retry-After), read,
list with filters and cursors, cancel / retry / release, the audit log and its live stream."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from shelfwork.store.models import Job
from tests.support.pipelines import GATES

from .conftest import Api, ApiFactory


def test_submit_answers_202_with_where_to_follow_the_job(api: Api) -> None:
    r = api.client.post(
        "/api/v1/jobs",
        json={"pipeline": "sleep", "params": {"seconds": 2}, "context": "biblio:7", "priority": 5},
        headers=api.operator,
    )
    assert r.status_code == 202
    body = r.json()
    assert body == {
        "id": body["id"],
        "state": "queued",
        "url": f"/api/v1/jobs/{body['id']}",
        "created": True,
    }
    assert r.headers["location"] == body["url"]

    job = api.client.get(body["url"], headers=api.viewer).json()
    assert job["pipeline"] == "sleep"
    assert job["params"] == {"seconds": 2.0, "steps": 1}
    assert (job["context"], job["priority"], job["state"]) == ("biblio:7", 5, "queued")
    assert job["progress"] == {"done": None, "total": None, "percent": None, "message": None}
    assert job["steps"] == [] and job["warnings"] == [] and job["error"] is None
    events = api.client.get(f"{body['url']}/events", headers=api.viewer).json()["items"]
    assert events[0]["kind"] == "submitted" and "token:test-operator" in events[0]["message"]


def test_bad_params_are_a_422_naming_each_field(api: Api) -> None:
    r = api.client.post(
        "/api/v1/jobs",
        json={"pipeline": "typed", "params": {"biblionumber": 0, "format": "docx", "colour": 1}},
        headers=api.operator,
    )
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "bad_params"
    assert set(body["fields"]) == {"params.biblionumber", "params.format", "params.colour"}
    assert "greater than or equal to 1" in body["fields"]["params.biblionumber"]
    assert "pdf" in body["fields"]["params.format"]
    assert "biblionumber" in body["detail"]

    missing = api.client.post(
        "/api/v1/jobs", json={"pipeline": "typed", "params": {}}, headers=api.operator
    ).json()
    assert set(missing["fields"]) == {"params.biblionumber", "params.format"}


def test_bad_request_bodies_are_a_422_naming_each_field(api: Api) -> None:
    r = api.client.post(
        "/api/v1/jobs",
        json={"pipeline": "noop", "priority": 10**12, "lane": "", "surprise": True},
        headers=api.operator,
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"
    assert set(r.json()["fields"]) == {"priority", "lane", "surprise"}

    for body in ({"params": {}}, {"pipeline": "noop", "params": [1]}, {"pipeline": "a\x00b"}):
        r = api.client.post("/api/v1/jobs", json=body, headers=api.operator)
        assert r.status_code == 422, body
    r = api.client.post(
        "/api/v1/jobs",
        content=b"{not json",
        headers={**api.operator, "content-type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_an_unknown_pipeline_is_a_422_on_the_pipeline_field(api: Api) -> None:
    r = api.client.post("/api/v1/jobs", json={"pipeline": "nope"}, headers=api.operator)
    assert r.status_code == 422
    assert r.json()["error"] == "unknown_pipeline"
    assert "typed" in r.json()["fields"]["pipeline"]  # lists the known ones


def test_a_refusing_precondition_is_a_409_with_its_reason(api: Api) -> None:
    r = api.client.post(
        "/api/v1/jobs",
        json={"pipeline": "guarded", "params": {"allow": False}},
        headers=api.operator,
    )
    assert r.status_code == 409
    assert r.json() == {
        "error": "precondition_failed",
        "detail": "the catalogue is read-only until 06:00",
    }
    assert api.submit("guarded", params={"allow": True}) > 0


def test_a_full_queue_is_a_429_with_retry_after_and_nothing_is_queued(api_for: ApiFactory) -> None:
    api = api_for(max_queue=2)
    api.submit()
    api.submit()
    r = api.client.post("/api/v1/jobs", json={"pipeline": "noop"}, headers=api.operator)
    assert r.status_code == 429
    assert r.json()["error"] == "queue_full"
    assert int(r.headers["retry-after"]) >= 1
    assert api.engine.jobs.counts() == {"queued": 2}
    metrics = api.client.get("/metrics").text
    assert "shelfwork_admission_rejections_total 1" in metrics


def test_a_live_dedup_key_returns_the_same_job(api: Api) -> None:
    first = api.client.post(
        "/api/v1/jobs", json={"pipeline": "noop", "dedup_key": "k1"}, headers=api.operator
    ).json()
    again = api.client.post(
        "/api/v1/jobs", json={"pipeline": "noop", "dedup_key": "k1"}, headers=api.operator
    )
    assert again.status_code == 202
    assert again.json()["id"] == first["id"] and again.json()["created"] is False


def test_unknown_and_malformed_job_ids(api: Api) -> None:
    r = api.client.get("/api/v1/jobs/424242", headers=api.viewer)
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"
    for bad in ("0", "abc", "-3", str(2**70)):
        r = api.client.get(f"/api/v1/jobs/{bad}", headers=api.viewer)
        assert r.status_code == 422 and "job_id" in r.json()["fields"], bad
    for action in ("cancel", "retry", "release"):
        r = api.client.post(f"/api/v1/jobs/424242/{action}", headers=api.operator)
        assert r.status_code == 404, action
    assert api.client.get("/api/v1/jobs/424242/events", headers=api.viewer).status_code == 404


def test_listing_filters_and_walks_pages_by_cursor(api: Api) -> None:
    ids = [api.submit("noop", context=f"c{i % 2}") for i in range(7)]
    typed = api.submit("typed", params={"biblionumber": 1, "format": "pdf"})

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"pipeline": "noop", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/api/v1/jobs", params=params, headers=api.viewer).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3

    def listed(**params: Any) -> list[int]:
        r = api.client.get("/api/v1/jobs", params=params, headers=api.viewer)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["items"]]

    assert listed(context="c1") == [i for i in reversed(ids) if ids.index(i) % 2 == 1]
    assert listed(pipeline="typed") == [typed]
    assert listed(state="succeeded") == []
    assert len(listed(state="queued")) == 8
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert listed(since=future) == [] and len(listed(since=past)) == 8
    first = api.client.get("/api/v1/jobs", headers=api.viewer).json()["items"][0]
    assert first["steps"] is None and first["url"] == f"/api/v1/jobs/{typed}"

    for bad in (
        {"state": "sleeping"},
        {"cursor": "x1"},
        {"limit": 0},
        {"limit": 501},
        {"since": "soon"},
    ):
        r = api.client.get("/api/v1/jobs", params=bad, headers=api.viewer)
        assert r.status_code == 422, bad
        assert set(r.json()["fields"]) == set(bad), bad


def test_cancel_a_queued_job_and_not_a_finished_one(api: Api) -> None:
    job_id = api.submit()
    r = api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.operator)
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled" and r.json()["cancel_requested"] is True
    again = api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.operator)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    kinds = [e["kind"] for e in api.engine.jobs.events(job_id)]
    assert kinds[-1] == "cancelled"
    assert "token:test-operator" in api.engine.jobs.events(job_id)[-1]["message"]


def test_retry_requeues_a_cancelled_job_and_refuses_a_live_one(api_for: ApiFactory) -> None:
    api = api_for(max_queue=1)
    job_id = api.submit()
    assert api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=api.operator).status_code == 409
    api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.operator)
    other = api.submit()  # the queue (max 1) is full again
    r = api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=api.operator)
    assert r.status_code == 429 and "retry-after" in r.headers
    api.client.post(f"/api/v1/jobs/{other}/cancel", headers=api.operator)
    r = api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=api.operator)
    assert r.status_code == 200 and r.json()["state"] == "queued"


def test_release_lets_a_held_job_resume(api: Api) -> None:
    job_id = api.submit()
    r = api.client.post(f"/api/v1/jobs/{job_id}/release", headers=api.operator)
    assert r.status_code == 409 and "not held" in r.json()["detail"]
    with api.engine.store.write() as conn:
        conn.execute(
            update(Job.__table__)
            .where(Job.__table__.c.id == job_id)
            .values(attention="pipeline changed from version 0 to 1", pipeline_version="0")
        )
    held = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.viewer).json()
    assert held["attention"].startswith("pipeline changed")
    r = api.client.post(f"/api/v1/jobs/{job_id}/release", headers=api.operator)
    assert r.status_code == 200
    assert r.json()["attention"] is None and r.json()["pipeline_version"] == "1"


def test_events_page_by_after_id(api: Api) -> None:
    job_id = api.submit()
    api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=api.operator)
    for i in range(3):
        api.engine.jobs.record(job_id, "note", f"note {i}")
    everything = api.client.get(f"/api/v1/jobs/{job_id}/events", headers=api.viewer).json()
    assert [e["kind"] for e in everything["items"]] == [
        "submitted",
        "cancelled",
        "note",
        "note",
        "note",
    ]
    assert everything["next_after_id"] is None
    first = api.client.get(
        f"/api/v1/jobs/{job_id}/events", params={"limit": 2}, headers=api.viewer
    ).json()
    rest = api.client.get(
        f"/api/v1/jobs/{job_id}/events",
        params={"after_id": first["next_after_id"]},
        headers=api.viewer,
    ).json()
    assert first["items"] + rest["items"] == everything["items"]


def read_stream(
    api: Api, job_id: int, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The stream's messages: {'id', 'event', 'data'} each, until the server ends it."""
    messages: list[dict[str, Any]] = []
    with api.client.stream(
        "GET", f"/api/v1/jobs/{job_id}/events/stream", headers={**api.viewer, **(headers or {})}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in r.iter_lines():
            if not line:
                if "data" in current:
                    messages.append(current)
                current = {}
                continue
            name, _, value = line.partition(": ")
            if name in ("id", "event"):
                current[name] = value
            elif name == "data":
                current["data"] = json.loads(value)
    return messages


def test_the_event_stream_follows_a_job_live_until_it_ends(
    api_for: ApiFactory, backend: str
) -> None:
    api = api_for(start=True)
    gate = f"api-stream-{backend}-{time.monotonic_ns()}"
    GATES[gate] = threading.Event()
    job_id = api.submit("gate", params={"gate": gate})
    opener = threading.Timer(0.5, GATES[gate].set)
    opener.start()
    try:
        messages = read_stream(api, job_id)
    finally:
        opener.cancel()
        GATES[gate].set()
    *events, end = messages
    assert end == {"event": "end", "data": {"id": job_id, "state": "succeeded"}}
    kinds = [m["data"]["kind"] for m in events]
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded"
    assert [int(m["id"]) for m in events] == [m["data"]["id"] for m in events]
    assert [e["id"] for e in api.engine.jobs.events(job_id)] == [int(m["id"]) for m in events]

    # Reconnecting with Last-Event-ID sends only what came after it.
    resumed = read_stream(api, job_id, {"Last-Event-ID": events[1]["id"]})
    assert [m["data"].get("kind") for m in resumed[:-1]] == kinds[2:]
    assert resumed[-1]["event"] == "end"


def test_a_stream_for_an_unknown_job_is_a_404(api: Api) -> None:
    r = api.client.get("/api/v1/jobs/999/events/stream", headers=api.viewer)
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"


@pytest.mark.parametrize("outcome", ["failed", "succeeded"])
def test_a_run_job_shows_steps_progress_and_result(api_for: ApiFactory, outcome: str) -> None:
    api = api_for(start=True)
    key = f"api-flaky-{outcome}-{time.monotonic_ns()}"
    fails = 5 if outcome == "failed" else 1
    job_id = api.submit("flaky", params={"fail_times": fails, "key": key})
    api.engine.wait(job_id, timeout=20)
    job = api.client.get(f"/api/v1/jobs/{job_id}", headers=api.viewer).json()
    assert job["state"] == outcome
    (step,) = job["steps"]
    assert step["name"] == "flaky" and step["started_at"] and step["finished_at"]
    if outcome == "failed":
        assert step["attempts"] == 3 and "remote refused" in step["error"]
        assert "remote refused" in job["error"]
        r = api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=api.operator)
        assert r.status_code == 200 and r.json()["state"] in ("queued", "running", "failed")
    else:
        assert step["attempts"] == 2 and job["result"] is not None
        assert job["progress"]["percent"] == 100.0 and job["duration"] >= 0
