"""A worker that lost its lease writes nothing more, on both configurations.

A process can stall (a long GC pause, swap, a suspended VM) while its job goes on: its heartbeat
stops renewing the lease, the lease runs out, and another node takes the job over. When the stalled
process wakes up its step thread carries on as if nothing happened, a zombie. Its heartbeat has not
told it yet that the lease is gone, so the database's lease check on every write is all that stands
between it and the new owner's records: the zombie must not save a checkpoint, record a step's
outcome, nor start a step (a next one, or the next attempt of one it was retrying), and the job
must end as the new owner runs it. Once its heartbeat beats again, it must also stop the step's work
that writes nothing to shelfwork. (A SIGKILLed process never writes again, so the crash tests cannot
show this.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import update

from shelfwork.context import StepContext
from shelfwork.engine import Engine
from shelfwork.errors import LeaseLost
from shelfwork.jobs import jobs_t
from shelfwork.pipeline import Pipeline, Retry, step
from shelfwork.runner import Run
from shelfwork.store.database import utcnow
from tests.conftest import worker_serves
from tests.support.waiting import wait_until

WAIT = 20.0  # generous bound for any one event; a healthy run needs milliseconds


@dataclass
class Scene:
    """What one test's job did, and the events that hold its runs at the interesting points."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (step, node, attempt)
    zombie: str | None = None  # node id of the run that will lose its lease
    zombie_held: threading.Event = field(default_factory=threading.Event)
    zombie_go: threading.Event = field(default_factory=threading.Event)
    taker_held: threading.Event = field(default_factory=threading.Event)
    taker_go: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)  # writes the zombie was refused in a step

    def call(self, ctx: StepContext) -> None:
        self.calls.append((ctx.step, ctx.engine.node_id, ctx.attempt))
        if self.zombie is None:
            self.zombie = ctx.engine.node_id

    def is_taker(self, ctx: StepContext) -> bool:
        return ctx.engine.node_id != self.zombie

    def hold_taker(self) -> None:
        self.taker_held.set()
        assert self.taker_go.wait(WAIT)


SCENES: dict[str, Scene] = {}  # by test; the Celery worker runs in this process, on threads


def _scene(ctx: StepContext) -> Scene:
    return SCENES[ctx.params.scene]  # type: ignore[attr-defined]


# --- (a) a zombie finishes a step that is not the last ------------------------------------------


def one(ctx: StepContext) -> dict[str, str]:
    scene = _scene(ctx)
    first = not scene.calls
    scene.call(ctx)
    if first:  # the run that is about to stall
        scene.zombie_held.set()
        assert scene.zombie_go.wait(WAIT)
    try:
        ctx.save_checkpoint({"node": ctx.engine.node_id})
    except LeaseLost:  # kept going only to show that the step's outcome is refused as well
        scene.refused.append("checkpoint")
    return {"node": ctx.engine.node_id}


def two(ctx: StepContext) -> dict[str, str]:
    scene = _scene(ctx)
    scene.call(ctx)
    if scene.is_taker(ctx):
        scene.hold_taker()  # the new owner is mid-job while the zombie wakes up
    return {"node": ctx.engine.node_id}


def three(ctx: StepContext) -> dict[str, str]:
    _scene(ctx).call(ctx)
    return {"node": ctx.engine.node_id}


# --- (b) a zombie was waiting between a step's retries --------------------------------------------


def flaky(ctx: StepContext) -> dict[str, str]:
    scene = _scene(ctx)
    first = not scene.calls
    scene.call(ctx)
    if first:
        raise ConnectionError("remote refused")  # a retry is due: the run waits, then stalls
    if scene.is_taker(ctx):
        scene.hold_taker()
    return {"node": ctx.engine.node_id}


def after(ctx: StepContext) -> dict[str, str]:
    _scene(ctx).call(ctx)
    return {"node": ctx.engine.node_id}


# --- (c) a zombie in a long step hears from its heartbeat that the lease is gone ---------------


def work(ctx: StepContext) -> dict[str, str]:
    scene = _scene(ctx)
    scene.call(ctx)
    if scene.is_taker(ctx):
        scene.hold_taker()
        return {"node": ctx.engine.node_id}
    scene.zombie_held.set()
    try:
        while not scene.zombie_go.is_set():  # long remote work, checking in between units
            ctx.sleep(0.05)
    except LeaseLost:
        scene.refused.append("work")
        raise
    return {"node": ctx.engine.node_id}


class ZombieParams(BaseModel):
    scene: str  # key into SCENES


steps_pipeline = Pipeline(
    "zombie-steps", params=ZombieParams, steps=[step(one), step(two), step(three)]
)
retry_pipeline = Pipeline(
    "zombie-retry",
    params=ZombieParams,
    steps=[step(flaky, retry=Retry(attempts=3, delay=0.01)), step(after)],
)
work_pipeline = Pipeline("zombie-work", params=ZombieParams, steps=[step(work)])
PIPELINES = [steps_pipeline, retry_pipeline, work_pipeline]


# --- losing the lease -----------------------------------------------------------------------


def start_zombie(
    make_engine: Callable[..., Engine], pipeline: str, scene: Scene
) -> tuple[Engine, int]:
    """A node without a scheduler of its own (it must not reclaim its own job) runs the job."""
    zombie = make_engine(PIPELINES, scheduler=False)
    name = f"scene-{id(scene)}"
    SCENES[name] = scene
    job_id = zombie.submit(pipeline, {"scene": name}).job_id
    zombie.dispatch()  # local: claim and run here; Celery: already sent to the worker
    return zombie, job_id


def lose_lease(zombie: Engine, job_id: int) -> None:
    """The zombie's process stalls: its heartbeat stops, and the lease runs out as it would
    lease_ttl after the last beat."""
    zombie.heartbeat.stop()
    with zombie.store.write() as conn:
        res = conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.lease_owner == zombie.node_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert res.rowcount == 1, "the zombie did not hold the lease"


def take_over(make_engine: Callable[..., Engine], job_id: int) -> Engine:
    """Another node takes the expired job over the way its configuration does: the scheduler's
    reclaim runs it in this node's threads (local), or re-dispatches it to a worker, which takes
    the lease (Celery; the in-process worker now serves the new node, as another worker host
    would)."""
    taker = make_engine(PIPELINES, scheduler=False)
    worker_serves(taker)
    assert taker.reclaim() == [job_id]
    return taker


def settle(zombie: Engine, job_id: int) -> None:
    """Wait until the zombie's run of the job has ended (its refused write stopped it)."""
    wait_until(
        lambda: job_id not in zombie.heartbeat.running(),
        what="the zombie's run has ended",
        timeout=WAIT,
    )


def kinds(engine: Engine, job_id: int, *, step: str | None = None) -> list[str]:
    return [e["kind"] for e in engine.jobs.events(job_id) if step is None or e["step"] == step]


@pytest.fixture(autouse=True)
def _scenes(make_engine: Callable[..., Engine]) -> Any:
    """Set up after the engines, so torn down before them."""
    yield
    for scene in SCENES.values():  # a failed test leaves no run waiting for its cue
        scene.zombie_go.set()
        scene.taker_go.set()
    SCENES.clear()


def test_zombie_cannot_record_a_step_outcome_or_start_the_next_step(make_engine, backend) -> None:
    scene = Scene()
    zombie, job_id = start_zombie(make_engine, "zombie-steps", scene)
    assert scene.zombie_held.wait(WAIT), "the job never reached its first step"
    lose_lease(zombie, job_id)
    taker = take_over(make_engine, job_id)
    # The new owner runs step one again (its outcome was never recorded) and is now in step two.
    assert scene.taker_held.wait(WAIT), "the new owner never reached step two"

    scene.zombie_go.set()  # the zombie wakes up and finishes step one
    settle(zombie, job_id)
    steps = taker.jobs.steps(job_id)
    assert steps["one"].state == "succeeded"
    assert steps["one"].result == {"node": taker.node_id}, "the zombie's outcome was recorded"
    assert steps["one"].checkpoint == {"node": taker.node_id}, "the zombie's checkpoint was saved"
    assert scene.refused == ["checkpoint"]
    assert steps["two"].state == "running" and steps["two"].attempts == 1
    assert "three" not in steps

    scene.taker_go.set()
    view = taker.wait(job_id, WAIT)
    assert view.state == "succeeded", view.error
    assert view.result == {"node": taker.node_id}
    assert scene.calls == [
        ("one", zombie.node_id, 1),
        ("one", taker.node_id, 2),
        ("two", taker.node_id, 1),  # the zombie never started step two
        ("three", taker.node_id, 1),
    ]
    assert kinds(taker, job_id, step="one").count("step_succeeded") == 1
    assert kinds(taker, job_id).count("reclaimed") == 1
    assert kinds(taker, job_id).count("succeeded") == 1


def test_zombie_waiting_between_retries_cannot_start_another_attempt(
    make_engine, backend, monkeypatch
) -> None:
    scene = Scene()
    pause = Run._pause

    def stall_before_the_retry(run: Run, seconds: float) -> None:
        """The zombie stalls while it waits for the step's next attempt."""
        if run.state.owner == scene.zombie:
            scene.zombie_held.set()
            assert scene.zombie_go.wait(WAIT)
        pause(run, seconds)

    monkeypatch.setattr(Run, "_pause", stall_before_the_retry)
    zombie, job_id = start_zombie(make_engine, "zombie-retry", scene)
    assert scene.zombie_held.wait(WAIT), "the first attempt never failed"
    assert zombie.jobs.steps(job_id)["flaky"].state == "retrying"
    lose_lease(zombie, job_id)
    taker = take_over(make_engine, job_id)
    assert scene.taker_held.wait(WAIT), "the new owner never ran the second attempt"

    scene.zombie_go.set()  # the zombie's wait ends: it would start attempt 3
    settle(zombie, job_id)
    flaky_row = taker.jobs.steps(job_id)["flaky"]
    assert (flaky_row.state, flaky_row.attempts) == ("running", 2), "the zombie started an attempt"

    scene.taker_go.set()
    view = taker.wait(job_id, WAIT)
    assert view.state == "succeeded", view.error
    assert scene.calls == [
        ("flaky", zombie.node_id, 1),
        ("flaky", taker.node_id, 2),
        ("after", taker.node_id, 1),
    ]
    steps = view.steps
    assert [(s.name, s.state, s.attempts) for s in steps] == [
        ("flaky", "succeeded", 2),
        ("after", "succeeded", 1),
    ]
    assert kinds(taker, job_id).count("step_retry") == 1


def test_zombie_stops_its_step_when_its_heartbeat_finds_the_lease_taken(
    make_engine, backend
) -> None:
    """The database refuses a zombie's writes, but only its heartbeat can stop work that writes
    nothing to shelfwork (calls to a remote system): the first beat after the stall must tell
    the step, which then stops at its next check."""
    scene = Scene()
    zombie, job_id = start_zombie(make_engine, "zombie-work", scene)
    assert scene.zombie_held.wait(WAIT), "the job never reached its step"
    lose_lease(zombie, job_id)
    taker = take_over(make_engine, job_id)
    assert scene.taker_held.wait(WAIT), "the new owner never reached the step"

    zombie.heartbeat.beat()  # the stalled process's heartbeat runs again
    settle(zombie, job_id)
    assert scene.refused == ["work"], "the zombie's step went on working"
    assert taker.jobs.steps(job_id)["work"].state == "running"

    scene.taker_go.set()
    view = taker.wait(job_id, WAIT)
    assert view.state == "succeeded", view.error
    assert view.result == {"node": taker.node_id}
    assert scene.calls == [("work", zombie.node_id, 1), ("work", taker.node_id, 2)]
