"""OAI-PMH networks: definitions, actions run by hand, snapshots and their diagnose.

Networks from the config file are read-only here (409 says to change the file); networks made
through the API are created, changed and deleted here, and their cron becomes the schedule
`oai:<acronym>`. A base_url into the server's own network (loopback, private, link-local...) is
refused unless `[systems.oai] allow_private_hosts` lists it. Running an action submits an
`oai-run` job in the network's context; a full queue is a 429, never a silent drop. A suspicious
snapshot (an empty full harvest where the one before had records) is confirmed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from ..errors import ConfigError, ShelfworkError
from .auth import Operator, Viewer
from .errors import ApiError, responses
from .jobs import engine_of

if TYPE_CHECKING:
    from ..engine import Engine

router = APIRouter(prefix="/oai", tags=["oai"])
Acronym = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


def _oai(request: Request) -> Any:
    """The OAI package, or a 404 when this server does not run it."""
    engine = engine_of(request)
    if "oai-run" not in engine.registry:
        raise ApiError(
            404,
            "not_enabled",
            "OAI-PMH harvesting is not enabled here: list shelfwork.pipelines.oai under "
            "[pipelines] modules",
        )
    from ..pipelines import oai

    return oai


class NetworkIn(BaseModel):
    name: str = Field(min_length=1, max_length=300)
    base_url: str
    metadata_prefix: str = "oai_dc"
    sets: list[str] = Field(default_factory=list)
    cron: str | None = None
    timezone: str = "UTC"
    method: str = "GET"
    properties: dict[str, bool] = Field(default_factory=dict)
    validation: str | None = None
    transformation: str | None = None
    #: what one request to the repository may take (max_page_bytes, request_deadline, timeout,
    #: retries, max_wait, max_total_wait); missing keys take the defaults
    limits: dict[str, float | int] = Field(default_factory=dict)


class NetworkOut(BaseModel):
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
    #: the limits in force, defaults filled in
    limits: dict[str, float | int]
    origin: str
    last_good: int | None = None
    latest: dict[str, Any] | None = None


class SnapshotOut(BaseModel):
    id: int
    network: str
    state: str
    incremental: bool
    previous_id: int | None
    job_id: int | None
    harvest_from: str | None
    response_date: str | None
    granularity: str | None
    pages: int
    harvested: int
    deleted: int
    total: int
    valid: int
    invalid: int
    transformed: int
    bad: int
    ruleset: str | None
    error: str | None
    started_at: Any
    harvested_at: Any | None
    validated_at: Any | None
    finished_at: Any | None


SNAPSHOT_FIELDS = tuple(SnapshotOut.model_fields)


def snapshot_out(row: Any) -> SnapshotOut:
    return SnapshotOut(**{name: getattr(row, name) for name in SNAPSHOT_FIELDS})


def _network_out(request: Request, network: Any) -> NetworkOut:
    oai = _oai(request)
    snapshots = oai.snapshots.Snapshots(engine_of(request).store)
    good = snapshots.last_good(network.acronym)
    latest = snapshots.list(network.acronym, limit=1)
    values = {k: getattr(network, k) for k in NetworkIn.model_fields}
    values["limits"] = oai.config.HarvestLimits.model_validate(network.limits).model_dump()
    return NetworkOut(
        **values,
        acronym=network.acronym,
        origin=network.origin,
        last_good=good.id if good else None,
        latest=snapshot_out(latest[0]).model_dump(mode="json") if latest else None,
    )


def _get(request: Request, acronym: str) -> Any:
    oai = _oai(request)
    try:
        return oai.Networks(engine_of(request).store).get(acronym)
    except oai.snapshots.UnknownNetwork as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/networks", response_model=list[NetworkOut], responses=responses(401, 403, 404, 422))
def list_networks(request: Request, _who: Viewer) -> list[NetworkOut]:
    oai = _oai(request)
    return [_network_out(request, n) for n in oai.Networks(engine_of(request).store).list()]


@router.get(
    "/networks/{acronym}", response_model=NetworkOut, responses=responses(401, 403, 404, 422)
)
def get_network(request: Request, acronym: Acronym, _who: Viewer) -> NetworkOut:
    return _network_out(request, _get(request, acronym))


@router.put(
    "/networks/{acronym}",
    response_model=NetworkOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Create or change a network (not one from the config file)",
)
def put_network(request: Request, acronym: Acronym, body: NetworkIn, _who: Operator) -> NetworkOut:
    oai = _oai(request)
    engine = engine_of(request)
    try:
        config = oai.config.NetworkConfig(acronym=acronym, **body.model_dump())
        oai.config_for(engine).addresses().check_url(config.base_url)
        network = oai.Network(**config.model_dump(), origin="api")
        oai.check_rule_files(engine, network)
        known = set(oai.config_for(engine).known_properties())
        unknown = sorted(set(config.properties) - known)
        if unknown:
            raise ConfigError(f"unknown properties {unknown}; known: {sorted(known)}")
        saved, _created = oai.Networks(engine.store).put(config)
        oai.schedule_network(engine, saved)
    except oai.snapshots.NetworkOwnedByConfig as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except ValueError as exc:  # pydantic's ValidationError is one
        raise ApiError(422, "invalid", str(exc)) from None
    except ShelfworkError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return _network_out(request, saved)


@router.delete("/networks/{acronym}", status_code=204, responses=responses(401, 403, 404, 409, 422))
def delete_network(request: Request, acronym: Acronym, _who: Operator) -> None:
    oai = _oai(request)
    engine = engine_of(request)
    network = _get(request, acronym)
    try:
        oai.Networks(engine.store).delete(network.acronym)
    except oai.snapshots.NetworkOwnedByConfig as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    oai.schedule_network(engine, oai.Network(**{**network.__dict__, "cron": None}))


class RunOut(BaseModel):
    job_id: int
    created: bool
    actions: list[str]


@router.get("/actions", responses=responses(401, 403, 404, 422))
def list_actions(request: Request, _who: Viewer) -> list[dict[str, Any]]:
    oai = _oai(request)
    return [a.model_dump(mode="json") for a in oai.config_for(engine_of(request)).actions]


@router.post(
    "/networks/{acronym}/run",
    status_code=202,
    response_model=RunOut,
    responses=responses(401, 403, 404, 422, 429),
    summary="Run actions now: the ones named, in order, or the network's scheduled ones",
)
def run_actions(
    request: Request,
    acronym: Acronym,
    _who: Operator,
    action: Annotated[list[str] | None, Query()] = None,
    incremental: bool | None = None,
) -> RunOut:
    network = _get(request, acronym)
    try:
        return run_network(engine_of(request), network, action, incremental)
    except ConfigError as exc:
        raise ApiError(422, "invalid", str(exc)) from None


def run_network(
    engine: Engine,
    network: Any,
    actions: list[str] | None,
    incremental: bool | None,
    *,
    by: str | None = None,
) -> RunOut:
    """Submit the `oai-run` job for `network` (this API's run and the dashboard's run form).
    ConfigError: an unknown action, or no action applies; QueueFull: the queue is full."""
    from ..pipelines import oai

    links = oai.actions.plan_chain(engine.settings, network, actions, incremental)
    if not links:
        raise ConfigError(f"network {network.acronym}: no action applies")
    note = f"run by hand: {', '.join(actions or ['scheduled actions'])}"
    submitted = engine.submit(
        "oai-run",
        {"network": network.acronym, "actions": actions, "incremental": incremental},
        note=f"{note} (by {by})" if by else note,
    )
    return RunOut(
        job_id=submitted.job_id,
        created=submitted.created,
        actions=list(dict.fromkeys(link.action for link in links)),
    )


@router.get(
    "/networks/{acronym}/snapshots",
    response_model=list[SnapshotOut],
    responses=responses(401, 403, 404, 422),
)
def list_snapshots(
    request: Request,
    acronym: Acronym,
    _who: Viewer,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[SnapshotOut]:
    oai = _oai(request)
    network = _get(request, acronym)
    rows = oai.snapshots.Snapshots(engine_of(request).store).list(network.acronym, limit)
    return [snapshot_out(r) for r in rows]


def _snapshot(request: Request, snapshot_id: int) -> Any:
    oai = _oai(request)
    try:
        return oai.snapshots.Snapshots(engine_of(request).store).get(snapshot_id)
    except ShelfworkError as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/snapshots/{snapshot_id}", responses=responses(401, 403, 404, 422))
def get_snapshot(request: Request, snapshot_id: int, _who: Viewer) -> dict[str, Any]:
    oai = _oai(request)
    row = _snapshot(request, snapshot_id)
    lines = oai.snapshots.Snapshots(engine_of(request).store).log_lines(snapshot_id)
    return {
        **snapshot_out(row).model_dump(mode="json"),
        "identify": row.identify,
        "log": [
            {"at": line.at.isoformat(), "level": line.level, "message": line.message}
            for line in lines
        ],
    }


@router.post(
    "/snapshots/{snapshot_id}/confirm",
    response_model=SnapshotOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Confirm a suspicious (empty) harvest, so VALIDATE and the indexes take it",
)
def confirm_snapshot(request: Request, snapshot_id: int, who: Operator) -> SnapshotOut:
    """A full harvest that found nothing where the one before found records is held back as
    `suspicious`; confirming it makes it `harvested`: the next VALIDATE and INDEX_* runs then
    publish it, which empties what the network exposes."""
    oai = _oai(request)
    _snapshot(request, snapshot_id)
    try:
        row = oai.snapshots.Snapshots(engine_of(request).store).confirm_empty(snapshot_id, who.who)
    except oai.snapshots.NotSuspicious as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return snapshot_out(row)


@router.get(
    "/snapshots/{snapshot_id}/diagnose",
    responses=responses(401, 403, 404, 422),
    summary="Validation and transformation statistics, per rule",
)
def diagnose(request: Request, snapshot_id: int, _who: Viewer) -> dict[str, Any]:
    row = _snapshot(request, snapshot_id)
    stats = row.stats or {}
    return {
        "snapshot": snapshot_id,
        "state": row.state,
        "total": row.total,
        "valid": row.valid,
        "invalid": row.invalid,
        "transformed": row.transformed,
        "validation": stats.get("validation"),
        "transformation": stats.get("transformation"),
    }


@router.get("/snapshots/{snapshot_id}/records", responses=responses(401, 403, 404, 422))
def list_records(
    request: Request,
    snapshot_id: int,
    _who: Viewer,
    valid: bool | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    oai = _oai(request)
    _snapshot(request, snapshot_id)
    rows = oai.snapshots.Snapshots(engine_of(request).store).records(
        snapshot_id, after=after, limit=limit, valid=valid
    )
    return {
        "items": [_record_out(r) for r in rows],
        "next": rows[-1].identifier if len(rows) == limit else None,
    }


def _record_out(row: Any) -> dict[str, Any]:
    return {
        "identifier": row.identifier,
        "datestamp": row.datestamp,
        "sets": row.sets,
        "deleted": row.deleted,
        "valid": row.valid,
        "transformed": row.transformed,
        "failed_rules": row.failed_rules,
        "problem": row.problem,
        "published_identifier": row.published_identifier,
    }


@router.get("/snapshots/{snapshot_id}/record", responses=responses(401, 403, 404, 422))
def get_record(request: Request, snapshot_id: int, identifier: str, _who: Viewer) -> dict[str, Any]:
    """One record's diagnose: its verdict, and its metadata as harvested and as published."""
    oai = _oai(request)
    engine = engine_of(request)
    snapshot = _snapshot(request, snapshot_id)
    row = oai.snapshots.Snapshots(engine.store).record(snapshot_id, identifier)
    if row is None:
        raise ApiError(404, "not_found", f"snapshot {snapshot_id} has no record {identifier!r}")
    original, published = record_metadata(engine, snapshot.network, row)
    return {**_record_out(row), "original": original, "published": published}


def record_metadata(engine: Engine, network: str, row: Any) -> tuple[str | None, str | None]:
    """A catalog row's metadata as harvested and as published (None when the same, or none);
    a blob that cannot be read says so in place of its text."""
    from ..pipelines import oai

    blobs = oai.storage.MetadataStore(engine.store)

    def text(digest: str | None) -> str | None:
        if digest is None:
            return None
        try:
            return blobs.get(network, digest).decode("utf-8", "replace")
        except ShelfworkError as exc:
            return f"(unavailable: {exc})"

    published = text(row.published_hash) if row.published_hash != row.metadata_hash else None
    return text(row.metadata_hash), published
