"""Named locks with leases, and compare-and-set on per-entity fields.

A lock taken by a job belongs to that job: the job's heartbeat renews it, and it is released when the
job ends in any way, or reclaimed by anyone once its lease has expired. Request handlers take locks with
their own owner name and a short lease. Compare-and-set is for "set only if still unset / still equal":
the fix for an API endpoint and a background task racing on the same field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Connection, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .errors import LockHeld, ShelfworkError
from .store.database import Store, utcnow
from .store.models import EntityValue, Lock

locks_t = Lock.__table__
values_t = EntityValue.__table__


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class LockInfo:
    name: str
    owner: str
    job_id: int | None
    acquired_at: datetime
    expires_at: datetime

    @property
    def expired(self) -> bool:
        return self.expires_at <= utcnow()


class Locks:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.waits = 0  # acquisitions that had to wait: exported as a metric

    def try_acquire(
        self, name: str, owner: str, *, ttl: float = 30.0, job_id: int | None = None
    ) -> bool:
        """Take the lock if it is free, expired, or already ours (then the lease is extended)."""
        with self.store.write() as conn:
            row = conn.execute(
                select(locks_t.c.owner, locks_t.c.expires_at)
                .where(locks_t.c.name == name)
                .with_for_update()
            ).first()
            # Read the clock only now that the database (SQLite) or the row (PostgreSQL) is ours:
            # a time taken before waiting for them would judge expiry late and grant a lease
            # that may already have run out when it is granted.
            now = utcnow()
            expires = now + timedelta(seconds=ttl)
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(locks_t).values(
                                name=name,
                                owner=owner,
                                job_id=job_id,
                                acquired_at=now,
                                expires_at=expires,
                            )
                        )
                    return True
                except IntegrityError:
                    return False
            if row.owner == owner or row.expires_at <= now:
                res = conn.execute(
                    update(locks_t)
                    .where(
                        locks_t.c.name == name,
                        locks_t.c.owner == row.owner,
                        locks_t.c.expires_at == row.expires_at,
                    )
                    .values(
                        owner=owner,
                        job_id=job_id,
                        expires_at=expires,
                        **({} if row.owner == owner else {"acquired_at": now}),
                    )
                )
                return res.rowcount == 1
            return False

    def acquire(
        self,
        name: str,
        owner: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        job_id: int | None = None,
        poll: float = 0.05,
    ) -> None:
        """Take the lock, waiting up to `wait` seconds; LockHeld names the holder otherwise."""
        deadline = time.monotonic() + wait
        waited = False
        while True:
            if self.try_acquire(name, owner, ttl=ttl, job_id=job_id):
                if waited:
                    self.waits += 1
                return
            if time.monotonic() >= deadline:
                holder = self.get(name)
                raise LockHeld(name, holder.owner if holder else None)
            waited = True
            time.sleep(poll)

    def release(self, name: str, owner: str) -> bool:
        with self.store.write() as conn:
            res = conn.execute(
                delete(locks_t).where(locks_t.c.name == name, locks_t.c.owner == owner)
            )
            return res.rowcount == 1

    def renew(self, name: str, owner: str, ttl: float) -> bool:
        with self.store.write() as conn:
            res = conn.execute(
                update(locks_t)
                .where(locks_t.c.name == name, locks_t.c.owner == owner)
                .values(expires_at=utcnow() + timedelta(seconds=ttl))
            )
            return res.rowcount == 1

    @contextmanager
    def hold(
        self,
        name: str,
        owner: str,
        *,
        ttl: float = 30.0,
        wait: float = 0.0,
        job_id: int | None = None,
    ) -> Iterator[None]:
        self.acquire(name, owner, ttl=ttl, wait=wait, job_id=job_id)
        try:
            yield
        finally:
            self.release(name, owner)

    def get(self, name: str) -> LockInfo | None:
        with self.store.read() as conn:
            row = conn.execute(select(locks_t).where(locks_t.c.name == name)).first()
        return LockInfo(**row._mapping) if row else None

    def list(self) -> list[LockInfo]:
        with self.store.read() as conn:
            rows = conn.execute(select(locks_t).order_by(locks_t.c.name)).all()
        return [LockInfo(**r._mapping) for r in rows]


class EntityValues:
    """Per-entity fields kept by shelfwork, each changed only by compare-and-set."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, entity: str, field: str, default: Any = UNSET) -> Any:
        with self.store.read() as conn:
            row = conn.execute(
                select(values_t.c.value).where(
                    values_t.c.entity == entity, values_t.c.field == field
                )
            ).first()
        return default if row is None else row.value

    def compare_and_set(self, entity: str, field: str, expected: Any, new: Any) -> bool:
        """Set `field` to `new` only if it is still `expected` (UNSET: never set). True if it did."""
        with self.store.write() as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            row = conn.execute(
                select(values_t.c.value, values_t.c.version)
                .where(values_t.c.entity == entity, values_t.c.field == field)
                .with_for_update()
            ).first()
            if row is None:
                if expected is not UNSET:
                    return False
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(values_t).values(
                                entity=entity, field=field, value=new, version=1, updated_at=now
                            )
                        )
                    return True
                except IntegrityError:
                    return False
            if expected is UNSET or row.value != expected:
                return False
            res = conn.execute(
                update(values_t)
                .where(
                    values_t.c.entity == entity,
                    values_t.c.field == field,
                    values_t.c.version == row.version,
                )
                .values(value=new, version=row.version + 1, updated_at=now)
            )
            return res.rowcount == 1


def compare_and_set(
    target: Store | Connection,
    column: Column[Any],
    where: dict[str, Any],
    expected: Any,
    new: Any,
) -> bool:
    """Compare-and-set on a column of the caller's own table: one conditional UPDATE.

    `expected=None` means "still unset (NULL)". True if this call changed the row. `where` must
    name one row (its key). `target` is the Store (a short transaction of its own) or an open
    Connection, to decide inside the caller's transaction (e.g. a batch page's `tx`).
    """
    table = column.table
    assert isinstance(table, Table)
    cond = [table.c[k] == v for k, v in where.items()]
    cond.append(column.is_(None) if expected is None else column == expected)
    stmt = update(table).where(*cond).values({column.name: new})
    if isinstance(target, Connection):
        return _one_row(target.execute(stmt).rowcount, table, where)
    with target.write() as conn:
        return _one_row(conn.execute(stmt).rowcount, table, where)


def _one_row(rowcount: int, table: Table, where: dict[str, Any]) -> bool:
    """More than one row changed means `where` was not a key: refuse, so the change rolls back."""
    if rowcount > 1:
        raise ShelfworkError(
            f"compare_and_set on {table.name} where {where!r} matched {rowcount} rows; "
            "`where` must name exactly one row"
        )
    return rowcount == 1
