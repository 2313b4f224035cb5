"""Which pipelines and trackers a process knows: the built-ins plus the modules named in settings.

A module listed in `[pipelines] modules` exposes `PIPELINES` (a list of Pipeline) and may expose
`TRACKERS` (a list of Tracker, or of callables that take the engine and return one) and
`STARTUP` (callables that take the engine, run where the scheduler starts).
"""

from __future__ import annotations

import importlib

from .config import Settings
from .errors import ConfigError
from .pipeline import Registry


def default_registry(settings: Settings) -> Registry:
    from .pipelines import builtin

    registry = Registry(builtin.PIPELINES)
    for name in settings.pipeline_modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"pipeline module {name!r} cannot be imported: {exc}") from None
        for p in getattr(module, "PIPELINES", []):
            registry.add(p)
    return registry
