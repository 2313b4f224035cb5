"""`serve` for real: a child process on a local port runs jobs submitted over HTTP, and on SIGTERM
stops the HTTP server, lets the running job finish, and leaves the node registry clean."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from shelfwork.api.auth import Tokens
from shelfwork.jobs import Jobs
from shelfwork.store import Store
from shelfwork.store.models import Node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_jobs_over_http_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shelfwork.db'}"
    store = Store(url)
    store.upgrade()
    _, secret = Tokens(store).create("operator", "server-test")
    port = free_port()
    code = (
        "from shelfwork.api.server import serve\n"
        "from shelfwork.config import load_settings\n"
        f"serve(load_settings(env={{}}, database_url={url!r}, poll_interval=0.05),"
        f" '127.0.0.1', {port}, log_level='warning')\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            assert child.poll() is None, child.communicate()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)

        r = httpx.post(
            f"{base}/api/v1/jobs",
            json={"pipeline": "sleep", "params": {"seconds": 1.5, "steps": 3}},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        job_url = f"{base}{r.json()['url']}"
        while httpx.get(job_url, headers=headers).json()["state"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        child.send_signal(signal.SIGTERM)  # while the job runs
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert secret not in err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    job = Jobs(store).get(int(job_url.rsplit("/", 1)[1]))
    assert job.state == "succeeded"  # the engine let it finish before stopping
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(Node.__table__)).scalar() == 0
    store.dispose()
