"""Runs one job: resumes at the first unfinished step, retries by policy, forks and joins branches,
compensates on critical failure, and commits every step's outcome before the next one starts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from .context import BranchOutcome, RunState, StepContext
from .errors import Cancelled, LeaseLost, ShelfworkError, StepFailed, UnknownPipeline, describe
from .jobs import StepView
from .pipeline import Branch, Parallel, Pipeline, Step
from .store.database import utcnow
from .store.models import CANCELLED, FAILED, SUCCEEDED

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .engine import Engine

log = logging.getLogger("shelfwork.runner")


class _CriticalBranchFailed(ShelfworkError):
    def __init__(self, branch: str, error: str) -> None:
        self.branch = branch
        super().__init__(f"critical branch {branch!r} failed: {error}")


class Run:
    """One run of one job on this process."""

    def __init__(
        self, engine: Engine, state: RunState, pipeline: Pipeline, params: BaseModel
    ) -> None:
        self.engine = engine
        self.state = state
        self.pipeline = pipeline
        self.params = params
        self.jobs = engine.jobs
        self.results: dict[str, Any] = {}
        self.branches: dict[str, BranchOutcome] = {}
        self.done: dict[str, StepView] = {}
        self.after_finish: Callable[[Connection], None] | None = None

    def execute(self) -> None:
        job_id = self.state.job_id
        for name, view in self.done.items():
            if view.state == SUCCEEDED:
                self.results[name] = view.result
        plan = list(self.pipeline.steps)
        try:
            for index, node in enumerate(plan):
                last = index == len(plan) - 1
                if isinstance(node, Step):
                    self._serial(node, last=last)
                else:
                    self._parallel(node, last=last)
        except LeaseLost:
            log.warning("job %s: lease lost, another worker took over; stopping here", job_id)
        except Cancelled as exc:
            self._end(CANCELLED, exc)
        except (StepFailed, _CriticalBranchFailed) as exc:
            self._end(FAILED, exc)
        except Exception as exc:  # a bug in shelfwork itself: still end the job, keep the reason
            log.exception("job %s: unexpected error", job_id)
            self._end(FAILED, exc)

    def _context(self, step: str, attempt: int, checkpoint: Any = None) -> StepContext:
        return StepContext(
            self.engine,
            self.state,
            self.pipeline.name,
            self.params,
            self.results,
            self.branches,
            step,
            attempt,
            checkpoint,
        )

    # --- serial steps ----------------------------------------------------------------------

    def _serial(self, node: Step, *, last: bool) -> None:
        view = self.done.get(node.name)
        if view is not None and view.state == SUCCEEDED:
            if last:
                self.jobs.finish(
                    self.state.job_id,
                    self.state.owner,
                    SUCCEEDED,
                    view.result,
                    then=self.after_finish,
                )
            return
        self._check(db=False)
        result = self._attempts(node, branch=None, finish_job=last)
        self.results[node.name] = result

    def _attempts(self, node: Step, *, branch: str | None, finish_job: bool) -> Any:
        """Run a step until it succeeds or its retry policy gives up."""
        job_id, owner = self.state.job_id, self.state.owner
        prior = self.done.get(node.name)
        checkpoint = prior.checkpoint if prior else None
        exists = prior is not None
        while True:
            attempt = self.jobs.step_started(job_id, owner, node.name, branch, exists=exists)
            exists = True
            if attempt is None:
                self.state.cancel.set()
                raise Cancelled(f"job {job_id} cancelled before step {node.name!r}")
            ctx = self._context(node.name, attempt, checkpoint)
            started = time.perf_counter()
            try:
                result = node.fn(ctx)
            except (Cancelled, LeaseLost):
                raise
            except Exception as exc:
                self.engine.metrics.step_duration(
                    self.pipeline.name, node.name, time.perf_counter() - started
                )
                checkpoint = ctx.checkpoint
                if attempt < node.retry.attempts and node.retry.retries(exc):
                    wait = node.retry.wait(attempt)
                    self.jobs.step_finished(
                        job_id,
                        owner,
                        node.name,
                        state="retrying",
                        error=describe(exc),
                        event_kind="step_retry",
                        message=(
                            f"attempt {attempt} of {node.retry.attempts} failed: {describe(exc)}; "
                            f"next in {wait:.1f}s"
                        ),
                    )
                    self._pause(wait)
                    continue
                failure = StepFailed(node.name, exc, attempt)
                self.jobs.step_finished(
                    job_id,
                    owner,
                    node.name,
                    state=FAILED,
                    error=describe(exc),
                    event_kind="step_failed",
                    message=str(failure),
                )
                raise failure from exc
            self.engine.metrics.step_duration(
                self.pipeline.name, node.name, time.perf_counter() - started
            )
            result = _jsonable(result, node.name)
            self.jobs.step_finished(
                job_id,
                owner,
                node.name,
                state=SUCCEEDED,
                result=result,
                event_kind="step_succeeded",
                finish_job=(SUCCEEDED, result, None) if finish_job else None,
                then=self.after_finish if finish_job else None,
            )
            return result

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._check()
            self.state.cancel.wait(min(left, 0.25))
        self._check()

    def _check(self, *, db: bool = True) -> None:
        """Stop if the lease is lost or a cancel was asked (`db`: also ask the database)."""
        if self.state.lost.is_set():
            raise LeaseLost(self.state.job_id)
        if self.state.cancel.is_set() or (db and self.jobs.cancel_requested(self.state.job_id)):
            self.state.cancel.set()
            raise Cancelled(f"job {self.state.job_id} cancelled")

    # --- parallel blocks ------------------------------------------------------------------

    def _parallel(self, node: Parallel, *, last: bool) -> None:
        pending = [b for b in node.branches if not self._branch_done(b)]
        if pending:
            self._check()
            with ThreadPoolExecutor(
                len(pending), thread_name_prefix=f"job{self.state.job_id}"
            ) as pool:
                futures = {b.name: pool.submit(self._branch, b) for b in pending}
                errors = {name: f.exception() for name, f in futures.items()}
            for exc in errors.values():  # cancel and lease loss win over ordinary failures
                if isinstance(exc, (LeaseLost, Cancelled)):
                    raise exc
        critical = [
            b for b in node.branches if b.critical and self.branches[b.name].state == FAILED
        ]
        if critical:
            b = critical[0]
            raise _CriticalBranchFailed(b.name, self.branches[b.name].error or "failed")
        if last:
            summary = {name: o.result for name, o in self.branches.items()}
            self.jobs.finish(
                self.state.job_id, self.state.owner, SUCCEEDED, summary, then=self.after_finish
            )

    def _branch_done(self, b: Branch) -> bool:
        view = self.done.get(b.name)
        if view is None or view.state not in (SUCCEEDED, FAILED):
            return False
        warnings = [view.error] if view.state == FAILED and view.error else []
        self.branches[b.name] = BranchOutcome(
            b.name, b.critical, view.state, view.result, view.error, warnings
        )
        self.results[b.name] = view.result
        return True

    def _branch(self, b: Branch) -> None:
        job_id, owner = self.state.job_id, self.state.owner
        result: Any = None
        try:
            for s in b.steps:
                view = self.done.get(s.name)
                if view is not None and view.state == SUCCEEDED:
                    result = view.result
                    continue
                self._check(db=False)
                result = self._attempts(s, branch=b.name, finish_job=False)
                self.results[s.name] = result
        except (Cancelled, LeaseLost):
            raise
        except StepFailed as exc:
            error = str(exc)
            self.branches[b.name] = BranchOutcome(b.name, b.critical, FAILED, None, error)
            self.jobs.step_finished(
                job_id,
                owner,
                b.name,
                state=FAILED,
                error=error,
                branch=b.name,
                event_kind="branch_failed",
                message=error,
            )
            if not b.critical:
                self.jobs.add_warning(
                    job_id, f"optional branch {b.name!r} failed: {exc}", step=b.name
                )
                self.branches[b.name].warnings.append(error)
            return
        self.branches[b.name] = BranchOutcome(b.name, b.critical, SUCCEEDED, result)
        self.results[b.name] = result
        self.jobs.step_finished(
            job_id,
            owner,
            b.name,
            state=SUCCEEDED,
            result=result,
            branch=b.name,
            event_kind="branch_succeeded",
        )

    # --- ending -------------------------------------------------------------------------

    def _end(self, state: str, exc: BaseException) -> None:
        reason = str(exc)
        if self.pipeline.compensate is not None:
            ctx = self._context("compensate", 1)
            try:
                self.pipeline.compensate(ctx, exc)
                self.jobs.record(
                    self.state.job_id, "compensated", f"compensation ran after: {reason}"
                )
            except Exception as comp:
                log.exception("job %s: compensation failed", self.state.job_id)
                reason = f"{reason}; compensation also failed: {describe(comp)}"
                self.jobs.record(
                    self.state.job_id, "compensation_failed", describe(comp), level="error"
                )
        try:
            self.jobs.finish(
                self.state.job_id, self.state.owner, state, None, reason, then=self.after_finish
            )
        except LeaseLost:
            log.warning("job %s: lease lost before it could be marked %s", self.state.job_id, state)


def run_job(
    engine: Engine,
    job_id: int,
    *,
    leased: bool = False,
    after_finish: Callable[[Connection], None] | None = None,
) -> str:
    """Run or resume a job on this process if its lease can be taken. Returns what happened.

    `leased`: this node's dispatcher already holds the lease (claimed for us), so skip taking it;
    every later write still checks the lease. `after_finish` runs inside the job's final
    transaction (the local executor claims the next job there, handing the slot over at once)."""
    if not engine.heartbeat.begin(job_id):
        return "skipped"  # already running here: a duplicate delivery, not a second run
    try:
        return _run_leased(engine, job_id, leased, after_finish)
    finally:
        engine.heartbeat.end(job_id)


def _run_leased(
    engine: Engine,
    job_id: int,
    leased: bool,
    after_finish: Callable[[Connection], None] | None,
) -> str:
    owner = engine.node_id
    if leased:
        job = engine.jobs.get(job_id)
        if job.lease_owner != owner or job.state != "running":
            return "skipped"
    else:
        taken = engine.jobs.acquire(job_id, owner, engine.settings.lease_ttl)
        if taken is None:
            return "skipped"
        job = taken
    # A job that waited (in the local pool) until its lease (nearly) ran out must renew it before
    # it runs: the heartbeat renews only what runs, and another node may reclaim it mid-step.
    if (
        leased
        and not _lease_lasts(job.lease_expires_at, engine.settings.heartbeat_interval)
        and not engine.jobs.take_lease(job_id, owner, engine.settings.lease_ttl)
    ):
        return "skipped"
    state = RunState(job_id, owner)
    if job.cancel_requested:
        state.cancel.set()
    engine.heartbeat.track(state)
    try:
        try:
            pipeline = engine.registry.get(job.pipeline)
        except UnknownPipeline as exc:
            engine.jobs.hold(job_id, owner, f"pipeline code is not loaded on {owner}: {exc}")
            return "held"
        started_any = job.runs > 1 or bool(job.steps)
        if job.pipeline_version != pipeline.version:
            if started_any and not pipeline.resumable_from(job.pipeline_version):
                engine.jobs.hold(
                    job_id,
                    owner,
                    f"pipeline {pipeline.name!r} changed from version {job.pipeline_version} to "
                    f"{pipeline.version} while this job was in flight; release it to resume on the "
                    "new code, or cancel it",
                )
                return "held"
            engine.jobs.record(
                job_id,
                "version_changed",
                f"running on pipeline version {pipeline.version} "
                f"(submitted on {job.pipeline_version})",
            )
        try:
            params = pipeline.validate(job.params)
        except ShelfworkError as exc:
            engine.jobs.finish(job_id, owner, FAILED, None, f"stored params no longer valid: {exc}")
            return FAILED
        started = time.perf_counter()
        run = Run(engine, state, pipeline, params)
        run.done = {s.name: s for s in job.steps}
        run.after_finish = after_finish
        run.execute()
        engine.metrics.job_duration(pipeline.name, time.perf_counter() - started)
        return "ran"
    except LeaseLost:
        return "lost"
    finally:
        engine.heartbeat.untrack(state)


def _lease_lasts(expires: datetime | None, heartbeat: float) -> bool:
    """Whether a lease outlives the next two heartbeats, which will renew it from now on."""
    return expires is not None and expires - utcnow() > timedelta(seconds=2 * heartbeat)


def _jsonable(value: Any, step: str) -> Any:
    """Step results are stored as JSON; anything else is a programming error worth naming."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ShelfworkError(f"step {step!r} returned a value that is not JSON: {exc}") from None
    return value
