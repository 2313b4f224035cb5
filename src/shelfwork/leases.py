"""The node heartbeat: one thread per process renews the leases of every job (and its locks) that
runs here, records the node as alive, and passes cancel requests to the running jobs."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from .context import RunState
from .store.database import utcnow
from .store.models import RUNNING, Job, Lock, Node

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("shelfwork.leases")
jobs_t, locks_t, nodes_t = Job.__table__, Lock.__table__, Node.__table__


class Heartbeat:
    def __init__(self, engine: Engine, kind: str) -> None:
        self.engine = engine
        self.kind = kind
        self._runs: dict[int, RunState] = {}
        self._here: set[int] = set()  # jobs starting or running on this node (see `begin`)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, job_id: int) -> bool:
        """Reserve `job_id` for one run on this node; False if it is already starting or running
        here. A redelivered message (Celery restores unacked messages after its visibility
        timeout) or a reclaim of our own lease would otherwise start a second run under the same
        lease owner, and every lease check would let both through."""
        with self._mutex:
            if job_id in self._here:
                return False
            self._here.add(job_id)
            return True

    def end(self, job_id: int) -> None:
        with self._mutex:
            self._here.discard(job_id)

    def track(self, state: RunState) -> None:
        with self._mutex:
            old = self._runs.get(state.job_id)
            if old is not None and old is not state:
                old.lost.set()  # a newer run of this job on this node supersedes the old one
            self._runs[state.job_id] = state

    def untrack(self, state: RunState) -> None:
        with self._mutex:
            if self._runs.get(state.job_id) is state:
                del self._runs[state.job_id]

    def running(self) -> list[int]:
        with self._mutex:
            return list(self._runs)

    def start(self) -> None:
        self._register()
        self._thread = threading.Thread(target=self._loop, name="shelfwork-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            from sqlalchemy import delete

            with self.engine.store.write() as conn:
                conn.execute(delete(nodes_t).where(nodes_t.c.id == self.engine.node_id))
        except Exception:  # the DB may be gone at shutdown; the row then just ages out
            log.debug("could not deregister node", exc_info=True)

    def _register(self) -> None:
        now = utcnow()
        values = dict(
            id=self.engine.node_id,
            kind=self.kind,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            executor=self.engine.settings.executor,
            started_at=now,
            seen_at=now,
            scheduler=self.kind == "server",
        )
        dialect = postgresql if not self.engine.store.is_sqlite else sqlite
        stmt = dialect.insert(nodes_t).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"seen_at": now})
        with self.engine.store.write() as conn:
            conn.execute(stmt)

    def _loop(self) -> None:
        interval = self.engine.settings.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    def beat(self) -> None:
        """Renew the leases of jobs running here; flag the ones lost or asked to cancel."""
        owner = self.engine.node_id
        ids = self.running()
        now = utcnow()
        expires = now + timedelta(seconds=self.engine.settings.lease_ttl)
        with self.engine.store.write() as conn:
            conn.execute(update(nodes_t).where(nodes_t.c.id == owner).values(seen_at=now))
            if not ids:
                return
            conn.execute(
                update(jobs_t)
                .where(
                    jobs_t.c.id.in_(ids), jobs_t.c.lease_owner == owner, jobs_t.c.state == RUNNING
                )
                .values(lease_expires_at=expires)
            )
            conn.execute(
                update(locks_t)
                .where(
                    locks_t.c.job_id.in_(
                        select(jobs_t.c.id).where(
                            jobs_t.c.id.in_(ids), jobs_t.c.lease_owner == owner
                        )
                    )
                )
                .values(expires_at=expires)
            )
            rows = conn.execute(
                select(
                    jobs_t.c.id, jobs_t.c.lease_owner, jobs_t.c.state, jobs_t.c.cancel_requested
                ).where(jobs_t.c.id.in_(ids))
            ).all()
        with self._mutex:
            for r in rows:
                run = self._runs.get(r.id)
                if run is None:
                    continue
                if r.lease_owner != owner or r.state != RUNNING:
                    run.lost.set()
                elif r.cancel_requested:
                    run.cancel.set()
