"""The dashboard's pages and forms, served by the API's app (`mount`).

GET  /                        jobs, updating themselves; the submit form for operators
GET  /jobs/{id}               one job: steps on a time axis, events, warnings, error, actions
GET  /admission  /schedules  /trackers  /locks (admins)  /dead-letters  /charts
GET  /fragments/...           the pieces of those pages that static/app.js fetches again
POST /jobs                    submit a job
POST /jobs/{id}/cancel|retry|release, /schedules/{name}/pause|resume

Pages need a dashboard session; without one they redirect to /login (fragments answer 401, and the
script says the session ended). Forms need the session's CSRF token and the operator role; viewers
are not shown them. Query strings are read by hand, so a bad one shows a page, never a JSON error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ..api.auth import Principal
from ..api.jobs import engine_of
from ..api.schemas import MAX_ID
from ..errors import (
    BadParams,
    JobNotFound,
    PreconditionFailed,
    QueueFull,
    ShelfworkError,
    UnknownPipeline,
)
from ..schedules import ScheduleNotFound
from ..store.database import utcnow
from ..store.models import JOB_STATES
from . import charts, harvesting, snapshots
from .access import (
    FragmentUser,
    LoginNeeded,
    OperatorForm,
    PageRefused,
    PageUser,
    forbidden,
    pages_of,
    refused_page,
    to_login,
)
from .i18n import Translator, language_of
from .rendering import STATIC, DashboardHeaders, Pages
from .submit import CONTROL, FormText, SubmitForm, pipeline_choices, read_submit_form

router = APIRouter(include_in_schema=False)
#: seconds between the page script's looks for changes
REFRESH = 2.0
JOBS_SHOWN = 50
EVENTS_SHOWN = 200
DEAD_LETTERS_SHOWN = 100
NOTICES = {
    "submitted",
    "deduplicated",
    "cancel_requested",
    "cancelled",
    "retried",
    "released",
    "paused",
    "resumed",
}


def mount(app: FastAPI, *, refresh: float = REFRESH) -> None:
    """Serve the dashboard on `app` (made by `shelfwork.api.create_app`): its pages, its static
    files, its login page, and its headers. `refresh`: seconds between live updates."""
    pages = Pages(refresh)
    app.state.dashboard = pages
    app.state.login_page = pages.login_page
    app.include_router(router)
    harvesting.mount(app, pages)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(LoginNeeded, to_login)  # type: ignore[arg-type]
    app.add_exception_handler(PageRefused, refused_page)  # type: ignore[arg-type]
    app.add_middleware(DashboardHeaders)


def _id(value: str | None) -> int | None:
    """A positive id from a query or path, or None for anything else."""
    if (
        value
        and value.isascii()
        and value.isdigit()
        and len(value) < 19
        and 0 < int(value) <= MAX_ID
    ):
        return int(value)
    return None


def _notice(request: Request) -> tuple[str, dict[str, str]] | None:
    """The message a redirect after a form asked for (`?done=submitted&job=7`)."""
    done = request.query_params.get("done")
    if done not in NOTICES:
        return None
    job = _id(request.query_params.get("job"))
    name = request.query_params.get("name", "")[:200]
    return f"notice.{done}", {"id": str(job or ""), "name": name}


# --- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    pipeline: str | None = None
    before: int | None = None

    @classmethod
    def of(cls, request: Request) -> JobFilter:
        q = request.query_params
        state = q.get("state")
        pipeline = q.get("pipeline") or None
        if pipeline is not None and (len(pipeline) > 200 or CONTROL.search(pipeline)):
            pipeline = None
        return cls(state if state in JOB_STATES else None, pipeline, _id(q.get("before")))

    def query(self, **extra: object) -> str:
        values = {"state": self.state, "pipeline": self.pipeline, **extra}
        return urlencode({k: v for k, v in values.items() if v is not None})


def _jobs_page(
    request: Request, user: Principal, form: SubmitForm | None = None, status: int = 200
) -> HTMLResponse:
    engine = engine_of(request)
    flt = JobFilter.of(request)
    jobs = engine.jobs.list(
        state=flt.state, pipeline=flt.pipeline, before_id=flt.before, limit=JOBS_SHOWN
    )
    choices = pipeline_choices(engine)
    form = form or SubmitForm(pipeline=choices[0].name if choices else "")
    if not form.params:
        chosen = next((c for c in choices if c.name == form.pipeline), None)
        form.params = chosen.example if chosen else "{}"
    return pages_of(request).render(
        request,
        "jobs.html",
        user,
        status=status,
        jobs=jobs,
        counts=engine.jobs.counts(),
        states=JOB_STATES,
        filter=flt,
        pipelines=engine.registry.names(),
        older=jobs[-1].id if len(jobs) == JOBS_SHOWN else None,
        live_src=None if flt.before else f"/fragments/jobs?{flt.query()}",
        choices=choices,
        form=form,
        notice=_notice(request),
    )


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, user: PageUser) -> HTMLResponse:
    return _jobs_page(request, user)


@router.get("/jobs")
def jobs_alias(request: Request) -> RedirectResponse:
    """`/jobs` is where people (and login `next` links) look for the list."""
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/{query}", status_code=307)


@router.get("/fragments/jobs", response_class=HTMLResponse)
def job_rows(request: Request, user: FragmentUser) -> HTMLResponse:
    flt = JobFilter.of(request)
    jobs = engine_of(request).jobs.list(state=flt.state, pipeline=flt.pipeline, limit=JOBS_SHOWN)
    return pages_of(request).render(request, "_job_rows.html", user, jobs=jobs)


@router.get("/fragments/job-counts", response_class=HTMLResponse)
def job_counts(request: Request, user: FragmentUser) -> HTMLResponse:
    counts = engine_of(request).jobs.counts()
    return pages_of(request).render(
        request, "_job_counts.html", user, counts=counts, states=JOB_STATES
    )


@router.post("/jobs", response_class=HTMLResponse)
def submit_job(
    request: Request,
    user: OperatorForm,
    pipeline: FormText = "",
    params: FormText = "",
    context: FormText = "",
    lane: FormText = "",
    priority: FormText = "0",
) -> Response:
    """Submit from the form; errors come back on the form, with what was typed kept."""
    t = Translator(language_of(request))
    form = SubmitForm(pipeline.strip(), params, context.strip(), lane.strip(), priority.strip())
    engine = engine_of(request)
    values = read_submit_form(form, engine, t)
    if form.errors:
        return _jobs_page(request, user, form, status=422)
    try:
        result = engine.submit(
            form.pipeline, note=f"submitted by {user.who} from the dashboard", **values
        )
    except BadParams as exc:
        form.errors.append(t("submit.error.params"))
        form.field_errors = exc.errors
        return _jobs_page(request, user, form, status=422)
    except UnknownPipeline:
        form.errors.append(t("submit.error.pipeline"))
        return _jobs_page(request, user, form, status=422)
    except PreconditionFailed as exc:
        form.errors.append(t("submit.error.refused", reason=exc.reason))
        return _jobs_page(request, user, form, status=409)
    except QueueFull as exc:
        form.errors.append(t("submit.error.queue_full", waiting=exc.waiting))
        return _jobs_page(request, user, form, status=429)
    done = "submitted" if result.created else "deduplicated"
    return RedirectResponse(f"/?{urlencode({'done': done, 'job': result.job_id})}", 303)


# --- one job ------------------------------------------------------------------------------------


def _job_values(request: Request, job_id: int) -> dict[str, Any]:
    engine = engine_of(request)
    try:
        job = engine.get(job_id)
    except JobNotFound:
        raise PageRefused(404, "job.not_found", id=job_id) from None
    events, more = snapshots.recent_events(engine, job_id, EVENTS_SHOWN)
    t = Translator(language_of(request))
    started = any(s.started_at for s in job.steps)
    timeline = charts.timeline_svg(job.steps, job.started_at, utcnow(), t) if started else None
    return {
        "job": job,
        "events": events,
        "more_events": more,
        "events_shown": EVENTS_SHOWN,
        "timeline": timeline,
    }


def _job_page(
    request: Request, user: Principal, job_id: int, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    return pages_of(request).render(
        request,
        "job.html",
        user,
        status=status,
        error=error,
        notice=_notice(request),
        **_job_values(request, job_id),
    )


def _job_id(value: str) -> int:
    job_id = _id(value)
    if job_id is None:
        raise PageRefused(404, "job.not_found", id=value[:30])
    return job_id


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, user: PageUser) -> HTMLResponse:
    return _job_page(request, user, _job_id(job_id))


@router.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
def job_live(job_id: str, request: Request, user: FragmentUser) -> HTMLResponse:
    values = _job_values(request, _job_id(job_id))
    return pages_of(request).render(request, "_job_live.html", user, **values)


@router.post("/jobs/{job_id}/{action}", response_class=HTMLResponse)
def job_action(job_id: str, action: str, request: Request, user: OperatorForm) -> Response:
    """Cancel, retry or release; back to the job's page, which says what happened."""
    number = _job_id(job_id)
    engine = engine_of(request)
    try:
        if action == "cancel":
            view = engine.cancel(number, by=user.who)
            done = "cancelled" if view.state == "cancelled" else "cancel_requested"
        elif action == "retry":
            engine.retry(number, by=user.who)
            done = "retried"
        elif action == "release":
            engine.release(number, by=user.who)
            done = "released"
        else:
            raise PageRefused(404, "error.not_found")
    except JobNotFound:
        raise PageRefused(404, "job.not_found", id=number) from None
    except ShelfworkError as exc:
        if isinstance(exc, PageRefused):
            raise
        status = 429 if isinstance(exc, QueueFull) else 409
        return _job_page(request, user, number, error=str(exc), status=status)
    return RedirectResponse(f"/jobs/{number}?done={done}", status_code=303)


# --- the other views ----------------------------------------------------------------------------


@router.get("/admission", response_class=HTMLResponse)
def admission_page(request: Request, user: PageUser) -> HTMLResponse:
    snapshot = snapshots.admission(engine_of(request))
    return pages_of(request).render(request, "admission.html", user, admission=snapshot)


def _schedules_page(
    request: Request, user: Principal, error: str | None = None, status: int = 200
) -> HTMLResponse:
    return pages_of(request).render(
        request,
        "schedules.html",
        user,
        status=status,
        schedules=engine_of(request).schedules.list(),
        notice=_notice(request),
        error=error,
    )


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request, user: PageUser) -> HTMLResponse:
    return _schedules_page(request, user)


@router.post("/schedules/{name}/{action}", response_class=HTMLResponse)
def schedule_action(name: str, action: str, request: Request, user: OperatorForm) -> Response:
    schedules = engine_of(request).schedules
    try:
        if action == "pause":
            schedules.pause(name, by=user.who)
        elif action == "resume":
            schedules.resume(name, by=user.who)
        else:
            raise PageRefused(404, "error.not_found")
    except ScheduleNotFound:
        raise PageRefused(404, "schedules.not_found", name=name[:200]) from None
    except PageRefused:
        raise
    except ShelfworkError as exc:
        return _schedules_page(request, user, error=str(exc), status=409)
    done = "paused" if action == "pause" else "resumed"
    return RedirectResponse(f"/schedules?{urlencode({'done': done, 'name': name})}", 303)


@router.get("/trackers", response_class=HTMLResponse)
def trackers_page(request: Request, user: PageUser) -> HTMLResponse:
    engine = engine_of(request)
    return pages_of(request).render(
        request,
        "trackers.html",
        user,
        trackers=snapshots.trackers(engine),
        lag=engine.trackers.lag(),
        now=utcnow(),
    )


@router.get("/locks", response_class=HTMLResponse)
def locks_page(request: Request, user: PageUser) -> HTMLResponse:
    """Admins only, as in the API: lock names and owners describe what integrations touch."""
    if not user.allows("admin"):
        raise forbidden(user, "admin")
    locks = snapshots.locks(engine_of(request))
    return pages_of(request).render(request, "locks.html", user, locks=locks, now=utcnow())


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(request: Request, user: PageUser) -> HTMLResponse:
    job_id = _id(request.query_params.get("job"))
    before = _id(request.query_params.get("before"))
    letters = snapshots.dead_letters(
        engine_of(request), job_id=job_id, before_id=before, limit=DEAD_LETTERS_SHOWN
    )
    older = None
    if len(letters) == DEAD_LETTERS_SHOWN:
        older = urlencode({k: v for k, v in (("job", job_id), ("before", letters[-1]["id"])) if v})
    return pages_of(request).render(
        request, "dead_letters.html", user, letters=letters, job_filter=job_id, older=older
    )


@router.get("/charts", response_class=HTMLResponse)
def charts_page(request: Request, user: PageUser) -> HTMLResponse:
    now = utcnow()
    finished = charts.finished_since(engine_of(request).store, charts.window_start(now))
    hours = charts.hourly(finished, now)
    t = Translator(language_of(request))
    return pages_of(request).render(
        request,
        "charts.html",
        user,
        any_finished=bool(finished),
        throughput=charts.throughput_svg(hours, t),
        durations=charts.durations_svg(hours, t),
        pipelines=charts.per_pipeline(finished),
    )
