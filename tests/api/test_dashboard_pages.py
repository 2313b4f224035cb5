"""The dashboard rendered on the server, without a browser: who may see and do what, the forms and
their errors, the security headers, escaping, languages, and what each view shows."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update

from shelfwork.dashboard.i18n import LANGUAGE_COOKIE
from shelfwork.store.database import utcnow
from shelfwork.store.models import DeadLetter, Job, TrackedEntity
from shelfwork.trackers import Tracker

from .conftest import Api, ApiFactory

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

PAGES = ["/", "/admission", "/schedules", "/trackers", "/dead-letters", "/charts"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class LoggedIn:
    """A cookie-keeping client logged in as one dashboard user, with the session's CSRF token."""

    def __init__(self, api: Api, name: str, role: str) -> None:
        self.client = TestClient(api.client.app)
        password = f"{name} has a long password"
        api.client.app.state.auth.users.create(name, role, password)  # type: ignore[attr-defined]
        form = self.client.get("/login")
        login_csrf = CSRF.search(form.text)
        assert login_csrf is not None
        r = self.client.post(
            "/login",
            data={"username": name, "password": password, "csrf_token": login_csrf.group(1)},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        page = self.client.get("/")
        found = CSRF.search(page.text)
        assert found is not None
        self.csrf = found.group(1)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True) -> Any:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.client.post(path, data=form, follow_redirects=False)


@pytest.fixture
def dashboard(api: Api, fast_hashing: None) -> Callable[[str], LoggedIn]:
    def as_role(role: str) -> LoggedIn:
        return LoggedIn(api, f"{role}-user", role)

    return as_role


def test_pages_send_strangers_to_the_login_page(api: Api) -> None:
    for path in [*PAGES, "/locks", "/jobs/1", "/?state=failed"]:
        r = api.client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=%2F"), path
    r = api.client.get("/admission", follow_redirects=False)
    assert r.headers["location"] == "/login?next=%2Fadmission"
    for fragment in ("/fragments/jobs", "/fragments/job-counts", "/fragments/jobs/1"):
        assert api.client.get(fragment).status_code == 401, fragment
    posted = api.client.post("/jobs", data={"pipeline": "noop"}, follow_redirects=False)
    assert posted.status_code == 303 and api.engine.jobs.list() == []
    # An API token is not a dashboard session.
    assert api.client.get("/", headers=api.admin, follow_redirects=False).status_code == 303


def test_the_login_page_is_the_dashboards_and_speaks_the_chosen_language(
    api: Api, fast_hashing: None
) -> None:
    page = api.client.get("/login?lang=uk&next=/admission")
    assert page.status_code == 200
    assert '<html lang="uk">' in page.text and "Вхід" in page.text
    assert 'name="next" value="/admission"' in page.text
    assert page.cookies.get(LANGUAGE_COOKIE) == "uk"
    assert "/static/app.css" in page.text
    api.client.app.state.auth.users.create("mykola", "viewer", "mykola's password")  # type: ignore[attr-defined]
    csrf = CSRF.search(page.text)
    assert csrf is not None
    wrong = api.client.post(
        "/login",
        data={"username": "mykola", "password": "nope", "csrf_token": csrf.group(1)},
    )
    assert wrong.status_code == 401
    assert "Неправильне ім&#39;я користувача або пароль." in wrong.text
    english = api.client.get("/login?lang=en")
    assert "Log in" in english.text and english.cookies.get(LANGUAGE_COOKIE) == "en"


def test_every_page_renders_with_strict_security_headers(
    backend: str, api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    """On both databases: the pages' own queries (admission, trackers, charts) run on each."""
    seed(api)
    admin = dashboard("admin")
    job_id = api.engine.jobs.list()[0].id
    for path in [*PAGES, "/locks", f"/jobs/{job_id}", "/fragments/jobs", "/fragments/jobs/1"]:
        r = admin.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        csp = r.headers["content-security-policy"]
        for rule in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
            assert rule in csp, (path, csp)
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "same-origin"
        # Nothing the policy would block: no inline script, style or event handler.
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", r.text), path
    assert api.client.get("/static/app.js").status_code == 200
    assert api.client.get("/static/app.css").headers["content-type"].startswith("text/css")
    # The API's docs page has its own policy, as strict: no script, only its own style (by hash).
    docs_csp = api.client.get("/api/v1/docs").headers["content-security-policy"]
    assert "default-src 'none'" in docs_csp and "script-src 'none'" in docs_csp
    assert "unsafe-inline" not in docs_csp and "style-src 'sha256-" in docs_csp


def test_an_operator_submits_a_job_with_the_form(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    operator = dashboard("operator")
    page = operator.get("/")
    assert 'action="/jobs"' in page.text and 'data-example="{&#34;seconds&#34;: 1.0' in page.text
    r = operator.post(
        "/jobs",
        {
            "pipeline": "sleep",
            "params": '{"seconds": 0.5, "steps": 2}',
            "context": "koha:lnu",
            "lane": "",
            "priority": "3",
        },
    )
    assert r.status_code == 303
    job = api.engine.jobs.list()[0]
    assert r.headers["location"] == f"/?done=submitted&job={job.id}"
    assert (job.pipeline, job.params, job.context, job.lane, job.priority) == (
        "sleep",
        {"seconds": 0.5, "steps": 2},
        "koha:lnu",
        None,
        3,
    )
    assert "operator-user" in api.engine.jobs.events(job.id)[0]["message"]
    landed = operator.get(r.headers["location"])
    assert f"Job {job.id} was submitted." in landed.text
    assert f'id="job-{job.id}"' in landed.text

    same = operator.post(
        "/jobs", {"pipeline": "typed", "params": '{"biblionumber": 7, "format": "pdf"}'}
    )
    assert same.status_code == 303 and "done=submitted" in same.headers["location"]


def test_submit_errors_come_back_on_the_form_with_what_was_typed(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    api = api_for(max_queue=1)
    operator = LoggedIn(api, "op", "operator")

    def refused(status: int, **form: str) -> str:
        r = operator.post("/jobs", {"pipeline": "sleep", **form})
        assert r.status_code == status, r.text[:300]
        assert '<details class="panel submit" id="submit" open>' in r.text
        return str(r.text)

    text = refused(422, params='{"seconds": ')
    assert "The parameters are not a JSON object" in text
    assert "{&#34;seconds&#34;: </textarea>" in text  # kept, escaped
    assert "not a JSON object: list" in refused(422, params="[1, 2]")
    text = refused(422, params='{"seconds": -1, "nap": true}')
    assert "Some parameters are wrong" in text
    assert "<code>seconds</code>" in text and "<code>nap</code>" in text
    assert "whole number" in refused(422, priority="high")
    assert "control characters" in refused(422, context="a\x01b")
    assert "Choose a pipeline" in refused(422, pipeline="no-such-pipeline")
    guarded = operator.post("/jobs", {"pipeline": "guarded", "params": '{"allow": false}'})
    assert guarded.status_code == 409
    assert "the catalogue is read-only until 06:00" in guarded.text
    assert api.engine.jobs.list() == []

    assert operator.post("/jobs", {"pipeline": "noop", "params": ""}).status_code == 303
    assert "The queue is full" in refused(429, params="{}")
    assert len(api.engine.jobs.list()) == 1


def test_forms_need_the_sessions_csrf_token(api: Api, dashboard: Callable[[str], LoggedIn]) -> None:
    operator = dashboard("operator")
    job_id = api.submit("noop")
    missing = operator.post("/jobs", {"pipeline": "noop"}, csrf=False)
    assert missing.status_code == 403 and "The form expired" in missing.text
    forged = operator.client.post(
        f"/jobs/{job_id}/cancel", data={"csrf_token": "x" * 43}, follow_redirects=False
    )
    assert forged.status_code == 403
    other = dashboard("admin")  # a real token, of another session
    crossed = operator.client.post(
        f"/jobs/{job_id}/cancel", data={"csrf_token": other.csrf}, follow_redirects=False
    )
    assert crossed.status_code == 403
    assert api.engine.get(job_id).state == "queued" and len(api.engine.jobs.list()) == 1


def test_a_viewer_sees_no_forms_and_cannot_post_them(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    job_id = api.submit("noop")
    api.engine.schedules.add("nightly", "noop", "@daily")
    viewer = dashboard("viewer")
    jobs = viewer.get("/").text
    assert 'action="/jobs"' not in jobs and "Submit a job" not in jobs
    job = viewer.get(f"/jobs/{job_id}").text
    assert 'data-action="' not in job and "Cancel job" not in job
    assert "/pause" not in viewer.get("/schedules").text
    assert 'href="/locks"' not in jobs
    locks = viewer.get("/locks")
    assert locks.status_code == 403 and "needs the admin role" in locks.text

    cancel = viewer.post(f"/jobs/{job_id}/cancel")
    assert cancel.status_code == 403
    assert "This needs the operator role; you have the viewer role." in cancel.text
    assert viewer.post("/schedules/nightly/pause").status_code == 403
    assert viewer.post("/jobs", {"pipeline": "noop"}).status_code == 403
    assert api.engine.get(job_id).state == "queued"
    assert not api.engine.schedules.get("nightly").paused

    operator = dashboard("operator")
    assert operator.get("/locks").status_code == 403
    assert 'href="/locks"' in dashboard("admin").get("/").text


def test_an_operator_cancels_retries_and_releases_jobs(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    operator = dashboard("operator")
    job_id = api.submit("noop")
    page = operator.get(f"/jobs/{job_id}").text
    assert re.search(r'data-action="cancel">', page) and re.search(
        r'data-action="retry" hidden', page
    )

    r = operator.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job_id}?done=cancelled"
    assert api.engine.get(job_id).state == "cancelled"
    assert "The job was cancelled." in operator.get(r.headers["location"]).text

    again = operator.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "only live jobs can cancel" in again.text

    r = operator.post(f"/jobs/{job_id}/retry")
    assert r.headers["location"] == f"/jobs/{job_id}?done=retried"
    assert api.engine.get(job_id).state == "queued"

    with api.engine.store.write() as conn:
        conn.execute(
            update(Job.__table__)
            .where(Job.__table__.c.id == job_id)
            .values(attention="the pipeline's code changed")
        )
    held = operator.get(f"/jobs/{job_id}").text
    assert "Held for a person" in held and "the pipeline&#39;s code changed" in held
    r = operator.post(f"/jobs/{job_id}/release")
    assert r.headers["location"] == f"/jobs/{job_id}?done=released"
    assert api.engine.get(job_id).attention is None

    assert operator.post(f"/jobs/{job_id}/explode").status_code == 404
    assert operator.post("/jobs/987654/cancel").status_code == 404
    assert operator.get("/jobs/987654").status_code == 404
    assert operator.get("/jobs/not-a-number").status_code == 404


def test_an_operator_pauses_and_resumes_a_schedule(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    api.engine.schedules.add("nightly-harvest", "noop", "0 2 * * *", timezone="Europe/Kyiv")
    operator = dashboard("operator")
    page = operator.get("/schedules").text
    assert "nightly-harvest" in page and "Europe/Kyiv" in page
    r = operator.post("/schedules/nightly-harvest/pause")
    assert r.headers["location"] == "/schedules?done=paused&name=nightly-harvest"
    assert api.engine.schedules.get("nightly-harvest").paused
    assert "Schedule nightly-harvest was paused." in operator.get(r.headers["location"]).text
    operator.post("/schedules/nightly-harvest/resume")
    assert not api.engine.schedules.get("nightly-harvest").paused
    assert operator.post("/schedules/nope/pause").status_code == 404


def test_what_users_typed_is_escaped_everywhere(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    evil = '<script>alert("x")</script>'
    job_id = api.submit("noop", context=evil)
    with api.engine.store.write() as conn:
        conn.execute(
            insert(DeadLetter.__table__).values(
                job_id=job_id,
                pipeline="noop",
                step="nothing",
                item_key=evil,
                reason=evil,
                payload={"title": evil},
                created_at=utcnow(),
            )
        )
    admin = dashboard("admin")
    for path in ("/", f"/jobs/{job_id}", "/admission", "/dead-letters", "/fragments/jobs"):
        text = admin.get(path).text
        assert evil not in text and "&lt;script&gt;" in text, path


def test_the_language_switches_with_a_link_and_is_remembered(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    viewer = dashboard("viewer")
    assert '<html lang="en">' in viewer.get("/").text
    uk = viewer.get("/?state=failed&lang=uk")
    assert '<html lang="uk">' in uk.text and "<h1>Завдання</h1>" in uk.text
    assert "з помилкою" in uk.text  # the state filter, translated
    assert 'href="/?state=failed&amp;lang=en"' in uk.text  # switching keeps the filter
    assert uk.cookies.get(LANGUAGE_COOKIE) == "uk"
    set_cookie = uk.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "<h1>Допуск</h1>" in viewer.get("/admission").text  # remembered by the cookie
    assert "Ваш сеанс" in viewer.get("/charts").text  # the script's message, translated
    assert "<h1>Admission</h1>" in viewer.get("/admission?lang=en").text
    assert "<h1>Admission</h1>" in viewer.get("/admission?lang=xx").text
    assert "set-cookie" not in viewer.get("/admission?lang=xx").headers


def test_fragments_carry_what_the_page_script_needs(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    queued = api.submit("noop")
    done = api.submit("noop")
    api.engine.cancel(done)
    viewer = dashboard("viewer")
    rows = viewer.get("/fragments/jobs").text
    assert f'<tr id="job-{queued}" data-state="queued">' in rows
    assert f'<tr id="job-{done}" data-state="cancelled">' in rows
    assert "<html" not in rows
    assert viewer.get("/fragments/jobs?state=cancelled").text.count("<tr") == 1
    live = viewer.get(f"/fragments/jobs/{queued}").text
    assert 'data-state="queued" data-actions="cancel">' in live
    finished = viewer.get(f"/fragments/jobs/{done}").text
    assert 'data-actions="retry" data-live-done' in finished
    counts = viewer.get("/fragments/job-counts").text
    assert re.search(r"queued</span> <b>1</b>", counts)
    page = viewer.get("/").text
    assert 'data-live-src="/fragments/jobs?"' in page and "data-live-rows" in page
    older = viewer.get(f"/?before={done + 1}").text
    assert "data-live-rows" not in older  # an older page stays still


def test_a_finished_job_shows_its_steps_on_a_time_axis(
    api_for: ApiFactory, fast_hashing: None
) -> None:
    api = api_for(start=True)
    job_id = api.engine.submit("fork", {"fail_cover": True, "tag": "page"}).job_id
    job = api.engine.wait(job_id, timeout=20)
    assert job.state == "succeeded"
    viewer = LoggedIn(api, "v", "viewer")
    page = viewer.get(f"/jobs/{job_id}").text
    timeline = re.search(r'<svg[^>]*class="chart chart-timeline".*?</svg>', page, re.S)
    assert timeline is not None
    bars = re.findall(r'<rect [^>]*data-step="([^"]+)" data-state="([^"]+)"', timeline.group(0))
    assert dict(bars) == {s.name: s.state for s in job.steps}
    assert ("cover", "failed") in bars
    assert "cover upload refused" in page  # the optional branch's failure, as a warning
    assert "data-live-done" in page


def test_admission_says_why_each_job_waits(api_for: ApiFactory, fast_hashing: None) -> None:
    api = api_for(max_running=2)
    engine = api.engine
    a = engine.submit("noop", context="koha:lnu").job_id
    b = engine.submit("noop", lane="dspace").job_id
    engine.admission.claim("test-owner", 60)  # both start: they are the first two
    c = engine.submit("noop", context="koha:lnu").job_id
    d = engine.submit("noop", lane="dspace").job_id
    e = engine.submit("noop").job_id
    viewer = LoggedIn(api, "v", "viewer")
    page = viewer.get("/admission").text
    assert re.search(r'id="tile-running">\s*2 of 2', page)
    assert re.search(r'id="tile-waiting">\s*3 of 32', page)
    for job_id, why in (
        (c, f"its context is busy (job {a})"),
        (d, f"its lane is busy (job {b})"),
        (e, "all 2 run slots are taken"),
    ):
        row = re.search(rf'<tr id="waiting-{job_id}">.*?</tr>', page, re.S)
        assert row is not None and why in row.group(0)
    assert re.search(rf"koha:lnu</td>\s*<td[^>]*><a href=\"/jobs/{a}\"", page)


def test_trackers_show_entities_per_state_and_what_is_late(
    api: Api, dashboard: Callable[[str], LoggedIn]
) -> None:
    trackers = api.engine.trackers
    trackers.register(
        Tracker(
            "dcb-loan",
            lambda _entity: None,
            states=["requested", "shipped", "returned"],
            final=["returned"],
            profiles={"live": {"requested": {"interval": 60}, "shipped": {"interval": 60}}},
            description="consortial loans",
        )
    )
    for key, state in (("loan-1", "requested"), ("loan-2", "requested"), ("loan-3", "shipped")):
        trackers.track("dcb-loan", key, state)
    entities = TrackedEntity.__table__
    with api.engine.store.write() as conn:
        conn.execute(
            update(entities)
            .where(entities.c.key == "loan-1")
            .values(too_long=True, entered_state_at=utcnow() - timedelta(hours=30))
        )
        conn.execute(
            update(entities)
            .where(entities.c.key == "loan-3")
            .values(next_poll_at=utcnow() - timedelta(minutes=5), error="Koha timed out")
        )
    page = dashboard("viewer").get("/trackers").text
    counts = dict(
        re.findall(
            r"<code>(\w+)</code>(?: <span[^>]*>final</span>)?</td><td class=\"num\">(\d+)", page
        )
    )
    assert counts == {"requested": "2", "shipped": "1", "returned": "0"}
    assert "loan-1" in page and "1 d 6 h" in page
    assert "loan-3" in page and "Koha timed out" in page
    assert "The most overdue poll is" in page


def test_locks_and_dead_letters_are_listed(api: Api, dashboard: Callable[[str], LoggedIn]) -> None:
    job_id = api.submit("noop")
    api.engine.locks.try_acquire("koha:lnu:biblio:42", "server:a:1", ttl=60, job_id=job_id)
    with api.engine.store.write() as conn:
        conn.execute(
            insert(DeadLetter.__table__),
            [
                {
                    "job_id": job_id if i % 2 else None,
                    "pipeline": "oai-harvest",
                    "step": "harvest",
                    "item_key": f"oai:repo:{i}",
                    "reason": "mismatched tag",
                    "payload": {"n": i},
                    "created_at": utcnow(),
                }
                for i in range(1, 5)
            ],
        )
    admin = dashboard("admin")
    locks = admin.get("/locks").text
    assert "koha:lnu:biblio:42" in locks and f'href="/jobs/{job_id}"' in locks
    letters = admin.get("/dead-letters").text
    assert letters.index("oai:repo:4") < letters.index("oai:repo:1")  # newest first
    mine = admin.get(f"/dead-letters?job={job_id}").text
    assert "oai:repo:1" in mine and "oai:repo:3" in mine and "oai:repo:2" not in mine
    assert "No dead letters." in admin.get("/dead-letters?job=987654").text


def test_charts_show_the_last_24_hours(api: Api, dashboard: Callable[[str], LoggedIn]) -> None:
    now = utcnow()
    rows = [
        _finished("koha-dspace", "succeeded", now - timedelta(hours=2), 30.0),
        _finished("koha-dspace", "failed", now - timedelta(hours=2), 90.0),
        _finished("oai-harvest", "succeeded", now - timedelta(hours=5), 10.0),
        _finished("oai-harvest", "succeeded", now - timedelta(hours=30), 10.0),  # too old
    ]
    with api.engine.store.write() as conn:
        conn.execute(insert(Job.__table__), rows)
    page = dashboard("viewer").get("/charts").text
    assert page.count('class="chart chart-') == 2
    assert len(re.findall(r'<rect [^>]*class="bar bar-', page)) == 3
    table = re.search(r'<section class="panel" id="by-pipeline">.*?</section>', page, re.S)
    assert table is not None
    cells = re.findall(r"<td [^>]*class=\"num\">([^<]+)<", table.group(0))
    assert cells == ["2", "1", "30 s", "1 min 30 s", "1", "0", "10 s", "10 s"]
    empty = TestClient(api.client.app)
    assert empty.get("/charts", follow_redirects=False).status_code == 303


def _finished(pipeline: str, state: str, at: Any, seconds: float) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "pipeline_version": "1",
        "params": {},
        "state": state,
        "created_at": at - timedelta(seconds=seconds + 1),
        "started_at": at - timedelta(seconds=seconds),
        "finished_at": at,
        "runs": 1,
        "cancel_requested": False,
        "warnings": [],
        "priority": 0,
    }


def seed(api: Api) -> None:
    """A little of everything, so every page has something to render."""
    engine = api.engine
    job_id = api.submit("noop", context="koha:lnu")
    api.submit("sleep", params={"seconds": 1})
    engine.schedules.add("nightly", "noop", "@daily")
    engine.locks.try_acquire("koha:lnu", "server:a:1", ttl=60, job_id=job_id)
    engine.trackers.register(
        Tracker(
            "loans",
            lambda _e: None,
            states=["open", "closed"],
            profiles={"live": {"open": {"interval": 60}}},
        )
    )
    engine.trackers.track("loans", "loan-1", "open")
    with engine.store.write() as conn:
        conn.execute(
            insert(DeadLetter.__table__).values(
                job_id=job_id, item_key="k", reason="bad", created_at=utcnow()
            )
        )
        conn.execute(insert(Job.__table__), [_finished("noop", "succeeded", utcnow(), 1.0)])


def test_ids_that_are_digits_but_not_ascii_are_not_found(
    dashboard: Callable[[str], LoggedIn],
) -> None:
    viewer = dashboard("viewer")
    for path in ("/jobs/²", "/jobs/١٢", "/fragments/jobs/²"):
        assert viewer.get(path).status_code == 404, path
