"""The CLEAN action's pipeline, `oai-clean`: keep the last good known and the latest snapshot,
delete the others, then the metadata blobs nothing refers to any more.

It runs in the network's context, so no harvest of the network writes blobs meanwhile.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, union

from ...context import StepContext
from ...pipeline import Pipeline, step
from .actions import HAND_OVER_RETRY, NetworkParams, hand_over, network_context
from .snapshots import Networks, Snapshots, entries_t, records_t, snapshots_t
from .storage import MetadataStore


def clean(ctx: StepContext) -> dict[str, Any]:
    network = Networks(ctx.engine.store).get(ctx.params.network).acronym
    snapshots = Snapshots(ctx.engine.store)
    keep = {row.id for row in snapshots.list(network, limit=1)}
    good = snapshots.last_good(network)
    if good is not None:
        keep.add(good.id)
    kept = select(snapshots_t.c.id).where(snapshots_t.c.network == network)
    referenced = union(
        select(records_t.c.metadata_hash.label("h")).where(records_t.c.snapshot_id.in_(kept)),
        select(records_t.c.published_hash.label("h")).where(records_t.c.snapshot_id.in_(kept)),
        select(entries_t.c.published_hash.label("h")).where(entries_t.c.network == network),
    ).subquery()
    # NOT IN over a list holding NULL would keep everything: the NULLs are left out
    used = select(referenced.c.h).where(referenced.c.h.is_not(None))
    with ctx.engine.store.write() as conn:
        doomed = Snapshots.delete(
            conn, (snapshots_t.c.network == network) & snapshots_t.c.id.not_in(keep or {-1})
        )
        removed = MetadataStore.remove_unreferenced(conn, network, used)
    for snapshot_id in keep:
        snapshots.log(
            snapshot_id,
            f"clean: {len(doomed)} snapshots deleted ({', '.join(map(str, doomed)) or 'none'}), "
            f"{removed} unused metadata blobs removed",
        )
    return {"kept": sorted(keep), "deleted": doomed, "blobs_removed": removed}


pipeline = Pipeline(
    "oai-clean",
    params=NetworkParams,
    system="oai",
    description="Delete a network's snapshots but the last good known and the latest",
    context=network_context,
    steps=[step(clean), step(hand_over, retry=HAND_OVER_RETRY)],
)
