"""Every error shelfwork raises on purpose derives from `ShelfworkError`.

Each carries what a person needs to act: which job, which pipeline, which field, which file.
"""

from __future__ import annotations

from typing import Any


class ShelfworkError(Exception):
    """Root of all shelfwork errors."""


class ConfigError(ShelfworkError):
    """A configuration file or setting is wrong; the message names the file, line or key."""


class DatabaseUnavailable(ShelfworkError):
    """The metadata database cannot be reached."""


class UnknownPipeline(ShelfworkError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown pipeline {name!r}; known pipelines: {', '.join(sorted(known)) or 'none'}"
        )


class BadParams(ShelfworkError):
    """Params failed the pipeline's schema; `errors` maps each bad field to its reason."""

    def __init__(self, pipeline: str, errors: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.errors = errors
        parts = "; ".join(f"{field}: {reason}" for field, reason in errors.items())
        super().__init__(f"bad params for pipeline {pipeline!r}: {parts}")


class PreconditionFailed(ShelfworkError):
    """A pipeline's precondition refused the submission (the reason says why)."""

    def __init__(self, pipeline: str, reason: str) -> None:
        self.pipeline = pipeline
        self.reason = reason
        super().__init__(f"pipeline {pipeline!r} refused: {reason}")


class QueueFull(ShelfworkError):
    """The bounded queue is full; the submission was rejected, not dropped."""

    def __init__(self, limit: int, waiting: int, retry_after: float = 1.0) -> None:
        self.limit = limit
        self.waiting = waiting
        self.retry_after = retry_after
        super().__init__(f"queue full: {waiting} jobs waiting (limit {limit}); try again later")


class JobNotFound(ShelfworkError):
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class InvalidTransition(ShelfworkError):
    """An operation does not apply to a job in its current state (e.g. retry a running job)."""


class LockHeld(ShelfworkError):
    def __init__(self, name: str, owner: str | None) -> None:
        self.name = name
        self.owner = owner
        super().__init__(f"lock {name!r} is held by {owner or 'someone else'}")


class LeaseLost(ShelfworkError):
    """This process no longer owns the job's lease (it expired and was reclaimed)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"lease on job {job_id} was lost; another worker owns it now")


class Cancelled(ShelfworkError):
    """Raised inside a step when the job was asked to stop."""


class StepFailed(ShelfworkError):
    """A step ran out of attempts; `cause` is the last error."""

    def __init__(self, step: str, cause: BaseException, attempts: int) -> None:
        self.step = step
        self.cause = cause
        self.attempts = attempts
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {describe(cause)}")


class TrackerError(ShelfworkError):
    """A tracker entity or profile is wrong."""


class ScheduleError(ShelfworkError):
    """A schedule definition is wrong (bad cron, unknown time zone, unknown pipeline)."""


class ErrorRateExceeded(ShelfworkError):
    """A batch job saw more bad items than its error-rate limit allows."""

    def __init__(self, failed: int, seen: int, limit: float) -> None:
        self.failed = failed
        self.seen = seen
        self.limit = limit
        super().__init__(
            f"{failed} of {seen} items failed ({failed / max(seen, 1):.1%}), "
            f"over the error-rate limit of {limit:.1%}"
        )


def describe(exc: BaseException) -> str:
    """A one-line description of an error for job records: type and message."""
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, ShelfworkError):
        return text or name
    return f"{name}: {text}" if text else name


def details(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}
