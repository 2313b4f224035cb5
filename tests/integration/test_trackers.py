"""Trackers against the real store, on both configurations.

The test tracker resembles DCB's consortial-borrowing request: a supplying agency is polled every
second while the request is placed (10 ms in `dev`), a confirmed request with backoff, a loan every
6 hours until it has been out too long (56 days). Most tests call `poll_due(now=..., wait=True)`
with explicit times; one lets the running scheduler loop do the polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from shelfwork.engine import Engine
from shelfwork.errors import TrackerError
from shelfwork.trackers import Poll, TrackedView, Tracker

PLACED, CONFIRMED, LOANED = "REQUEST_PLACED_AT_SUPPLYING_AGENCY", "CONFIRMED", "LOANED"
COMPLETED, CANCELLED = "COMPLETED", "CANCELLED"
DAY = 86400.0


class Supplier:
    """The outside world: what the supplying agency says about each request."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}  # key -> state name, or an exception to raise
        self.calls: dict[str, int] = {}
        self.gate: threading.Event | None = None  # when set, polls wait for it
        self.active = 0
        self.most_active = 0
        self.hold_for_peers = 0  # polls wait until this many have run at once
        self.looked_beyond = False  # whether polls held at that many waited for one more
        self.mutex = threading.Lock()
        self.peers = threading.Condition(self.mutex)

    def poll(self, entity: TrackedView) -> Poll:
        with self.mutex:
            self.calls[entity.key] = self.calls.get(entity.key, 0) + 1
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.peers.notify_all()
        try:
            if self.gate is not None:
                self.gate.wait(20)
            with self.peers:
                if not self.peers.wait_for(
                    lambda: self.most_active >= self.hold_for_peers, timeout=10
                ):
                    self.hold_for_peers = 0  # fewer ever ran at once: the test will say so
                elif self.hold_for_peers and not self.looked_beyond:
                    # Held at the bound, give a poll it should keep out a moment to start. A
                    # short look: seeing that something does not happen takes time, and a slow
                    # machine can only hide a broken bound here, never fail a sound one.
                    self.peers.wait_for(lambda: self.most_active > self.hold_for_peers, 0.5)
                    self.looked_beyond = True
            said = self.status.get(entity.key, entity.state)
            if isinstance(said, Exception):
                raise said
            if said == entity.state:
                return Poll(data={"checked": self.calls[entity.key]})
            return Poll(said, f"supplier reports {said}", {"supplier_status": said})
        finally:
            with self.mutex:
                self.active -= 1


WORLD = Supplier()


def poll_supplier(entity: TrackedView) -> Poll:
    return WORLD.poll(entity)


dcb = Tracker(
    "dcb-request",
    poll_supplier,
    states=[PLACED, CONFIRMED, LOANED, COMPLETED, CANCELLED],
    final=[COMPLETED, CANCELLED],
    profiles={
        "live": {
            PLACED: {"interval": 1, "too_long_after": 56 * DAY},
            CONFIRMED: {"interval": 600, "factor": 2, "max_interval": 3600},
            LOANED: {"interval": 6 * 3600, "too_long_after": 56 * DAY},
        },
        "dev": {
            PLACED: {"interval": 0.01},
            CONFIRMED: {"interval": 600},
            LOANED: {"interval": 600},
        },
    },
)
TRACKERS = [dcb]  # this module doubles as a `pipeline_modules` entry in one test


@pytest.fixture(autouse=True)
def fresh_world() -> Iterator[Supplier]:
    global WORLD
    WORLD = Supplier()
    yield WORLD
    if WORLD.gate is not None:
        WORLD.gate.set()


def engine_with_tracker(make_engine: Callable[..., Engine], **overrides: Any) -> Engine:
    engine = make_engine(scheduler=False, **overrides)
    engine.trackers.register(dcb)
    return engine


def kinds(engine: Engine, key: str) -> list[tuple[str, str | None, str]]:
    return [(t.kind, t.from_state, t.to_state) for t in engine.trackers.transitions(dcb.name, key)]


def test_polls_move_the_state_and_every_transition_is_audited(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    req = engine.trackers.track(dcb.name, "req-1", PLACED, {"patron": "p1"})
    assert req.next_poll_at == req.entered_state_at + timedelta(seconds=1)
    assert engine.trackers.track(dcb.name, "req-1", LOANED).id == req.id  # idempotent
    t = req.next_poll_at
    assert engine.trackers.poll_due(now=t - timedelta(milliseconds=500), wait=True) == 0

    assert engine.trackers.poll_due(now=t, wait=True) == 1  # unchanged
    WORLD.status["req-1"] = CONFIRMED
    assert engine.trackers.poll_due(now=t + timedelta(seconds=1), wait=True) == 1
    view = engine.trackers.get(dcb.name, "req-1")
    assert view.state == CONFIRMED and view.entered_state_at == t + timedelta(seconds=1)
    assert view.data == {"patron": "p1", "checked": 1, "supplier_status": CONFIRMED}
    assert view.next_poll_at == t + timedelta(seconds=601) and view.polls == 2
    assert view.claimed_by is None and view.claimed_until is None

    WORLD.status["req-1"] = COMPLETED
    engine.trackers.poll_due(now=view.next_poll_at, wait=True)
    done = engine.trackers.get(dcb.name, "req-1")
    assert done.state == COMPLETED and done.next_poll_at is None  # final: never polled again
    assert engine.trackers.poll_due(now=t + timedelta(days=400), wait=True) == 0

    trail = engine.trackers.transitions(dcb.name, "req-1")
    assert [(x.kind, x.from_state, x.to_state) for x in trail] == [
        ("created", None, PLACED),
        ("transition", PLACED, CONFIRMED),
        ("transition", CONFIRMED, COMPLETED),
    ]
    assert trail[1].reason == f"supplier reports {CONFIRMED}" and trail[1].by == "poll"
    assert trail[1].data == {"supplier_status": CONFIRMED}
    assert engine.metrics.tracker_polls == 3


def test_unchanged_polls_back_off_up_to_the_cap(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "req-2", CONFIRMED)
    assert view.interval == 600
    seen = []
    for _ in range(5):
        engine.trackers.poll_due(now=view.next_poll_at, wait=True)
        view = engine.trackers.get(dcb.name, "req-2")
        seen.append((view.next_poll_at - view.last_polled_at).total_seconds())
    assert seen == [1200, 2400, 3600, 3600, 3600]
    assert view.unchanged_polls == 5 and view.interval == 3600
    WORLD.status["req-2"] = LOANED
    engine.trackers.poll_due(now=view.next_poll_at, wait=True)
    loaned = engine.trackers.get(dcb.name, "req-2")
    assert loaned.state == LOANED and loaned.unchanged_polls == 0 and loaned.interval == 6 * 3600


def test_too_long_in_one_state_stops_polling_until_acknowledged(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "loan-1", LOANED)
    polled = engine.trackers.poll_due(now=view.entered_state_at + timedelta(days=57), wait=True)
    assert polled == 1
    flagged = engine.trackers.get(dcb.name, "loan-1")
    assert flagged.too_long and flagged.next_poll_at is None and flagged.state == LOANED
    assert kinds(engine, "loan-1")[-1] == ("too_long", LOANED, LOANED)
    reason = engine.trackers.transitions(dcb.name, "loan-1")[-1].reason
    assert "limit 56.0 days" in reason and "polling stopped" in reason
    calls = WORLD.calls["loan-1"]
    assert engine.trackers.poll_due(now=view.entered_state_at + timedelta(days=90), wait=True) == 0
    assert WORLD.calls["loan-1"] == calls
    assert [e.key for e in engine.trackers.list(dcb.name, too_long=True)] == ["loan-1"]

    ack = engine.trackers.acknowledge(dcb.name, "loan-1", by="alice", note="patron on holiday")
    assert not ack.too_long and ack.acknowledged_at is not None
    assert engine.trackers.poll_due(now=ack.next_poll_at + timedelta(seconds=1), wait=True) == 1
    again = engine.trackers.get(dcb.name, "loan-1")
    assert not again.too_long  # the clock restarted at the acknowledgement
    assert again.next_poll_at == again.last_polled_at + timedelta(hours=6)
    last = engine.trackers.transitions(dcb.name, "loan-1")[-1]
    assert (last.kind, last.by) == ("acknowledged", "alice") and "patron on holiday" in last.reason


def test_force_poll_polls_now_and_clears_too_long_only_on_a_change(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "loan-2", LOANED)
    engine.trackers.poll_due(now=view.entered_state_at + timedelta(days=60), wait=True)
    assert engine.trackers.get(dcb.name, "loan-2").too_long

    same = engine.trackers.force_poll(dcb.name, "loan-2", by="bob")
    assert same.too_long and same.next_poll_at is None  # unchanged: still needs a person
    last = engine.trackers.transitions(dcb.name, "loan-2")[-1]
    assert (last.kind, last.by) == ("force_poll", "bob") and "still flagged too long" in last.reason

    WORLD.status["loan-2"] = CANCELLED
    moved = engine.trackers.force_poll(dcb.name, "loan-2", by="bob")
    assert moved.state == CANCELLED and not moved.too_long
    assert kinds(engine, "loan-2")[-1] == ("transition", LOANED, CANCELLED)
    assert engine.trackers.transitions(dcb.name, "loan-2")[-1].by == "bob"
    with pytest.raises(TrackerError, match="final state CANCELLED"):
        engine.trackers.force_poll(dcb.name, "loan-2")


def test_handler_errors_are_recorded_and_polling_goes_on(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "req-3", CONFIRMED)
    WORLD.status["req-3"] = ConnectionError("supplier host unreachable")
    for _ in range(3):
        engine.trackers.poll_due(now=view.next_poll_at, wait=True)
        view = engine.trackers.get(dcb.name, "req-3")
    assert view.state == CONFIRMED
    assert view.error == "ConnectionError: supplier host unreachable"
    assert view.interval == 3600 and view.next_poll_at is not None  # backing off, not dropped
    errors = [t for t in engine.trackers.transitions(dcb.name, "req-3") if t.kind == "error"]
    assert len(errors) == 1 and errors[0].reason == view.error  # audited once per distinct error

    WORLD.status["req-3"] = "NOT_A_STATE"
    engine.trackers.poll_due(now=view.next_poll_at, wait=True)
    view = engine.trackers.get(dcb.name, "req-3")
    assert "'NOT_A_STATE' is not a state of tracker" in view.error

    WORLD.status["req-3"] = LOANED
    engine.trackers.poll_due(now=view.next_poll_at, wait=True)
    view = engine.trackers.get(dcb.name, "req-3")
    assert view.state == LOANED and view.error is None


def test_polls_run_in_bounded_batches_and_concurrency(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine, tracker_concurrency=3, tracker_batch=4)
    views = [engine.trackers.track(dcb.name, f"req-{n}", PLACED) for n in range(10)]
    now = max(v.next_poll_at for v in views)
    WORLD.hold_for_peers = 3
    assert engine.trackers.poll_due(now=now, wait=True) == 4
    assert engine.trackers.poll_due(now=now, wait=True) == 4
    assert engine.trackers.poll_due(now=now, wait=True) == 2
    assert engine.trackers.poll_due(now=now, wait=True) == 0
    assert WORLD.most_active == 3
    assert sorted(WORLD.calls.values()) == [1] * 10


def test_a_running_poll_is_not_started_again_here_or_on_another_server(
    make_engine, backend
) -> None:
    engine = engine_with_tracker(make_engine)
    other = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "slow", PLACED)
    WORLD.gate = threading.Event()
    assert engine.trackers.poll_due(now=view.next_poll_at) == 1  # still running
    later = view.next_poll_at + timedelta(seconds=30)
    assert engine.trackers.poll_due(now=later) == 0
    assert other.trackers.poll_due(now=later, wait=True) == 0
    claimed = other.trackers.get(dcb.name, "slow")
    assert claimed.claimed_by is not None and claimed.claimed_by.startswith(engine.node_id)
    with pytest.raises(TrackerError, match="being polled right now"):
        other.trackers.force_poll(dcb.name, "slow")
    WORLD.gate.set()
    deadline = time.monotonic() + 20
    while engine.trackers.get(dcb.name, "slow").claimed_by is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert WORLD.calls["slow"] == 1


def test_manual_transition_wins_over_a_poll_in_flight(make_engine, backend) -> None:
    engine = engine_with_tracker(make_engine)
    view = engine.trackers.track(dcb.name, "req-4", PLACED)
    WORLD.status["req-4"] = CONFIRMED
    WORLD.gate = threading.Event()
    engine.trackers.poll_due(now=view.next_poll_at)
    moved = engine.trackers.transition(
        view, CANCELLED, "patron cancelled at the desk", {"desk": "main"}, by="carol"
    )
    assert moved.state == CANCELLED
    WORLD.gate.set()
    deadline = time.monotonic() + 20
    while engine.trackers.get(dcb.name, "req-4").claimed_by is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    final = engine.trackers.get(dcb.name, "req-4")
    assert final.state == CANCELLED and final.data == {"desk": "main"}  # the poll was dropped
    last = engine.trackers.transitions(dcb.name, "req-4")[-1]
    assert (last.from_state, last.to_state, last.by) == (PLACED, CANCELLED, "carol")
    assert last.reason == "patron cancelled at the desk" and last.data == {"desk": "main"}
    with pytest.raises(TrackerError, match="already CANCELLED"):
        engine.trackers.transition(final, CANCELLED)
    with pytest.raises(TrackerError, match="not a state of tracker"):
        engine.trackers.transition(final, "SHIPPED")


def test_lag_is_how_far_the_most_overdue_entity_is_behind(make_engine) -> None:
    engine = engine_with_tracker(make_engine)
    engine.trackers.track(dcb.name, "a", LOANED)  # next poll in 6 h
    b = engine.trackers.track(dcb.name, "b", CONFIRMED)  # next poll in 10 min
    now = b.next_poll_at + timedelta(seconds=100)
    assert engine.trackers.lag(now=now) == pytest.approx(100, abs=0.01)
    assert engine.trackers.lag(now=b.created_at) == 0.0
    assert [e.key for e in engine.trackers.list(overdue=False)] == ["a", "b"]
    assert engine.trackers.list(overdue=True) == []  # by the real clock nothing is due yet
    assert engine.trackers.poll_due(now=now, wait=True) == 1
    assert engine.metrics.tracker_lag == pytest.approx(100, abs=0.01)
    assert engine.trackers.lag(now=now) == 0.0


def test_unknown_trackers_states_and_bad_data_are_refused(make_engine) -> None:
    engine = engine_with_tracker(make_engine)
    with pytest.raises(TrackerError, match="unknown tracker 'nope'; registered trackers: dcb"):
        engine.trackers.track("nope", "k", PLACED)
    with pytest.raises(TrackerError, match="'SHIPPED' is not a state"):
        engine.trackers.track(dcb.name, "k", "SHIPPED")
    with pytest.raises(TrackerError, match="not JSON"):
        engine.trackers.track(dcb.name, "k", PLACED, {"when": object()})
    with pytest.raises(TrackerError, match="is not tracked"):
        engine.trackers.get(dcb.name, "k")


def test_trackers_come_from_pipeline_modules_with_config_overrides(make_engine) -> None:
    profiles = {"live": {dcb.name: {LOANED: {"interval": 60}}}}
    engine = make_engine(scheduler=False, pipeline_modules=[__name__], tracker_profiles=profiles)
    assert engine.trackers.names() == [dcb.name]
    loaned = engine.trackers.rules(dcb.name)[LOANED]
    assert loaned.interval == 60 and loaned.too_long_after == 56 * DAY
    with pytest.raises(TrackerError, match="no polling rules for profile 'staging'"):
        make_engine(scheduler=False, pipeline_modules=[__name__], tracker_profile="staging")


def test_the_scheduler_loop_polls_in_the_dev_profile(make_engine, backend) -> None:
    engine = make_engine(tracker_profile="dev")
    engine.trackers.register(dcb)

    def answer(entity: TrackedView) -> Poll:
        if WORLD.calls.setdefault(entity.key, 0) >= 2:
            return Poll(CONFIRMED, "supplier confirmed")
        WORLD.calls[entity.key] += 1
        return Poll()

    WORLD.poll = answer  # type: ignore[method-assign]
    engine.trackers.track(dcb.name, "live-1", PLACED)
    deadline = time.monotonic() + 15
    while engine.trackers.get(dcb.name, "live-1").state != CONFIRMED:
        assert time.monotonic() < deadline, "the scheduler loop did not poll"
        time.sleep(0.02)
    view = engine.trackers.get(dcb.name, "live-1")
    assert view.polls == 3 and view.interval == 600
    assert engine.metrics.tracker_polls >= 3


def test_stop_gives_back_the_claims_of_polls_not_started(make_engine) -> None:
    engine = engine_with_tracker(make_engine, tracker_concurrency=1)
    views = [engine.trackers.track(dcb.name, f"q{n}", PLACED) for n in range(3)]
    WORLD.gate = threading.Event()
    assert engine.trackers.poll_due(now=max(v.next_poll_at for v in views)) == 3
    engine.trackers.stop_timeout = 0.2
    engine.trackers.stop()
    claimed = [v.key for v in engine.trackers.list(dcb.name) if v.claimed_by is not None]
    assert claimed == ["q0"]  # the one blocked in its handler; the others can be polled elsewhere
    assert engine.trackers.poll_due(now=views[0].next_poll_at) == 0  # stopped
    WORLD.gate.set()
