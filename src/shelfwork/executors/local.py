"""Threads inside this process: the embedded default."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .base import Executor

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("shelfwork.executor.local")


class LocalExecutor(Executor):
    name = "local"
    runs_here = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.threads = engine.settings.threads
        self._pool: ThreadPoolExecutor | None = None
        self._busy = 0
        self._mutex = threading.Lock()

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shelfwork-job")

    def submit(self, job_id: int) -> None:
        if self._pool is None:
            raise RuntimeError("local executor is not started")
        with self._mutex:
            self._busy += 1
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        from ..runner import run_job

        engine = self.engine
        handoff = engine._handoff(extra=1)  # this thread's slot passes straight to the next job
        try:
            run_job(engine, job_id, leased=True, after_finish=handoff.claim if handoff else None)
        except Exception:
            log.exception("job %s crashed the runner", job_id)
        finally:
            with self._mutex:
                self._busy -= 1
            if handoff is not None and handoff.claimed:
                handoff.hand_over()
            else:
                engine.wake()

    def capacity(self) -> int:
        with self._mutex:
            return max(self.threads - self._busy, 0)

    def stop(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None

    def health(self) -> dict[str, Any]:
        return {
            "ok": self._pool is not None,
            "executor": "local",
            "threads": self.threads,
            "busy": self._busy,
        }
