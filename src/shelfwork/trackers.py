"""Trackers (placeholder, being written)."""

from __future__ import annotations

from typing import Any


class Trackers:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def poll_due(self) -> int:
        return 0

    def stop(self) -> None:
        pass
