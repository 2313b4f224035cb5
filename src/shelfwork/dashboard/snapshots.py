"""What the dashboard's pages show, read from the metadata database in one place: admission (who
runs, who waits and why), trackers (entities per state, overdue, too long), a job's newest events,
dead letters.

Everything is read fresh on each request; nothing is cached, so every server shows the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ..jobs import JobView
from ..locks import LockInfo
from ..store.database import utcnow
from ..store.models import QUEUED, RUNNING, DeadLetter, Job, JobEvent, TrackedEntity
from ..trackers import TrackedView

if TYPE_CHECKING:
    from ..engine import Engine

jobs_t = Job.__table__
events_t = JobEvent.__table__
entities_t = TrackedEntity.__table__
dead_t = DeadLetter.__table__

WAITING_SHOWN = 50
FLAGGED_SHOWN = 20


def _job(row: Any) -> JobView:
    data = dict(row._mapping)
    data["warnings"] = data.get("warnings") or []
    return JobView(**data)


# --- admission ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitingJob:
    """A queued job and why it has not started: an i18n key (`why.*`) and its fields."""

    job: JobView
    why: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class AdmissionSnapshot:
    running: list[JobView]
    waiting: list[WaitingJob]
    waiting_count: int
    held_count: int
    max_running: int
    max_queue: int
    rejected: int

    @property
    def by_lane(self) -> list[JobView]:
        return sorted((j for j in self.running if j.lane), key=lambda j: j.lane or "")

    @property
    def by_context(self) -> list[JobView]:
        return sorted((j for j in self.running if j.context), key=lambda j: j.context or "")


def admission(engine: Engine) -> AdmissionSnapshot:
    """Running jobs, and the first waiting ones in the order the admission claim would take them,
    each with the reason it waits (the same rules as `Admission.claim_in`: one running job per
    context and per lane, at most `max_running` in all)."""
    with engine.store.read() as conn:
        running = [
            _job(r)
            for r in conn.execute(
                select(jobs_t).where(jobs_t.c.state == RUNNING).order_by(jobs_t.c.started_at)
            ).all()
        ]
        queued = [
            _job(r)
            for r in conn.execute(
                select(jobs_t)
                .where(jobs_t.c.state == QUEUED)
                .order_by(jobs_t.c.attention.is_not(None), jobs_t.c.priority.desc(), jobs_t.c.id)
                .limit(WAITING_SHOWN)
            ).all()
        ]
    depth = engine.admission.depth()
    limits = engine.admission.limits
    contexts = {j.context: j.id for j in running if j.context is not None}
    lanes = {j.lane: j.id for j in running if j.lane is not None}
    free = limits.max_running - len(running)
    waiting: list[WaitingJob] = []
    for job in queued:
        if job.attention:
            waiting.append(WaitingJob(job, "why.held", {"reason": job.attention}))
        elif job.context is not None and job.context in contexts:
            waiting.append(WaitingJob(job, "why.context_busy", {"id": contexts[job.context]}))
        elif job.lane is not None and job.lane in lanes:
            waiting.append(WaitingJob(job, "why.lane_busy", {"id": lanes[job.lane]}))
        elif free <= 0:
            waiting.append(WaitingJob(job, "why.no_slot", {"limit": limits.max_running}))
        else:
            waiting.append(WaitingJob(job, "why.next", {}))
            free -= 1
            if job.context is not None:
                contexts[job.context] = job.id
            if job.lane is not None:
                lanes[job.lane] = job.id
    return AdmissionSnapshot(
        running=running,
        waiting=waiting,
        waiting_count=depth["waiting"],
        held_count=depth["held"],
        max_running=limits.max_running,
        max_queue=limits.max_queue,
        rejected=engine.admission.rejections,
    )


# --- trackers -----------------------------------------------------------------------------------


@dataclass
class TrackerSummary:
    name: str
    description: str
    states: list[tuple[str, int, bool]] = field(default_factory=list)  # state, count, final
    too_long: list[TrackedView] = field(default_factory=list)
    too_long_count: int = 0
    overdue: list[TrackedView] = field(default_factory=list)
    overdue_count: int = 0


def trackers(engine: Engine) -> list[TrackerSummary]:
    """Each registered tracker's entities counted by state (every state, zeros included), and the
    first entities flagged too long or overdue for a poll."""
    registry = engine.trackers
    names = registry.names()
    if not names:
        return []
    now = utcnow()
    counts: dict[tuple[str, str], int] = {}
    flagged: dict[str, int] = {}
    late: dict[str, int] = {}
    due = (entities_t.c.next_poll_at <= now) & entities_t.c.too_long.is_(False)
    with engine.store.read() as conn:
        for tracker, state, n in conn.execute(
            select(entities_t.c.tracker, entities_t.c.state, func.count())
            .where(entities_t.c.tracker.in_(names))
            .group_by(entities_t.c.tracker, entities_t.c.state)
        ).all():
            counts[(tracker, state)] = n
        for target, condition in ((flagged, entities_t.c.too_long.is_(True)), (late, due)):
            for tracker, n in conn.execute(
                select(entities_t.c.tracker, func.count())
                .where(entities_t.c.tracker.in_(names), condition)
                .group_by(entities_t.c.tracker)
            ).all():
                target[tracker] = n
    summaries = []
    for name in names:
        definition = registry.tracker(name)
        summary = TrackerSummary(name, definition.description)
        known = list(definition.states)
        extra = sorted(s for (t, s) in counts if t == name and s not in known)
        for state in known + extra:
            summary.states.append((state, counts.get((name, state), 0), state in definition.final))
        summary.too_long_count = flagged.get(name, 0)
        summary.overdue_count = late.get(name, 0)
        if summary.too_long_count:
            summary.too_long = registry.list(name, too_long=True, limit=FLAGGED_SHOWN)
        if summary.overdue_count:
            summary.overdue = registry.list(name, overdue=True, limit=FLAGGED_SHOWN)
        summaries.append(summary)
    return summaries


# --- a job's events, dead letters, locks --------------------------------------------------------


def recent_events(engine: Engine, job_id: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The newest `limit` events of a job, oldest first, and whether older ones were left out."""
    q = (
        select(events_t)
        .where(events_t.c.job_id == job_id)
        .order_by(events_t.c.id.desc())
        .limit(limit + 1)
    )
    with engine.store.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q).all()]
    return list(reversed(rows[:limit])), len(rows) > limit


def dead_letters(
    engine: Engine, *, job_id: int | None, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Dead letters, newest first, optionally of one job, older than `before_id`."""
    q = select(dead_t).order_by(dead_t.c.id.desc()).limit(limit)
    if job_id is not None:
        q = q.where(dead_t.c.job_id == job_id)
    if before_id is not None:
        q = q.where(dead_t.c.id < before_id)
    with engine.store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(q).all()]


def locks(engine: Engine) -> list[LockInfo]:
    return engine.locks.list()
