"""Tables of the metadata database.

Partial unique indexes make the admission rules hold even against buggy callers: the database itself
refuses a second running job in one context or lane, and a second live job with one dedup key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job states, as shown everywhere.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (stored naive) and PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


_live = text("state IN ('queued', 'running')")
_running = text("state = 'running'")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    pipeline_version: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    context: Mapped[str | None] = mapped_column(String(300))
    lane: Mapped[str | None] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    dedup_key: Mapped[str | None] = mapped_column(String(300))
    schedule_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    runs: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attention: Mapped[str | None] = mapped_column(Text)
    progress_done: Mapped[float | None] = mapped_column(Float)
    progress_total: Mapped[float | None] = mapped_column(Float)
    progress_message: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_jobs_queue", "state", "attention", "priority", "id"),
        Index("ix_jobs_pipeline_created", "pipeline", "created_at"),
        Index("ix_jobs_context", "context"),
        Index("ix_jobs_finished", "finished_at"),
        Index(
            "uq_jobs_running_context",
            "context",
            unique=True,
            sqlite_where=_running,
            postgresql_where=_running,
        ),
        Index(
            "uq_jobs_running_lane",
            "lane",
            unique=True,
            sqlite_where=_running,
            postgresql_where=_running,
        ),
        Index(
            "uq_jobs_live_dedup",
            "dedup_key",
            unique=True,
            sqlite_where=_live,
            postgresql_where=_live,
        ),
    )


class JobStep(Base):
    """A step checkpoint: committed before the next step starts, so a resumed job skips it."""

    __tablename__ = "job_steps"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    branch: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed, skipped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[Any | None] = mapped_column(JSON)
    checkpoint: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("job_id", "name"),)


class JobEvent(Base):
    """The append-only audit trail of a job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    level: Mapped[str] = mapped_column(String(10), default="info")
    step: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[Any | None] = mapped_column(JSON)


class Lock(Base):
    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    __table_args__ = (Index("ix_locks_job", "job_id"),)


class EntityValue(Base):
    """Per-entity fields for compare-and-set when the caller has no table of its own."""

    __tablename__ = "entity_values"

    entity: Mapped[str] = mapped_column(String(300), primary_key=True)
    field: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any | None] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime]


class Effect(Base):
    """External effects already done, by idempotency key, so a resumed step does not repeat them."""

    __tablename__ = "effects"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    step: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[datetime]


class Schedule(Base):
    """A cron schedule. `next_run_at` (UTC) is the firing to claim next; claiming it is a
    conditional UPDATE on its old value, so two servers on one database never both fire one slot."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    context: Mapped[str | None] = mapped_column(String(300))
    lane: Mapped[str | None] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    misfire: Mapped[str] = mapped_column(String(16), default="run_once")
    when_busy: Mapped[str] = mapped_column(String(16), default="skip")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_by: Mapped[str | None] = mapped_column(String(200))  # "config" or who paused it
    source: Mapped[str] = mapped_column(String(16), default="api")
    next_run_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_outcome: Mapped[str | None] = mapped_column(String(40))
    last_job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_schedules_due", "paused", "next_run_at"),)


class ScheduleRun(Base):
    """What a schedule did at each firing: submitted, skipped (busy, misfire), refused, failed."""

    __tablename__ = "schedule_runs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    planned_for: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    missed: Mapped[int] = mapped_column(Integer, default=0)  # earlier firings folded into this one
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_schedule_runs_schedule", "schedule_id", "at"),)


class TrackedEntity(Base):
    """A long-lived outside thing (a consortial loan, a repository item in review) being polled.

    `version` grows on every write: a poll result is applied only if nothing changed the entity
    since the poll was claimed. `claimed_until` keeps two servers from polling it at once."""

    __tablename__ = "tracked_entities"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tracker: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    entered_state_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]  # restarts the too-long clock in this state
    last_polled_at: Mapped[datetime | None]
    next_poll_at: Mapped[datetime | None]
    interval: Mapped[float | None] = mapped_column(Float)
    unchanged_polls: Mapped[int] = mapped_column(Integer, default=0)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    too_long: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("tracker", "key"),
        Index("ix_tracked_due", "next_poll_at"),
        Index("ix_tracked_state", "tracker", "state"),
    )


class TrackerTransition(Base):
    """The audit trail of a tracked entity: state changes, and also too-long flags, poll errors,
    acknowledgements and forced polls (`kind`), with who did it (`by`)."""

    __tablename__ = "tracker_transitions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entity_id: Mapped[int] = mapped_column(
        ForeignKey("tracked_entities.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(20), default="transition")
    from_state: Mapped[str | None] = mapped_column(String(100))
    to_state: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str] = mapped_column(String(200), default="poll")
    data: Mapped[Any | None] = mapped_column(JSON)


class DeadLetter(Base):
    """An item a batch step could not process, kept for a person to inspect and replay.

    Written in the same transaction as the rest of its page (see shelfwork.batch), so a dead letter
    exists exactly when its page committed. `payload` is a summary of the item, not all of it.
    """

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    pipeline: Mapped[str | None] = mapped_column(String(200))
    step: Mapped[str | None] = mapped_column(String(200))
    item_key: Mapped[str] = mapped_column(String(500))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[Any | None] = mapped_column(JSON)
    created_at: Mapped[datetime]

    __table_args__ = (Index("ix_dead_letters_job", "job_id"),)


class Node(Base):
    """A live shelfwork process (server, worker): seen_at is its heartbeat."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    scheduler: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """An API token. Only its SHA-256 is kept; `prefix` (shown in listings) finds the row."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class User(Base):
    """A dashboard user; `password_hash` is scrypt with a per-user salt."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(300))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]


class UserSession(Base):
    """A dashboard login. The cookie holds a random token; only its SHA-256 (`id`) is kept, so
    logging out (deleting the row) ends the session on every server sharing the database."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]


class LoginAttempt(Base):
    """Recent logins by user name and client address, for rate limiting failed ones."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    username: Mapped[str] = mapped_column(String(200))
    ip: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_login_attempts_user", "username", "at"),
        Index("ix_login_attempts_ip", "ip", "at"),
    )


def now() -> datetime:
    return datetime.now(UTC)


# --- OAI-PMH harvesting (shelfwork.pipelines.oai) -----------------------------------------------

_id = BigInteger().with_variant(Integer, "sqlite")


class OaiNetwork(Base):
    """A repository harvested on its own schedule; `origin` says whether the config file or the
    API owns it (a file's network is changed in the file)."""

    __tablename__ = "oai_networks"

    acronym: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    base_url: Mapped[str] = mapped_column(String(2000))
    metadata_prefix: Mapped[str] = mapped_column(String(100), default="oai_dc")
    sets: Mapped[list[Any]] = mapped_column(default=list)
    cron: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    method: Mapped[str] = mapped_column(String(8), default="GET")
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    validation: Mapped[str | None] = mapped_column(String(300))
    transformation: Mapped[str | None] = mapped_column(String(300))
    origin: Mapped[str] = mapped_column(String(16), default="api")
    #: what one request to its repository may take (pipelines/oai/config.py HarvestLimits);
    #: None or missing keys: the defaults
    limits: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OaiSnapshot(Base):
    """One harvest of a network and what became of it (validated, indexed). The latest `valid`
    snapshot is the network's last good known one."""

    __tablename__ = "oai_snapshots"

    id: Mapped[int] = mapped_column(_id, primary_key=True)
    network: Mapped[str] = mapped_column(
        String(64), ForeignKey("oai_networks.acronym", ondelete="CASCADE")
    )
    state: Mapped[str] = mapped_column(String(32))
    incremental: Mapped[bool] = mapped_column(Boolean, default=False)
    previous_id: Mapped[int | None] = mapped_column(_id)
    job_id: Mapped[int | None] = mapped_column(_id)
    harvest_from: Mapped[str | None] = mapped_column(String(40))
    response_date: Mapped[str | None] = mapped_column(String(40))
    granularity: Mapped[str | None] = mapped_column(String(40))
    identify: Mapped[dict[str, Any] | None] = mapped_column()
    resume: Mapped[dict[str, Any] | None] = mapped_column()
    pages: Mapped[int] = mapped_column(Integer, default=0)
    harvested: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    valid: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    transformed: Mapped[int] = mapped_column(Integer, default=0)
    bad: Mapped[int] = mapped_column(Integer, default=0)
    ruleset: Mapped[str | None] = mapped_column(String(300))
    stats: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    harvested_at: Mapped[datetime | None]
    validated_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_oai_snapshots_network", "network", "id"),)


class OaiRecord(Base):
    """A snapshot's catalog: each record's header and the hashes of its stored metadata
    (`metadata_hash` as harvested, `published_hash` after transformation)."""

    __tablename__ = "oai_records"

    snapshot_id: Mapped[int] = mapped_column(
        _id, ForeignKey("oai_snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    identifier: Mapped[str] = mapped_column(String(500), primary_key=True)
    datestamp: Mapped[str] = mapped_column(String(40))
    sets: Mapped[list[Any]] = mapped_column(default=list)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_hash: Mapped[str | None] = mapped_column(String(64))
    published_hash: Mapped[str | None] = mapped_column(String(64))
    #: the identifier the record is published under, when a transformer rewrote it
    published_identifier: Mapped[str | None] = mapped_column(String(500))
    # None: not validated yet
    valid: Mapped[bool | None] = mapped_column(Boolean)
    transformed: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_rules: Mapped[list[Any] | None] = mapped_column()
    problem: Mapped[str | None] = mapped_column(Text)
    #: the snapshot whose harvest last delivered this row (rows copied forward keep their
    #: predecessor's): a harvest counts each record once however often the lists repeat it
    harvested_by: Mapped[int | None] = mapped_column(_id)


class OaiBlob(Base):
    """The content-addressed metadata store: a network's distinct records, gzipped, by the
    SHA-256 of their bytes (see pipelines/oai/storage.py)."""

    __tablename__ = "oai_blobs"

    network: Mapped[str] = mapped_column(
        String(64), ForeignKey("oai_networks.acronym", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class OaiSnapshotLog(Base):
    """A snapshot's own audit trail, readable without the jobs that wrote it."""

    __tablename__ = "oai_snapshot_log"

    id: Mapped[int] = mapped_column(_id, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(
        _id, ForeignKey("oai_snapshots.id", ondelete="CASCADE")
    )
    at: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_oai_snapshot_log_snapshot", "snapshot_id", "id"),)


class OaiIndexEntry(Base):
    """What an index target holds of a network, so the next indexing sends only the difference.
    For the OAI provider it is also the exposed list: `changed_at` is the provider's datestamp
    and deletions stay as deleted entries."""

    __tablename__ = "oai_index_entries"

    network: Mapped[str] = mapped_column(
        String(64), ForeignKey("oai_networks.acronym", ondelete="CASCADE"), primary_key=True
    )
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    identifier: Mapped[str] = mapped_column(String(500), primary_key=True)
    published_hash: Mapped[str | None] = mapped_column(String(64))
    sets: Mapped[list[Any]] = mapped_column(default=list)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[datetime]
    snapshot_id: Mapped[int | None] = mapped_column(_id)

    __table_args__ = (
        Index("ix_oai_index_entries_changed", "network", "target", "changed_at", "identifier"),
    )


class OaiEntrySet(Base):
    """Which sets each entry of the OAI provider's target is in, the ancestors of its sets
    included (a record in `a:b` is in `a`), one row each: `set=` is then an exact, indexed
    match on both backends (set specs are case-sensitive; SQLite's LIKE is not)."""

    __tablename__ = "oai_entry_sets"

    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    set_spec: Mapped[str] = mapped_column(String(500), primary_key=True)
    identifier: Mapped[str] = mapped_column(String(500), primary_key=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["network", "target", "identifier"],
            [
                "oai_index_entries.network",
                "oai_index_entries.target",
                "oai_index_entries.identifier",
            ],
            ondelete="CASCADE",
        ),
        Index("ix_oai_entry_sets_entry", "network", "target", "identifier"),
    )
