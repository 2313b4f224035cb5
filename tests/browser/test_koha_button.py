"""The Koha staff button (IntranetUserJS) in a real browser against emulated Koha and DSpace and a
real shelfwork server: the cross-origin calls (CORS, and an origin shelfwork does not allow),
progress while it polls every 2 s, the repository and cover links Koha's record now holds, a
missing scan, markup in an answer shown as text, a wrong token. Screenshots of the panel go to
artifacts/koha-button/ (git-ignored), and the button on the page Koha answers to the staff
login itself (no query string there).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, Request, Response, expect

from shelfwork.api import create_app
from shelfwork.config import Settings
from shelfwork.engine import Engine
from shelfwork.pipelines.koha_dspace.button import button_script
from shelfwork.pipelines.koha_dspace.marc import IntegrationState, integration_state, parse_marcxml
from shelfwork.sandbox import RunningServer, serve
from shelfwork.sandbox.pdfs import text_pdf
from shelfwork.sandbox.peers import KOHA_USER, Peers, start_peers
from shelfwork.sandbox.records import Book, marcxml

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "koha-button"
PIPELINE_MODULE = "shelfwork.pipelines.koha_dspace"
SYSTEM = "koha-dspace"
DETAIL = "/cgi-bin/koha/catalogue/detail.pl"
BUTTON = "Integrate to repository"
PANEL = "#shelfwork-integrate-status"
GREEN, RED = "rgb(34, 170, 34)", "rgb(204, 34, 34)"  # the panel's border: done / error
SLOW_DSPACE = 0.5  # seconds per DSpace call: the job lasts several polls, so progress is seen


@dataclass
class Bench:
    """Emulated Koha and DSpace, and a shelfwork server whose CORS allows Koha's origin."""

    peers: Peers
    engine: Engine
    server: RunningServer
    token: str
    inbox: Path

    @property
    def url(self) -> str:
        return self.server.url

    def catalogue(self, book: Book, *, pdf: bool) -> None:
        """Put the record in Koha and, with `pdf`, its scan in the inbox at 956$u."""
        assert book.file is not None
        if pdf:
            target = self.inbox / book.file
            target.parent.mkdir(parents=True, exist_ok=True)
            text_pdf(target, 2, title=book.title)
        self.peers.koha.add_record(book.biblionumber, marcxml(book))

    def koha_state(self, biblionumber: int) -> IntegrationState:
        """What Koha's record now says: 856$u handle links, 956$c cover, 956$y status."""
        record = parse_marcxml(self.peers.koha.record(biblionumber), biblionumber=biblionumber)
        return integration_state(record)

    def job_ids(self) -> list[int]:
        return [job.id for job in self.engine.jobs.list(pipeline=SYSTEM, limit=1000)]

    def record_url(self, biblionumber: int) -> str:
        return f"{self.peers.koha_url}{DETAIL}?biblionumber={biblionumber}"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    folder = tmp_path_factory.mktemp("koha-button")
    peers = start_peers()
    engine: Engine | None = None
    server: RunningServer | None = None
    try:
        settings = Settings(
            database_url=f"sqlite:///{folder / 'shelfwork.db'}",
            pipeline_modules=[PIPELINE_MODULE],
            systems={SYSTEM: peers.integrator_config(folder)},
            tracker_profile="dev",
            poll_interval=0.1,
            lease_ttl=10.0,
            cors_origins=[peers.koha_url],
        )
        engine = Engine(settings, kind="test")
        app = create_app(engine)
        token = app.state.auth.tokens.create("integrator", "koha-staff-button", created_by="test")[
            1
        ]
        engine.start()
        server = serve(app, "shelfwork")
        yield Bench(peers, engine, server, token, folder / "inbox")
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.stop()
        peers.stop()


def use_button(bench: Bench, *, url: str | None = None, token: str | None = None) -> None:
    """Set Koha's IntranetUserJS to the button filled in (by default for the real server)."""
    script = button_script(url or bench.url, token or bench.token)
    bench.peers.koha.set_syspref("IntranetUserJS", script)


def log_in_to_koha(page: Page, bench: Bench, biblionumber: int) -> None:
    """A3: any staff URL without a session answers the login form; logging in through it
    answers the page asked for (the detail page, as the answer to the POST)."""
    page.goto(bench.record_url(biblionumber))
    expect(page.locator("#loginform")).to_be_visible()
    page.get_by_label("Username:").fill(KOHA_USER)
    page.get_by_label("Password:").fill(bench.peers.koha_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#loginform")).to_have_count(0)
    expect(page.locator("body#catalog_detail")).to_have_count(1)


def open_record(page: Page, bench: Bench, biblionumber: int, title: str) -> Locator:
    """Log in (Koha answers the record page to the login POST) and return its button."""
    log_in_to_koha(page, bench, biblionumber)
    expect(page.locator("h1.title")).to_have_text(title)
    button = page.get_by_role("button", name=BUTTON)
    expect(button).to_be_visible()
    expect(button).to_be_enabled()
    return button


def screenshot_panel(page: Page, name: str) -> Path:
    """The status panel alone to artifacts/koha-button/<name>.png, for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.locator(PANEL).screenshot(path=str(path))
    return path


def border_colour(panel: Locator) -> str:
    return str(panel.evaluate("node => getComputedStyle(node).borderLeftColor"))


def test_integrating_from_the_record_page_shows_progress_then_the_links_koha_now_has(
    page: Page, bench: Bench
) -> None:
    book = Book(
        2101,
        "Lighthouses of the northern coast",
        author="Brandt, Ilse",
        year="2004",
        file="2026/lighthouses.pdf",
    )
    bench.catalogue(book, pdf=True)
    use_button(bench)
    status_times: list[float] = []
    integrate_answers: list[Response] = []

    def on_request(request: Request) -> None:
        if request.url.startswith(f"{bench.url}/status/") and request.method == "GET":
            status_times.append(time.monotonic())

    def on_response(response: Response) -> None:
        if response.url == f"{bench.url}/integrate":
            integrate_answers.append(response)

    button = open_record(page, bench, book.biblionumber, book.title)
    page.on("request", on_request)
    page.on("response", on_response)
    bench.peers.dspace.latency = SLOW_DSPACE
    try:
        button.click()
        expect(button).to_be_disabled()
        panel = page.locator(PANEL)
        # "Task N: ..." comes from a /status answer (the POST answer reads "Task N queued").
        expect(panel).to_have_text(re.compile(r"Task \d+: (queued|running)"), timeout=10_000)
        expect(panel).to_contain_text(re.compile(r"Task \d+: done"), timeout=30_000)
    finally:
        bench.peers.dspace.latency = 0.0
    expect(button).to_be_enabled()

    # The call was cross-origin and shelfwork's CORS answer named Koha's origin.
    assert len(integrate_answers) == 1
    answer = integrate_answers[0]
    assert answer.status == 202
    assert answer.headers.get("access-control-allow-origin") == bench.peers.koha_url
    task_id = int(answer.json()["task_id"])
    job = bench.engine.get(task_id)
    assert job.state == "succeeded" and job.params["biblionumber"] == book.biblionumber

    # The links shown are the ones the integration wrote into Koha's record.
    koha = bench.koha_state(book.biblionumber)
    assert len(koha.handle_urls) == 1 and koha.cover_url
    repository = panel.locator(".shelfwork-link", has_text="Repository:").locator("a")
    cover = panel.locator(".shelfwork-link", has_text="Cover:").locator("a")
    expect(repository).to_have_attribute("href", koha.handle_urls[0])
    expect(repository).to_have_text(koha.handle_urls[0])
    expect(cover).to_have_attribute("href", koha.cover_url)
    for link in (repository, cover):
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener")
    assert koha.handle_urls[0] == job.result["handle_url"]
    assert koha.cover_url == job.result["cover_url"]
    assert koha.status == "imported"
    assert border_colour(panel) == GREEN
    screenshot_panel(page, "done")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "done-page.png"), full_page=True)

    # The button polls every 2 s: consecutive GET /status requests are ~2 s apart.
    gaps = [later - earlier for earlier, later in pairwise(status_times)]
    assert gaps, f"expected several polls, saw {len(status_times)}"
    assert all(1.5 <= gap <= 3.0 for gap in gaps), f"poll gaps {gaps}"


def test_a_scan_missing_from_the_inbox_shows_the_error_and_the_button_works_again(
    page: Page, bench: Bench
) -> None:
    book = Book(2102, "Letters from the dunes", author="Aalto, Mira", file="2026/dunes.pdf")
    bench.catalogue(book, pdf=False)  # 956$u names a file nobody scanned
    use_button(bench)
    button = open_record(page, bench, book.biblionumber, book.title)
    before = bench.job_ids()

    button.click()
    panel = page.locator(PANEL)
    expect(panel).to_contain_text(re.compile(r"Task \d+: error"), timeout=20_000)
    expect(button).to_be_enabled()

    (task_id,) = set(bench.job_ids()) - set(before)
    job = bench.engine.get(task_id)
    assert job.state == "failed" and job.error and book.file in job.error
    # The button's token reads a sentence for a cataloguer, never the job's own text (which
    # names the server's inbox): the step, the 956$u to check, and the task to ask about.
    said = (
        "Error: The integration stopped at the step \u201ctaking the scan named in 956$u\u201d. "
        f"Check that 956$u ({book.file}) names the scan exactly as it is in the scanning folder. "
        f"Your shelfwork administrator can see the details of task {task_id}."
    )
    expect(panel.get_by_text(said, exact=True)).to_be_visible()
    expect(panel).not_to_contain_text(str(bench.inbox))
    expect(panel).to_contain_text(f"Task {task_id}: error")
    expect(panel.locator("a")).to_have_count(0)  # no repository or cover link
    assert border_colour(panel) == RED
    assert bench.koha_state(book.biblionumber).status == "error"
    screenshot_panel(page, "missing-scan")


def test_markup_in_an_answer_is_shown_as_text_not_run(page: Page, bench: Bench) -> None:
    """The error repeats 956$u, which a cataloguer typed: the panel must not turn it into HTML."""
    trap = '<img src="x" onerror="window.__shelfwork_pwned = 1">.pdf'
    book = Book(2106, "Odd names", author="Kim, Jae", year="2015", file=trap)
    bench.catalogue(book, pdf=False)
    use_button(bench)
    button = open_record(page, bench, book.biblionumber, book.title)

    button.click()
    panel = page.locator(PANEL)
    expect(panel).to_contain_text(re.compile(r"Task \d+: error"), timeout=20_000)
    expect(panel).to_contain_text(trap)
    expect(panel.locator("img")).to_have_count(0)
    assert page.evaluate("window.__shelfwork_pwned") is None


def test_a_wrong_token_shows_shelfworks_401_and_creates_no_job(page: Page, bench: Bench) -> None:
    book = Book(2103, "Salt roads", author="Varga, Ede", file="2026/salt-roads.pdf")
    bench.catalogue(book, pdf=True)
    bogus = "swk_000000000000_" + "x" * 43  # shaped like a token, known to no one
    use_button(bench, token=bogus)
    button = open_record(page, bench, book.biblionumber, book.title)
    before = bench.job_ids()
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/integrate") else None)

    button.click()
    panel = page.locator(PANEL)
    expect(panel).to_have_text(
        "shelfwork answered 401: the API token is unknown, revoked or expired"
    )
    expect(button).to_be_enabled()
    # The 401 reached the page (CORS applies to error answers too) and nothing was queued.
    assert [a.status for a in answers] == [401]
    assert answers[0].headers.get("access-control-allow-origin") == bench.peers.koha_url
    assert bench.job_ids() == before
    assert bench.koha_state(book.biblionumber).status is None  # Koha's record untouched
    assert bogus not in panel.inner_text()
    screenshot_panel(page, "wrong-token")


def test_a_server_that_does_not_allow_kohas_origin_is_never_called(
    page: Page, bench: Bench
) -> None:
    """The CORS allow-list is what lets the button through: without Koha's origin the browser
    stops at the preflight, the POST is never sent and the panel says shelfwork is unreachable."""
    settings = bench.engine.settings.model_copy(update={"cors_origins": []})
    closed_engine = Engine(settings, kind="test")  # same database, never started
    closed = serve(create_app(closed_engine), "shelfwork-no-cors")
    try:
        book = Book(2104, "Closed doors", author="Ruiz, Pilar", file="2026/closed-doors.pdf")
        bench.catalogue(book, pdf=True)
        use_button(bench, url=closed.url)
        button = open_record(page, bench, book.biblionumber, book.title)
        before = bench.job_ids()

        button.click()
        expect(page.locator(PANEL)).to_have_text(f"shelfwork at {closed.url} cannot be reached")
        expect(button).to_be_enabled()
        assert bench.job_ids() == before
    finally:
        closed.stop()
        closed_engine.store.dispose()


def test_the_button_is_on_the_page_koha_shows_right_after_login(page: Page, bench: Bench) -> None:
    """A3: Koha's staff login posts the form to detail.pl itself and answers the record page to
    that POST (C4::Auth redirects after login only for the OPAC), so location.search is empty
    there. A staff member who follows a link to a record while logged out lands here."""
    book = Book(2105, "First light", author="Holm, Ada", file="2026/first-light.pdf")
    bench.catalogue(book, pdf=True)
    use_button(bench)
    log_in_to_koha(page, bench, book.biblionumber)
    expect(page.locator("h1.title")).to_have_text(book.title)
    expect(page.get_by_role("button", name=BUTTON)).to_be_visible(timeout=3_000)
