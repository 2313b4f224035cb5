"""Fixtures shared by every test layer.

`backend` runs a test against both supported configurations: SQLite + local threads, and
PostgreSQL + Celery on Redis (a real worker, in-process threads, on a queue of this test session).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from shelfwork.config import Settings, load_settings
from shelfwork.engine import Engine
from shelfwork.pipeline import Registry
from shelfwork.pipelines import builtin
from shelfwork.store import Store
from shelfwork.store.models import Base

PG_ADMIN = os.environ.get("SHELFWORK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SHELFWORK_TEST_REDIS", "redis://127.0.0.1:6379/3")
SESSION = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to the newest schema."""
    name = f"shelfwork_test_{SESSION}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    Store(url).upgrade()
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def truncate_pg(url: str) -> None:
    store = Store(url)
    # search_documents is made by its own migration, outside the models
    tables = [*(t.name for t in Base.metadata.sorted_tables), "search_documents"]
    names = ", ".join(f'"{name}"' for name in tables)
    with store.write() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    store.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shelfwork.db'}"


def test_settings(url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        database_url=url,
        broker_url=REDIS,
        celery_queue=f"shelfwork-test-{SESSION}",
        lease_ttl=3.0,
        poll_interval=0.05,
    )
    base.update(overrides)
    return load_settings(env={}, **base)


@pytest.fixture(params=["sqlite-local", "postgres-celery"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineFactory]:
    """Build started engines on the test's backend (default sqlite-local); all stopped at the end.

    make_engine(pipelines=[...], max_running=2, ...) -> Engine
    """
    backend = (
        request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite-local"
    )
    engines: list[Engine] = []
    workers: list[Any] = []
    if backend.startswith("postgres"):  # postgres-celery; postgres-local for local-pool tests
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'shelfwork.db'}"

    def factory(
        pipelines: list[Any] | None = None,
        *,
        start: bool = True,
        scheduler: bool = True,
        **overrides: Any,
    ) -> Engine:
        executor = "celery" if backend.endswith("celery") else "local"
        settings = test_settings(url, executor=executor, **overrides)
        registry = Registry([*builtin.PIPELINES, *(pipelines or [])])
        engine = Engine(settings, registry)
        engines.append(engine)
        if start:
            engine.start(scheduler=scheduler)
            if executor == "celery" and not workers:
                workers.append(_celery_worker(engine))
        return engine

    yield factory
    for w in workers:
        w.__exit__(None, None, None)
    for e in engines:
        e.stop(wait=False)
    if backend.endswith("celery"):
        from shelfwork.executors import celery as celery_executor

        celery_executor.bind_engine(None)
        _purge(url)


def _celery_worker(engine: Engine) -> Any:
    """A real Celery worker (thread pool) in this process, consuming this session's queue."""
    from celery.contrib.testing.worker import start_worker

    from shelfwork.executors import celery as celery_executor

    celery_executor.bind_engine(engine)
    app = engine.executor.app  # type: ignore[attr-defined]
    ctx = start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=[engine.settings.celery_queue],
        shutdown_timeout=10,
        loglevel="WARNING",
    )
    ctx.__enter__()
    return ctx


@pytest.fixture
def crash_queue() -> Iterator[str]:
    """A Celery queue of one crash test, on the crash tests' Redis database; its messages (also
    unacked ones) are removed afterwards."""
    from tests.support.cluster import purge_queue

    queue = f"shelfwork-crash-{SESSION}-{uuid.uuid4().hex[:6]}"
    yield queue
    purge_queue(queue)


def worker_serves(engine: Engine) -> None:
    """From now on the in-process Celery worker runs jobs on `engine`, as a worker process of a
    new node would (the one that served the previous engine is gone). Local engines run their
    own jobs: nothing to do."""
    if not engine.executor.runs_here:
        from shelfwork.executors import celery as celery_executor

        celery_executor.bind_engine(engine)


def _purge(url: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS)
    r.delete(f"shelfwork-test-{SESSION}")
