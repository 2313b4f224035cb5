"""The `shelfwork` command line: run the engine (`serve`, `worker`), submit and follow jobs,
inspect and operate on them, and show what shelfwork does (`demo`: the Koha -> DSpace integrator
on emulated peers, `sandbox`: those peers alone, `engine-demo`: the engine's own behaviour).

Output rules, so scripts can rely on them: a command's result goes to stdout (`submit` prints only
the job id; `--json` prints JSON), everything said to a person goes to stderr. Every error shelfwork
raises on purpose becomes one line on stderr and a distinct exit code, never a traceback (unless
`--debug`):

    0 success   1 job failed or was cancelled (or another error)   2 bad input or configuration
    3 metadata database or message broker unreachable   4 queue full: try again later
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .errors import (
    BadParams,
    ConfigError,
    DatabaseUnavailable,
    InvalidTransition,
    JobNotFound,
    PreconditionFailed,
    QueueFull,
    ScheduleError,
    ShelfworkError,
    TrackerError,
    UnknownPipeline,
)
from .store.models import CANCELLED, FAILED, JOB_STATES, QUEUED, RUNNING, SUCCEEDED

if TYPE_CHECKING:
    from .config import Settings
    from .engine import Engine
    from .jobs import JobView
    from .pipeline import Pipeline, Registry

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_QUEUE_FULL = 4
EXIT_INTERRUPTED = 130

STATE_STYLES = {
    QUEUED: "cyan",
    RUNNING: "bold blue",
    SUCCEEDED: "green",
    FAILED: "bold red",
    CANCELLED: "yellow",
}

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="shelfwork",
    help="Durable integration jobs for libraries, repositories and catalogs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Metadata database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


# --- global options and the settings/engine they lead to ------------------------------------------


@dataclass
class CliOptions:
    """Global options, kept until a command needs settings (`--help` works on a broken config)."""

    config: Path | None = None
    database_url: str | None = None
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            from .config import load_settings

            self._settings = load_settings(self.config, database_url=self.database_url)
        return self._settings

    def engine(self, *, kind: str = "cli", registry: Registry | None = None) -> Engine:
        return open_engine(self.settings(), kind=kind, registry=registry)


options = CliOptions()


def _register_api_commands() -> None:
    from .api.commands import register

    register(app, options.settings)  # `shelfwork token ...` and `shelfwork user ...`


_register_api_commands()


def open_engine(
    settings: Settings, *, kind: str = "cli", registry: Registry | None = None
) -> Engine:
    """An engine (not started) on a reachable database with the newest schema.

    The database is pinged before the migration runs, so an unreachable one is reported as such
    rather than as a migration error.
    """
    from .engine import Engine

    try:
        engine = Engine(settings, registry, kind=kind, upgrade=False)
    except OSError as exc:  # e.g. the SQLite file's directory cannot be created
        where = safe_url(settings.database_url)
        raise DatabaseUnavailable(
            f"metadata database {where} cannot be opened: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
        ) from None
    engine.store.ping()
    engine.store.upgrade()
    return engine


@app.callback()
def root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="TOML settings file (default: $SHELFWORK_CONFIG, else ./shelfwork.toml).",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="Metadata database URL; overrides the file and $SHELFWORK_DATABASE_URL.",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on errors.")
    ] = False,
) -> None:
    """Durable integration jobs for libraries, repositories and catalogs."""
    options.config = config
    options.database_url = database_url
    options.debug = debug
    options._settings = None
    if debug:
        from .redaction import install_log_filter

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
        install_log_filter()  # no tokens, cookies or URL credentials in the debug log
    else:
        # Jobs run by `submit --wait` or `demo` mirror their logs to Python logging; here they are
        # already in the job's events (`shelfwork status ID`), so keep the terminal for the job's
        # progress. `serve` and `worker` turn logging back on.
        logging.getLogger("shelfwork").setLevel(logging.CRITICAL + 1)


# --- errors ---------------------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, DatabaseUnavailable) or _is_broker_error(exc):
        return EXIT_UNAVAILABLE
    if isinstance(exc, QueueFull):
        return EXIT_QUEUE_FULL
    bad_input = (
        ConfigError,
        ScheduleError,
        TrackerError,
        UnknownPipeline,
        BadParams,
        PreconditionFailed,
        JobNotFound,
        InvalidTransition,
    )
    from .api.errors import AccessError

    if isinstance(exc, (*bad_input, AccessError)):
        return EXIT_BAD_INPUT
    return EXIT_JOB_FAILED


def _is_broker_error(exc: BaseException) -> bool:
    try:
        from kombu.exceptions import OperationalError as BrokerError
    except ImportError:  # pragma: no cover - kombu comes with celery
        return False
    return isinstance(exc, BrokerError)


def describe_error(exc: BaseException) -> str:
    """One line that says what went wrong and, where it helps, what to do."""
    if _is_broker_error(exc):
        return f"message broker {_safe_broker()} is unreachable: {_first_line(exc)}"
    if isinstance(exc, QueueFull):
        return f"{exc} (retry in about {exc.retry_after:g}s)"
    if isinstance(exc, ShelfworkError):
        return _first_line(exc)
    if isinstance(exc, OSError):
        return f"cannot use {getattr(exc, 'filename', None) or 'a file'}: {exc.strerror or exc}"
    return (
        f"unexpected error: {type(exc).__name__}: {_first_line(exc)} (run with --debug for details)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _safe_broker() -> str:
    try:
        from kombu.utils.url import maybe_sanitize_url

        return str(maybe_sanitize_url(options.settings().broker_url))
    except Exception:
        return "(configured broker)"


def say_error(message: str) -> None:
    err.print(Text(f"error: {message}", style="bold red"))


def fail(message: str, code: int) -> NoReturn:
    say_error(message)
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """The `shelfwork` script: run a command; turn errors into one line and an exit code."""
    try:
        app(args=argv, prog_name="shelfwork")
    except Exception as exc:
        if options.debug:
            err.print_exception()
        say_error(describe_error(exc))
        sys.exit(exit_code_for(exc))


# --- shared presentation --------------------------------------------------------------------------


def safe_url(url: str) -> str:
    from sqlalchemy.engine.url import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def styled_state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def local_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_text(view: JobView, width: int = 10, *, message: bool = True) -> Text:
    percent = view.percent
    if percent is None:
        return Text((view.progress_message if message else None) or "-", style="dim")
    filled = round(width * percent / 100)
    text = Text("█" * filled, style=STATE_STYLES.get(view.state, ""))
    text.append("░" * (width - filled), style="dim")
    text.append(f" {percent:3.0f}%")
    if message and view.progress_message and not view.finished:
        text.append(f" {view.progress_message}", style="dim")
    return text


def job_json(view: JobView, *, steps: bool = False) -> dict[str, Any]:
    data = asdict(view)
    data["percent"] = view.percent
    data["duration"] = view.duration
    if steps:
        data["steps"] = [{**asdict(s), "duration": s.duration} for s in view.steps]
    else:
        data.pop("steps", None)
    return data


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_json_default, sort_keys=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def live_server(engine: Engine) -> bool:
    """Whether a `shelfwork serve` with a scheduler has been seen on this database lately."""
    return bool(live_nodes(engine, scheduler=True))


def live_nodes(
    engine: Engine, *, scheduler: bool | None = None, kind: str | None = None
) -> list[str]:
    from sqlalchemy import select

    from .store.database import utcnow
    from .store.models import Node

    nodes = Node.__table__
    recent = utcnow() - timedelta(seconds=3 * engine.settings.lease_ttl)
    q = select(nodes.c.id).where(nodes.c.seen_at >= recent)
    if scheduler is not None:
        q = q.where(nodes.c.scheduler.is_(scheduler))
    if kind is not None:
        q = q.where(nodes.c.kind == kind)
    with engine.store.read() as conn:
        return [row.id for row in conn.execute(q).all()]


def hint_if_nothing_runs_jobs(engine: Engine) -> None:
    """Tell the person when their job will just sit in the queue."""
    if engine.settings.executor == "local" and not live_server(engine):
        err.print(
            "note: no `shelfwork serve` is running on this database; "
            "the job waits in the queue until one starts (or use --wait).",
            style="yellow",
            markup=False,
        )
    elif engine.settings.executor == "celery" and not live_nodes(engine, kind="worker"):
        err.print(
            "note: no `shelfwork worker` has been seen lately; "
            "the job runs when a Celery worker consumes the queue.",
            style="yellow",
            markup=False,
        )


# --- serve and worker -----------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address the HTTP API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP API.")] = 8000,
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "INFO",
) -> None:
    """Run the HTTP API (/api/v1, docs at /api/v1/docs) and the engine: scheduler (dispatch,
    lease reclaim, schedules, trackers) and, with the local executor, the jobs themselves.
    Stops gracefully on Ctrl-C or SIGTERM; a second signal leaves running jobs for another node."""
    from .api.server import serve as serve_http

    settings = options.settings()
    engine = options.engine(kind="server")
    _configure_logging(log_level)
    err.print(f"shelfwork serve: node {engine.node_id}", markup=False, highlight=False)
    for line in _describe_setup(settings):
        err.print(f"  {line}", markup=False, highlight=False)
    err.print(f"  HTTP API: http://{host}:{port}/api/v1 (docs: /api/v1/docs)", markup=False)
    serve_http(settings, host, port, log_level=log_level, engine=engine)


def _describe_setup(settings: Settings) -> list[str]:
    if settings.executor == "celery":
        executor = f"celery via {_safe_broker()} (queue {settings.celery_queue})"
    else:
        executor = f"local ({settings.threads} threads in this process)"
    return [
        f"config: {settings.source or 'defaults and environment'}",
        f"database: {safe_url(settings.database_url)}",
        f"executor: {executor}",
        f"admission: at most {settings.max_running} running, {settings.max_queue} waiting",
    ]


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Jobs run at once by this worker (default: threads setting)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Celery and Python logging level.")] = "INFO",
) -> None:
    """Run a Celery worker that executes jobs sent through the broker (executor = "celery")."""
    settings = options.settings()
    if settings.executor != "celery":
        fail(
            f"a worker runs jobs that the engine sends through a Celery broker, but the executor "
            f"is {settings.executor!r}: with the local executor jobs run inside `shelfwork serve`. "
            'To scale out, set SHELFWORK_EXECUTOR=celery (or [executor] kind = "celery") and '
            "broker_url, on PostgreSQL.",
            EXIT_BAD_INPUT,
        )
    open_engine(settings, kind="worker").store.dispose()  # reachable, schema current
    from .executors.celery import make_celery, run_worker

    celery = make_celery(settings)
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=3)
    celery.close()
    _configure_logging(log_level)
    run_worker(settings, concurrency=concurrency or settings.threads, loglevel=log_level.upper())


def _configure_logging(level: str) -> None:
    if options.debug:
        return
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)", EXIT_BAD_INPUT)
    logging.getLogger("shelfwork").setLevel(logging.NOTSET)
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .redaction import install_log_filter

    install_log_filter()


# --- submit and follow ----------------------------------------------------------------------------


def parse_params(pairs: list[str], params_json: str | None) -> dict[str, Any]:
    """`--params-json` first, then each `-p key=value` on top; values are JSON when they parse."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            fail(f"--params-json is not valid JSON: {exc}", EXIT_BAD_INPUT)
        if not isinstance(loaded, dict):
            fail("--params-json must be a JSON object, like '{\"seconds\": 2}'", EXIT_BAD_INPUT)
        params.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"-p expects key=value, got {pair!r}", EXIT_BAD_INPUT)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@app.command()
def submit(
    pipeline: Annotated[
        str, typer.Argument(metavar="PIPELINE", help="Pipeline name (see `shelfwork pipelines`).")
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            help="key=value; the value is read as JSON when it parses (2, true, [1,2]), else text.",
        ),
    ] = None,
    params_json: Annotated[
        str | None,
        typer.Option("--params-json", metavar="JSON", help="All params as one JSON object."),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option("--context", help="Jobs in one context run one at a time, in order."),
    ] = None,
    lane: Annotated[
        str | None, typer.Option("--lane", help="At most one running job per lane.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    dedup_key: Annotated[
        str | None,
        typer.Option("--dedup-key", help="While a job with this key is live, return that job."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job; exit 0 only if it succeeds.")
    ] = False,
) -> None:
    """Submit a job. Prints its id on stdout (and nothing else), so scripts can capture it."""
    params = parse_params(param or [], params_json)
    engine = options.engine()
    try:
        submitted = engine.submit(
            pipeline,
            params,
            context=context,
            lane=lane,
            priority=priority,
            dedup_key=dedup_key,
            note="submitted from the command line",
        )
        print(submitted.job_id, flush=True)
        if submitted.created:
            err.print(f"job {submitted.job_id} ({pipeline}) queued", markup=False, highlight=False)
            if engine.settings.executor == "celery":
                health = engine.executor.health()
                if not health["ok"]:
                    err.print(
                        f"warning: {health['error']}; the job stays queued until a server can "
                        "hand it to a worker",
                        style="yellow",
                        markup=False,
                        highlight=False,
                    )
        else:
            err.print(
                f"a live job with dedup key {dedup_key!r} exists: job {submitted.job_id} "
                f"({submitted.state}); no new job was created",
                style="yellow",
                markup=False,
                highlight=False,
            )
        if not wait:
            hint_if_nothing_runs_jobs(engine)
            return
        view = follow(engine, submitted.job_id)
    finally:
        if not engine.started:
            engine.store.dispose()
    report_outcome(view)
    raise typer.Exit(EXIT_OK if view.state == SUCCEEDED else EXIT_JOB_FAILED)


def follow(engine: Engine, job_id: int) -> JobView:
    """Show a progress bar until the job ends; see `JobFollower`."""
    if engine.settings.executor == "celery" and not live_nodes(engine, kind="worker"):
        hint_if_nothing_runs_jobs(engine)
    follower = JobFollower(engine, job_id)
    try:
        view = follower.run()
    except KeyboardInterrupt:
        if follower.embedded:
            # This process holds the job's lease: leave like a crashed node would. The job resumes
            # from its last committed step when its lease expires and a server reclaims it.
            err.print(
                f"interrupted: job {job_id} resumes from its last finished step in the next "
                "`shelfwork serve` once its lease expires",
                style="yellow",
            )
            err.file.flush()
            os._exit(EXIT_INTERRUPTED)
        err.print(f"stopped following job {job_id}; it goes on (`shelfwork status {job_id}`)")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if follower.embedded:
        others = [j for j in engine.heartbeat.running() if j != job_id]
        if others:
            err.print(f"waiting for {len(others)} other job(s) this process picked up to finish")
        engine.stop(wait=True)
    return view


class JobFollower:
    """Follows one job to its end with a progress bar.

    With the local executor, jobs run inside `shelfwork serve`. When no server is alive on this
    database (or the one that was died while the job waited), this process runs the job itself:
    it dispatches only until the job is claimed, and runs no schedules or trackers.
    """

    SERVER_CHECK_EVERY = 2.0

    def __init__(self, engine: Engine, job_id: int) -> None:
        self.engine = engine
        self.job_id = job_id
        self.embedded = False
        self._next_server_check = 0.0

    def run(self) -> JobView:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task(f"job {self.job_id}", total=None)
            while True:
                view = self.engine.jobs.get(self.job_id, steps=False)
                if view.state == QUEUED:
                    self._run_here_if_nobody_will()
                    if self.embedded:
                        self.engine.dispatch()
                bar.update(task, **self._bar_fields(view))
                if view.finished:
                    break
                time.sleep(0.1 if self.embedded else 0.25)
        return self.engine.jobs.get(self.job_id)

    def _run_here_if_nobody_will(self) -> None:
        if self.embedded or self.engine.settings.executor != "local":
            return
        now = time.monotonic()
        if now < self._next_server_check:
            return
        self._next_server_check = now + self.SERVER_CHECK_EVERY
        if live_server(self.engine):
            return
        err.print(
            "no `shelfwork serve` is running on this database: running the job in this process",
            style="dim",
            markup=False,
        )
        self.engine.start(scheduler=False)
        self.embedded = True

    @staticmethod
    def _bar_fields(view: JobView) -> dict[str, Any]:
        total = view.progress_total
        done = view.progress_done or 0
        if view.state == SUCCEEDED and not total:
            total, done = 1, 1
        message = view.progress_message or ""
        if view.attention:
            message = f"held: {view.attention}"
        style = STATE_STYLES.get(view.state, "")
        return {
            "total": total,
            "completed": done,
            "description": (
                f"job {view.id} {escape(view.pipeline)} [{style}]{view.state}[/]"
                f"{escape(' ' + message if message else '')}"
            ),
        }


def report_outcome(view: JobView) -> None:
    took = f" in {seconds(view.duration)}" if view.duration is not None else ""
    line = Text(f"job {view.id} ")
    line.append(view.state, style=STATE_STYLES.get(view.state, ""))
    line.append(took)
    if view.error:
        line.append(f": {view.error}", style="red")
    err.print(line)
    for warning in view.warnings:
        err.print(Text(f"warning: {_warning_text(warning)}", style="yellow"))
    if view.state == SUCCEEDED and view.result is not None:
        err.print(Text(f"result: {json.dumps(view.result, default=str)}"))


def _warning_text(warning: Any) -> str:
    if isinstance(warning, dict):
        where = f"[{warning['step']}] " if warning.get("step") else ""
        return f"{where}{warning.get('message', '')}"
    return str(warning)


# --- inspecting and operating on jobs -------------------------------------------------------------


JobId = Annotated[
    int, typer.Argument(metavar="ID", help="Job id (as printed by `shelfwork submit`).", min=1)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command()
def status(
    job_id: JobId,
    as_json: JsonFlag = False,
    events: Annotated[int, typer.Option(min=0, help="How many of the latest events to show.")] = 10,
) -> None:
    """Show one job: state, progress, steps, warnings, result, error and latest events."""
    engine = options.engine()
    view = engine.jobs.get(job_id)
    trail = engine.jobs.events(job_id, limit=100_000)[-events:] if events else []
    engine.store.dispose()
    if as_json:
        print_json({**job_json(view, steps=True), "events": trail})
        return
    title = Text(f"job {view.id} · {view.pipeline} v{view.pipeline_version} · ")
    title.append(view.state, style=STATE_STYLES.get(view.state, ""))
    out.print(title)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("params", json.dumps(view.params, default=str))
    facts.add_row("progress", progress_text(view, width=20))
    facts.add_row(
        "times",
        f"created {local_time(view.created_at)} · started {local_time(view.started_at)} · "
        f"finished {local_time(view.finished_at)} · took {seconds(view.duration)} · "
        f"runs {view.runs}",
    )
    for label, value in (
        ("context", view.context),
        ("lane", view.lane),
        ("dedup key", view.dedup_key),
        ("priority", view.priority or None),
        ("running on", view.lease_owner),
        ("cancel", "requested" if view.cancel_requested and not view.finished else None),
        ("attention", view.attention),
    ):
        if value is not None:
            facts.add_row(label, Text(str(value)))
    out.print(facts)
    if view.steps:
        steps = Table(title="steps", title_justify="left", show_edge=False)
        for column in ("step", "branch", "state", "attempts", "took", "error"):
            steps.add_column(column)
        for s in view.steps:
            steps.add_row(
                s.name,
                s.branch or "",
                styled_state(s.state),
                str(s.attempts),
                seconds(s.duration),
                Text(s.error or "", style="red"),
            )
        out.print(steps)
    for warning in view.warnings:
        out.print(Text(f"warning: {_warning_text(warning)}", style="yellow"))
    if view.result is not None:
        out.print(Text(f"result: {json.dumps(view.result, default=str)}"))
    if view.error:
        out.print(Text(f"error: {view.error}", style="red"))
    if trail:
        table = Table(title="latest events", title_justify="left", show_edge=False)
        for column in ("at", "event", "step", "message"):
            table.add_column(column)
        for e in trail:
            style = {"error": "red", "warning": "yellow"}.get(e["level"], "")
            table.add_row(
                local_time(e["at"]), Text(e["kind"], style=style), e["step"] or "", e["message"]
            )
        out.print(table)


@app.command()
def jobs(
    state: Annotated[
        str | None, typer.Option(help=f"Only jobs in this state: {', '.join(JOB_STATES)}.")
    ] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline.")] = None,
    context: Annotated[str | None, typer.Option(help="Only this context.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Newest N jobs.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    if state is not None and state not in JOB_STATES:
        fail(f"unknown state {state!r}; states are: {', '.join(JOB_STATES)}", EXIT_BAD_INPUT)
    engine = options.engine()
    views = engine.jobs.list(state=state, pipeline=pipeline, context=context, limit=limit)
    engine.store.dispose()
    if as_json:
        print_json([job_json(v) for v in views])
        return
    if not views:
        err.print("no jobs match")
        return
    table = Table(show_edge=False)
    # Fixed-width facts never squeeze; pipeline and context fold; notes are cut with an ellipsis.
    table.add_column("id", no_wrap=True, min_width=len(str(views[0].id)))
    table.add_column("pipeline", min_width=8)
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("progress", no_wrap=True, min_width=10)
    table.add_column("context", min_width=7)
    table.add_column("created", no_wrap=True, min_width=14)
    table.add_column("took", no_wrap=True, min_width=5)
    table.add_column("notes")
    for v in views:
        notes = Text()
        if v.error:
            notes.append(v.error, style="red")
        elif v.warnings:
            notes.append(f"{len(v.warnings)} warning(s)", style="yellow")
        if v.attention:
            notes.append(f"needs attention: {v.attention}", style="yellow")
        notes.truncate(60, overflow="ellipsis")  # the whole story is in `shelfwork status ID`
        table.add_row(
            str(v.id),
            v.pipeline,
            styled_state(v.state),
            progress_text(v, width=5, message=False),
            v.context or "",
            v.created_at.astimezone().strftime("%m-%d %H:%M:%S"),
            seconds(v.duration),
            notes,
        )
    out.print(table)


@app.command()
def cancel(job_id: JobId) -> None:
    """Cancel a job: a queued one at once, a running one at its next check."""
    engine = options.engine()
    view = engine.cancel(job_id, by="command line")
    engine.store.dispose()
    if view.state == CANCELLED:
        out.print(f"job {job_id} cancelled")
    else:
        out.print(f"job {job_id}: cancel requested; it stops at its next check")


@app.command()
def retry(job_id: JobId) -> None:
    """Queue a failed or cancelled job again; its finished steps are kept and not run again."""
    engine = options.engine()
    view = engine.retry(job_id, by="command line")
    out.print(f"job {job_id} is {view.state} again; finished steps are kept")
    hint_if_nothing_runs_jobs(engine)
    engine.store.dispose()


@app.command()
def release(job_id: JobId) -> None:
    """Let a job held for attention (its pipeline changed in flight) resume on the current code."""
    engine = options.engine()
    engine.release(job_id, by="command line")
    engine.store.dispose()
    out.print(f"job {job_id} released; it resumes on the current pipeline code")


@app.command()
def pipelines(as_json: JsonFlag = False) -> None:
    """List the pipelines this configuration knows, with their params."""
    from .registry import default_registry

    registry = default_registry(options.settings())
    if as_json:
        print_json([p.describe() for p in registry])
        return
    table = Table(show_edge=False)
    for column in ("pipeline", "version", "params", "description"):
        table.add_column(column)
    for p in registry:
        table.add_row(p.name, p.version, params_summary(p), p.description)
    out.print(table)


def params_summary(pipeline: Pipeline) -> str:
    parts = []
    for name, info in pipeline.params.model_fields.items():
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
        if info.is_required():
            parts.append(f"{name}: {kind} (required)")
        else:
            parts.append(f"{name}: {kind} = {info.default!r}")
    return "\n".join(parts) or "(none)"


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the metadata database schema to the newest revision."""
    from .store import Store

    settings = options.settings()
    store = Store(settings.database_url)
    store.ping()
    store.upgrade()
    store.dispose()
    out.print(f"database {safe_url(settings.database_url)} has the newest schema", highlight=False)


# --- demo -----------------------------------------------------------------------------------------


@dataclass
class DemoJob:
    """One submission of the demo: what it shows and what must come of it."""

    label: str
    pipeline: str
    params: dict[str, Any] = field(default_factory=dict)
    expect: str = SUCCEEDED
    context: str | None = None
    priority: int = 0
    dedup_key: str | None = None
    job_id: int | None = None
    problem: str | None = None


def demo_plan() -> list[DemoJob]:
    return [
        DemoJob("progress", "sleep", {"seconds": 3.0, "steps": 12}),
        DemoJob("progress", "sleep", {"seconds": 2.5, "steps": 10}),
        DemoJob("progress", "sleep", {"seconds": 2.0, "steps": 8}),
        DemoJob("high priority: starts first", "sleep", {"seconds": 1.0, "steps": 4}, priority=5),
        DemoJob(
            "context biblio:42, first",
            "sleep",
            {"seconds": 1.5, "steps": 6},
            context="biblio:42",
        ),
        DemoJob(
            "context biblio:42, waits for the first",
            "sleep",
            {"seconds": 1.0, "steps": 4},
            context="biblio:42",
        ),
        DemoJob(
            "optional branch fails: warning",
            "demo-deposit",
            {"record": "b1001", "fail_cover": True},
        ),
        DemoJob(
            "critical step fails: compensation",
            "demo-deposit",
            {"record": "b1002", "fail_deposit": True},
            expect=FAILED,
        ),
        DemoJob("flaky remote: retries", "demo-flaky", {"fail_attempts": 2}),
        DemoJob("cancelled while running", "sleep", {"seconds": 30, "steps": 60}, expect=CANCELLED),
        DemoJob("dedup key: one job", "sleep", {"seconds": 0.5}, dedup_key="nightly-export"),
        DemoJob("dedup key: same job", "sleep", {"seconds": 0.5}, dedup_key="nightly-export"),
    ]


DEMO_BURST = 6  # noop jobs submitted past the end of the plan; the queue takes only 4 of them
DEMO_BURST_ACCEPTED = 4
DEMO_TIMEOUT = 90.0


#: the options every demo command takes
DemoFolder = Annotated[
    Path, typer.Option("--dir", help="Folder for the demo's database and files (made afresh).")
]
DemoKeep = Annotated[
    bool | None,
    typer.Option(
        "--keep/--no-keep",
        help="Keep the servers up afterwards (default: when run from a terminal).",
    ),
]


@app.command()
def demo(
    folder: DemoFolder = Path("shelfwork-demo"),
    keep: DemoKeep = None,
) -> None:
    """The Koha -> DSpace integrator end to end on emulated Koha and DSpace: start them and a
    shelfwork server (SQLite), catalogue books with generated PDFs, integrate them through
    /integrate, and print the dashboard URL and a summary table."""
    from .pipelines.koha_dspace.demo import run_demo

    raise typer.Exit(run_demo(folder.resolve(), keep=keep, console=out))


@app.command("oai-demo")
def oai_demo(
    folder: DemoFolder = Path("shelfwork-oai-demo"),
    keep: DemoKeep = None,
) -> None:
    """OAI-PMH network harvesting end to end: an upstream repository in the sandbox, a shelfwork
    server (SQLite) running HARVEST, VALIDATE, INDEX_BUILTIN and INDEX_OAI twice (full, then
    incremental), a search, and shelfwork's own OAI-PMH provider harvested back."""
    from .pipelines.oai.demo import run_oai_demo

    raise typer.Exit(run_oai_demo(folder.resolve(), keep=keep, console=out))


@app.command()
def sandbox(
    koha_port: Annotated[int, typer.Option(help="Port of the emulated Koha (0: any free).")] = 8081,
    dspace_port: Annotated[int, typer.Option(help="Port of the emulated DSpace.")] = 8082,
    generation: Annotated[
        str, typer.Option(help="Koha generation: 24.05 (CSRF login) or 22.11.")
    ] = "24.05",
    folder: Annotated[
        Path, typer.Option("--dir", help="Where the printed config puts inbox/processed/error.")
    ] = Path("sandbox-files"),
) -> None:
    """Run the emulated Koha and DSpace on 127.0.0.1 until Ctrl-C, and print a
    [systems.koha-dspace] table that points shelfwork at them."""
    import threading

    from .sandbox.peers import KOHA_USER, start_peers

    if generation not in ("24.05", "22.11"):
        fail(f"--generation must be 24.05 or 22.11, not {generation!r}", EXIT_BAD_INPUT)
    peers = start_peers(generation=generation, koha_port=koha_port, dspace_port=dspace_port)  # type: ignore[arg-type]
    try:
        err.print(f"emulated Koha {generation} on {peers.koha_url} (staff user {KOHA_USER})")
        err.print(f"emulated DSpace 7 on {peers.dspace_url}")
        err.print("control API (no auth, loopback only): /_sandbox/ on each; Ctrl-C stops both")
        from .pipelines.koha_dspace.demo import cases, seed_books

        plan = cases()
        seed_books(peers, folder.resolve(), plan)
        numbers = ", ".join(str(case.book.biblionumber) for case in plan)
        err.print(f"catalogued biblios {numbers} with their scans in {folder.resolve() / 'inbox'}")
        out.print(
            _systems_table(peers.integrator_config(folder.resolve())), markup=False, highlight=False
        )
        sys.stdout.flush()  # a script reading the table through a pipe gets it now
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        peers.stop()


def _systems_table(table: dict[str, Any]) -> str:
    """A [systems.koha-dspace] TOML table (the sandbox's secrets are throwaway)."""

    def value(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)

    lines = ["[systems.koha-dspace]"]
    lines += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for name, sub in table.items():
        if isinstance(sub, dict):
            lines += ["", f"[systems.koha-dspace.{name}]"]
            lines += [f"{k} = {value(v)}" for k, v in sub.items()]
    return "\n".join(lines)


@app.command("koha-button")
def koha_button(
    url: Annotated[str, typer.Option(help="Where Koha's staff browsers reach shelfwork.")],
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding an integrator token (else $SHELFWORK_BUTTON_TOKEN)."),
    ] = None,
) -> None:
    """Print the "Integrate to repository" button for Koha's IntranetUserJS, filled in.

    The token is checked in the database first: only an integrator token is accepted, since
    every staff browser can read the script."""
    from .api.auth import Tokens
    from .api.commands import open_store
    from .pipelines.koha_dspace.button import button_script, check_button_token

    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(f"token file {token_file}: {exc.strerror or exc}", EXIT_BAD_INPUT)
    else:
        token = os.environ.get("SHELFWORK_BUTTON_TOKEN", "")
    if not token:
        fail(
            "no token: make one with `shelfwork token create --role integrator --name koha-staff` "
            "and pass --token-file or set SHELFWORK_BUTTON_TOKEN",
            EXIT_BAD_INPUT,
        )
    with open_store(options.settings) as store:
        principal = Tokens(store).authenticate(token, touch=False)
    check_button_token(principal.role if principal is not None else None)
    out.print(button_script(url, token), markup=False, highlight=False)


@app.command("engine-demo")
def engine_demo() -> None:
    """Show the engine at work on the embedded default (SQLite + local threads): progress, limits,
    context serialisation, retries, an optional branch's warning, compensation, cancel, dedup,
    and a full queue rejecting a job. Takes about 10 seconds."""
    from .config import Settings
    from .pipeline import Registry
    from .pipelines import builtin
    from .pipelines import demo as demo_pipelines

    base = options.settings()
    plan = demo_plan()
    planned_jobs = len({j.dedup_key or id(j) for j in plan})
    settings = Settings(
        database_url=base.database_url,
        executor="local",
        max_running=4,
        max_queue=planned_jobs + DEMO_BURST_ACCEPTED,
        lease_ttl=10.0,
        poll_interval=0.1,
    )
    registry = Registry([*builtin.PIPELINES, *demo_pipelines.PIPELINES])
    engine = open_engine(settings, kind="demo", registry=registry)
    try:
        _demo_preflight(engine)
    except typer.Exit:
        engine.store.dispose()
        raise
    out.print(
        f"[bold]shelfwork engine-demo[/] on {escape(safe_url(settings.database_url))}: local executor, "
        f"at most {settings.max_running} running and {settings.max_queue} waiting"
    )

    # Submit everything before the engine starts, so the queue fills the same way every time.
    for job in plan:
        submitted = engine.submit(
            job.pipeline,
            job.params,
            context=job.context,
            priority=job.priority,
            dedup_key=job.dedup_key,
            note="demo",
        )
        job.job_id = submitted.job_id
        if not submitted.created:
            out.print(
                f"  dedup: a second submit with key {job.dedup_key!r} returned job "
                f"{submitted.job_id} instead of a new job"
            )
    burst_ids: list[int] = []
    rejections: list[str] = []
    for _ in range(DEMO_BURST):
        try:
            burst_ids.append(engine.submit("noop", note="demo").job_id)
        except QueueFull as exc:
            rejections.append(str(exc))
    out.print(
        f"  noop burst: {len(burst_ids)} accepted, {len(rejections)} rejected"
        + (f" ({rejections[0]})" if rejections else "")
    )

    # No scheduler loop: it would also sync and fire the database's cron schedules and poll its
    # trackers. The demo dispatches by itself (below) and needs nothing else.
    engine.start(scheduler=False)
    cancel_target = next(j for j in plan if j.expect == CANCELLED)
    cancel_at: float | None = None
    deadline = time.monotonic() + DEMO_TIMEOUT
    try:
        with Live(console=out, refresh_per_second=8, transient=False) as live:
            while True:
                engine.dispatch()
                views = _demo_views(engine, plan)
                burst = [engine.jobs.get(i, steps=False) for i in burst_ids]
                live.update(_demo_table(plan, views, burst, len(rejections)))
                target = views[cancel_target.job_id]  # type: ignore[index]
                if target.state == RUNNING and cancel_at is None:
                    cancel_at = time.monotonic() + 1.5
                if cancel_at is not None and time.monotonic() >= cancel_at and not target.finished:
                    engine.cancel(target.id, by="demo")
                    cancel_at = float("inf")
                if all(v.finished for v in [*views.values(), *burst]):
                    break
                if time.monotonic() > deadline:
                    engine.stop(wait=False)
                    fail(f"demo did not finish within {DEMO_TIMEOUT:.0f}s", EXIT_JOB_FAILED)
                time.sleep(0.1)
    except KeyboardInterrupt:
        for v in _demo_views(engine, plan).values():
            if not v.finished:
                engine.cancel(v.id, by="demo interrupted")
        engine.stop(wait=True)
        err.print("demo interrupted; its jobs were cancelled")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    engine.stop(wait=True)
    problems = _demo_check(engine, plan, burst_ids, rejections)
    out.print(_demo_summary(plan, _demo_views(engine, plan)))
    engine.store.dispose()
    if problems:
        for problem in problems:
            say_error(f"demo: {problem}")
        raise typer.Exit(EXIT_JOB_FAILED)
    out.print(
        "Every job ended as expected. Look closer with `shelfwork status ID` or `shelfwork jobs`"
        f"{' --database-url ' + escape(options.database_url) if options.database_url else ''}."
    )


def _demo_preflight(engine: Engine) -> None:
    """The demo shows admission limits, so it needs a queue nobody else is using."""
    depth = engine.admission.depth()
    live = depth["waiting"] + depth["held"] + depth["running"]
    servers = live_nodes(engine, scheduler=True)
    url = safe_url(engine.settings.database_url)
    if servers:
        fail(
            f"a `shelfwork serve` ({servers[0]}) is working on {url}; stop it or run the demo on "
            "another database: shelfwork --database-url sqlite:///demo.db demo",
            EXIT_BAD_INPUT,
        )
    if live:
        fail(
            f"{url} has {live} live job(s) (queued or running); the demo needs an idle queue to "
            "show admission limits. Cancel them (`shelfwork jobs --state queued`, `shelfwork "
            "cancel ID`), let `shelfwork serve` finish them, or run the demo on another database: "
            "shelfwork --database-url sqlite:///demo.db demo",
            EXIT_BAD_INPUT,
        )


def _demo_views(engine: Engine, plan: list[DemoJob]) -> dict[int, JobView]:
    ids = {j.job_id for j in plan if j.job_id is not None}
    return {i: engine.jobs.get(i, steps=False) for i in sorted(ids)}


def _demo_table(
    plan: list[DemoJob], views: dict[int, JobView], burst: list[JobView], rejected: int
) -> Group:
    table = Table(show_edge=False, title="demo jobs", title_justify="left")
    for column in ("id", "pipeline", "shows", "state", "progress", "notes"):
        table.add_column(column, no_wrap=column != "notes")
    shown: set[int] = set()
    for job in plan:
        if job.job_id is None or job.job_id in shown:
            continue
        shown.add(job.job_id)
        v = views[job.job_id]
        notes = Text()
        if v.error:
            notes.append(v.error, style="red")
        for w in v.warnings:
            notes.append(_warning_text(w), style="yellow")
        table.add_row(
            str(v.id), v.pipeline, job.label, styled_state(v.state), progress_text(v), notes
        )
    counts = {s: sum(1 for b in burst if b.state == s) for s in JOB_STATES}
    burst_state = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "-"
    table.add_row(
        "…",
        "noop",
        f"burst of {len(burst) + rejected}",
        Text(burst_state),
        "",
        Text(f"{rejected} rejected: queue full", style="yellow") if rejected else "",
    )
    return Group(table)


def _demo_check(
    engine: Engine, plan: list[DemoJob], burst_ids: list[int], rejections: list[str]
) -> list[str]:
    """Compare what happened with what the demo promises; any difference is a failed demo."""
    problems: list[str] = []
    views = {i: engine.jobs.get(i) for i in {j.job_id for j in plan if j.job_id}}
    for job in plan:
        v = views[job.job_id]  # type: ignore[index]
        if v.state != job.expect:
            job.problem = f"expected {job.expect}, got {v.state}"
    first, second = (j for j in plan if j.context is not None)
    ahead, behind = views[first.job_id], views[second.job_id]  # type: ignore[index]
    if ahead.finished_at and behind.started_at and behind.started_at < ahead.finished_at:
        second.problem = "ran while the first job of its context was still running"
    branchy = next(j for j in plan if j.params.get("fail_cover"))
    if not views[branchy.job_id].warnings:  # type: ignore[index]
        branchy.problem = "the failed optional branch left no warning"
    compensated = next(j for j in plan if j.params.get("fail_deposit"))
    kinds = [e["kind"] for e in engine.jobs.events(compensated.job_id)]  # type: ignore[arg-type]
    if "compensated" not in kinds:
        compensated.problem = "the compensation did not run"
    flaky = next(j for j in plan if j.pipeline == "demo-flaky")
    attempts = [s.attempts for s in views[flaky.job_id].steps]  # type: ignore[index]
    if attempts != [3]:
        flaky.problem = f"expected 3 attempts, saw {attempts}"
    dedup = [j.job_id for j in plan if j.dedup_key]
    if len(set(dedup)) != 1:
        problems.append(f"dedup key gave {len(set(dedup))} jobs instead of one")
    if len(burst_ids) != DEMO_BURST_ACCEPTED or len(rejections) != DEMO_BURST - DEMO_BURST_ACCEPTED:
        problems.append(
            f"queue bound: {len(burst_ids)} accepted and {len(rejections)} rejected, expected "
            f"{DEMO_BURST_ACCEPTED} and {DEMO_BURST - DEMO_BURST_ACCEPTED}"
        )
    for job_id in burst_ids:
        state = engine.jobs.get(job_id, steps=False).state
        if state != SUCCEEDED:
            problems.append(f"noop job {job_id} ended {state}")
    problems.extend(f"job {j.job_id} ({j.label}): {j.problem}" for j in plan if j.problem)
    return problems


def _demo_summary(plan: list[DemoJob], views: dict[int, JobView]) -> Table:
    table = Table(title="summary", title_justify="left", show_edge=False)
    for column in ("id", "shows", "expected", "state", "started", "took", "check"):
        table.add_column(column)
    shown: set[int] = set()
    for job in plan:
        if job.job_id is None or job.job_id in shown:
            continue
        shown.add(job.job_id)
        v = views[job.job_id]
        check = Text("✗ " + job.problem, style="red") if job.problem else Text("✓", style="green")
        table.add_row(
            str(v.id),
            job.label,
            job.expect,
            styled_state(v.state),
            v.started_at.astimezone().strftime("%H:%M:%S.%f")[:-4] if v.started_at else "-",
            seconds(v.duration),
            check,
        )
    return table


if __name__ == "__main__":  # pragma: no cover
    main()
