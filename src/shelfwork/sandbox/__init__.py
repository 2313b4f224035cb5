"""Emulated peers (Koha, DSpace) for the demo and the tests: their HTTP contracts, served on
loopback ports by uvicorn in threads of this process.

Real Koha and DSpace cannot run on a developer's machine in minutes; these emulators reproduce the
parts of their contracts shelfwork relies on (see `koha.py` and `dspace.py`, each behaviour named
after its contract point), plus switches to inject the faults real peers show: latency, 500s,
expired tokens, CSRF rotation.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from ..errors import ShelfworkError


class SandboxError(ShelfworkError):
    """A sandbox server could not start or was misused."""


@dataclass
class RunningServer:
    """One emulator listening on 127.0.0.1; `stop` ends it."""

    name: str
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve(
    app: ASGIApp, name: str, *, port: int = 0, host: str = "127.0.0.1", timeout: float = 15.0
) -> RunningServer:
    """Serve `app` in a daemon thread; returns once it accepts connections."""
    chosen = port or free_port(host)
    config = uvicorn.Config(
        app, host=host, port=chosen, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"sandbox-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise SandboxError(f"sandbox {name}: server on {host}:{chosen} did not start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise SandboxError(f"sandbox {name}: server on {host}:{chosen} not up in {timeout} s")
        time.sleep(0.02)
    return RunningServer(name, f"http://{host}:{chosen}", server, thread)


#: the file that marks a folder a demo made (and may therefore empty)
DEMO_MARKER = ".shelfwork-demo"


def fresh_folder(folder: Path) -> None:
    """Start a demo from an empty folder; only a folder an earlier demo made is ever emptied."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / DEMO_MARKER).exists():
            raise SandboxError(
                f"{folder} exists and was not made by a shelfwork demo; choose another with --dir"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DEMO_MARKER).write_text("made by a shelfwork demo; emptied by the next demo run\n")


def stay_up(keep: bool | None, say: Callable[[str], object]) -> None:
    """Keep a demo's servers up until Ctrl-C when asked (by default: run from a terminal)."""
    if keep is None:
        keep = sys.stdin.isatty()
    if keep:
        say("Servers stay up for you to look around; press Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
