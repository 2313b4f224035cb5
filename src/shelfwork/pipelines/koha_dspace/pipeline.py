"""The `koha-dspace` pipeline: a Koha record's scanned PDF (956$u) becomes a DSpace item, a Koha
cover, and links written back to the record.

    fetch_record -> take_file -> check_file -> ( cover [optional] | deposit [critical] ) -> finalize

- Serial phase: read the record (MARCXML over Koha REST), resolve 956$u inside the inbox only,
  move the file to Processed as <stem>_vNN.pdf (rename-first), check it is a readable PDF.
- Parallel phase: the cover branch renders page 1 and uploads it through Koha's staff pages; its
  failure is a warning. The deposit branch finds or creates the DSpace item; its failure fails the
  job, and the compensation moves the file to the Error folder with a JSON sidecar and writes
  956 $y error / $z reason to Koha when Koha answers.
- Finalize: write 956 $y $z $3 $c and 856 $u, then read the record back and check they stuck.

Re-running a record already integrated (956$y imported, 956$3 an item DSpace still has) changes
nothing: no file is needed, the item is reused, and Koha is written only if a value differs.
An item that lands in a review workflow has no handle yet: the job succeeds with a warning and the
`dspace-review` tracker writes the handle to Koha once the item is archived.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pymarc
from pydantic import BaseModel, ConfigDict, Field

from ...connectors import RemoteUnavailable
from ...connectors.dspace import Deposit, DSpace, InProgress, Item, Upload, rejection_reason
from ...connectors.koha import KohaRest, KohaStaff, opac_cover_url
from ...context import StepContext
from ...errors import ShelfworkError, describe
from ...pipeline import Pipeline, Retry, branch, parallel, step
from ...redaction import redact_url
from ...trackers import TrackerError
from .config import SYSTEM, IntegratorConfig, integrator_config
from .crosswalk import crosswalk, load_rules
from .files import (
    FileChanged,
    Fingerprint,
    Folders,
    MissingFile,
    StillBeingWritten,
    claim_into,
    fingerprint_of,
    move_to_error,
    open_in_folder,
    open_in_inbox,
)
from .marc import (
    MAX_NOTE,
    STATUS_ERROR,
    STATUS_IMPORTED,
    check_marked,
    file_reference,
    integration_state,
    item_uuid,
    mark_integration,
    parse_marcxml,
    title_of,
    to_marcxml,
)
from .pdf import check_pdf, render_cover

#: the start of the 956$z note while an item waits in DSpace's review workflow
REVIEW_NOTE = "awaiting review in DSpace"
#: the deposit checkpoint while a workspace item is being created (its id not yet known)
CREATING = "creating"
#: how many times a run that died while creating an item looks for it before making another
CREATING_LOOKS = 3
#: how long a deposit waits for another job's workspace creation (one or two HTTP calls)
WORKSPACE_LOCK_WAIT = 120.0


def workspace_lock(url: str, user: str) -> str:
    """The lock one DSpace account's workspace creations take, named without the credentials a
    URL may carry: lock lists show the name, and LockHeld puts it into a job's error."""
    return f"dspace-workspace:{redact_url(url)}:{user}"


class IntegrationError(ShelfworkError):
    """The record cannot be integrated as it is; the message says what a cataloguer should fix."""

    def __init__(self, biblionumber: int, message: str) -> None:
        self.biblionumber = biblionumber
        super().__init__(f"biblio {biblionumber}: {message}")


class NotStored(IntegrationError):
    """Koha answered the PUT but did not keep the fields (a record overlay rule, or a framework
    without these subfields)."""


class Biblio(BaseModel):
    model_config = ConfigDict(extra="forbid")

    biblionumber: int = Field(ge=1, le=2**31 - 1, description="Koha biblionumber")


# Only a passing fault is worth another try; a refusal would be repeated.
REMOTE_RETRY = Retry(attempts=4, delay=1.0, factor=2.0, max_delay=15.0, on=(RemoteUnavailable,))
# The seed's "3 tries 1 s apart", for passing faults only: retrying a refused staff login would
# spend Koha's FailedLoginAttempts and could lock the account the REST calls use too.
COVER_RETRY = Retry(attempts=3, delay=1.0, factor=1.0, on=(RemoteUnavailable,))


_STEP_PREFIX = re.compile(
    r"^(?:(?:critical|optional) branch '(?P<branch>[^']+)' failed: )?"
    r"step '(?P<step>[^']+)' failed after (?P<n>\d+) attempt\(s\): ",
)
# the request a remote error names, "(GET <url> -> HTTP nnn)", or "(GET <url>)" when it got no
# answer: the URL is internal, the status is kept
_REQUEST = re.compile(r" \((?:GET|POST|PUT|PATCH|DELETE) \S+(?: -> (HTTP \d+))?\)")
# what a remote error quotes of the answer, after "(HTTP nnn): ", to the end: for the job only
_ANSWER = re.compile(r"(\(HTTP \d+\)): .*$", re.S)
# addresses left in a message: URLs and IPv4 addresses (with a port), and server paths (only
# the file's own name is kept)
_ADDRESS = re.compile(
    r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>()]+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
)
_PATH = re.compile(r"(?<![\w.~:/\]])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def short_note(text: str) -> str:
    """A job error or warning as a cataloguer reads it in 956$z (which holds about 250
    characters and every cataloguer reads): the step and the pipeline's own words, without the
    engine's wording, internal addresses (URLs, IP addresses, server paths) or what a remote
    answered (its stack trace or database host); the job keeps those for the administrator."""
    match = _STEP_PREFIX.match(text)
    if match:
        tries = int(match["n"])
        where = match["branch"] or match["step"]
        text = f"{where}{f' ({tries} tries)' if tries > 1 else ''}: {text[match.end() :]}"
    text = _REQUEST.sub(lambda m: f" ({m[1]})" if m[1] else "", text)
    text = _ANSWER.sub(r"\1", text)
    return _PATH.sub(r"\1", _ADDRESS.sub("[address]", text))


# --- remotes ------------------------------------------------------------------------------------


def koha_rest(config: IntegratorConfig) -> KohaRest:
    koha = config.koha
    if koha.auth == "oauth2":
        assert koha.client_id and koha.client_secret  # checked by the config model
        return KohaRest(
            koha.url,
            client_credentials=(koha.client_id, koha.client_secret.get_secret_value()),
            timeout=koha.timeout,
        )
    assert koha.user and koha.password
    return KohaRest(
        koha.url, basic=(koha.user, koha.password.get_secret_value()), timeout=koha.timeout
    )


def dspace_client(config: IntegratorConfig) -> DSpace:
    ds = config.dspace
    return DSpace(ds.url, ds.user, ds.password.get_secret_value(), timeout=ds.timeout)


def read_record(koha: KohaRest, biblionumber: int) -> pymarc.Record:
    """The record as Koha holds it now, parsed as untrusted input."""
    return parse_marcxml(koha.get_marcxml(biblionumber), biblionumber=biblionumber)


def write_integration(
    config: IntegratorConfig,
    biblionumber: int,
    *,
    status: str,
    message: str | None,
    uuid: str | None = None,
    cover_url: str | None = None,
    handle_url: str | None = None,
) -> bool:
    """Read the record, set 956/856, PUT it if anything changed, and check Koha kept it.

    A PUT replaces the whole record and nothing guards a concurrent edit, so the record is read
    just before it is written. Returns whether a PUT was made.
    """
    with koha_rest(config) as koha:
        record = read_record(koha, biblionumber)
        before = integration_state(record)
        mark_integration(
            record,
            status=status,
            message=message,
            uuid=uuid,
            cover_url=cover_url,
            handle_url=handle_url,
        )
        wanted = integration_state(record)
        if wanted == before:
            return False
        koha.put_marcxml(biblionumber, to_marcxml(record))
        stored = read_record(koha, biblionumber)
        problems = check_marked(stored, wanted)
        if problems:
            raise NotStored(
                biblionumber,
                "Koha accepted the update but did not keep it: "
                + "; ".join(problems)
                + " (a record overlay rule, or a framework without these subfields?)",
            )
        return True


# --- steps --------------------------------------------------------------------------------------


def fetch_record(ctx: StepContext) -> dict[str, Any]:
    """Read the record from Koha and work out what there is to do."""
    config = integrator_config(ctx.engine.settings)
    n: int = ctx.params.biblionumber  # type: ignore[attr-defined]
    ctx.progress(0, 5, f"reading biblio {n} from Koha", force=True)
    with koha_rest(config) as koha:
        record = read_record(koha, n)
    state = integration_state(record)
    uuid = item_uuid(record)
    integrated = state.status == STATUS_IMPORTED and uuid is not None
    reference = file_reference(record)
    if not integrated and not reference:
        raise IntegrationError(n, "the record has no 956$u naming the scanned file")
    metadata = crosswalk(record, load_rules(config.crosswalk))
    identifier = f"{config.identifier_prefix}{n}"
    values = metadata.setdefault(config.identifier_field, [])
    if identifier not in values:
        values.append(identifier)
    if not metadata.get("dc.title"):
        raise IntegrationError(n, "the record has no title (245$a); DSpace needs dc.title")
    return {
        "biblionumber": n,
        "title": title_of(record),
        "file": reference,
        "uuid": uuid,
        "status": state.status,
        "note": state.message,
        "cover_url": state.cover_url,
        "handle_urls": list(state.handle_urls),
        "integrated": integrated,
        "identifier": identifier,
        "metadata": metadata,
    }


def take_file(ctx: StepContext) -> dict[str, Any]:
    """Open the file 956$u names inside the inbox, record its SHA-256, and move it to Processed
    under a new version name, all through descriptors opened once (see files.py)."""
    config = integrator_config(ctx.engine.settings)
    record = ctx.results["fetch_record"]
    n = record["biblionumber"]
    if record["integrated"]:
        return {"skipped": f"already integrated as DSpace item {record['uuid']}"}
    Folders.from_config(config).ensure()
    ctx.progress(1, 5, f"taking {record['file']}", force=True)
    claimed = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else None
    try:
        with open_in_inbox(config.inbox, record["file"]) as scan:
            found = _settled(ctx, config, scan.fingerprint)
            ctx.save_checkpoint(
                {
                    "source": record["file"],
                    "stem": Path(scan.name).stem,
                    "md5": found.md5,
                    "sha256": found.sha256,
                    "size": found.size,
                }
            )
            target = claim_into(scan, config.processed)
    except MissingFile:
        # A run that died between the move and its checkpoint: the file is already in
        # Processed; find it by the size and checksum recorded before the move.
        if claimed:
            earlier = _claimed_earlier(config.processed, claimed)
            if earlier is not None:
                ctx.log.info(f"resumed: {record['file']} was already moved to {earlier.name}")
                return _taken(earlier, fingerprint_of(earlier), record["file"])
        if record["uuid"]:
            # A re-run after a failed one (956$y error, the scan in Error): 956$3 still names
            # the item, which the deposit step reuses; no file is needed for that.
            return {"skipped": f"no file in the inbox; 956$3 names DSpace item {record['uuid']}"}
        raise
    ctx.log.info(f"biblio {n}: {record['file']} moved to Processed as {target.name}")
    return _taken(target, found, record["file"])


def _settled(
    ctx: StepContext, config: IntegratorConfig, fingerprint: Callable[[], Fingerprint]
) -> Fingerprint:
    """The file's fingerprint once it holds still for a whole read (a copy may be arriving):
    tried `pdf_tries` times, `pdf_retry_delay` seconds apart."""
    for attempt in range(config.pdf_tries):
        try:
            return fingerprint()
        except StillBeingWritten:
            if attempt == config.pdf_tries - 1:
                raise
            ctx.sleep(config.pdf_retry_delay)
    raise AssertionError("unreachable: pdf_tries is at least 1")


def _taken(path: Path, found: Fingerprint, source: str) -> dict[str, Any]:
    return {
        "path": str(path),
        "name": path.name,
        "md5": found.md5,
        "sha256": found.sha256,
        "size": found.size,
        "source": source,
    }


def _claimed_earlier(processed: Path, claimed: dict[str, Any]) -> Path | None:
    candidates = sorted(processed.glob(f"{glob.escape(claimed['stem'])}_v*.pdf"), reverse=True)
    for path in candidates:
        if path.stat().st_size != claimed["size"]:
            continue
        try:
            found = fingerprint_of(path)
        except ShelfworkError:  # gone, a symlink, or changing: not the file claimed
            continue
        if found.md5 == claimed["md5"] and found.sha256 == claimed.get("sha256", found.sha256):
            return path
    return None


def same_as_taken(taken: dict[str, Any], sha256: str) -> None:
    """FileChanged unless `sha256` is that of the file take_file took.

    The file in Processed could have been replaced, or written to by a copier that still held
    it open; either way it is not what was found in the inbox, and is not deposited."""
    expected = taken.get("sha256")
    if expected is None:  # a result recorded before take_file recorded SHA-256
        return
    if sha256 != expected:
        raise FileChanged(
            taken["source"],
            "changed after it was taken",
            f"{taken['name']} is not the file taken from the inbox as {taken['source']}: its "
            f"content changed afterwards (SHA-256 {sha256[:12]}…, taken as {expected[:12]}…; "
            "was it still being copied?), so it is not deposited. Put the whole scan in the "
            "inbox again and re-run",
        )


def check_file(ctx: StepContext) -> dict[str, Any]:
    """Check the file is a readable PDF (tries again a few times: it may still be being copied)
    and is the very file take_file took."""
    config = integrator_config(ctx.engine.settings)
    taken = ctx.results["take_file"]
    if "path" not in taken:
        return {"skipped": taken["skipped"]}
    ctx.progress(2, 5, f"checking {taken['name']}", force=True)
    info = check_pdf(
        Path(taken["path"]),
        tries=config.pdf_tries,
        delay=config.pdf_retry_delay,
        sleep=ctx.sleep,
    )
    same_as_taken(taken, info.sha256)
    return {"pages": info.pages, "size": info.size, "md5": info.md5, "sha256": info.sha256}


def cover(ctx: StepContext) -> dict[str, Any]:
    """Render page 1 to JPEG and attach it to the record as its local cover."""
    config = integrator_config(ctx.engine.settings)
    record = ctx.results["fetch_record"]
    n = record["biblionumber"]
    taken = ctx.results["take_file"]
    if not config.cover:
        return {"skipped": "covers are off (cover = false)", "cover_url": record["cover_url"]}
    if "path" not in taken:
        return {"skipped": taken["skipped"], "cover_url": record["cover_url"]}
    jpeg = render_cover(Path(taken["path"]), width=config.cover_width)
    login = config.koha.staff_login
    if login is None:
        raise IntegrationError(n, "no staff login for covers (staff_user / staff_password)")
    with KohaStaff(config.koha.staff_root, *login, timeout=config.koha.timeout) as staff:
        staff.login()
        imagenumber = staff.upload_cover(n, jpeg, f"{Path(taken['name']).stem}.jpg")
    url = opac_cover_url(config.koha.opac_url, imagenumber=imagenumber, biblionumber=n)
    if imagenumber is None:
        ctx.log.warning(f"biblio {n}: no image number in Koha's answer; cover URL by biblionumber")
    return {"cover_url": url, "imagenumber": imagenumber, "bytes": len(jpeg)}


def deposit(ctx: StepContext) -> dict[str, Any]:
    """Find the record's DSpace item (956$3, then the identifier), or create it with the file."""
    config = integrator_config(ctx.engine.settings)
    record = ctx.results["fetch_record"]
    n = record["biblionumber"]
    taken = ctx.results["take_file"]
    checkpoint: dict[str, Any] = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
    # A creation this job started goes on from its checkpoint: looking the item up first would
    # find an admin-path item that has no file yet and take it for finished.
    resume = checkpoint if checkpoint.get("stage") not in (None, CREATING) else None
    with dspace_client(config) as ds, ExitStack() as held:
        ds.login()
        if resume is None:
            found = _find_existing(ctx, ds, config, record)
            # A run that died while creating may have made the item, and a search index can
            # lag behind a new item [U]: look again a few times before making another.
            for _ in range(CREATING_LOOKS - 1 if checkpoint.get("stage") == CREATING else 0):
                if found is not None:
                    break
                ctx.sleep(1.0)
                found = _find_existing(ctx, ds, config, record)
            if found is not None:
                item, how = found
                if not (
                    config.dspace.deposit == "admin"
                    and "path" in taken
                    and not ds.item_bitstreams(item.uuid)
                ):
                    return _existing(item, how)
                # An item with no file: this job's admin-path item from a run that died before
                # recording it, or someone's empty record. Either way it gets the scan.
                ctx.log.info(f"biblio {n}: DSpace item {item.uuid} has no file; adding it")
                resume = {"path": "admin", "stage": "item", "item": item.uuid}
        if "path" not in taken:
            raise IntegrationError(
                n,
                f"956$3 names DSpace item {record['uuid']}, which DSpace no longer has, and "
                "there is no scan to deposit again; put the PDF back in the inbox and clear "
                "956$3 and 956$y to integrate it again",
            )
        ctx.progress(3, 5, "depositing in DSpace", force=True)
        # B1: what is uploaded is read from the descriptor just checked to hold the file
        # take_file took (its name in Processed is not looked up again), and DSpace's copy must
        # have that content's MD5, checked right after the upload
        scan = held.enter_context(open_in_folder(Path(taken["path"])))
        found = scan.fingerprint()
        same_as_taken(taken, found.sha256)
        file, name = held.enter_context(scan.reader()), taken["name"]
        if config.dspace.deposit == "submission" and resume is None:
            result = _create_by_submission(
                ctx,
                ds,
                config,
                record["metadata"],
                file,
                name,
                md5=found.md5,
                adopt=checkpoint.get("path") == "submission",
            )
        else:
            if resume is None:  # admin path: the item exists before its id is known here
                ctx.save_checkpoint({"path": "admin", "stage": CREATING})
            create = (
                ds.create_by_submission
                if config.dspace.deposit == "submission"
                else ds.create_as_admin
            )
            result = create(
                config.dspace.collection,
                record["metadata"],
                file,
                name,
                md5=found.md5,
                progress=lambda stage, data: ctx.save_checkpoint(data),
                resume=resume,
            )
    checked = ctx.results["check_file"]
    if result.bitstream.md5 and result.bitstream.md5 != checked["md5"]:
        raise IntegrationError(
            n,
            f"DSpace stored {taken['name']} with MD5 {result.bitstream.md5}, "
            f"the file has {checked['md5']}",
        )
    item = result.item
    return {
        "uuid": item.uuid,
        "handle": item.handle,
        "handle_url": item.uri,
        "in_review": result.in_workflow or not item.in_archive,
        "bitstream": result.bitstream.uuid,
        "md5": result.bitstream.md5,
        "found_by": None,
    }


def _existing(item: Item, how: str) -> dict[str, Any]:
    return {
        "uuid": item.uuid,
        "handle": item.handle,
        "handle_url": item.uri,
        "in_review": not item.in_archive,
        "bitstream": None,
        "md5": None,
        "found_by": how,
    }


def _find_existing(
    ctx: StepContext, ds: DSpace, config: IntegratorConfig, record: dict[str, Any]
) -> tuple[Item, str] | None:
    """B3: the item named in 956$3 if DSpace still has it, else one carrying the identifier:
    archived (public search), or this account's own, in review (its `workspace` search).

    An item back in this account's DSpace workspace (a reviewer sent it back, or it was never
    deposited) is neither reused nor duplicated: the job stops and says where it is."""
    n = record["biblionumber"]
    if record["uuid"]:
        item = ds.item(record["uuid"])
        if item is not None and not item.withdrawn:
            if not item.in_archive:
                where = ds.in_progress(item.uuid)
                if where is not None and where.stage == "workspace":
                    raise IntegrationError(n, parked_note(item, where, config.dspace.user))
            return item, "956$3"
        ctx.log.warning(
            f"biblio {n}: 956$3 names DSpace item {record['uuid']}, which DSpace "
            + ("has withdrawn" if item is not None else "does not have")
            + "; looking it up by identifier"
        )
    found = ds.find_by_metadata(config.identifier_field, record["identifier"])
    live = [item for item in found if not item.withdrawn]
    if not live:
        # Items in review or in a workspace are not in the public index; the account's own
        # search (DSpace's `workspace` configuration) lists them with their stage.
        own = [
            s
            for s in ds.find_own_submissions(config.identifier_field, record["identifier"])
            if not s.item.withdrawn
        ]
        live = [s.item for s in own if s.stage != "workspace"]
        parked = [s for s in own if s.stage == "workspace" and s.id is not None]
        if not live and parked:
            where = InProgress("workspace", int(parked[0].id or 0))
            raise IntegrationError(n, parked_note(parked[0].item, where, config.dspace.user))
    if not live:
        return None
    if len(live) > 1:
        ctx.warn(
            f"{len(live)} DSpace items carry {config.identifier_field} = "
            f"{record['identifier']}: {', '.join(i.uuid for i in live)}; using the first"
        )
    return live[0], f"{config.identifier_field} search"


#: how much of a reviewer's reason goes into 956$z at most
REASON_CHARS = 60
#: what a failed job's note puts first ("dspace: biblio <n>: ", see short_note)
JOB_NOTE_PREFIX = len("dspace: biblio 2147483647: ")


def parked_note(item: Item, where: InProgress, user: str, *, rejected: bool = False) -> str:
    """What a cataloguer reads when the record's item waits in the DSpace account's workspace:
    sent back by a reviewer (XmlWorkflowServiceImpl.returnToWorkspace; the reason when DSpace
    shows the provenance note) or never deposited. The item stays there for a person to decide;
    either way the next step is to integrate again (a re-deposited item is then followed in
    review again). The item is 956$3's; the reason is cut so that what to do fits 956$z."""
    place = f"in {user}'s DSpace workspace as workspace item {where.id}"
    reason = rejection_reason(item)
    if reason is None and not rejected:
        return (
            f"not deposited in DSpace: {place}; deposit or discard it there, then integrate again"
        )
    tail = f"; back {place}: deposit it again there or discard it, then integrate again"
    head = "rejected in DSpace review"
    room = min(REASON_CHARS, MAX_NOTE - JOB_NOTE_PREFIX - len(head) - len(tail) - 2)
    if reason and room >= 12:
        if len(reason) > room:
            reason = reason[: room - 1].rstrip() + "…"
        head += f": {reason}"
    return head + tail


def _create_by_submission(
    ctx: StepContext,
    ds: DSpace,
    config: IntegratorConfig,
    metadata: dict[str, list[str]],
    file: Upload,
    name: str,
    *,
    md5: str,
    adopt: bool,
) -> Deposit:
    """Create through a workspace item, never leaving one behind if the run is killed.

    DSpace creates the workspace item before the job can record its id, so a kill in between
    leaves an empty one. Creating and recording are therefore done under one lock per DSpace
    account; a run that finds it died there (`adopt`) takes, under that lock, an empty workspace
    item of its collection that no job has recorded: every such item is an orphan, and all
    orphans are alike, so any one will do.
    """
    locks = ctx.engine.locks
    name_of_lock = workspace_lock(config.dspace.url, config.dspace.user)
    locks.acquire(
        name_of_lock,
        ctx.owner,
        ttl=ctx.engine.settings.lease_ttl,
        wait=WORKSPACE_LOCK_WAIT,
        job_id=ctx.job_id,
    )
    held = True

    def release() -> None:
        nonlocal held
        if held:
            locks.release(name_of_lock, ctx.owner)
            held = False

    def progress(stage: str, data: dict[str, Any]) -> None:
        ctx.save_checkpoint(data)
        if stage == "workspace":
            release()

    try:
        resume: dict[str, Any] | None = None
        if adopt:
            orphan = _orphan_workspace(ctx, ds, config.dspace.collection)
            if orphan is not None:
                resume = {
                    "path": "submission",
                    "stage": "workspace",
                    "id": orphan,
                    "item": ds.workspace_item_uuid(orphan),
                }
                ctx.save_checkpoint(resume)
                ctx.log.info(f"took over empty workspace item {orphan} left by a killed run")
                release()
        if resume is None:
            ctx.save_checkpoint({"path": "submission", "stage": CREATING})
        return ds.create_by_submission(
            config.dspace.collection,
            metadata,
            file,
            name,
            md5=md5,
            progress=progress,
            resume=resume,
        )
    finally:
        release()


def _orphan_workspace(ctx: StepContext, ds: DSpace, collection: str) -> int | None:
    recorded = {
        checkpoint["id"]
        for checkpoint in ctx.engine.jobs.checkpoints("deposit")
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("id"), int)
    }
    orphans = [
        ws.id
        for ws in ds.own_workspace_items()
        if ws.empty and ws.collection == collection and ws.id not in recorded
    ]
    return max(orphans) if orphans else None


def finalize(ctx: StepContext) -> dict[str, Any]:
    """Write status, note, item UUID, cover URL and handle URL to Koha and check they stuck."""
    config = integrator_config(ctx.engine.settings)
    record = ctx.results["fetch_record"]
    n = record["biblionumber"]
    item = ctx.results["deposit"]
    outcome = ctx.branches.get("cover")
    cover_url = record["cover_url"]
    if outcome is not None and outcome.state == "succeeded" and outcome.result:
        cover_url = outcome.result.get("cover_url") or cover_url
    if item["in_review"]:
        said = any(REVIEW_NOTE in str(w) for w in ctx.engine.jobs.get(ctx.job_id).warnings)
        if not said:  # a retried or resumed finalize says it once
            ctx.warn(
                f"{REVIEW_NOTE}: item {item['uuid']} has no handle until it is archived, "
                "then it is written here"
            )
        _follow_review(ctx, n, item["uuid"])
    job = ctx.engine.jobs.get(ctx.job_id)
    notes = [
        short_note(str(w["message"]))
        for w in job.warnings
        if isinstance(w, dict) and w.get("message")
    ]
    message = "; ".join(notes) or None
    if message is None and record["integrated"]:
        message = record["note"]  # a re-run with nothing new to say leaves the note alone
    ctx.progress(4, 5, "writing links to Koha", force=True)
    written = write_integration(
        config,
        n,
        status=STATUS_IMPORTED,
        message=message,
        uuid=item["uuid"],
        cover_url=cover_url,
        handle_url=item["handle_url"],
    )
    ctx.progress(5, 5, "done", force=True)
    return {
        "biblionumber": n,
        "title": record["title"],
        "uuid": item["uuid"],
        "handle_url": item["handle_url"],
        "cover_url": cover_url,
        "in_review": item["in_review"],
        "koha_updated": written,
        "file": ctx.results["take_file"].get("name"),
    }


def _follow_review(ctx: StepContext, biblionumber: int, uuid: str) -> None:
    """Have the `dspace-review` tracker follow the item (one entity per item). An entity that
    ended, typically REJECTED, is set back to IN_REVIEW: the item was deposited again in DSpace
    after the rejection, and its handle must still reach Koha."""
    trackers = ctx.engine.trackers
    by = f"job:{ctx.job_id}"
    tracked = trackers.track(
        REVIEW_TRACKER, uuid, "IN_REVIEW", {"biblionumber": biblionumber, "uuid": uuid}, by=by
    )
    if tracked.state == "IN_REVIEW":
        return
    try:
        trackers.transition(tracked, "IN_REVIEW", "in DSpace review again", by=by)
    except TrackerError:
        if trackers.get(REVIEW_TRACKER, uuid).state != "IN_REVIEW":  # not a concurrent re-arm
            raise


def on_failure(ctx: StepContext, exc: BaseException) -> None:
    """Keep the file for a person (Processed -> Error, with a JSON sidecar) and tell Koha why."""
    config = integrator_config(ctx.engine.settings)
    n: int = ctx.params.biblionumber  # type: ignore[attr-defined]
    reason = describe(exc)
    taken = ctx.results.get("take_file") or {}
    path = Path(taken["path"]) if taken.get("path") else None
    if path is not None and path.exists():
        moved = move_to_error(
            path,
            config.error,
            {
                "job": ctx.job_id,
                "pipeline": ctx.pipeline,
                "biblionumber": n,
                "source": taken.get("source"),
                "error": reason,
            },
        )
        ctx.log.warning(  # viewers read the log: the file's name, not the server's folders
            f"biblio {n}: {path.name} moved to the Error folder as {moved.name} "
            "(see its .error.json)"
        )
    record = ctx.results.get("fetch_record") or {}
    deposited = ctx.results.get("deposit") or {}
    uuid = deposited.get("uuid") or record.get("uuid")
    # A record already integrated stays so: a failed re-run (DSpace down, a cancel) must not
    # turn a good record into one that asks for a file it no longer has.
    status = STATUS_IMPORTED if record.get("integrated") else STATUS_ERROR
    try:
        write_integration(config, n, status=status, message=short_note(reason), uuid=uuid)
    except Exception as koha_exc:  # Koha down or the record unreadable: the job keeps the reason
        ctx.log.warning(f"biblio {n}: could not write the error to Koha: {describe(koha_exc)}")


REVIEW_TRACKER = "dspace-review"

integrate = Pipeline(
    SYSTEM,
    params=Biblio,
    system=SYSTEM,
    description="Koha record + scanned PDF (956$u) -> DSpace item, Koha cover, links in Koha",
    context=lambda p: f"biblio:{p.biblionumber}",
    dedup=lambda p: f"{SYSTEM}:{p.biblionumber}",
    steps=[
        step(fetch_record, retry=REMOTE_RETRY),
        step(take_file),
        step(check_file),
        parallel(
            branch("cover", step(cover, name="upload_cover", retry=COVER_RETRY), critical=False),
            branch("dspace", step(deposit, retry=REMOTE_RETRY)),
            name="cover+dspace",
        ),
        step(finalize, retry=REMOTE_RETRY),
    ],
    compensate=on_failure,
)
