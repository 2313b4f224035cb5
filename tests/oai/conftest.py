"""Fixtures shared by the OAI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, text

from tests.conftest import PG_ADMIN, SESSION


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables, on each backend (migrations are run on it from scratch)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"shelfwork_migration_{SESSION}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + (
            "/" + name
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert_old_network(conn: Connection, at: str) -> None:
    """Network OLD, as a migration test writes it by hand into a database at an old revision
    (the columns every revision has had), made and changed `at`."""
    conn.execute(
        text(
            "INSERT INTO oai_networks (acronym, name, base_url, metadata_prefix, sets, "
            "timezone, method, properties, origin, created_at, updated_at) VALUES "
            "('OLD', 'Old', 'http://x', 'oai_dc', '[]', 'UTC', 'GET', '{}', 'api', :t, :t)"
        ),
        {"t": at},
    )
