"""Engine benchmark: shelfwork against Huey and Celery, in one run on one machine (`make bench`).

Rows, each measured with the helpers of ``peers.py`` so that every system is timed the same way
(a trivial task body appends ``"<n> <started> <finished>"`` to a records file; see peers.py):

- ``huey-sqlite``: SqliteHuey, a 2-thread consumer process.
- ``celery-redis``: Celery on Redis, a 2-thread worker process.
- ``shelfwork-local``: SQLite (a fresh file in the same temp filesystem as Huey's) and the local
  executor with 2 threads, started in the benchmark process; jobs are submitted from the main
  thread of that process. That is the deployment the HTTP API has: the API server and the local
  executor share one process, so a submit wakes the scheduler at once.
- ``shelfwork-local-xproc``: the same engine in a separate server process while the benchmark
  process submits with its own engine (not started). Nothing wakes the server's loop across
  processes, so it sees new jobs at its ``poll_interval`` (default 0.5 s) or after a job ends.
- ``shelfwork-celery``: the Celery executor on the same Redis (its own db and queue), a worker
  process with 2 threads (``run_worker``), and the scheduler started in the benchmark process;
  metadata on SQLite, or PostgreSQL with ``--celery-db postgres`` (a throwaway database).

Burst: ``--burst`` jobs enqueued at once; seconds from just before the first enqueue to the last
job *recorded as finished by its body*. For shelfwork, "DB done s" also gives the time until the
last job is marked succeeded in the metadata DB (its ``finished_at``), shelfwork's own bookkeeping.
Paced: ``--paced`` jobs at ``--rate``/s; latency = body start minus just before the submit call.
``--repeat N`` runs every measurement N times and keeps the median run (by jobs/s, by p50), for a
machine with other work on it; the default is one run, as the issue asks.

Prints a table with ratios and the issue's targets, and appends a dated section to
bench/RESULTS.md (``--no-save`` to skip). ``--profile`` adds a per-job breakdown of where
shelfwork-local spends its time (DB statements and transactions per operation, cProfile by package).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import inspect
import os
import platform
import pstats
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select

from shelfwork.config import Settings
from shelfwork.engine import Engine
from shelfwork.jobs import jobs_t
from shelfwork.pipeline import Registry
from shelfwork.store.models import FINAL_STATES, SUCCEEDED

try:
    from bench import peers
except ImportError:  # run as a script: bench/ itself is on sys.path
    import peers  # type: ignore[no-redef]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

#: Redis db and queue of the shelfwork-celery row; db 14 is the plain Celery peer's, tests use 3.
SHELFWORK_REDIS_DB = 13
SHELFWORK_QUEUE = "shelfwork-bench"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PIPELINE = "bench-record"
BURST_TIMEOUT = 300.0
PACED_TIMEOUT = 60.0
DB_TIMEOUT = 60.0

HUEY, CELERY = "huey-sqlite", "celery-redis"
LOCAL, XPROC, SW_CELERY = "shelfwork-local", "shelfwork-local-xproc", "shelfwork-celery"
SYSTEMS = (HUEY, CELERY, LOCAL, XPROC, SW_CELERY)

# Targets from the issue.
THROUGHPUT_VS_HUEY = 2.0
P50_LIMIT_MS = 2.0
OVERHEAD_VS_CELERY = 1.5

#: The pipeline every shelfwork row runs: the peers' recorder as a one-step pipeline.
_SHELFWORK_APP = '''
from pydantic import BaseModel

from shelfwork.pipeline import Pipeline, step


class RecordParams(BaseModel):
    n: int


def record(ctx):
    """The trivial job: record when it started and finished."""
    record_job(ctx.params.n)


PIPELINES = [Pipeline("bench-record", params=RecordParams, steps=[step(record)])]
'''

#: A shelfwork server process: engine with executor and scheduler, until SIGTERM.
_SERVER = """
import signal
import sys
import threading

from shelfwork.config import Settings
from shelfwork.engine import Engine

settings = Settings.model_validate_json(open(sys.argv[1]).read())
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
engine = Engine(settings).start()
try:
    while not stop.wait(0.2):
        pass
finally:
    engine.stop()
"""

#: A shelfwork Celery worker process, as `shelfwork worker` runs it.
_CELERY_WORKER = """
import sys

from shelfwork.config import Settings
from shelfwork.executors.celery import run_worker

settings = Settings.model_validate_json(open(sys.argv[1]).read())
run_worker(settings, concurrency=int(sys.argv[2]), loglevel="WARNING")
"""


@dataclass
class Harness:
    """What a measurement needs from a running shelfwork setup."""

    enqueue: Callable[[int], object]
    records: peers.Records
    check: Callable[[], None]
    engine: Engine  # the submitting engine; its store reads the metadata DB
    job_ids: list[int] = field(default_factory=list)


# --- shelfwork setups ----------------------------------------------------------------------------


def _settings(run: Path, jobs: int, database_url: str | None = None, **extra: Any) -> Settings:
    """Settings comparable with the peers: 2 worker threads, a queue that holds the burst.

    They name no pipeline module: this process passes the app's registry to its Engine, and a
    subprocess gets the settings from :func:`_settings_file`, which adds ``benchjobs``."""
    return Settings(
        database_url=database_url or f"sqlite:///{run / 'shelfwork.db'}",
        max_running=peers.WORKERS,
        local_threads=peers.WORKERS,
        max_queue=max(10_000, 2 * jobs + peers.WARMUP_JOBS),
        **extra,
    )


def _settings_file(run: Path, settings: Settings) -> Path:
    """The settings for a subprocess, which imports the app from its working directory."""
    path = run / "settings.json"
    path.write_text(
        settings.model_copy(update={"pipeline_modules": ["benchjobs"]}).model_dump_json()
    )
    return path


def _write_app(run: Path) -> tuple[Path, Registry, Callable[[], None]]:
    """The pipeline module for subprocesses, its registry for this process, and a closer."""
    records = run / "records.txt"
    path = peers._write_module(run / "benchjobs.py", _SHELFWORK_APP, RECORDS=records)
    module = peers._load_module("benchjobs", path)

    def close() -> None:
        if module._records_fd is not None:
            os.close(module._records_fd)
            module._records_fd = None

    return records, Registry(module.PIPELINES), close


def _submitter(engine: Engine, job_ids: list[int]) -> Callable[[int], object]:
    def enqueue(n: int) -> object:
        submitted = engine.submit(PIPELINE, {"n": n})
        job_ids.append(submitted.job_id)
        return submitted

    return enqueue


def _warm(harness: Harness) -> Harness:
    peers.warm_up(harness.enqueue, harness.records, harness.check)
    harness.job_ids.clear()
    return harness


@contextlib.contextmanager
def shelfwork_local(workdir: Path | None, label: str, jobs: int) -> Iterator[Harness]:
    """An engine with the local executor and scheduler, started in this process."""
    with peers._run_dir(workdir, f"shelfwork-local-{label}-") as run:
        records, registry, close = _write_app(run)
        engine = Engine(_settings(run, jobs), registry)
        try:
            engine.start()
            scheduler = engine._scheduler

            def check() -> None:
                if scheduler is None or not scheduler.is_alive():
                    raise RuntimeError("the shelfwork scheduler thread has stopped")

            ids: list[int] = []
            yield _warm(
                Harness(_submitter(engine, ids), peers.Records(records), check, engine, ids)
            )
        finally:
            engine.stop()
            close()


@contextlib.contextmanager
def shelfwork_xproc(workdir: Path | None, label: str, jobs: int) -> Iterator[Harness]:
    """A server process runs the engine; this process only submits (its engine is not started)."""
    with peers._run_dir(workdir, f"shelfwork-xproc-{label}-") as run:
        records, registry, close = _write_app(run)
        settings = _settings(run, jobs)
        engine = Engine(settings, registry)  # migrates the schema before the server starts
        cmd = [sys.executable, "-c", _SERVER, str(_settings_file(run, settings))]
        try:
            with peers._worker(cmd, run, run / "server.log") as check:
                ids: list[int] = []
                h = Harness(_submitter(engine, ids), peers.Records(records), check, engine, ids)
                yield _warm(h)
        finally:
            engine.store.dispose()
            close()


@contextlib.contextmanager
def shelfwork_celery(
    workdir: Path | None, label: str, jobs: int, database: str = "sqlite"
) -> Iterator[Harness]:
    """Celery executor: a 2-thread worker process, the scheduler in this process."""
    import redis

    broker = f"redis://{peers.REDIS_HOST}:{peers.REDIS_PORT}/{SHELFWORK_REDIS_DB}"
    client = redis.Redis(
        host=peers.REDIS_HOST, port=peers.REDIS_PORT, db=SHELFWORK_REDIS_DB, socket_timeout=10
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis is not reachable at {broker} (make services)") from exc
    client.flushdb()
    try:
        with (
            peers._run_dir(workdir, f"shelfwork-celery-{label}-") as run,
            _metadata_db(database, run) as url,
        ):
            records, registry, close = _write_app(run)
            settings = _settings(
                run, jobs, url, executor="celery", broker_url=broker, celery_queue=SHELFWORK_QUEUE
            )
            engine = Engine(settings, registry)
            path = _settings_file(run, settings)
            cmd = [sys.executable, "-c", _CELERY_WORKER, str(path), str(peers.WORKERS)]
            try:
                with peers._worker(cmd, run, run / "worker.log") as check:
                    engine.start()
                    ids: list[int] = []
                    h = Harness(_submitter(engine, ids), peers.Records(records), check, engine, ids)
                    yield _warm(h)
            finally:
                engine.stop()
                close()
    finally:
        client.flushdb()
        client.close()


@contextlib.contextmanager
def _metadata_db(kind: str, run: Path) -> Iterator[str]:
    """SQLite in the run directory, or a throwaway PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{run / 'shelfwork.db'}"
        return
    import psycopg

    name = f"shelfwork_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- measurements --------------------------------------------------------------------------------


def _db_seconds(h: Harness, t0: float, timeout: float = DB_TIMEOUT) -> float:
    """Seconds from ``t0`` until the last of the harness's jobs was marked succeeded in the DB."""
    low, high, n = min(h.job_ids), max(h.job_ids), len(set(h.job_ids))
    deadline = time.monotonic() + timeout
    while True:
        with h.engine.store.read() as conn:
            rows = conn.execute(
                select(jobs_t.c.state, func.count(), func.max(jobs_t.c.finished_at))
                .where(jobs_t.c.id.between(low, high), jobs_t.c.state.in_(FINAL_STATES))
                .group_by(jobs_t.c.state)
            ).all()
        done = {state: (count, last) for state, count, last in rows}
        if set(done) - {SUCCEEDED}:
            raise RuntimeError(f"benchmark jobs did not all succeed: {done}")
        if SUCCEEDED in done and done[SUCCEEDED][0] >= n:
            return float(done[SUCCEEDED][1].timestamp() - t0)
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not marked succeeded in the DB after {timeout:g} s: {done}")
        time.sleep(peers.POLL_INTERVAL)


def _shelfwork_burst(system: str, setup: Any, n: int) -> dict[str, Any]:
    with setup as h:
        result = peers.measure_burst(system, h.enqueue, h.records, h.check, n, BURST_TIMEOUT)
        t0 = max(h.records.finished[i] for i in range(n)) - result["seconds"]
        result["db_seconds"] = _db_seconds(h, t0)
        return result


def _shelfwork_paced(system: str, setup: Any, n: int, rate: float) -> dict[str, Any]:
    with setup as h:
        return peers.measure_paced(system, h.enqueue, h.records, h.check, n, rate, PACED_TIMEOUT)


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every selected system's burst, then every selected system's paced run."""
    wd, n, db = args.workdir, args.burst, args.celery_db
    bursts: dict[str, Callable[[], dict[str, Any]]] = {
        HUEY: lambda: peers.huey_burst(n, wd),
        CELERY: lambda: peers.celery_burst(n, wd),
        LOCAL: lambda: _shelfwork_burst(LOCAL, shelfwork_local(wd, "burst", n), n),
        XPROC: lambda: _shelfwork_burst(XPROC, shelfwork_xproc(wd, "burst", n), n),
        SW_CELERY: lambda: _shelfwork_burst(SW_CELERY, shelfwork_celery(wd, "burst", n, db), n),
    }
    p, rate = args.paced, args.rate
    paced: dict[str, Callable[[], dict[str, Any]]] = {
        HUEY: lambda: peers.huey_paced(p, rate, wd),
        CELERY: lambda: peers.celery_paced(p, rate, wd),
        LOCAL: lambda: _shelfwork_paced(LOCAL, shelfwork_local(wd, "paced", p), p, rate),
        XPROC: lambda: _shelfwork_paced(XPROC, shelfwork_xproc(wd, "paced", p), p, rate),
        SW_CELERY: lambda: _shelfwork_paced(
            SW_CELERY, shelfwork_celery(wd, "paced", p, db), p, rate
        ),
    }
    rows: dict[str, dict[str, Any]] = {name: {"system": name} for name in args.only}
    for name in args.only:
        rows[name]["burst"] = _median(f"burst: {name}", bursts[name], args.repeat, "jobs_per_s")
    for name in args.only:
        rows[name]["paced"] = _median(f"paced: {name}", paced[name], args.repeat, "p50_ms")
    return rows


def _median(label: str, measure: Callable[[], dict[str, Any]], repeat: int, key: str) -> dict:
    """Run ``measure`` ``repeat`` times; the run with the median ``key`` (lower middle if even)."""
    runs = []
    for attempt in range(repeat):
        print(f"{label} ({attempt + 1}/{repeat}) ...", file=sys.stderr, flush=True)
        runs.append(measure())
    runs.sort(key=lambda r: r[key])
    chosen = dict(runs[(len(runs) - 1) // 2])
    chosen["runs"] = [r[key] for r in runs]
    return chosen


# --- report --------------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def table(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> tuple[str, list[str]]:
    """A Markdown table of all rows, and the targets with PASS/FAIL."""
    huey = rows.get(HUEY, {}).get("burst")
    celery = rows.get(CELERY, {}).get("burst")
    head = (
        "| system | burst s | jobs/s | ms/job | enqueue s | DB done s "
        "| p50 ms | p95 ms | max ms | jobs/s vs Huey | ms/job vs Celery |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, row in rows.items():
        b, p = row["burst"], row["paced"]
        per_job = 1000.0 * b["seconds"] / b["jobs"]
        vs_huey = b["jobs_per_s"] / huey["jobs_per_s"] if huey else None
        vs_celery = per_job / (1000.0 * celery["seconds"] / celery["jobs"]) if celery else None
        db = f"{b['db_seconds']:.3f}" if "db_seconds" in b else "-"
        lines.append(
            f"| {name} | {b['seconds']:.3f} | {b['jobs_per_s']:.0f} | {per_job:.3f} "
            f"| {b['enqueue_seconds']:.3f} | {db} | {p['p50_ms']:.2f} | {p['p95_ms']:.2f} "
            f"| {p['max_ms']:.2f} | {_ratio(vs_huey)} | {_ratio(vs_celery)} |"
        )
    targets: list[str] = []
    local = rows.get(LOCAL)
    if local and huey:
        b = local["burst"]
        ratio = b["jobs_per_s"] / huey["jobs_per_s"]
        db_ratio = (b["jobs"] / b["db_seconds"]) / huey["jobs_per_s"]
        targets.append(
            f"shelfwork-local throughput >= {THROUGHPUT_VS_HUEY:g}x Huey: {ratio:.2f}x "
            f"({_verdict(ratio >= THROUGHPUT_VS_HUEY)}); counted to DB done: {db_ratio:.2f}x "
            f"({_verdict(db_ratio >= THROUGHPUT_VS_HUEY)})"
        )
    if local:
        p50 = local["paced"]["p50_ms"]
        targets.append(
            f"shelfwork-local p50 enqueue->start <= {P50_LIMIT_MS:g} ms: {p50:.2f} ms "
            f"({_verdict(p50 <= P50_LIMIT_MS)})"
        )
    sw_celery = rows.get(SW_CELERY)
    if sw_celery and celery:
        ratio = sw_celery["burst"]["seconds"] / sw_celery["burst"]["jobs"]
        ratio /= celery["seconds"] / celery["jobs"]
        targets.append(
            f"shelfwork-celery per-job overhead <= {OVERHEAD_VS_CELERY:g}x Celery: {ratio:.2f}x "
            f"({_verdict(ratio <= OVERHEAD_VS_CELERY)}; metadata DB: {args.celery_db})"
        )
    return "\n".join(lines), targets


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine(args: argparse.Namespace) -> list[str]:
    """Facts that make a result comparable with a later one."""
    import sqlite3

    def run(*cmd: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_DIR)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"({exc})"
        return out.stdout.strip()

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    commit = run("git", "rev-parse", "--short", "HEAD")
    if dirty:
        commit += " + uncommitted changes"
    names = ("shelfwork", "huey", "celery", "kombu", "redis", "SQLAlchemy", "psycopg", "pydantic")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return [
        f"- date: {run('date', '-u')}",
        f"- command: `{' '.join([Path(sys.executable).name, 'bench/engine.py', *args.argv])}`",
        f"- machine: {run('nproc')} CPUs ({cpu}), {platform.system()} {platform.release()}; "
        f"load average before the run {_load() or 0.0:.2f}",
        f"- runs per measurement: {args.repeat}"
        + (" (median shown; all runs in the notes below the table)" if args.repeat > 1 else ""),
        f"- python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"Redis server {_redis_version()}",
        f"- packages: {', '.join(versions)}",
        f"- git commit: {commit}",
        f"- burst {args.burst} jobs, paced {args.paced} jobs at {args.rate:g}/s, "
        f"{peers.WORKERS} worker threads everywhere; "
        f"shelfwork-celery metadata DB: {args.celery_db}",
    ]


def _load() -> float | None:
    """The 1-minute load average: other work on the machine skews every row."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _redis_version() -> str:
    try:
        import redis

        client = redis.Redis(host=peers.REDIS_HOST, port=peers.REDIS_PORT, socket_timeout=5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception as exc:
        return f"unknown ({exc.__class__.__name__})"


# --- profile -------------------------------------------------------------------------------------

_STATEMENT = re.compile(
    r"^\s*(?:(BEGIN IMMEDIATE|BEGIN|COMMIT|ROLLBACK|PRAGMA)"
    r"|(SELECT|DELETE)\b.*?\bFROM\s+\"?(\w+)"
    r"|(INSERT)\s+INTO\s+\"?(\w+)"
    r"|(UPDATE)\s+\"?(\w+))",
    re.S | re.I,
)


def statement_kind(sql: str) -> str:
    """'BEGIN IMMEDIATE', 'UPDATE jobs', 'SELECT job_steps', ... for a statement's text."""
    m = _STATEMENT.match(sql)
    if m is None:
        return sql.split(None, 1)[0].upper() if sql.strip() else "?"
    parts = [g for g in m.groups() if g]
    return " ".join([parts[0].upper(), *parts[1:]])


class StatementCounter:
    """Counts the SQL statements a Store sends, by kind, and the time the driver spends executing
    them (SQLite's own work; the rest of a job's time is Python). Reads the Store's engines."""

    def __init__(self, engine: Engine) -> None:
        import threading

        store = engine.store
        self._engines = list({id(e): e for e in (store._writer, store._reader)}.values())
        self._mutex = threading.Lock()
        self._local = threading.local()
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # driver time by kind
        for e in self._engines:
            event.listen(e, "before_cursor_execute", self._before)
            event.listen(e, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        self._local.kind = statement_kind(sql)
        self._local.started = time.perf_counter()

    def _after(self, *args: Any) -> None:
        started = getattr(self._local, "started", None)
        if started is None:  # the statement began before the counter was attached
            return
        self._local.started = None
        spent = time.perf_counter() - started
        with self._mutex:
            self.counts[self._local.kind] += 1
            self.seconds[self._local.kind] += spent

    def take(self) -> tuple[Counter[str], Counter[str]]:
        """Statement counts and driver seconds by kind since the last take."""
        with self._mutex:
            counts, self.counts = self.counts, Counter()
            seconds, self.seconds = self.seconds, Counter()
        return counts, seconds

    def close(self) -> None:
        for e in self._engines:
            event.remove(e, "before_cursor_execute", self._before)
            event.remove(e, "after_cursor_execute", self._after)


def _per_job(counts: Counter[str], n: int) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{kind} {count / n:.2f}" for kind, count in items) or "none"


def _transactions(counts: Counter[str], n: int) -> str:
    writes, reads = counts["BEGIN IMMEDIATE"], counts["BEGIN"]
    statements = sum(c for k, c in counts.items() if not k.startswith(("BEGIN", "COMMIT")))
    return (
        f"{writes / n:.2f} write + {reads / n:.2f} read transactions, "
        f"{statements / n:.2f} statements per job"
    )


def profile_local(n: int, workdir: Path | None) -> list[str]:
    """Where shelfwork-local spends its time per job: statements, transactions, CPU by package."""
    out: list[str] = []
    with peers._run_dir(workdir, "shelfwork-profile-") as run:
        _, registry, close = _write_app(run)
        engine = Engine(_settings(run, n), registry)
        counter = StatementCounter(engine)
        ttl = engine.settings.lease_ttl
        phases = ("submit", "claim", "run_job")
        spent = dict.fromkeys(phases, 0.0)
        driver: dict[str, Counter[str]] = {p: Counter() for p in phases}
        counts: dict[str, Counter[str]] = {p: Counter() for p in phases}

        def run_claimed(job_id: int) -> str:
            """Run a job this node claimed, the way the local executor does."""
            from shelfwork import runner

            if "leased" in inspect.signature(runner.run_job).parameters:
                return runner.run_job(engine, job_id, leased=True)
            return runner.run_job(engine, job_id)

        def one(i: int, timed: bool) -> None:
            """One job the way the engine handles it, without threads: submit, claim, run."""
            marks = [time.perf_counter()]
            taken = []
            engine.submit(PIPELINE, {"n": i})
            marks.append(time.perf_counter())
            taken.append(counter.take())
            (claimed,) = engine.admission.claim(engine.node_id, ttl, limit=1)
            marks.append(time.perf_counter())
            taken.append(counter.take())
            outcome = run_claimed(claimed.job_id)
            marks.append(time.perf_counter())
            taken.append(counter.take())
            if outcome != "ran":
                raise RuntimeError(f"profile job {claimed.job_id}: {outcome}")
            if timed:
                for k, phase in enumerate(phases):
                    spent[phase] += marks[k + 1] - marks[k]
                    counts[phase] += taken[k][0]
                    driver[phase] += taken[k][1]

        try:
            for i in range(-peers.WARMUP_JOBS, 0):
                one(i, timed=False)
            for i in range(n):
                one(i, timed=True)
            total = sum(spent.values())
            all_counts = sum(counts.values(), Counter[str]())
            out.append(
                f"One thread, one job at a time (submit, claim, run; {n} jobs, no threads): "
                f"{1000 * total / n:.3f} ms/job, {_transactions(all_counts, n)}; "
                f"SQLite executing statements (cursor.execute) "
                f"{1000 * sum(sum(d.values()) for d in driver.values()) / n:.3f} ms/job, "
                "the rest is Python (SQLAlchemy, shelfwork) and commits."
            )
            for phase in phases:
                out.append(
                    f"- {phase}: {1000 * spent[phase] / n:.3f} ms/job "
                    f"({100 * spent[phase] / total:.0f}%; cursor.execute "
                    f"{1000 * sum(driver[phase].values()) / n:.3f} ms); "
                    f"{_per_job(counts[phase], n)}"
                )

            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(n, 2 * n):
                one(i, timed=False)
            profiler.disable()
            counter.take()
            out.append("")
            out.append(
                f"cProfile of the same loop ({n} more jobs), own time by package "
                "(cProfile inflates Python-heavy code, so read the shares as a ranking):"
            )
            out.extend(_by_package(pstats.Stats(profiler)))
        finally:
            counter.close()
            engine.stop()
            close()

    # The real thing: a started engine (scheduler + 2 threads) taking a burst from this thread.
    with shelfwork_local(workdir, "profile", n) as h:
        counter = StatementCounter(h.engine)
        dispatches = Counter[str]()
        real_dispatch = h.engine.dispatch

        def counted_dispatch() -> int:
            claimed = real_dispatch()
            dispatches["calls"] += 1
            dispatches["empty"] += claimed == 0
            return claimed

        h.engine.dispatch = counted_dispatch  # type: ignore[method-assign]
        try:
            counter.take()
            result = peers.measure_burst(LOCAL, h.enqueue, h.records, h.check, n, BURST_TIMEOUT)
            t0 = max(h.records.finished[i] for i in range(n)) - result["seconds"]
            _db_seconds(h, t0)
            counts, seconds = counter.take()
            busiest = ", ".join(f"{kind} {1000 * t / n:.3f}" for kind, t in seconds.most_common(4))
        finally:
            h.engine.dispatch = real_dispatch  # type: ignore[method-assign]
            counter.close()
        out.append("")
        out.append(
            f"Started engine (scheduler + 2 job threads), burst of {n} from this thread "
            f"({result['jobs_per_s']:.0f} jobs/s with counting on): {_transactions(counts, n)}; "
            f"cursor.execute {1000 * sum(seconds.values()) / n:.3f} ms/job "
            f"(most: {busiest}); dispatch passes "
            f"{dispatches['calls'] / n:.2f}/job "
            f"({dispatches['empty'] / n:.2f}/job claimed nothing)."
        )
        out.append(f"- statements per job: {_per_job(counts, n)}")
    return out


def _by_package(stats: pstats.Stats) -> list[str]:
    """Own (not cumulative) time grouped by where the code lives, then the top functions."""
    by_package: Counter[str] = Counter()
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in raw.items():
        by_package[_package(filename, name)] += tottime
        rows.append((tottime, calls, f"{_short(filename)}:{line}({name})"))
    total = sum(by_package.values()) or 1.0
    lines = [
        f"- {pkg}: {100 * t / total:.0f}%"
        for pkg, t in by_package.most_common()
        if 100 * t / total >= 1
    ]
    lines.append("- top functions by own time:")
    for tottime, calls, where in sorted(rows, reverse=True)[:15]:
        lines.append(f"  - {100 * tottime / total:4.1f}%  {calls:>7} calls  {where}")
    return lines


def _package(filename: str, name: str) -> str:
    if filename == "~":  # a C function: name is like "<method 'execute' of 'sqlite3.Cursor' ...>"
        if "sqlite3" in name:
            return "sqlite3 (C: SQLite itself)"
        return "C built-ins"
    for pkg in ("shelfwork", "sqlalchemy", "pydantic", "celery", "kombu", "alembic"):
        if f"/{pkg}/" in filename:
            return pkg
    if "/sqlite3/" in filename:
        return "sqlite3 (Python)"
    if "/bench/" in filename or "benchjobs" in filename:
        return "bench"
    return "stdlib/other"


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000, help="jobs in the burst (2000)")
    parser.add_argument("--paced", type=int, default=100, help="jobs in the paced run (100)")
    parser.add_argument("--rate", type=float, default=10.0, help="paced jobs per second (10)")
    parser.add_argument(
        "--only",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems to run, of: {', '.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--celery-db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="metadata DB of shelfwork-celery (postgres: a throwaway database on 127.0.0.1)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per measurement, keep the median (1)"
    )
    parser.add_argument("--profile", action="store_true", help="add the shelfwork-local profile")
    parser.add_argument(
        "--profile-jobs", type=int, default=500, help="jobs per profile phase (500)"
    )
    parser.add_argument("--workdir", type=Path, help="keep run directories and logs here")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SYSTEMS))
    if unknown:
        parser.error(f"--only: unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    args.only = [name for name in SYSTEMS if name in only]
    if min(args.burst, args.paced, args.profile_jobs, args.repeat) < 1 or args.rate <= 0:
        parser.error("--burst, --paced, --profile-jobs and --repeat must be >= 1, --rate > 0")
    busy = _load()
    if busy is not None and busy > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {busy:.2f} on {os.cpu_count()} CPUs: other work on this "
            "machine will skew the results (consider --repeat 3)",
            file=sys.stderr,
        )

    facts = machine(args)
    rows = run_all(args) if args.only else {}
    profile = profile_local(args.profile_jobs, args.workdir) if args.profile else []
    report = ["\n".join(facts), ""]
    if rows:
        grid, targets = table(rows, args)
        report += [grid, "", "Targets:", *(f"- {t}" for t in targets)]
        if args.repeat > 1:
            report += ["", "All runs (sorted):"]
            for name, row in rows.items():
                burst = ", ".join(f"{v:.0f}" for v in row["burst"]["runs"])
                p50 = ", ".join(f"{v:.2f}" for v in row["paced"]["runs"])
                report.append(f"- {name}: burst jobs/s {burst}; paced p50 ms {p50}")
    if profile:
        report += ["", "Profile of shelfwork-local:", "", *profile]
    text = "\n".join(report).rstrip() + "\n"
    print(text)
    if not args.no_save:
        when = subprocess.run(
            ["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not RESULTS.exists():
            RESULTS.write_text(
                "# Engine benchmark results\n\n"
                "Appended by `bench/engine.py` (`make bench`), newest last. "
                "See the docstring of bench/engine.py for what each row and column means.\n"
            )
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(f"\n## {when}\n\n{text}")
        print(f"appended to {RESULTS.relative_to(REPO_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
