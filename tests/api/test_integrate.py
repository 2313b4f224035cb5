"""The seed-compatible /integrate and /status endpoints: auth, input, dedup, and what a
status says while and after the job runs (a stand-in koha-dspace pipeline, no peers needed)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from shelfwork.context import StepContext
from shelfwork.pipeline import Pipeline, branch, parallel, step

from .conftest import ApiFactory


class Biblio(BaseModel):
    model_config = ConfigDict(extra="forbid")
    biblionumber: int


def slow(ctx: StepContext) -> None:
    ctx.progress(1, 2, "halfway", force=True)
    ctx.sleep(0.6)


def cover(ctx: StepContext) -> None:
    raise RuntimeError("Koha refused the cover")


def done(ctx: StepContext) -> dict[str, Any]:
    n = ctx.params.biblionumber  # type: ignore[attr-defined]
    if n == 13:
        raise RuntimeError("956$u names no file")
    return {"uuid": "u-1", "handle_url": "https://hdl/1", "cover_url": None, "in_review": False}


STAND_IN = Pipeline(
    "koha-dspace",
    params=Biblio,
    dedup=lambda p: f"koha-dspace:{p.biblionumber}",
    steps=[step(slow), parallel(branch("cover_branch", cover, critical=False)), step(done)],
)


@pytest.fixture
def client(api_for: ApiFactory) -> Any:
    return api_for(pipelines=[STAND_IN], start=True)


def wait_final(api: Any, task: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = api.client.get(f"/status/{task}", headers=headers).json()
        if status["status"] in ("done", "error", "cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError("task did not end")


def test_integrate_then_status_until_done(client: Any) -> None:
    api = client
    first = api.client.post("/integrate", json={"biblionumber": 42}, headers=api.operator)
    assert first.status_code == 202, first.text
    task = first.json()["task_id"]
    assert first.headers["Location"] == f"/status/{task}"
    again = api.client.post("/integrate", json={"biblionumber": "42"}, headers=api.operator)
    assert again.json()["task_id"] == task and again.json()["created"] is False
    running = api.client.get(f"/status/{task}", headers=api.viewer).json()
    assert running["status"] in ("queued", "running") and running["biblionumber"] == 42
    final = wait_final(api, task, api.viewer)
    assert final["status"] == "done"
    assert final["handle_url"] == "https://hdl/1" and final["item_uuid"] == "u-1"
    assert any("Koha refused the cover" in w for w in final["warnings"])
    assert final["progress"]["percent"] == 100.0


def test_error_status_carries_the_reason(client: Any) -> None:
    api = client
    task = api.client.post("/integrate", json={"biblionumber": 13}, headers=api.operator).json()
    final = wait_final(api, task["task_id"], api.viewer)
    assert final["status"] == "error" and "956$u names no file" in final["error"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"biblionumber": 0},
        {"biblionumber": True},
        {"biblionumber": "x"},
        {"biblionumber": 1, "extra": 1},
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: Any, body: dict[str, Any]) -> None:
    answer = client.client.post("/integrate", json=body, headers=client.operator)
    assert answer.status_code == 422
    assert answer.json()["fields"]


def test_roles_and_unknown_tasks(client: Any) -> None:
    api = client
    assert api.client.post("/integrate", json={"biblionumber": 1}).status_code == 401
    viewer = api.client.post("/integrate", json={"biblionumber": 1}, headers=api.viewer)
    assert viewer.status_code == 403
    assert api.client.get("/status/999999", headers=api.viewer).status_code == 404
    other = api.client.post("/api/v1/jobs", json={"pipeline": "noop"}, headers=api.operator).json()[
        "id"
    ]
    assert api.client.get(f"/status/{other}", headers=api.viewer).status_code == 404


def test_not_enabled_is_a_404(api_for: ApiFactory) -> None:
    api = api_for()
    answer = api.client.post("/integrate", json={"biblionumber": 1}, headers=api.operator)
    assert answer.status_code == 404 and answer.json()["error"] == "not_enabled"


def test_the_integrator_role_may_integrate_and_read_status_and_nothing_else(client: Any) -> None:
    """The staff button's token sits in every staff browser: it may do these two things only."""
    from .test_auth import ROUTES, concrete

    api = client
    _, secret = api.client.app.state.auth.tokens.create("integrator", "koha-button")
    button = {"Authorization": f"Bearer {secret}"}
    started = api.client.post("/integrate", json={"biblionumber": 7}, headers=button)
    assert started.status_code == 202, started.text
    task = started.json()["task_id"]
    assert api.client.get(f"/status/{task}", headers=button).status_code == 200
    for method, path in ROUTES:
        if path in ("/integrate", "/status/{task_id}"):
            continue
        body = {"json": {}} if method in ("POST", "PUT") else {}
        answer = api.client.request(method, concrete(path), headers=button, **body)
        assert answer.status_code == 403, (method, path, answer.status_code)
    viewer = api.client.post("/integrate", json={"biblionumber": 7}, headers=api.viewer)
    assert viewer.status_code == 403  # between integrator and operator: read-only
    wait_final(api, task, button)


def test_no_dashboard_user_gets_the_integrator_role(client: Any) -> None:
    from shelfwork.api.auth import AccessError

    with pytest.raises(AccessError, match="integrator role is for the Koha button"):
        client.client.app.state.auth.users.create("staff", "integrator", "a long password here")


def test_admins_make_and_list_integrator_tokens_over_the_api(client: Any) -> None:
    api = client
    made = api.client.post(
        "/api/v1/tokens", json={"role": "integrator", "name": "koha-button"}, headers=api.admin
    )
    assert made.status_code == 201, made.text
    assert made.json()["role"] == "integrator"
    listed = api.client.get("/api/v1/tokens", headers=api.admin)
    assert listed.status_code == 200, listed.text
    assert "integrator" in {t["role"] for t in listed.json()["items"]}
    button = {"Authorization": f"Bearer {made.json()['token']}"}
    assert (
        api.client.post("/integrate", json={"biblionumber": 3}, headers=button).status_code == 202
    )
