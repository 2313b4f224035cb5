"""The crash site: a pipeline whose every execution leaves evidence, and the processes that run it.

tests/acceptance/test_crash.py starts these as real processes and SIGKILLs them mid-job:

    python -m tests.support.crashsite server '<settings json>'      # Engine(settings).start()
    python -m tests.support.crashsite worker '<settings json>' 2 [INFO]  # Celery worker, 2 threads

Evidence lives in side tables of the metadata database (`crash_*`, created by the test with
`create_tables`), written in their own committed transactions, so it survives the kill of the
process that wrote it:

- `crash_step_runs`: one 'start' row when a step body begins and one 'done' row when its work is
  complete, with the writing process and time. A step killed between its 'done' row and the commit
  of its checkpoint has legitimately run twice in part; the test therefore checks that no step
  *started* after its checkpoint was committed (`job_steps.finished_at`), which is what "a finished
  step never runs again" means.
- `crash_remote_effects`, `crash_remote_deliveries`, `crash_entities`: a stand-in for an external
  system (a repository receiving deposits). See `remote_deposit`.
- `crash_lock_spans`: when each job held its entity lock, to prove the lock excluded the others.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from shelfwork.config import Settings
from shelfwork.context import StepContext
from shelfwork.jobs import jobs_t
from shelfwork.pipeline import Pipeline, step
from shelfwork.store import Store
from shelfwork.store.database import utcnow
from shelfwork.store.models import UTCDateTime

PIPELINE = "crashsite"
LOCK_WAIT = 60.0  # a dead holder's lock expires after lease_ttl; far below this

crash_metadata = MetaData()

step_runs_t = Table(
    "crash_step_runs",
    crash_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("job_id", Integer, nullable=False, index=True),
    Column("step", String(100), nullable=False),
    Column("phase", String(10), nullable=False),  # start | done
    Column("attempt", Integer, nullable=False),
    Column("run", Integer, nullable=False),  # jobs.runs when the step began
    Column("node", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
)

# The external system. `key` is the idempotency key the client sends; its unique constraint is how
# the remote side dedupes, exactly as a real repository API must.
remote_effects_t = Table(
    "crash_remote_effects",
    crash_metadata,
    Column("key", String(400), primary_key=True),
    Column("job_id", Integer, nullable=False),
    Column("entity", String(100), nullable=False),
    Column("receipt", String(40), nullable=False),
    Column("applied_at", UTCDateTime(), nullable=False),
)

# Every request that reached the external system, applied or refused as a duplicate.
remote_deliveries_t = Table(
    "crash_remote_deliveries",
    crash_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key", String(400), nullable=False, index=True),
    Column("job_id", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),  # applied | duplicate
    Column("pid", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
)

# What the effect does to the remote state: one application adds one to its entity's counter.
entities_t = Table(
    "crash_entities",
    crash_metadata,
    Column("entity", String(100), primary_key=True),
    Column("applied", Integer, nullable=False),
)

lock_spans_t = Table(
    "crash_lock_spans",
    crash_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("entity", String(100), nullable=False),
    Column("job_id", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("entered_at", UTCDateTime(), nullable=False),
    Column("left_at", UTCDateTime()),
)


def create_tables(store: Store, entities: list[str]) -> None:
    """Fresh side tables (dropped first), with every entity's counter at zero."""
    with store.write() as conn:
        crash_metadata.drop_all(conn)
        crash_metadata.create_all(conn)
        conn.execute(insert(entities_t), [{"entity": e, "applied": 0} for e in entities])


def drop_tables(store: Store) -> None:
    with store.write() as conn:
        crash_metadata.drop_all(conn)


# --- the pipeline ---------------------------------------------------------------------------


class CrashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity: str = Field(min_length=1, max_length=100)
    nap_min: float = Field(default=0.05, ge=0)
    nap_max: float = Field(default=0.3, ge=0)


def _nap(ctx: StepContext, share: float = 1.0) -> None:
    p: CrashParams = ctx.params  # type: ignore[assignment]
    ctx.sleep(random.uniform(p.nap_min, p.nap_max) * share)


def _mark(ctx: StepContext, phase: str) -> None:
    """Commit evidence that this step body reached `phase` in this process. After 'done' a short
    nap lets some kills land between a step's finished work and the commit of its checkpoint."""
    store = ctx.engine.store
    with store.write() as conn:
        run = conn.execute(select(jobs_t.c.runs).where(jobs_t.c.id == ctx.job_id)).scalar_one()
        conn.execute(
            insert(step_runs_t).values(
                job_id=ctx.job_id,
                step=ctx.step,
                phase=phase,
                attempt=ctx.attempt,
                run=run,
                node=ctx.engine.node_id,
                pid=os.getpid(),
                at=utcnow(),
            )
        )
    if phase == "done":
        _nap(ctx, 0.2)


def remote_deposit(store: Store, key: str, job_id: int, entity: str) -> dict[str, Any]:
    """The external system's deposit endpoint, deduplicating by idempotency key.

    shelfwork records an effect (`ctx.effect`) only after it returns, in another transaction: a
    process killed between the two has applied the effect without a record, and the resumed step
    sends it again. No client can close that window, so the receiving side must: it applies a key
    once (unique constraint), answers a repeat with the original receipt, and the entity counter
    moves only with a first application. Every delivery is logged so the test can tell repeats that
    came through the window (before shelfwork's record) from repeats shelfwork should have stopped.
    """
    now = utcnow()
    receipt = uuid.uuid4().hex
    with store.write() as conn:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(remote_effects_t).values(
                        key=key, job_id=job_id, entity=entity, receipt=receipt, applied_at=now
                    )
                )
            outcome = "applied"
            conn.execute(
                update(entities_t)
                .where(entities_t.c.entity == entity)
                .values(applied=entities_t.c.applied + 1)
            )
        except IntegrityError:
            outcome = "duplicate"
            receipt = conn.execute(
                select(remote_effects_t.c.receipt).where(remote_effects_t.c.key == key)
            ).scalar_one()
        conn.execute(
            insert(remote_deliveries_t).values(
                key=key, job_id=job_id, outcome=outcome, pid=os.getpid(), at=now
            )
        )
    return {"receipt": receipt}


def fetch(ctx: StepContext) -> dict[str, Any]:
    """Read the record (a nap stands for the remote call)."""
    _mark(ctx, "start")
    _nap(ctx)
    _mark(ctx, "done")
    return {"fetched": ctx.job_id}


def deposit(ctx: StepContext) -> dict[str, Any]:
    """Deposit into the external system under the entity's lock, once per job."""
    _mark(ctx, "start")
    p: CrashParams = ctx.params  # type: ignore[assignment]
    store = ctx.engine.store
    with ctx.lock(f"crash-entity:{p.entity}", wait=LOCK_WAIT):
        with store.write() as conn:
            span = conn.execute(
                insert(lock_spans_t)
                .values(entity=p.entity, job_id=ctx.job_id, pid=os.getpid(), entered_at=utcnow())
                .returning(lock_spans_t.c.id)
            ).scalar_one()
        try:
            _nap(ctx, 0.5)
            key = ctx.idempotency_key("deposit")

            def send() -> dict[str, Any]:
                answer = remote_deposit(store, key, ctx.job_id, p.entity)
                _nap(ctx, 0.5)  # the answer travels back: a kill now leaves an unrecorded effect
                return answer

            answer = ctx.effect("deposit", send)
        finally:
            with store.write() as conn:
                conn.execute(
                    update(lock_spans_t).where(lock_spans_t.c.id == span).values(left_at=utcnow())
                )
    _mark(ctx, "done")
    return {"receipt": answer["receipt"]}


def index(ctx: StepContext) -> dict[str, Any]:
    """Update the discovery index (a nap)."""
    _mark(ctx, "start")
    _nap(ctx)
    _mark(ctx, "done")
    return {"indexed": True}


def finalize(ctx: StepContext) -> dict[str, Any]:
    """Summarise: the job's result is the deposit receipt."""
    _mark(ctx, "start")
    _nap(ctx)
    _mark(ctx, "done")
    return {"receipt": ctx.results["deposit"]["receipt"]}


STEPS = ["fetch", "deposit", "index", "finalize"]
crash_pipeline = Pipeline(
    PIPELINE,
    params=CrashParams,
    steps=[step(fetch), step(deposit), step(index), step(finalize)],
    description="leaves evidence of every execution; for the crash test",
)
PIPELINES = [crash_pipeline]


# --- process entry points -------------------------------------------------------------------


def _stop_on_sigterm(stop: threading.Event) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())


def serve(settings: Settings) -> None:
    """The server role: scheduler plus this settings' executor, until SIGTERM."""
    from shelfwork.engine import Engine

    stop = threading.Event()
    _stop_on_sigterm(stop)
    engine = Engine(settings).start()
    print(f"server {os.getpid()} up as {engine.node_id}", flush=True)
    stop.wait()
    engine.stop(wait=False)


def work(settings: Settings, concurrency: int, loglevel: str) -> None:
    """A Celery worker consuming settings.celery_queue (blocks; Celery handles SIGTERM)."""
    from shelfwork.executors.celery import run_worker

    print(f"worker {os.getpid()} starting", flush=True)
    run_worker(settings, concurrency=concurrency, loglevel=loglevel)


def main(argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {os.getpid()} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    role, raw = argv[0], argv[1]
    settings = Settings.model_validate(json.loads(raw))
    if role == "server":
        serve(settings)
    elif role == "worker":
        concurrency = int(argv[2]) if len(argv) > 2 else 2
        work(settings, concurrency, argv[3] if len(argv) > 3 else "WARNING")
    else:
        raise SystemExit(f"unknown role {role!r}; expected server or worker")


if __name__ == "__main__":
    main(sys.argv[1:])
