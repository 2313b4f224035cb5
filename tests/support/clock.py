"""A clock a test moves by hand, for modules that read the time through `utcnow`.

    clock = FakeClock()
    monkeypatch.setattr("shelfwork.locks.utcnow", clock)
    clock.advance(10)   # every lease shorter than 10 s has now run out

Leases then run out when the test says so, not when a loaded machine happens to be slow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shelfwork.store.database import utcnow


class FakeClock:
    def __init__(self) -> None:
        self.at = utcnow()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
