"""Celery workers on Redis or RabbitMQ, for scale-out. Celery only carries job ids: state stays in the
metadata DB, and the DB lease (not the broker) decides who runs a job.

Late acks with reject-on-worker-lost mean a killed worker's message is delivered again; the engine also
re-dispatches any job whose lease expired. Either way the first worker to take the lease runs it and
every other delivery is dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from .base import Executor

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import Engine

log = logging.getLogger("shelfwork.executor.celery")
TASK = "shelfwork.run_job"

_engine: Engine | None = None
_engine_mutex = threading.Lock()


def make_celery(settings: Settings) -> Celery:
    app = Celery("shelfwork", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.celery_queue,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": max(int(settings.dispatch_ttl), 1)},
        worker_hijack_root_logger=False,
    )
    app.conf.shelfwork_settings = settings
    app.register_task(RunJob())
    return app


class RunJob(Task):  # type: ignore[misc]
    """The only Celery task: run (or resume) one job by id, then dispatch what its end allows."""

    name = TASK
    acks_late = True
    ignore_result = True

    def run(self, job_id: int) -> str:
        engine = worker_engine(self.app.conf.shelfwork_settings)
        handoff = engine._handoff()  # claim the next job in this job's final transaction
        outcome = engine.run_job(int(job_id), after_finish=handoff.claim if handoff else None)
        try:
            if handoff is not None and handoff.claimed:
                handoff.hand_over()
            elif outcome != "ran":
                engine.dispatch()  # nothing was handed over: make sure the queue still moves
        except Exception:
            log.warning(
                "dispatch after job %s failed; the scheduler will retry", job_id, exc_info=True
            )
        return outcome


def bind_engine(engine: Engine | None) -> None:
    """Use this engine for tasks run in this process (tests, embedded workers)."""
    global _engine
    with _engine_mutex:
        _engine = engine


def worker_engine(settings: Settings) -> Engine:
    global _engine
    with _engine_mutex:
        if _engine is None:
            from ..engine import Engine

            engine = Engine(settings, kind="worker")
            engine.start(scheduler=False)
            _engine = engine
        return _engine


class CeleryExecutor(Executor):
    name = "celery"
    runs_here = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.app = make_celery(engine.settings)

    def start(self) -> None:
        pass

    def submit(self, job_id: int) -> None:
        self.app.send_task(TASK, args=[job_id], queue=self.engine.settings.celery_queue)

    def stop(self, wait: bool = True) -> None:
        self.app.close()

    def health(self) -> dict[str, Any]:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return {
                "ok": True,
                "executor": "celery",
                "broker": _safe(self.engine.settings.broker_url),
            }
        except Exception as exc:
            return {"ok": False, "executor": "celery", "error": f"broker unreachable: {exc}"}


def _safe(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def run_worker(settings: Settings, *, concurrency: int = 2, loglevel: str = "INFO") -> None:
    """Start a Celery worker (blocking) that runs shelfwork jobs: `shelfwork worker`."""
    app = make_celery(settings)
    worker_engine(settings)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            "-Q",
            settings.celery_queue,
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",  # liveness is the DB lease's business, not the broker's
            "--optimization=fair",
        ]
    )
