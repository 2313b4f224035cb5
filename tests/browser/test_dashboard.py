"""The dashboard in a real browser: logging in, submitting a job and watching it finish without a
reload, cancelling one, switching to Ukrainian, what a viewer may not do, and how the pages look at
desktop and phone width (screenshots in artifacts/dashboard/)."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from .conftest import DESKTOP, PHONE, Site, log_in, screenshot

STILL_HERE = "window.__shelfwork_test_marker"


def mark_page(page: Page) -> None:
    """Put a value in the page's JavaScript world: it survives updates but not a reload."""
    page.evaluate(f"{STILL_HERE} = true")


def not_reloaded(page: Page) -> bool:
    return bool(page.evaluate(f"{STILL_HERE} === true"))


def test_a_wrong_password_is_refused_and_the_right_one_opens_a_session(
    page: Page, site: Site
) -> None:
    site.user("olena", "operator")
    page.goto(site.url + "/admission")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fadmission$"))
    page.get_by_label("User name").fill("olena")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    assert not [c for c in page.context.cookies() if c["name"] == "shelfwork_session"]

    page.get_by_label("User name").fill("olena")
    page.get_by_label("Password").fill(site.passwords["olena"])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(site.url + "/admission")
    expect(page.get_by_role("heading", level=1)).to_have_text("Admission")
    session = next(c for c in page.context.cookies() if c["name"] == "shelfwork_session")
    assert session["httpOnly"] and session["sameSite"] == "Lax"

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(site.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))


def test_a_sleep_job_submitted_from_the_page_succeeds_without_a_reload(
    page: Page, site: Site
) -> None:
    site.user("taras", "operator")
    engine = site.engine
    # Some history, so the list (and its screenshot) shows more than one state.
    engine.submit("noop", context="koha:lnu")
    engine.submit("demo-deposit", {"record": "lnu-17", "fail_deposit": True, "pause": 0})
    engine.submit("demo-flaky", {"fail_attempts": 1, "pause": 0})
    log_in(page, site, "taras")

    page.get_by_text("Submit a job").click()
    page.locator("#submit-pipeline").select_option("sleep")
    params = page.get_by_label("Parameters (JSON object)")
    expect(params).to_have_value(re.compile(r'"seconds"'))  # the script filled in the defaults
    params.fill('{"seconds": 1.5, "steps": 6}')
    page.get_by_label("Context (optional)").fill("dspace:kpi")
    page.get_by_role("button", name="Submit", exact=True).click()

    notice = page.get_by_role("status")
    expect(notice).to_have_text(re.compile(r"^Job \d+ was submitted\.$"))
    job_id = int(re.findall(r"\d+", notice.inner_text())[0])
    mark_page(page)
    row = page.locator(f"#job-{job_id}")
    expect(row).to_contain_text("dspace:kpi")
    expect(row).to_have_attribute("data-state", "running", timeout=10_000)
    expect(row.locator("progress")).to_have_count(1)
    expect(row).to_have_attribute("data-state", "succeeded", timeout=15_000)
    expect(row.locator(".state")).to_have_text("succeeded")
    expect(row.locator("progress")).to_have_attribute("value", "100.0")
    assert not_reloaded(page), "the page reloaded instead of updating itself"
    assert engine.get(job_id).state == "succeeded"
    expect(page.locator("#job-counts")).to_contain_text("succeeded")

    screenshot(page, "jobs-1280")
    page.set_viewport_size(PHONE)
    expect(row).to_be_visible()
    screenshot(page, "jobs-390")


def test_an_operator_cancels_a_running_job_from_its_page(page: Page, site: Site) -> None:
    site.user("ivan", "operator")
    engine = site.engine
    job_id = engine.submit("sleep", {"seconds": 60, "steps": 60}, context="koha:lnu").job_id
    site.wait_for(job_id, "running")
    log_in(page, site, "ivan")

    page.goto(f"{site.url}/jobs/{job_id}")
    expect(page.locator("#job-state .state")).to_have_text("running")
    mark_page(page)
    retry = page.get_by_role("button", name="Retry job")
    expect(retry).to_be_hidden()
    page.get_by_role("button", name="Cancel job").click()

    expect(page.get_by_role("status")).to_have_text(re.compile("Cancel requested"))
    mark_page(page)  # the form post loaded the page once; from here it must update itself
    expect(page.locator("#job-state .state")).to_have_text("cancelled", timeout=10_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(retry).to_be_visible()
    expect(page.locator("#job-events")).to_contain_text("cancel requested by user:ivan")
    assert not_reloaded(page)
    assert engine.get(job_id).state == "cancelled"


def test_a_job_page_shows_its_steps_on_a_time_axis(page: Page, site: Site) -> None:
    site.user("maria", "operator")
    engine = site.engine
    params = {"record": "kpi-2024-001", "fail_cover": True, "pause": 0.3}
    job_id = engine.submit("demo-deposit", params).job_id
    engine.wait(job_id, timeout=15)
    log_in(page, site, "maria")
    page.goto(f"{site.url}/jobs/{job_id}")

    expect(page.locator("#job-state .state")).to_have_text("succeeded")
    bars = page.locator("#job-timeline svg rect.bar")
    expect(bars).to_have_count(len(engine.get(job_id).steps))
    expect(page.locator('#job-timeline rect[data-step="render_cover"]')).to_have_attribute(
        "data-state", "failed"
    )
    expect(page.locator("#job-warnings")).to_contain_text("cover service answered HTTP 503")
    expect(page.locator("#job-result")).to_contain_text("123456789/kpi-2024-001")
    screenshot(page, "job-1280")
    page.set_viewport_size(PHONE)
    expect(page.locator("#job-timeline svg")).to_be_visible()
    screenshot(page, "job-390")
    page.set_viewport_size(DESKTOP)


def test_the_language_switches_to_ukrainian_and_stays(page: Page, site: Site) -> None:
    site.user("oksana", "viewer")
    site.engine.submit("noop")
    log_in(page, site, "oksana")

    page.get_by_role("link", name="Українська").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Завдання")
    expect(page.locator("html")).to_have_attribute("lang", "uk")
    expect(page.get_by_role("navigation", name="Розділи")).to_contain_text("Допуск")
    page.get_by_role("link", name="Допуск").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Допуск")  # the cookie remembers
    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Admission")


def test_a_viewer_sees_no_buttons_that_change_anything(page: Page, site: Site) -> None:
    site.user("petro", "viewer")
    engine = site.engine
    job_id = engine.submit("sleep", {"seconds": 60, "steps": 60}).job_id
    site.wait_for(job_id, "running")
    log_in(page, site, "petro")

    expect(page.get_by_text("Submit a job")).to_have_count(0)
    page.goto(f"{site.url}/jobs/{job_id}")
    expect(page.locator("#job-state .state")).to_have_text("running")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator("form[data-action]")).to_have_count(0)

    # Even a hand-made post with the viewer's own CSRF token is refused.
    csrf = page.locator('form[action="/logout"] input[name="csrf_token"]').get_attribute("value")
    refused = page.request.post(
        f"{site.url}/jobs/{job_id}/cancel", form={"csrf_token": csrf or ""}, max_redirects=0
    )
    assert refused.status == 403
    assert "operator" in refused.text()
    assert engine.get(job_id).state == "running"
