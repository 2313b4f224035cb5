"""The HARVEST action's pipeline, `oai-harvest`: a network's repository into a new snapshot.

    begin (Identify, choose `from`, open the snapshot) -> harvest (ListRecords, page by page)
        -> finish (counts, state) -> hand_over (the next action's job)

Each page is one transaction: its catalog rows, the snapshot's counters and the position after
the page (the resumption token, or the next set) commit together, so a harvest killed at any
moment resumes from its stored token without fetching a finished page again (the blobs of the
page in flight may already be in the store; they are content-addressed, so writing them again
is harmless). `badResumptionToken` restarts the list from the harvest's `from` less an overlap
instead of failing; a page that does not parse is salvaged record by record when it is whole,
and each unreadable record becomes a dead letter while the run goes on.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from ...batch import Page as BatchPage
from ...batch import run_batches
from ...connectors import RemoteError, RemoteUnavailable
from ...connectors.oaipmh import (
    DAY_GRANULARITY,
    BadResumptionToken,
    BrokenRecord,
    OaiClient,
    Record,
    RepeatedToken,
    Token,
    format_datestamp,
    parse_datestamp,
)
from ...context import StepContext
from ...errors import Cancelled, ShelfworkError, describe
from ...pipeline import Pipeline, Retry, step
from ...store.database import utcnow
from ...store.models import DeadLetter
from .actions import HAND_OVER_RETRY, NetworkParams, hand_over, network_context
from .config import HarvestLimits, OaiConfig, oai_config
from .snapshots import (
    EMPTY,
    HARVEST_DONE,
    HARVEST_FAILED,
    HARVEST_STOPPED,
    HARVESTED,
    SUSPICIOUS,
    Network,
    Networks,
    Snapshots,
    records_t,
    snapshots_t,
    upsert,
)
from .storage import MAX_RECORD_BYTES, MetadataStore, digest_of, packed_all

REMOTE_RETRY = Retry(attempts=3, delay=5.0, factor=2.0, max_delay=60.0, on=(RemoteUnavailable,))


class HarvestParams(NetworkParams):
    #: harvest only what changed since the previous finished harvest (if there is one)
    incremental: bool = True


@dataclass(frozen=True)
class HarvestPage(BatchPage[Any]):
    """A page with what storing it needs besides its items."""

    #: the repository's responseDate for this page (the first one becomes the next `from`)
    response_date: str = ""
    #: identifier -> hash of its metadata, for the page's live records
    digests: dict[str, str] = field(default_factory=dict)
    #: those records' blobs, gzipped (hash -> (size, bytes)); both made on the fetching thread
    packed: dict[str, tuple[int, bytes]] = field(default_factory=dict)


_END = object()  # the fetching thread's last word: no more pages


class BadRecord(ShelfworkError):
    """A harvested record that cannot be stored; it is dead-lettered and the run goes on."""

    def __init__(self, network: str, identifier: str | None, problem: str) -> None:
        self.identifier = identifier
        super().__init__(f"network {network}: record {identifier or '(no identifier)'}: {problem}")


class HarvestFailed(ShelfworkError):
    pass


def client_for(network: Network, ctx: StepContext) -> OaiClient:
    """A client within the network's limits, reaching only the addresses the config allows,
    whose waits (Retry-After, backoff) wake up when the job is cancelled."""
    config = oai_config(ctx.engine.settings)
    limits = HarvestLimits.model_validate(network.limits)
    return OaiClient(
        network.base_url,
        method="POST" if network.method == "POST" else "GET",
        timeout=limits.timeout,
        deadline=limits.request_deadline,
        max_bytes=limits.max_page_bytes,
        retries=limits.retries,
        backoff=config.retry_backoff,
        max_wait=limits.max_wait,
        max_total_wait=limits.max_total_wait,
        salvage=True,
        addresses=config.addresses(),
        sleep=ctx.sleep,
    )


def upstream_sets(oai: OaiClient, ctx: StepContext) -> list[list[str]]:
    """The repository's [setSpec, setName] pairs, which shelfwork's provider shows in ListSets
    (exposure.py). Names only label sets: a repository whose ListSets fails is harvested all
    the same, with a warning."""
    try:
        return [[spec, name] for spec, name in oai.list_sets()]
    except RemoteError as exc:
        ctx.warn(f"ListSets failed, so sets keep their specs as names: {exc}")
        return []


def begin(ctx: StepContext) -> dict[str, Any]:
    network = Networks(ctx.engine.store).get(ctx.params.network)
    snapshots = Snapshots(ctx.engine.store)
    with client_for(network, ctx) as oai:
        identify = oai.identify()
        set_names = upstream_sets(oai, ctx)
    previous = snapshots.latest(network.acronym, HARVEST_DONE)
    incremental = bool(ctx.params.incremental and previous is not None and previous.response_date)
    harvest_from = None
    if incremental:
        harvest_from = format_datestamp(
            parse_datestamp(previous.response_date), identify.granularity
        )
    info = {**asdict(identify), "sets": set_names}

    def open_snapshot() -> int:
        return snapshots.create(
            network.acronym,
            incremental=incremental,
            previous_id=previous.id if incremental else None,
            job_id=ctx.job_id,
            harvest_from=harvest_from,
            identify=info,
        )

    snapshot_id = ctx.effect("snapshot", open_snapshot)
    ctx.log.info(
        f"snapshot {snapshot_id}: {'incremental from ' + harvest_from if harvest_from else 'full'}"
        f" harvest of {network.base_url} ({identify.granularity})"
    )
    return {
        "snapshot": snapshot_id,
        "from": harvest_from,
        "granularity": identify.granularity,
        "earliest": identify.earliest_datestamp,
        "incremental": incremental,
    }


def restart_from(harvest_from: str | None, granularity: str, overlap: float) -> str | None:
    """Where a list restarts after its token was refused: the harvest's `from`, less the
    overlap (a full harvest restarts from the beginning)."""
    if harvest_from is None:
        return None
    moment = parse_datestamp(harvest_from) - timedelta(seconds=overlap)
    return format_datestamp(moment, granularity)


def harvest(ctx: StepContext) -> dict[str, Any]:
    started = ctx.results["begin"]
    snapshot_id: int = started["snapshot"]
    network = Networks(ctx.engine.store).get(ctx.params.network)
    config = oai_config(ctx.engine.settings)
    snapshots = Snapshots(ctx.engine.store)
    sets: list[str | None] = list(network.sets) or [None]
    granularity = started["granularity"] or DAY_GRANULARITY
    waiting: list[Record] = []

    def pages(position: Any) -> Any:
        here = position or {"set": 0, "token": None, "from": started["from"], "restarts": 0}
        followed: set[str] = set()
        with client_for(network, ctx) as oai:
            while here is not None:
                set_spec = sets[here["set"]]
                try:
                    if here["token"]:
                        page = oai.next_page(Token(**here["token"]))
                    else:
                        page = oai.list_records(
                            network.metadata_prefix, from_=here["from"], set_=set_spec
                        )
                except BadResumptionToken as exc:
                    here = _restarted(here, exc, started, granularity, config, snapshots)
                    followed.clear()  # a restarted list may hand out the same tokens again
                    continue
                token = page.token
                if token is not None:
                    if token.value in followed:
                        raise RepeatedToken(
                            token.value, method=oai.method, url=oai.base_url, arguments=page.request
                        )
                    followed.add(token.value)
                    after: Any = {**here, "token": asdict(token)}
                elif here["set"] + 1 < len(sets):
                    after = {
                        "set": here["set"] + 1,
                        "token": None,
                        "from": started["from"],
                        "restarts": 0,
                    }
                else:
                    after = None
                total = token.complete_list_size if token is not None and len(sets) == 1 else None
                storable = {
                    r.identifier: r.metadata
                    for r in page.records
                    if r.metadata is not None and len(r.metadata) <= MAX_RECORD_BYTES
                }
                digests = {identifier: digest_of(data) for identifier, data in storable.items()}
                yield HarvestPage(
                    [*page.records, *page.broken],
                    after=after,
                    total=total,
                    response_date=page.response_date,
                    digests=digests,
                    packed=packed_all({digests[i]: data for i, data in storable.items()}),
                )
                here = after

    def ahead(position: Any) -> Any:
        """`pages` (fetching, parsing, hashing, gzipping) run on a thread of their own while
        this one stores the page before (one page ahead; bench/oai.py measures the gain). A
        failure there is raised here, where the step sees it."""
        handed: queue.Queue[Any] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def give(item: Any) -> bool:
            while not stop.is_set():
                try:
                    handed.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for page in pages(position):
                    if not give(page):
                        return
                give(_END)
            except BaseException as exc:  # handed to the step's thread, which raises it
                give(exc)

        fetcher = threading.Thread(target=produce, name=f"oai-fetch-{ctx.job_id}", daemon=True)
        fetcher.start()
        try:
            while True:
                item = handed.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            fetcher.join(timeout=30)

    def take(item: Record | BrokenRecord, _tx: Any) -> None:
        if isinstance(item, BrokenRecord):
            raise BadRecord(network.acronym, item.identifier, item.reason)
        if not item.deleted:
            if item.metadata is None:
                raise BadRecord(network.acronym, item.identifier, "no <metadata> in the record")
            if len(item.metadata) > MAX_RECORD_BYTES:
                raise BadRecord(
                    network.acronym,
                    item.identifier,
                    f"metadata of {len(item.metadata)} bytes is over {MAX_RECORD_BYTES}",
                )
        waiting.append(item)

    def store_page(page: HarvestPage, tx: Any) -> None:
        try:
            latest: dict[str, Record] = {}
            for record in waiting:  # a repository may repeat a record within a page
                latest[record.identifier] = record
            MetadataStore.add_packed(tx, network.acronym, page.packed)
            before = _delivered_before(tx, snapshot_id, list(latest))
            rows = []
            live = deleted = 0
            for record in latest.values():
                digest = None if record.deleted else page.digests[record.identifier]
                # a record this run already delivered (a restarted list, an overlapping set)
                # counts once, in the state it has now
                was = before.get(record.identifier)
                live += (not record.deleted) - (was is False)
                deleted += record.deleted - (was is True)
                rows.append(
                    {
                        "snapshot_id": snapshot_id,
                        "identifier": record.identifier,
                        "datestamp": record.datestamp,
                        "sets": list(record.sets),
                        "deleted": record.deleted,
                        "metadata_hash": digest,
                        "published_hash": None,
                        "published_identifier": None,
                        "valid": None,
                        "transformed": False,
                        "failed_rules": None,
                        "problem": None,
                        "harvested_by": snapshot_id,
                    }
                )
            upsert(tx, records_t, rows, ("snapshot_id", "identifier"))
            stored = {id(record) for record in waiting}
            refused = [item for item in page.items if id(item) not in stored]
            values: dict[str, Any] = {
                "pages": snapshots_t.c.pages + 1,
                "harvested": snapshots_t.c.harvested + live,
                "deleted": snapshots_t.c.deleted + deleted,
                "bad": snapshots_t.c.bad + _newly_refused(tx, ctx, refused),
                "resume": page.after,
            }
            if page.response_date:
                values["response_date"] = _first(page.response_date)
            snapshots.set(snapshot_id, tx, **values)
        finally:
            waiting.clear()

    summary = run_batches(
        ctx,
        ahead,
        take,
        key=lambda item: item.identifier or "(no identifier)",
        max_error_rate=0.5,
        min_items=200,
        after_page=store_page,
        savepoints=False,
    )
    return summary.as_dict()


def _delivered_before(tx: Any, snapshot_id: int, identifiers: list[str]) -> dict[str, bool]:
    """Which of `identifiers` this snapshot's harvest already stored, and whether deleted."""
    if not identifiers:
        return {}
    rows = tx.execute(
        select(records_t.c.identifier, records_t.c.deleted).where(
            records_t.c.snapshot_id == snapshot_id,
            records_t.c.harvested_by == snapshot_id,
            records_t.c.identifier.in_(identifiers),
        )
    ).all()
    return {row.identifier: bool(row.deleted) for row in rows}


def _newly_refused(tx: Any, ctx: StepContext, refused: list[Record | BrokenRecord]) -> int:
    """How many of a page's refused records this harvest had not refused before (by
    identifier; those without one count each time)."""
    keys = {item.identifier for item in refused if item.identifier}
    anonymous = sum(1 for item in refused if not item.identifier)
    if not keys:
        return anonymous
    dead = DeadLetter.__table__
    known = tx.execute(
        select(dead.c.item_key)
        .where(dead.c.job_id == ctx.job_id, dead.c.step == ctx.step, dead.c.item_key.in_(keys))
        .distinct()
    ).all()
    return len(keys) - len(known) + anonymous


def _first(response_date: str) -> Any:
    """Keep the first page's responseDate: later pages must not move the next `from`."""
    return func.coalesce(snapshots_t.c.response_date, response_date)


def _restarted(
    here: dict[str, Any],
    exc: BadResumptionToken,
    started: dict[str, Any],
    granularity: str,
    config: OaiConfig,
    snapshots: Snapshots,
) -> dict[str, Any]:
    if here["restarts"] >= config.max_restarts:
        raise HarvestFailed(
            f"the repository refused resumption tokens {here['restarts'] + 1} times in one "
            f"list; last: {exc}"
        ) from exc
    from_ = restart_from(started["from"], granularity, config.restart_overlap)
    snapshots.log(
        started["snapshot"],
        f"resumption token refused ({describe(exc)}); "
        f"list restarted from {from_ or 'the beginning'}",
        "warning",
    )
    return {**here, "token": None, "from": from_, "restarts": here["restarts"] + 1}


def finish(ctx: StepContext) -> dict[str, Any]:
    started = ctx.results["begin"]
    snapshot_id = started["snapshot"]
    snapshots = Snapshots(ctx.engine.store)
    network = Networks(ctx.engine.store).get(ctx.params.network)
    row = snapshots.get(snapshot_id)
    counts = snapshots.counts(snapshot_id)
    found_nothing = row.harvested == 0 and row.deleted == 0
    nothing_new = started["incremental"] and found_nothing
    # the last finished harvest before this one (this one is still `harvesting`)
    before = snapshots.latest(network.acronym, HARVEST_DONE)
    suspicious = (
        not started["incremental"]
        and found_nothing
        and before is not None
        and before.total > 0
        and not network.on("accept_empty_harvest")
    )
    state = EMPTY if nothing_new else SUSPICIOUS if suspicious else HARVESTED
    snapshots.set(
        snapshot_id, state=state, total=counts["total"], harvested_at=utcnow(), resume=None
    )
    if nothing_new:
        message = "incremental harvest found nothing new"
    else:
        message = (
            f"harvested {row.harvested} records, {row.deleted} deletions, {row.bad} refused, "
            f"in {row.pages} pages; {counts['total']} records in the snapshot"
        )
    snapshots.log(snapshot_id, message)
    if suspicious:
        warning = (
            f"suspicious: this full harvest found no record, but snapshot {before.id} had "
            f"{before.total} records; it is held back (not validated, not indexed, the network's "
            "exposure stays) until an operator confirms it, or the network's "
            "accept_empty_harvest property allows such harvests"
        )
        snapshots.log(snapshot_id, warning, "warning")
        ctx.warn(f"snapshot {snapshot_id}: {warning}")
    if row.bad:
        ctx.warn(f"{row.bad} records could not be stored; they are in the dead letters")
    return {"snapshot": snapshot_id, "state": state, **counts, "bad": row.bad}


def on_failure(ctx: StepContext, exc: BaseException) -> None:
    started = ctx.results.get("begin")
    if not started:
        return
    snapshots = Snapshots(ctx.engine.store)
    row = snapshots.get(started["snapshot"])
    if row.state != "harvesting":
        return  # the harvest itself finished; a later step (the hand-over) failed
    state = HARVEST_STOPPED if isinstance(exc, Cancelled) else HARVEST_FAILED
    snapshots.set(started["snapshot"], state=state, error=describe(exc), finished_at=utcnow())
    snapshots.log(started["snapshot"], f"{state}: {describe(exc)}", "error")


pipeline = Pipeline(
    "oai-harvest",
    params=HarvestParams,
    system="oai",
    description="Harvest a network's OAI-PMH repository into a new snapshot",
    context=network_context,
    steps=[
        step(begin, retry=REMOTE_RETRY),
        step(harvest, retry=REMOTE_RETRY),
        step(finish),
        step(hand_over, retry=HAND_OVER_RETRY),
    ],
    compensate=on_failure,
)
