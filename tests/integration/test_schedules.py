"""Cron schedules against the real store, on both configurations.

Most tests call `fire_due(now=...)` with explicit times on engines without a scheduler loop, so no
test waits for a real cron minute; one test lets the running scheduler loop fire a per-second cron.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta

import pytest
from pydantic import BaseModel, ConfigDict

from shelfwork.config import ScheduleConfig
from shelfwork.context import StepContext
from shelfwork.engine import Engine
from shelfwork.errors import (
    BadParams,
    ConfigError,
    InvalidTransition,
    QueueFull,
    ScheduleError,
    UnknownPipeline,
)
from shelfwork.pipeline import Pipeline, step
from shelfwork.schedules import ScheduleNotFound
from shelfwork.store.database import utcnow
from tests.support.waiting import wait_until


class NetworkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: str
    seconds: float = 0.0


def harvest_step(ctx: StepContext) -> dict[str, str]:
    p: NetworkParams = ctx.params  # type: ignore[assignment]
    ctx.sleep(p.seconds)
    return {"network": p.network}


# a harvest-like pipeline whose context (one harvest per network at a time) comes from its params
harvest = Pipeline(
    "harvest-like",
    params=NetworkParams,
    context=lambda p: f"network:{p.network}",
    steps=[step(harvest_step)],
)


def cancel_live(engine: Engine) -> None:
    for state in ("queued", "running"):
        for job in engine.jobs.list(state=state):
            with contextlib.suppress(InvalidTransition):  # it may have finished meanwhile
                engine.cancel(job.id)


def test_schedule_fires_once_per_slot_and_records_it(make_engine, backend) -> None:
    engine = make_engine([harvest], scheduler=False)
    view = engine.schedules.add(
        "nightly-ua", "harvest-like", "30 2 * * *", timezone="Europe/Kyiv", params={"network": "ua"}
    )
    slot = view.next_run_at
    assert slot is not None and slot > utcnow()
    assert view.next_run_local is not None and (
        view.next_run_local.hour,
        view.next_run_local.minute,
    ) == (2, 30)
    assert engine.schedules.fire_due(now=slot - timedelta(seconds=1)) == 0
    assert engine.schedules.fire_due(now=slot + timedelta(seconds=2)) == 1
    assert engine.schedules.fire_due(now=slot + timedelta(seconds=3)) == 0  # slot already taken

    [run] = engine.schedules.runs("nightly-ua")
    assert run.outcome == "submitted" and run.planned_for == slot and run.missed == 0
    job = engine.get(run.job_id)
    assert job.schedule_id == view.id
    assert job.pipeline == "harvest-like" and job.params["network"] == "ua"
    assert job.context == "network:ua"
    after = engine.schedules.get("nightly-ua")
    assert after.last_outcome == "submitted" and after.last_job_id == run.job_id
    assert after.next_run_at == slot + timedelta(days=1)
    assert engine.metrics.schedule_fires == 1
    engine.dispatch()  # no scheduler loop here
    assert engine.wait(run.job_id, 30).state == "succeeded"


def test_busy_context_is_skipped_or_queued_as_configured(make_engine, backend) -> None:
    engine = make_engine([harvest], scheduler=False)
    blocker = engine.submit("harvest-like", {"network": "ua", "seconds": 60})
    engine.dispatch()
    wait_until(lambda: engine.get(blocker.job_id).state == "running", interval=0.02)
    common = dict(params={"network": "ua"}, misfire="run_once")
    skip = engine.schedules.add("ua-skip", "harvest-like", "0 * * * *", when_busy="skip", **common)
    queue = engine.schedules.add(
        "ua-queue", "harvest-like", "0 * * * *", when_busy="queue", **common
    )
    other = engine.schedules.add(
        "pl", "harvest-like", "0 * * * *", params={"network": "pl"}, when_busy="skip"
    )
    slot = skip.next_run_at
    assert slot == queue.next_run_at == other.next_run_at
    assert engine.schedules.fire_due(now=slot + timedelta(seconds=1)) == 3

    [skipped] = engine.schedules.runs("ua-skip")
    assert skipped.outcome == "skipped_busy" and skipped.job_id is None
    assert skipped.detail == f"skipped: context 'network:ua' busy (job {blocker.job_id})"
    [queued] = engine.schedules.runs("ua-queue")
    assert queued.outcome == "submitted" and f"queued behind job {blocker.job_id}" in queued.detail
    assert engine.get(queued.job_id).state == "queued"  # admission holds it behind the blocker
    [free] = engine.schedules.runs("pl")
    assert free.outcome == "submitted"

    engine.cancel(blocker.job_id)
    assert engine.wait(blocker.job_id, 30).state == "cancelled"
    engine.dispatch()
    assert engine.wait(queued.job_id, 30).state == "succeeded"
    # once the context is free, the skipping schedule submits again
    assert engine.schedules.fire_due(now=slot + timedelta(hours=1, seconds=1)) == 3
    assert engine.schedules.runs("ua-skip")[0].outcome == "submitted"
    cancel_live(engine)


def test_a_schedule_without_context_skips_while_its_previous_run_is_live(make_engine) -> None:
    engine = make_engine(scheduler=False)  # no dispatch: jobs stay queued
    view = engine.schedules.add("tick", "noop", "*/5 * * * *")
    slot = view.next_run_at
    engine.schedules.fire_due(now=slot)
    engine.schedules.fire_due(now=slot + timedelta(minutes=5))
    second, first = engine.schedules.runs("tick")
    assert first.outcome == "submitted"
    assert second.outcome == "skipped_busy"
    assert second.detail == f"skipped: previous run still queued or running (job {first.job_id})"


def test_misfire_run_once_submits_one_late_job(make_engine, backend) -> None:
    engine = make_engine(scheduler=False)
    view = engine.schedules.add("hourly", "noop", "0 * * * *", misfire="run_once")
    now = view.next_run_at + timedelta(hours=3, minutes=20)  # down for four slots
    assert engine.schedules.fire_due(now=now) == 1
    [run] = engine.schedules.runs("hourly")
    assert run.outcome == "submitted" and run.missed == 3
    assert run.planned_for == view.next_run_at + timedelta(hours=3)
    assert "late by 20m" in run.detail and "3 earlier firing(s)" in run.detail
    assert engine.schedules.get("hourly").next_run_at == view.next_run_at + timedelta(hours=4)
    assert len(engine.jobs.list(pipeline="noop")) == 1


def test_misfire_skip_records_and_moves_on(make_engine, backend) -> None:
    engine = make_engine(scheduler=False)
    view = engine.schedules.add("hourly", "noop", "0 * * * *", misfire="skip")
    now = view.next_run_at + timedelta(hours=3, minutes=20)
    assert engine.schedules.fire_due(now=now) == 1
    [run] = engine.schedules.runs("hourly")
    assert run.outcome == "skipped_misfire" and run.missed == 4 and run.job_id is None
    assert run.planned_for == view.next_run_at
    after = engine.schedules.get("hourly")
    assert after.last_outcome == "skipped_misfire"
    assert after.next_run_at == view.next_run_at + timedelta(hours=4)
    assert engine.jobs.list(pipeline="noop") == []


def test_paused_schedules_do_not_fire(make_engine, backend) -> None:
    engine = make_engine(scheduler=False)
    born_paused = engine.schedules.add("later", "noop", "0 * * * *", paused=True)
    running = engine.schedules.add("now", "noop", "0 * * * *")
    engine.schedules.pause("now", by="alice")
    assert engine.schedules.get("now").paused_by == "alice"
    far = running.next_run_at + timedelta(days=3)
    assert engine.schedules.fire_due(now=far) == 0
    assert engine.schedules.runs("now") == [] and engine.schedules.runs("later") == []
    assert born_paused.paused and engine.jobs.list() == []

    resumed = engine.schedules.resume("now")
    assert not resumed.paused and resumed.paused_by is None
    assert utcnow() < resumed.next_run_at <= utcnow() + timedelta(hours=1)  # no burst of old slots
    assert [s.name for s in engine.schedules.list(paused=True)] == ["later"]


def test_queue_full_is_recorded_as_rejected(make_engine, backend) -> None:
    engine = make_engine([harvest], scheduler=False, max_running=1, max_queue=1)
    view = engine.schedules.add("ua", "harvest-like", "0 * * * *", params={"network": "ua"})
    with pytest.raises(QueueFull):  # fill the queue: one running (or queued), one waiting
        for n in range(3):
            engine.submit("harvest-like", {"network": f"x{n}", "seconds": 60})
    assert engine.schedules.fire_due(now=view.next_run_at) == 1
    [run] = engine.schedules.runs("ua")
    assert run.outcome == "rejected_full" and run.job_id is None
    assert "queue full" in run.detail
    cancel_live(engine)


def test_a_firing_that_cannot_submit_is_recorded_as_error(make_engine) -> None:
    engine = make_engine([harvest], scheduler=False)
    view = engine.schedules.add("ua", "harvest-like", "0 * * * *", params={"network": "ua"})

    class Stricter(NetworkParams):
        region: str  # the pipeline's schema changed after the schedule was made

    engine.registry.add(Pipeline("harvest-like", params=Stricter, steps=[step(harvest_step)]))
    assert engine.schedules.fire_due(now=view.next_run_at) == 1
    [run] = engine.schedules.runs("ua")
    assert run.outcome == "error" and "region" in run.detail
    assert engine.schedules.get("ua").next_run_at == view.next_run_at + timedelta(hours=1)


def test_definitions_are_validated_with_clear_errors(make_engine) -> None:
    engine = make_engine([harvest], scheduler=False)
    add = engine.schedules.add
    with pytest.raises(UnknownPipeline, match="known pipelines"):
        add("x", "nope", "0 * * * *")
    with pytest.raises(BadParams, match="network"):
        add("x", "harvest-like", "0 * * * *")
    with pytest.raises(ScheduleError, match="bad cron expression"):
        add("x", "noop", "0 25 * * *")
    with pytest.raises(ScheduleError, match="unknown time zone 'Europe/Atlantis'"):
        add("x", "noop", "0 * * * *", timezone="Europe/Atlantis")
    with pytest.raises(ScheduleError, match="misfire must be one of"):
        add("x", "noop", "0 * * * *", misfire="later")
    with pytest.raises(ScheduleError, match="bad schedule name"):
        add("../x", "noop", "0 * * * *")
    add("x", "noop", "0 * * * *")
    with pytest.raises(ScheduleError, match="already exists"):
        add("x", "noop", "0 * * * *")
    replaced = add("x", "noop", "15 * * * *", replace=True)
    assert replaced.cron == "15 * * * *" and replaced.next_run_at.minute == 15
    engine.schedules.delete("x")
    with pytest.raises(ScheduleNotFound):
        engine.schedules.get("x")


def test_config_schedules_are_synced(make_engine, backend) -> None:
    config = [
        {"name": "harvest-ua", "pipeline": "harvest-like", "cron": "0 3 * * *",
         "timezone": "Europe/Kyiv", "params": {"network": "ua"}},
        {"name": "quiet", "pipeline": "noop", "cron": "@daily", "paused": True},
    ]  # fmt: skip
    engine = make_engine([harvest], schedules=config)  # start() syncs the config
    sync = engine.schedules.sync_from_config
    ua = engine.schedules.get("harvest-ua")
    assert ua.source == "config" and ua.timezone == "Europe/Kyiv" and not ua.paused
    quiet = engine.schedules.get("quiet")
    assert quiet.paused and quiet.paused_by == "config"
    with pytest.raises(ScheduleError, match="paused in the config file"):
        engine.schedules.resume("quiet")
    with pytest.raises(ScheduleError, match="defined in the config file"):
        engine.schedules.delete("harvest-ua")
    with pytest.raises(ScheduleError, match="defined in the config file"):
        engine.schedules.add("harvest-ua", "noop", "0 * * * *", replace=True)

    # an operator's pause survives a sync; unchanged definitions keep their next slot
    engine.schedules.pause("harvest-ua", by="bob")
    configs = [ScheduleConfig(**c) for c in config]
    report = sync(configs)
    assert report.unchanged == ["harvest-ua", "quiet"]
    assert engine.schedules.get("harvest-ua").paused_by == "bob"
    assert engine.schedules.get("harvest-ua").next_run_at == ua.next_run_at

    # a changed cron moves the next slot; unpausing in the file resumes; a dropped one is removed
    configs[0] = configs[0].model_copy(update={"cron": "0 4 * * *"})
    configs[1] = configs[1].model_copy(update={"paused": False})
    engine.schedules.add("mine", "noop", "0 * * * *")
    report = sync(configs[:1])
    assert (report.updated, report.removed) == (["harvest-ua"], ["quiet"])
    assert engine.schedules.get("harvest-ua").next_run_local.hour == 4
    report = sync(configs)
    assert report.added == ["quiet"] and not engine.schedules.get("quiet").paused
    assert engine.schedules.get("mine").source == "api"  # API schedules are not touched

    # a bad entry refuses the whole sync and names the schedule
    broken = [*configs, ScheduleConfig(name="bad", pipeline="noop", cron="0 * * *")]
    with pytest.raises(ConfigError, match=r"\[schedules\.bad\]: bad cron expression"):
        sync(broken)
    assert [s.name for s in engine.schedules.list()] == ["harvest-ua", "mine", "quiet"]


def test_two_engines_on_one_database_fire_each_slot_once(make_engine, backend) -> None:
    first = make_engine(scheduler=False, max_queue=100)
    second = make_engine(scheduler=False, max_queue=100)
    views = [first.schedules.add(f"s{n}", "noop", "*/10 * * * *") for n in range(12)]
    slot = views[0].next_run_at
    claimed: list[int] = []
    barrier = threading.Barrier(4)

    def fire(engine: Engine) -> None:
        barrier.wait()
        for _ in range(3):
            claimed.append(engine.schedules.fire_due(now=slot + timedelta(seconds=1)))

    threads = [threading.Thread(target=fire, args=(e,)) for e in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(claimed) == 12
    for view in views:
        [run] = second.schedules.runs(view.name)
        assert run.outcome == "submitted"
    jobs = first.jobs.list(pipeline="noop", limit=100)
    assert len(jobs) == 12 and len({j.schedule_id for j in jobs}) == 12


def test_the_scheduler_loop_fires_a_per_second_schedule(make_engine, backend) -> None:
    engine = make_engine()
    engine.schedules.add("every-second", "noop", "* * * * * *", when_busy="queue")

    def submitted() -> list[int]:
        runs = engine.schedules.runs("every-second")
        return [r.job_id for r in runs if r.outcome == "submitted" and r.job_id]

    wait_until(lambda: len(submitted()) >= 2, timeout=15, interval=0.02)
    engine.schedules.pause("every-second")
    for job_id in submitted():
        assert engine.wait(job_id, 30).state == "succeeded"
    assert engine.metrics.schedule_fires >= 2
