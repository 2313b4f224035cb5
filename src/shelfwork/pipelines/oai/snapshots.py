"""Networks and their snapshots in the metadata database.

A snapshot is one harvest and what became of it. States:

    harvesting -> harvested -> validating -> valid            (the last good known: latest valid)
               -> harvest_failed | harvest_stopped | empty     validating -> validation_failed
               -> suspicious -(an operator confirms)-> harvested

An incremental snapshot starts as a copy of its predecessor's catalog and is changed by what the
repository reports since the predecessor's responseDate (deleted headers mark rows deleted). An
incremental harvest that brings nothing is `empty`: later actions pass it over. A full harvest
that brings nothing where the harvest before it brought records is `suspicious` (a repository
that lost its index answers noRecordsMatch too): nothing builds on it, so the network's exposure
stays, until an operator confirms it (`confirm_empty`) or the network's `accept_empty_harvest`
property says such a harvest is to be taken as it is. (The reference platform fails every empty
full harvest, noRecordsMatch or size 0, first ones included: lareferencia-core-lib
HarvestingWorker.run and its NO_MATCHING_QUERY case. Here a network's first harvest may be
empty, and a later one can be confirmed instead of run again.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from ...errors import ShelfworkError
from ...store.database import Store, utcnow
from ...store.models import (
    OaiIndexEntry,
    OaiNetwork,
    OaiRecord,
    OaiSnapshot,
    OaiSnapshotLog,
)
from .config import NetworkConfig
from .storage import blobs_t

networks_t = OaiNetwork.__table__
snapshots_t = OaiSnapshot.__table__
records_t = OaiRecord.__table__
log_t = OaiSnapshotLog.__table__
entries_t = OaiIndexEntry.__table__

HARVESTING = "harvesting"
HARVESTED = "harvested"
HARVEST_FAILED = "harvest_failed"
HARVEST_STOPPED = "harvest_stopped"
EMPTY = "empty"
SUSPICIOUS = "suspicious"
VALIDATING = "validating"
VALID = "valid"
VALIDATION_FAILED = "validation_failed"
#: states whose harvest finished: an incremental harvest may build on them
HARVEST_DONE = (HARVESTED, VALIDATING, VALID, VALIDATION_FAILED)


class UnknownNetwork(ShelfworkError):
    def __init__(self, acronym: str) -> None:
        self.acronym = acronym
        super().__init__(f"no OAI network {acronym!r}")


class NetworkOwnedByConfig(ShelfworkError):
    """The network is defined in the config file and must be changed there."""


class NotSuspicious(ShelfworkError):
    """Only a suspicious snapshot can be confirmed."""


def upsert(conn: Connection, table: Any, rows: Sequence[dict[str, Any]], keys: Sequence[str]):
    """Insert rows, replacing the non-key columns of rows whose keys exist (both backends)."""
    if not rows:
        return
    if conn.dialect.name == "sqlite" and _plain_columns(table, rows[0]):
        _sqlite_upsert(conn, table, rows, keys)
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    columns = [c for c in rows[0] if c not in keys]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
    )
    conn.execute(stmt, list(rows))


def _plain_columns(table: Any, row: dict[str, Any]) -> bool:
    """Whether every column of `row` is text, a number, a boolean or JSON (no datetimes, whose
    SQLite storage format SQLAlchemy owns)."""
    return all(
        isinstance(table.c[name].type, (String, Text, Integer, Boolean, JSON)) for name in row
    )


def _sqlite_upsert(
    conn: Connection, table: Any, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """The same upsert as one executemany on the driver: a harvest writes a catalog row per
    record, and SQLAlchemy's per-row parameter processing cost as much as the write itself
    (bench/oai.py)."""
    names = list(rows[0])
    json_columns = {n for n in names if isinstance(table.c[n].type, JSON)}
    quoted = [f'"{n}"' for n in names]
    updates = ", ".join(f'"{n}" = excluded."{n}"' for n in names if n not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    sql = (
        f'INSERT INTO "{table.name}" ({", ".join(quoted)}) '
        f"VALUES ({', '.join('?' for _ in names)}) "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )
    values = [
        tuple(
            (None if row[n] is None else json.dumps(row[n])) if n in json_columns else row[n]
            for n in names
        )
        for row in rows
    ]
    conn.exec_driver_sql(sql, values)


@dataclass(frozen=True)
class Network:
    acronym: str
    name: str
    base_url: str
    metadata_prefix: str
    sets: list[str]
    cron: str | None
    timezone: str
    method: str
    properties: dict[str, bool]
    validation: str | None
    transformation: str | None
    origin: str
    #: HarvestLimits as stored (missing keys: the defaults)
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> str:
        return f"network:{self.acronym}"

    def on(self, prop: str) -> bool:
        return bool(self.properties.get(prop))


def _network(row: Any) -> Network:
    return Network(
        acronym=row.acronym,
        name=row.name,
        base_url=row.base_url,
        metadata_prefix=row.metadata_prefix,
        sets=list(row.sets or []),
        cron=row.cron,
        timezone=row.timezone,
        method=row.method,
        properties=dict(row.properties or {}),
        validation=row.validation,
        transformation=row.transformation,
        origin=row.origin,
        limits=dict(row.limits or {}),
    )


class Networks:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self) -> list[Network]:
        with self.store.read() as conn:
            rows = conn.execute(select(networks_t).order_by(networks_t.c.acronym)).all()
        return [_network(r) for r in rows]

    def get(self, acronym: str) -> Network:
        with self.store.read() as conn:
            row = conn.execute(select(networks_t).where(networks_t.c.acronym == acronym)).first()
        if row is None:
            raise UnknownNetwork(acronym)
        return _network(row)

    def put(self, config: NetworkConfig, *, origin: str = "api") -> tuple[Network, bool]:
        """Create or redefine a network; returns it and whether it was new."""
        values = config.model_dump()
        now = utcnow()
        with self.store.write() as conn:
            row = conn.execute(
                select(networks_t).where(networks_t.c.acronym == config.acronym)
            ).first()
            if row is None:
                conn.execute(
                    insert(networks_t).values(
                        **values, origin=origin, created_at=now, updated_at=now
                    )
                )
            else:
                if row.origin == "config" and origin != "config":
                    raise NetworkOwnedByConfig(
                        f"network {config.acronym!r} is defined in the config file; change it there"
                    )
                conn.execute(
                    update(networks_t)
                    .where(networks_t.c.acronym == config.acronym)
                    .values(**values, origin=origin, updated_at=now)
                )
        return self.get(config.acronym), row is None

    def delete(self, acronym: str) -> None:
        """Remove a network with its snapshots, index entries and stored metadata."""
        network = self.get(acronym)
        if network.origin == "config":
            raise NetworkOwnedByConfig(
                f"network {acronym!r} is defined in the config file; remove it there"
            )
        with self.store.write() as conn:
            Snapshots.delete(conn, snapshots_t.c.network == acronym)
            conn.execute(delete(entries_t).where(entries_t.c.network == acronym))
            conn.execute(delete(blobs_t).where(blobs_t.c.network == acronym))
            conn.execute(delete(networks_t).where(networks_t.c.acronym == acronym))

    def sync_from_config(self, configs: Iterable[NetworkConfig]) -> list[str]:
        """Make the config file's networks exist as written; config networks no longer in the
        file become API networks (their history is kept, nothing is deleted)."""
        named = []
        for config in configs:
            self.put(config, origin="config")
            named.append(config.acronym)
        with self.store.write() as conn:
            conn.execute(
                update(networks_t)
                .where(networks_t.c.origin == "config", networks_t.c.acronym.not_in(named))
                .values(origin="api", updated_at=utcnow())
            )
        return named


class Snapshots:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        network: str,
        *,
        incremental: bool,
        previous_id: int | None,
        job_id: int | None,
        harvest_from: str | None,
        identify: dict[str, Any] | None,
    ) -> int:
        """A new snapshot in `harvesting`; an incremental one starts with its predecessor's
        catalog (validation results included, to be redone where records change)."""
        now = utcnow()
        with self.store.write() as conn:
            snapshot_id = conn.execute(
                insert(snapshots_t)
                .values(
                    network=network,
                    state=HARVESTING,
                    incremental=incremental,
                    previous_id=previous_id,
                    job_id=job_id,
                    harvest_from=harvest_from,
                    granularity=(identify or {}).get("granularity"),
                    identify=identify,
                    started_at=now,
                )
                .returning(snapshots_t.c.id)
            ).scalar_one()
            if incremental and previous_id is not None:
                columns = [c.name for c in records_t.columns if c.name != "snapshot_id"]
                source = select(
                    literal(snapshot_id, records_t.c.snapshot_id.type).label("snapshot_id"),
                    *(records_t.c[c] for c in columns),
                ).where(records_t.c.snapshot_id == previous_id)
                conn.execute(insert(records_t).from_select(["snapshot_id", *columns], source))
            self._log(conn, snapshot_id, "info", self._opening(incremental, harvest_from))
        return snapshot_id

    @staticmethod
    def _opening(incremental: bool, harvest_from: str | None) -> str:
        if incremental:
            return f"incremental harvest from {harvest_from} started"
        return "full harvest started"

    @staticmethod
    def delete(conn: Connection, which: Any) -> list[int]:
        """Delete the snapshots `which` (a condition on the snapshots table) with their catalogs
        and logs, in the caller's transaction; their ids."""
        ids = [r.id for r in conn.execute(select(snapshots_t.c.id).where(which)).all()]
        if ids:
            conn.execute(delete(records_t).where(records_t.c.snapshot_id.in_(ids)))
            conn.execute(delete(log_t).where(log_t.c.snapshot_id.in_(ids)))
            conn.execute(delete(snapshots_t).where(snapshots_t.c.id.in_(ids)))
        return ids

    def get(self, snapshot_id: int) -> Any:
        with self.store.read() as conn:
            row = conn.execute(select(snapshots_t).where(snapshots_t.c.id == snapshot_id)).first()
        if row is None:
            raise ShelfworkError(f"no snapshot {snapshot_id}")
        return row

    def list(self, network: str, limit: int = 50) -> list[Any]:
        with self.store.read() as conn:
            return list(
                conn.execute(
                    select(snapshots_t)
                    .where(snapshots_t.c.network == network)
                    .order_by(snapshots_t.c.id.desc())
                    .limit(limit)
                ).all()
            )

    def latest(self, network: str, states: Sequence[str]) -> Any | None:
        with self.store.read() as conn:
            return conn.execute(
                select(snapshots_t)
                .where(snapshots_t.c.network == network, snapshots_t.c.state.in_(states))
                .order_by(snapshots_t.c.id.desc())
                .limit(1)
            ).first()

    def last_good(self, network: str) -> Any | None:
        return self.latest(network, (VALID,))

    def set(self, snapshot_id: int, conn: Connection | None = None, **values: Any) -> None:
        stmt = update(snapshots_t).where(snapshots_t.c.id == snapshot_id).values(**values)
        if conn is not None:
            conn.execute(stmt)
            return
        with self.store.write() as own:
            own.execute(stmt)

    def log(self, snapshot_id: int, message: str, level: str = "info") -> None:
        with self.store.write() as conn:
            self._log(conn, snapshot_id, level, message)

    @staticmethod
    def _log(conn: Connection, snapshot_id: int, level: str, message: str) -> None:
        conn.execute(
            insert(log_t).values(snapshot_id=snapshot_id, at=utcnow(), level=level, message=message)
        )

    def confirm_empty(self, snapshot_id: int, by: str) -> Any:
        """An operator says a suspicious (empty) harvest is right: it becomes `harvested`, so
        VALIDATE and the indexes take it (and the network's exposure empties)."""
        with self.store.write() as conn:
            done = conn.execute(
                update(snapshots_t)
                .where(snapshots_t.c.id == snapshot_id, snapshots_t.c.state == SUSPICIOUS)
                .values(state=HARVESTED)
            ).rowcount
            if not done:
                row = conn.execute(
                    select(snapshots_t.c.state).where(snapshots_t.c.id == snapshot_id)
                ).first()
                if row is None:
                    raise ShelfworkError(f"no snapshot {snapshot_id}")
                raise NotSuspicious(
                    f"snapshot {snapshot_id} is {row.state}, not suspicious: nothing to confirm"
                )
            self._log(
                conn,
                snapshot_id,
                "warning",
                f"empty harvest confirmed by {by}: VALIDATE and the indexes will take it",
            )
        return self.get(snapshot_id)

    def log_lines(self, snapshot_id: int, limit: int = 500) -> list[Any]:
        with self.store.read() as conn:
            return list(
                conn.execute(
                    select(log_t)
                    .where(log_t.c.snapshot_id == snapshot_id)
                    .order_by(log_t.c.id)
                    .limit(limit)
                ).all()
            )

    def counts(self, snapshot_id: int) -> dict[str, int]:
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    func.count().label("rows"),
                    func.sum(cast(records_t.c.deleted, Integer)).label("deleted"),
                ).where(records_t.c.snapshot_id == snapshot_id)
            ).one()
        rows, deleted = int(row.rows or 0), int(row.deleted or 0)
        return {"total": rows - deleted, "deleted": deleted}

    def verdicts(self, snapshot_id: int) -> dict[str, int]:
        """Valid, invalid and transformed live records of a snapshot, from its catalog."""
        live = (records_t.c.snapshot_id == snapshot_id, records_t.c.deleted.is_(False))
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    func.sum(cast(records_t.c.valid.is_(True), Integer)).label("valid"),
                    func.sum(cast(records_t.c.valid.is_(False), Integer)).label("invalid"),
                    func.sum(cast(records_t.c.transformed, Integer)).label("transformed"),
                ).where(*live)
            ).one()
        return {k: int(getattr(row, k) or 0) for k in ("valid", "invalid", "transformed")}

    def records(
        self,
        snapshot_id: int,
        *,
        after: str | None = None,
        limit: int = 500,
        valid: bool | None = None,
        include_deleted: bool = True,
    ) -> list[Any]:
        """Catalog rows in identifier order, strictly after `after` (keyset paging)."""
        q = select(records_t).where(records_t.c.snapshot_id == snapshot_id)
        if after is not None:
            q = q.where(records_t.c.identifier > after)
        if valid is not None:
            q = q.where(records_t.c.valid.is_(valid))
        if not include_deleted:
            q = q.where(records_t.c.deleted.is_(False))
        with self.store.read() as conn:
            return list(conn.execute(q.order_by(records_t.c.identifier).limit(limit)).all())

    def record(self, snapshot_id: int, identifier: str) -> Any | None:
        with self.store.read() as conn:
            return conn.execute(
                select(records_t).where(
                    records_t.c.snapshot_id == snapshot_id, records_t.c.identifier == identifier
                )
            ).first()
