"""Trackers: long-lived outside things (a consortial loan, a repository item in review) whose
state a handler polls until they reach a final state.

def poll_item(entity: TrackedView) -> Poll:
    item = dspace.item(entity.data["uuid"])
    return Poll("ARCHIVED", "handle assigned", {"handle": item.handle}) if item.archived else Poll()

review = Tracker("dspace-review", poll_item, states=["IN_REVIEW", "ARCHIVED"], final=["ARCHIVED"],
                 profiles={"live": {"IN_REVIEW": StatePolling(interval=60, factor=2,
                                                              max_interval=3600,
                                                              too_long_after=14 * 86400)}})
engine.trackers.register(review)
engine.trackers.track("dspace-review", "koha:42", "IN_REVIEW", {"uuid": "..."})

Polling rules come per profile (`settings.tracker_profile`, e.g. `dev` or `live`) and state:
the tracker's own `profiles`, overridden key by key by `[trackers.profiles.PROFILE.TRACKER.STATE]`
in the config file. A state without an interval, and every final state, is not polled.
- Backoff: each poll that finds the state unchanged multiplies the interval by `factor`, up to
  `max_interval`; a state change starts again from `interval`.
- Too long: once an entity has been `too_long_after` seconds in one state (counted from entering
  it, or from the last `acknowledge`), it is flagged `too_long` and no longer polled until a person
  acts: `acknowledge` (restart the clock, poll again), `transition` (set a state by hand) or
  `force_poll` (poll now; it clears the flag only if the state changed).
- A handler that raises: the error is kept on the entity and audited (once per distinct message),
  and polling goes on with backoff, so the entity is never lost.
- Every change is audited in TrackerTransition in the transaction that makes it: state changes
  (from, to, reason, data, by), and also `created`, `too_long`, `error`, `acknowledged` and
  `force_poll` rows.

The scheduler loop calls `poll_due`: it claims due entities in batches (a conditional UPDATE of
`claimed_until`, so two servers never poll one entity at once and a slow poll is not started
again), polls them in a bounded thread pool, and records the lag in `engine.metrics.tracker_lag`.
A poll result is applied only if the entity is unchanged since the claim (its `version`).
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .config import StatePolling
from .errors import ConfigError, TrackerError, describe
from .store.database import utcnow
from .store.models import TrackedEntity, TrackerTransition

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("shelfwork.trackers")
entities_t = TrackedEntity.__table__
transitions_t = TrackerTransition.__table__

# TrackerTransition.kind
CREATED = "created"
TRANSITION = "transition"
TOO_LONG = "too_long"
POLL_ERROR = "error"
ACKNOWLEDGED = "acknowledged"
FORCE_POLL = "force_poll"


# --- definitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """What a handler found: the new state (None or the same: unchanged), why, and fields to merge
    into the entity's data (recorded with the transition when the state changes)."""

    state: str | None = None
    reason: str = ""
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrackedView:
    """An entity as handlers, the API and the CLI see it."""

    id: int
    tracker: str
    key: str
    state: str
    data: dict[str, Any]
    entered_state_at: datetime
    acknowledged_at: datetime | None
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    interval: float | None
    unchanged_polls: int
    polls: int
    too_long: bool
    error: str | None
    claimed_until: datetime | None
    claimed_by: str | None
    version: int
    created_at: datetime

    def time_in_state(self, now: datetime | None = None) -> float:
        return ((now or utcnow()) - self.entered_state_at).total_seconds()


@dataclass(frozen=True)
class TransitionView:
    id: int
    entity_id: int
    at: datetime
    kind: str
    from_state: str | None
    to_state: str
    reason: str
    by: str
    data: Any


Handler = Callable[[TrackedView], Poll | None]


@dataclass
class Tracker:
    """A kind of tracked entity: its states, which are final, how to poll, and default polling
    rules per profile (profile -> state -> StatePolling or a dict of its fields)."""

    name: str
    poll: Handler
    states: Sequence[str]
    final: Sequence[str] = ()
    profiles: Mapping[str, Mapping[str, StatePolling | Mapping[str, Any]]] = field(
        default_factory=dict
    )
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100:
            raise TrackerError(f"tracker name {self.name!r} must be 1 to 100 characters")
        self.states = tuple(self.states)
        self.final = tuple(self.final)
        if not self.states:
            raise TrackerError(f"tracker {self.name!r} lists no states")
        for what, names in (("final", self.final), ("profile", self._profile_states())):
            unknown = sorted(set(names) - set(self.states))
            if unknown:
                raise TrackerError(
                    f"tracker {self.name!r}: {what} state(s) {unknown} are not in its states "
                    f"({', '.join(self.states)})"
                )
        self.profiles = {
            profile: {
                state: rule if isinstance(rule, StatePolling) else StatePolling.model_validate(rule)
                for state, rule in rules.items()
            }
            for profile, rules in self.profiles.items()
        }

    def _profile_states(self) -> list[str]:
        return [state for rules in self.profiles.values() for state in rules]


@dataclass(frozen=True)
class StateRule:
    """How one state is polled under the active profile (seconds throughout)."""

    interval: float | None = None
    factor: float = 1.0
    max_interval: float | None = None
    too_long_after: float | None = None

    @property
    def polled(self) -> bool:
        return self.interval is not None

    def interval_after(self, unchanged_polls: int) -> float | None:
        """The wait before the next poll after `unchanged_polls` polls found nothing new."""
        if self.interval is None:
            return None
        value = self.interval
        if value <= 0 or self.factor <= 1 or self.max_interval is None:
            return value
        for _ in range(max(unchanged_polls, 0)):
            value *= self.factor
            if value >= self.max_interval:
                return self.max_interval
        return value

    def deadline(self, since: datetime) -> datetime | None:
        if self.too_long_after is None:
            return None
        return since + timedelta(seconds=self.too_long_after)

    def is_too_long(self, since: datetime, now: datetime) -> bool:
        deadline = self.deadline(since)
        return deadline is not None and now >= deadline

    def next_poll_at(self, now: datetime, unchanged_polls: int, since: datetime) -> datetime | None:
        """When to look next: the next poll, or the too-long deadline if that comes first (so a
        state that is not polled is still flagged on time)."""
        wait = self.interval_after(unchanged_polls)
        candidates = [d for d in (self.deadline(since),) if d is not None]
        if wait is not None:
            candidates.append(now + timedelta(seconds=wait))
        return min(candidates) if candidates else None


NOT_POLLED = StateRule()


def resolve_rules(
    tracker: Tracker, profile: str, configured: Mapping[str, Mapping[str, StatePolling]]
) -> dict[str, StateRule]:
    """The rule for every state of `tracker` under `profile`: the tracker's defaults, overridden key
    by key by the config (`configured` = settings.tracker_profiles[profile])."""
    defaults = tracker.profiles.get(profile)
    overrides = configured.get(tracker.name)
    if defaults is None and overrides is None:
        has = ", ".join(sorted(tracker.profiles)) or "none"
        raise TrackerError(
            f"tracker {tracker.name!r} has no polling rules for profile {profile!r} "
            f"(it has: {has}); add them to the tracker or under "
            f"[trackers.profiles.{profile}.{tracker.name}]"
        )
    unknown = sorted(set(overrides or {}) - set(tracker.states))
    if unknown:
        raise TrackerError(
            f"[trackers.profiles.{profile}.{tracker.name}] names unknown state(s) {unknown}; "
            f"tracker {tracker.name!r} has: {', '.join(tracker.states)}"
        )
    rules: dict[str, StateRule] = {}
    for state in tracker.states:
        if state in tracker.final:
            rules[state] = NOT_POLLED
            continue
        merged: dict[str, Any] = {}
        if defaults and state in defaults:
            merged.update(defaults[state].model_dump())
        if overrides and state in overrides:
            merged.update(overrides[state].model_dump(exclude_unset=True))
        rule = StateRule(**merged) if merged else NOT_POLLED
        where = f"tracker {tracker.name!r}, profile {profile!r}, state {state!r}"
        if rule.polled and rule.factor > 1 and rule.max_interval is None:
            raise TrackerError(f"{where}: factor {rule.factor} needs a max_interval")
        if (
            rule.interval is not None
            and rule.max_interval is not None
            and rule.max_interval < rule.interval
        ):
            raise TrackerError(
                f"{where}: max_interval {rule.max_interval} is below interval {rule.interval}"
            )
        rules[state] = rule
    return rules


# --- what one poll or action does to an entity -------------------------------------------------


@dataclass
class _Outcome:
    state: str
    reason: str = ""
    data: dict[str, Any] | None = None
    error: str | None = None
    polled: bool = True  # the handler ran (counts for backoff)


_VIEW_FIELDS = list(TrackedView.__dataclass_fields__)
_TRANSITION_FIELDS = list(TransitionView.__dataclass_fields__)


def _view(row: Any) -> TrackedView:
    m = row._mapping
    values = {k: m[k] for k in _VIEW_FIELDS}
    values["data"] = dict(values["data"] or {})
    return TrackedView(**values)


def _transition_view(row: Any) -> TransitionView:
    m = row._mapping
    return TransitionView(**{k: m[k] for k in _TRANSITION_FIELDS})


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds} s"


def _audit(
    conn: Connection,
    entity_id: int,
    at: datetime,
    kind: str,
    from_state: str | None,
    to_state: str,
    reason: str,
    by: str,
    data: Any = None,
) -> None:
    conn.execute(
        insert(transitions_t).values(
            entity_id=entity_id,
            at=at,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            by=by,
            data=data,
        )
    )


# --- the service -------------------------------------------------------------------------------


class Trackers:
    """Registered trackers, their entities in the metadata DB, and the poller."""

    #: a claimed poll may run this long before another server may start it again
    claim_ttl: float = 300.0
    #: how long `stop` waits for running polls
    stop_timeout: float = 10.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self._trackers: dict[str, Tracker] = {}
        self._rules: dict[str, dict[str, StateRule]] = {}
        self._mutex = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: dict[int, tuple[Future[None], str]] = {}
        self._stopped = False
        for module_name in engine.settings.pipeline_modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigError(
                    f"pipeline module {module_name!r} cannot be imported: {exc}"
                ) from None
            for tracker in getattr(module, "TRACKERS", []):
                # A factory gets the engine, for handlers that need settings (a remote's URL).
                self.register(tracker if isinstance(tracker, Tracker) else tracker(engine))

    # --- definitions -------------------------------------------------------------------------

    def register(self, tracker: Tracker) -> Tracker:
        """Know `tracker` in this process (replacing one of the same name); checks its rules for
        the active profile now, so a bad config fails at start-up, not at the first poll."""
        settings = self.engine.settings
        configured = settings.tracker_profiles.get(settings.tracker_profile, {})
        rules = resolve_rules(tracker, settings.tracker_profile, configured)
        with self._mutex:
            self._trackers[tracker.name] = tracker
            self._rules[tracker.name] = rules
        return tracker

    def tracker(self, name: str) -> Tracker:
        try:
            return self._trackers[name]
        except KeyError:
            known = ", ".join(sorted(self._trackers)) or "none"
            raise TrackerError(f"unknown tracker {name!r}; registered trackers: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._trackers)

    def rules(self, name: str) -> dict[str, StateRule]:
        """The polling rule of each state of a tracker under the active profile."""
        self.tracker(name)
        return dict(self._rules[name])

    def _check_state(self, tracker: Tracker, state: str) -> None:
        if state not in tracker.states:
            raise TrackerError(
                f"{state!r} is not a state of tracker {tracker.name!r}; "
                f"its states: {', '.join(tracker.states)}"
            )

    def _rule(self, tracker: str, state: str) -> StateRule:
        return self._rules.get(tracker, {}).get(state, NOT_POLLED)

    # --- entities ----------------------------------------------------------------------------

    def track(
        self,
        tracker: str,
        key: str,
        state: str,
        data: dict[str, Any] | None = None,
        *,
        by: str = "api",
    ) -> TrackedView:
        """Start tracking `key` in `state` (first poll after that state's interval). Idempotent:
        an entity already tracked under (tracker, key) is returned as it is."""
        definition = self.tracker(tracker)
        self._check_state(definition, state)
        if not key or len(key) > 300:
            raise TrackerError(f"tracker {tracker!r}: key must be 1 to 300 characters")
        _json(data, f"data for {tracker}/{key}")
        existing = self._find(tracker, key)
        if existing is not None:
            return _view(existing)
        now = utcnow()
        rule = self._rule(tracker, state)
        try:
            with self.store.write() as conn:
                entity_id = conn.execute(
                    insert(entities_t)
                    .values(
                        tracker=tracker,
                        key=key,
                        state=state,
                        data=dict(data or {}),
                        entered_state_at=now,
                        next_poll_at=None
                        if state in definition.final
                        else rule.next_poll_at(now, 0, now),
                        interval=rule.interval_after(0),
                        unchanged_polls=0,
                        polls=0,
                        too_long=False,
                        version=1,
                        created_at=now,
                    )
                    .returning(entities_t.c.id)
                ).scalar_one()
                _audit(conn, entity_id, now, CREATED, None, state, "tracking started", by, data)
        except IntegrityError:
            pass  # tracked concurrently: return that one
        return self.get(tracker, key)

    def _find(self, tracker: str, key: str) -> Any:
        with self.store.read() as conn:
            return conn.execute(
                select(entities_t).where(entities_t.c.tracker == tracker, entities_t.c.key == key)
            ).first()

    def _row(self, tracker: str, key: str) -> Any:
        row = self._find(tracker, key)
        if row is None:
            raise TrackerError(f"{tracker}/{key} is not tracked")
        return row

    def get(self, tracker: str, key: str) -> TrackedView:
        return _view(self._row(tracker, key))

    def list(
        self,
        tracker: str | None = None,
        state: str | None = None,
        too_long: bool | None = None,
        overdue: bool | None = None,
        *,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[TrackedView]:
        """Entities by id; `overdue=True`: due for a poll that has not happened yet."""
        q = (
            select(entities_t)
            .where(entities_t.c.id > after_id)
            .order_by(entities_t.c.id)
            .limit(limit)
        )
        if tracker is not None:
            q = q.where(entities_t.c.tracker == tracker)
        if state is not None:
            q = q.where(entities_t.c.state == state)
        if too_long is not None:
            q = q.where(entities_t.c.too_long.is_(too_long))
        if overdue is not None:
            due = (entities_t.c.next_poll_at <= utcnow()) & entities_t.c.too_long.is_(False)
            q = q.where(due if overdue else ~due | entities_t.c.next_poll_at.is_(None))
        with self.store.read() as conn:
            return [_view(r) for r in conn.execute(q).all()]

    def transitions(self, tracker: str, key: str, limit: int = 500) -> list[TransitionView]:
        """The audit trail of one entity, oldest first."""
        row = self._row(tracker, key)
        q = (
            select(transitions_t)
            .where(transitions_t.c.entity_id == row.id)
            .order_by(transitions_t.c.id)
            .limit(limit)
        )
        with self.store.read() as conn:
            return [_transition_view(r) for r in conn.execute(q).all()]

    # --- what people do ----------------------------------------------------------------------

    def transition(
        self,
        entity: TrackedView,
        to_state: str,
        reason: str = "",
        data: dict[str, Any] | None = None,
        *,
        by: str = "operator",
    ) -> TrackedView:
        """Set a state by hand (audited with `by`); clears too_long like any state change."""
        definition = self.tracker(entity.tracker)
        self._check_state(definition, to_state)
        _json(data, "transition data")
        for _ in range(5):
            row = self._row(entity.tracker, entity.key)
            if row.state == to_state:
                raise TrackerError(
                    f"{entity.tracker}/{entity.key} is already {to_state}; use acknowledge to "
                    "restart its too-long clock"
                )
            outcome = _Outcome(to_state, reason or f"set by {by}", data, polled=False)
            view = self._apply(row, outcome, utcnow(), by=by)
            if view is not None:
                return view
        raise TrackerError(f"{entity.tracker}/{entity.key} keeps changing; try again")

    def acknowledge(
        self, tracker: str, key: str, *, by: str = "operator", note: str = ""
    ) -> TrackedView:
        """A person has looked: clear too_long, restart the too-long clock and poll again soon."""
        self.tracker(tracker)
        for _ in range(5):
            row = self._row(tracker, key)
            now = utcnow()
            rule = self._rule(tracker, row.state)
            nxt = now if rule.polled else rule.next_poll_at(now, 0, now)
            with self.store.write() as conn:
                res = conn.execute(
                    update(entities_t)
                    .where(entities_t.c.id == row.id, entities_t.c.version == row.version)
                    .values(
                        too_long=False,
                        acknowledged_at=now,
                        unchanged_polls=0,
                        interval=rule.interval_after(0),
                        next_poll_at=nxt,
                        version=entities_t.c.version + 1,
                    )
                )
                if res.rowcount == 1:
                    was = "was flagged too long" if row.too_long else "too-long clock restarted"
                    text = f"{was}; acknowledged by {by}" + (f": {note}" if note else "")
                    _audit(conn, row.id, now, ACKNOWLEDGED, row.state, row.state, text, by)
                    break
        else:
            raise TrackerError(f"{tracker}/{key} keeps changing; try again")
        return self.get(tracker, key)

    def force_poll(self, tracker: str, key: str, *, by: str = "operator") -> TrackedView:
        """Poll one entity now, in this thread, even if flagged too long or its state is not
        polled. Forcing is a person acting: a state change clears too_long; an unchanged state
        leaves the flag (acknowledge to resume polling)."""
        definition = self.tracker(tracker)
        row = self._row(tracker, key)
        if row.state in definition.final:
            raise TrackerError(f"{tracker}/{key} is in final state {row.state}; nothing to poll")
        now = utcnow()
        token = self._token()
        with self.store.write() as conn:
            claimed = conn.execute(
                update(entities_t)
                .where(
                    entities_t.c.id == row.id,
                    or_(entities_t.c.claimed_until.is_(None), entities_t.c.claimed_until < now),
                )
                .values(
                    claimed_until=now + timedelta(seconds=self.claim_ttl),
                    claimed_by=token,
                    version=entities_t.c.version + 1,
                )
                .returning(*entities_t.c)
            ).first()
        if claimed is None:
            raise TrackerError(
                f"{tracker}/{key} is being polled right now by {row.claimed_by}; try again shortly"
            )
        outcome = self._run_handler(definition, claimed)
        view = self._apply(claimed, outcome, utcnow(), by=by, forced=True, token=token)
        return view if view is not None else self.get(tracker, key)

    # --- polling -----------------------------------------------------------------------------

    def poll_due(self, now: datetime | None = None, *, wait: bool = False) -> int:
        """Claim up to `tracker_batch` due entities (fewer while earlier polls are still running)
        and poll them in the thread pool. `now` fixes the clock (tests); `wait` blocks until these
        polls are done. Returns how many polls were started; updates engine.metrics."""
        if not self._trackers or self._stopped:
            return 0
        at = now or utcnow()
        self.engine.metrics.tracker_lag = self.lag(at)
        with self._mutex:
            names = list(self._trackers)
            busy = list(self._in_flight)
        room = self.engine.settings.tracker_batch - len(busy)
        if room <= 0:
            return 0
        token = self._token()
        with self.store.write() as conn:
            free = or_(entities_t.c.claimed_until.is_(None), entities_t.c.claimed_until < at)
            due = (
                entities_t.c.tracker.in_(names),
                entities_t.c.next_poll_at <= at,
                entities_t.c.too_long.is_(False),
                free,
            )
            q = select(entities_t.c.id).where(*due)
            if busy:
                q = q.where(entities_t.c.id.not_in(busy))
            ids = list(
                conn.execute(
                    q.order_by(entities_t.c.next_poll_at, entities_t.c.id)
                    .limit(room)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                return 0
            rows = conn.execute(
                update(entities_t)
                .where(entities_t.c.id.in_(ids), *due)
                .values(
                    claimed_until=at + timedelta(seconds=self.claim_ttl),
                    claimed_by=token,
                    version=entities_t.c.version + 1,
                )
                .returning(*entities_t.c)
            ).all()
        rows.sort(key=lambda r: (r.next_poll_at, r.id))
        pool = self._start_pool()
        futures: list[Future[None]] = []
        with self._mutex:
            for row in rows:
                future = pool.submit(self._poll_claimed, row, now, token)
                self._in_flight[row.id] = (future, token)
                futures.append(future)
        if wait:
            wait_all(futures)
        return len(rows)

    def lag(self, now: datetime | None = None) -> float:
        """Seconds the most overdue entity (due, not being polled) is behind its planned poll."""
        if not self._trackers:
            return 0.0
        at = now or utcnow()
        with self._mutex:
            names = list(self._trackers)
        q = select(func.min(entities_t.c.next_poll_at)).where(
            entities_t.c.tracker.in_(names),
            entities_t.c.next_poll_at <= at,
            entities_t.c.too_long.is_(False),
            or_(entities_t.c.claimed_until.is_(None), entities_t.c.claimed_until < at),
        )
        with self.store.read() as conn:
            oldest = conn.execute(q).scalar()
        if oldest is None:
            return 0.0
        if oldest.tzinfo is None:  # min() over SQLite bypasses the column type
            oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=at.tzinfo)
        return max((at - oldest).total_seconds(), 0.0)

    def stop(self) -> None:
        """Give running polls `stop_timeout` seconds to finish; give back the claims of those not
        started. A poll still running after that keeps its claim until `claim_ttl` runs out."""
        self._stopped = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        with self._mutex:
            futures = [future for future, _ in self._in_flight.values()]
        _, running = wait_all(futures, timeout=self.stop_timeout)
        if running:
            log.warning("%d tracker poll(s) still running at shutdown", len(running))
        with self._mutex:
            unstarted = [(i, t) for i, (f, t) in self._in_flight.items() if f.cancelled()]
            for entity_id, _ in unstarted:
                del self._in_flight[entity_id]
        for entity_id, token in unstarted:
            try:
                self._release(entity_id, token)
            except Exception:
                log.debug("could not release tracker claim %s", entity_id, exc_info=True)

    def _start_pool(self) -> ThreadPoolExecutor:
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.engine.settings.tracker_concurrency, thread_name_prefix="shelfwork-poll"
                )
            return self._pool

    def _token(self) -> str:
        return f"{self.engine.node_id}:{uuid.uuid4().hex[:8]}"

    def _poll_claimed(self, row: Any, now: datetime | None, token: str) -> None:
        try:
            definition = self._trackers[row.tracker]
            rule = self._rule(row.tracker, row.state)
            if row.state in definition.final or not rule.polled:
                outcome = _Outcome(row.state, polled=False)  # due only for its too-long deadline
            else:
                outcome = self._run_handler(definition, row)
            self._apply(row, outcome, now or utcnow(), by="poll", token=token)
        except Exception:
            log.exception("tracker %s: poll of %s failed to record", row.tracker, row.key)
            try:
                self._release(row.id, token)
            except Exception:
                log.debug("could not release tracker claim %s", row.id, exc_info=True)
        finally:
            with self._mutex:
                self._in_flight.pop(row.id, None)
                self.engine.metrics.tracker_polls += 1

    def _run_handler(self, definition: Tracker, row: Any) -> _Outcome:
        """Call the handler and check what it returned; a failure becomes the outcome's error."""
        try:
            result = definition.poll(_view(row))
            if result is None:
                result = Poll()
            if not isinstance(result, Poll):
                raise TrackerError(f"handler returned {type(result).__name__}, not Poll")
            state = result.state or row.state
            self._check_state(definition, state)
            _json(result.data, "poll data")
        except Exception as exc:
            log.warning("tracker %s: polling %s failed: %s", row.tracker, row.key, describe(exc))
            return _Outcome(row.state, error=describe(exc))
        return _Outcome(state, result.reason, result.data)

    def _release(self, entity_id: int, token: str) -> None:
        with self.store.write() as conn:
            conn.execute(
                update(entities_t)
                .where(entities_t.c.id == entity_id, entities_t.c.claimed_by == token)
                .values(claimed_until=None, claimed_by=None)
            )

    def _apply(
        self,
        row: Any,
        outcome: _Outcome,
        now: datetime,
        *,
        by: str,
        forced: bool = False,
        token: str | None = None,
    ) -> TrackedView | None:
        """Write what a poll or a person did, with its audit rows, in one transaction, provided
        nothing else changed the entity since `row` was read. None if something did."""
        definition = self._trackers.get(row.tracker)
        final = definition.final if definition else ()
        changed = outcome.state != row.state
        values: dict[str, Any] = {
            "version": entities_t.c.version + 1,
            "data": {**(row.data or {}), **(outcome.data or {})},
        }
        if token is not None:
            values.update(claimed_until=None, claimed_by=None)
        if outcome.polled:
            values.update(last_polled_at=now, polls=entities_t.c.polls + 1, error=outcome.error)
        audits: list[tuple[str, str | None, str, str, str, Any]] = []
        if changed:
            rule = self._rule(row.tracker, outcome.state)
            is_final = outcome.state in final
            values.update(
                state=outcome.state,
                entered_state_at=now,
                acknowledged_at=None,
                unchanged_polls=0,
                too_long=False,
                error=outcome.error,
                interval=None if is_final else rule.interval_after(0),
                next_poll_at=None if is_final else rule.next_poll_at(now, 0, now),
            )
            reason = outcome.reason or ("forced poll" if forced else "")
            audits.append((TRANSITION, row.state, outcome.state, reason, by, outcome.data))
        else:
            rule = self._rule(row.tracker, row.state)
            unchanged = row.unchanged_polls + (1 if outcome.polled else 0)
            since = row.acknowledged_at or row.entered_state_at
            values["unchanged_polls"] = unchanged
            if outcome.error and outcome.error != row.error:
                audits.append((POLL_ERROR, row.state, row.state, outcome.error, by, None))
            if row.state in final:
                values.update(next_poll_at=None, interval=None)
            elif row.too_long or rule.is_too_long(since, now):
                values.update(too_long=True, next_poll_at=None)
                if not row.too_long:
                    limit = rule.too_long_after or 0
                    audits.append(
                        (
                            TOO_LONG,
                            row.state,
                            row.state,
                            f"in {row.state} for {_span((now - since).total_seconds())} "
                            f"(limit {_span(limit)}); polling stopped until someone acts",
                            "system",
                            None,
                        )
                    )
            else:
                values.update(
                    interval=rule.interval_after(unchanged),
                    next_poll_at=rule.next_poll_at(now, unchanged, since),
                )
            if forced:
                note = "state unchanged"
                if row.too_long or values.get("too_long"):
                    note += "; still flagged too long (acknowledge to resume polling)"
                audits.append((FORCE_POLL, row.state, row.state, note, by, None))
        with self.store.write() as conn:
            res = conn.execute(
                update(entities_t)
                .where(entities_t.c.id == row.id, entities_t.c.version == row.version)
                .values(**values)
                .returning(*entities_t.c)
            ).first()
            if res is None:
                if token is not None:
                    conn.execute(
                        update(entities_t)
                        .where(entities_t.c.id == row.id, entities_t.c.claimed_by == token)
                        .values(claimed_until=None, claimed_by=None)
                    )
                log.info(
                    "tracker %s: %s changed while it was polled; this poll's result is dropped",
                    row.tracker,
                    row.key,
                )
                return None
            for kind, old, new, reason, who, data in audits:
                _audit(conn, row.id, now, kind, old, new, reason, who, data)
        if changed:
            log.info(
                "tracker %s: %s %s -> %s (%s)",
                row.tracker,
                row.key,
                row.state,
                outcome.state,
                outcome.reason,
            )
        return _view(res)


def _json(data: Any, what: str) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise TrackerError(f"{what} must be a dict, not {type(data).__name__}")
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TrackerError(f"{what} is not JSON: {exc}") from None
