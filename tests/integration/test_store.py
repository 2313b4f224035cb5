"""The metadata store: migrations match the models, and SQLite never says "database is locked"."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shelfwork.config import load_settings
from shelfwork.engine import Engine
from shelfwork.errors import ConfigError, DatabaseUnavailable, ShelfworkError
from shelfwork.search import include_in_autogenerate
from shelfwork.store import Store
from shelfwork.store.database import migration_engine
from shelfwork.store.models import Base
from tests.conftest import truncate_pg


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migrations_match_models(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("pg_url")  # migrated by the fixture
    else:
        url = f"sqlite:///{tmp_path / 'm.db'}"
        Store(url).upgrade()
    engine = migration_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": include_in_autogenerate}),
            Base.metadata,
        )
    engine.dispose()
    ours = set(Base.metadata.tables)
    # other tests may add tables of their own to the shared test database: only ours count
    diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name not in ours)]
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    Store(url).upgrade()
    Store(url).upgrade()


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    store.upgrade()
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30000


def test_bad_urls_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        Store("not a url at all")
    with pytest.raises(ConfigError, match="file database"):
        Store("sqlite://")
    store = Store("postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/nothing is unreachable"):
        store.ping()


def _hammer(url: str, n: int, queue: mp.Queue) -> None:
    """Another process submitting and reading as fast as it can."""
    try:
        engine = Engine(load_settings(env={}, database_url=url, max_queue=100_000))
        ids = [engine.submit("noop").job_id for _ in range(n)]
        for job_id in ids[::10]:
            engine.get(job_id)
        engine.store.dispose()
        queue.put(("ok", len(ids)))
    except Exception as exc:  # reported to the test, which fails on it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_no_database_is_locked_under_concurrent_writers(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'load.db'}"
    settings = load_settings(env={}, database_url=url, max_queue=100_000, poll_interval=0.05)
    engine = Engine(settings).start()
    try:
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(url, 100, queue)) for _ in range(4)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert all(r[0] == "ok" for r in results), results
        total = sum(r[1] for r in results)
        deadline = 120.0
        import time

        end = time.monotonic() + deadline
        while time.monotonic() < end:
            counts = engine.jobs.counts()
            if counts.get("succeeded", 0) == total:
                break
            time.sleep(0.1)
        assert engine.jobs.counts() == {"succeeded": total}
    finally:
        engine.stop()


def test_nested_write_on_sqlite_is_refused_not_deadlocked(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'nested.db'}")
    store.upgrade()
    with store.write(), pytest.raises(ShelfworkError, match="inside another"), store.write():
        pass
    with store.write():  # the flag is cleared again
        pass
