"""Locks and compare-and-set under contention, on SQLite and PostgreSQL.

Threads of this process and of several spawned processes contend for per-entity locks and race on
compare-and-set; every holder records when it entered and left, and does an unprotected
read-modify-write that would lose updates if two holders ever overlapped. Then the lease rules:
expiry and takeover, a job's locks renewed by its heartbeat and released however the job ends, and
request-handler use.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, insert, select

from shelfwork.context import StepContext
from shelfwork.errors import LockHeld, ShelfworkError
from shelfwork.locks import UNSET, EntityValues, Locks, compare_and_set
from shelfwork.pipeline import Pipeline, step
from shelfwork.store import Store
from shelfwork.store.models import EntityValue, Lock
from tests.support.clock import FakeClock

ENTITIES = [f"entity:{i}" for i in range(1, 6)]
PARENT_THREADS = 16
PROCESSES = 4
PROCESS_THREADS = 4
LOCK_ROUNDS = 3
CAS_INCREMENTS = 3

# Tables of "the caller's own": a counter guarded only by the lock, and a column claimed by CAS.
race_meta = MetaData()
counters_t = Table(
    "lock_race_counters",
    race_meta,
    Column("entity", String(50), primary_key=True),
    Column("n", Integer, nullable=False),
)
claims_t = Table(
    "lock_race_claims",
    race_meta,
    Column("id", Integer, primary_key=True),
    Column("claimed_by", String(100), nullable=True),
)


# --- the contenders -----------------------------------------------------------------------------


def contend(store: Store, owner: str) -> dict[str, Any]:
    """One contender: CAS races first (all start together), then lock rounds, then CAS counting."""
    rng = random.Random(owner)
    locks, values = Locks(store), EntityValues(store)
    out: dict[str, Any] = {"owner": owner, "entity_wins": [], "column_wins": [], "held": []}
    for entity in ENTITIES:
        if values.compare_and_set(entity, "claimed_by", UNSET, owner):
            out["entity_wins"].append(entity)
    for row_id in range(1, len(ENTITIES) + 1):
        if compare_and_set(store, claims_t.c.claimed_by, {"id": row_id}, None, owner):
            out["column_wins"].append(row_id)
    for _ in range(LOCK_ROUNDS):
        entity = rng.choice(ENTITIES)
        locks.acquire(entity, owner, ttl=60, wait=60, poll=0.01)
        entered = time.monotonic_ns()  # CLOCK_MONOTONIC: comparable across processes on one host
        with store.read() as conn:
            n = conn.execute(select(counters_t.c.n).where(counters_t.c.entity == entity)).scalar()
        time.sleep(0.002)  # widen the window in which an overlapping holder would lose an update
        with store.write() as conn:
            conn.execute(counters_t.update().where(counters_t.c.entity == entity).values(n=n + 1))
        left = time.monotonic_ns()
        released = locks.release(entity, owner)
        out["held"].append([entity, entered, left, released])
    increments: Counter[str] = Counter()
    for _ in range(CAS_INCREMENTS):
        entity = rng.choice(ENTITIES)
        while True:
            current = values.get(entity, "count")
            if values.compare_and_set(entity, "count", current, current + 1):
                increments[entity] += 1
                break
    out["increments"] = dict(increments)
    return out


def contend_in_threads(url: str, prefix: str, threads: int, go: Callable[[], None]) -> list[Any]:
    store = Store(url)
    results: list[Any] = [None] * threads

    def run(i: int) -> None:
        go()
        try:
            results[i] = contend(store, f"{prefix}:t{i}")
        except BaseException as exc:  # reported, so a failing contender fails the test
            results[i] = {"error": repr(exc)}

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.dispose()
    return results


def contender_process(url: str, prefix: str, barrier: Any, out: str) -> None:
    """A spawned process: get ready, wait for everyone, contend, write what happened."""
    Store(url).ping()  # imports and connection done before the start line
    barrier.wait(60)
    results = contend_in_threads(url, prefix, PROCESS_THREADS, lambda: None)
    Path(out).write_text(json.dumps(results))


@dataclass
class Race:
    contenders: list[dict[str, Any]]
    counters: dict[str, int]
    entity_values: dict[tuple[str, str], Any]
    claims: dict[int, str | None]
    locks_left: list[str]


def run_race(url: str, tmp: Path) -> Race:
    store = Store(url)
    store.upgrade()
    with store.write() as conn:
        race_meta.drop_all(conn)
        race_meta.create_all(conn)
        conn.execute(insert(counters_t), [{"entity": e, "n": 0} for e in ENTITIES])
        conn.execute(insert(claims_t), [{"id": i} for i in range(1, len(ENTITIES) + 1)])
        conn.execute(delete(Lock.__table__).where(Lock.__table__.c.name.in_(ENTITIES)))
        conn.execute(delete(EntityValue.__table__))
    for entity in ENTITIES:
        assert EntityValues(store).compare_and_set(entity, "count", UNSET, 0)
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(PROCESSES + 1)
    outs = [tmp / f"contender-{i}.json" for i in range(PROCESSES)]
    procs = [
        spawn.Process(target=contender_process, args=(url, f"p{i}", barrier, str(outs[i])))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    go = threading.Event()
    parent: list[Any] = []
    runner = threading.Thread(
        target=lambda: parent.extend(contend_in_threads(url, "main", PARENT_THREADS, go.wait))
    )
    runner.start()
    try:
        barrier.wait(60)
    finally:
        go.set()
        runner.join(120)
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    contenders = parent + [c for out in outs for c in json.loads(out.read_text())]
    with store.read() as conn:
        counters = dict(conn.execute(select(counters_t.c.entity, counters_t.c.n)).all())
        values_t = EntityValue.__table__
        stored = conn.execute(select(values_t.c.entity, values_t.c.field, values_t.c.value)).all()
        claims = dict(conn.execute(select(claims_t.c.id, claims_t.c.claimed_by)).all())
        locks_left = list(conn.execute(select(Lock.__table__.c.name)).scalars())
    store.dispose()
    return Race(contenders, counters, {(e, f): v for e, f, v in stored}, claims, locks_left)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def race(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Race:
    tmp = tmp_path_factory.mktemp(f"race-{request.param}")
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp / 'shelfwork.db'}"
    result = run_race(url, tmp)
    errors = [c["error"] for c in result.contenders if "error" in c]
    assert not errors, errors
    assert len(result.contenders) == PARENT_THREADS + PROCESSES * PROCESS_THREADS
    return result


# --- what the race must show ----------------------------------------------------------------


def test_never_two_holders_of_one_lock(race: Race) -> None:
    by_entity: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for c in race.contenders:
        for entity, entered, left, _ in c["held"]:
            by_entity[entity].append((entered, left, c["owner"]))
    assert sum(len(v) for v in by_entity.values()) == len(race.contenders) * LOCK_ROUNDS
    for entity, spans in by_entity.items():
        spans.sort()
        for (_, left, first), (entered, _, second) in pairwise(spans):
            assert entered >= left, f"{second} entered {entity} before {first} left"
    lost = [(c["owner"], h[0]) for c in race.contenders for h in c["held"] if not h[3]]
    assert lost == [], "holders lost their lock while holding it"
    processes = {c["owner"].split(":")[0] for c in race.contenders}
    assert processes == {"main", *(f"p{i}" for i in range(PROCESSES))}
    assert race.locks_left == []  # every holder released what it took


def test_no_update_is_lost_under_the_lock(race: Race) -> None:
    expected = Counter(entity for c in race.contenders for entity, *_ in c["held"])
    assert race.counters == dict(expected)


def test_entity_set_if_unset_has_exactly_one_winner(race: Race) -> None:
    for entity in ENTITIES:
        winners = [c["owner"] for c in race.contenders if entity in c["entity_wins"]]
        assert len(winners) == 1, f"{entity}: winners {winners}"
        assert race.entity_values[(entity, "claimed_by")] == winners[0]


def test_entity_set_if_still_equal_counts_every_increment(race: Race) -> None:
    expected: Counter[str] = Counter()
    for c in race.contenders:
        expected.update(c["increments"])
    assert sum(expected.values()) == len(race.contenders) * CAS_INCREMENTS
    for entity in ENTITIES:
        assert race.entity_values[(entity, "count")] == expected[entity]


def test_column_set_if_unset_has_exactly_one_winner(race: Race) -> None:
    for row_id, claimed_by in race.claims.items():
        winners = [c["owner"] for c in race.contenders if row_id in c["column_wins"]]
        assert len(winners) == 1, f"row {row_id}: winners {winners}"
        assert claimed_by == winners[0]


# --- lease rules, on one store ------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The locks' clock, moved by the test: a lease runs out when the test says so."""
    fake = FakeClock()
    monkeypatch.setattr("shelfwork.locks.utcnow", fake)
    return fake


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'shelfwork.db'}"
    s = Store(url)
    s.upgrade()
    with s.write() as conn:
        conn.execute(delete(Lock.__table__))
        conn.execute(delete(EntityValue.__table__))
    yield s
    s.dispose()


def test_an_expired_lease_can_be_taken_over(store: Store, clock: FakeClock) -> None:
    locks = Locks(store)
    assert locks.try_acquire("entity:1", "worker-a", ttl=0.3)
    assert not locks.try_acquire("entity:1", "worker-b", ttl=5)
    clock.advance(0.4)
    assert locks.get("entity:1").expired  # type: ignore[union-attr]
    assert locks.try_acquire("entity:1", "worker-b", ttl=5)
    assert locks.get("entity:1").owner == "worker-b"  # type: ignore[union-attr]
    # the old holder can neither renew nor release what is no longer its lock
    assert not locks.renew("entity:1", "worker-a", 5)
    assert not locks.release("entity:1", "worker-a")
    assert locks.get("entity:1").owner == "worker-b"  # type: ignore[union-attr]
    assert locks.release("entity:1", "worker-b")
    assert locks.get("entity:1") is None


def test_an_expired_lease_goes_to_exactly_one_of_many(store: Store, clock: FakeClock) -> None:
    locks = Locks(store)
    for round_ in range(3):
        assert locks.try_acquire("entity:2", f"dead-{round_}", ttl=0.05)
        clock.advance(0.1)
        owners = [f"r{round_}-t{i}" for i in range(PARENT_THREADS)]
        won = take_together(locks, "entity:2", owners)
        assert len(won) == 1, won
        assert locks.get("entity:2").owner == won[0]  # type: ignore[union-attr]
        assert locks.release("entity:2", won[0])


def take_together(locks: Locks, name: str, owners: list[str]) -> list[str]:
    """All owners try the lock at the same moment; returns who got it."""
    start = threading.Barrier(len(owners))
    won: list[str] = []

    def take(owner: str) -> None:
        start.wait(10)
        if locks.try_acquire(name, owner, ttl=30):
            won.append(owner)

    threads = [threading.Thread(target=take, args=(owner,)) for owner in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_a_lease_is_counted_from_when_it_was_granted(store: Store) -> None:
    """A taker that waited for the database must not be granted a lease that already ran out."""
    locks = Locks(store)
    assert locks.try_acquire("entity:3", "dead", ttl=0.05)
    time.sleep(0.1)
    blocking, done = threading.Event(), threading.Event()

    def block() -> None:  # a slow transaction holding the lock row (and, on SQLite, the database)
        with store.write() as conn:
            conn.execute(
                select(Lock.__table__).where(Lock.__table__.c.name == "entity:3").with_for_update()
            )
            blocking.set()
            done.wait(0.8)

    blocker = threading.Thread(target=block)
    blocker.start()
    assert blocking.wait(10)
    threading.Timer(0.6, done.set).start()
    assert locks.try_acquire("entity:3", "waiter", ttl=0.4)  # waits ~0.6 s for the blocker
    blocker.join()
    assert not locks.try_acquire("entity:3", "intruder", ttl=5), "granted lease had expired"
    info = locks.get("entity:3")
    assert info is not None and info.owner == "waiter"


class WatchedLocks(Locks):
    """Locks that say when a taker was refused: it is then waiting for the holder."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.refused = threading.Event()

    def try_acquire(self, name: str, owner: str, **kw: Any) -> bool:
        taken = super().try_acquire(name, owner, **kw)
        if not taken:
            self.refused.set()
        return taken


def test_request_handler_holds_and_waits(store: Store) -> None:
    locks = WatchedLocks(store)
    with locks.hold("entity:4", "request:42", ttl=5):
        with pytest.raises(LockHeld, match="request:42") as held:
            locks.acquire("entity:4", "request:43")
        assert held.value.owner == "request:42" and held.value.name == "entity:4"
    assert locks.get("entity:4") is None

    locks.refused.clear()
    entered = threading.Event()
    left_at: list[float] = []

    def handler() -> None:
        with locks.hold("entity:4", "request:44", ttl=5):
            entered.set()
            assert locks.refused.wait(10)  # leaves once the next request found the lock held
            left_at.append(time.monotonic())

    t = threading.Thread(target=handler)
    t.start()
    assert entered.wait(5)
    waits = locks.waits
    with locks.hold("entity:4", "request:45", ttl=5, wait=5):
        got_at = time.monotonic()
        assert locks.get("entity:4").owner == "request:45"  # type: ignore[union-attr]
    t.join()
    assert got_at >= left_at[0]
    assert locks.waits == waits + 1


def test_compare_and_set_still_equal_and_unset(store: Store) -> None:
    values = EntityValues(store)
    assert values.get("entity:5", "status") is UNSET
    assert not values.compare_and_set("entity:5", "status", "new", "sent")  # not set yet
    assert values.compare_and_set("entity:5", "status", UNSET, "new")
    assert not values.compare_and_set("entity:5", "status", UNSET, "other")  # no longer unset
    assert not values.compare_and_set("entity:5", "status", "sent", "done")  # not equal
    assert values.compare_and_set("entity:5", "status", "new", "sent")
    assert values.get("entity:5", "status") == "sent"


cas_meta = MetaData()
cas_rows_t = Table(
    "lock_cas_rows",
    cas_meta,
    Column("id", Integer, primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("status", String(20), nullable=True),
)


def test_column_compare_and_set_in_the_callers_transaction(store: Store) -> None:
    with store.write() as conn:
        cas_meta.drop_all(conn)
        cas_meta.create_all(conn)
        conn.execute(
            insert(cas_rows_t),
            [{"id": 1, "kind": "a"}, {"id": 2, "kind": "b"}, {"id": 3, "kind": "b"}],
        )
    status = cas_rows_t.c.status
    with pytest.raises(RuntimeError), store.write() as conn:
        assert compare_and_set(conn, status, {"id": 1}, None, "claimed")
        assert not compare_and_set(conn, status, {"id": 1}, None, "again")  # no longer unset
        raise RuntimeError("the page failed")  # the claim rolls back with the page
    assert compare_and_set(store, status, {"id": 1}, None, "claimed")
    assert compare_and_set(store, status, {"id": 1}, "claimed", "sent")  # still equal
    assert not compare_and_set(store, status, {"id": 1}, "claimed", "done")  # not any more
    with pytest.raises(ShelfworkError, match="matched 2 rows"):
        compare_and_set(store, status, {"kind": "b"}, None, "claimed")  # not a key
    with store.read() as conn:
        rows = dict(conn.execute(select(cas_rows_t.c.id, status)).all())
    assert rows == {1: "sent", 2: None, 3: None}


# --- locks owned by jobs ------------------------------------------------------------------------

HELD: dict[str, threading.Event] = {}


class HolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    then: Literal["succeed", "fail", "wait_for_cancel", "sleep"] = "succeed"
    seconds: float = 0.0


def hold_lock(ctx: StepContext) -> dict[str, Any]:
    """Take a job-owned lock and never release it: the engine must."""
    p: HolderParams = ctx.params  # type: ignore[assignment]
    locks = ctx.engine.locks
    locks.acquire(p.name, ctx.owner, ttl=ctx.engine.settings.lease_ttl, job_id=ctx.job_id)
    info = locks.get(p.name)
    HELD.setdefault(p.name, threading.Event()).set()
    if p.then == "fail":
        raise RuntimeError("failed while holding the lock")
    if p.then == "wait_for_cancel":
        ctx.sleep(30)
    if p.then == "sleep":
        ctx.sleep(p.seconds)
    assert info is not None
    return {"owner": info.owner, "job_id": info.job_id}


holder_pipeline = Pipeline("lock-holder", steps=[step(hold_lock)], params=HolderParams)


def _held(name: str) -> threading.Event:
    return HELD.setdefault(name, threading.Event())


@pytest.fixture(autouse=True)
def _fresh_held() -> None:
    HELD.clear()  # each backend's run of a test waits for its own jobs


def test_job_locks_are_released_however_the_job_ends(make_engine, backend) -> None:
    engine = make_engine([holder_pipeline])
    ok = engine.submit("lock-holder", {"name": "entity:ok", "then": "succeed"})
    bad = engine.submit("lock-holder", {"name": "entity:bad", "then": "fail"})
    stop = engine.submit("lock-holder", {"name": "entity:stop", "then": "wait_for_cancel"})

    assert _held("entity:stop").wait(20)
    info = engine.locks.get("entity:stop")
    owner = f"job:{stop.job_id}:hold_lock"  # the job and the step that holds it
    assert info is not None and (info.owner, info.job_id) == (owner, stop.job_id)
    with pytest.raises(LockHeld, match=f"job:{stop.job_id}"):
        engine.locks.acquire("entity:stop", "request:1")
    engine.cancel(stop.job_id)

    views = {j.job_id: engine.wait(j.job_id, 30) for j in (ok, bad, stop)}
    assert [views[j.job_id].state for j in (ok, bad, stop)] == ["succeeded", "failed", "cancelled"]
    assert views[ok.job_id].result == {"owner": f"job:{ok.job_id}:hold_lock", "job_id": ok.job_id}
    for name in ("entity:ok", "entity:bad", "entity:stop"):
        assert engine.locks.get(name) is None, f"{name} outlived its job"
        assert engine.locks.try_acquire(name, "request:2", ttl=5)


def test_job_lock_is_renewed_while_the_job_outlives_the_ttl(make_engine, backend) -> None:
    ttl = 1.0
    engine = make_engine([holder_pipeline], lease_ttl=ttl)
    job = engine.submit("lock-holder", {"name": "entity:long", "then": "sleep", "seconds": 3.0})
    assert _held("entity:long").wait(20)
    first = engine.locks.get("entity:long")
    assert first is not None
    held_since = time.monotonic()
    latest = first.expires_at
    while time.monotonic() - held_since < 2.2 * ttl:
        time.sleep(0.2)
        assert not engine.locks.try_acquire("entity:long", "intruder", ttl=5)
        info = engine.locks.get("entity:long")
        assert info is not None and info.owner == f"job:{job.job_id}:hold_lock"
        latest = max(latest, info.expires_at)
    assert latest - first.expires_at >= timedelta(seconds=ttl)  # the heartbeat moved it on
    assert engine.wait(job.job_id, 30).state == "succeeded"
    assert engine.locks.get("entity:long") is None


def test_reclaiming_a_dead_workers_job_frees_its_locks(
    make_engine, backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(start=False)  # nothing runs: the clock can be moved by hand
    clock = FakeClock()
    monkeypatch.setattr("shelfwork.admission.utcnow", clock)
    job = engine.admission.submit(engine.registry.get("noop"))  # queued, not dispatched
    assert [c.job_id for c in engine.admission.claim("node:dead", 0.05)] == [job.job_id]
    engine.locks.acquire("entity:orphan", f"job:{job.job_id}", ttl=600, job_id=job.job_id)
    clock.advance(0.1)
    assert engine.admission.reclaim_expired("node:alive", 30) == [job.job_id]
    assert engine.locks.get("entity:orphan") is None
