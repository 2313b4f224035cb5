"""The metadata database: the single source of truth for jobs, steps, locks, schedules, trackers."""

from .database import Store, utcnow

__all__ = ["Store", "utcnow"]
