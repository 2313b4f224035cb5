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
from typing import Any

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
            loop = SchedulerLoop(self)
            self._scheduler = threading.Thread(
                target=loop.run, name="shelfwork-scheduler", daemon=True
            )
            self._scheduler.start()
        self.started = True
        return self

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
        result = self.admission.submit(
            self.registry.get(pipeline),
            params,
            context=context,
            lane=lane,
            priority=priority,
            dedup_key=dedup_key,
            schedule_id=schedule_id,
            note=note,
        )
        if result.created:
            if self._scheduler is not None:
                self.wake()
            elif self.settings.executor == "celery":
                try:
                    self.dispatch()
                except Exception:  # the job is safely queued; a server dispatches it later
                    log.warning("job %s queued; dispatch failed", result.job_id, exc_info=True)
        return result

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

    def run_job(self, job_id: int) -> str:
        from .runner import run_job

        return run_job(self, job_id)

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
