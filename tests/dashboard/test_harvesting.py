"""The harvesting pages rendered on the server, without a browser: one real run of a network
against a loopback OAI-PMH provider (harvest, validate with detailed diagnose, index into the
built-in search), then what each page shows of it; hostile metadata stays text; forms need the
operator role and the session's CSRF token and submit `oai-run` as the API does."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.dashboard import harvesting
from shelfwork.dashboard.diagnose_charts import values_svg
from shelfwork.dashboard.i18n import EN, UK, Translator
from shelfwork.engine import Engine
from shelfwork.pipeline import Registry
from shelfwork.pipelines import builtin, oai
from shelfwork.pipelines.oai.validation import RuleStats, ValidationStats, ValueHistogram
from tests.conftest import test_settings as settings_for
from tests.support.oai_provider import (
    LOOPBACK_HOSTS,
    Item,
    Repository,
    generate_items,
    start_provider,
)
from tests.support.waiting import wait_idle

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
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
HOSTILE_NAME = "Loop <b>back</b>"
SCRIPT = '<script>alert("t")</script>'
IMAGE = "<img src=x onerror=alert(1)>"
HOSTILE_ID = 'oai:loopback:a&b<"c>'
STAMP = generate_items(1)[0].datestamp
HOSTILE_ITEMS = [
    # valid, indexed: its text comes back in search snippets
    Item(
        "oai:loopback:hostile-valid",
        STAMP,
        fields={
            "title": [f"{SCRIPT} Hostile"],
            "creator": [IMAGE],
            "date": ["2001"],
            "description": [f"{IMAGE} the needle is here"],
        },
    ),
    # invalid (a year out of range), so it is listed with its failed rule
    Item(HOSTILE_ID, STAMP, fields={"title": [SCRIPT], "creator": ["Author 1"], "date": ["1066"]}),
]


@dataclass
class Harvested:
    """The module's server after one run of network LB, with what it should show."""

    client: TestClient
    engine: Engine
    items: list[Item]
    snapshot: int
    valid: set[str]
    invalid: set[str]


def engine_with_network(root: Path, provider_url: str, **settings: Any) -> Engine:
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "driver.toml").write_text(RULES, encoding="utf-8")
    (rules / "transform.toml").write_text(TRANSFORM, encoding="utf-8")
    network = {
        "acronym": "LB",
        "name": HOSTILE_NAME,
        "base_url": provider_url,
        "cron": "0 3 * * *",
        "validation": "driver.toml",
        "transformation": "transform.toml",
        "properties": {"index_builtin": True, "detailed_diagnose": True},
    }
    config = settings_for(
        f"sqlite:///{root / 'shelfwork.db'}",
        pipeline_modules=["shelfwork.pipelines.oai"],
        systems={
            "oai": {
                "rules_dir": str(rules),
                "retry_backoff": 0.01,
                "allow_private_hosts": LOOPBACK_HOSTS,
                "networks": [network],
            }
        },
        **settings,
    )
    return Engine(config, Registry([*builtin.PIPELINES, *oai.PIPELINES]))


def log_in(client: TestClient, role: str) -> str:
    """Log `client` in as a new user with `role`; returns the session's CSRF token."""
    name = f"{role}-{time.monotonic_ns()}"
    password = f"{name} has a long password"
    client.app.state.auth.users.create(name, role, password)  # type: ignore[attr-defined]
    login_csrf = CSRF.search(client.get("/login").text)
    assert login_csrf is not None
    answer = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": login_csrf.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    found = CSRF.search(client.get("/").text)
    assert found is not None
    return found.group(1)


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harvested]:
    items = generate_items(60, seed=11) + HOSTILE_ITEMS
    provider = start_provider(Repository(list(items), name="Loopback Repo"), batch_size=25)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PasswordHasher, "n", 2**8)  # cheaper logins; same checks
        engine = engine_with_network(tmp_path_factory.mktemp("harvesting"), provider.url)
        engine.start()
        app = create_app(engine, stream_poll=0.02)
        client = TestClient(app)
        try:
            _, token = app.state.auth.tokens.create("operator", "test-operator")
            ran = client.post(
                "/api/v1/oai/networks/LB/run", headers={"Authorization": f"Bearer {token}"}
            )
            assert ran.status_code == 202, ran.text
            jobs = wait_idle(engine, timeout=30.0)
            assert all(j.state == "succeeded" for j in jobs), [(j.pipeline, j.error) for j in jobs]
            snapshot = oai.snapshots.Snapshots(engine.store).last_good("LB")
            assert snapshot is not None
            year = time.gmtime().tm_year
            live = [i for i in items if not i.deleted]
            valid = {i.identifier for i in live if int(i.fields["date"][0]) >= year - 100}
            invalid = {i.identifier for i in live} - valid
            yield Harvested(client, engine, items, snapshot.id, valid, invalid)
        finally:
            client.close()
            engine.stop(wait=False)
            provider.stop()


@pytest.fixture(scope="module")
def viewer(harvested: Harvested) -> TestClient:
    client = TestClient(harvested.client.app)
    log_in(client, "viewer")
    return client


def assert_safe(html: str) -> None:
    """Harvested text never became markup: no script, image or bold from the records."""
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)


# --- who may see and do what --------------------------------------------------------------------


def test_pages_need_a_session_and_forms_a_logged_in_operator(harvested: Harvested) -> None:
    stranger = TestClient(harvested.client.app)
    snapshot = harvested.snapshot
    for path in ("/networks", "/networks/LB", f"/snapshots/{snapshot}", "/search?q=x"):
        answer = stranger.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=%2F"), path
    for fragment in ("/fragments/networks/LB", "/fragments/networks/LB/status"):
        assert stranger.get(fragment).status_code == 401, fragment
    assert stranger.get(f"/fragments/snapshots/{snapshot}").status_code == 401
    jobs_before = len(harvested.engine.jobs.list(limit=100))
    posted = stranger.post("/networks/LB/run", data={}, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/login")
    assert len(harvested.engine.jobs.list(limit=100)) == jobs_before


def test_a_viewer_sees_the_pages_and_no_run_form(harvested: Harvested, viewer: TestClient) -> None:
    for path in (
        "/networks",
        "/networks/LB",
        f"/snapshots/{harvested.snapshot}",
        "/search",
        "/fragments/networks/LB",
        "/fragments/networks/LB/status",
        f"/fragments/snapshots/{harvested.snapshot}",
    ):
        page = viewer.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert not re.search(r"<style|\sstyle=", page.text), path
        assert "/run" not in page.text and 'name="action"' not in page.text, path
        assert_safe(page.text)
    nav = viewer.get("/networks").text
    assert 'href="/networks" aria-current="page"' in nav and 'href="/search"' in nav
    answer = viewer.post("/networks/LB/run", data={"csrf_token": "x"})
    assert answer.status_code == 403


def test_the_pages_say_when_harvesting_is_not_enabled(make_engine: Any, tmp_path: Path) -> None:
    engine = make_engine(start=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PasswordHasher, "n", 2**8)
        client = TestClient(create_app(engine))
        log_in(client, "viewer")
        home = client.get("/")
        assert 'href="/networks"' not in home.text and 'href="/search"' not in home.text
        for path in ("/networks", "/networks/LB", "/snapshots/1", "/search"):
            refused = client.get(path)
            assert refused.status_code == 404, path
            assert EN["harvesting.not_enabled"] in refused.text, path


# --- what the pages show ------------------------------------------------------------------------


def test_networks_page_shows_definition_schedule_and_snapshots(
    harvested: Harvested, viewer: TestClient
) -> None:
    page = viewer.get("/networks").text
    section = page[page.index('id="network-LB"') :]
    assert "Loop &lt;b&gt;back&lt;/b&gt;" in section
    assert harvested.engine.settings.systems["oai"]["networks"][0]["base_url"] in section
    assert "<code>0 3 * * *</code>" in section and EN["networks.origin_config"] in section
    schedule = harvested.engine.schedules.get("oai:LB")
    assert schedule.next_run_at is not None
    assert f'<time datetime="{schedule.next_run_at.isoformat()}">' in section
    assert 'data-property="index_builtin">index_builtin: yes' in section
    latest = re.search(r'class="latest"><a href="/snapshots/(\d+)">', section)
    good = re.search(r'class="last-good"><a href="/snapshots/(\d+)">', section)
    assert latest and good and int(latest.group(1)) == int(good.group(1)) == harvested.snapshot
    assert 'data-snapshot-state="valid"' in section
    # nothing runs: the status stops refreshing
    assert "data-live-done" in viewer.get("/fragments/networks/LB/status").text


def test_network_page_lists_snapshots_with_counts_and_the_newest_log(
    harvested: Harvested, viewer: TestClient
) -> None:
    page = viewer.get("/networks/LB").text
    row = re.search(rf'<tr id="snapshot-{harvested.snapshot}".*?</tr>', page, re.S)
    assert row is not None
    cells = re.findall(r'class="num">(\d+)</td>', row.group(0))
    live = len(harvested.valid) + len(harvested.invalid)
    deleted = sum(1 for i in harvested.items if i.deleted)
    # harvested (live records), deletions, records, valid, invalid, transformed
    assert [int(c) for c in cells] == [
        live,
        deleted,
        live,
        len(harvested.valid),
        len(harvested.invalid),
        live,
    ]
    job_id = oai.snapshots.Snapshots(harvested.engine.store).get(harvested.snapshot).job_id
    assert f'href="/jobs/{job_id}"' in row.group(0)
    log = page[page.index('id="snapshot-log"') :]
    assert "full harvest started" in log and "last good known" in log
    assert "data-live-done" in viewer.get("/fragments/networks/LB").text
    assert viewer.get("/networks/NOPE").status_code == 404


def svg_bars(html: str, chart: str) -> dict[tuple[str, str], int]:
    """(key, kind) -> count of each bar in the chart with css class `chart`."""
    found = re.search(rf'<svg[^>]*class="chart {chart}[^"]*".*?</svg>', html, re.S)
    assert found is not None, chart
    bars = re.findall(
        r'<rect [^>]*class="bar bar-(\w+)" data-key="([^"]*)" data-count="(\d+)"', found.group(0)
    )
    return {(key, kind): int(count) for kind, key, count in bars}


def test_diagnose_shows_totals_rule_charts_histograms_and_invalid_records(
    harvested: Harvested, viewer: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = viewer.get(f"/snapshots/{harvested.snapshot}").text
    live = len(harvested.valid) + len(harvested.invalid)
    for key, value in (("total", live), ("valid", len(harvested.valid))):
        assert (
            f'id="total-{key}"><span class="label">{EN[f"snapshot.total_{key}"]}</span><span class="value">{value}</span>'
            in page
        )
    rules = svg_bars(page, "chart-rules")
    assert rules[("year", "invalid")] == len(harvested.invalid)
    assert rules[("year", "valid")] == len(harvested.valid)
    assert rules[("title", "valid")] == live and ("title", "invalid") not in rules
    assert svg_bars(page, "chart-transformers") == {("repo", "changed"): live}
    # detailed diagnose: the year rule's most frequent valid values, most first
    years = svg_bars(page[page.index('data-rule="year"') :], "chart-values chart-values-valid")
    counts = [count for (key, _), count in sorted(years.items()) if key != "other"]
    assert counts == sorted(counts, reverse=True) and sum(years.values()) == len(harvested.valid)
    refused = svg_bars(page[page.index('data-rule="year"') :], "chart-values chart-values-invalid")
    assert sum(refused.values()) == len(harvested.invalid)
    assert_safe(page)

    # invalid records, paged by identifier: every one once, in order
    monkeypatch.setattr(harvesting, "INVALID_SHOWN", 3)
    seen: list[str] = []
    path: str | None = f"/snapshots/{harvested.snapshot}"
    while path is not None:
        html = viewer.get(path).text
        listed = html[html.index('id="invalid-records"') :]
        for link in re.findall(r'href="(/snapshots/\d+/record\?[^"]+)"', listed):
            seen.extend(parse_qs(urlsplit(link.replace("&amp;", "&")).query)["identifier"])
        nxt = re.search(r'href="([^"]+)#invalid-records" id="invalid-next"', listed)
        path = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert seen == sorted(harvested.invalid)
    assert viewer.get("/snapshots/999999").status_code == 404
    assert viewer.get("/snapshots/abc").status_code == 404
    assert viewer.get("/snapshots/²").status_code == 404


def test_record_page_shows_failed_rules_and_metadata_as_text(
    harvested: Harvested, viewer: TestClient
) -> None:
    page = viewer.get(f"/snapshots/{harvested.snapshot}/record", params={"identifier": HOSTILE_ID})
    assert page.status_code == 200
    html = page.text
    assert_safe(html)
    assert "oai:loopback:a&amp;b&lt;&#34;c&gt;" in html
    assert re.search(r'id="record-failed-rules"><code>year</code></dd>', html)
    original = html[html.index('id="record-original"') : html.index('id="record-published"')]
    published = html[html.index('id="record-published"') :]
    # the harvested XML escaped the title once; the page escapes the XML again
    assert "&amp;lt;script&amp;gt;" in original and "reponame:" not in original
    assert "reponame:Loopback Repo" in published
    missing = viewer.get(f"/snapshots/{harvested.snapshot}/record", params={"identifier": "<x>"})
    assert missing.status_code == 404 and "&lt;x&gt;" in missing.text


def test_search_finds_records_and_highlights_safely(
    harvested: Harvested, viewer: TestClient
) -> None:
    page = viewer.get("/search", params={"q": "needle", "network": "LB"})
    assert page.status_code == 200
    html = page.text
    assert_safe(html)
    assert EN["search.total"].format(count=1) in html
    hit = html[html.index('id="hits"') :]
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt; Hostile" in hit
    assert "&lt;img src=x onerror=alert(1)&gt;" in hit
    snippet = re.search(r'<p class="snippet">(.*?)</p>', hit, re.S)
    assert snippet is not None
    assert re.sub(r"</?mark>", "", snippet.group(1)).count("<") == 0  # only our own tags
    assert snippet.group(1).count("<mark>needle</mark>") == 1
    assert "oai:loopback:hostile-valid" in hit

    everything = viewer.get("/search").text
    assert EN["search.newest"].format(count=len(harvested.valid)) in everything
    nothing = viewer.get("/search", params={"q": "needle", "network": "ZZ"}).text
    assert EN["search.total"].format(count=0) in nothing

    bad = viewer.get("/search", params={"q": "a\x01b"})
    assert bad.status_code == 422
    assert 'id="search-error"' in bad.text and "control characters" in bad.text


def test_pages_speak_ukrainian(harvested: Harvested) -> None:
    client = TestClient(harvested.client.app)
    log_in(client, "viewer")
    page = client.get(f"/snapshots/{harvested.snapshot}?lang=uk").text
    assert UK["diagnose.rules"] in page and UK["oai.state.valid"] in page
    assert UK["run.title"].format(network="LB") not in page  # a viewer: no form
    assert UK["nav.networks"] in client.get("/networks").text  # the cookie remembers


# --- the run form -------------------------------------------------------------------------------


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[TestClient, Engine]]:
    """A server whose engine does not run jobs (they stay queued) and holds one waiting job."""
    engine = engine_with_network(tmp_path, "http://127.0.0.1:9/oai", max_queue=1)
    oai.sync(engine)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PasswordHasher, "n", 2**8)
        client = TestClient(create_app(engine))
        yield client, engine
    client.close()
    engine.stop(wait=False)


def test_an_operator_runs_a_network_with_the_form(idle: tuple[TestClient, Engine]) -> None:
    client, engine = idle
    csrf = log_in(client, "operator")
    form = client.get("/networks").text
    assert 'action="/networks/LB/run"' in form
    assert re.search(r'value="HARVEST" id="run-LB-HARVEST"', form)
    # the scheduled set is named next to the form
    assert EN["run.none_checked"].format(actions="HARVEST, VALIDATE, INDEX_BUILTIN") in form

    answer = client.post(
        "/networks/LB/run",
        data={"csrf_token": csrf, "action": ["HARVEST", "VALIDATE"], "incremental": "no"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    job = engine.jobs.list(pipeline="oai-run")[0]
    assert answer.headers["location"] == (
        f"/networks/LB?done=run&job={job.id}&actions=HARVEST%2CVALIDATE"
    )
    assert job.params == {"network": "LB", "actions": ["HARVEST", "VALIDATE"], "incremental": False}
    assert job.context == "network:LB"
    page = client.get(answer.headers["location"]).text
    notice = EN["run.submitted"].format(id=job.id, actions="HARVEST → VALIDATE")
    assert notice in page and f'href="/jobs/{job.id}"' in page
    # a job of the network waits: its pages keep refreshing
    assert "data-live-done" not in client.get("/fragments/networks/LB").text
    assert "data-live-done" not in client.get("/fragments/networks/LB/status").text

    # the queue holds one job: the next run is refused with a message, on the same page
    full = client.post(
        "/networks/LB/run",
        data={"csrf_token": csrf, "incremental": "", "back": "network"},
        follow_redirects=False,
    )
    assert full.status_code == 429
    assert EN["submit.error.queue_full"].format(waiting=1) in full.text
    assert '<details class="panel submit run" id="run-LB" open>' in full.text
    assert "<h1>LB" in full.text
    assert len(engine.jobs.list(pipeline="oai-run")) == 1


def test_the_run_form_refuses_bad_choices_and_forged_posts(
    idle: tuple[TestClient, Engine],
) -> None:
    client, engine = idle
    csrf = log_in(client, "operator")
    unknown = client.post("/networks/LB/run", data={"csrf_token": csrf, "action": "NOPE"})
    assert unknown.status_code == 422 and EN["run.error.choice"] in unknown.text
    assert "<h1>" + EN["networks.title"] in unknown.text
    odd = client.post("/networks/LB/run", data={"csrf_token": csrf, "incremental": "maybe"})
    assert odd.status_code == 422
    forged = client.post("/networks/LB/run", data={"csrf_token": "forged"})
    assert forged.status_code == 403 and EN["error.csrf"] in forged.text
    assert client.post("/networks/NOPE/run", data={"csrf_token": csrf}).status_code == 404
    assert engine.jobs.list() == []


# --- the charts alone ---------------------------------------------------------------------------


def test_value_chart_escapes_values_and_counts_the_rest_as_other() -> None:
    histogram = ValueHistogram(counts={"<script>x</script>": 5, "b": 9, "a": 9, "c": 1}, other=2)
    stats = ValidationStats(
        detailed=True, rules={"r": RuleStats(valid_values=histogram, valid_count=3)}
    )
    view = harvesting.diagnose_of({"validation": stats.model_dump(mode="json")}, Translator("en"))
    counts = view.rules[0].valid_values
    assert counts.top[:3] == [("a", 9), ("b", 9), ("<script>x</script>", 5)]
    assert counts.other == 2
    svg = str(values_svg(counts.top, counts.other, "valid", "<title>", Translator("en")))
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg
    assert "<title>&lt;title&gt;</title>" in svg
    assert re.findall(r'data-key="(\w+)" data-count="(\d+)"', svg) == [
        ("0", "9"),
        ("1", "9"),
        ("2", "5"),
        ("3", "1"),
        ("other", "2"),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harvesting, "TOP_VALUES", 2)
        shorter = harvesting.diagnose_of(
            {"validation": stats.model_dump(mode="json")}, Translator("en")
        )
    assert shorter.rules[0].valid_values == harvesting.ValueCounts([("a", 9), ("b", 9)], 2 + 5 + 1)
    unreadable = harvesting.diagnose_of({"validation": {"total": "many"}}, Translator("en"))
    assert unreadable.unreadable and not unreadable.rules
