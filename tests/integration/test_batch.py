"""The batch runner on both configurations: one transaction per page, resume after the last
committed page (after a lost lease and after a killed process), dead letters, the error-rate limit,
and a graceful stop on cancel."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Connection, Integer, MetaData, Table, delete, insert, select, update

from shelfwork.batch import Page, dead_letters, run_batches
from shelfwork.config import Settings
from shelfwork.context import StepContext
from shelfwork.engine import Engine
from shelfwork.pipeline import Pipeline, Registry, Retry, step
from shelfwork.store.database import utcnow
from shelfwork.store.models import Job

# A table of the caller's own, in the metadata database, written in the pages' transactions.
caller_meta = MetaData()
items_t = Table(
    "batch_test_items",
    caller_meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("item", Integer, nullable=False),
)
jobs_t = Job.__table__

# Per-test state, keyed by the test's tag (the Celery worker runs in this process, on threads).
SOURCE_CALLS: dict[str, list[Any]] = {}
GATES: dict[str, tuple[threading.Event, threading.Event]] = {}
FIXED: set[str] = set()
STOLEN: set[str] = set()
TX_OPENED: dict[str, int] = {}
KILL_IN_THIS_PROCESS = False  # set only in the child process that is meant to die


class BatchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str
    items: int = 50
    page_size: int = 10
    bad: list[int] = []
    max_error_rate: float | None = 0.5
    min_items: int = 1
    last_page_known: bool = True
    gate_before_page: int | None = None  # hold the source before this page (1-based) until released
    steal_lease_before_page: int | None = None  # another node "takes over" before this page
    kill_at_item: int | None = None  # the process dies mid-page at this item (child only)
    count_transactions: bool = False


def ingest(ctx: StepContext) -> dict[str, Any]:
    p: BatchParams = ctx.params  # type: ignore[assignment]

    def pages(position: int | None) -> Iterator[Page[int]]:
        SOURCE_CALLS.setdefault(p.tag, []).append(position)
        offset = position or 0
        while offset < p.items:
            number = offset // p.page_size + 1
            if number == p.gate_before_page and p.tag in GATES:
                entered, release = GATES[p.tag]
                entered.set()
                release.wait(20)
            if number == p.steal_lease_before_page and p.tag not in STOLEN:
                STOLEN.add(p.tag)
                _expire_lease(ctx, owner="node:that-took-over")
            end = min(offset + p.page_size, p.items)
            last = end >= p.items and p.last_page_known
            yield Page(list(range(offset, end)), after=None if last else end, total=p.items)
            offset = end

    def save(item: int, tx: Connection) -> None:
        tx.execute(insert(items_t).values(job_id=ctx.job_id, item=item))
        if item == p.kill_at_item and KILL_IN_THIS_PROCESS:
            os._exit(3)  # a worker killed mid-page: nothing of this page may survive
        if item in p.bad and p.tag not in FIXED:
            raise ValueError(f"item {item} is malformed")  # after a write: the savepoint undoes it

    write = None
    if p.count_transactions:

        def write() -> AbstractContextManager[Connection]:
            TX_OPENED[p.tag] = TX_OPENED.get(p.tag, 0) + 1
            return ctx.engine.store.write()

    summary = run_batches(
        ctx,
        pages,
        save,
        key=lambda item: f"record-{item}",
        max_error_rate=p.max_error_rate,
        min_items=p.min_items,
        write=write,
    )
    return summary.as_dict()


# Retries are on, as for a real import: a transient fault may retry, an error-rate verdict may not.
batch_pipeline = Pipeline(
    "batch-test", steps=[step(ingest, retry=Retry(attempts=3))], params=BatchParams
)


def _expire_lease(ctx: StepContext, owner: str) -> None:
    with ctx.engine.store.write() as conn:
        conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == ctx.job_id)
            .values(lease_owner=owner, lease_expires_at=utcnow() - timedelta(seconds=1))
        )


@pytest.fixture
def batch_engine(make_engine: Any) -> Any:
    made: list[Engine] = []

    def factory(**overrides: Any) -> Engine:
        engine = make_engine([batch_pipeline], **overrides)
        if not made:
            _reset_caller_table(engine)
        made.append(engine)
        return engine

    return factory


def _reset_caller_table(engine: Engine) -> None:
    with engine.store.write() as conn:
        caller_meta.create_all(conn)
        conn.execute(delete(items_t))


def _written(engine: Engine, job_id: int) -> list[int]:
    with engine.store.read() as conn:
        rows = conn.execute(select(items_t.c.item).where(items_t.c.job_id == job_id)).all()
    return sorted(r.item for r in rows)


def _checkpoint(engine: Engine, job_id: int) -> dict[str, Any]:
    return engine.jobs.steps(job_id)["ingest"].checkpoint["batch"]


def _tag(request: pytest.FixtureRequest) -> str:
    return request.node.name


def test_pages_commit_with_checkpoint_and_progress(batch_engine, backend, request) -> None:
    engine = batch_engine()
    tag = _tag(request)
    job = engine.submit(
        "batch-test", {"tag": tag, "items": 45, "page_size": 10, "last_page_known": False}
    )
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert view.result == {
        "pages": 5,
        "items": 45,
        "failed": 0,
        "position": 45,
        "finished": True,
        "resumed": False,
    }
    assert _written(engine, job.job_id) == list(range(45))
    assert _checkpoint(engine, job.job_id)["finished"] is True
    assert (view.progress_done, view.progress_total) == (45, 45)
    assert "5 pages, 45 items, 0 failed; done" in (view.progress_message or "")
    assert SOURCE_CALLS[tag] == [None]
    assert view.warnings == []


def test_lost_lease_mid_run_resumes_after_last_committed_page(
    batch_engine, backend, request
) -> None:
    engine = batch_engine()
    tag = _tag(request)
    job = engine.submit(
        "batch-test",
        {"tag": tag, "items": 60, "page_size": 10, "steal_lease_before_page": 4},
    )
    view = engine.wait(job.job_id, 40)
    assert view.state == "succeeded", view.error
    # Page 4 was processed by the run that lost its lease, but never committed: the next run
    # started exactly after page 3 and every item was written once.
    assert SOURCE_CALLS[tag] == [None, 30]
    assert _written(engine, job.job_id) == list(range(60))
    assert view.result["pages"] == 6 and view.result["items"] == 60
    assert view.result["resumed"] is True
    assert "reclaimed" in [e["kind"] for e in engine.jobs.events(job.job_id)]


def test_bad_items_become_dead_letters_and_the_run_goes_on(batch_engine, backend, request) -> None:
    engine = batch_engine()
    tag = _tag(request)
    bad = [3, 17, 18, 41]
    job = engine.submit(
        "batch-test",
        {"tag": tag, "items": 50, "bad": bad, "max_error_rate": 0.2, "count_transactions": True},
    )
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert view.result["failed"] == 4 and view.result["items"] == 50
    # the rows a bad item wrote before failing were rolled back with its savepoint
    assert _written(engine, job.job_id) == [i for i in range(50) if i not in bad]
    letters = dead_letters(engine.store, job.job_id)
    assert [d.item_key for d in letters] == [f"record-{i}" for i in bad]
    assert [d.payload for d in letters] == bad
    assert all(d.step == "ingest" and d.pipeline == "batch-test" for d in letters)
    assert letters[0].reason == "ValueError: item 3 is malformed"
    assert any("4 of 50 items failed" in w["message"] for w in view.warnings)
    assert TX_OPENED[tag] == 5  # one transaction per page, through the caller's factory


def test_error_rate_limit_fails_the_job_and_a_retry_continues(
    batch_engine, backend, request
) -> None:
    engine = batch_engine()
    tag = _tag(request)
    bad = [i for i in range(100) if i % 3 == 0]
    job = engine.submit(
        "batch-test",
        {"tag": tag, "items": 100, "bad": bad, "max_error_rate": 0.2, "min_items": 20},
    )
    view = engine.wait(job.job_id, 30)
    assert view.state == "failed"
    # judged after page 2: 0, 3, 6, 9, 12, 15, 18 failed
    assert "7 of 20 items failed (35.0%), over the error-rate limit of 20.0%" in view.error
    assert "step 'ingest' failed after 1 attempt(s)" in view.error  # not retried
    # the page that tripped the limit still committed, with its dead letters
    assert _checkpoint(engine, job.job_id)["position"] == 20
    assert len(dead_letters(engine.store, job.job_id)) == 7
    assert _written(engine, job.job_id) == [i for i in range(20) if i not in bad]

    FIXED.add(tag)  # the mapping is fixed; a retry continues where the job stopped
    engine.retry(job.job_id)
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert SOURCE_CALLS[tag] == [None, 20]
    assert view.result["items"] == 100 and view.result["failed"] == 7
    assert _written(engine, job.job_id) == [i for i in range(100) if i not in bad[:7]]


def test_cancel_stops_after_the_current_page_with_its_checkpoint(
    batch_engine, backend, request
) -> None:
    engine = batch_engine()
    tag = _tag(request)
    entered, release = threading.Event(), threading.Event()
    GATES[tag] = (entered, release)
    job = engine.submit(
        "batch-test", {"tag": tag, "items": 50, "page_size": 10, "gate_before_page": 2}
    )
    assert entered.wait(20), "the job never reached page 2"
    engine.cancel(job.job_id)
    # The heartbeat passes the request to the run (the step's own reads of it are throttled);
    # one beat now, not a wait for the next.
    engine.heartbeat.beat()
    release.set()
    view = engine.wait(job.job_id, 30)
    assert view.state == "cancelled", view.error
    assert "stopped after page 2" in (view.error or "")
    assert _checkpoint(engine, job.job_id)["position"] == 20
    assert _written(engine, job.job_id) == list(range(20))

    del GATES[tag]
    engine.retry(job.job_id)
    view = engine.wait(job.job_id, 30)
    assert view.state == "succeeded", view.error
    assert SOURCE_CALLS[tag] == [None, 20]
    assert _written(engine, job.job_id) == list(range(50))


# --- a worker process killed mid-page ---------------------------------------------------------


def _run_until_killed(settings: Settings, params: dict[str, Any], job_ids: Any) -> None:
    """Child process: run the job on a local executor; `save` kills the process mid-page."""
    global KILL_IN_THIS_PROCESS
    KILL_IN_THIS_PROCESS = True
    engine = Engine(settings, Registry([batch_pipeline]), kind="worker")
    engine.start(scheduler=False)
    job = engine.submit("batch-test", params)
    job_ids.put(job.job_id)
    engine.dispatch()
    time.sleep(30)
    os._exit(1)  # not killed: the parent sees exit code 1 and fails


def test_killed_worker_resumes_after_last_committed_page(batch_engine, backend, request) -> None:
    first = batch_engine(start=False)  # the schema and the caller's table, nothing running yet
    tag = _tag(request)
    params = {"tag": tag, "items": 50, "page_size": 10, "kill_at_item": 25}
    spawn = multiprocessing.get_context("spawn")
    job_ids = spawn.Queue()
    child_settings = first.settings.model_copy(update={"executor": "local", "lease_ttl": 1.0})
    child = spawn.Process(target=_run_until_killed, args=(child_settings, params, job_ids))
    child.start()
    child.join(60)
    assert child.exitcode == 3, f"child exited with {child.exitcode}"
    job_id = job_ids.get(timeout=5)
    # pages 1 and 2 committed; page 3 died half-way and left nothing behind
    assert _checkpoint(first, job_id)["position"] == 20
    assert _written(first, job_id) == list(range(20))

    engine = batch_engine()  # reclaims the expired lease and resumes the job
    view = engine.wait(job_id, 40)
    assert view.state == "succeeded", view.error
    assert SOURCE_CALLS[tag] == [20]
    assert _written(engine, job_id) == list(range(50))
    assert view.result["pages"] == 5 and view.result["resumed"] is True
