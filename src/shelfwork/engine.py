"""The engine: one object per process that ties the store, admission, executors and scheduler together.

engine = Engine(load_settings())
engine.start()                     # executor, heartbeat, scheduler loop
job = engine.submit("sleep", {"seconds": 1})
engine.wait(job.job_id)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from .admission import Admission, Limits, Submitted
from .config import Settings, load_settings
from .executors import make_executor
from .jobs import Jobs, JobView
from .leases import Heartbeat
from .locks import EntityValues, Locks
from .metrics import Metrics
from .pipeline import Registry
from .store import Store

log = logging.getLogger("shelfwork.engine")


class Handoff:
    """Claims made inside someone else's write transaction, handed to the executor after commit.

    A finishing job claims its successor in its own final transaction and a submit claims its own
    job, so no extra transaction or scheduler wake-up stands between "may run" and "runs"."""

    def __init__(self, engine: Engine, limit: int | None) -> None:
        self.engine = engine
        self.limit = limit
        self.claimed: list[int] = []
        if engine.executor.runs_here:
            self.owner, self.ttl = engine.node_id, engine.settings.lease_ttl
        else:
            self.owner = f"dispatch:{engine.node_id}"
            self.ttl = engine.settings.dispatch_ttl

    def claim(self, conn: Connection) -> None:
        if self.engine.stopping:  # an executor that is shutting down takes no new jobs
            return
        found = self.engine.admission.claim_in(conn, self.owner, self.ttl, limit=self.limit)
        self.claimed.extend(c.job_id for c in found)

    def hand_over(self) -> None:
        """After the commit: start what was claimed (a failed hand-over gives the claims back)."""
        for i, job_id in enumerate(self.claimed):
            try:
                self.engine.executor.submit(job_id)
            except Exception as exc:
                rest = self.claimed[i:]
                self.engine.admission.unclaim(rest, self.owner, f"could not hand over: {exc}")
                log.warning(
                    "hand-over of jobs %s failed; returned to the queue", rest, exc_info=True
                )
                return


class Engine:
    def __init__(
        self,
        settings: Settings | None = None,
        registry: Registry | None = None,
        *,
        kind: str = "server",
        upgrade: bool = True,
    ) -> None:
        from .registry import default_registry

        self.settings = settings or load_settings()
        self.registry = registry if registry is not None else default_registry(self.settings)
        self.store = Store(self.settings.database_url)
        if upgrade:
            self.store.upgrade()
        self.kind = kind
        self.node_id = f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs = Jobs(self.store)
        self.admission = Admission(
            self.store, Limits(self.settings.max_running, self.settings.max_queue)
        )
        self.locks = Locks(self.store)
        self.values = EntityValues(self.store)
        self.metrics = Metrics()
        self.heartbeat = Heartbeat(self, kind)
        self.executor = make_executor(self)
        from .schedules import Schedules
        from .trackers import Trackers

        self.schedules = Schedules(self)
        self.trackers = Trackers(self)
        self._wake = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._dispatch_mutex = threading.Lock()
        self.started = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, *, scheduler: bool = True) -> Engine:
        """Start the executor and heartbeat; with `scheduler`, also dispatch, reclaim, cron, trackers."""
        if self.started:
            return self
        self.executor.start()
        self.heartbeat.start()
        if scheduler:
            from .scheduler import SchedulerLoop

            self.schedules.sync_from_config(self.settings.schedules)
            self._run_startup_hooks()
            loop = SchedulerLoop(self)
            self._scheduler = threading.Thread(
                target=loop.run, name="shelfwork-scheduler", daemon=True
            )
            self._scheduler.start()
        self.started = True
        return self

    def _run_startup_hooks(self) -> None:
        """A pipeline module's `STARTUP` callables (engine -> None) run where the scheduler
        does: they bring the module's own configuration into the database (networks, their
        schedules) before the first firing, and a ConfigError there stops the start."""
        import importlib

        for name in self.settings.pipeline_modules:
            module = importlib.import_module(name)
            for hook in getattr(module, "STARTUP", []):
                hook(self)

    def stop(self, *, wait: bool = True) -> None:
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        self.trackers.stop()
        self.executor.stop(wait=wait)
        self.heartbeat.stop()
        self.store.dispose()
        self.started = False

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        """Tell the scheduler loop there may be work to dispatch (after a submit or a finish)."""
        self._wake.set()

    def wait_for_wake(self, timeout: float) -> bool:
        woke = self._wake.wait(timeout)
        self._wake.clear()
        return woke

    # --- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        pipeline: str,
        params: dict[str, Any] | None = None,
        *,
        context: str | None = None,
        lane: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        schedule_id: int | None = None,
        note: str = "",
    ) -> Submitted:
        """Validate, admit and queue a job. Raises UnknownPipeline, BadParams, PreconditionFailed,
        QueueFull; a live job with the same dedup key is returned instead of a new one."""
        # With the scheduler running here, a job that may start now is claimed in its own submit
        # transaction and started at once, without a wake-up and a dispatch transaction.
        ready = self._scheduler is not None and self.executor.runs_here
        handoff = self._handoff() if ready else None
        result = self.admission.submit(
            self.registry.get(pipeline),
            params,
            context=context,
            lane=lane,
            priority=priority,
            dedup_key=dedup_key,
            schedule_id=schedule_id,
            note=note,
            then=handoff.claim if handoff else None,
        )
        if handoff is not None and handoff.claimed:
            handoff.hand_over()
        elif result.created:
            if self._scheduler is not None:
                self.wake()
            elif self.settings.executor == "celery":
                try:
                    self.dispatch()
                except Exception:  # the job is safely queued; a server dispatches it later
                    log.warning("job %s queued; dispatch failed", result.job_id, exc_info=True)
        return result

    def _handoff(self, extra: int = 0) -> Handoff | None:
        """A claim to make inside another transaction (a submit, a job's end), if there is room.
        `extra`: slots the caller is about to free (a finishing job's own)."""
        capacity = self.executor.capacity()
        if capacity is not None:
            capacity += extra
            if capacity <= 0:
                return None
        return Handoff(self, capacity)

    def dispatch(self) -> int:
        """Claim what admission allows and hand it to the executor. Safe from any process."""
        with self._dispatch_mutex:
            if self.executor.runs_here:
                capacity = self.executor.capacity()
                if capacity == 0:
                    return 0
                owner, ttl = self.node_id, self.settings.lease_ttl
                claimed = self.admission.claim(owner, ttl, limit=capacity)
            else:
                owner, ttl = f"dispatch:{self.node_id}", self.settings.dispatch_ttl
                claimed = self.admission.claim(owner, ttl)
            for i, c in enumerate(claimed):
                try:
                    self.executor.submit(c.job_id)
                except Exception as exc:
                    # e.g. the broker is down: give the claims back; nothing waits on a lost message
                    rest = [x.job_id for x in claimed[i:]]
                    self.admission.unclaim(rest, owner, f"could not hand the job over: {exc}")
                    raise
            return len(claimed)

    def reclaim(self) -> list[int]:
        """Take over running jobs whose lease expired (their worker died) and run them again."""
        if self.executor.runs_here:
            capacity = self.executor.capacity()
            if capacity == 0:
                return []
            ids = self.admission.reclaim_expired(
                self.node_id, self.settings.lease_ttl, limit=capacity
            )
        else:
            ids = self.admission.reclaim_expired(
                f"dispatch:{self.node_id}", self.settings.dispatch_ttl
            )
        for job_id in ids:
            log.warning("job %s: lease expired, reclaimed", job_id)
            self.executor.submit(job_id)
        return ids

    def run_job(
        self, job_id: int, *, after_finish: Callable[[Connection], None] | None = None
    ) -> str:
        from .runner import run_job

        return run_job(self, job_id, after_finish=after_finish)

    def get(self, job_id: int) -> JobView:
        return self.jobs.get(job_id)

    def cancel(self, job_id: int, *, by: str = "operator") -> JobView:
        view = self.jobs.cancel(job_id, by=by)
        self.wake()
        return view

    def retry(self, job_id: int, *, by: str = "operator") -> JobView:
        self.admission.retry(job_id, by=by)
        self.wake()
        if self._scheduler is None and self.settings.executor == "celery":
            self.dispatch()
        return self.jobs.get(job_id)

    def release(self, job_id: int, *, by: str = "operator") -> JobView:
        job = self.jobs.get(job_id, steps=False)
        view = self.jobs.release(job_id, self.registry.get(job.pipeline).version, by=by)
        self.wake()
        return view

    def wait(self, job_id: int, timeout: float = 60.0, poll: float = 0.02) -> JobView:
        """Block until the job is finished (or `timeout`); returns its last view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.jobs.get(job_id, steps=False)
            if view.finished or time.monotonic() >= deadline:
                return self.jobs.get(job_id)
            time.sleep(poll)
