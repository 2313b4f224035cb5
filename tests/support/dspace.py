"""The raw REST conversation with the emulated DSpace (`shelfwork.sandbox.dspace`): the CSRF token
from its header and cookie, the login, the Bearer token, and the requests of a submission, written
out so the tests check the emulator, not a client."""

from __future__ import annotations

import json
from typing import Any

import httpx

PATCH_JSON = {"Content-Type": "application/json-patch+json"}


class Session:
    """One user's conversation: `http` speaks to DSpace, `api` is its REST root (…/server/api);
    the newest CSRF token a response gave is sent with every request, the JWT once logged in."""

    def __init__(self, http: httpx.Client, api: str) -> None:
        self.api = api
        self.http = http
        self.token: str | None = None
        self.jwt: str | None = None

    def track(self, response: httpx.Response) -> httpx.Response:
        if "DSPACE-XSRF-TOKEN" in response.headers:
            self.token = response.headers["DSPACE-XSRF-TOKEN"]
        return response

    def csrf(self) -> httpx.Response:
        return self.track(self.http.get(f"{self.api}/security/csrf"))

    def login(self, user: tuple[str, str]) -> httpx.Response:
        self.csrf()
        response = self.track(
            self.http.post(
                f"{self.api}/authn/login",
                data={"user": user[0], "password": user[1]},
                headers={"X-XSRF-TOKEN": self.token or ""},
            )
        )
        if response.status_code == 200:
            self.jwt = response.headers["Authorization"].split(" ", 1)[1]
        return response

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        sent = {"X-XSRF-TOKEN": self.token or ""}
        if self.jwt:
            sent["Authorization"] = f"Bearer {self.jwt}"
        return {**sent, **(extra or {})}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = path if path.startswith("http") else f"{self.api}{path}"
        headers = self.headers(kwargs.pop("headers", None))
        return self.track(self.http.request(method, url, headers=headers, **kwargs))

    def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        """The JSON of an answer that must have this status."""
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def workspace(self, collection: str) -> dict[str, Any]:
        return self.json(
            "POST",
            "/submission/workspaceitems",
            201,
            params={"owningCollection": collection},
            json={},  # RestResourceController.post consumes JSON only
        )

    def patch(self, ws_id: int, ops: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", PATCH_JSON)
        return self.call(
            "PATCH",
            f"/submission/workspaceitems/{ws_id}",
            content=json.dumps(ops).encode(),
            headers=headers,
        )

    def deposit(self, ws_id: int) -> httpx.Response:
        return self.call(
            "POST",
            "/workflow/workflowitems",
            content=f"{self.api}/submission/workspaceitems/{ws_id}",
            headers={"Content-Type": "text/uri-list"},
        )
