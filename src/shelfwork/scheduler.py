"""The scheduler loop: dispatch on wake-up (not only by polling), reclaim expired leases, fire due
schedules and poll due tracker entities. Every decision it makes is recorded in the database."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("shelfwork.scheduler")


class SchedulerLoop:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        s = engine.settings
        self.reclaim_every = max(min(s.lease_ttl / 4, 5.0), 0.05)
        self.cron_every = min(1.0, s.poll_interval * 2)
        self.tracker_every = min(1.0, s.poll_interval * 2)

    def run(self) -> None:
        engine = self.engine
        last_reclaim = last_cron = last_tracker = 0.0
        while not engine.stopping:
            engine.wait_for_wake(engine.settings.poll_interval)
            if engine.stopping:
                break
            now = time.monotonic()
            self._guard("dispatch", engine.dispatch)
            if now - last_reclaim >= self.reclaim_every:
                last_reclaim = now
                self._guard("reclaim", engine.reclaim)
            if now - last_cron >= self.cron_every:
                last_cron = now
                self._guard("schedules", engine.schedules.fire_due)
            if now - last_tracker >= self.tracker_every:
                last_tracker = now
                self._guard("trackers", engine.trackers.poll_due)

    @staticmethod
    def _guard(what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception:
            log.warning("scheduler %s pass failed; will try again", what, exc_info=True)
