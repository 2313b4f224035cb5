"""shelfwork: durable integration jobs for libraries, repositories and catalogs."""

from .batch import BatchSummary, Page, run_batches
from .config import Settings, load_settings
from .context import StepContext
from .engine import Engine
from .errors import (
    BadParams,
    Cancelled,
    ConfigError,
    JobNotFound,
    LockHeld,
    PreconditionFailed,
    QueueFull,
    ShelfworkError,
    UnknownPipeline,
)
from .pipeline import Pipeline, Registry, Retry, branch, parallel, step
from .trackers import Poll, Tracker

__all__ = [
    "BadParams",
    "BatchSummary",
    "Cancelled",
    "ConfigError",
    "Engine",
    "JobNotFound",
    "LockHeld",
    "Page",
    "Pipeline",
    "Poll",
    "PreconditionFailed",
    "QueueFull",
    "Registry",
    "Retry",
    "Settings",
    "ShelfworkError",
    "StepContext",
    "Tracker",
    "UnknownPipeline",
    "branch",
    "load_settings",
    "parallel",
    "run_batches",
    "step",
]
