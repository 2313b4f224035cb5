"""Pipelines, schedules, trackers, locks, dead letters, health, metrics and the error format."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import insert

from shelfwork.config import ScheduleConfig
from shelfwork.errors import DatabaseUnavailable
from shelfwork.store.database import utcnow
from shelfwork.store.models import DeadLetter
from shelfwork.trackers import Poll, TrackedView, Tracker

from .conftest import Api, ApiFactory

# --- pipelines ----------------------------------------------------------------------------------


def test_pipelines_list_names_descriptions_and_param_schemas(api: Api) -> None:
    items = api.client.get("/api/v1/pipelines", headers=api.viewer).json()["items"]
    by_name = {p["name"]: p for p in items}
    assert {"noop", "sleep", "typed", "guarded", "gate"} <= set(by_name)
    typed = by_name["typed"]
    assert typed["description"] == "typed params"
    assert typed["params_schema"]["required"] == ["biblionumber", "format"]
    assert typed["params_schema"]["properties"]["format"]["enum"] == ["pdf", "epub"]
    assert typed["plan"] == [{"step": "nothing", "description": ""}]
    one = api.client.get("/api/v1/pipelines/sleep", headers=api.viewer)
    assert one.status_code == 200 and one.json() == by_name["sleep"]
    missing = api.client.get("/api/v1/pipelines/nope", headers=api.viewer)
    assert missing.status_code == 404 and "sleep" in missing.json()["detail"]


# --- schedules ----------------------------------------------------------------------------------


def test_schedules_create_list_pause_resume_delete(api: Api) -> None:
    body = {
        "name": "nightly-sleep",
        "pipeline": "sleep",
        "cron": "30 2 * * *",
        "timezone": "Europe/Kyiv",
        "params": {"seconds": 1},
    }
    r = api.client.post("/api/v1/schedules", json=body, headers=api.operator)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["source"], made["paused"], made["when_busy"]) == ("api", False, "skip")
    assert len(made["upcoming"]) == 5
    first = datetime.fromisoformat(made["upcoming"][0])
    assert first == datetime.fromisoformat(made["next_run_at"])
    assert first.minute == 30 and first.hour in (23, 0)  # 02:30 in Kyiv is 23:30 or 00:30 UTC

    again = api.client.post("/api/v1/schedules", json=body, headers=api.operator)
    assert again.status_code == 409
    listed = api.client.get("/api/v1/schedules", headers=api.viewer).json()["items"]
    assert [s["name"] for s in listed] == ["nightly-sleep"]
    assert listed[0]["upcoming"] is None

    paused = api.client.post("/api/v1/schedules/nightly-sleep/pause", headers=api.operator).json()
    assert paused["paused"] is True and paused["paused_by"] == "token:test-operator"
    assert api.client.get("/api/v1/schedules", params={"paused": True}, headers=api.viewer).json()[
        "items"
    ]
    resumed = api.client.post("/api/v1/schedules/nightly-sleep/resume", headers=api.operator)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    runs = api.client.get("/api/v1/schedules/nightly-sleep/runs", headers=api.viewer)
    assert runs.status_code == 200 and runs.json() == {"items": []}

    assert (
        api.client.delete("/api/v1/schedules/nightly-sleep", headers=api.operator).status_code
        == 204
    )
    for method, path in (
        ("GET", "/api/v1/schedules/nightly-sleep"),
        ("POST", "/api/v1/schedules/nightly-sleep/pause"),
        ("POST", "/api/v1/schedules/nightly-sleep/resume"),
        ("DELETE", "/api/v1/schedules/nightly-sleep"),
        ("GET", "/api/v1/schedules/nightly-sleep/runs"),
    ):
        r = api.client.request(method, path, headers=api.operator)
        assert r.status_code == 404, (method, path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "every day"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "time zone"),
        ({"pipeline": "nope"}, "pipeline"),
        ({"params": {"seconds": "soon"}}, "params.seconds"),
        ({"misfire": "sometimes"}, "misfire"),
        ({"name": "has space"}, "name"),
    ],
)
def test_a_bad_schedule_is_a_422_saying_what_is_wrong(
    shared_api: Api, change: dict[str, Any], field: str
) -> None:
    body = {"name": "bad-one", "pipeline": "sleep", "cron": "@daily", **change}
    r = shared_api.client.post("/api/v1/schedules", json=body, headers=shared_api.operator)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"] or field in (r.json().get("fields") or {})


def test_config_schedules_are_changed_in_the_config_file_only(api: Api) -> None:
    api.engine.schedules.sync_from_config(
        [ScheduleConfig(name="harvest", pipeline="noop", cron="@hourly", paused=True)]
    )
    r = api.client.post("/api/v1/schedules/harvest/resume", headers=api.operator)
    assert r.status_code == 409 and "config file" in r.json()["detail"]
    r = api.client.delete("/api/v1/schedules/harvest", headers=api.operator)
    assert r.status_code == 409 and "config file" in r.json()["detail"]
    body = {"name": "harvest", "pipeline": "noop", "cron": "@daily"}
    assert api.client.post("/api/v1/schedules", json=body, headers=api.operator).status_code == 409
    listed = api.client.get("/api/v1/schedules", params={"source": "config"}, headers=api.viewer)
    assert [s["name"] for s in listed.json()["items"]] == ["harvest"]


# --- trackers -----------------------------------------------------------------------------------

ANSWERS: dict[str, str] = {}


def ask_repository(entity: TrackedView) -> Poll:
    said = ANSWERS.get(entity.key, entity.state)
    return Poll() if said == entity.state else Poll(said, f"repository says {said}")


review = Tracker(
    "dspace-review",
    ask_repository,
    states=["IN_REVIEW", "ARCHIVED", "REJECTED"],
    final=["ARCHIVED", "REJECTED"],
    profiles={"live": {"IN_REVIEW": {"interval": 3600, "too_long_after": 14 * 86400}}},
    description="items in DSpace review",
)


@pytest.fixture
def tracked(api: Api) -> Api:
    api.engine.trackers.register(review)
    return api


def test_track_list_and_read_entities(tracked: Api) -> None:
    api = tracked
    base = "/api/v1/trackers/dspace-review/entities"
    r = api.client.post(
        base,
        json={"key": "123456789/42", "state": "IN_REVIEW", "data": {"uuid": "u1"}},
        headers=api.operator,
    )
    assert r.status_code == 201 and r.json()["state"] == "IN_REVIEW"
    again = api.client.post(
        base, json={"key": "123456789/42", "state": "ARCHIVED"}, headers=api.operator
    )
    assert again.status_code == 200 and again.json()["state"] == "IN_REVIEW"
    for key in ("k1", "k2", "k3"):
        api.client.post(base, json={"key": key, "state": "IN_REVIEW"}, headers=api.operator)
    api.client.post(base, json={"key": "done", "state": "ARCHIVED"}, headers=api.operator)

    summary = api.client.get("/api/v1/trackers", headers=api.viewer).json()
    (item,) = summary["items"]
    assert item["counts"] == {"IN_REVIEW": 4, "ARCHIVED": 1} and item["too_long"] == 0
    assert item["final"] == ["ARCHIVED", "REJECTED"] and summary["lag"] == 0

    keys: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"state": "IN_REVIEW", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get(base, params=params, headers=api.viewer).json()
        keys += [e["key"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert keys == ["123456789/42", "k1", "k2", "k3"]

    one = api.client.get(f"{base}/123456789/42", headers=api.viewer)
    assert one.status_code == 200 and one.json()["data"] == {"uuid": "u1"}
    trail = api.client.get(f"{base}/123456789/42/transitions", headers=api.viewer).json()["items"]
    assert [(t["kind"], t["to_state"], t["by"]) for t in trail] == [
        ("created", "IN_REVIEW", "token:test-operator")
    ]
    bad = api.client.post(base, json={"key": "k9", "state": "SHIPPED"}, headers=api.operator)
    assert bad.status_code == 422 and "SHIPPED" in bad.json()["detail"]


def test_force_poll_acknowledge_and_transition(tracked: Api) -> None:
    api = tracked
    base = "/api/v1/trackers/dspace-review/entities"
    api.client.post(base, json={"key": "123/7", "state": "IN_REVIEW"}, headers=api.operator)

    polled = api.client.post(f"{base}/123/7/poll", headers=api.operator)
    assert polled.status_code == 200 and polled.json()["state"] == "IN_REVIEW"
    assert polled.json()["polls"] == 1
    acked = api.client.post(
        f"{base}/123/7/acknowledge", json={"note": "looked"}, headers=api.operator
    )
    assert acked.status_code == 200 and acked.json()["acknowledged_at"]
    ANSWERS["123/7"] = "ARCHIVED"
    try:
        moved = api.client.post(f"{base}/123/7/poll", headers=api.operator)
    finally:
        ANSWERS.clear()
    assert moved.json()["state"] == "ARCHIVED"
    final = api.client.post(f"{base}/123/7/poll", headers=api.operator)
    assert final.status_code == 409 and "final state" in final.json()["detail"]

    same = api.client.post(
        f"{base}/123/7/transition", json={"state": "ARCHIVED"}, headers=api.operator
    )
    assert same.status_code == 409
    unknown = api.client.post(
        f"{base}/123/7/transition", json={"state": "LOST"}, headers=api.operator
    )
    assert unknown.status_code == 422 and "state" in unknown.json()["fields"]
    by_hand = api.client.post(
        f"{base}/123/7/transition",
        json={"state": "REJECTED", "reason": "withdrawn by author"},
        headers=api.operator,
    )
    assert by_hand.status_code == 200 and by_hand.json()["state"] == "REJECTED"
    trail = api.client.get(f"{base}/123/7/transitions", headers=api.viewer).json()["items"]
    assert [(t["kind"], t["to_state"]) for t in trail] == [
        ("created", "IN_REVIEW"),
        ("force_poll", "IN_REVIEW"),
        ("acknowledged", "IN_REVIEW"),
        ("transition", "ARCHIVED"),
        ("transition", "REJECTED"),
    ]
    assert trail[-1]["reason"] == "withdrawn by author"
    assert trail[-1]["by"] == "token:test-operator"


def test_unknown_trackers_and_entities_are_404(tracked: Api) -> None:
    api = tracked
    for method, path in (
        ("GET", "/api/v1/trackers/nope/entities"),
        ("GET", "/api/v1/trackers/dspace-review/entities/missing"),
        ("GET", "/api/v1/trackers/dspace-review/entities/missing/transitions"),
        ("POST", "/api/v1/trackers/dspace-review/entities/missing/poll"),
        ("POST", "/api/v1/trackers/dspace-review/entities/missing/acknowledge"),
        ("POST", "/api/v1/trackers/nope/entities"),
    ):
        body = {"key": "k", "state": "IN_REVIEW"} if path.endswith("entities") else None
        r = api.client.request(method, path, json=body, headers=api.operator)
        assert r.status_code == 404, (method, path, r.text)
    r = api.client.post(
        "/api/v1/trackers/dspace-review/entities/missing/transition",
        json={"state": "ARCHIVED"},
        headers=api.operator,
    )
    assert r.status_code == 404


# --- locks and dead letters ---------------------------------------------------------------------


def test_admins_see_and_release_locks(api: Api) -> None:
    assert api.engine.locks.try_acquire("koha:biblio:42", "worker-1", ttl=60)
    locks = api.client.get("/api/v1/locks", headers=api.admin).json()["items"]
    assert [(lock["name"], lock["owner"], lock["expired"]) for lock in locks] == [
        ("koha:biblio:42", "worker-1", False)
    ]
    assert api.client.delete("/api/v1/locks/koha:biblio:42", headers=api.admin).status_code == 204
    assert api.engine.locks.get("koha:biblio:42") is None
    assert api.client.delete("/api/v1/locks/koha:biblio:42", headers=api.admin).status_code == 404
    assert api.engine.locks.try_acquire("path/with/slashes", "w", ttl=60)
    assert (
        api.client.delete("/api/v1/locks/path/with/slashes", headers=api.admin).status_code == 204
    )


def test_dead_letters_filter_and_page(api: Api) -> None:
    with api.engine.store.write() as conn:
        for i in range(5):
            conn.execute(
                insert(DeadLetter.__table__).values(
                    job_id=1 if i < 3 else 2,
                    pipeline="oai-harvest",
                    step="harvest",
                    item_key=f"oai:x:{i}",
                    reason="bad XML",
                    payload={"i": i},
                    created_at=utcnow(),
                )
            )
    first = api.client.get("/api/v1/dead-letters", params={"limit": 2}, headers=api.viewer).json()
    rest = api.client.get(
        "/api/v1/dead-letters", params={"cursor": first["next_cursor"]}, headers=api.viewer
    ).json()
    keys = [d["item_key"] for d in first["items"] + rest["items"]]
    assert keys == [f"oai:x:{i}" for i in range(5)] and rest["next_cursor"] is None
    of_job = api.client.get("/api/v1/dead-letters", params={"job_id": 2}, headers=api.viewer)
    assert [d["payload"] for d in of_job.json()["items"]] == [{"i": 3}, {"i": 4}]
    none = api.client.get("/api/v1/dead-letters", params={"pipeline": "other"}, headers=api.viewer)
    assert none.json() == {"items": [], "next_cursor": None}
    one_id = first["items"][0]["id"]
    one = api.client.get(f"/api/v1/dead-letters/{one_id}", headers=api.viewer)
    assert one.status_code == 200 and one.json()["reason"] == "bad XML"
    assert api.client.get("/api/v1/dead-letters/98765", headers=api.viewer).status_code == 404


# --- health and metrics -------------------------------------------------------------------------


def test_healthz_reports_database_and_executor(
    api_for: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    idle = api_for()  # executor not started
    r = idle.client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["database"]["ok"] is True and r.json()["executor"]["ok"] is False

    live = api_for(start=True)
    r = live.client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {
        "ok": True,
        "database": {"ok": True, "kind": "sqlite"},
        "executor": {"ok": True, "kind": "local"},
    }

    def down() -> None:
        raise DatabaseUnavailable("metadata database sqlite:///x is unreachable")

    monkeypatch.setattr(live.engine.store, "ping", down)
    r = live.client.get("/healthz")
    assert r.status_code == 503 and r.json()["database"]["ok"] is False


def test_metrics_export_the_named_series(api_for: ApiFactory) -> None:
    api = api_for(start=True, max_queue=50)
    job_id = api.submit("sleep", params={"seconds": 0.01})
    api.engine.wait(job_id, timeout=20)
    api.engine.metrics.tracker_polls += 0  # present even when nothing polled
    api.submit("noop", context="blocked")  # may still be queued or done: counted either way
    deadline = time.monotonic() + 10
    while "queued" in api.engine.jobs.counts() and time.monotonic() < deadline:
        time.sleep(0.02)
    text = api.client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = text.text
    samples = dict(
        line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#")
    )
    assert samples['shelfwork_jobs{state="succeeded"}'] == "2"
    assert samples['shelfwork_jobs{state="failed"}'] == "0"
    assert samples["shelfwork_queue_depth"] == "0"
    assert samples["shelfwork_queue_limit"] == "50"
    assert samples['shelfwork_job_duration_seconds_count{pipeline="sleep"}'] == "1"
    assert samples['shelfwork_job_duration_seconds_bucket{pipeline="sleep",le="+Inf"}'] == "1"
    assert float(samples['shelfwork_job_duration_seconds_sum{pipeline="sleep"}']) > 0
    assert samples['shelfwork_step_duration_seconds_count{pipeline="sleep",step="nap"}'] == "1"
    buckets = [
        int(v)
        for k, v in samples.items()
        if k.startswith('shelfwork_step_duration_seconds_bucket{pipeline="sleep",step="nap"')
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 1  # cumulative
    for name in (
        "shelfwork_admission_rejections_total",
        "shelfwork_lock_waits_total",
        "shelfwork_tracker_lag_seconds",
        "shelfwork_tracker_polls_total",
        "shelfwork_schedule_fires_total",
        "shelfwork_jobs_held",
    ):
        assert name in samples, name
    assert "# TYPE shelfwork_job_duration_seconds histogram" in body


# --- the error format ---------------------------------------------------------------------------


def test_every_error_is_json_with_error_and_detail(shared_api: Api) -> None:
    api = shared_api
    cases = [
        api.client.get("/api/v1/nothing", headers=api.viewer),
        api.client.put("/api/v1/jobs", headers=api.operator),
        api.client.get("/api/v1/jobs/x", headers=api.viewer),
        api.client.post(
            "/api/v1/jobs",
            content=b"[",
            headers={**api.operator, "content-type": "application/json"},
        ),
        api.client.get("/api/v1/jobs"),
    ]
    assert [r.status_code for r in cases] == [404, 405, 422, 422, 401]
    for r in cases:
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) <= {"error", "detail", "fields"} and r.json()["detail"]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_openapi_and_docs_are_served(shared_api: Api) -> None:
    spec = shared_api.client.get("/api/v1/openapi.json").json()
    assert spec["info"]["title"] == "shelfwork"
    assert "token" in spec["components"]["securitySchemes"]
    submit = spec["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert {"202", "401", "403", "409", "422", "429"} <= set(submit)
    docs = shared_api.client.get("/api/v1/docs")  # rendered here, see test_docs.py
    assert docs.status_code == 200 and "API reference" in docs.text
    assert "swagger" not in docs.text.lower() and "cdn" not in docs.text.lower()
