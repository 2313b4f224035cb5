"""HTTP API load benchmark: `shelfwork serve` on SQLite under a constant request rate.

    .venv/bin/python bench/api.py [--rate 500] [--seconds 60] [--submit-share 0.2]

What it does:

1. A temp directory with a fresh SQLite database; an operator token made with
   `shelfwork token create --role operator` (a subprocess, as an operator would).
2. `shelfwork serve` in its own process group on a free port of 127.0.0.1, with the defaults except
   `SHELFWORK_MAX_QUEUE` (so no submit is refused) and `SHELFWORK_MAX_RUNNING` (so the `noop` jobs
   drain as fast as they come); log level WARNING (no access log). It waits for /healthz.
3. A separate client process (this script, `--client-config`) drives an open-loop load: request i
   is due at start + i/rate whatever happened to earlier ones, so a slow server does not lower the
   offered load. Each request is `POST /api/v1/jobs {"pipeline": "noop"}` with probability
   `--submit-share`, else `GET /api/v1/jobs/{id}` of one of the last `--recent` submitted ids.
   The first `--warmup` seconds are not counted.
4. Two latencies per request: *latency* from the time it was due to the end of the response
   (includes any wait for a free connection, so no coordinated omission) and *service time* from
   when the client actually sent it. The issue's targets (p99 < 10 ms POST, < 5 ms GET) are judged
   on latency; service time and client lag (sent minus due) show how much of it is queueing.
5. Queue depth and jobs by state from /metrics when the load ends; CPU of server and client from
   /proc; the load average before and after. A table on stdout, and (unless --no-save) a dated
   section appended to bench/RESULTS.md in one write (`--notes FILE` adds text to it).

The client: by default `--connections` keep-alive connections spoken by hand (a few tens of
microseconds of client CPU per request). `--client httpx` (httpx.AsyncClient, one task per request)
is there for comparison: on a 2-CPU machine its pool costs more CPU than the server once requests
queue for a connection, and the client, not the server, becomes what is measured.

The client runs on the same machine as the server and competes with it for CPU; the report says
how many CPUs there are and how much of them each side used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
HOST = "127.0.0.1"
POST, GET = "POST /jobs", "GET /jobs/{id}"
CLIENTS = {
    "raw": "hand-written HTTP/1.1 on asyncio streams",
    "httpx": "httpx.AsyncClient, one task per request",
}
#: the issue's targets: p99 latency in ms
TARGETS_MS = {POST: 10.0, GET: 5.0}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHELFWORK = (sys.executable, "-m", "shelfwork")


@dataclass
class ClientConfig:
    """What the client process is told (as JSON in a file)."""

    base_url: str
    token: str
    rate: float
    seconds: float
    warmup: float
    submit_share: float
    recent: int
    connections: int
    timeout: float
    seed: int
    client: str


# --- the client process -------------------------------------------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection, spoken by hand: a request costs the client a few tens
    of microseconds, so the client does not become what is measured (httpx's pool does, under a
    backlog)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self.head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        if "content-length" in fields:
            content = await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            content = await self._chunked()
        else:
            content = await self.reader.read()
            fields["connection"] = "close"
        if fields.get("connection") == "close":
            self.close()
        return status, content

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(parts)[:-2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Samples:
    """One sample per request: [kind, due, sent, done, status, counted], times in seconds from
    the start of the timetable; status 0 for a transport error (its kind is counted in `errors`),
    UNFINISHED (done None, sent None if never sent) for one still open when the client gave up."""

    def __init__(self, recent: int) -> None:
        self.rows: list[list[Any]] = []
        self.errors: dict[str, int] = {}
        self.recent: deque[int] = deque(maxlen=recent)

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def unfinished(self, kind: str, due: float, sent: float | None, counted: bool) -> None:
        self.rows.append([kind, due, sent, None, UNFINISHED, counted])


SUBMIT_BODY = b'{"pipeline":"noop"}'
UNFINISHED = -1


async def drive(cfg: ClientConfig) -> dict[str, Any]:
    """Put requests on a fixed timetable (open loop): request i is due at start + i/rate, whether
    or not earlier ones have been answered; a request waiting for a free connection is late, and
    that wait counts in its latency."""
    loop = asyncio.get_running_loop()
    rng = random.Random(cfg.seed)
    samples = Samples(cfg.recent)
    sender = RawSender(cfg, samples) if cfg.client == "raw" else HttpxSender(cfg, samples)
    await sender.open()
    for _ in range(5):  # ids to poll from the first request on
        samples.recent.append(await sender.submit_once())
    total = round(cfg.rate * (cfg.warmup + cfg.seconds))
    cpu0 = _own_cpu()
    start = loop.time() + 0.05
    sender.start = start
    for i in range(total):
        due = i / cfg.rate
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if rng.random() < cfg.submit_share:
            sender.send(POST, None, due, due >= cfg.warmup)
        else:
            sender.send(GET, rng.choice(samples.recent), due, due >= cfg.warmup)
    scheduled_end = loop.time() - start
    unfinished = await sender.finish(cfg.timeout + 5)
    wall = loop.time() - start
    cpu = _own_cpu() - cpu0
    await sender.close()
    return {
        "samples": samples.rows,
        "errors": samples.errors,
        "unfinished": unfinished,
        "scheduled_end": scheduled_end,
        "wall": wall,
        "cpu": cpu,
    }


class RawSender:
    """`connections` RawConnections, each taking the next due request from one queue."""

    def __init__(self, cfg: ClientConfig, samples: Samples) -> None:
        self.cfg = cfg
        self.samples = samples
        url = httpx.URL(cfg.base_url)
        self.connections = [
            RawConnection(url.host, url.port or 80, cfg.token) for _ in range(cfg.connections)
        ]
        self.queue: asyncio.Queue[tuple[str, int | None, float, bool] | None] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []
        self.start = 0.0

    async def open(self) -> None:
        for conn in self.connections:  # connected before the clock starts
            status, _ = await conn.request("GET", "/healthz")
            if status != 200:
                raise RuntimeError(f"/healthz answered {status}")
        self.workers = [asyncio.create_task(self._work(conn)) for conn in self.connections]

    async def submit_once(self) -> int:
        status, body = await self.connections[0].request("POST", "/api/v1/jobs", SUBMIT_BODY)
        if status != 202:
            raise RuntimeError(f"a submit answered {status}: {body[:300]!r}")
        job_id: int = json.loads(body)["id"]
        return job_id

    def send(self, kind: str, job_id: int | None, due: float, counted: bool) -> None:
        self.queue.put_nowait((kind, job_id, due, counted))

    async def _work(self, conn: RawConnection) -> None:
        loop = asyncio.get_running_loop()
        while (item := await self.queue.get()) is not None:
            kind, job_id, due, counted = item
            sent = loop.time() - self.start
            status = 0
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    if kind == POST:
                        status, body = await conn.request("POST", "/api/v1/jobs", SUBMIT_BODY)
                        if status == 202:
                            self.samples.recent.append(json.loads(body)["id"])
                    else:
                        status, _ = await conn.request("GET", f"/api/v1/jobs/{job_id}")
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                self.samples.error(exc)
                conn.close()
            except asyncio.CancelledError:
                self.samples.unfinished(kind, due, sent, counted)
                raise
            self.samples.rows.append([kind, due, sent, loop.time() - self.start, status, counted])

    async def finish(self, timeout: float) -> int:
        """Wait for the queue to empty and the answers to come; what is left is unfinished."""
        for _ in self.workers:
            self.queue.put_nowait(None)
        _, pending = await asyncio.wait(self.workers, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        left = len(pending)
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                kind, _, due, counted = item
                self.samples.unfinished(kind, due, None, counted)
                left += 1
        return left

    async def close(self) -> None:
        for conn in self.connections:
            conn.close()


class HttpxSender:
    """httpx.AsyncClient (HTTP/1.1 keep-alive pool of `connections`), one task per request: for
    comparison only; its pool costs the client much CPU once requests queue for a connection."""

    def __init__(self, cfg: ClientConfig, samples: Samples) -> None:
        self.cfg = cfg
        self.samples = samples
        limits = httpx.Limits(
            max_connections=cfg.connections, max_keepalive_connections=cfg.connections
        )
        self.client = httpx.AsyncClient(
            base_url=cfg.base_url,
            headers={"Authorization": f"Bearer {cfg.token}"},
            limits=limits,
            timeout=cfg.timeout,
        )
        self.pending: set[asyncio.Task[None]] = set()
        self.start = 0.0

    async def open(self) -> None:
        (await self.client.get("/healthz")).raise_for_status()

    async def submit_once(self) -> int:
        r = await self.client.post("/api/v1/jobs", json={"pipeline": "noop"})
        r.raise_for_status()
        job_id: int = r.json()["id"]
        return job_id

    def send(self, kind: str, job_id: int | None, due: float, counted: bool) -> None:
        task = asyncio.create_task(self._one(kind, job_id, due, counted))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _one(self, kind: str, job_id: int | None, due: float, counted: bool) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time() - self.start
        status = 0
        try:
            if kind == POST:
                r = await self.client.post("/api/v1/jobs", json={"pipeline": "noop"})
                if r.status_code == 202:
                    self.samples.recent.append(r.json()["id"])
            else:
                r = await self.client.get(f"/api/v1/jobs/{job_id}")
            status = r.status_code
        except httpx.HTTPError as exc:
            self.samples.error(exc)
        except asyncio.CancelledError:
            self.samples.unfinished(kind, due, sent, counted)
            raise
        self.samples.rows.append([kind, due, sent, loop.time() - self.start, status, counted])

    async def finish(self, timeout: float) -> int:
        if self.pending:
            await asyncio.wait(self.pending, timeout=timeout)
        left = list(self.pending)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    async def close(self) -> None:
        await self.client.aclose()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_main(config_path: Path) -> None:
    cfg = ClientConfig(**json.loads(config_path.read_text()))
    result = asyncio.run(drive(cfg))
    json.dump(result, sys.stdout)


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database: Path, max_queue: int, max_running: int) -> dict[str, str]:
    """The caller's environment without any SHELFWORK_* of theirs, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWORK_")}
    env.update(
        SHELFWORK_DATABASE_URL=f"sqlite:///{database}",
        SHELFWORK_MAX_QUEUE=str(max_queue),
        SHELFWORK_MAX_RUNNING=str(max_running),
    )
    return env


def make_token(env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [*SHELFWORK, "token", "create", "--role", "operator"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"`shelfwork token create` failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


def http_stack(env: dict[str, str]) -> str:
    """What uvicorn will use in the server: httptools and uvloop when installed (uvicorn[standard]),
    else h11 and asyncio."""
    probe = "import importlib.util as u; print(*(bool(u.find_spec(m)) for m in MODULES))"
    probe = f"MODULES = ('httptools', 'uvloop'); {probe}"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    ).stdout.split()
    http = "httptools" if out[:1] == ["True"] else "h11"
    loop = "uvloop" if out[1:2] == ["True"] else "asyncio"
    return f"{http} + {loop}"


def wait_healthy(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not healthy within {START_TIMEOUT:.0f} s:\n{_tail(log)}")


def stop(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not ended in time."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def queue_facts(base_url: str) -> dict[str, float]:
    """Queue depth and jobs by state, from /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    facts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("shelfwork_queue_depth "):
            facts["queued"] = float(line.split()[1])
        elif line.startswith("shelfwork_jobs{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            facts[state] = float(line.rsplit(" ", 1)[1])
    return facts


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    database = workdir / "bench.db"
    env = server_env(database, args.max_queue, args.max_running)
    token = make_token(env, workdir)
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    server_log = workdir / "server.log"
    server: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[str] | None = None
    try:
        with server_log.open("wb") as log:
            server = subprocess.Popen(
                [
                    *SHELFWORK,
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--log-level",
                    args.log_level,
                ],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(base_url, server, server_log)
        cfg = ClientConfig(
            base_url=base_url,
            token=token,
            rate=args.rate,
            seconds=args.seconds,
            warmup=args.warmup,
            submit_share=args.submit_share,
            recent=args.recent,
            connections=args.connections,
            timeout=args.timeout,
            seed=args.seed,
            client=args.client,
        )
        config_path = workdir / "client.json"
        config_path.write_text(json.dumps(asdict(cfg)))
        load0 = os.getloadavg()[0]
        server_cpu0 = process_cpu(server.pid)
        wall0 = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, __file__, "--client-config", str(config_path)],
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        budget = args.warmup + args.seconds + args.timeout + 60
        try:
            out, _ = client.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"the client did not finish within {budget:.0f} s") from None
        wall = time.monotonic() - wall0
        server_cpu = process_cpu(server.pid) - server_cpu0
        if client.returncode != 0:
            raise SystemExit(
                f"the client failed ({client.returncode}); server log:\n{_tail(server_log)}"
            )
        result: dict[str, Any] = json.loads(out)
        result["queue"] = queue_facts(base_url)
        result["server_cpu"] = server_cpu
        result["server_wall"] = wall
        result["server_log"] = _tail(server_log, 10)
        result["http_stack"] = http_stack(env)
        result["load"] = (load0, os.getloadavg()[0])
        return result
    finally:
        stop(client)
        stop(server)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return sorted_values[int(rank) - 1]


def summarize(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    counted = [s for s in result["samples"] if s[5]]
    answered = [s for s in counted if s[3] is not None]
    rows: dict[str, dict[str, Any]] = {}
    for kind in (POST, GET):
        mine = [s for s in counted if s[0] == kind]
        ok = [s for s in mine if 200 <= s[4] < 300]
        latency = sorted((s[3] - s[1]) * 1000 for s in ok)
        service = sorted((s[3] - s[2]) * 1000 for s in ok)
        failures: dict[str, int] = {}
        for s in mine:
            if not 200 <= s[4] < 300:
                key = {0: "transport", UNFINISHED: "unfinished"}.get(s[4], str(s[4]))
                failures[key] = failures.get(key, 0) + 1
        rows[kind] = {
            "count": len(mine),
            "errors": failures,
            "latency": {q: percentile(latency, q) for q in (50, 90, 99, 100)},
            "service": {q: percentile(service, q) for q in (50, 90, 99, 100)},
            "target": TARGETS_MS[kind],
        }
        rows[kind]["pass"] = (
            bool(latency) and not failures and rows[kind]["latency"][99] < TARGETS_MS[kind]
        )
    lag = sorted((s[2] - s[1]) * 1000 for s in counted if s[2] is not None)
    window = max((s[3] for s in answered), default=0.0) - args.warmup
    return {
        "rows": rows,
        "offered": len(counted) / args.seconds,
        "achieved": len(answered) / window if window > 0 else float("nan"),
        "completed": len(answered),
        "lag": {q: percentile(lag, q) for q in (50, 99, 100)},
        "unfinished": len(counted) - len(answered),
        "transport_errors": result["errors"],
        "client_cpu": result["cpu"] / result["wall"],
        "server_cpu": result["server_cpu"] / result["server_wall"],
        "queue": result["queue"],
        "http_stack": result["http_stack"],
        "load": result["load"],
    }


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    from shelfwork.api.auth import TOKEN_CACHE_TTL  # here: the client process needs none of it

    def ms(value: float) -> str:
        return f"{value:.2f}"

    lines = [
        "| endpoint | requests | failed (non-2xx, unanswered) | latency p50 / p90 / p99 / max ms "
        "| service p50 / p90 / p99 / max ms | target p99 | verdict |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for kind, row in summary["rows"].items():
        lat, svc = row["latency"], row["service"]
        errors = sum(row["errors"].values())
        errors_text = str(errors) + (f" ({row['errors']})" if errors else "")
        lines.append(
            f"| `{kind}` | {row['count']} | {errors_text} "
            f"| {' / '.join(ms(lat[q]) for q in (50, 90, 99, 100))} "
            f"| {' / '.join(ms(svc[q]) for q in (50, 90, 99, 100))} "
            f"| < {row['target']:.0f} ms | {'pass' if row['pass'] else 'FAIL'} |"
        )
    lag = summary["lag"]
    queue = summary["queue"]
    states = ", ".join(f"{k} {v:.0f}" for k, v in sorted(queue.items()) if k != "queued")
    lines += [
        "",
        f"- Load: {args.rate:g} requests/s offered for {args.seconds:g} s after a "
        f"{args.warmup:g} s warm-up (not counted), {args.submit_share:.0%} submits of `noop`, the "
        f"rest polls of the last {args.recent} submitted ids; open loop over {args.connections} "
        f"keep-alive HTTP/1.1 connections ({CLIENTS[args.client]}).",
        f"- Offered {summary['offered']:.1f} req/s, achieved {summary['achieved']:.1f} req/s "
        f"({summary['completed']} answers; {summary['unfinished']} requests still unanswered "
        f"{args.timeout + 5:g} s after the last was due, counted as failures; transport errors "
        f"{summary['transport_errors'] or 'none'})"
        + (
            ": the server did not keep up, so latencies grew for as long as the load lasted."
            if summary["achieved"] < 0.95 * summary["offered"]
            else "."
        ),
        f"- Latency counts from when a request was due; service time from when the client sent "
        f"it. Client lag (sent minus due) p50 {ms(lag[50])}, p99 {ms(lag[99])}, max "
        f"{ms(lag[100])} ms.",
        f"- CPU: server {summary['server_cpu']:.0%} and client {summary['client_cpu']:.0%} of one "
        f"core, on {os.cpu_count()} CPUs shared by both (the client competes with the server); "
        f"load average {summary['load'][0]:.2f} before, {summary['load'][1]:.2f} after "
        "(it counts runnable threads, the server's own among them).",
        f"- When the load ended: {queue.get('queued', 0):.0f} jobs queued; jobs by state: "
        f"{states}.",
        f"- Server: `shelfwork serve`, SQLite (WAL), local executor, max_running "
        f"{args.max_running}, max_queue {args.max_queue}, log level {args.log_level}; uvicorn "
        f"with {summary['http_stack']}; API tokens trusted for {TOKEN_CACHE_TTL:g} s once "
        "verified (auth.TOKEN_CACHE_TTL).",
    ]
    return "\n".join(lines)


def machine() -> str:
    when = subprocess.run(
        ["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    versions = []
    for name in ("fastapi", "starlette", "uvicorn", "httpx", "SQLAlchemy"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            continue
    return (
        f"## {when}: HTTP API load (`bench/api.py`)\n\n"
        f"Commit {commit or '?'}{' with uncommitted changes' if dirty else ''}; "
        f"{os.cpu_count()} CPUs (nproc); Python {platform.python_version()} "
        f"({platform.python_implementation()}); {', '.join(versions)}; "
        f"{platform.system()} {platform.release()}."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (500)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds (60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="uncounted seconds first (5)")
    parser.add_argument(
        "--submit-share", type=float, default=0.2, help="share of requests that submit (0.2)"
    )
    parser.add_argument("--recent", type=int, default=100, help="poll one of the last N ids")
    parser.add_argument("--connections", type=int, default=32, help="client connections (32)")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: hand-written HTTP/1.1 on asyncio streams (default); httpx: for comparison",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--max-running", type=int, default=8, help="server's max_running (8)")
    parser.add_argument("--max-queue", type=int, default=1_000_000, help="server's max_queue")
    parser.add_argument("--log-level", default="WARNING", help="server log level (WARNING)")
    parser.add_argument("--workdir", type=Path, help="keep the database and logs here")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument(
        "--notes", type=Path, help="a Markdown file added to the end of the RESULTS.md section"
    )
    parser.add_argument("--client-config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_config is not None:
        client_main(args.client_config)
        return
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--rate, --seconds and --connections must be positive, --warmup >= 0")
    if not 0 < args.submit_share <= 1:
        parser.error("--submit-share must be in (0, 1]")

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="shelfwork-api-bench-") as tmp:
            result = run(args, Path(tmp))
    summary = summarize(result, args)
    text = f"{machine()}\n\n{report(summary, args)}\n"
    if args.notes is not None:
        text += f"\n{args.notes.read_text(encoding='utf-8').strip()}\n"
    print(text)
    if not args.no_save:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(f"\n{text}")
        print(f"appended to {RESULTS.relative_to(REPO_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
