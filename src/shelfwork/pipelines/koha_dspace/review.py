"""The `dspace-review` tracker: an item deposited into a review workflow has no handle until a
reviewer accepts it, days later perhaps. Polling DSpace here, with backoff, writes the handle to
Koha when the item is archived, so the cataloguer's job could end at once. A reviewer may also
send the item back (XmlWorkflowServiceImpl.sendWorkflowItemBackSubmission: it returns to the
submitter's workspace as a new workspace item); that is written to Koha at once too, so nobody
waits 30 days for a handle that will not come.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...connectors.dspace import InProgress, Item
from ...trackers import Poll, TrackedView, Tracker
from .config import IntegratorConfig, integrator_config
from .marc import (
    STATUS_ERROR,
    STATUS_IMPORTED,
    IntegrationState,
    integration_state,
)
from .pipeline import (
    REVIEW_NOTE,
    REVIEW_TRACKER,
    dspace_client,
    koha_rest,
    parked_note,
    read_record,
    write_integration,
)

if TYPE_CHECKING:
    from ...engine import Engine

IN_REVIEW = "IN_REVIEW"
ARCHIVED = "ARCHIVED"
REJECTED = "REJECTED"
GONE = "GONE"


def review_tracker(engine: Engine) -> Tracker:
    # Called when an engine loads this module: a broken [systems.koha-dspace] stops it at start,
    # not at the first cataloguer's click.
    integrator_config(engine.settings)

    def poll(entity: TrackedView) -> Poll:
        config = integrator_config(engine.settings)
        uuid = entity.data["uuid"]
        n = int(entity.data["biblionumber"])
        where: InProgress | None = None
        with dspace_client(config) as ds:
            ds.login()
            item: Item | None = ds.item(uuid)
            if item is None:
                # The submitter may read its item in review (grantSubmitterReadPolicies), so
                # this is rare; the account's own search (`workspace` configuration) tells a
                # passing failure from an item that is gone.
                own = ds.find_own_submissions(
                    config.identifier_field, f"{config.identifier_prefix}{n}"
                )
                mine = next((s for s in own if s.item.uuid == uuid), None)
                if mine is not None:
                    item = mine.item
                    if mine.stage != "archived" and mine.id is not None:
                        where = InProgress(mine.stage, mine.id)
            elif not item.in_archive:
                where = ds.in_progress(uuid)
        if (
            item is not None
            and not item.in_archive
            and (where is None or where.stage != "workspace")
        ):
            return Poll()  # still in review
        if item is not None and item.in_archive and not item.uri:
            return Poll()
        current = _current_state(config, n)
        if current.uuid and current.uuid != uuid:
            # Someone re-integrated the record meanwhile: Koha now follows that other item.
            return Poll(GONE, f"956$3 of biblio {n} now names DSpace item {current.uuid}")
        if item is None:
            reason = f"DSpace item {uuid} was removed during review (rejected?)"
            write_integration(config, n, status=STATUS_ERROR, message=reason)
            return Poll(GONE, reason)
        if where is not None:  # sent back to the workspace
            note = parked_note(item, where, config.dspace.user, rejected=True)
            write_integration(config, n, status=STATUS_ERROR, message=note, uuid=uuid)
            return Poll(REJECTED, note, {"workspace_item": where.id})
        note = _without_review_note(current.message)
        write_integration(
            config, n, status=STATUS_IMPORTED, message=note, uuid=uuid, handle_url=item.uri
        )
        return Poll(
            ARCHIVED, f"archived as {item.handle}", {"handle": item.handle, "handle_url": item.uri}
        )

    return Tracker(
        REVIEW_TRACKER,
        poll,
        states=[IN_REVIEW, ARCHIVED, REJECTED, GONE],
        final=[ARCHIVED, REJECTED, GONE],
        description=(
            "DSpace items in a review workflow, until archived (then the handle goes to Koha) "
            "or sent back by a reviewer (then that goes to Koha)"
        ),
        profiles={
            "live": {
                IN_REVIEW: {
                    "interval": 300,
                    "factor": 1.5,
                    "max_interval": 6 * 3600,
                    "too_long_after": 30 * 86400,
                }
            },
            "dev": {IN_REVIEW: {"interval": 1, "factor": 1.0, "too_long_after": 3600}},
        },
    )


def _current_state(config: IntegratorConfig, biblionumber: int) -> IntegrationState:
    with koha_rest(config) as koha:
        return integration_state(read_record(koha, biblionumber))


def _without_review_note(note: str | None) -> str | None:
    """The 956$z note minus the review sentence the job wrote (other warnings stay)."""
    if not note:
        return None
    parts = [p for p in note.split("; ") if not p.startswith(REVIEW_NOTE)]
    return "; ".join(parts) or None
