"""/api/v1/docs in a real browser with no way out: every request to another origin is refused
and recorded. The page must render all the same and must not even try."""

from __future__ import annotations

from playwright.sync_api import Page, Route, expect

from .conftest import Site


def test_the_api_docs_render_offline_and_load_nothing_from_elsewhere(
    page: Page, site: Site
) -> None:
    elsewhere: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(site.url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.goto(site.url + "/api/v1/docs")
    expect(page.get_by_role("heading", level=1)).to_contain_text("shelfwork")
    operation = page.locator("section", has_text="POST /api/v1/jobs").first
    expect(operation).to_be_visible()
    expect(operation).to_contain_text("Submit a job")
    # its own style applies (the policy names it by hash): a POST badge is green
    expect(operation.locator(".m.post").first).to_have_css("background-color", "rgb(42, 138, 74)")
    page.get_by_role("link", name="SubmitIn").first.click()  # a body's schema is a link
    expect(page.locator("#schema-SubmitIn")).to_be_in_viewport()
    assert elsewhere == []
