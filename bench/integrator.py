"""Koha -> DSpace integrator benchmark: whole records through the `koha-dspace` pipeline.

Everything runs in this process, as in `shelfwork demo`: the emulated Koha and DSpace (uvicorn
in threads, no added latency), an Engine on a fresh SQLite file with the local executor, and
generated 2-page text PDFs in the inbox. Each measurement starts from fresh peers and a fresh
database; one record is integrated first as a warm-up and not counted.

- Throughput: ``--records`` records catalogued, all submitted at once, waited for. Records/min
  counts from just before the first submit to the last job's ``finished_at`` in the database.
  Per record, "run" is the job's ``started_at`` -> ``finished_at`` (claimed to done) and
  "in system" is ``created_at`` -> ``finished_at`` (includes waiting for a free slot). Every job
  must have succeeded without warnings, and Koha must hold the 856$u of its DSpace item, 956$y
  ``imported`` and a cover; otherwise the run is reported as failed and nothing is saved.
  CPU: this process's CPU time per record, and the emulators' threads' share of it.
  ``--max-running 4 8`` measures each; ``--repeat N`` runs the settings in turn N times and
  keeps the median. ``--what-if-shared-tls`` adds runs in which every httpx.Client gets one
  SSL context made once (a patch inside this benchmark only), to size the cost of each client
  building its own.
- Phases: ``--single`` records one at a time on an idle engine, split with the step timestamps
  the database holds (median of the runs).
- Where the time goes: ``--instrumented`` records one at a time with timers around the step
  functions and what they call (HTTP requests by peer and path, PDF work, MARC parsing, the
  engine's bookkeeping writes), then ``--profile-records`` under cProfile in every thread,
  timed by thread CPU time.

Prints the results as Markdown and appends them to bench/RESULTS.md (``--no-save`` to skip;
``--markdown FILE`` also writes them to FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shelfwork.config import Settings
from shelfwork.connectors.dspace import DSpace
from shelfwork.connectors.koha import KohaRest, KohaStaff
from shelfwork.engine import Engine
from shelfwork.jobs import JobView
from shelfwork.pipeline import Parallel, Step
from shelfwork.pipelines.koha_dspace import pipeline as integrator
from shelfwork.pipelines.koha_dspace.config import SYSTEM
from shelfwork.pipelines.koha_dspace.marc import integration_state, parse_marcxml
from shelfwork.sandbox.pdfs import text_pdf
from shelfwork.sandbox.peers import Peers, start_peers
from shelfwork.sandbox.records import Book, marcxml
from shelfwork.store.models import SUCCEEDED

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"

PAGES = 2
WARMUP_BIBLIO = 900_000
RUN_TIMEOUT = 240.0  # seconds for one throughput run to finish
ONE_TIMEOUT = 60.0
SINGLE_POLL = 0.05  # the benchmark's own DB reads while it waits for a record

WHAT_IF = "what-if: one shared SSL context"
SERIAL_STEPS = ("fetch_record", "take_file", "check_file")
BRANCH_STEPS = {"cover": "upload_cover", "dspace": "deposit"}
ALL_STEPS = (*SERIAL_STEPS, "upload_cover", "deposit", "finalize")


class BenchFailed(Exception):
    """The pipeline did not do its work: the timings would mean nothing."""


# --- sandbox -----------------------------------------------------------------------------------


@dataclass
class Sandbox:
    peers: Peers
    engine: Engine
    folder: Path


def book(number: int) -> Book:
    return Book(
        number,
        f"Benchmark volume {number} : a study in throughput",
        author="Bench, Ada",
        year="2020",
        publisher="Loopback Press",
        place="Localhost",
        subjects=["Benchmarks", "Digital libraries"],
        pages=f"{PAGES} p.",
        file=f"bench/{number:06d}.pdf",
    )


def catalogue(peers: Peers, folder: Path, numbers: list[int]) -> None:
    """Records in Koha whose 956$u names a PDF that is in the inbox."""
    for number in numbers:
        entry = book(number)
        assert entry.file is not None
        text_pdf(folder / "inbox" / entry.file, PAGES, title=entry.title)
        peers.koha.add_record(number, marcxml(entry))


@contextlib.contextmanager
def sandbox(
    workdir: Path | None,
    numbers: list[int],
    max_running: int,
    *,
    before_start: Callable[[Peers, Engine], None] | None = None,
) -> Iterator[Sandbox]:
    """Fresh peers, folders and SQLite file; `before_start(peers, engine)` runs before
    `engine.start()` (to attach instruments before any thread exists)."""
    folder = Path(tempfile.mkdtemp(prefix="shelfwork-integrator-", dir=workdir))
    peers = start_peers()
    engine: Engine | None = None
    try:
        catalogue(peers, folder, [WARMUP_BIBLIO, *numbers])
        settings = Settings(
            database_url=f"sqlite:///{folder / 'shelfwork.db'}",
            pipeline_modules=["shelfwork.pipelines.koha_dspace"],
            systems={SYSTEM: peers.integrator_config(folder)},
            tracker_profile="dev",
            max_running=max_running,
            max_queue=len(numbers) + 16,
            lease_ttl=30.0,
            poll_interval=0.2,
        )
        engine = Engine(settings, kind="bench")
        if before_start is not None:
            before_start(peers, engine)
        engine.start()
        warm = engine.submit(SYSTEM, {"biblionumber": WARMUP_BIBLIO}).job_id
        view = engine.wait(warm, ONE_TIMEOUT)
        if view.state != SUCCEEDED:
            raise BenchFailed(f"warm-up record {WARMUP_BIBLIO}: job {view.state}: {view.error}")
        yield Sandbox(peers, engine, folder)
    finally:
        if engine is not None:
            engine.stop()
        peers.stop()
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


def check_integrated(box: Sandbox, jobs: dict[int, int]) -> list[str]:
    """What is missing for each record: the job's outcome, then Koha's and DSpace's state."""
    problems: list[str] = []
    items = dict(box.peers.dspace.items)
    owners: dict[str, int] = {}
    for number, job_id in jobs.items():
        view = box.engine.jobs.get(job_id, steps=False)
        if view.state != SUCCEEDED:
            problems.append(f"biblio {number}: job {job_id} {view.state}: {view.error}")
            continue
        if view.warnings:
            problems.append(f"biblio {number}: job {job_id} warnings {view.warnings}")
        record = parse_marcxml(box.peers.koha.record(number), biblionumber=number)
        state = integration_state(record)
        item = items.get(state.uuid or "")
        if state.uuid is not None and owners.setdefault(state.uuid, number) != number:
            problems.append(f"biblio {number}: item {state.uuid} is also {owners[state.uuid]}'s")
        uris = item.values("dc.identifier.uri") if item is not None else []
        if item is None or not item.in_archive:
            problems.append(f"biblio {number}: 956$3 {state.uuid!r} is no archived DSpace item")
        elif list(state.handle_urls) != uris[:1] or not uris:
            problems.append(
                f"biblio {number}: 856$u {list(state.handle_urls)} is not the item's URI {uris}"
            )
        if state.status != integrator.IMPORTED:
            problems.append(f"biblio {number}: 956$y is {state.status!r}")
        if not state.cover_url or not box.peers.koha.covers_of(number):
            problems.append(f"biblio {number}: no cover ({state.cover_url!r})")
    return problems


# --- numbers -----------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between closest ranks (share in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        raise BenchFailed(f"a timestamp is missing ({start} -> {end})")
    return (end - start).total_seconds()


PHASES = (
    "created -> first step starts",
    "  of which created -> claimed",
    "serial (fetch_record start -> check_file end)",
    "  fetch_record",
    "  take_file",
    "  check_file",
    "  between serial steps",
    "check_file end -> parallel block starts",
    "parallel (first branch start -> last branch end)",
    "  cover branch (upload_cover)",
    "  dspace branch (deposit)",
    "parallel end -> finalize starts",
    "finalize",
    "finalize end -> job finished",
    "total (created -> finished)",
)


def phases_of(view: JobView) -> dict[str, float]:
    """One job's wall time split by its step rows (the branch rows `cover` and `dspace` carry
    only the branch's end)."""
    steps = {s.name: s for s in view.steps}
    missing = [n for n in (*ALL_STEPS, *BRANCH_STEPS) if n not in steps]
    if missing:
        raise BenchFailed(f"job {view.id}: no step rows for {missing}")
    first = steps["fetch_record"].started_at
    serial_end = steps["check_file"].finished_at
    branch_start = {b: steps[s].started_at for b, s in BRANCH_STEPS.items()}
    branch_end = {b: steps[b].finished_at for b in BRANCH_STEPS}
    parallel_start = min(t for t in branch_start.values() if t is not None)
    parallel_end = max(t for t in branch_end.values() if t is not None)
    finalize = steps["finalize"]
    serial = seconds(first, serial_end)
    serial_steps = {
        name: seconds(steps[name].started_at, steps[name].finished_at) for name in SERIAL_STEPS
    }
    return {
        PHASES[0]: seconds(view.created_at, first),
        PHASES[1]: seconds(view.created_at, view.started_at),
        PHASES[2]: serial,
        PHASES[3]: serial_steps["fetch_record"],
        PHASES[4]: serial_steps["take_file"],
        PHASES[5]: serial_steps["check_file"],
        PHASES[6]: serial - sum(serial_steps.values()),
        PHASES[7]: seconds(serial_end, parallel_start),
        PHASES[8]: seconds(parallel_start, parallel_end),
        PHASES[9]: seconds(branch_start["cover"], branch_end["cover"]),
        PHASES[10]: seconds(branch_start["dspace"], branch_end["dspace"]),
        PHASES[11]: seconds(parallel_end, finalize.started_at),
        PHASES[12]: seconds(finalize.started_at, finalize.finished_at),
        PHASES[13]: seconds(finalize.finished_at, view.finished_at),
        PHASES[14]: seconds(view.created_at, view.finished_at),
    }


def step_durations(view: JobView) -> dict[str, float]:
    return {s.name: seconds(s.started_at, s.finished_at) for s in view.steps if s.name in ALL_STEPS}


def retried(view: JobView) -> list[str]:
    return [f"{s.name} x{s.attempts}" for s in view.steps if s.attempts > 1]


# --- CPU by thread -----------------------------------------------------------------------------


def thread_group(name: str) -> str:
    """Which part of the process a thread belongs to, by the names its creators give."""
    if name.startswith("sandbox-") or name.startswith("AnyIO worker"):
        return "emulators (Koha, DSpace)"
    if name.startswith("shelfwork-job"):
        return "job threads (serial steps, finalize)"
    if re.match(r"job\d+_", name):
        return "branch threads (upload_cover, deposit)"
    return "other (main, scheduler, heartbeat)"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live thread, by ident."""
    found: dict[int, tuple[str, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        with contextlib.suppress(OSError, ProcessLookupError):
            clock = time.pthread_getcpuclockid(thread.ident)
            found[thread.ident] = (thread.name, time.clock_gettime(clock))
    return found


@dataclass
class CpuWindow:
    """Process CPU time over a window, split by thread group; threads that ended inside the
    window (branch pools end with their block) count as what is left after the live ones."""

    start_process: float = field(default_factory=time.process_time)
    start_threads: dict[int, tuple[str, float]] = field(default_factory=thread_cpu)

    def close(self) -> tuple[float, dict[str, float]]:
        end_threads = thread_cpu()
        total = time.process_time() - self.start_process
        groups: Counter[str] = Counter()
        for ident, (name, cpu) in end_threads.items():
            before = self.start_threads.get(ident)
            groups[thread_group(name)] += cpu - (before[1] if before else 0.0)
        # threads alive at the start but gone now: their CPU up to the start was not in the window
        gone = total - sum(groups.values())
        groups["branch threads (upload_cover, deposit)"] += max(gone, 0.0)
        return total, dict(groups)


# --- 1. throughput -----------------------------------------------------------------------------


@contextlib.contextmanager
def shared_tls_context() -> Iterator[None]:
    """What-if, for the benchmark only: every httpx.Client made meanwhile gets one SSL context
    built once, instead of building its own (loading the CA bundle, about 25-35 ms of CPU)."""
    shared = httpx.create_ssl_context()
    original = httpx.Client.__init__

    def init(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("verify", shared)
        original(self, *args, **kwargs)

    httpx.Client.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.Client.__init__ = original  # type: ignore[method-assign]


@dataclass
class Throughput:
    max_running: int
    variant: str
    records: int
    elapsed: float
    run: list[float]
    in_system: list[float]
    cpu: float
    cpu_groups: dict[str, float]
    steps: dict[str, list[float]]
    retries: list[str]

    @property
    def per_minute(self) -> float:
        return 60.0 * self.records / self.elapsed


def measure_throughput(
    records: int, max_running: int, workdir: Path | None, *, shared_tls: bool = False
) -> Throughput:
    numbers = list(range(1, records + 1))
    tls = shared_tls_context() if shared_tls else contextlib.nullcontext()
    with tls, sandbox(workdir, numbers, max_running) as box:
        engine = box.engine
        cpu = CpuWindow()
        begun = datetime.now(UTC)
        jobs = {n: engine.submit(SYSTEM, {"biblionumber": n}).job_id for n in numbers}
        deadline = time.monotonic() + RUN_TIMEOUT
        views: dict[int, JobView] = {}
        for number, job_id in jobs.items():
            views[number] = engine.wait(job_id, max(deadline - time.monotonic(), 0.1), poll=0.1)
        cpu_total, cpu_groups = cpu.close()
        problems = check_integrated(box, jobs)
        if problems:
            shown = "\n  ".join(problems[:20])
            raise BenchFailed(
                f"max_running {max_running}: {len(problems)} problem(s) with {records} records:"
                f"\n  {shown}"
            )
        last = max(v.finished_at for v in views.values() if v.finished_at is not None)
        steps: dict[str, list[float]] = defaultdict(list)
        for view in views.values():
            for name, value in step_durations(view).items():
                steps[name].append(value)
        return Throughput(
            max_running=max_running,
            variant=WHAT_IF if shared_tls else "as is",
            records=records,
            elapsed=seconds(begun, last),
            run=[seconds(v.started_at, v.finished_at) for v in views.values()],
            in_system=[seconds(v.created_at, v.finished_at) for v in views.values()],
            cpu=cpu_total,
            cpu_groups=cpu_groups,
            steps=dict(steps),
            retries=[f"{n}: {r}" for n, v in views.items() if (r := retried(v))],
        )


# --- 2. one record at a time --------------------------------------------------------------------


def measure_single(runs: int, workdir: Path | None) -> list[JobView]:
    numbers = list(range(1, runs + 1))
    views: list[JobView] = []
    with sandbox(workdir, numbers, 4) as box:
        for number in numbers:
            job_id = box.engine.submit(SYSTEM, {"biblionumber": number}).job_id
            views.append(box.engine.wait(job_id, ONE_TIMEOUT, poll=SINGLE_POLL))
        problems = check_integrated(box, {n: v.id for n, v in zip(numbers, views, strict=True)})
        if problems:
            raise BenchFailed("single-record runs: " + "; ".join(problems))
    return views


# --- 3. where the time goes ---------------------------------------------------------------------


UUID_IN_PATH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: functions the steps look up in the pipeline module, timed there
PIPELINE_CALLS = (
    "render_cover",
    "check_pdf",
    "fingerprint_of",
    "claim_into",
    "open_in_inbox",
    "parse_marcxml",
    "to_marcxml",
    "crosswalk",
    "load_rules",
    "integrator_config",
)
#: the engine's bookkeeping (SQLite writes and reads) a step run makes
BOOKKEEPING_CALLS = (
    "step_started",
    "step_finished",
    "save_checkpoint",
    "progress",
    "add_warning",
    "finish",
    "record",
    "get",
    "cancel_requested",
)


STEP_ITSELF = "the step function, all of it"
OUTSIDE_RUNNER = "(runner, outside step functions)"
OUTSIDE_BENCH = "(benchmark thread: engine.wait polling)"


class Timers:
    """Wall and calling-thread CPU time of wrapped callables, by the step they ran in."""

    def __init__(self, peers: Peers) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.wall: Counter[tuple[str, str]] = Counter()
        self.cpu: Counter[tuple[str, str]] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.undo: list[Callable[[], None]] = []
        self.peer_by_port = {
            httpx.URL(peers.koha_url).port: "Koha",
            httpx.URL(peers.dspace_url).port: "DSpace",
        }

    def where(self) -> str:
        """The step running in this thread, or who else is calling."""
        step = getattr(self.local, "step", None)
        if step is not None:
            return str(step)
        if threading.current_thread() is threading.main_thread():
            return OUTSIDE_BENCH
        return OUTSIDE_RUNNER

    def add(self, key: tuple[str, str], wall: float, cpu: float) -> None:
        with self.lock:
            self.wall[key] += wall
            self.cpu[key] += cpu
            self.calls[key] += 1

    def timed(self, label: Callable[..., str] | str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            where = self.where()
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add((where, name), time.perf_counter() - wall, time.thread_time() - cpu)

        return wrapper

    def patch(self, owner: Any, attribute: str, label: Callable[..., str] | str) -> None:
        original = getattr(owner, attribute)
        setattr(owner, attribute, self.timed(label, original))
        self.undo.append(lambda: setattr(owner, attribute, original))

    def step(self, node: Step) -> None:
        """Time a step function and make it the step its callees are counted under."""
        original = node.fn

        def run_step(ctx: Any) -> Any:
            self.local.step = node.name
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(ctx)
            finally:
                spent = time.perf_counter() - wall, time.thread_time() - cpu
                self.add((node.name, STEP_ITSELF), *spent)
                self.local.step = None

        object.__setattr__(node, "fn", run_step)
        self.undo.append(lambda: object.__setattr__(node, "fn", original))

    def request_label(self, client: httpx.Client, request: httpx.Request, **_: Any) -> str:
        path = UUID_IN_PATH.sub("{uuid}", request.url.path)
        path = re.sub(r"/\d+(?=/|$)", "/{n}", path)
        peer = self.peer_by_port.get(request.url.port, str(request.url.host))
        return f"HTTP {peer} {request.method} {path}"

    def attach(self, engine: Engine) -> None:
        for node in integrator.integrate.steps:
            if isinstance(node, Step):
                self.step(node)
            elif isinstance(node, Parallel):
                for branch in node.branches:
                    for inner in branch.steps:
                        self.step(inner)
        self.patch(httpx.Client, "send", self.request_label)
        self.patch(httpx.Client, "__init__", "new httpx.Client (TLS context, pool)")
        for name in PIPELINE_CALLS:
            self.patch(integrator, name, f"{name}()")
        self.patch(KohaStaff, "login", "KohaStaff.login() (staff session)")
        self.patch(KohaStaff, "upload_cover", "KohaStaff.upload_cover()")
        self.patch(DSpace, "login", "DSpace.login() (CSRF + JWT)")
        self.patch(DSpace, "find_by_metadata", "DSpace.find_by_metadata()")
        self.patch(DSpace, "create_by_submission", "DSpace.create_by_submission()")
        self.patch(KohaRest, "get_marcxml", "KohaRest.get_marcxml()")
        self.patch(KohaRest, "put_marcxml", "KohaRest.put_marcxml()")
        for name in BOOKKEEPING_CALLS:
            self.patch(engine.jobs, name, f"engine DB: jobs.{name}()")

    def detach(self) -> None:
        while self.undo:
            self.undo.pop()()


@dataclass
class Breakdown:
    runs: int
    wall: dict[tuple[str, str], float]
    cpu: dict[tuple[str, str], float]
    calls: dict[tuple[str, str], int]
    process_cpu: float
    cpu_groups: dict[str, float]
    steps: dict[str, float]  # median DB step duration


def measure_breakdown(runs: int, workdir: Path | None) -> Breakdown:
    numbers = list(range(1, runs + 1))
    holder: dict[str, Timers] = {}

    def instrument(peers: Peers, engine: Engine) -> None:
        holder["timers"] = Timers(peers)
        holder["timers"].attach(engine)

    views: list[JobView] = []
    try:
        with sandbox(workdir, numbers, 4, before_start=instrument) as box:
            timers = holder["timers"]
            with timers.lock:  # the warm-up record is not counted
                timers.wall.clear()
                timers.cpu.clear()
                timers.calls.clear()
            cpu = CpuWindow()
            for number in numbers:
                job_id = box.engine.submit(SYSTEM, {"biblionumber": number}).job_id
                views.append(box.engine.wait(job_id, ONE_TIMEOUT, poll=SINGLE_POLL))
            process_cpu, groups = cpu.close()
            problems = check_integrated(box, {n: v.id for n, v in zip(numbers, views, strict=True)})
            if problems:
                raise BenchFailed("instrumented runs: " + "; ".join(problems))
    finally:
        if "timers" in holder:
            holder["timers"].detach()
    durations: dict[str, list[float]] = defaultdict(list)
    for view in views:
        for name, value in step_durations(view).items():
            durations[name].append(value)
    return Breakdown(
        runs=runs,
        wall=dict(timers.wall),
        cpu=dict(timers.cpu),
        calls=dict(timers.calls),
        process_cpu=process_cpu,
        cpu_groups=groups,
        steps={k: statistics.median(v) for k, v in durations.items()},
    )


class AllThreadProfiles:
    """cProfile in every thread started while installed, timed by that thread's CPU time (a
    wall-clock profile would be dominated by threads waiting in select and locks)."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self.lock = threading.Lock()

    def _start_in_thread(self, frame: Any, event: str, arg: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        with self.lock:
            self.profiles.append((threading.current_thread().name, profile))
        profile.enable()  # replaces this hook for the calling thread

    def install(self) -> None:
        threading.setprofile(self._start_in_thread)

    def uninstall(self) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]

    def clear(self) -> None:
        with self.lock:
            for _, profile in self.profiles:
                profile.clear()

    def snapshot(self) -> tuple[dict[tuple[str, int, str], tuple[int, float]], Counter[str]]:
        """Own time and calls by function, summed over threads, and CPU by thread group.

        Taken while the threads still run, from what each profiler has recorded so far
        (`snapshot_stats`, not `create_stats`: the latter closes the calls still open in other
        threads, such as a server's poll, with the calling thread's clock)."""
        merged: dict[tuple[str, int, str], tuple[int, float]] = {}
        by_group: Counter[str] = Counter()
        with self.lock:
            profiles = list(self.profiles)
        for name, profile in profiles:
            profile.snapshot_stats()
            rows: dict[tuple[str, int, str], tuple[Any, ...]] = profile.stats  # type: ignore[attr-defined]
            for key, (_, calls, own, *_rest) in rows.items():
                before = merged.get(key, (0, 0.0))
                merged[key] = (before[0] + calls, before[1] + own)
                by_group[thread_group(name)] += own
        return merged, by_group


@dataclass
class Profiled:
    records: int
    packages: list[tuple[str, float]]
    functions: list[tuple[str, float, int]]
    groups: dict[str, float]
    total: float


def measure_profile(records: int, workdir: Path | None) -> Profiled:
    numbers = list(range(1, records + 1))
    profiles = AllThreadProfiles()
    profiles.install()  # before the peers' and the engine's threads start
    try:
        with sandbox(workdir, numbers, 4) as box:
            profiles.clear()  # drop start-up and the warm-up record
            for number in numbers:
                job_id = box.engine.submit(SYSTEM, {"biblionumber": number}).job_id
                view = box.engine.wait(job_id, ONE_TIMEOUT, poll=SINGLE_POLL)
                if view.state != SUCCEEDED:
                    raise BenchFailed(f"profiled record {number}: {view.state}: {view.error}")
            rows, groups = profiles.snapshot()
    finally:
        profiles.uninstall()
    total = sum(own for _, own in rows.values())
    if not total:
        raise BenchFailed("cProfile recorded nothing")
    packages: Counter[str] = Counter()
    functions: list[tuple[str, float, int]] = []
    for (filename, line, name), (calls, own) in rows.items():
        packages[package_of(filename, name)] += own
        functions.append((f"{short_path(filename)}:{line}({name})", own, calls))
    functions.sort(key=lambda f: -f[1])
    return Profiled(
        records=records,
        packages=packages.most_common(),
        functions=functions[:15],
        groups=dict(groups),
        total=total,
    )


_BUILTIN_PACKAGES = (
    ("sqlite3", "sqlite3 (SQLite itself)"),
    ("Imaging", "PIL (Pillow, C)"),
    ("socket", "sockets"),
    ("select", "sockets"),
    ("epoll", "sockets"),
    ("lxml", "lxml"),
    ("_hashlib", "hashlib"),
    ("openssl", "hashlib"),
    ("SSLContext", "ssl"),
)


def package_of(filename: str, name: str) -> str:
    if filename == "~":
        for needle, package in _BUILTIN_PACKAGES:
            if needle in name:
                return package
        return "C built-ins (other)"
    path = filename.replace("\\", "/")
    if "/shelfwork/" in path:
        part = path.split("/shelfwork/", 1)[1]
        if part.startswith("sandbox/"):
            return "shelfwork.sandbox (emulators)"
        if part.startswith("pipelines/"):
            return "shelfwork.pipelines (koha_dspace)"
        if part.startswith("connectors/"):
            return "shelfwork.connectors"
        return "shelfwork (engine)"
    if "site-packages/" in path:
        top = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return top.removesuffix(".py")
    if "/bench/" in path:
        return "bench"
    return "stdlib"


def short_path(filename: str) -> str:
    if filename == "~":
        return "~"
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --- report --------------------------------------------------------------------------------------


def run_text(*cmd: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc.__class__.__name__})"
    return out.stdout.strip()


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(argv: list[str], load_before: str) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = run_text("git", "rev-parse", "--short", "HEAD")
    if run_text("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    names = ("pypdfium2", "pillow", "httpx", "uvicorn", "starlette", "SQLAlchemy", "pymarc")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return [
        f"- date: {run_text('date', '-u')}",
        f"- command: `{' '.join(['python', 'bench/integrator.py', *argv])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}; "
        f"load average (1/5/15 min) before the run {load_before}, after {load_average()}",
        f"- python {platform.python_version()} ({platform.python_implementation()}), "
        f"SQLite {sqlite3.sqlite_version}; {', '.join(versions)}",
        f"- git commit: {commit}",
        "- set-up: emulated Koha 24.05 and DSpace in this process (uvicorn threads, latency 0), "
        f"SQLite file (WAL), local executor; {PAGES}-page text PDFs; deposit by submission; "
        "fresh peers and database per measurement, one warm-up record each, not counted",
    ]


def ms(value: float) -> str:
    return f"{1000 * value:.1f}"


def throughput_table(results: list[Throughput]) -> list[str]:
    lines = [
        "| max_running | code | records | elapsed s | records/min | run p50 / p95 / max s "
        "| in system p50 / p95 / max s | CPU ms/record | checks |",
        "|---:|---|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.max_running} | {r.variant} | {r.records} | {r.elapsed:.2f} "
            f"| {r.per_minute:.0f} "
            f"| {percentile(r.run, 0.5):.3f} / {percentile(r.run, 0.95):.3f} / {max(r.run):.3f} "
            f"| {percentile(r.in_system, 0.5):.2f} / {percentile(r.in_system, 0.95):.2f} / "
            f"{max(r.in_system):.2f} | {1000 * r.cpu / r.records:.0f} "
            f"| all {r.records} succeeded, 856/956/cover in Koha |"
        )
    return lines


def all_runs_line(all_runs: list[list[Throughput]]) -> str:
    parts = [
        f"max_running {runs[0].max_running} {runs[0].variant}: "
        + ", ".join(f"{r.per_minute:.0f}" for r in sorted(runs, key=lambda r: r.per_minute))
        for runs in all_runs
    ]
    return "- all runs, records/min (sorted): " + "; ".join(parts)


def cpu_lines(results: list[Throughput]) -> list[str]:
    lines = []
    for r in results:
        parts = sorted(r.cpu_groups.items(), key=lambda kv: -kv[1])
        shares = ", ".join(f"{name} {100 * value / r.cpu:.0f}%" for name, value in parts)
        lines.append(
            f"- max_running {r.max_running}, {r.variant}: process CPU {r.cpu:.1f} s over {r.elapsed:.1f} s "
            f"wall ({r.cpu / r.elapsed:.2f} cores busy on average); {shares}"
            + (f"; retried steps: {'; '.join(r.retries)}" if r.retries else "; no step retried")
        )
    return lines


def steps_table(single: list[JobView], results: list[Throughput]) -> list[str]:
    idle: dict[str, list[float]] = defaultdict(list)
    for view in single:
        for name, value in step_durations(view).items():
            idle[name].append(value)
    header = "| step | idle, median ms | " + " | ".join(
        f"max_running {r.max_running}{'' if r.variant == 'as is' else ' ' + r.variant}, "
        "p50 / p95 ms"
        for r in results
    )
    lines = [header + " |", "|---|---:|" + "---|" * len(results)]
    for name in ALL_STEPS:
        cells = [ms(statistics.median(idle[name]))]
        for r in results:
            values = r.steps.get(name, [])
            cells.append(f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.95))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def phases_table(single: list[JobView]) -> list[str]:
    split = [phases_of(v) for v in single]
    total = statistics.median(p[PHASES[-1]] for p in split)
    lines = [
        "| phase | median ms | min ms | max ms | median / median total |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in PHASES:
        values = [p[name] for p in split]
        label = name.replace("  ", "&nbsp;&nbsp;&nbsp;", 1) if name.startswith("  ") else name
        lines.append(
            f"| {label} | {ms(statistics.median(values))} | {ms(min(values))} "
            f"| {ms(max(values))} | {100 * statistics.median(values) / total:.0f}% |"
        )
    return lines


def breakdown_table(b: Breakdown) -> list[str]:
    lines = [
        "| step | operation | calls/record | wall ms/record | CPU ms/record (calling thread) |",
        "|---|---|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate((*ALL_STEPS, OUTSIDE_RUNNER, OUTSIDE_BENCH))}
    keys = sorted(b.wall, key=lambda k: (order.get(k[0], 99), k[1] != STEP_ITSELF, -b.wall[k]))
    for step_name, op in keys:
        wall = b.wall[(step_name, op)] / b.runs
        if wall < 0.0003:
            continue
        lines.append(
            f"| {step_name} | {op} | {b.calls[(step_name, op)] / b.runs:g} | {ms(wall)} "
            f"| {ms(b.cpu[(step_name, op)] / b.runs)} |"
        )
    return lines


def profile_lines(p: Profiled) -> list[str]:
    lines = [
        f"cProfile in every thread, thread CPU time, {p.records} records one at a time "
        f"({1000 * p.total / p.records:.0f} ms of profiled CPU per record; cProfile inflates "
        "Python-heavy code, so read the shares as a ranking):",
        "- by thread group: "
        + ", ".join(
            f"{name} {100 * value / p.total:.0f}%"
            for name, value in sorted(p.groups.items(), key=lambda kv: -kv[1])
        ),
        "- by package (own time): "
        + ", ".join(f"{name} {100 * value / p.total:.0f}%" for name, value in p.packages[:14]),
        "- top functions by own time:",
    ]
    for name, own, calls in p.functions:
        lines.append(f"  - {100 * own / p.total:4.1f}% {calls:7d} calls  {name}")
    return lines


def report(
    args: argparse.Namespace,
    load_before: str,
    results: list[Throughput],
    all_runs: list[list[Throughput]],
    single: list[JobView],
    breakdown: Breakdown | None,
    profiled: Profiled | None,
) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"## {stamp}: Koha -> DSpace integrator (`bench/integrator.py`)",
        "",
        *machine_lines(args.argv, load_before),
        "",
        f"Throughput: {args.records} records submitted at once "
        f"(median of {args.repeat} run(s) by records/min, the settings taking turns):",
        "",
        *throughput_table(results),
        "",
        *([all_runs_line(all_runs)] if args.repeat > 1 else []),
        *cpu_lines(results),
        "",
        "Step durations (step rows in the database: step start -> step end):",
        "",
        *steps_table(single, results),
        "",
        f"One record on an idle engine, {len(single)} runs one after another (median; the "
        "medians of the parts need not add up to the median total):",
        "",
        *phases_table(single),
    ]
    if breakdown is not None:
        groups = ", ".join(
            f"{name} {ms(value / breakdown.runs)}"
            for name, value in sorted(breakdown.cpu_groups.items(), key=lambda kv: -kv[1])
        )
        out += [
            "",
            f"Where one record's time goes ({breakdown.runs} records one at a time, timers "
            "around the calls; nested calls are counted in each row that contains them, e.g. "
            "an HTTP request also inside `KohaStaff.upload_cover()`):",
            "",
            *breakdown_table(breakdown),
            "",
            f"- process CPU per record {ms(breakdown.process_cpu / breakdown.runs)} ms: {groups}",
        ]
    if profiled is not None:
        out += ["", *profile_lines(profiled)]
    return "\n".join(out) + "\n"


def append_results(section: str) -> None:
    """One write on an O_APPEND descriptor: others appending at the same time keep their text."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    text = ("\n" if current and not current.endswith("\n\n") else "") + section
    fd = os.open(RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def median_run(runs: list[Throughput]) -> Throughput:
    ordered = sorted(runs, key=lambda r: r.per_minute)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100, help="records per throughput run")
    parser.add_argument(
        "--max-running", type=int, nargs="+", default=[4], help="engine slots; several: a run each"
    )
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per setting")
    parser.add_argument(
        "--what-if-shared-tls",
        action="store_true",
        help="also run the first --max-running with one SSL context shared by all httpx clients",
    )
    parser.add_argument("--single", type=int, default=10, help="one-record runs for the phases")
    parser.add_argument("--instrumented", type=int, default=5, help="records with timers (0: off)")
    parser.add_argument("--profile-records", type=int, default=3, help="records under cProfile")
    parser.add_argument("--workdir", type=Path, help="keep the run folders here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown section here")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    load_before = load_average()
    started = time.monotonic()
    try:
        settings = [(slots, False) for slots in args.max_running]
        if args.what_if_shared_tls:
            settings.append((args.max_running[0], True))
        all_runs: list[list[Throughput]] = [[] for _ in settings]
        for index in range(args.repeat):  # interleaved: drifting load on the machine hits all
            for runs, (slots, shared_tls) in zip(all_runs, settings, strict=True):
                run = measure_throughput(args.records, slots, args.workdir, shared_tls=shared_tls)
                print(
                    f"max_running {slots}, {run.variant}, run {index + 1}: "
                    f"{run.per_minute:.0f} records/min ({run.elapsed:.2f} s)",
                    flush=True,
                )
                runs.append(run)
        results = [median_run(runs) for runs in all_runs]
        single = measure_single(args.single, args.workdir)
        breakdown = (
            measure_breakdown(args.instrumented, args.workdir) if args.instrumented else None
        )
        profiled = (
            measure_profile(args.profile_records, args.workdir) if args.profile_records else None
        )
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    section = report(args, load_before, results, all_runs, single, breakdown, profiled)
    print(section)
    print(f"(benchmark took {time.monotonic() - started:.0f} s)")
    if args.markdown:
        args.markdown.write_text(section, encoding="utf-8")
    if not args.no_save:
        append_results(section)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
