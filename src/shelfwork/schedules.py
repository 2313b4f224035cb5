"""Cron schedules (placeholder, being written)."""

from __future__ import annotations

from typing import Any


class Schedules:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def sync_from_config(self, configs: Any) -> None:
        pass

    def fire_due(self) -> int:
        return 0
