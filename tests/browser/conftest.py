"""A real shelfwork server and a real browser.

The server is uvicorn on 127.0.0.1 (a free port, in a thread of this process) over an engine on a
temporary SQLite database. The browser is Debian's Chromium driven by Playwright: the executable is
given, so nothing is ever downloaded (`make test` installs the `chromium` package).
Screenshots go to artifacts/dashboard/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.engine import Engine
from shelfwork.pipelines import demo

CHROMIUM = os.environ.get("SHELFWORK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (make test does) or "
            "set SHELFWORK_TEST_CHROMIUM; the tests never download a browser"
        )
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
    )
    yield browser
    browser.close()


@dataclass
class Site:
    """A running dashboard: its address, its engine, and users made for the test."""

    url: str
    engine: Engine
    app: FastAPI
    passwords: dict[str, str] = field(default_factory=dict)

    def user(self, name: str, role: str) -> str:
        """Create a dashboard user; returns the password."""
        password = secrets.token_urlsafe(12)
        self.app.state.auth.users.create(name, role, password)
        self.passwords[name] = password
        return password

    def wait_for(self, job_id: int, state: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.engine.get(job_id).state != state:
            assert time.monotonic() < deadline, f"job {job_id} never became {state}"
            time.sleep(0.02)


@pytest.fixture
def site(make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(PasswordHasher, "n", 2**8)  # cheaper logins; same checks
    engine = make_engine(pipelines=demo.PIPELINES, max_running=3)
    app = create_app(engine, stream_poll=0.05)
    app.state.dashboard.refresh = 0.25
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield Site(f"http://127.0.0.1:{port}", engine, app)
    finally:
        for job in engine.jobs.list(state="running") + engine.jobs.list(state="queued"):
            engine.cancel(job.id, by="test teardown")
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, locale="en-GB", timezone_id="Europe/Kyiv")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[Any] = []
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page: Page, site: Site, name: str) -> None:
    """Log in through the form, as a person would (English labels)."""
    page.goto(site.url + "/")
    expect(page).to_have_url(f"{site.url}/login?next=%2F")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(site.passwords[name])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")


def screenshot(page: Page, name: str) -> Path:
    """Write a full-page screenshot to artifacts/dashboard/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
