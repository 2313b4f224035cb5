"""GET /api/v1/search over the built-in search, on both backends: who may call it, what it answers,
and how it refuses bad input."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shelfwork.api import create_app
from shelfwork.api import search as search_api
from shelfwork.engine import Engine
from shelfwork.search import BuiltinSearch, IndexDocument

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

ROLES = ("integrator", "viewer", "operator", "admin")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class SearchApi:
    client: TestClient
    search: BuiltinSearch
    tokens: dict[str, str]
    network: str

    def get(self, role: str | None = "viewer", **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return self.client.get("/api/v1/search", params=params, headers=headers)


def with_search(app: FastAPI) -> FastAPI:
    """The router, unless app.py mounts it already."""
    if not any(getattr(r, "path", "") == "/api/v1/search" for r in app.routes):
        app.include_router(search_api.router, prefix="/api/v1")
    return app


@pytest.fixture
def api(backend: str, make_engine: Callable[..., Engine]) -> Iterator[SearchApi]:
    """An API with the search router over an engine of the test's backend (both, by `backend`)."""
    engine = make_engine(start=False)
    app = with_search(create_app(engine))
    tokens = {role: app.state.auth.tokens.create(role, f"t-{role}")[1] for role in ROLES}
    search = BuiltinSearch(engine.store)
    network = f"A{uuid.uuid4().hex[:8]}"
    with TestClient(app) as client:
        yield SearchApi(client, search, tokens, network)
    search.clear(network)


def test_search_needs_a_viewer(api: SearchApi) -> None:
    anonymous = api.get(None)
    assert anonymous.status_code == 401
    refused = api.get("integrator")
    assert refused.status_code == 403
    assert "viewer" in refused.json()["detail"]
    for role in ("viewer", "operator", "admin"):
        assert api.get(role, network=api.network).status_code == 200


def test_search_answers_hits_with_snippets_and_pages(api: SearchApi) -> None:
    api.search.upsert(
        [
            IndexDocument(
                api.network,
                f"oai:r:{i}",
                T0 + timedelta(days=i),
                ("col_1:sub",),
                {
                    "dc.title": [f"Informe número {i}"],
                    "dc.creator": ["Pérez, Ana"],
                    "dc.description": ["Sobre la educación <b>rural</b>"],
                },
            )
            for i in range(5)
        ]
    )
    r = api.get(q="educacion", network=api.network, set="col_1", limit=2, offset=1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 5 and body["limit"] == 2 and body["offset"] == 1
    assert body["query"] == "educacion" and len(body["hits"]) == 2
    hit = body["hits"][0]
    assert hit["network"] == api.network and hit["creators"] == ["Pérez, Ana"]
    assert hit["sets"] == ["col_1:sub"] and hit["title"].startswith("Informe número")
    start, end = hit["highlights"][0]
    assert hit["snippet"][start:end] == "educación"
    assert datetime.fromisoformat(hit["datestamp"]).tzinfo is not None
    newest = api.get(network=api.network, limit=1).json()
    assert newest["total"] == 5 and newest["hits"][0]["identifier"] == "oai:r:4"
    assert api.get(q="educacion", network=api.network, set="col_2").json()["total"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": '"unclosed'}, "q"),
        ({"q": "-only"}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": 10_001}, "offset"),
        ({"network": "no spaces"}, "network"),
        ({"set": ""}, "set"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    api: SearchApi, params: dict[str, object], field: str
) -> None:
    r = api.get(**params)
    assert r.status_code == 422, r.text
    assert field in r.json()["fields"]


def test_a_query_error_says_what_to_fix(api: SearchApi) -> None:
    body = api.get(q='"open access').json()
    assert body["error"] == "bad_query" and "never closed" in body["detail"]
