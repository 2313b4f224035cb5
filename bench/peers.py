"""Peer systems for the engine benchmark: Huey (SqliteHuey) and Celery (Redis broker).

Each public function starts its own worker in a subprocess, warms it up, measures, and stops
the worker again (also on errors), so the numbers of one system never include another's
start-up or leftovers. The benchmark process is the producer, as an application would be.

How a run is measured, the same way for every system so the ratios compare engines and not
probes: the task body is trivial and only appends one line ``"<job id> <started> <finished>"``
(``time.time()``) to a records file in the run's directory, with a single ``os.write`` on an
``O_APPEND`` descriptor. That costs a few microseconds, touches neither the queue's SQLite file
nor the broker, and appends of one short line from two threads do not interleave. The producer
reads the file incrementally (only new bytes) every few milliseconds, and takes times from the
records, so the polling interval does not enter the results.

- burst: ``seconds`` = the last job's ``finished`` minus the time just before the first
  enqueue; ``enqueue_seconds`` is how long the producer took to enqueue all of them.
- paced: latency = a job's ``started`` minus the time just before its enqueue call.

``engine.py`` can reuse :class:`Records`, :func:`warm_up`, :func:`measure_burst`,
:func:`measure_paced` and :data:`RECORDER_SOURCE` for shelfwork, so all rows are measured
identically.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: Dedicated Redis database for the Celery peer; it is flushed at the start and the end of a run
#: (shelfwork itself defaults to db 0).
CELERY_REDIS_DB = 14
#: Worker threads for every system: the issue's "2 worker threads" on a 2-core machine.
WORKERS = 2
#: Huey's consumer sleeps between polls of an empty queue (default 0.1 s, growing by x1.15 up to
#: 10 s). With that, paced latency would measure Huey's sleep, not its storage, so we poll every
#: 1 ms (``-d 0.001``) and keep it there (``-b 1.0``: no back-off growth). Huey accepts any delay
#: > 0; 1 ms keeps the idle cost of two polling threads small (~2,000 cheap SELECTs/s) next to
#: the work, whereas 0 would be a busy loop stealing a core from the producer on this machine.
HUEY_POLL_DELAY = 0.001
HUEY_BACKOFF = 1.0
#: Jobs run before each measurement, so imports, connections and caches are warm.
WARMUP_JOBS = 20
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.005

#: The task body every system runs, as module source: ``RECORDS`` must be defined before it.
RECORDER_SOURCE = '''
import os as _os
import time as _time

_records_fd = None


def record_job(job_id):
    """The trivial job: note when it started and finished, in one append."""
    global _records_fd
    started = _time.time()
    finished = _time.time()
    if _records_fd is None:
        _records_fd = _os.open(RECORDS, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)
    _os.write(_records_fd, ("%d %r %r\\n" % (job_id, started, finished)).encode())
'''

_HUEY_APP = """
from huey import SqliteHuey

huey = SqliteHuey(filename=DB)


@huey.task()
def record(job_id):
    record_job(job_id)
"""

_CELERY_APP = """
from celery import Celery

app = Celery("celery_app", broker=BROKER, set_as_current=False)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="bench.record", ignore_result=True)
def record(job_id):
    record_job(job_id)
"""


class Records:
    """The records file as the producer sees it; reads only what was appended since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        """Take in the lines appended since the previous poll."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            job_id, started, finished = line.split()
            self.started[int(job_id)] = float(started)
            self.finished[int(job_id)] = float(finished)

    def wait_for(self, job_ids: Iterable[int], timeout: float, check: Callable[[], None]) -> None:
        """Return once all ``job_ids`` have recorded; ``check`` raises if the worker died."""
        missing = set(job_ids)
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            missing.difference_update(self.started)
            if not missing:
                return
            check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(missing)} jobs had not run after {timeout:g} s "
                    f"(e.g. {sorted(missing)[:5]})"
                )
            time.sleep(POLL_INTERVAL)


def warm_up(
    enqueue: Callable[[int], object],
    records: Records,
    check: Callable[[], None],
    jobs: int = WARMUP_JOBS,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Run a few jobs (negative ids) so the measurement sees a started, warm worker."""
    ids = range(-jobs, 0)
    for job_id in ids:
        enqueue(job_id)
    records.wait_for(ids, timeout, check)


def measure_burst(
    system: str,
    enqueue: Callable[[int], object],
    records: Records,
    check: Callable[[], None],
    n: int,
    timeout: float,
) -> dict[str, Any]:
    """Enqueue ``n`` jobs as fast as possible; time from first enqueue to last job finished."""
    ids = range(n)
    t0 = time.time()
    for job_id in ids:
        enqueue(job_id)
    enqueued = time.time()
    records.wait_for(ids, timeout, check)
    seconds = max(records.finished[i] for i in ids) - t0
    return {
        "system": system,
        "jobs": n,
        "seconds": seconds,
        "jobs_per_s": n / seconds,
        "enqueue_seconds": enqueued - t0,
    }


def measure_paced(
    system: str,
    enqueue: Callable[[int], object],
    records: Records,
    check: Callable[[], None],
    n: int,
    rate: float,
    timeout: float,
) -> dict[str, Any]:
    """Enqueue ``n`` jobs at ``rate`` per second; latency = task start minus just before enqueue."""
    before: dict[int, float] = {}
    start = time.perf_counter()
    for job_id in range(n):
        pause = start + job_id / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        before[job_id] = time.time()
        enqueue(job_id)
    records.wait_for(range(n), timeout, check)
    latencies = sorted((records.started[i] - before[i]) * 1000.0 for i in range(n))
    return {
        "system": system,
        "jobs": n,
        "rate": rate,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "max_ms": latencies[-1],
    }


def huey_burst(
    n: int = 2000, workdir: Path | None = None, *, timeout: float = 300.0
) -> dict[str, Any]:
    """Burst throughput of SqliteHuey with a 2-thread consumer."""
    with _huey(workdir, "burst") as (enqueue, records, check):
        return measure_burst("huey-sqlite", enqueue, records, check, n, timeout)


def huey_paced(
    n: int = 100, rate: float = 10.0, workdir: Path | None = None, *, timeout: float = 60.0
) -> dict[str, Any]:
    """Enqueue-to-start latency of SqliteHuey with a 2-thread consumer, jobs paced at ``rate``/s."""
    with _huey(workdir, "paced") as (enqueue, records, check):
        return measure_paced("huey-sqlite", enqueue, records, check, n, rate, timeout)


def celery_burst(
    n: int = 2000,
    workdir: Path | None = None,
    *,
    redis_db: int = CELERY_REDIS_DB,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Burst throughput of Celery on a Redis broker with a 2-thread worker."""
    with _celery(workdir, "burst", redis_db) as (enqueue, records, check):
        return measure_burst("celery-redis", enqueue, records, check, n, timeout)


def celery_paced(
    n: int = 100,
    rate: float = 10.0,
    workdir: Path | None = None,
    *,
    redis_db: int = CELERY_REDIS_DB,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Enqueue-to-start latency of Celery on Redis, 2-thread worker, jobs paced at ``rate``/s."""
    with _celery(workdir, "paced", redis_db) as (enqueue, records, check):
        return measure_paced("celery-redis", enqueue, records, check, n, rate, timeout)


_Harness = tuple[Callable[[int], object], Records, Callable[[], None]]


@contextlib.contextmanager
def _huey(workdir: Path | None, label: str) -> Iterator[_Harness]:
    """A fresh huey.db, its consumer process and a warm producer; the consumer stops on exit."""
    with _run_dir(workdir, f"huey-{label}-") as run:
        records = run / "records.txt"
        app = _write_module(run / "huey_app.py", _HUEY_APP, RECORDS=records, DB=run / "huey.db")
        cmd = [
            *(sys.executable, "-m", "huey.bin.huey_consumer", "huey_app.huey"),
            *("--workers", str(WORKERS), "--worker-type", "thread"),
            *("--delay", str(HUEY_POLL_DELAY), "--backoff", str(HUEY_BACKOFF)),
            "--quiet",  # WARNING: per-task INFO lines would be a cost of the log, not of Huey
        ]
        producer = _load_module("huey_app", app)
        try:
            with _worker(cmd, run, run / "consumer.log") as check:
                reader = Records(records)
                warm_up(producer.record, reader, check)
                yield producer.record, reader, check
        finally:
            producer.huey.storage.close()


@contextlib.contextmanager
def _celery(workdir: Path | None, label: str, redis_db: int) -> Iterator[_Harness]:
    """A flushed Redis db, a Celery worker process and a warm producer; all stopped on exit."""
    import redis  # here, so Huey alone runs without the Redis client installed

    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis is not reachable at {broker} (make services)") from exc
    client.flushdb()
    with _run_dir(workdir, f"celery-{label}-") as run:
        records = run / "records.txt"
        app = _write_module(run / "celery_app.py", _CELERY_APP, RECORDS=records, BROKER=broker)
        producer = _load_module("celery_app", app)
        if producer.app.conf.broker_url != broker:  # CELERY_BROKER_URL in the env would win
            raise RuntimeError(f"Celery would use {producer.app.conf.broker_url}, not {broker}")
        cmd = [
            *(sys.executable, "-m", "celery", "--app", "celery_app:app", "worker"),
            *("--pool", "threads", "--concurrency", str(WORKERS), "--optimization", "fair"),
            # No cluster chatter between workers (there is one): it only adds broker traffic.
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            *("--loglevel", "WARNING", "--hostname", f"bench-{label}@localhost"),
        ]
        try:
            with _worker(cmd, run, run / "worker.log") as check:
                reader = Records(records)
                warm_up(producer.record.delay, reader, check)
                yield producer.record.delay, reader, check
        finally:
            producer.app.close()
            client.flushdb()
            client.close()


@contextlib.contextmanager
def _run_dir(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """A new directory per run: inside ``workdir`` (kept, for the logs) or a temporary one."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    else:
        with tempfile.TemporaryDirectory(prefix=f"shelfwork-bench-{prefix}") as tmp:
            yield Path(tmp)


def _write_module(path: Path, body: str, **constants: object) -> Path:
    """Write the app module the worker imports: constants, the shared recorder, the app."""
    header = "".join(f"{name} = {str(value)!r}\n" for name, value in constants.items())
    path.write_text(f'"""Generated by bench/peers.py."""\n\n{header}{RECORDER_SOURCE}{body}')
    return path


def _load_module(name: str, path: Path) -> ModuleType:
    """Import the generated app under the worker's module name (task names derive from it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _worker(cmd: list[str], cwd: Path, log: Path) -> Iterator[Callable[[], None]]:
    """Run a worker process in its own session; yield a liveness check; always stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "HUEY_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check() -> None:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"worker exited with {proc.returncode}: {' '.join(cmd)}\n{tail}")

    try:
        yield check
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (warm shutdown for Celery, stop for Huey), then SIGKILL its process group."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
        proc.wait(STOP_TIMEOUT)


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted data (numpy's default method)."""
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main(argv: list[str] | None = None) -> None:
    """Run the four peer measurements one after another and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000, help="jobs in the burst")
    parser.add_argument("--paced", type=int, default=100, help="jobs in the paced run")
    parser.add_argument("--rate", type=float, default=10.0, help="paced jobs per second")
    parser.add_argument("--workdir", type=Path, help="keep run directories and logs here")
    args = parser.parse_args(argv)

    bursts = [
        huey_burst(args.burst, args.workdir),
        celery_burst(args.burst, args.workdir),
    ]
    paced = [
        huey_paced(args.paced, args.rate, args.workdir),
        celery_paced(args.paced, args.rate, args.workdir),
    ]
    print(f"burst: {args.burst} trivial jobs, {WORKERS} worker threads")
    print(f"  {'system':<14} {'seconds':>8} {'jobs/s':>8} {'enqueue s':>10}")
    for r in bursts:
        row = f"{r['seconds']:8.3f} {r['jobs_per_s']:8.0f} {r['enqueue_seconds']:10.3f}"
        print(f"  {r['system']:<14} {row}")
    print(f"paced: {args.paced} jobs at {args.rate:g}/s, enqueue->start latency")
    print(f"  {'system':<14} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for r in paced:
        print(f"  {r['system']:<14} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f}")


if __name__ == "__main__":
    main()
