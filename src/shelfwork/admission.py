"""Admission control: which jobs may wait, and which may run now.

All decisions are made inside one serialised write transaction (SQLite's write lock, PostgreSQL's
advisory lock), so they hold across threads, processes and hosts:
- at most `max_running` jobs run; at most `max_queue` wait, beyond that `QueueFull` (never a drop);
- one running job per context and per lane (also enforced by partial unique indexes);
- a second submit with a live dedup key returns the existing job;
- a job whose context or lane is busy is passed over, so it never holds up the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from .errors import InvalidTransition, JobNotFound, PreconditionFailed, QueueFull
from .jobs import INSERT_EVENT, event, jobs_t, locks_t, steps_t
from .pipeline import Pipeline
from .store.database import ADMISSION_LOCK, Store, utcnow
from .store.models import CANCELLED, FAILED, QUEUED, RUNNING, UTCDateTime

_b = bindparam
_queued = (jobs_t.c.state == QUEUED, jobs_t.c.attention.is_(None))
FIND_DEDUP = select(jobs_t.c.id, jobs_t.c.state).where(
    jobs_t.c.dedup_key == _b("b_key"), jobs_t.c.state.in_((QUEUED, RUNNING))
)
# Counting stops at the bound: a long queue costs no more to check than a full one.
COUNT_WAITING = select(func.count()).select_from(
    select(jobs_t.c.id).where(*_queued).limit(_b("b_limit")).subquery()
)
INSERT_JOB = insert(jobs_t).returning(jobs_t.c.id)
RUNNING_SLOTS = select(jobs_t.c.context, jobs_t.c.lane).where(jobs_t.c.state == RUNNING)
_page = (
    select(jobs_t.c.id, jobs_t.c.context, jobs_t.c.lane, jobs_t.c.priority, jobs_t.c.runs)
    .where(*_queued)
    .order_by(jobs_t.c.priority.desc(), jobs_t.c.id)
    .limit(_b("b_page"))
)
FIRST_PAGE = _page
NEXT_PAGE = _page.where(
    (jobs_t.c.priority < _b("b_prio"))
    | ((jobs_t.c.priority == _b("b_prio")) & (jobs_t.c.id > _b("b_after")))
)
START_JOBS = (
    update(jobs_t)
    .where(jobs_t.c.id.in_(_b("b_ids", expanding=True)))
    .values(
        state=RUNNING,
        lease_owner=_b("b_owner"),
        lease_expires_at=_b("b_expires", type_=UTCDateTime()),
        started_at=func.coalesce(jobs_t.c.started_at, _b("b_now", type_=UTCDateTime())),
        runs=jobs_t.c.runs + 1,
    )
)


@dataclass(frozen=True)
class Limits:
    max_running: int = 4
    max_queue: int = 32


@dataclass(frozen=True)
class Submitted:
    job_id: int
    created: bool  # False when the dedup key matched a live job
    state: str


@dataclass(frozen=True)
class Claimed:
    job_id: int
    resumed: bool


class Admission:
    def __init__(self, store: Store, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self.rejections = 0

    def submit(
        self,
        pipeline: Pipeline,
        params: dict[str, Any] | None = None,
        *,
        context: str | None = None,
        lane: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        schedule_id: int | None = None,
        note: str = "",
        then: Callable[[Connection], None] | None = None,
    ) -> Submitted:
        """Validate, admit and queue a job. `then` runs inside the same transaction after the insert
        (the local executor claims there, so a job that can start does not wait for a dispatch)."""
        model = pipeline.validate(params)
        if pipeline.precondition is not None:
            reason = pipeline.precondition(model)
            if reason:
                raise PreconditionFailed(pipeline.name, reason)
        if context is None and pipeline.context is not None:
            context = pipeline.context(model)
        if lane is None and pipeline.lane is not None:
            lane = pipeline.lane(model) if callable(pipeline.lane) else pipeline.lane
        if dedup_key is None and pipeline.dedup is not None:
            dedup_key = pipeline.dedup(model)
        stored = model.model_dump(mode="json")
        for _ in range(3):
            try:
                return self._insert(
                    pipeline, stored, context, lane, priority, dedup_key, schedule_id, note, then
                )
            except IntegrityError:
                continue  # a concurrent submit took the dedup key first: return that job
        raise RuntimeError("dedup race did not settle")  # pragma: no cover

    def _insert(
        self,
        pipeline: Pipeline,
        params: dict[str, Any],
        context: str | None,
        lane: str | None,
        priority: int,
        dedup_key: str | None,
        schedule_id: int | None,
        note: str,
        then: Callable[[Connection], None] | None,
    ) -> Submitted:
        with self.store.write(serialize=ADMISSION_LOCK) as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            if dedup_key is not None:
                row = conn.execute(FIND_DEDUP, {"b_key": dedup_key}).first()
                if row is not None:
                    return Submitted(row.id, False, row.state)
            waiting = self._waiting(conn)
            if waiting >= self.limits.max_queue:
                self.rejections += 1
                raise QueueFull(self.limits.max_queue, waiting)
            job_id = conn.execute(
                INSERT_JOB,
                {
                    "pipeline": pipeline.name,
                    "pipeline_version": pipeline.version,
                    "params": params,
                    "state": QUEUED,
                    "context": context,
                    "lane": lane,
                    "priority": priority,
                    "dedup_key": dedup_key,
                    "schedule_id": schedule_id,
                    "created_at": now,
                    "runs": 0,
                    "cancel_requested": False,
                    "warnings": [],
                },
            ).scalar_one()
            event(conn, job_id, "submitted", note, at=now)
            if then is not None:
                then(conn)
            return Submitted(job_id, True, QUEUED)

    def _waiting(self, conn: Connection) -> int:
        """Jobs waiting to run, counted up to the queue bound."""
        return int(conn.execute(COUNT_WAITING, {"b_limit": self.limits.max_queue}).scalar_one())

    def claim(self, owner: str, ttl: float, *, limit: int | None = None) -> list[Claimed]:
        """Move as many eligible queued jobs to running as the limits allow, leased to `owner`."""
        with self.store.write() as conn:
            return self.claim_in(conn, owner, ttl, limit=limit)

    def claim_in(
        self, conn: Connection, owner: str, ttl: float, *, limit: int | None = None
    ) -> list[Claimed]:
        """`claim` inside the caller's write transaction (e.g. the one that finishes a job)."""
        if self.store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADMISSION_LOCK})
        now = utcnow()
        running = conn.execute(RUNNING_SLOTS).all()
        free = self.limits.max_running - len(running)
        if limit is not None:
            free = min(free, limit)
        if free <= 0:
            return []
        busy_contexts = {r.context for r in running if r.context is not None}
        busy_lanes = {r.lane for r in running if r.lane is not None}
        chosen: list[tuple[int, int]] = []
        after: tuple[int, int] | None = None
        page = max(64, free * 8)
        while len(chosen) < free:
            if after is None:
                rows = conn.execute(FIRST_PAGE, {"b_page": page}).all()
            else:
                rows = conn.execute(
                    NEXT_PAGE, {"b_page": page, "b_prio": after[0], "b_after": after[1]}
                ).all()
            for r in rows:
                if r.context is not None and r.context in busy_contexts:
                    continue
                if r.lane is not None and r.lane in busy_lanes:
                    continue
                chosen.append((r.id, r.runs))
                if r.context is not None:
                    busy_contexts.add(r.context)
                if r.lane is not None:
                    busy_lanes.add(r.lane)
                if len(chosen) == free:
                    break
            if len(rows) < page:
                break
            after = (rows[-1].priority, rows[-1].id)
        if not chosen:
            return []
        ids = [job_id for job_id, _ in chosen]
        conn.execute(
            START_JOBS,
            {
                "b_ids": ids,
                "b_owner": owner,
                "b_expires": now + timedelta(seconds=ttl),
                "b_now": now,
            },
        )
        conn.execute(
            INSERT_EVENT,
            [
                {
                    "job_id": job_id,
                    "at": now,
                    "kind": "resumed" if runs else "started",
                    "level": "info",
                    "message": f"run {runs + 1} on {owner}",
                }
                for job_id, runs in chosen
            ],
        )
        return [Claimed(job_id, runs > 0) for job_id, runs in chosen]

    def unclaim(self, job_ids: list[int], owner: str, reason: str) -> None:
        """Put claimed jobs that never reached an executor back in the queue, as if unclaimed."""
        with self.store.write() as conn:
            for job_id in job_ids:
                res = conn.execute(
                    update(jobs_t)
                    .where(
                        jobs_t.c.id == job_id,
                        jobs_t.c.state == RUNNING,
                        jobs_t.c.lease_owner == owner,
                    )
                    .values(
                        state=QUEUED,
                        lease_owner=None,
                        lease_expires_at=None,
                        runs=jobs_t.c.runs - 1,
                    )
                )
                if res.rowcount:
                    event(conn, job_id, "dispatch_failed", reason, level="warning")

    def reclaim_expired(self, owner: str, ttl: float, *, limit: int | None = None) -> list[int]:
        """Running jobs whose lease expired (their worker died) are taken over for a new run;
        at most `limit`, so a node takes no more than it can start at once."""
        reclaimed: list[int] = []
        with self.store.write(serialize=ADMISSION_LOCK) as conn:
            now = utcnow()  # taken under the write lock, so timelines agree
            q = (
                select(jobs_t.c.id, jobs_t.c.lease_owner)
                .where(jobs_t.c.state == RUNNING, jobs_t.c.lease_expires_at < now)
                .order_by(jobs_t.c.lease_expires_at)
            )
            rows = conn.execute(q if limit is None else q.limit(limit)).all()
            for r in rows:
                res = conn.execute(
                    update(jobs_t)
                    .where(jobs_t.c.id == r.id, jobs_t.c.lease_expires_at < now)
                    .values(
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=ttl),
                        runs=jobs_t.c.runs + 1,
                    )
                )
                if res.rowcount != 1:
                    continue
                conn.execute(delete(locks_t).where(locks_t.c.job_id == r.id))
                event(
                    conn,
                    r.id,
                    "reclaimed",
                    f"lease of {r.lease_owner} expired; resuming on {owner}",
                    level="warning",
                    at=now,
                )
                reclaimed.append(r.id)
        return reclaimed

    def retry(self, job_id: int, *, by: str = "operator") -> Submitted:
        """Queue a failed or cancelled job again; its finished steps are kept and not re-run."""
        with self.store.write(serialize=ADMISSION_LOCK) as conn:
            row = conn.execute(
                select(jobs_t.c.state, jobs_t.c.dedup_key).where(jobs_t.c.id == job_id)
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            if row.state not in (FAILED, CANCELLED):
                raise InvalidTransition(
                    f"job {job_id} is {row.state}; only failed or cancelled jobs retry"
                )
            waiting = self._waiting(conn)
            if waiting >= self.limits.max_queue:
                self.rejections += 1
                raise QueueFull(self.limits.max_queue, waiting)
            try:
                with conn.begin_nested():
                    conn.execute(
                        update(jobs_t)
                        .where(jobs_t.c.id == job_id)
                        .values(
                            state=QUEUED,
                            error=None,
                            finished_at=None,
                            cancel_requested=False,
                            attention=None,
                        )
                    )
            except IntegrityError:
                raise InvalidTransition(
                    f"job {job_id} cannot retry: another live job has dedup key {row.dedup_key!r}"
                ) from None
            conn.execute(
                update(steps_t)
                .where(steps_t.c.job_id == job_id, steps_t.c.state.in_((FAILED, RUNNING)))
                .values(state="pending")
            )
            event(conn, job_id, "retried", f"queued again by {by}")
        return Submitted(job_id, True, QUEUED)

    def depth(self) -> dict[str, int]:
        with self.store.read() as conn:
            waiting = self._waiting(conn)
            held = conn.execute(
                select(func.count())
                .select_from(jobs_t)
                .where(jobs_t.c.state == QUEUED, jobs_t.c.attention.is_not(None))
            ).scalar_one()
            running = conn.execute(
                select(func.count()).select_from(jobs_t).where(jobs_t.c.state == RUNNING)
            ).scalar_one()
        return {"waiting": waiting, "held": held, "running": running}
