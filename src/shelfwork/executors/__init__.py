"""Where jobs run. Executors own no state: the engine decides what runs, they decide where."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Executor

if TYPE_CHECKING:
    from ..engine import Engine


def make_executor(engine: Engine) -> Executor:
    kind = engine.settings.executor
    if kind == "local":
        from .local import LocalExecutor

        return LocalExecutor(engine)
    from .celery import CeleryExecutor

    return CeleryExecutor(engine)


__all__ = ["Executor", "make_executor"]
