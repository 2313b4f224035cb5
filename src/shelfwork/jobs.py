"""Every DB-facing operation on a job that is not an admission decision: reading, events,
checkpoints, finishing, cancelling and retrying. Writes a stale worker must not make check the lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Connection, and_, bindparam, delete, func, insert, or_, select, update

from .errors import InvalidTransition, JobNotFound, LeaseLost
from .store.database import ADMISSION_LOCK, Store, utcnow
from .store.models import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    Job,
    JobEvent,
    JobStep,
    Lock,
    UTCDateTime,
)

jobs_t = Job.__table__
steps_t = JobStep.__table__
events_t = JobEvent.__table__
locks_t = Lock.__table__

# Hot-path statements are built once: SQLAlchemy then skips construction and cache-key work,
# which otherwise costs more than SQLite itself on every job.
_b = bindparam
SELECT_JOB = select(jobs_t).where(jobs_t.c.id == _b("b_job"))
SELECT_STEPS = select(steps_t).where(steps_t.c.job_id == _b("b_job")).order_by(steps_t.c.id)
INSERT_EVENT = insert(events_t)
SELECT_LEASE = select(jobs_t.c.lease_owner, jobs_t.c.state, jobs_t.c.cancel_requested).where(
    jobs_t.c.id == _b("b_job")
)
SELECT_CANCEL = select(jobs_t.c.cancel_requested).where(jobs_t.c.id == _b("b_job"))
_this_step = (steps_t.c.job_id == _b("b_job"), steps_t.c.name == _b("b_name"))
RESTART_STEP = (
    update(steps_t)
    .where(*_this_step)
    .values(
        state=RUNNING,
        attempts=steps_t.c.attempts + 1,
        started_at=func.coalesce(steps_t.c.started_at, _b("b_now", type_=UTCDateTime())),
        finished_at=None,
        error=None,
    )
    .returning(steps_t.c.attempts)
)
INSERT_STEP = insert(steps_t)
END_STEP = (
    update(steps_t)
    .where(*_this_step)
    .values(
        state=_b("b_state"),
        result=_b("b_result", type_=JSON()),
        error=_b("b_error"),
        finished_at=_b("b_now", type_=UTCDateTime()),
    )
)
END_JOB = (
    update(jobs_t)
    .where(
        jobs_t.c.id == _b("b_job"),
        jobs_t.c.lease_owner == _b("b_owner"),
        jobs_t.c.state == RUNNING,
    )
    .values(
        state=_b("b_state"),
        result=_b("b_result", type_=JSON()),
        error=_b("b_error"),
        finished_at=_b("b_now", type_=UTCDateTime()),
        lease_owner=None,
        lease_expires_at=None,
    )
)
DROP_JOB_LOCKS = delete(locks_t).where(locks_t.c.job_id == _b("b_job"))
SELECT_OWNER = select(jobs_t.c.lease_owner).where(jobs_t.c.id == _b("b_job"))
TAKE_LEASE = (
    update(jobs_t)
    .where(
        jobs_t.c.id == _b("b_job"),
        jobs_t.c.state == RUNNING,
        or_(
            jobs_t.c.lease_owner == _b("b_owner"),
            jobs_t.c.lease_owner.like("dispatch:%"),
            jobs_t.c.lease_expires_at < _b("b_now", type_=UTCDateTime()),
        ),
    )
    .values(lease_owner=_b("b_owner"), lease_expires_at=_b("b_expires", type_=UTCDateTime()))
)


@dataclass
class StepView:
    name: str
    branch: str | None
    state: str
    attempts: int
    result: Any
    checkpoint: Any
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@dataclass
class JobView:
    """A job as callers see it (API, CLI, dashboard)."""

    id: int
    pipeline: str
    pipeline_version: str
    params: dict[str, Any]
    state: str
    context: str | None
    lane: str | None
    priority: int
    dedup_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    runs: int
    cancel_requested: bool
    attention: str | None
    progress_done: float | None
    progress_total: float | None
    progress_message: str | None
    warnings: list[Any]
    result: Any
    error: str | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    schedule_id: int | None = None
    steps: list[StepView] = field(default_factory=list)

    @property
    def percent(self) -> float | None:
        if self.progress_total:
            return round(100.0 * (self.progress_done or 0) / self.progress_total, 1)
        return 100.0 if self.state == "succeeded" else None

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


_JOB_FIELDS = [c.name for c in jobs_t.columns]


def _job_view(row: Any) -> JobView:
    data = dict(row._mapping)
    data["warnings"] = data.get("warnings") or []
    return JobView(**{k: data[k] for k in _JOB_FIELDS})


def event(
    conn: Connection,
    job_id: int,
    kind: str,
    message: str = "",
    *,
    level: str = "info",
    step: str | None = None,
    data: Any = None,
    at: datetime | None = None,
) -> None:
    conn.execute(
        INSERT_EVENT,
        {
            "job_id": job_id,
            "at": at or utcnow(),
            "kind": kind,
            "level": level,
            "step": step,
            "message": message,
            "data": data,
        },
    )


class Jobs:
    """Job reads and writes over one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- reads -------------------------------------------------------------------------------

    def get(self, job_id: int, *, steps: bool = True) -> JobView:
        with self.store.read() as conn:
            row = conn.execute(SELECT_JOB, {"b_job": job_id}).first()
            if row is None:
                raise JobNotFound(job_id)
            view = _job_view(row)
            if steps:
                view.steps = self._steps(conn, job_id)
        return view

    def _steps(self, conn: Connection, job_id: int) -> list[StepView]:
        rows = conn.execute(SELECT_STEPS, {"b_job": job_id}).all()
        return [
            StepView(
                name=r.name,
                branch=r.branch,
                state=r.state,
                attempts=r.attempts,
                result=r.result,
                checkpoint=r.checkpoint,
                error=r.error,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in rows
        ]

    def steps(self, job_id: int) -> dict[str, StepView]:
        with self.store.read() as conn:
            return {s.name: s for s in self._steps(conn, job_id)}

    def checkpoints(self, step: str) -> list[Any]:
        """The checkpoint of every job's step named `step` (for a step that must know what
        other jobs' runs of it have recorded, e.g. ids of objects made on a remote system)."""
        q = select(steps_t.c.checkpoint).where(
            steps_t.c.name == step, steps_t.c.checkpoint.is_not(None)
        )
        with self.store.read() as conn:
            return [row.checkpoint for row in conn.execute(q)]

    def list(
        self,
        *,
        state: str | None = None,
        pipeline: str | None = None,
        context: str | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[JobView]:
        q = select(jobs_t).order_by(jobs_t.c.id.desc()).limit(limit)
        if state:
            q = q.where(jobs_t.c.state == state)
        if pipeline:
            q = q.where(jobs_t.c.pipeline == pipeline)
        if context:
            q = q.where(jobs_t.c.context == context)
        if since:
            q = q.where(jobs_t.c.created_at >= since)
        if before_id:
            q = q.where(jobs_t.c.id < before_id)
        with self.store.read() as conn:
            return [_job_view(r) for r in conn.execute(q).all()]

    def events(self, job_id: int, *, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        q = (
            select(events_t)
            .where(events_t.c.job_id == job_id, events_t.c.id > after_id)
            .order_by(events_t.c.id)
            .limit(limit)
        )
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(q).all()]

    def counts(self) -> dict[str, int]:
        q = select(jobs_t.c.state, func.count()).group_by(jobs_t.c.state)
        with self.store.read() as conn:
            return {state: n for state, n in conn.execute(q).all()}

    # --- writes by the worker that holds the lease ------------------------------------------

    def take_lease(self, job_id: int, owner: str, ttl: float) -> bool:
        return self.acquire(job_id, owner, ttl) is not None

    def acquire(self, job_id: int, owner: str, ttl: float) -> JobView | None:
        """Own a running job's lease: it is ours, a dispatcher's hand-off, or it has expired.
        Taking over an expired lease also frees the locks the previous run held. Returns the job
        with its steps, read in the same transaction, or None if someone else holds it."""
        with self.store.write() as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            previous = conn.execute(SELECT_OWNER, {"b_job": job_id}).scalar()
            res = conn.execute(
                TAKE_LEASE,
                {
                    "b_job": job_id,
                    "b_owner": owner,
                    "b_now": now,
                    "b_expires": now + timedelta(seconds=ttl),
                },
            )
            if res.rowcount != 1:
                return None
            if previous not in (owner, None) and not previous.startswith("dispatch:"):
                # a takeover of a dead run's lease: free its locks, count and record the new run
                conn.execute(DROP_JOB_LOCKS, {"b_job": job_id})
                conn.execute(
                    update(jobs_t).where(jobs_t.c.id == job_id).values(runs=jobs_t.c.runs + 1)
                )
                event(
                    conn,
                    job_id,
                    "reclaimed",
                    f"lease of {previous} expired; resuming on {owner}",
                    level="warning",
                    at=now,
                )
            row = conn.execute(SELECT_JOB, {"b_job": job_id}).first()
            view = _job_view(row)
            view.steps = self._steps(conn, job_id)
            return view

    @staticmethod
    def _check_lease(conn: Connection, job_id: int, owner: str) -> bool:
        """Raise LeaseLost unless `owner` still holds the running job; returns cancel_requested."""
        row = conn.execute(SELECT_LEASE, {"b_job": job_id}).first()
        if row is None or row.lease_owner != owner or row.state != RUNNING:
            raise LeaseLost(job_id)
        return bool(row.cancel_requested)

    def step_started(
        self, job_id: int, owner: str, name: str, branch: str | None, *, exists: bool = True
    ) -> int | None:
        """Record an attempt before running it, so a crash mid-step still counts the attempt.
        Returns the attempt number, or None (nothing written) if the job was asked to cancel.
        `exists=False` says the step has no row yet (its first attempt ever)."""
        with self.store.write() as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            if self._check_lease(conn, job_id, owner):
                return None
            if exists:
                res = conn.execute(
                    RESTART_STEP, {"b_job": job_id, "b_name": name, "b_now": now}
                ).first()
                if res is not None:
                    return int(res[0])
            conn.execute(
                INSERT_STEP,
                {
                    "job_id": job_id,
                    "name": name,
                    "branch": branch,
                    "state": RUNNING,
                    "attempts": 1,
                    "started_at": now,
                },
            )
            return 1

    def step_finished(
        self,
        job_id: int,
        owner: str,
        name: str,
        *,
        state: str,
        result: Any = None,
        error: str | None = None,
        branch: str | None = None,
        event_kind: str | None = None,
        message: str = "",
        finish_job: tuple[str, Any, str | None] | None = None,
        then: Callable[[Connection], None] | None = None,
    ) -> None:
        """Commit a step's outcome (and, for the last step, the job's) in one transaction."""
        with self.store.write(serialize=ADMISSION_LOCK if then else None) as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            self._check_lease(conn, job_id, owner)
            res = conn.execute(
                END_STEP,
                {
                    "b_job": job_id,
                    "b_name": name,
                    "b_state": state,
                    "b_result": result,
                    "b_error": error,
                    "b_now": now,
                },
            )
            if res.rowcount == 0:  # branch summaries have no "started" row
                conn.execute(
                    INSERT_STEP,
                    {
                        "job_id": job_id,
                        "name": name,
                        "branch": branch,
                        "state": state,
                        "attempts": 1,
                        "result": result,
                        "error": error,
                        "started_at": now,
                        "finished_at": now,
                    },
                )
            if event_kind:
                level = "error" if state == FAILED else "info"
                event(conn, job_id, event_kind, message, step=name, level=level, at=now)
            if finish_job is not None:
                self._finish(conn, job_id, owner, *finish_job, now=now, then=then)

    def save_checkpoint(self, job_id: int, owner: str, name: str, checkpoint: Any) -> None:
        with self.store.write() as conn:
            self._check_lease(conn, job_id, owner)
            conn.execute(
                update(steps_t)
                .where(steps_t.c.job_id == job_id, steps_t.c.name == name)
                .values(checkpoint=checkpoint)
            )

    @staticmethod
    def save_checkpoint_in(
        conn: Connection, job_id: int, owner: str, name: str, checkpoint: Any
    ) -> None:
        """Save a checkpoint inside the caller's transaction, so it commits with the work it covers.

        The job row is locked, so a reclaim cannot take the lease between this check and the
        commit: the next owner then reads either the old checkpoint with none of the work, or both.
        """
        row = conn.execute(
            select(jobs_t.c.lease_owner, jobs_t.c.state)
            .where(jobs_t.c.id == job_id)
            .with_for_update()
        ).first()
        if row is None or row.lease_owner != owner or row.state != RUNNING:
            raise LeaseLost(job_id)
        conn.execute(
            update(steps_t)
            .where(steps_t.c.job_id == job_id, steps_t.c.name == name)
            .values(checkpoint=checkpoint)
        )

    def record(self, job_id: int, kind: str, message: str = "", **kw: Any) -> None:
        with self.store.write() as conn:
            event(conn, job_id, kind, message, **kw)

    def progress(
        self, job_id: int, done: float | None, total: float | None, message: str | None
    ) -> None:
        values: dict[str, Any] = {}
        if done is not None:
            values["progress_done"] = done
        if total is not None:
            values["progress_total"] = total
        if message is not None:
            values["progress_message"] = message
        if values:
            with self.store.write() as conn:
                conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(**values))

    def add_warning(self, job_id: int, warning: str, *, step: str | None = None) -> None:
        with self.store.write() as conn:
            current = conn.execute(
                select(jobs_t.c.warnings).where(jobs_t.c.id == job_id).with_for_update()
            ).scalar_one()
            item = {"step": step, "message": warning, "at": utcnow().isoformat()}
            conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(warnings=[*(current or []), item])
            )
            event(conn, job_id, "warning", warning, level="warning", step=step)

    def finish(
        self,
        job_id: int,
        owner: str,
        state: str,
        result: Any = None,
        error: str | None = None,
        *,
        then: Callable[[Connection], None] | None = None,
    ) -> None:
        with self.store.write(serialize=ADMISSION_LOCK if then else None) as conn:
            self._finish(conn, job_id, owner, state, result, error, now=utcnow(), then=then)

    @staticmethod
    def _finish(
        conn: Connection,
        job_id: int,
        owner: str,
        state: str,
        result: Any,
        error: str | None,
        *,
        now: datetime,
        then: Callable[[Connection], None] | None = None,
    ) -> None:
        res = conn.execute(
            END_JOB,
            {
                "b_job": job_id,
                "b_owner": owner,
                "b_state": state,
                "b_result": result,
                "b_error": error,
                "b_now": now,
            },
        )
        if res.rowcount != 1:
            raise LeaseLost(job_id)
        conn.execute(DROP_JOB_LOCKS, {"b_job": job_id})
        level = {"succeeded": "info", "cancelled": "warning"}.get(state, "error")
        event(conn, job_id, state, error or "", level=level, at=now)
        if then is not None:
            then(conn)

    def hold(self, job_id: int, owner: str, reason: str) -> None:
        """Put an in-flight job back in the queue, held for a person (e.g. its code changed)."""
        with self.store.write() as conn:
            res = conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.lease_owner == owner)
                .values(state=QUEUED, attention=reason, lease_owner=None, lease_expires_at=None)
            )
            if res.rowcount != 1:
                raise LeaseLost(job_id)
            conn.execute(delete(locks_t).where(locks_t.c.job_id == job_id))
            event(conn, job_id, "needs_attention", reason, level="warning")

    # --- operator actions ----------------------------------------------------------------------

    def cancel(self, job_id: int, *, by: str = "operator") -> JobView:
        """A queued job is cancelled at once; a running one is asked to stop at its next check."""
        with self.store.write() as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            row = conn.execute(select(jobs_t.c.state).where(jobs_t.c.id == job_id)).first()
            if row is None:
                raise JobNotFound(job_id)
            if row.state == QUEUED:
                conn.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id == job_id, jobs_t.c.state == QUEUED)
                    .values(state=CANCELLED, finished_at=now, cancel_requested=True)
                )
                event(conn, job_id, CANCELLED, f"cancelled while queued by {by}", level="warning")
            elif row.state == RUNNING:
                conn.execute(
                    update(jobs_t).where(jobs_t.c.id == job_id).values(cancel_requested=True)
                )
                event(conn, job_id, "cancel_requested", f"cancel requested by {by}")
            else:
                raise InvalidTransition(f"job {job_id} is {row.state}; only live jobs can cancel")
        return self.get(job_id)

    def cancel_requested(self, job_id: int) -> bool:
        with self.store.read() as conn:
            return bool(conn.execute(SELECT_CANCEL, {"b_job": job_id}).scalar())

    def release(self, job_id: int, version: str, *, by: str = "operator") -> JobView:
        """Let a job held for attention resume on the current pipeline code (`version`)."""
        with self.store.write() as conn:
            res = conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id, jobs_t.c.attention.is_not(None))
                .values(attention=None, pipeline_version=version)
            )
            if res.rowcount != 1:
                raise InvalidTransition(f"job {job_id} is not held for attention")
            event(conn, job_id, "released", f"released by {by} to resume on version {version}")
        return self.get(job_id)


def live_filter() -> Any:
    return and_(jobs_t.c.state.in_((QUEUED, RUNNING)))
