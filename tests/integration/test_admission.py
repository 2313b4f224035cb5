"""Admission rules, driven directly (no executor) and through running engines."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import select, update

from shelfwork.admission import Admission, Limits
from shelfwork.errors import QueueFull
from shelfwork.jobs import Jobs, jobs_t
from shelfwork.pipelines.builtin import noop
from shelfwork.store import Store
from shelfwork.store.database import utcnow
from tests.conftest import truncate_pg
from tests.support import pipelines as tp


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


def _finish(store: Store, job_id: int) -> None:
    with store.write() as conn:
        conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id)
            .values(state="succeeded", finished_at=utcnow(), lease_owner=None)
        )


class AdmissionMachine(RuleBasedStateMachine):
    """Random submits, claims, finishes and cancels; the invariants must hold after every step."""

    url: str = ""

    @initialize()
    def setup(self) -> None:
        self.store = Store(self.url)
        with self.store.write() as conn:
            conn.execute(jobs_t.delete())
        self.limits = Limits(max_running=2, max_queue=4)
        self.adm = Admission(self.store, self.limits)
        self.accepted = 0
        self.rejected = 0
        self.deduped = 0

    def teardown(self) -> None:
        self.store.dispose()

    @rule(
        context=st.sampled_from([None, None, "c1", "c2", "c3"]),
        lane=st.sampled_from([None, None, None, "l1", "l2"]),
        dedup=st.sampled_from([None, None, "d1"]),
        priority=st.integers(0, 2),
    )
    def submit(self, context, lane, dedup, priority) -> None:
        waiting_before = self._count("queued")
        try:
            res = self.adm.submit(
                noop, context=context, lane=lane, dedup_key=dedup, priority=priority
            )
        except QueueFull as exc:
            assert waiting_before >= self.limits.max_queue
            assert exc.waiting == waiting_before
            self.rejected += 1
            return
        if res.created:
            self.accepted += 1
        else:
            self.deduped += 1

    @rule()
    def claim(self) -> None:
        self.adm.claim("worker", 30)

    @precondition(lambda self: self._count("running") > 0)
    @rule(data=st.data())
    def finish(self, data) -> None:
        with self.store.read() as conn:
            running = (
                conn.execute(select(jobs_t.c.id).where(jobs_t.c.state == "running")).scalars().all()
            )
        _finish(self.store, data.draw(st.sampled_from(sorted(running))))

    @rule(data=st.data())
    def cancel(self, data) -> None:
        with self.store.read() as conn:
            queued = (
                conn.execute(select(jobs_t.c.id).where(jobs_t.c.state == "queued")).scalars().all()
            )
        if queued:
            Jobs(self.store).cancel(data.draw(st.sampled_from(sorted(queued))))

    def _count(self, state: str) -> int:
        with self.store.read() as conn:
            return len(conn.execute(select(jobs_t.c.id).where(jobs_t.c.state == state)).all())

    @invariant()
    def limits_hold(self) -> None:
        if not hasattr(self, "store"):
            return
        with self.store.read() as conn:
            rows = conn.execute(
                select(jobs_t.c.state, jobs_t.c.context, jobs_t.c.lane, jobs_t.c.dedup_key)
            ).all()
        running = [r for r in rows if r.state == "running"]
        assert len(running) <= self.limits.max_running
        contexts = [r.context for r in running if r.context]
        lanes = [r.lane for r in running if r.lane]
        assert len(contexts) == len(set(contexts)), "two running jobs share a context"
        assert len(lanes) == len(set(lanes)), "two running jobs share a lane"
        assert sum(r.state == "queued" for r in rows) <= self.limits.max_queue
        live_dedup = [r.dedup_key for r in rows if r.dedup_key and r.state in ("queued", "running")]
        assert len(live_dedup) == len(set(live_dedup))
        # every submission is accounted for: a job row, a dedup hit, or a reported rejection
        assert len(rows) == self.accepted
        assert self.adm.rejections == self.rejected


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_admission_invariants_stateful(kind: str, request: pytest.FixtureRequest, tmp_path) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
        examples = 25
    else:
        url = f"sqlite:///{tmp_path / 'machine.db'}"
        Store(url).upgrade()
        examples = 60
    AdmissionMachine.url = url
    AdmissionMachine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    AdmissionMachine.TestCase().runTest()
