"""The INDEX actions' pipeline, `oai-index`: send a target what changed in the last good known
snapshot since it was last indexed.

    begin (the last good known snapshot) -> index (changes, then removals) -> hand_over

`oai_index_entries` remembers what each target holds of each network (identifier and the hash
of the published metadata), so a run sends only records that are new or whose published
metadata or sets changed, and removes records that were deleted, became invalid or left the
snapshot. Targets: `builtin` (the metadata database's full-text search), `solr` (JSON update API) and
`oai` (shelfwork's own OAI-PMH provider, which serves straight from the entries: a removal stays
as a deleted record there, with the moment of the change as its datestamp).

A full run (`full`, from a run with incremental=false) clears the builtin and Solr targets of
the network and sends everything again. The provider's target is never cleared, since its
deletions must outlive any rebuild (Identify says deletedRecord persistent): a full run there
publishes every valid record again (new datestamps, sets rewritten) and, as always, turns each
exposed record that is no longer valid into a deleted one.

The remote call for a page happens before the page's transaction, outside it; the entries
commit after. A crash in between sends the page again next time, which both targets take as a
replacement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from lxml import etree
from sqlalchemy import Text, and_, cast, delete, exists, func, not_, or_, select, update

from ...batch import Page as BatchPage
from ...batch import run_batches
from ...connectors import RemoteUnavailable
from ...connectors.oaipmh import parse_datestamp
from ...context import StepContext
from ...errors import ConfigError
from ...pipeline import Pipeline, Retry, step
from ...search import BuiltinSearch, IndexDocument, IndexTarget
from ...store.database import utcnow
from .actions import HAND_OVER_RETRY, NetworkParams, hand_over, network_context
from .config import OaiConfig, oai_config
from .exposure import write_sets
from .record import DEFAULT_NAMESPACES, MetadataRecord
from .snapshots import Networks, Snapshots, entries_t, records_t, upsert
from .storage import MetadataStore

TARGETS = ("builtin", "solr", "oai")
REMOTE_RETRY = Retry(attempts=4, delay=5.0, factor=2.0, max_delay=60.0, on=(RemoteUnavailable,))
_PREFIXES = {uri: prefix for prefix, uri in DEFAULT_NAMESPACES.items() if prefix != "oai_dc"}


class IndexParams(NetworkParams):
    target: Literal["builtin", "solr", "oai"]
    #: send everything again (the target is cleared of this network first)
    full: bool = False


class ExposureTarget:
    """The OAI provider's target: the entries table is what it serves, so nothing to send."""

    name = "oai"
    #: the provider reads the store itself: documents would be built for nothing
    wants_documents = False

    def upsert(self, docs: Any) -> None:
        pass

    def delete(self, network: str, identifiers: Any) -> None:
        pass

    def commit(self) -> None:
        pass

    def clear(self, network: str) -> None:
        pass


def target_for(name: str, ctx: StepContext, config: OaiConfig) -> IndexTarget:
    if name == "builtin":
        return BuiltinSearch(ctx.engine.store)
    if name == "solr":
        if config.solr is None:
            raise ConfigError("index target 'solr' needs a [systems.oai.solr] table (url, core)")
        from ...connectors.solr import SolrClient, SolrTarget

        solr = config.solr
        auth = (
            (solr.user, solr.password.get_secret_value())
            if solr.user and solr.password is not None
            else None
        )
        return SolrTarget(SolrClient(solr.url, solr.core, auth=auth, batch=solr.batch))
    return ExposureTarget()


def fields_of(record: MetadataRecord) -> dict[str, list[str]]:
    """`prefix.element` -> values for every element with text (qualifier kept as `.type`)."""
    fields: dict[str, list[str]] = {}
    for element in record.root.iter(etree.Element):
        if element is record.root or not isinstance(element.tag, str):
            continue
        qname = etree.QName(element)
        prefix = _PREFIXES.get(qname.namespace or "")
        if prefix is None:
            continue
        text = " ".join("".join(element.itertext()).split())
        if not text:
            continue
        name = f"{prefix}.{qname.localname}"
        if element.get("type"):
            name = f"{name}.{element.get('type')}"
        fields.setdefault(name, []).append(text)
    return fields


def begin(ctx: StepContext) -> dict[str, Any]:
    network = Networks(ctx.engine.store).get(ctx.params.network)
    good = Snapshots(ctx.engine.store).last_good(network.acronym)
    if good is None:
        ctx.warn(f"network {network.acronym}: no validated snapshot to index yet")
        return {"snapshot": None}
    return {"snapshot": good.id}


def _published_id() -> Any:
    return func.coalesce(records_t.c.published_identifier, records_t.c.identifier)


def index(ctx: StepContext) -> dict[str, Any] | None:
    snapshot_id = ctx.results["begin"]["snapshot"]
    if snapshot_id is None:
        return None
    network = ctx.params.network
    target_name = ctx.params.target
    config = oai_config(ctx.engine.settings)
    blobs = MetadataStore(ctx.engine.store)
    target = target_for(target_name, ctx, config)
    store = ctx.engine.store
    mine = and_(entries_t.c.network == network, entries_t.c.target == target_name)
    keeps_deletions = target_name == "oai"  # the provider's deletions are persistent
    if ctx.params.full and ctx.checkpoint is None and not keeps_deletions:
        target.clear(network)
        target.commit()
        with store.write() as conn:
            conn.execute(delete(entries_t).where(mine))
    pid = _published_id().label("pid")
    published = and_(
        records_t.c.snapshot_id == snapshot_id,
        records_t.c.valid.is_(True),
        records_t.c.deleted.is_(False),
    )
    entry_of_row = and_(mine, entries_t.c.identifier == _published_id())
    changed = (
        select(records_t, pid)
        .select_from(records_t.outerjoin(entries_t, entry_of_row))
        .where(
            published,
            or_(
                entries_t.c.identifier.is_(None),
                entries_t.c.deleted.is_(True),
                entries_t.c.published_hash != records_t.c.published_hash,
                # a record moved to other sets with the same metadata: its header changed
                cast(entries_t.c.sets, Text) != cast(records_t.c.sets, Text),
            ),
        )
        .order_by(pid)
    )
    if ctx.params.full and keeps_deletions:
        changed = select(records_t, pid).where(published).order_by(pid)  # every record again
    gone = (
        select(entries_t.c.identifier)
        .where(
            mine,
            entries_t.c.deleted.is_(False),
            not_(exists().where(published, _published_id() == entries_t.c.identifier)),
        )
        .order_by(entries_t.c.identifier)
    )

    def pages(position: Any) -> Iterator[BatchPage[Any]]:
        here = position or {"phase": "upsert", "after": None}
        while here["phase"] == "upsert":
            q = changed if here["after"] is None else changed.where(_published_id() > here["after"])
            with store.read() as conn:
                rows = conn.execute(q.limit(config.batch)).all()
            if not rows:
                here = {"phase": "delete", "after": None}
                break
            docs = []
            wanted = getattr(target, "wants_documents", True)
            hashes = [row.published_hash for row in rows] if wanted else []
            metadata = blobs.get_many(network, hashes)
            for row in rows if wanted else ():
                record = MetadataRecord.parse(metadata[row.published_hash], row.pid)
                docs.append(
                    IndexDocument(
                        network=network,
                        identifier=row.pid,
                        datestamp=parse_datestamp(row.datestamp),
                        sets=tuple(row.sets or ()),
                        fields=fields_of(record),
                    )
                )
            target.upsert(docs)
            target.commit()
            here = {"phase": "upsert", "after": rows[-1].pid}
            yield BatchPage([("upsert", row) for row in rows], after=here)
        while True:
            q = (
                gone
                if here["after"] is None
                else gone.where(entries_t.c.identifier > here["after"])
            )
            with store.read() as conn:
                identifiers = [r.identifier for r in conn.execute(q.limit(config.batch)).all()]
            if not identifiers:
                return
            target.delete(network, identifiers)
            target.commit()
            here = {"phase": "delete", "after": identifiers[-1]}
            yield BatchPage([("delete", i) for i in identifiers], after=here)

    def record_page(page: BatchPage[Any], tx: Any) -> None:
        now = utcnow()
        sent = [row for kind, row in page.items if kind == "upsert"]
        removed = [identifier for kind, identifier in page.items if kind == "delete"]
        upsert(
            tx,
            entries_t,
            [
                {
                    "network": network,
                    "target": target_name,
                    "identifier": row.pid,
                    "published_hash": row.published_hash,
                    "sets": list(row.sets or []),
                    "deleted": False,
                    "changed_at": now,
                    "snapshot_id": snapshot_id,
                }
                for row in sent
            ],
            ("network", "target", "identifier"),
        )
        if keeps_deletions:
            write_sets(tx, network, {row.pid: list(row.sets or ()) for row in sent})
        if removed:
            which = and_(mine, entries_t.c.identifier.in_(removed))
            if target_name == "oai":  # the provider keeps deletions (deletedRecord persistent)
                tx.execute(
                    update(entries_t)
                    .where(which)
                    .values(deleted=True, changed_at=now, snapshot_id=snapshot_id)
                )
            else:
                tx.execute(delete(entries_t).where(which))

    summary = run_batches(
        ctx,
        pages,
        lambda item, tx: None,
        key=lambda item: f"{item[0]}:{item[1] if isinstance(item[1], str) else item[1].pid}",
        after_page=record_page,
        savepoints=False,
    )
    Snapshots(store).log(snapshot_id, f"indexed into {target_name}: {summary.items} changes sent")
    return summary.as_dict()


pipeline = Pipeline(
    "oai-index",
    params=IndexParams,
    system="oai",
    description="Index what changed in a network's last good known snapshot into one target",
    context=network_context,
    lane=lambda p: f"index:{p.target}",
    steps=[step(begin), step(index, retry=REMOTE_RETRY), step(hand_over, retry=HAND_OVER_RETRY)],
)
