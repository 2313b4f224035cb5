"""What a step sees: its params, earlier results, and the engine's services bound to its job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from .errors import Cancelled, LeaseLost
from .store.database import utcnow
from .store.models import DeadLetter, Effect

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .engine import Engine

log = logging.getLogger("shelfwork.job")
effects_t = Effect.__table__
dead_t = DeadLetter.__table__


@dataclass
class BranchOutcome:
    name: str
    critical: bool
    state: str  # succeeded | failed
    result: Any = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunState:
    """Per-run flags shared by a job's step threads and the node's heartbeat."""

    job_id: int
    owner: str
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    last_cancel_check: float = 0.0


class JobLogger:
    """Writes job events (the audit trail) and mirrors them to Python logging."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def _write(self, level: str, message: str, data: Any = None) -> None:
        self._ctx.engine.jobs.record(
            self._ctx.job_id, "log", message, level=level, step=self._ctx.step, data=data
        )
        log.log(
            getattr(logging, level.upper(), logging.INFO),
            "job %s %s: %s",
            self._ctx.job_id,
            self._ctx.step,
            message,
        )

    def info(self, message: str, data: Any = None) -> None:
        self._write("info", message, data)

    def warning(self, message: str, data: Any = None) -> None:
        self._write("warning", message, data)

    def error(self, message: str, data: Any = None) -> None:
        self._write("error", message, data)


class StepContext:
    def __init__(
        self,
        engine: Engine,
        run: RunState,
        pipeline: str,
        params: BaseModel,
        results: dict[str, Any],
        branches: dict[str, BranchOutcome],
        step: str,
        attempt: int,
        checkpoint: Any = None,
    ) -> None:
        self.engine = engine
        self._run = run
        self.job_id = run.job_id
        self.pipeline = pipeline
        self.params = params
        self.results = results
        self.branches = branches
        self.step = step
        self.attempt = attempt
        self.checkpoint = checkpoint
        self.log = JobLogger(self)
        self._last_progress = 0.0

    # --- progress and warnings --------------------------------------------------------------

    def progress(
        self,
        done: float | None = None,
        total: float | None = None,
        message: str | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Report progress; writes are throttled to a few per second unless `force`."""
        now = time.monotonic()
        if not force and now - self._last_progress < 0.2 and done != total:
            return
        self._last_progress = now
        self.engine.jobs.progress(self.job_id, done, total, message)

    def warn(self, message: str) -> None:
        """Add a warning to the job: it goes on, and the warning shows wherever the job does."""
        self.engine.jobs.add_warning(self.job_id, message, step=self.step)

    # --- cancellation ---------------------------------------------------------------------

    def cancelled(self) -> bool:
        if self._run.lost.is_set():
            raise LeaseLost(self.job_id)
        if self._run.cancel.is_set():
            return True
        now = time.monotonic()
        if now - self._run.last_cancel_check >= 0.5:
            self._run.last_cancel_check = now
            if self.engine.jobs.cancel_requested(self.job_id):
                self._run.cancel.set()
        return self._run.cancel.is_set()

    def check_cancel(self) -> None:
        """Raise Cancelled if the job was asked to stop: call it between units of work."""
        if self.cancelled():
            raise Cancelled(f"job {self.job_id} cancelled during step {self.step!r}")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (with Cancelled) if the job is cancelled."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_cancel()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._run.cancel.wait(min(left, 0.25))

    # --- locks, checkpoints, effects -------------------------------------------------------

    @property
    def owner(self) -> str:
        """Locks belong to the job *and* step, so parallel branches of one job exclude each other."""
        return f"job:{self.job_id}:{self.step}"

    @contextmanager
    def lock(self, name: str, *, wait: float = 0.0) -> Iterator[None]:
        """A named lock owned by this job: renewed by its heartbeat, released when the job ends."""
        locks = self.engine.locks
        locks.acquire(
            name, self.owner, ttl=self.engine.settings.lease_ttl, wait=wait, job_id=self.job_id
        )
        try:
            yield
        finally:
            locks.release(name, self.owner)

    def save_checkpoint(self, value: Any) -> None:
        """Commit where this step has got to; a resumed run finds it in `ctx.checkpoint`."""
        self.engine.jobs.save_checkpoint(self.job_id, self._run.owner, self.step, value)
        self.checkpoint = value

    def idempotency_key(self, name: str = "") -> str:
        """A key stable across retries and resumes of this job's step, for remote systems to dedupe."""
        base = f"shelfwork:{self.pipeline}:{self.job_id}:{self.step}"
        return f"{base}:{name}" if name else base

    def effect(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run an external effect once per job: a resumed step gets the recorded result instead.

        The effect and its record are not one transaction, so fn should also pass
        `idempotency_key(name)` to the remote side where it can (or check the remote first).
        """
        key = self.idempotency_key(name)
        store = self.engine.store
        with store.read() as conn:
            row = conn.execute(select(effects_t.c.result).where(effects_t.c.key == key)).first()
        if row is not None:
            self.log.info(f"effect {name!r} already done; not repeated", {"key": key})
            return row.result
        result = fn()
        try:
            with store.write() as conn:
                conn.execute(
                    insert(effects_t).values(
                        key=key,
                        job_id=self.job_id,
                        step=self.step,
                        result=result,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            pass
        return result

    def dead_letter(self, item_key: str, reason: str, payload: Any = None) -> None:
        with self.engine.store.write() as conn:
            conn.execute(
                insert(dead_t).values(
                    job_id=self.job_id,
                    pipeline=self.pipeline,
                    step=self.step,
                    item_key=str(item_key),
                    reason=reason,
                    payload=payload,
                    created_at=utcnow(),
                )
            )
