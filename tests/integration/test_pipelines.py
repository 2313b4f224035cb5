"""Pipeline semantics on both configurations: retries, fork-join, compensation, cancel, resume."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from shelfwork.errors import BadParams, PreconditionFailed, UnknownPipeline
from shelfwork.jobs import jobs_t
from shelfwork.pipeline import Pipeline, Retry, step
from tests.conftest import worker_serves
from tests.support import pipelines as tp
from tests.support.waiting import wait_until


def test_retry_until_success(make_engine, backend) -> None:
    engine = make_engine(tp.ALL)
    key = f"retry-{backend}-{time.monotonic()}"
    job = engine.submit("flaky", {"fail_times": 2, "key": key})
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert view.result == {"calls": 3, "attempt": 3}
    assert view.steps[0].attempts == 3
    kinds = [e["kind"] for e in engine.jobs.events(job.job_id)]
    assert kinds.count("step_retry") == 2


def test_retry_gives_up_with_reason(make_engine, backend) -> None:
    engine = make_engine(tp.ALL)
    job = engine.submit("flaky", {"fail_times": 10, "key": f"giveup-{backend}-{time.monotonic()}"})
    view = engine.wait(job.job_id, 30)
    assert view.state == "failed"
    assert "step 'flaky' failed after 3 attempt(s)" in (view.error or "")
    assert "ConnectionError: remote refused" in (view.error or "")


def test_retry_policy_only_retries_named_errors(make_engine) -> None:
    calls: list[int] = []

    def picky(ctx):
        calls.append(ctx.attempt)
        raise ValueError("bad record")

    p = Pipeline("picky", steps=[step(picky, retry=Retry(attempts=5, on=(ConnectionError,)))])
    engine = make_engine([p])
    view = engine.wait(engine.submit("picky").job_id, 20)
    assert view.state == "failed" and calls == [1]


def test_optional_branch_failure_is_a_warning(make_engine, backend) -> None:
    engine = make_engine(tp.ALL)
    tag = f"opt-{backend}-{time.monotonic()}"
    view = engine.wait(engine.submit("fork", {"fail_cover": True, "tag": tag}).job_id, 30)
    assert view.state == "succeeded", view.error
    assert view.result["cover_branch"]["state"] == "failed"
    assert view.result["dspace_branch"] == {
        "state": "succeeded",
        "result": {"handle": "123456789/1"},
        "error": None,
    }
    assert len(view.warnings) == 1 and "cover upload refused" in view.warnings[0]["message"]
    assert not [c for c in tp.COMPENSATED if c.startswith(tag)]


def test_critical_branch_failure_compensates_and_fails(make_engine, backend) -> None:
    engine = make_engine(tp.ALL)
    tag = f"crit-{backend}-{time.monotonic()}"
    view = engine.wait(engine.submit("fork", {"fail_deposit": True, "tag": tag}).job_id, 30)
    assert view.state == "failed"
    assert "critical branch 'dspace_branch' failed" in (view.error or "")
    assert "DSpace answered 500" in (view.error or "")
    assert [c for c in tp.COMPENSATED if c.startswith(tag)]
    states = {s.name: s.state for s in view.steps}
    assert states["cover_branch"] == "succeeded" and "finalize" not in states
    kinds = [e["kind"] for e in engine.jobs.events(view.id)]
    assert "compensated" in kinds and kinds[-1] == "failed"


def test_serial_failure_compensates(make_engine) -> None:
    engine = make_engine(tp.ALL)
    tag = f"serial-{time.monotonic()}"
    view = engine.wait(engine.submit("fork", {"fail_prepare": True, "tag": tag}).job_id, 30)
    assert view.state == "failed"
    assert "inbox/book.pdf does not exist" in (view.error or "")
    assert any(c.startswith(f"{tag}:StepFailed") for c in tp.COMPENSATED)
    assert tp.CALLS.get(f"cover:{tag}") is None


def test_bad_params_name_each_field(make_engine) -> None:
    engine = make_engine(tp.ALL)
    with pytest.raises(BadParams) as err:
        engine.submit("sleep", {"seconds": -1, "bogus": 1})
    assert set(err.value.errors) == {"seconds", "bogus"}
    assert "seconds" in str(err.value) and "bogus" in str(err.value)
    with pytest.raises(UnknownPipeline, match=r"known pipelines: .*sleep"):
        engine.submit("nope")
    assert engine.jobs.list() == []


def test_precondition_refuses(make_engine) -> None:
    p = Pipeline(
        "guarded",
        steps=[step(tp.first)],
        params=tp.GateParams,
        precondition=lambda m: "gate closed" if m.gate == "closed" else None,
    )
    engine = make_engine([p])
    with pytest.raises(PreconditionFailed, match="gate closed"):
        engine.submit("guarded", {"gate": "closed"})


def test_cancel_queued_and_running(make_engine, backend) -> None:
    engine = make_engine(tp.ALL, max_running=1)
    gate = f"cancel-{backend}-{time.monotonic()}"
    running = engine.submit("gate", {"gate": gate})
    queued = engine.submit("gate", {"gate": gate + "-2"})
    wait_until(lambda: tp.CALLS.get(f"gate:{gate}", 0) >= 1, timeout=10)
    assert engine.cancel(queued.job_id).state == "cancelled"
    engine.cancel(running.job_id)
    view = engine.wait(running.job_id, 20)
    assert view.state == "cancelled"
    assert f"gate:{gate}:Cancelled" in tp.COMPENSATED
    assert tp.CALLS.get(f"first:{gate}-2") is None


def crash(engine) -> None:
    """Make an engine stop like a killed process would: no more heartbeats, no scheduling.
    (Its step thread goes on, as a zombie would; its next write must fail with LeaseLost.)"""
    engine._stopping.set()
    engine.heartbeat._stop.set()
    engine.wake()


def test_lost_lease_is_reclaimed_and_resumes_at_unfinished_step(make_engine, backend) -> None:
    """A server that stops renewing its lease (as a crashed one would) loses the job; another
    reclaims it and resumes at the first unfinished step; the finished step does not run again.
    (The same on real processes with SIGKILL: tests/acceptance/test_crash.py.)"""
    dying = make_engine(tp.ALL, lease_ttl=1.0)
    gate = f"lease-{backend}-{time.monotonic()}"
    job = dying.submit("gate", {"gate": gate, "hold": 60})
    wait_until(lambda: tp.CALLS.get(f"gate:{gate}", 0) >= 1, timeout=10)
    crash(dying)
    survivor = make_engine(tp.ALL, lease_ttl=1.0)
    worker_serves(survivor)
    wait_until(lambda: tp.CALLS.get(f"gate:{gate}", 0) >= 2, timeout=20)
    tp.GATES[gate].set()
    view = survivor.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert tp.CALLS[f"first:{gate}"] == 1
    assert view.runs == 2
    assert view.lease_owner is None
    kinds = [e["kind"] for e in survivor.jobs.events(job.job_id)]
    assert "reclaimed" in kinds and kinds.count("succeeded") == 1


def test_changed_pipeline_version_is_held_then_released(make_engine, backend) -> None:
    dying = make_engine(tp.ALL, lease_ttl=1.0)
    gate = f"version-{backend}-{time.monotonic()}"
    job = dying.submit("gate", {"gate": gate, "hold": 60})
    wait_until(lambda: tp.CALLS.get(f"gate:{gate}", 0) >= 1, timeout=10)
    crash(dying)
    # New code is deployed while the job is in flight: the restarted server has version 2.
    new = Pipeline(
        "gate", version="2", params=tp.GateParams, steps=[step(tp.first), step(tp.wait_gate)]
    )
    engine = make_engine([new], lease_ttl=1.0)
    worker_serves(engine)
    wait_until(lambda: engine.get(job.job_id).attention is not None, timeout=20)
    view = engine.get(job.job_id)
    assert view.state == "queued"
    assert "changed from version 1 to 2" in (view.attention or "")
    tp.GATES.setdefault(gate, __import__("threading").Event()).set()
    engine.release(job.job_id)
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert tp.CALLS[f"first:{gate}"] == 1


def test_operator_retry_keeps_finished_steps(make_engine) -> None:
    engine = make_engine(tp.ALL)
    tag = f"retry-op-{time.monotonic()}"
    view = engine.wait(engine.submit("fork", {"fail_deposit": True, "tag": tag}).job_id, 30)
    assert view.state == "failed"
    engine.registry.add(tp.fork_pipeline)
    # The operator fixes DSpace; the same job is retried with its params unchanged.
    with engine.store.write() as conn:
        conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == view.id)
            .values(params={"fail_deposit": False, "tag": tag})
        )
    engine.retry(view.id)
    view = engine.wait(view.id, 30)
    assert view.state == "succeeded", view.error
    assert tp.CALLS[f"prepare:{tag}"] == 1
    assert tp.CALLS[f"deposit:{tag}"] == 2
