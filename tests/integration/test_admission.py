"""Admission rules, driven directly (no executor) and through running engines."""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select, update

from shelfwork.admission import Admission, Limits
from shelfwork.errors import InvalidTransition, LeaseLost, QueueFull
from shelfwork.jobs import Jobs, jobs_t
from shelfwork.pipelines.builtin import noop
from shelfwork.store import Store
from shelfwork.store.database import utcnow
from tests.conftest import truncate_pg
from tests.support import pipelines as tp
from tests.support.clock import FakeClock


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'admission.db'}"
    s = Store(url)
    s.upgrade()
    yield s
    s.dispose()


def test_queue_bound_rejects_loudly(store: Store) -> None:
    adm = Admission(store, Limits(max_running=1, max_queue=3))
    ids = [adm.submit(noop).job_id for _ in range(3)]
    with pytest.raises(QueueFull) as err:
        adm.submit(noop)
    assert err.value.limit == 3 and err.value.waiting == 3
    assert "queue full: 3 jobs waiting (limit 3)" in str(err.value)
    assert adm.rejections == 1
    assert len(Jobs(store).list()) == 3
    # a claimed job frees a waiting place
    assert [c.job_id for c in adm.claim("w", 30)] == [ids[0]]
    adm.submit(noop)


def test_context_and_lane_are_exclusive_and_do_not_block_others(store: Store) -> None:
    adm = Admission(store, Limits(max_running=10, max_queue=50))
    a1 = adm.submit(noop, context="biblio:1").job_id
    a2 = adm.submit(noop, context="biblio:1").job_id
    l1 = adm.submit(noop, lane="solr").job_id
    l2 = adm.submit(noop, lane="solr").job_id
    other = adm.submit(noop, context="biblio:2").job_id
    claimed = {c.job_id for c in adm.claim("w", 30)}
    assert claimed == {a1, l1, other}
    assert adm.claim("w", 30) == []
    _finish(store, a1)
    assert {c.job_id for c in adm.claim("w", 30)} == {a2}
    _finish(store, l1)
    assert {c.job_id for c in adm.claim("w", 30)} == {l2}


def test_priority_then_fifo(store: Store) -> None:
    adm = Admission(store, Limits(max_running=1, max_queue=50))
    low = adm.submit(noop).job_id
    high = adm.submit(noop, priority=5).job_id
    low2 = adm.submit(noop).job_id
    order = []
    for _ in range(3):
        (c,) = adm.claim("w", 30)
        order.append(c.job_id)
        _finish(store, c.job_id)
    assert order == [high, low, low2]


def test_dedup_returns_the_live_job(store: Store) -> None:
    adm = Admission(store, Limits(max_running=1, max_queue=50))
    first = adm.submit(noop, dedup_key="biblio:7")
    again = adm.submit(noop, dedup_key="biblio:7")
    assert first.created and not again.created and again.job_id == first.job_id
    adm.claim("w", 30)
    assert adm.submit(noop, dedup_key="biblio:7").job_id == first.job_id
    _finish(store, first.job_id)
    assert adm.submit(noop, dedup_key="biblio:7").job_id != first.job_id


def test_concurrent_dedup_submits_make_one_job(store: Store) -> None:
    adm = Admission(store, Limits(max_running=1, max_queue=500))
    results: list[int] = []
    barrier = threading.Barrier(12)

    def submit() -> None:
        barrier.wait()
        results.append(adm.submit(noop, dedup_key="double-click").job_id)

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 12


def test_database_refuses_two_running_in_one_context(store: Store) -> None:
    """The partial unique index backs the rule even against a buggy writer."""
    from sqlalchemy.exc import IntegrityError

    adm = Admission(store, Limits(max_running=10, max_queue=50))
    a = adm.submit(noop, context="network:42").job_id
    b = adm.submit(noop, context="network:42").job_id
    adm.claim("w", 30)
    with pytest.raises(IntegrityError), store.write() as conn:
        conn.execute(update(jobs_t).where(jobs_t.c.id == b).values(state="running"))
    assert a != b


def test_engine_never_runs_two_in_one_context(make_engine, backend) -> None:
    engine = make_engine(tp.ALL, max_running=4)
    ids = [engine.submit("sleep", {"seconds": 0.05}, context="biblio:1").job_id for _ in range(6)]
    ids += [
        engine.submit("sleep", {"seconds": 0.05}, context=f"biblio:{i}").job_id for i in range(2, 5)
    ]
    views = [engine.wait(i, 30) for i in ids]
    assert all(v.state == "succeeded" for v in views)
    same = sorted((v.started_at, v.finished_at) for v in views[:6])
    for (_, end), (start, _) in itertools.pairwise(same):
        assert end <= start  # strictly one after another
    # the other contexts were not held up behind biblio:1
    assert min(v.finished_at for v in views[6:]) < max(v.finished_at for v in views[:6])


def _finish(store: Store, job_id: int, owner: str = "w") -> None:
    Jobs(store).finish(job_id, owner, "succeeded")


# No shrinking by default: each step is a few database transactions, and shrinking one failure
# takes minutes (Hypothesis gives up after five); the failing run's steps are printed as they are.
# SHELFWORK_TEST_SHRINK=1 runs afresh and shrinks what it finds (Hypothesis never shrinks a failure
# it replays from its database, so that phase is left out then).
PHASES = (
    [Phase.explicit, Phase.generate, Phase.shrink]
    if os.environ.get("SHELFWORK_TEST_SHRINK")
    else [Phase.explicit, Phase.reuse, Phase.generate]
)

# Admission and jobs read the time from this in the state machine: leases run out when a rule
# moves the clock on, not when the machine happens to be slow.
CLOCK = FakeClock()
OWNERS = ["worker-a", "worker-b"]
TTLS = [5.0, 60.0]  # a short lease, and one that outlives most clock moves
LIVE = ("waiting", "held", "running")


@dataclass
class Expected:
    """What the machine expects of one job's row."""

    context: str | None
    lane: str | None
    dedup: str | None
    state: str = "waiting"  # waiting | held | running | succeeded | failed | cancelled
    runs: int = 0
    owner: str | None = None  # the lease owner while it runs
    expires: datetime | None = None


def _state(row: Any) -> str:
    if row.state == "queued":
        return "waiting" if row.attention is None else "held"
    return str(row.state)


class AdmissionMachine(RuleBasedStateMachine):
    """Random submits, claims, finishes, holds and releases, unclaims, clock moves with reclaims of
    expired leases, cancels and retries, all through the production API, against a model of each
    job: after every step the admission rules hold and every row is what the model says."""

    url: str = ""

    @initialize()
    def setup(self) -> None:
        self.store = Store(self.url)
        with self.store.write() as conn:
            conn.execute(jobs_t.delete())
        self.limits = Limits(max_running=2, max_queue=3)
        self.adm = Admission(self.store, self.limits)
        self.jobs = Jobs(self.store)
        self.model: dict[int, Expected] = {}
        self.rejected = 0
        CLOCK.at = utcnow()

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.dispose()

    def _in(self, *states: str) -> list[int]:
        return sorted(i for i, e in self.model.items() if e.state in states)

    def _has(self, *states: str) -> bool:
        return hasattr(self, "model") and bool(self._in(*states))

    def _waiting(self) -> int:
        return len(self._in("waiting"))

    # --- submitting and claiming ----------------------------------------------------------

    @rule(
        context=st.sampled_from([None, None, "c1", "c2", "c3"]),
        lane=st.sampled_from([None, None, None, "l1", "l2"]),
        dedup=st.sampled_from([None, None, "d1"]),
        priority=st.integers(0, 2),
    )
    def submit(self, context, lane, dedup, priority) -> None:
        waiting = self._waiting()
        live = [i for i in self._in(*LIVE) if dedup and self.model[i].dedup == dedup]
        try:
            res = self.adm.submit(
                noop, context=context, lane=lane, dedup_key=dedup, priority=priority
            )
        except QueueFull as exc:
            assert not live and waiting >= self.limits.max_queue
            assert exc.waiting == min(waiting, self.limits.max_queue)  # counted to the bound
            self.rejected += 1
            return
        if live:
            assert (res.job_id, res.created) == (live[0], False), "dedup missed a live job"
            return
        assert res.created and waiting < self.limits.max_queue, "admitted beyond the bound"
        self.model[res.job_id] = Expected(context, lane, dedup)

    @rule(owner=st.sampled_from(OWNERS), ttl=st.sampled_from(TTLS))
    def claim(self, owner: str, ttl: float) -> None:
        free = self.limits.max_running - len(self._in("running"))
        claimed = self.adm.claim(owner, ttl)
        assert len(claimed) <= max(free, 0)
        for c in claimed:
            exp = self.model[c.job_id]
            assert exp.state == "waiting", f"claimed a job that is {exp.state}"
            assert c.resumed == (exp.runs > 0)
            exp.state, exp.owner, exp.runs = "running", owner, exp.runs + 1
            exp.expires = CLOCK() + timedelta(seconds=ttl)

    @rule(
        seconds=st.sampled_from([0, 4, 10, 30]),
        owner=st.sampled_from(OWNERS),
        ttl=st.sampled_from(TTLS),
    )
    def scheduler_pass(self, seconds: int, owner: str, ttl: float) -> None:
        """Time passes; a node's scheduler takes over every running job whose lease ran out, and
        only those, then claims what admission allows."""
        CLOCK.advance(seconds)
        expired = [i for i in self._in("running") if self.model[i].expires < CLOCK()]
        assert sorted(self.adm.reclaim_expired(owner, ttl)) == expired
        for job_id in expired:
            exp = self.model[job_id]
            exp.owner, exp.runs = owner, exp.runs + 1
            exp.expires = CLOCK() + timedelta(seconds=ttl)
        self.claim(owner, ttl)

    # --- the end of a run ----------------------------------------------------------------------

    @precondition(lambda self: self._has("running"))
    @rule(data=st.data(), how=st.sampled_from(["succeeded", "failed", "cancelled"]))
    def finish(self, data, how: str) -> None:
        job_id = data.draw(st.sampled_from(self._in("running")))
        exp = self.model[job_id]
        self.jobs.finish(job_id, exp.owner, how, None, None if how == "succeeded" else how)
        exp.state, exp.owner, exp.expires = how, None, None

    @precondition(lambda self: self._has("running"))
    @rule(data=st.data())
    def hold(self, data) -> None:
        """A run finds its pipeline's code changed: the job waits for a person."""
        job_id = data.draw(st.sampled_from(self._in("running")))
        exp = self.model[job_id]
        self.jobs.hold(job_id, exp.owner, "pipeline changed")
        exp.state, exp.owner, exp.expires = "held", None, None

    @precondition(lambda self: self._has("running"))
    @rule(data=st.data())
    def unclaim(self, data) -> None:
        """A dispatcher gives back a claim no executor took: as if never claimed."""
        job_id = data.draw(st.sampled_from(self._in("running")))
        exp = self.model[job_id]
        self.adm.unclaim([job_id], exp.owner, "broker unreachable")
        exp.state, exp.owner, exp.expires, exp.runs = "waiting", None, None, exp.runs - 1

    @precondition(lambda self: self._has("running"))
    @rule(data=st.data(), how=st.sampled_from(["finish", "hold", "unclaim"]))
    def stale_writer(self, data, how: str) -> None:
        """A node that no longer holds the lease (another took it over) changes nothing."""
        job_id = data.draw(st.sampled_from(self._in("running")))
        stale = next(o for o in [*OWNERS, "node:gone"] if o != self.model[job_id].owner)
        if how == "unclaim":
            self.adm.unclaim([job_id], stale, "broker unreachable")
            return
        with pytest.raises(LeaseLost):
            if how == "hold":
                self.jobs.hold(job_id, stale, "pipeline changed")
            else:
                self.jobs.finish(job_id, stale, "succeeded")

    # --- people ------------------------------------------------------------------------------

    @precondition(lambda self: self._has("held"))
    @rule(data=st.data(), release=st.booleans())
    def release_or_cancel_held(self, data, release: bool) -> None:
        """A held job resumes on the new code when released (outside the queue bound: it was
        admitted long ago), or is cancelled."""
        job_id = data.draw(st.sampled_from(self._in("held")))
        if release:
            self.jobs.release(job_id, "2")
            self.model[job_id].state = "waiting"
        else:
            self.jobs.cancel(job_id)
            self.model[job_id].state = "cancelled"

    @precondition(lambda self: self._has("waiting"))
    @rule(data=st.data())
    def cancel_waiting(self, data) -> None:
        job_id = data.draw(st.sampled_from(self._in("waiting")))
        self.jobs.cancel(job_id)
        self.model[job_id].state = "cancelled"

    @precondition(lambda self: self._has("succeeded", "failed", "cancelled"))
    @rule(data=st.data())
    def retry(self, data) -> None:
        """A failed or cancelled job is queued again, within the queue bound and not while another
        live job has its dedup key; a succeeded one is refused."""
        job_id = data.draw(st.sampled_from(self._in("succeeded", "failed", "cancelled")))
        exp = self.model[job_id]
        waiting = self._waiting()
        clash = exp.dedup is not None and any(
            self.model[i].dedup == exp.dedup for i in self._in(*LIVE)
        )
        try:
            self.adm.retry(job_id)
        except QueueFull:
            assert exp.state != "succeeded" and waiting >= self.limits.max_queue
            self.rejected += 1
            return
        except InvalidTransition:
            assert exp.state == "succeeded" or (clash and waiting < self.limits.max_queue)
            return
        assert exp.state != "succeeded" and not clash and waiting < self.limits.max_queue
        exp.state = "waiting"

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def rows_are_as_modelled_and_limits_hold(self) -> None:
        if not hasattr(self, "store"):
            return
        with self.store.read() as conn:
            rows = conn.execute(select(jobs_t)).all()
        # every submission is accounted for: a job row, a dedup hit, or a reported rejection
        assert {r.id for r in rows} == set(self.model)
        assert self.adm.rejections == self.rejected
        for r in rows:
            exp = self.model[r.id]
            assert _state(r) == exp.state, f"job {r.id} is {_state(r)}, expected {exp.state}"
            assert r.runs == exp.runs, f"job {r.id}: runs {r.runs}, expected {exp.runs}"
            assert r.lease_owner == exp.owner, f"job {r.id}: leased to {r.lease_owner}"
            assert r.lease_expires_at == exp.expires, f"job {r.id}: lease {r.lease_expires_at}"
        running = [r for r in rows if r.state == "running"]
        assert len(running) <= self.limits.max_running
        contexts = [r.context for r in running if r.context]
        lanes = [r.lane for r in running if r.lane]
        assert len(contexts) == len(set(contexts)), "two running jobs share a context"
        assert len(lanes) == len(set(lanes)), "two running jobs share a lane"
        live_dedup = [r.dedup_key for r in rows if r.dedup_key and r.state in ("queued", "running")]
        assert len(live_dedup) == len(set(live_dedup))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_admission_invariants_stateful(
    kind: str, request: pytest.FixtureRequest, tmp_path, monkeypatch
) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
        examples = 25
    else:
        url = f"sqlite:///{tmp_path / 'machine.db'}"
        Store(url).upgrade()
        examples = 60
    monkeypatch.setattr("shelfwork.admission.utcnow", CLOCK)
    monkeypatch.setattr("shelfwork.jobs.utcnow", CLOCK)
    AdmissionMachine.url = url
    AdmissionMachine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=PHASES,
    )
    AdmissionMachine.TestCase().runTest()
