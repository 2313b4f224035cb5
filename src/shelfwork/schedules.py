"""Cron schedules: submit a pipeline's job at the times a cron expression names, in a time zone.

engine.schedules.add("nightly-harvest", "oai-harvest", "30 2 * * *", timezone="Europe/Kyiv",
                     params={"network": "ua"}, when_busy="skip")

Rules, in the order a firing meets them:
- Times are computed in the schedule's own time zone and stored in UTC. When clocks go back,
  a wall time that comes twice fires once, unless the minute or hour field is a wildcard (`*`,
  `*/15`): those follow real time and fire in both hours (as Vixie cron does). A wall time
  skipped when clocks go forward fires at the first instant after the gap. (Limitation: where clocks
  go back only half an hour, as on Lord Howe Island, wildcard expressions fire once in that half
  hour.)
- Misfire (the scheduler was not running at the planned time): a firing more than `misfire_grace`
  seconds late, or several firings due at once, is a misfire. `run_once` submits one late job and
  records how many firings it stands for; `skip` records them as skipped and waits for the next one.
- Claiming a firing is a conditional UPDATE on `next_run_at`, so of several servers sharing one
  database exactly one fires each slot.
- Busy: if a job in the schedule's context (its own, or the one the pipeline derives from the
  params), or an earlier job of this schedule, is still queued or running, `when_busy="skip"`
  records the skip and `when_busy="queue"` submits anyway (admission holds the job until the
  context is free; without a context the two jobs may run side by side).
- Every firing leaves a ScheduleRun row, whatever happened: `submitted`, `skipped_busy`,
  `skipped_duplicate`, `skipped_misfire`, `rejected_full` (QueueFull), `refused` (precondition),
  `error`. A row left as `firing` means the process died between claiming and submitting.

Schedules come from the Python API (`source="api"`) or from `[schedules.NAME]` tables in the config
file (`source="config"`, synced at every server start: see `sync_from_config`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .config import ScheduleConfig
from .errors import (
    ConfigError,
    PreconditionFailed,
    QueueFull,
    ScheduleError,
    ShelfworkError,
    describe,
)
from .store.database import SCHEDULE_LOCK, utcnow
from .store.models import QUEUED, RUNNING, Job, Schedule, ScheduleRun

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("shelfwork.schedules")
schedules_t = Schedule.__table__
runs_t = ScheduleRun.__table__
jobs_t = Job.__table__

# What a firing did (ScheduleRun.outcome and Schedule.last_outcome).
FIRING = "firing"
SUBMITTED = "submitted"
SKIPPED_BUSY = "skipped_busy"
SKIPPED_DUPLICATE = "skipped_duplicate"
SKIPPED_MISFIRE = "skipped_misfire"
REJECTED_FULL = "rejected_full"
REFUSED = "refused"
ERROR = "error"

MISFIRE_POLICIES = ("run_once", "skip")
BUSY_POLICIES = ("skip", "queue")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_HELP = (
    "use five fields (minute hour day-of-month month day-of-week), e.g. '30 2 * * *' for 02:30 "
    "every day, six with seconds last, or @hourly/@daily/@weekly/@monthly/@yearly"
)


class ScheduleNotFound(ScheduleError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}")


# --- cron arithmetic ---------------------------------------------------------------------------


def zone_named(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or ScheduleError saying what is accepted."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


@dataclass(frozen=True)
class Cron:
    """A cron expression bound to a time zone; all arguments and results are aware datetimes."""

    expression: str
    timezone: str
    zone: ZoneInfo
    fields: str
    follows_real_time: bool  # minute or hour is a wildcard: fires in both copies of a repeated hour

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Cron:
        """Check the expression and zone; ScheduleError says what is wrong and what is accepted."""
        zone = zone_named(timezone)
        text = " ".join(str(expression).split())
        fields = _ALIASES.get(text.lower(), text)
        parts = fields.split(" ")
        if len(parts) not in (5, 6):
            raise ScheduleError(
                f"bad cron expression {expression!r}: {len(parts)} field(s); {_CRON_HELP}"
            )
        try:
            croniter(fields, datetime.now(UTC))
        except (ValueError, KeyError) as exc:  # croniter's errors derive from ValueError
            raise ScheduleError(
                f"bad cron expression {expression!r}: {exc}; {_CRON_HELP}"
            ) from None
        cron = cls(expression, timezone, zone, fields, "*" in parts[0] or "*" in parts[1])
        try:
            cron.next_after(datetime.now(UTC))
        except (ValueError, KeyError):
            raise ScheduleError(
                f"cron expression {expression!r} never fires (no such date)"
            ) from None
        return cron

    def _repeated(self, local: datetime) -> bool:
        """True for the second copy of a wall time that clocks going back made happen twice."""
        wall = local.replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        return local.astimezone(UTC) != first

    def _walk(self, after: datetime) -> Iterator[datetime]:
        """Firings strictly after `after`, in UTC, in order."""
        after_utc = after.astimezone(UTC)
        it = croniter(self.fields, after_utc.astimezone(self.zone))
        while True:
            local = it.get_next(datetime)
            at = local.astimezone(UTC)
            if at <= after_utc:
                continue
            if not self.follows_real_time and self._repeated(local):
                continue
            yield at

    def next_after(self, moment: datetime) -> datetime:
        """The first firing strictly after `moment` (UTC)."""
        return next(self._walk(moment))

    def upcoming(self, moment: datetime, count: int) -> list[datetime]:
        walk = self._walk(moment)
        return [next(walk) for _ in range(count)]

    def between(self, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
        """Firings in (after, until], at most `limit`; the flag says whether more were left out."""
        out: list[datetime] = []
        for at in self._walk(after):
            if at > until:
                return out, False
            if len(out) == limit:
                return out, True
            out.append(at)
        raise AssertionError("unreachable")  # pragma: no cover

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last firing at or before `moment`, or None if there is none within a year."""
        moment = moment.astimezone(UTC)
        start = moment.replace(microsecond=0) + timedelta(seconds=1)
        it = croniter(self.fields, start.astimezone(self.zone))
        for _ in range(1_000_000):
            local = it.get_prev(datetime)
            at = local.astimezone(UTC)
            if moment - at > timedelta(days=366):
                return None
            if at > moment or (not self.follows_real_time and self._repeated(local)):
                continue
            return at
        return None  # pragma: no cover


@dataclass(frozen=True)
class FiringPlan:
    """What claiming a due schedule does, decided from the clock alone (no database)."""

    next_run: datetime  # where next_run_at moves: the first slot after now
    run_for: datetime | None  # the slot a job is submitted for; None: nothing runs
    folded: int  # missed slots this one run stands for (misfire = run_once)
    skipped: int  # slots recorded as skipped (misfire = skip)
    skipped_from: datetime | None
    late_by: float  # seconds the latest due slot is late
    at_least: bool  # there were too many slots to count; the counts are lower bounds
    run_note: str
    skip_note: str


def plan_firing(
    cron: Cron,
    planned: datetime,
    now: datetime,
    *,
    misfire: str,
    grace: float,
    max_counted: int = 1000,
) -> FiringPlan:
    """Decide what to do with the slots due from `planned` (the stored next_run_at) up to `now`.

    All slots but the latest are missed; the latest is late if more than `grace` seconds past.
    run_once: one job for the latest slot, standing for the missed ones. skip: missed slots are
    recorded as skipped, and the latest too if it is late; an on-time latest slot still runs.
    """
    later, capped = cron.between(planned, now, max_counted)
    due = [planned, *later]
    latest = due[-1]
    if capped:
        latest = cron.latest_at_or_before(now) or latest
    missed = len(due) - 1
    late_by = max((now - latest).total_seconds(), 0.0)
    late = late_by > grace
    about = "at least " if capped else ""
    next_run = cron.next_after(now)
    if misfire == "skip":
        if not (late or missed):
            return FiringPlan(next_run, latest, 0, 0, None, late_by, capped, "", "")
        count = missed + 1 if late else missed
        last_skipped = latest if late else due[-2]
        span = (
            f"from {due[0].isoformat()} to {last_skipped.isoformat()}"
            if count > 1
            else f"at {due[0].isoformat()}"
        )
        note = (
            f"{about}{count} firing(s) {span} missed (the scheduler was not running); "
            "skipped (misfire = skip)"
        )
        return FiringPlan(
            next_run, None if late else latest, 0, count, due[0], late_by, capped, "", note
        )
    note = ""
    if late or missed:
        note = f"late by {_ago(late_by)}"
        if missed:
            note += (
                f"; {about}{missed} earlier firing(s) since {due[0].isoformat()} were missed "
                "and run as this one"
            )
        note += " (misfire = run_once)"
    return FiringPlan(next_run, latest, missed, 0, None, late_by, capped, note, "")


# --- views -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleView:
    id: int
    name: str
    pipeline: str
    params: dict[str, Any]
    cron: str
    timezone: str
    context: str | None
    lane: str | None
    priority: int
    misfire: str
    when_busy: str
    paused: bool
    paused_by: str | None
    source: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    last_job_id: int | None
    created_at: datetime
    updated_at: datetime | None

    @property
    def next_run_local(self) -> datetime | None:
        """`next_run_at` on the schedule's own clock."""
        if self.next_run_at is None:
            return None
        return self.next_run_at.astimezone(ZoneInfo(self.timezone))


@dataclass(frozen=True)
class ScheduleRunView:
    id: int
    schedule_id: int
    at: datetime
    planned_for: datetime
    outcome: str
    job_id: int | None
    missed: int
    detail: str | None


@dataclass(frozen=True)
class ConfigSync:
    """What `sync_from_config` changed, by schedule name."""

    added: list[str]
    updated: list[str]
    removed: list[str]
    unchanged: list[str]


_SCHEDULE_FIELDS = [f for f in ScheduleView.__dataclass_fields__]
_RUN_FIELDS = [f for f in ScheduleRunView.__dataclass_fields__]
# Columns that define a schedule (as opposed to its run state).
_DEFINITION = (
    "pipeline",
    "params",
    "cron",
    "timezone",
    "context",
    "lane",
    "priority",
    "misfire",
    "when_busy",
)


def _view(row: Any) -> ScheduleView:
    m = row._mapping
    return ScheduleView(**{k: m[k] for k in _SCHEDULE_FIELDS})


def _run_view(row: Any) -> ScheduleRunView:
    m = row._mapping
    return ScheduleRunView(**{k: m[k] for k in _RUN_FIELDS})


def _ago(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"


# --- the service -------------------------------------------------------------------------------


class Schedules:
    """Schedules stored in the metadata DB; `fire_due` is called by the scheduler loop."""

    #: a firing this many seconds late still counts as on time (scheduler tick, quick restart)
    misfire_grace: float = 60.0
    #: missed firings counted one by one before the count is reported as "at least"
    max_counted: int = 1000
    #: schedules looked at per `fire_due` pass
    batch: int = 100

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store

    # --- definitions -------------------------------------------------------------------------

    def _definition(
        self,
        name: str,
        pipeline: str,
        cron: str,
        *,
        timezone: str,
        params: dict[str, Any] | None,
        context: str | None,
        lane: str | None,
        priority: int,
        misfire: str,
        when_busy: str,
    ) -> tuple[dict[str, Any], Cron]:
        """Validate a definition against the cron parser, tz database and the pipeline's schema."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScheduleError(
                f"bad schedule name {name!r}: use letters, digits and . _ : - "
                "(up to 200, starting with a letter or digit)"
            )
        parsed = Cron.parse(cron, timezone)
        if misfire not in MISFIRE_POLICIES:
            raise ScheduleError(
                f"schedule {name!r}: misfire must be one of {', '.join(MISFIRE_POLICIES)}, "
                f"not {misfire!r}"
            )
        if when_busy not in BUSY_POLICIES:
            raise ScheduleError(
                f"schedule {name!r}: when_busy must be one of {', '.join(BUSY_POLICIES)}, "
                f"not {when_busy!r}"
            )
        plan = self.engine.registry.get(pipeline)  # UnknownPipeline lists the known ones
        plan.validate(params)  # BadParams names each bad field
        values = dict(
            pipeline=pipeline,
            params=dict(params or {}),
            cron=parsed.expression,
            timezone=timezone,
            context=context,
            lane=lane,
            priority=int(priority),
            misfire=misfire,
            when_busy=when_busy,
        )
        return values, parsed

    def add(
        self,
        name: str,
        pipeline: str,
        cron: str,
        *,
        timezone: str = "UTC",
        params: dict[str, Any] | None = None,
        context: str | None = None,
        lane: str | None = None,
        priority: int = 0,
        misfire: str = "run_once",
        when_busy: str = "skip",
        paused: bool = False,
        source: str = "api",
        replace: bool = False,
    ) -> ScheduleView:
        """Create a schedule (or, with `replace`, redefine an API schedule of that name, keeping its
        history). Raises ScheduleError, UnknownPipeline or BadParams with what to fix."""
        values, parsed = self._definition(
            name,
            pipeline,
            cron,
            timezone=timezone,
            params=params,
            context=context,
            lane=lane,
            priority=priority,
            misfire=misfire,
            when_busy=when_busy,
        )
        now = utcnow()
        with self.store.write(serialize=SCHEDULE_LOCK) as conn:
            row = conn.execute(select(schedules_t).where(schedules_t.c.name == name)).first()
            if row is not None:
                if row.source == "config" and source != "config":
                    raise ScheduleError(
                        f"schedule {name!r} is defined in the config file; change it there"
                    )
                if not replace:
                    raise ScheduleError(
                        f"schedule {name!r} already exists; delete it first or pass replace=True"
                    )
                self._redefine(conn, row, values, parsed, now)
                if paused and not row.paused:
                    conn.execute(
                        update(schedules_t)
                        .where(schedules_t.c.id == row.id)
                        .values(paused=True, paused_by="api")
                    )
            else:
                try:
                    conn.execute(
                        insert(schedules_t).values(
                            name=name,
                            **values,
                            paused=paused,
                            paused_by=("config" if source == "config" else "api")
                            if paused
                            else None,
                            source=source,
                            next_run_at=parsed.next_after(now),
                            created_at=now,
                            updated_at=now,
                        )
                    )
                except IntegrityError:
                    raise ScheduleError(f"schedule {name!r} already exists") from None
        return self.get(name)

    @staticmethod
    def _redefine(
        conn: Connection, row: Any, values: dict[str, Any], parsed: Cron, now: datetime
    ) -> bool:
        """Write a new definition; the next firing moves only if the timing changed."""
        changes = {k: v for k, v in values.items() if getattr(row, k) != v}
        if not changes:
            return False
        if "cron" in changes or "timezone" in changes or row.next_run_at is None:
            changes["next_run_at"] = parsed.next_after(now)
        changes["updated_at"] = now
        conn.execute(update(schedules_t).where(schedules_t.c.id == row.id).values(**changes))
        return True

    def get(self, name: str) -> ScheduleView:
        with self.store.read() as conn:
            row = conn.execute(select(schedules_t).where(schedules_t.c.name == name)).first()
        if row is None:
            raise ScheduleNotFound(name)
        return _view(row)

    def list(self, *, source: str | None = None, paused: bool | None = None) -> list[ScheduleView]:
        q = select(schedules_t).order_by(schedules_t.c.name)
        if source is not None:
            q = q.where(schedules_t.c.source == source)
        if paused is not None:
            q = q.where(schedules_t.c.paused.is_(paused))
        with self.store.read() as conn:
            return [_view(r) for r in conn.execute(q).all()]

    def upcoming(self, name: str, count: int = 5) -> list[datetime]:
        """The next `count` firing times (UTC) from now, e.g. to show an operator."""
        view = self.get(name)
        return Cron.parse(view.cron, view.timezone).upcoming(utcnow(), count)

    def pause(self, name: str, *, by: str = "operator") -> ScheduleView:
        """Stop firing until `resume`. A pause survives restarts, config syncs included."""
        with self.store.write() as conn:
            res = conn.execute(
                update(schedules_t)
                .where(schedules_t.c.name == name, schedules_t.c.paused.is_(False))
                .values(paused=True, paused_by=by, updated_at=utcnow())
            )
            if res.rowcount == 0:
                self._must_exist(conn, name)
        return self.get(name)

    def resume(self, name: str, *, by: str = "operator") -> ScheduleView:
        """Fire again from the next slot; slots that passed while paused are not misfires."""
        now = utcnow()
        with self.store.write() as conn:
            row = self._must_exist(conn, name)
            if not row.paused:
                return _view(row)
            if row.paused_by == "config" and row.source == "config":
                raise ScheduleError(
                    f"schedule {name!r} is paused in the config file; set paused = false there"
                )
            nxt = Cron.parse(row.cron, row.timezone).next_after(now)
            conn.execute(
                update(schedules_t)
                .where(schedules_t.c.id == row.id)
                .values(paused=False, paused_by=None, next_run_at=nxt, updated_at=now)
            )
        log.info("schedule %s resumed by %s", name, by)
        return self.get(name)

    def delete(self, name: str) -> None:
        """Remove an API schedule and its run history (its jobs stay)."""
        with self.store.write() as conn:
            row = self._must_exist(conn, name)
            if row.source == "config":
                raise ScheduleError(
                    f"schedule {name!r} is defined in the config file; remove it from [schedules] "
                    "there (or pause it)"
                )
            conn.execute(delete(schedules_t).where(schedules_t.c.id == row.id))

    def runs(self, name: str, limit: int = 50) -> list[ScheduleRunView]:
        """What the schedule did, newest first."""
        view = self.get(name)
        q = (
            select(runs_t)
            .where(runs_t.c.schedule_id == view.id)
            .order_by(runs_t.c.id.desc())
            .limit(limit)
        )
        with self.store.read() as conn:
            return [_run_view(r) for r in conn.execute(q).all()]

    @staticmethod
    def _must_exist(conn: Connection, name: str) -> Any:
        row = conn.execute(select(schedules_t).where(schedules_t.c.name == name)).first()
        if row is None:
            raise ScheduleNotFound(name)
        return row

    # --- config ------------------------------------------------------------------------------

    def sync_from_config(self, configs: Sequence[ScheduleConfig]) -> ConfigSync:
        """Make the stored config schedules match the config file, all or nothing.

        The definition (pipeline, cron, params, ...) always comes from the file. Pausing: `paused =
        true` in the file pauses the schedule, and setting it back to false resumes it; a pause made
        by an operator (API/CLI) is kept across syncs and restarts. Config schedules no longer in
        the file are deleted; an API schedule with the same name as a config one is taken over.
        """
        source = self.engine.settings.source or "settings"
        problems: list[str] = []
        checked: dict[str, tuple[ScheduleConfig, dict[str, Any], Cron]] = {}
        for cfg in configs:
            if cfg.name in checked:
                problems.append(f"schedule {cfg.name!r} is defined twice")
                continue
            try:
                values, parsed = self._definition(
                    cfg.name,
                    cfg.pipeline,
                    cfg.cron,
                    timezone=cfg.timezone,
                    params=cfg.params,
                    context=cfg.context,
                    lane=cfg.lane,
                    priority=cfg.priority,
                    misfire=cfg.misfire,
                    when_busy=cfg.when_busy,
                )
            except ShelfworkError as exc:
                problems.append(f"[schedules.{cfg.name}]: {exc}")
                continue
            checked[cfg.name] = (cfg, values, parsed)
        if problems:
            raise ConfigError(f"config file {source}: " + "; ".join(problems))
        report = ConfigSync([], [], [], [])
        now = utcnow()
        with self.store.write(serialize=SCHEDULE_LOCK) as conn:
            rows = {r.name: r for r in conn.execute(select(schedules_t)).all()}
            for name, row in rows.items():
                if row.source == "config" and name not in checked:
                    conn.execute(delete(schedules_t).where(schedules_t.c.id == row.id))
                    report.removed.append(name)
            for name, (cfg, values, parsed) in checked.items():
                row = rows.get(name)
                if row is None:
                    conn.execute(
                        insert(schedules_t).values(
                            name=name,
                            **values,
                            paused=cfg.paused,
                            paused_by="config" if cfg.paused else None,
                            source="config",
                            next_run_at=parsed.next_after(now),
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    report.added.append(name)
                    continue
                changed = self._redefine(conn, row, values, parsed, now)
                extra: dict[str, Any] = {}
                if row.source != "config":
                    log.warning("schedule %s: now defined by config file %s", name, source)
                    extra["source"] = "config"
                if cfg.paused and not row.paused:
                    extra.update(paused=True, paused_by="config")
                elif not cfg.paused and row.paused and row.paused_by == "config":
                    extra.update(paused=False, paused_by=None, next_run_at=parsed.next_after(now))
                if extra:
                    extra["updated_at"] = now
                    conn.execute(
                        update(schedules_t).where(schedules_t.c.id == row.id).values(**extra)
                    )
                (report.updated if changed or extra else report.unchanged).append(name)
        return report

    # --- firing ------------------------------------------------------------------------------

    def fire_due(self, now: datetime | None = None) -> int:
        """Fire every unpaused schedule whose next firing is at or before `now` (default: the
        clock). Returns how many firings this call claimed; each left a ScheduleRun row."""
        at = now or utcnow()
        q = (
            select(schedules_t)
            .where(
                schedules_t.c.paused.is_(False),
                schedules_t.c.next_run_at.is_not(None),
                schedules_t.c.next_run_at <= at,
            )
            .order_by(schedules_t.c.next_run_at)
            .limit(self.batch)
        )
        with self.store.read() as conn:
            rows = conn.execute(q).all()
        claimed = 0
        for row in rows:
            try:
                if self._fire(row, at):
                    claimed += 1
            except Exception:
                log.exception("schedule %s: firing failed", row.name)
        if claimed:
            self.engine.metrics.schedule_fires += claimed
        return claimed

    def _fire(self, row: Any, at: datetime) -> bool:
        planned: datetime = row.next_run_at
        try:
            cron = Cron.parse(row.cron, row.timezone)
        except ScheduleError as exc:  # the stored definition no longer parses (tz data changed?)
            return self._claim_broken(row, planned, at, str(exc))
        plan = plan_firing(
            cron,
            planned,
            at,
            misfire=row.misfire,
            grace=self.misfire_grace,
            max_counted=self.max_counted,
        )
        with self.store.write() as conn:
            res = conn.execute(
                update(schedules_t)
                .where(
                    schedules_t.c.id == row.id,
                    schedules_t.c.next_run_at == planned,
                    schedules_t.c.paused.is_(False),
                )
                .values(next_run_at=plan.next_run, last_run_at=at)
            )
            if res.rowcount != 1:
                return False  # another server fired this slot, or it was paused/changed meanwhile
            if plan.skipped:
                assert plan.skipped_from is not None
                self._record(
                    conn,
                    row.id,
                    at,
                    plan.skipped_from,
                    SKIPPED_MISFIRE,
                    None,
                    plan.skip_note,
                    plan.skipped,
                )
                log.warning("schedule %s: %s", row.name, plan.skip_note)
            if plan.run_for is None:
                self._last(conn, row.id, SKIPPED_MISFIRE, None)
                return True
            run_id = self._record(
                conn, row.id, at, plan.run_for, FIRING, None, plan.run_note or None, plan.folded
            )
        outcome, job_id, detail = self._submit(row, plan.run_for)
        detail = "; ".join(d for d in (plan.run_note, detail) if d) or None
        with self.store.write() as conn:
            conn.execute(
                update(runs_t)
                .where(runs_t.c.id == run_id)
                .values(outcome=outcome, job_id=job_id, detail=detail)
            )
            self._last(conn, row.id, outcome, job_id)
        level = logging.INFO if outcome in (SUBMITTED, SKIPPED_BUSY) else logging.WARNING
        log.log(level, "schedule %s: %s %s", row.name, outcome, detail or "")
        return True

    def _claim_broken(self, row: Any, planned: datetime, at: datetime, reason: str) -> bool:
        """Record why a schedule cannot fire and stop trying until it is redefined."""
        with self.store.write() as conn:
            res = conn.execute(
                update(schedules_t)
                .where(schedules_t.c.id == row.id, schedules_t.c.next_run_at == planned)
                .values(next_run_at=None, last_run_at=at)
            )
            if res.rowcount != 1:
                return False
            self._record(conn, row.id, at, planned, ERROR, None, f"{reason}; fix and re-add it", 0)
            self._last(conn, row.id, ERROR, None)
        log.error("schedule %s cannot fire: %s", row.name, reason)
        return True

    def _submit(self, row: Any, planned: datetime) -> tuple[str, int | None, str]:
        """Submit the schedule's job unless its context is busy; never raises."""
        try:
            pipeline = self.engine.registry.get(row.pipeline)
            model = pipeline.validate(row.params)
            context = row.context
            if context is None and pipeline.context is not None:
                context = pipeline.context(model)
            busy = self._busy(context, row.id)
            if busy is not None and row.when_busy == "skip":
                return SKIPPED_BUSY, None, f"skipped: {busy[1]} (job {busy[0]})"
            result = self.engine.submit(
                row.pipeline,
                row.params,
                context=row.context,
                lane=row.lane,
                priority=row.priority,
                schedule_id=row.id,
                note=f"schedule {row.name!r}, planned for {planned.isoformat()}",
            )
        except QueueFull as exc:
            return REJECTED_FULL, None, str(exc)
        except PreconditionFailed as exc:
            return REFUSED, None, str(exc)
        except Exception as exc:
            return ERROR, None, describe(exc)
        if not result.created:
            return (
                SKIPPED_DUPLICATE,
                result.job_id,
                f"a live job with the same dedup key exists (job {result.job_id})",
            )
        if busy is not None:
            return SUBMITTED, result.job_id, f"queued behind job {busy[0]} ({busy[1]})"
        return SUBMITTED, result.job_id, ""

    def _busy(self, context: str | None, schedule_id: int) -> tuple[int, str] | None:
        """A live job holding the context, else a live job of this schedule: (job id, what)."""
        live = jobs_t.c.state.in_((QUEUED, RUNNING))
        with self.store.read() as conn:
            if context is not None:
                job_id = conn.execute(
                    select(jobs_t.c.id)
                    .where(live, jobs_t.c.context == context)
                    .order_by(jobs_t.c.id)
                    .limit(1)
                ).scalar()
                if job_id is not None:
                    return int(job_id), f"context {context!r} busy"
            job_id = conn.execute(
                select(jobs_t.c.id)
                .where(live, jobs_t.c.schedule_id == schedule_id)
                .order_by(jobs_t.c.id)
                .limit(1)
            ).scalar()
            if job_id is not None:
                return int(job_id), "previous run still queued or running"
        return None

    @staticmethod
    def _record(
        conn: Connection,
        schedule_id: int,
        at: datetime,
        planned: datetime,
        outcome: str,
        job_id: int | None,
        detail: str | None,
        missed: int,
    ) -> int:
        return int(
            conn.execute(
                insert(runs_t)
                .values(
                    schedule_id=schedule_id,
                    at=at,
                    planned_for=planned,
                    outcome=outcome,
                    job_id=job_id,
                    detail=detail,
                    missed=missed,
                )
                .returning(runs_t.c.id)
            ).scalar_one()
        )

    @staticmethod
    def _last(conn: Connection, schedule_id: int, outcome: str, job_id: int | None) -> None:
        values: dict[str, Any] = {"last_outcome": outcome}
        if job_id is not None:
            values["last_job_id"] = job_id
        conn.execute(update(schedules_t).where(schedules_t.c.id == schedule_id).values(**values))
