"""The executor seam: hand a claimed job to somewhere that will run it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Executor(ABC):
    name: str = "base"
    #: whether jobs claimed by this process run here (lease owned by this node at once)
    runs_here: bool = True

    @abstractmethod
    def start(self) -> None:
        """Get ready to accept jobs."""

    @abstractmethod
    def submit(self, job_id: int) -> None:
        """Run the (already claimed) job somewhere; must not block on the job itself."""

    @abstractmethod
    def stop(self, wait: bool = True) -> None:
        """Stop accepting jobs; with `wait`, let running ones finish."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """{"ok": bool, ...details} for /healthz."""

    def capacity(self) -> int | None:
        """How many more jobs this executor can start right now (None: unknown / unbounded)."""
        return None
