"""Connections to the metadata database.

SQLite is the embedded default: WAL, a long busy timeout and `BEGIN IMMEDIATE` for every write
transaction, so writers queue for the lock instead of failing with "database is locked" when a read
transaction tries to upgrade. PostgreSQL serialises the few decisions that need it (admission) with
a transaction-scoped advisory lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from ..errors import ConfigError, DatabaseUnavailable, ShelfworkError
from .models import Base

# Keys for pg_advisory_xact_lock: one per decision that must be serialised cluster-wide.
ADMISSION_LOCK = 0x5E1F_0001
SCHEDULE_LOCK = 0x5E1F_0002
LOGIN_LOCK = 0x5E1F_0003


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Two engines over one database: `read()` for plain reads, `write()` for short writes."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"database_url {url!r} is not a database URL: {exc}") from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError("SQLite needs a file database (WAL); :memory: is not supported")
            create_private(Path(parsed.database).expanduser())
            self._writer = self._sqlite_engine(url, immediate=True, echo=echo)
            self._reader = self._sqlite_engine(url, immediate=False, echo=echo)
        else:
            if self.dialect == "postgresql" and parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            self._writer = create_engine(
                parsed, echo=echo, pool_size=10, max_overflow=30, pool_pre_ping=True
            )
            self._reader = self._writer
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # SQLite has one writer at a time. Threads of this process queue on a mutex rather than on
        # SQLite's busy handler, which sleeps in coarse steps and would cap throughput; other
        # processes still wait through busy_timeout.
        self._write_mutex: threading.Lock | None = threading.Lock() if self.is_sqlite else None
        self._local = threading.local()

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool, echo: bool) -> Engine:
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 60, "isolation_level": None},
            pool_size=20,
            max_overflow=40,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine

    @contextmanager
    def write(self, serialize: int | None = None) -> Iterator[Connection]:
        """A short write transaction. `serialize` names an advisory lock to hold (PostgreSQL)."""
        if self._write_mutex is not None:
            if getattr(self._local, "writing", False):
                raise ShelfworkError(
                    "a write transaction was opened inside another on the same thread; on SQLite "
                    "that would wait for itself forever. Write through the open connection instead."
                )
            with self._write_mutex, self._marked(), self._write(serialize) as conn:
                yield conn
        else:
            with self._write(serialize) as conn:
                yield conn

    @contextmanager
    def _marked(self) -> Iterator[None]:
        self._local.writing = True
        try:
            yield
        finally:
            self._local.writing = False

    @contextmanager
    def _write(self, serialize: int | None) -> Iterator[Connection]:
        try:
            with self._writer.begin() as conn:
                if serialize is not None and self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": serialize})
                yield conn
        except OperationalError as exc:
            if _unreachable(exc):
                raise DatabaseUnavailable(_where(self.url, exc)) from None
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self._reader.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            if _unreachable(exc):
                raise DatabaseUnavailable(_where(self.url, exc)) from None
            raise

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        with self._schema_lock:
            if self._schema_ready:
                return
            from alembic import command

            command.upgrade(alembic_config(self.url), "head")
            self._schema_ready = True

    def create_all(self) -> None:
        """Create tables straight from the models (tests compare this with the migrations)."""
        Base.metadata.create_all(self._writer)

    def dispose(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


def create_private(path: Path) -> None:
    """Create a SQLite database file readable by its owner only (0600), and its folder (0700) if
    it is missing: the database holds the OAI provider's token secret and dashboard sessions.
    SQLite gives the -wal and -shm files it makes later the database file's mode (os_unix.c,
    findCreateFileMode), so they are private too. An existing file or folder is left as it is."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("shelfwork.store") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["shelfwork_url"] = url
    return cfg


def migration_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        create_private(Path(parsed.database).expanduser())
    return create_engine(parsed, poolclass=NullPool)


def _unreachable(exc: OperationalError) -> bool:
    msg = str(exc.orig).lower() if exc.orig else str(exc).lower()
    needles = ("connection refused", "could not connect", "unable to open database", "timeout")
    needles += ("no such host", "name or service not known", "connection failed", "server closed")
    return any(n in msg for n in needles)


def _where(url: str, exc: OperationalError) -> str:
    safe = make_url(url).render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return f"metadata database {safe} is unreachable: {reason}"
