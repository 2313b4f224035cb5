"""The harvesting pages in a real browser: an operator opens the networks, runs one with its
form, watches its snapshot become valid on the network's page without a reload, and opens the
snapshot's diagnose with its charts. Screenshots in artifacts/dashboard/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.pipelines import oai
from shelfwork.sandbox import serve
from tests.dashboard.test_harvesting import engine_with_network
from tests.support.oai_provider import Repository, generate_items, start_provider

from .conftest import PHONE, Site, log_in, screenshot
from .test_dashboard import mark_page, not_reloaded


@pytest.fixture
def oai_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A dashboard over a started engine with network LB, harvesting a loopback provider."""
    monkeypatch.setattr(PasswordHasher, "n", 2**8)  # cheaper logins; same checks
    provider = start_provider(Repository(generate_items(80, seed=7), name="Loopback Repo"))
    engine = engine_with_network(tmp_path, provider.url)
    engine.start()
    app = create_app(engine, stream_poll=0.05)
    app.state.dashboard.refresh = 0.25
    server = serve(app, "harvesting-dashboard")
    try:
        yield Site(server.url, engine, app)
    finally:
        server.stop()
        engine.stop(wait=False)
        provider.stop()


def test_an_operator_runs_a_network_and_reads_its_diagnose(page: Page, oai_site: Site) -> None:
    site = oai_site
    site.user("halyna", "operator")
    log_in(page, site, "halyna")

    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Networks").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Networks")
    network = page.locator("#network-LB")
    expect(network.locator(".latest")).to_contain_text("never harvested")
    expect(network).to_contain_text("index_builtin: yes")
    page.get_by_text("Run LB now").click()
    expect(network.get_by_label("VALIDATE")).not_to_be_checked()
    screenshot(page, "networks-1280")
    network.get_by_role("button", name="Run LB").click()

    expect(page).to_have_url(re.compile(r"/networks/LB\?done=run&job=\d+"))
    expect(page.get_by_role("status")).to_contain_text("HARVEST → VALIDATE → INDEX_BUILTIN")
    mark_page(page)
    snapshots = page.locator("#snapshots tbody tr")
    expect(snapshots).to_have_count(1, timeout=15_000)
    expect(snapshots.first).to_have_attribute("data-snapshot-state", "valid", timeout=20_000)
    expect(page.locator("#snapshot-log")).to_contain_text("last good known")
    assert not_reloaded(page), "the page reloaded instead of updating itself"
    screenshot(page, "network-1280")

    good = oai.snapshots.Snapshots(site.engine.store).last_good("LB")
    assert good is not None
    snapshots.first.get_by_role("link", name=f"#{good.id}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Snapshot {good.id}")
    expect(page.locator("#total-valid .value")).to_have_text(str(good.valid))
    chart = page.locator("#rules svg.chart-rules")
    expect(chart).to_be_visible()
    invalid_year = chart.locator('rect.bar-invalid[data-key="year"]')
    expect(invalid_year).to_have_attribute("data-count", str(good.invalid))
    box = invalid_year.bounding_box()
    assert box is not None and box["width"] > 0
    expect(page.locator("#values svg.chart-values").first).to_be_visible()
    screenshot(page, "snapshot-1280")

    page.locator("#invalid-records a").first.click()
    expect(page.locator("#record-failed-rules")).to_have_text("year")
    expect(page.locator("#record-published pre")).to_contain_text("reponame:Loopback Repo")
    screenshot(page, "oai-record-1280")

    page.get_by_role("link", name="Search").click()
    page.get_by_label("Search harvested records").fill("loopback")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#hits mark").first).to_have_text("Loopback")
    page.set_viewport_size(PHONE)
    screenshot(page, "search-390")
