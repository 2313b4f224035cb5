"""One package per system built on the engine; `builtin` holds the smoke-test pipelines."""
