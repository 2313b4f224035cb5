"""Engine processes for the crash tests: started by role, SIGKILLed by process group.

A member runs `python -m MODULE ROLE '<settings json>' [extra...]`; tests/support/crashsite.py
gives the roles `server` (scheduler and executor) and `worker` (a Celery worker), and
tests/support/oai_crash.py a server that submits a harvest. The Celery queue of a crash test lives
in a Redis database of its own (`CRASH_REDIS`): kombu keeps unacked messages in per-database keys,
and the short visibility timeouts of these tests would otherwise make their workers redeliver
other test sessions' messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shelfwork.config import Settings
from shelfwork.store.database import utcnow

REPO = Path(__file__).resolve().parents[2]
CRASH_REDIS = os.environ.get("SHELFWORK_TEST_CRASH_REDIS", "redis://127.0.0.1:6379/11")


@dataclass
class Member:
    role: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Kill:
    pid: int
    sent_at: datetime
    jobs: list[int]


@dataclass
class Cluster:
    """Engine processes, each in its own process group so nothing outlives the test."""

    settings: Settings
    logs: Path
    members: list[Member] = field(default_factory=list)
    retired: list[Member] = field(default_factory=list)

    def start(self, role: str, *extra: str, module: str = "tests.support.crashsite") -> Member:
        n = len(self.members) + len(self.retired)
        log = self.logs / f"{role}-{n}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, role, self.settings.model_dump_json(), *extra],
                cwd=self.logs,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        member = Member(role, proc, log)
        self.members.append(member)
        return member

    def kill(self, member: Member, jobs: list[int] | None = None) -> Kill:
        """SIGKILL the member's whole process group: no shutdown code runs, as in a power cut."""
        record = Kill(member.pid, utcnow(), jobs or [])
        os.killpg(member.pid, signal.SIGKILL)
        member.proc.wait(timeout=10)
        self.members.remove(member)
        self.retired.append(member)
        return record

    def kill_all(self, role: str | None = None) -> None:
        for m in [m for m in self.members if role is None or m.role == role]:
            self.kill(m)

    def check_alive(self) -> None:
        """A member that died without being killed is a failure of its own: show why."""
        for m in self.members:
            if m.proc.poll() is not None:
                raise AssertionError(
                    f"{m.role} {m.pid} exited with {m.proc.returncode}:\n{tail(m.log)}"
                )

    def stop(self) -> None:
        for m in [*self.members, *self.retired]:
            if m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(m.pid, signal.SIGKILL)
                m.proc.wait(timeout=10)

    def problems_logged(self, limit: int = 40) -> str:
        """Warnings and errors from every member's log, for failure messages and the summary."""
        lines: list[str] = []
        for m in [*self.retired, *self.members]:
            for line in m.log.read_text(errors="replace").splitlines():
                if any(w in line for w in ("ERROR", "Traceback", "Error:", "CRITICAL")):
                    lines.append(f"[{m.role} {m.pid}] {line}")
        return "\n".join(lines[-limit:])

    def logged(self, limit: int = 3000) -> str:
        """The end of every member's log, for a failure message."""
        parts = [f"--- {m.role} {m.pid} ---\n{tail(m.log)}" for m in [*self.retired, *self.members]]
        return "\n".join(parts)[-limit:]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def purge_queue(queue: str) -> None:
    """Remove a crash test's Celery queue and its unacked messages from the crash Redis."""
    import redis

    r = redis.Redis.from_url(CRASH_REDIS)
    r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for tag, raw in r.hscan_iter("unacked"):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            r.hdel("unacked", tag)
            r.zrem("unacked_index", tag)
    r.close()


def crash_backend(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The settings that put a crash test's cluster on `backend`: a freshly emptied PostgreSQL
    database with Celery on the session's crash queue, or a SQLite file with local threads."""
    if backend == "postgres-celery":
        from tests.conftest import truncate_pg

        url = request.getfixturevalue("pg_url")
        truncate_pg(url)
        return dict(
            database_url=url,
            executor="celery",
            broker_url=CRASH_REDIS,
            celery_queue=request.getfixturevalue("crash_queue"),
        )
    return dict(database_url=f"sqlite:///{tmp_path / 'shelfwork.db'}", executor="local")
