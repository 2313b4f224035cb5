"""The verified-token cache `shelfwork serve` turns on (`create_app(token_cache_ttl=...)`): it saves a
database read per request, must end a token revoked through this server at once, and must never
trust a token past its TTL or its expiry. A fake clock stands in for time."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from shelfwork.api import auth as auth_module
from shelfwork.api import create_app
from shelfwork.api.auth import Tokens
from shelfwork.engine import Engine
from shelfwork.store.database import utcnow
from shelfwork.store.models import ApiToken

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

TTL = 5.0


class FakeClock:
    """Stands in for `time.monotonic` and `utcnow` in auth.py; `advance` moves both."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.shift = timedelta(0)

    def monotonic(self) -> float:
        return self.mono

    def utcnow(self) -> datetime:
        return utcnow() + self.shift

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.shift += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(auth_module, "time", fake)
    monkeypatch.setattr(auth_module, "utcnow", fake.utcnow)
    return fake


@pytest.fixture
def cached_api(make_engine: Callable[..., Engine]) -> Iterator[tuple[TestClient, Engine, Tokens]]:
    engine = make_engine(start=False)
    app = create_app(engine, token_cache_ttl=TTL)
    with TestClient(app) as client:
        yield client, engine, app.state.auth.tokens


def _expire_in_database(engine: Engine, token_id: int) -> None:
    """What another process could do: the row says expired, this server's cache does not know."""
    with engine.store.write() as conn:
        conn.execute(
            update(ApiToken.__table__)
            .where(ApiToken.__table__.c.id == token_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def _me(client: TestClient, secret: str) -> Any:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})


def test_a_verified_token_is_trusted_for_the_ttl_then_read_again(
    cached_api: tuple[TestClient, Engine, Tokens], clock: FakeClock
) -> None:
    client, engine, tokens = cached_api
    info, secret = tokens.create("operator", "koha")
    assert _me(client, secret).json()["name"] == "koha"
    _expire_in_database(engine, info.id)
    clock.advance(TTL - 0.5)
    assert _me(client, secret).status_code == 200  # served from the cache: no database read
    clock.advance(1.0)
    r = _me(client, secret)
    assert r.status_code == 401 and "revoked or expired" in r.json()["detail"]


def test_a_revocation_through_this_server_ends_the_token_at_once(
    cached_api: tuple[TestClient, Engine, Tokens], clock: FakeClock
) -> None:
    client, _engine, tokens = cached_api
    _, admin = tokens.create("admin", "admin")
    info, secret = tokens.create("viewer", "staff")
    assert _me(client, secret).status_code == 200
    r = client.delete(f"/api/v1/tokens/{info.id}", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    assert _me(client, secret).status_code == 401
    assert _me(client, admin).status_code == 200  # the other token's entry stays


def test_the_cache_never_outlives_the_tokens_expiry(
    cached_api: tuple[TestClient, Engine, Tokens], clock: FakeClock
) -> None:
    client, _engine, tokens = cached_api
    tokens.cache_ttl = 3600.0
    _, secret = tokens.create("viewer", expires_in=timedelta(seconds=30))
    assert _me(client, secret).status_code == 200
    clock.advance(29)
    assert _me(client, secret).status_code == 200
    clock.advance(2)
    assert _me(client, secret).status_code == 401


def test_a_wrong_token_is_never_answered_from_the_cache(
    cached_api: tuple[TestClient, Engine, Tokens], clock: FakeClock
) -> None:
    client, _engine, tokens = cached_api
    _, secret = tokens.create("viewer")
    assert _me(client, secret).status_code == 200
    assert tokens.cached(secret) is not None
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert tokens.cached(wrong) is None
    assert _me(client, wrong).status_code == 401


def test_without_a_ttl_nothing_is_cached(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(start=False)
    app = create_app(engine)
    tokens: Tokens = app.state.auth.tokens
    info, secret = tokens.create("viewer")
    with TestClient(app) as client:
        assert _me(client, secret).status_code == 200
        assert tokens.cached(secret) is None
        _expire_in_database(engine, info.id)
        assert _me(client, secret).status_code == 401
