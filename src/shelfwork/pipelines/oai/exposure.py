"""What shelfwork's OAI-PMH provider serves: the `oai` index target's entries of a network.

The INDEX_OAI action keeps `oai_index_entries` (target `oai`) equal to the valid records of the
last good known snapshot; each entry's `changed_at` is its datestamp here (the moment shelfwork
published the change, so incremental harvesters of shelfwork see every change), and a record
that left is kept as deleted (deletedRecord: persistent), by full runs too. Metadata comes from
the store. `oai_entry_sets` holds each entry's sets with their ancestors, so `set=` is an exact
(case-sensitive) and indexed match on both backends, hierarchy included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select
from sqlalchemy.engine import Connection

from ...store.database import Store
from ...store.models import OaiEntrySet
from .config import OaiConfig
from .provider import (
    OAI_DC,
    SET_SPEC,
    ExposedRecord,
    MetadataFormat,
    RecordSource,
    RepositoryInfo,
)
from .snapshots import Network, Networks, Snapshots, UnknownNetwork, entries_t
from .storage import MetadataStore

TARGET = "oai"
KNOWN_FORMATS = {
    "oai_dc": OAI_DC,
    "marcxml": MetadataFormat(
        "marcxml",
        "http://www.loc.gov/standards/marcxml/schema/MARC21slim.xsd",
        "http://www.loc.gov/MARC21/slim",
    ),
}


entry_sets_t = OaiEntrySet.__table__
#: the longest setSpec exposed (oai_entry_sets.set_spec holds this many characters)
MAX_SET_SPEC = 500


def exposable(specs: Sequence[str]) -> list[str]:
    """The specs OAI-PMH can carry (OAI-PMH.xsd setSpecType) and the store can hold. Others an
    upstream sends are left out of headers and memberships: no request can name them (the
    provider refuses such a set= as a badArgument) and showing them makes answers invalid."""
    return [spec for spec in specs if len(spec) <= MAX_SET_SPEC and SET_SPEC.fullmatch(spec)]


def containing_sets(specs: Sequence[str]) -> list[str]:
    """Every set a record in `specs` is in: each exposable spec and its ancestors (`a:b:c` is
    also in `a:b` and `a`; OAI-PMH 2.0, section 2.7.2), each once, sorted."""
    found: set[str] = set()
    for spec in exposable(specs):
        parts = spec.split(":")
        found.update(":".join(parts[: n + 1]) for n in range(len(parts)))
    return sorted(found)


def write_sets(conn: Connection, network: str, sets_of: dict[str, Sequence[str]]) -> None:
    """Replace the set memberships of the entries named (identifier -> its setSpecs)."""
    if not sets_of:
        return
    conn.execute(
        delete(entry_sets_t).where(
            entry_sets_t.c.network == network,
            entry_sets_t.c.target == TARGET,
            entry_sets_t.c.identifier.in_(list(sets_of)),
        )
    )
    rows = [
        {"network": network, "target": TARGET, "set_spec": spec, "identifier": identifier}
        for identifier, specs in sets_of.items()
        for spec in containing_sets(specs)
    ]
    if rows:
        conn.execute(insert(entry_sets_t), rows)


class ExposedNetwork:
    """A `RecordSource` over one network's entries (see provider.RecordSource)."""

    def __init__(
        self, store: Store, blobs: MetadataStore, network: Network, base_url: str, config: OaiConfig
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.network = network
        self.base_url = base_url
        self.config = config
        self.format = KNOWN_FORMATS.get(network.metadata_prefix) or MetadataFormat(
            network.metadata_prefix, "", ""
        )
        self._mine = and_(entries_t.c.network == network.acronym, entries_t.c.target == TARGET)

    def info(self) -> RepositoryInfo:
        with self.store.read() as conn:
            earliest = conn.execute(
                select(func.min(entries_t.c.changed_at)).where(self._mine)
            ).scalar_one()
        return RepositoryInfo(
            name=f"{self.network.name} (shelfwork)",
            base_url=self.base_url,
            admin_emails=tuple(self.config.admin_emails),
            earliest_datestamp=(earliest or datetime.now(UTC)).replace(microsecond=0),
            deleted_record="persistent",
        )

    def formats(self, identifier: str | None = None) -> Sequence[MetadataFormat] | None:
        if identifier is not None and self._entry(identifier) is None:
            return None
        return [self.format]

    def sets(self) -> Sequence[tuple[str, str]]:
        specs: set[str] = set(containing_sets(self.network.sets))
        with self.store.read() as conn:
            specs.update(
                conn.execute(
                    select(entry_sets_t.c.set_spec)
                    .where(
                        entry_sets_t.c.network == self.network.acronym,
                        entry_sets_t.c.target == TARGET,
                    )
                    .distinct()
                ).scalars()
            )
        names = self._set_names()
        return [(spec, names.get(spec) or spec) for spec in sorted(specs)]

    def _set_names(self) -> dict[str, str]:
        """The upstream's names of its sets, as its ListSets gave them to the harvest of the
        last good known snapshot (harvest.upstream_sets)."""
        good = Snapshots(self.store).last_good(self.network.acronym)
        listed = ((good.identify or {}).get("sets") if good is not None else None) or []
        return {str(pair[0]): str(pair[1]) for pair in listed if len(pair) == 2}

    def _window(self, prefix: str, set_spec: str | None, start: Any, before: Any) -> list[Any]:
        where = [self._mine]
        if prefix != self.format.prefix:
            where.append(entries_t.c.identifier.is_(None))  # nothing in another format
        if set_spec is not None:
            where.append(
                exists().where(
                    entry_sets_t.c.network == entries_t.c.network,
                    entry_sets_t.c.target == entries_t.c.target,
                    entry_sets_t.c.set_spec == set_spec,
                    entry_sets_t.c.identifier == entries_t.c.identifier,
                )
            )
        if start is not None:
            where.append(entries_t.c.changed_at >= start)
        if before is not None:
            where.append(entries_t.c.changed_at < before)
        return where

    def count(
        self, *, prefix: str, set_spec: str | None, start: datetime | None, before: datetime | None
    ) -> int:
        with self.store.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(*self._window(prefix, set_spec, start, before))
                ).scalar_one()
            )

    def page(
        self,
        *,
        prefix: str,
        set_spec: str | None,
        start: datetime | None,
        before: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[ExposedRecord]:
        where = self._window(prefix, set_spec, start, before)
        if after is not None:
            moment, identifier = after
            where.append(
                or_(
                    entries_t.c.changed_at > moment,
                    and_(entries_t.c.changed_at == moment, entries_t.c.identifier > identifier),
                )
            )
        q = (
            select(entries_t)
            .where(*where)
            .order_by(entries_t.c.changed_at, entries_t.c.identifier)
            .limit(limit)
        )
        with self.store.read() as conn:
            rows = conn.execute(q).all()
        live = [r.published_hash for r in rows if not r.deleted and r.published_hash]
        metadata = self.blobs.get_many(self.network.acronym, live)
        return [self._record(row, metadata) for row in rows]

    def get(self, identifier: str, prefix: str) -> ExposedRecord | None:
        if prefix != self.format.prefix:
            return None
        row = self._entry(identifier)
        return None if row is None else self._record(row)

    def _entry(self, identifier: str) -> Any | None:
        with self.store.read() as conn:
            return conn.execute(
                select(entries_t).where(self._mine, entries_t.c.identifier == identifier)
            ).first()

    def _record(self, row: Any, fetched: dict[str, bytes] | None = None) -> ExposedRecord:
        metadata = None
        if not row.deleted and row.published_hash:
            metadata = (fetched or {}).get(row.published_hash) or self.blobs.get(
                self.network.acronym, row.published_hash
            )
        return ExposedRecord(
            identifier=row.identifier,
            datestamp=row.changed_at,
            sets=tuple(exposable(row.sets or ())),
            deleted=bool(row.deleted),
            metadata=metadata,
        )


def sources_for(store: Store, config: OaiConfig) -> Callable[[str, str], RecordSource | None]:
    """The provider's lookup: a network's source, announced at the configured public URL (or
    the URL the request came to)."""
    blobs = MetadataStore(store)
    networks = Networks(store)

    def source(acronym: str, url: str) -> RecordSource | None:
        try:
            network = networks.get(acronym)
        except UnknownNetwork:
            return None
        base = f"{config.public_url.rstrip('/')}/oai/{acronym}" if config.public_url else url
        return ExposedNetwork(store, blobs, network, base, config)

    return source
