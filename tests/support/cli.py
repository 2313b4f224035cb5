"""`shelfwork ARGS` run through `shelfwork.cli.main` inside the test process.

Much faster than a new interpreter; the result has the shape `subprocess.run` gives (exit code,
stdout, stderr), so a test reads the same either way.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shelfwork.cli import main

Result = subprocess.CompletedProcess[str]
Cli = Callable[..., Result]


@contextmanager
def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    """A runner `run(*args, cwd=None, env=None)`: no SHELFWORK_* setting of the test run's
    environment leaks in (only `env`'s), and the shelfwork logger's level, which the CLI quiets
    for job logs, is restored at the end so other tests do not inherit it."""
    for key in list(os.environ):
        if key.startswith("SHELFWORK_"):
            monkeypatch.delenv(key)
    logger = logging.getLogger("shelfwork")
    level = logger.level

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
        with monkeypatch.context() as scoped:
            if cwd is not None:
                scoped.chdir(cwd)
            for key, value in (env or {}).items():
                scoped.setenv(key, value)
            capsys.readouterr()
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    try:
        yield run
    finally:
        logger.setLevel(level)
