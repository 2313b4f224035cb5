"""The emulated Koha (`shelfwork.sandbox.koha`) served on loopback for a test, and the raw HTTP a
browser or a script sends it: Basic credentials, the staff login form, its CSRF token, the two
requests of a cover upload. No shelfwork client is involved."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx
import lxml.html

from shelfwork.sandbox import RunningServer
from shelfwork.sandbox.koha import KohaState, serve_koha

MAINPAGE = "/cgi-bin/koha/mainpage.pl"


@dataclass
class Koha:
    state: KohaState
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]


K = TypeVar("K", bound=Koha)


@contextmanager
def koha_factory(setup: Callable[[KohaState], None], kind: type[K]) -> Iterator[Callable[..., K]]:
    """`make(generation="24.05")` serves a Koha of that generation, its state made by `setup`;
    every Koha made is stopped at the end."""
    servers: list[RunningServer] = []

    def make(generation: str = "24.05") -> K:
        state = KohaState(generation=generation)  # type: ignore[arg-type]
        setup(state)
        server = serve_koha(state)
        servers.append(server)
        return kind(state, server)

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def login_form(page: str) -> lxml.html.HtmlElement | None:
    forms = lxml.html.fromstring(page).xpath("//form[@id='loginform']")
    return forms[0] if forms else None


def hidden_inputs(form: lxml.html.HtmlElement) -> dict[str, str]:
    return {i.get("name"): i.get("value") or "" for i in form.xpath(".//input[@type='hidden']")}


def meta_csrf(page: str) -> str | None:
    found = lxml.html.fromstring(page).xpath("//meta[@name='csrf-token']/@content")
    return str(found[0]) if found else None


def staff_login(
    client: httpx.Client, generation: str, user: str, password: str, path: str = MAINPAGE
) -> httpx.Response:
    """Log in as a browser does: the login form's hidden inputs plus this generation's fields."""
    form = login_form(client.get(path).text)
    assert form is not None
    fields = hidden_inputs(form)
    if generation == "24.05":
        fields.update(login_userid=user, login_password=password)
    else:
        fields.update(userid=user, password=password)
    return client.post(form.get("action"), data=fields)


def upload_temp(client: httpx.Client, token: str | None, data: bytes) -> httpx.Response:
    """upload-file.pl?temp=1, the first request of a cover upload."""
    headers = {"CSRF-TOKEN": token} if token else {}
    return client.post(
        "/cgi-bin/koha/tools/upload-file.pl",
        params={"temp": 1},
        files={"file": ("cover.jpg", data, "image/jpeg")},
        headers=headers,
    )


def process(client: httpx.Client, fileid: str, token: str | None, **extra: str) -> httpx.Response:
    """upload-cover-image.pl, the second: the uploaded file made the cover of biblio 42."""
    fields = {"uploadedfileid": fileid, "filetype": "image", "biblionumber": "42", "replace": "1"}
    if token:
        fields |= {"op": "cud-process", "csrf_token": token}
    return client.post("/cgi-bin/koha/tools/upload-cover-image.pl", data=fields | extra)
