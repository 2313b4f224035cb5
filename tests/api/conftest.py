"""An API over a test engine, with a token for each role.

`api_for(...)` builds one: by default the engine is not started, so submitted jobs stay queued and
every state the tests look at is the one they made; `start=True` runs jobs (and the scheduler).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from shelfwork.api import create_app
from shelfwork.api.auth import PasswordHasher
from shelfwork.engine import Engine
from shelfwork.pipeline import Pipeline, Registry, step
from shelfwork.pipelines import builtin
from tests.conftest import test_settings
from tests.support.pipelines import ALL as SUPPORT_PIPELINES

with warnings.catch_warnings():
    # Starlette would rather use the httpx2 fork; httpx is what this project depends on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


class TypedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    biblionumber: int = Field(ge=1)
    format: Literal["pdf", "epub"]
    title: str = ""


class GuardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: bool = True


def nothing(_ctx: Any) -> None:
    return None


typed = Pipeline("typed", params=TypedParams, steps=[step(nothing)], description="typed params")
guarded = Pipeline(
    "guarded",
    params=GuardParams,
    steps=[step(nothing)],
    precondition=lambda p: None if p.allow else "the catalogue is read-only until 06:00",
)
API_PIPELINES = [typed, guarded, *SUPPORT_PIPELINES]
ROLES = ("viewer", "operator", "admin")


@dataclass
class Api:
    client: TestClient
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.auth("admin")

    @property
    def operator(self) -> dict[str, str]:
        return self.auth("operator")

    @property
    def viewer(self) -> dict[str, str]:
        return self.auth("viewer")

    def button(self) -> dict[str, str]:
        """The header of a new token of the Koha button's role (integrator)."""
        _, secret = self.client.app.state.auth.tokens.create("integrator", "koha-button")  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {secret}"}

    def submit(self, pipeline: str = "noop", **body: Any) -> int:
        r = self.client.post(
            "/api/v1/jobs", json={"pipeline": pipeline, **body}, headers=self.operator
        )
        assert r.status_code == 202, r.text
        return int(r.json()["id"])


ApiFactory = Callable[..., Api]


@pytest.fixture
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheaper scrypt for tests that log in many times (the format and checks are the same)."""
    monkeypatch.setattr(PasswordHasher, "n", 2**8)


@pytest.fixture
def api_for(make_engine: Callable[..., Engine]) -> Iterator[ApiFactory]:
    clients: list[TestClient] = []

    def factory(
        *, start: bool = False, pipelines: list[Pipeline] | None = None, **overrides: Any
    ) -> Api:
        engine = make_engine(
            pipelines=[*API_PIPELINES, *(pipelines or [])], start=start, **overrides
        )
        app = create_app(engine, stream_poll=0.02)
        client = TestClient(app)
        clients.append(client)
        api = Api(client, engine)
        for role in ROLES:
            _, secret = app.state.auth.tokens.create(role, f"test-{role}")
            api.tokens[role] = secret
        return api

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def api(api_for: ApiFactory) -> Api:
    return api_for()


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API (engine not started) for a module's tests that change nothing they look at later."""
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'shelfwork.db'}"
    engine = Engine(test_settings(url), Registry([*builtin.PIPELINES, *API_PIPELINES]))
    app = create_app(engine, stream_poll=0.02)
    api = Api(TestClient(app), engine)
    for role in ROLES:
        api.tokens[role] = app.state.auth.tokens.create(role, f"test-{role}")[1]
    yield api
    api.client.close()
    engine.stop(wait=False)
