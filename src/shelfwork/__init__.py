"""shelfwork: durable integration jobs for libraries, repositories and catalogs."""

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

__all__ = [
    "BadParams",
    "Cancelled",
    "ConfigError",
    "Engine",
    "JobNotFound",
    "LockHeld",
    "Pipeline",
    "PreconditionFailed",
    "QueueFull",
    "Registry",
    "Retry",
    "Settings",
    "ShelfworkError",
    "StepContext",
    "UnknownPipeline",
    "branch",
    "load_settings",
    "parallel",
    "step",
]
