"""The seed-compatible /integrate and /status endpoints: auth, input, dedup, and what a
status says while and after the job runs (a stand-in koha-dspace pipeline, no peers needed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from shelfwork.context import StepContext
from shelfwork.pipeline import Pipeline, branch, parallel, step
from shelfwork.sandbox.peers import Peers, start_peers

from .conftest import ApiFactory


class Biblio(BaseModel):
    model_config = ConfigDict(extra="forbid")
    biblionumber: int


#: the first step holds until a test lets it go (open unless a test closes it): a test that reads
#: a running task does so while it surely runs, not within a fixed time window
GATE = threading.Event()
GATE.set()


def slow(ctx: StepContext) -> None:
    ctx.progress(1, 2, "halfway", force=True)
    while not GATE.wait(0.05):
        ctx.check_cancel()


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
def client(api_for: ApiFactory) -> Iterator[Any]:
    GATE.set()
    yield api_for(pipelines=[STAND_IN], start=True)
    GATE.set()


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
    GATE.clear()
    first = api.client.post("/integrate", json={"biblionumber": 42}, headers=api.operator)
    assert first.status_code == 202, first.text
    task = first.json()["task_id"]
    assert first.headers["Location"] == f"/status/{task}?biblionumber=42"
    again = api.client.post("/integrate", json={"biblionumber": "42"}, headers=api.operator)
    assert again.json()["task_id"] == task and again.json()["created"] is False
    running = api.client.get(f"/status/{task}", headers=api.viewer).json()
    assert running["status"] in ("queued", "running") and running["biblionumber"] == 42
    GATE.set()
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
    button = api.button()
    started = api.client.post("/integrate", json={"biblionumber": 7}, headers=button)
    assert started.status_code == 202, started.text
    task = started.json()["task_id"]
    status = api.client.get(f"/status/{task}?biblionumber=7", headers=button)
    assert status.status_code == 200, status.text
    for method, path in ROUTES:
        if path in ("/integrate", "/status/{task_id}"):
            continue
        body = {"json": {}} if method in ("POST", "PUT") else {}
        answer = api.client.request(method, concrete(path), headers=button, **body)
        assert answer.status_code == 403, (method, path, answer.status_code)
    viewer = api.client.post("/integrate", json={"biblionumber": 7}, headers=api.viewer)
    assert viewer.status_code == 403  # between integrator and operator: read-only
    wait_final(api, f"{task}?biblionumber=7", button)


def test_the_integrator_reads_a_task_only_with_its_record(client: Any) -> None:
    """Task ids are sequential: the button's token must also name the record (the biblionumber
    the Koha page knows), so counting through ids shows nobody else's tasks."""
    api = client
    button = api.button()
    mine = api.client.post("/integrate", json={"biblionumber": 21}, headers=button).json()
    other = api.client.post("/integrate", json={"biblionumber": 22}, headers=button).json()
    assert mine["status_url"] == f"/status/{mine['task_id']}?biblionumber=21"
    task = mine["task_id"]
    bare = api.client.get(f"/status/{task}", headers=button)
    assert bare.status_code == 422 and "biblionumber" in bare.json()["fields"]
    assert api.client.get(mine["status_url"], headers=button).status_code == 200
    for wrong in (22, 999):
        answer = api.client.get(f"/status/{task}?biblionumber={wrong}", headers=button)
        assert answer.status_code == 404
    stolen = api.client.get(f"/status/{other['task_id']}?biblionumber=21", headers=button)
    assert stolen.status_code == 404 and "22" not in stolen.text
    noop = api.submit("noop")
    assert api.client.get(f"/status/{noop}?biblionumber=21", headers=button).status_code == 404
    # API tokens (viewer and up) keep the seed's plain /status/{task_id}
    assert api.client.get(f"/status/{task}", headers=api.viewer).status_code == 200
    assert api.client.get(f"/status/{task}?biblionumber=22", headers=api.viewer).status_code == 404
    wait_final(api, task, api.viewer)
    wait_final(api, other["task_id"], api.viewer)


LEAKY_FAILURE = (
    "dspace: deposit refused (POST http://dspace.internal:8080/server/api/core/items -> HTTP 422):"
    " <html>stack trace at /opt/dspace/lib</html>; file /srv/shelfwork/inbox/2026/a.pdf"
)


def leaky(ctx: StepContext) -> None:
    ctx.progress(1, 2, "working", force=True)
    raise RuntimeError(LEAKY_FAILURE)


def leaky_cover(ctx: StepContext) -> None:
    raise RuntimeError("koha: upload refused (POST http://koha.internal/cgi-bin/x -> HTTP 500)")


LEAKY = Pipeline(
    "koha-dspace",
    params=Biblio,
    dedup=lambda p: f"koha-dspace:{p.biblionumber}",
    steps=[parallel(branch("cover", leaky_cover, critical=False)), step(leaky)],
)


def test_the_integrator_sees_no_server_paths_internal_urls_or_remote_answers(
    api_for: ApiFactory,
) -> None:
    api = api_for(pipelines=[LEAKY], start=True)
    button = api.button()
    started = api.client.post("/integrate", json={"biblionumber": 31}, headers=button).json()
    full = wait_final(api, started["task_id"], api.viewer)
    assert full["error"] and "dspace.internal" in full["error"]  # readers of the API see all
    assert full["warnings"] and "koha.internal" in full["warnings"][0]
    seen = api.client.get(started["status_url"], headers=button)
    assert seen.status_code == 200
    status = seen.json()
    assert status["status"] == "error" and status["job_url"] is None
    text = json.dumps(status)
    for secret in ("internal", "http://", "/srv/", "/opt/", "<html>", "422", "500"):
        assert secret not in text, secret
    assert status["error"].startswith("The integration stopped at the step")
    assert f"task {started['task_id']}" in status["error"]
    assert status["warnings"] == [
        "The cover could not be made or sent to Koha; the record was integrated without it."
    ]
    ukrainian = api.client.get(
        started["status_url"], headers={**button, "Accept-Language": "uk-UA,uk;q=0.9,en;q=0.5"}
    ).json()
    assert ukrainian["error"].startswith("Інтеграцію зупинено на кроці")


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


# --- the real pipeline against the emulated Koha and DSpace -------------------------------------


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    running = start_peers()
    yield running
    running.stop()


def test_with_the_real_pipeline_no_credentials_paths_or_urls_reach_the_button(
    api_for: ApiFactory, peers: Peers, tmp_path: Path
) -> None:
    """A Koha URL with credentials in it, a record Koha does not have (Koha's 404 names the URL)
    and a scan missing from the inbox (the error names the inbox): API readers see the
    job's own text without the credentials; the button's token sees sentences for a cataloguer."""
    from shelfwork.pipelines import koha_dspace
    from shelfwork.pipelines.koha_dspace.demo import cases, seed_books

    seed_books(peers, tmp_path, [c for c in cases() if c.book.biblionumber == 1003])
    table = peers.integrator_config(tmp_path)
    table["koha"]["url"] = table["koha"]["url"].replace("://", "://leaky:hunter2@", 1)
    api = api_for(pipelines=koha_dspace.PIPELINES, systems={"koha-dspace": table}, start=True)
    button = api.button()
    tasks = {
        n: api.client.post("/integrate", json={"biblionumber": n}, headers=button).json()
        for n in (4242, 1003)
    }
    for n, task in tasks.items():
        full = wait_final(api, task["task_id"], api.viewer)
        events = api.client.get(f"/api/v1/jobs/{task['task_id']}/events", headers=api.viewer)
        assert full["status"] == "error", full
        for text in (json.dumps(full), events.text):
            assert "hunter2" not in text and "leaky" not in text
        scoped = api.client.get(task["status_url"], headers=button).json()
        shown = json.dumps(scoped, ensure_ascii=False)
        for secret in (str(tmp_path), "127.0.0.1", "http", "hunter2", "inbox/"):
            assert secret not in shown, (n, secret, shown)
        assert f"task {task['task_id']}" in scoped["error"]
    assert "Koha" in api.engine.get(int(tasks[4242]["task_id"])).error  # the job keeps the why
    missing = api.client.get(tasks[1003]["status_url"], headers=button).json()
    assert "taking the scan named in 956$u" in missing["error"]
    assert "missing.pdf" in missing["error"]  # the cataloguer's own 956$u, to check


def test_the_note_written_into_koha_names_no_address_and_quotes_no_remote_answer(
    api_for: ApiFactory, peers: Peers, tmp_path: Path
) -> None:
    """On a failure the pipeline writes why into the record's 956$z, which every cataloguer
    reads: where it stopped, in the pipeline's words, and the HTTP status; DSpace's answer and
    its address stay in the job, for the administrator."""
    from shelfwork.pipelines import koha_dspace
    from shelfwork.pipelines.koha_dspace.demo import cases, seed_books
    from shelfwork.pipelines.koha_dspace.marc import integration_state, parse_marcxml

    seed_books(peers, tmp_path, [c for c in cases() if c.book.biblionumber == 1001])
    table = peers.integrator_config(tmp_path)
    api = api_for(pipelines=koha_dspace.PIPELINES, systems={"koha-dspace": table}, start=True)
    peers.dspace.fail_next(1, 422, "/authn/login")  # answered with DSpace's problem JSON
    task = api.client.post("/integrate", json={"biblionumber": 1001}, headers=api.operator)
    full = wait_final(api, task.json()["task_id"], api.viewer)
    assert full["status"] == "error", full
    assert "Injected fault" in full["error"] and "/server/api" in full["error"]  # the job keeps it
    note = integration_state(parse_marcxml(peers.koha.record(1001), biblionumber=1001))
    assert note.status == "error" and note.message is not None
    assert "(HTTP 422)" in note.message, note.message
    for internal in ("Injected fault", "127.0.0.1", "http", "/server/api", str(tmp_path)):
        assert internal not in note.message, (internal, note.message)
