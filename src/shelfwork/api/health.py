"""`/healthz` for load balancers and `/metrics` for Prometheus. Neither needs a token: they show
counts and timings, never job data or secrets.

Jobs by state, queue depth and tracker lag are read from the database, so they hold for the whole
cluster. Durations, rejections, lock waits, polls and schedule firings are counted in this process:
with the Celery executor jobs run (and are timed) in the workers, so scrape those too for durations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from ..metrics import BUCKETS, Histogram
from ..store.models import JOB_STATES
from .jobs import engine_of
from .schemas import CheckOut, HealthOut

log = logging.getLogger("shelfwork.api")
router = APIRouter(tags=["health"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The database or executor is down."}},
    summary="Whether the metadata database and the executor are reachable",
)
def healthz(request: Request, response: Response) -> HealthOut:
    engine = engine_of(request)
    try:
        engine.store.ping()
        database = CheckOut(ok=True, kind=engine.store.dialect)
    except Exception as exc:
        log.warning("health check: database unreachable: %s", exc)
        database = CheckOut(ok=False, kind=engine.store.dialect)
    try:
        executor_health = engine.executor.health()
        executor = CheckOut(ok=bool(executor_health.get("ok")), kind=engine.executor.name)
    except Exception as exc:
        log.warning("health check: executor unreachable: %s", exc)
        executor = CheckOut(ok=False, kind=engine.executor.name)
    ok = database.ok and executor.ok
    if not ok:
        response.status_code = 503
    return HealthOut(ok=ok, database=database, executor=executor)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics (text exposition format)",
)
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(render_metrics(request), media_type=PROMETHEUS_TEXT)


def render_metrics(request: Request) -> str:
    engine = engine_of(request)
    counts = engine.jobs.counts()
    depth = engine.admission.depth()
    m = engine.metrics
    out: list[str] = []
    gauge = _Family(out)
    gauge.start("shelfwork_jobs", "gauge", "Jobs in the metadata database, by state.")
    for state in JOB_STATES:
        gauge.sample("shelfwork_jobs", {"state": state}, counts.get(state, 0))
    gauge.single("shelfwork_queue_depth", "gauge", "Jobs waiting to run.", depth["waiting"])
    gauge.single(
        "shelfwork_jobs_held",
        "gauge",
        "Queued jobs held for a person (release them).",
        depth["held"],
    )
    gauge.single(
        "shelfwork_queue_limit",
        "gauge",
        "Most jobs that may wait (max_queue).",
        engine.settings.max_queue,
    )
    gauge.single(
        "shelfwork_running_limit",
        "gauge",
        "Most jobs that may run (max_running).",
        engine.settings.max_running,
    )
    gauge.single(
        "shelfwork_admission_rejections_total",
        "counter",
        "Submissions and retries refused because the queue was full (this process).",
        engine.admission.rejections,
    )
    gauge.single(
        "shelfwork_lock_waits_total",
        "counter",
        "Lock acquisitions that had to wait (this process).",
        engine.locks.waits,
    )
    gauge.single(
        "shelfwork_tracker_lag_seconds",
        "gauge",
        "How far the most overdue tracker poll is behind.",
        engine.trackers.lag(),
    )
    gauge.single(
        "shelfwork_tracker_polls_total",
        "counter",
        "Tracker polls run (this process).",
        m.tracker_polls,
    )
    gauge.single(
        "shelfwork_schedule_fires_total",
        "counter",
        "Schedule firings claimed (this process).",
        m.schedule_fires,
    )
    gauge.histograms(
        "shelfwork_job_duration_seconds",
        "Job run time by pipeline (this process).",
        (({"pipeline": p}, h) for p, h in list(m.jobs.items())),
    )
    gauge.histograms(
        "shelfwork_step_duration_seconds",
        "Step run time by pipeline and step (this process).",
        (({"pipeline": p, "step": s}, h) for (p, s), h in list(m.steps.items())),
    )
    return "\n".join(out) + "\n"


class _Family:
    """Writes metric families in the Prometheus text format."""

    def __init__(self, out: list[str]) -> None:
        self.out = out

    def start(self, name: str, kind: str, help_text: str) -> None:
        self.out.append(f"# HELP {name} {help_text}")
        self.out.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        self.out.append(f"{name}{_labels(labels)} {_number(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.start(name, kind, help_text)
        self.sample(name, {}, value)

    def histograms(
        self, name: str, help_text: str, series: Iterable[tuple[dict[str, str], Histogram]]
    ) -> None:
        self.start(name, "histogram", help_text)
        for labels, hist in series:
            counts = list(hist.counts)
            running = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else _number(bound)
                self.sample(f"{name}_bucket", {**labels, "le": le}, running)
            self.sample(f"{name}_sum", labels, hist.total)
            self.sample(f"{name}_count", labels, running)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
