"""The dashboard's OAI-PMH harvesting pages, served when the OAI package is enabled (its `oai-run`
pipeline is registered); without it they answer "not enabled" and the nav leaves them out.

GET  /networks                      each network: definition, schedule, latest and last good
                                    snapshot; a run form per network for operators
POST /networks/{acronym}/run        submit `oai-run` as POST /api/v1/oai/networks/{acronym}/run does
GET  /networks/{acronym}            its snapshots and the newest one's log, live while it runs
GET  /snapshots/{id}                diagnose: totals, per-rule charts, value histograms, invalid records
POST /snapshots/{id}/confirm        confirm a suspicious (empty) harvest, as the API's confirm does
GET  /snapshots/{id}/record         one record: failed rules, problem, metadata as harvested/published
GET  /search                        the built-in full-text search
GET  /fragments/networks/{acronym}[/status], /fragments/snapshots/{id}   what static/app.js refetches

Reads go through the OAI package's Networks/Snapshots and the API's helpers (`api.networks`), so a
page shows what the JSON API answers. Harvested text (titles, values, identifiers, metadata) is
data: the templates escape it, the charts escape it, and only search snippets carry markup, our
own <mark> around escaped text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError

from ..api.auth import Principal
from ..api.jobs import engine_of
from ..api.networks import record_metadata, run_network
from ..engine import Engine
from ..errors import ConfigError, QueueFull, ShelfworkError
from ..schedules import ScheduleNotFound, ScheduleView
from ..search import MAX_OFFSET, MAX_QUERY_CHARS, BuiltinSearch, SearchQueryError, SearchUnavailable
from .access import FragmentUser, OperatorForm, PageRefused, PageUser, pages_of
from .diagnose_charts import (
    RuleCounts,
    TransformerCounts,
    rule_verdicts_svg,
    transformer_changes_svg,
    values_svg,
)
from .i18n import Translator, language_of
from .rendering import Pages
from .submit import CONTROL, FormText

router = APIRouter(include_in_schema=False)
SNAPSHOTS_SHOWN = 50
LOG_SHOWN = 500
INVALID_SHOWN = 50
TOP_VALUES = 10
HITS_SHOWN = 20
#: characters of a record's metadata shown on its page (the API has the whole text)
METADATA_SHOWN = 200_000
MAX_IDENTIFIER = 500
#: incremental choices of the run form: as each action says, on, off
INCREMENTAL = {"": None, "yes": True, "no": False}
#: what a redirect after the run form says (`?done=...`)
RUN_NOTICES = {"run": "run.submitted", "deduplicated": "run.deduplicated"}
#: snapshot states as the job-state badges colour them (the stylesheet knows those)
BADGE = {
    "harvesting": "running",
    "validating": "running",
    "harvested": "queued",
    "empty": "skipped",
    "valid": "succeeded",
    "harvest_failed": "failed",
    "validation_failed": "failed",
    "harvest_stopped": "cancelled",
    "suspicious": "failed",
}
#: what a redirect after confirming a snapshot says (`?done=confirmed`)
SNAPSHOT_NOTICES = {"confirmed": "snapshot.suspicious.confirmed"}


def mount(app: FastAPI, pages: Pages) -> None:
    """Serve these pages on `app`; the nav shows them when the OAI package is enabled."""
    pages.env.globals["harvesting"] = enabled(app.state.engine)
    pages.env.globals["snapshot_badge"] = BADGE
    app.include_router(router)


def enabled(engine: Engine) -> bool:
    return "oai-run" in engine.registry


def _oai(request: Request) -> ModuleType:
    """The OAI package, or a "not enabled" page when this server does not run it."""
    if not enabled(engine_of(request)):
        raise PageRefused(404, "harvesting.not_enabled")
    from ..pipelines import oai

    return oai


def _id(value: str | None) -> int | None:
    """A positive id from a path or query ("²" is a digit to isdigit, not to int: ASCII only)."""
    if value and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value) or None
    return None


def _text(value: str | None, limit: int) -> str | None:
    """A query value usable as given: not empty, at most `limit` characters, no control ones."""
    if not value or len(value) > limit or CONTROL.search(value):
        return None
    return value


def _busy(engine: Engine, context: str) -> bool:
    """Whether a job of the network (its context) is queued or running: its pages may change."""
    return any(engine.jobs.list(state=s, context=context, limit=1) for s in ("running", "queued"))


# --- networks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionChoice:
    name: str
    description: str
    #: the network's schedule runs it (what a run without chosen actions does)
    scheduled: bool


@dataclass
class RunForm:
    """The run form as sent, kept when it comes back with an error."""

    actions: list[str] = field(default_factory=list)
    incremental: str = ""
    error: str | None = None


@dataclass(frozen=True)
class NetworkCard:
    """A network with what its pages show beside its definition."""

    network: Any
    schedule: ScheduleView | None
    latest: Any | None
    last_good: Any | None
    busy: bool
    actions: list[ActionChoice]

    @property
    def scheduled_actions(self) -> list[str]:
        return [a.name for a in self.actions if a.scheduled]


def _network(oai: ModuleType, engine: Engine, acronym: str) -> Any:
    try:
        return oai.Networks(engine.store).get(acronym)
    except oai.snapshots.UnknownNetwork:
        raise PageRefused(404, "network.not_found", acronym=acronym[:64]) from None


def _card(oai: ModuleType, engine: Engine, network: Any) -> NetworkCard:
    snapshots = oai.snapshots.Snapshots(engine.store)
    latest = snapshots.list(network.acronym, limit=1)
    try:
        schedule = engine.schedules.get(oai.schedule_name(network.acronym))
    except ScheduleNotFound:
        schedule = None
    actions = [
        ActionChoice(a.name, a.description, a.runs_on_schedule(network.properties))
        for a in oai.config_for(engine).actions
    ]
    return NetworkCard(
        network=network,
        schedule=schedule,
        latest=latest[0] if latest else None,
        last_good=snapshots.last_good(network.acronym),
        busy=_busy(engine, network.context),
        actions=actions,
    )


def _run_notice(request: Request, known: list[str]) -> dict[str, Any] | None:
    """What a redirect after the run form asked to say (`?done=run&job=7&actions=A,B`)."""
    q = request.query_params
    job = _id(q.get("job"))
    key = RUN_NOTICES.get(q.get("done", ""))
    if key is None or job is None:
        return None
    actions = [a for a in q.get("actions", "").split(",") if a in known]
    return {"key": key, "job": job, "actions": " → ".join(actions)}


def _networks_page(
    request: Request,
    user: Principal,
    forms: dict[str, RunForm] | None = None,
    status: int = 200,
) -> HTMLResponse:
    oai = _oai(request)
    engine = engine_of(request)
    cards = [_card(oai, engine, n) for n in oai.Networks(engine.store).list()]
    return pages_of(request).render(
        request,
        "networks.html",
        user,
        status=status,
        cards=cards,
        forms=forms or {},
    )


@router.get("/networks", response_class=HTMLResponse)
def networks_page(request: Request, user: PageUser) -> HTMLResponse:
    return _networks_page(request, user)


@router.get("/fragments/networks/{acronym}/status", response_class=HTMLResponse)
def network_status(acronym: str, request: Request, user: FragmentUser) -> HTMLResponse:
    oai = _oai(request)
    engine = engine_of(request)
    card = _card(oai, engine, _network(oai, engine, acronym))
    return pages_of(request).render(request, "_network_status.html", user, card=card)


def _network_values(request: Request, acronym: str) -> dict[str, Any]:
    oai = _oai(request)
    engine = engine_of(request)
    card = _card(oai, engine, _network(oai, engine, acronym))
    snapshots = oai.snapshots.Snapshots(engine.store)
    rows = snapshots.list(card.network.acronym, limit=SNAPSHOTS_SHOWN)
    log = snapshots.log_lines(rows[0].id, limit=LOG_SHOWN) if rows else []
    return {"card": card, "snapshots": rows, "log": log, "log_shown": LOG_SHOWN}


def _network_page(
    request: Request,
    user: Principal,
    acronym: str,
    form: RunForm | None = None,
    status: int = 200,
) -> HTMLResponse:
    values = _network_values(request, acronym)
    card: NetworkCard = values["card"]
    known = [a.name for a in card.actions]
    return pages_of(request).render(
        request,
        "network.html",
        user,
        status=status,
        notice=_run_notice(request, known),
        forms={card.network.acronym: form} if form else {},
        **values,
    )


@router.get("/networks/{acronym}", response_class=HTMLResponse)
def network_page(acronym: str, request: Request, user: PageUser) -> HTMLResponse:
    return _network_page(request, user, acronym)


@router.get("/fragments/networks/{acronym}", response_class=HTMLResponse)
def network_live(acronym: str, request: Request, user: FragmentUser) -> HTMLResponse:
    values = _network_values(request, acronym)
    return pages_of(request).render(request, "_network_live.html", user, **values)


@router.post("/networks/{acronym}/run", response_class=HTMLResponse)
def run_network_form(
    acronym: str,
    request: Request,
    user: OperatorForm,
    action: Annotated[list[str] | None, Form()] = None,
    incremental: FormText = "",
    back: FormText = "",
) -> Response:
    """Run the chosen actions (none chosen: the scheduled ones); errors come back on the form."""
    oai = _oai(request)
    engine = engine_of(request)
    t = Translator(language_of(request))
    network = _network(oai, engine, acronym)
    known = [a.name for a in oai.config_for(engine).actions]
    chosen = list(dict.fromkeys(action or []))
    form = RunForm(chosen, incremental if incremental in INCREMENTAL else "")

    def refused(message: str, status: int) -> HTMLResponse:
        form.error = message
        if back == "network":
            return _network_page(request, user, network.acronym, form, status)
        return _networks_page(request, user, {network.acronym: form}, status)

    unknown = [a for a in chosen if a not in known]
    if unknown or incremental not in INCREMENTAL:
        return refused(t("run.error.choice"), 422)
    try:
        run = run_network(
            engine, network, chosen or None, INCREMENTAL[incremental], by=f"{user.who} (dashboard)"
        )
    except ConfigError as exc:
        return refused(t("run.error.refused", reason=str(exc)), 422)
    except QueueFull as exc:
        return refused(t("submit.error.queue_full", waiting=exc.waiting), 429)
    except ShelfworkError as exc:
        return refused(t("run.error.refused", reason=str(exc)), 409)
    query = {
        "done": "run" if run.created else "deduplicated",
        "job": run.job_id,
        "actions": ",".join(run.actions),
    }
    return RedirectResponse(f"/networks/{network.acronym}?{urlencode(query)}", 303)


# --- a snapshot's diagnose ----------------------------------------------------------------------


@dataclass(frozen=True)
class ValueCounts:
    """A rule's most frequent values (most first), and how many occurrences the rest were."""

    top: list[tuple[str, int]]
    other: int

    @classmethod
    def of(cls, histogram: Any) -> ValueCounts:
        ranked = sorted(histogram.counts.items(), key=lambda item: (-item[1], item[0]))
        rest = sum(count for _, count in ranked[TOP_VALUES:])
        return cls(ranked[:TOP_VALUES], histogram.other + rest)

    @property
    def empty(self) -> bool:
        return not self.top and not self.other


@dataclass(frozen=True)
class RuleView:
    rule_id: str
    description: str
    quantifier: str
    mandatory: bool
    valid: int
    invalid: int
    valid_values: ValueCounts
    invalid_values: ValueCounts
    valid_chart: Markup | None
    invalid_chart: Markup | None


@dataclass
class Diagnose:
    """What the snapshot's stats say, ready for the page (empty before its validation)."""

    ruleset: str = ""
    detailed: bool = False
    rules: list[RuleView] = field(default_factory=list)
    rules_chart: Markup | None = None
    transformers: list[Any] = field(default_factory=list)
    transformers_name: str = ""
    transform_totals: Any | None = None
    transform_chart: Markup | None = None
    unreadable: str | None = None


def diagnose_of(stats: dict[str, Any] | None, t: Translator) -> Diagnose:
    """The snapshot's `stats` column (ValidationStats, TransformStats) as the page shows it."""
    from ..pipelines.oai.transform import TransformStats
    from ..pipelines.oai.validation import ValidationStats

    result = Diagnose()
    if not stats:
        return result
    try:
        validation = (
            ValidationStats.model_validate(stats["validation"]) if stats.get("validation") else None
        )
        transformation = (
            TransformStats.model_validate(stats["transformation"])
            if stats.get("transformation")
            else None
        )
    except ValidationError as exc:
        result.unreadable = str(exc).splitlines()[0]
        return result
    if validation is not None:
        result.ruleset = validation.ruleset
        result.detailed = validation.detailed
        for rule_id, rule in validation.rules.items():
            valid_values = ValueCounts.of(rule.valid_values)
            invalid_values = ValueCounts.of(rule.invalid_values)
            charts = {}
            for kind, values in (("valid", valid_values), ("invalid", invalid_values)):
                title = t(f"diagnose.values_{kind}", rule=rule_id)
                charts[kind] = (
                    None
                    if values.empty or not validation.detailed
                    else values_svg(values.top, values.other, kind, title, t)
                )
            result.rules.append(
                RuleView(
                    rule_id=rule_id,
                    description=rule.description,
                    quantifier=str(rule.quantifier.value),
                    mandatory=rule.mandatory,
                    valid=rule.valid_count,
                    invalid=rule.invalid_count,
                    valid_values=valid_values,
                    invalid_values=invalid_values,
                    valid_chart=charts["valid"],
                    invalid_chart=charts["invalid"],
                )
            )
        if result.rules:
            result.rules_chart = rule_verdicts_svg(
                [RuleCounts(r.rule_id, r.mandatory, r.valid, r.invalid) for r in result.rules], t
            )
    if transformation is not None:
        result.transformers_name = transformation.transformers
        result.transform_totals = transformation
        result.transformers = [
            TransformerCounts(rule_id, rule.type, rule.changed, rule.failed)
            for rule_id, rule in transformation.rules.items()
        ]
        if result.transformers:
            result.transform_chart = transformer_changes_svg(result.transformers, t)
    return result


def _snapshot(oai: ModuleType, engine: Engine, value: str) -> Any:
    snapshot_id = _id(value)
    if snapshot_id is not None:
        try:
            return oai.snapshots.Snapshots(engine.store).get(snapshot_id)
        except ShelfworkError:
            pass
    raise PageRefused(404, "snapshot.not_found", id=value[:30])


def _snapshot_values(request: Request, value: str) -> dict[str, Any]:
    oai = _oai(request)
    engine = engine_of(request)
    row = _snapshot(oai, engine, value)
    snapshots = oai.snapshots.Snapshots(engine.store)
    after = _text(request.query_params.get("after"), MAX_IDENTIFIER)
    invalid = snapshots.records(row.id, after=after, limit=INVALID_SHOWN + 1, valid=False)
    more = len(invalid) > INVALID_SHOWN
    invalid = invalid[:INVALID_SHOWN]
    network = _network(oai, engine, row.network)
    in_progress = row.state in ("harvesting", "harvested", "validating")
    return {
        "snapshot": row,
        "network": network,
        "notice": SNAPSHOT_NOTICES.get(request.query_params.get("done", "")),
        "problem": None,
        "diagnose": diagnose_of(row.stats, Translator(language_of(request))),
        "invalid": invalid,
        "after": after,
        "next_after": invalid[-1].identifier if more else None,
        "log": snapshots.log_lines(row.id, limit=LOG_SHOWN),
        "top_values": TOP_VALUES,
        "live": in_progress and _busy(engine, network.context),
        "live_src": f"/fragments/snapshots/{row.id}"
        + (f"?{urlencode({'after': after})}" if after else ""),
    }


@router.get("/snapshots/{snapshot_id}", response_class=HTMLResponse)
def snapshot_page(snapshot_id: str, request: Request, user: PageUser) -> HTMLResponse:
    values = _snapshot_values(request, snapshot_id)
    return pages_of(request).render(request, "snapshot.html", user, **values)


@router.get("/fragments/snapshots/{snapshot_id}", response_class=HTMLResponse)
def snapshot_live(snapshot_id: str, request: Request, user: FragmentUser) -> HTMLResponse:
    values = _snapshot_values(request, snapshot_id)
    return pages_of(request).render(request, "_snapshot_live.html", user, **values)


@router.post("/snapshots/{snapshot_id}/confirm", response_class=HTMLResponse)
def confirm_snapshot_form(snapshot_id: str, request: Request, user: OperatorForm) -> Response:
    """Confirm a suspicious snapshot (POST /api/v1/oai/snapshots/{id}/confirm does the same)."""
    oai = _oai(request)
    engine = engine_of(request)
    row = _snapshot(oai, engine, snapshot_id)
    try:
        oai.snapshots.Snapshots(engine.store).confirm_empty(row.id, f"{user.who} (dashboard)")
    except oai.snapshots.NotSuspicious:
        values = _snapshot_values(request, snapshot_id)
        t = Translator(language_of(request))
        values["problem"] = t("snapshot.suspicious.not", state=t(f"oai.state.{row.state}"))
        return pages_of(request).render(request, "snapshot.html", user, status=409, **values)
    return RedirectResponse(f"/snapshots/{row.id}?done=confirmed", 303)


def _shown(text: str | None) -> tuple[str | None, bool]:
    """Metadata as the page shows it: at most METADATA_SHOWN characters, and whether it was cut."""
    if text is None or len(text) <= METADATA_SHOWN:
        return text, False
    return text[:METADATA_SHOWN], True


@router.get("/snapshots/{snapshot_id}/record", response_class=HTMLResponse)
def record_page(snapshot_id: str, request: Request, user: PageUser) -> HTMLResponse:
    oai = _oai(request)
    engine = engine_of(request)
    snapshot = _snapshot(oai, engine, snapshot_id)
    raw = request.query_params.get("identifier", "")
    identifier = _text(raw, MAX_IDENTIFIER)
    row = (
        oai.snapshots.Snapshots(engine.store).record(snapshot.id, identifier)
        if identifier
        else None
    )
    if row is None:
        raise PageRefused(404, "record.not_found", id=snapshot.id, identifier=raw[:200])
    original, published = record_metadata(engine, snapshot.network, row)
    original, original_cut = _shown(original)
    published, published_cut = _shown(published)
    return pages_of(request).render(
        request,
        "oai_record.html",
        user,
        snapshot=snapshot,
        record=row,
        original=original,
        original_cut=original_cut,
        published=published,
        published_cut=published_cut,
        shown_chars=METADATA_SHOWN,
    )


# --- search -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchView:
    """The search form as sent and what it found (or why it could not)."""

    query: str
    network: str
    offset: int
    page: Any | None = None
    error: str | None = None

    def link(self, offset: int) -> str:
        values = {"q": self.query, "network": self.network, "offset": offset}
        return "/search?" + urlencode({k: v for k, v in values.items() if v})


def snippet(hit: Any) -> Markup:
    """A hit's snippet for the page: all of its text escaped, matched words in our own <mark>."""
    return Markup(hit.snippet_html())  # search.SearchHit escapes every piece it joins


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, user: PageUser) -> HTMLResponse:
    oai = _oai(request)
    engine = engine_of(request)
    t = Translator(language_of(request))
    q = request.query_params
    query = q.get("q", "")
    network = q.get("network", "")
    offset = _id(q.get("offset")) or 0
    view = SearchView(query[:MAX_QUERY_CHARS], network[:64], min(offset, MAX_OFFSET))
    status = 200
    try:
        found = BuiltinSearch(engine.store).search(
            query,
            network=network or None,
            limit=HITS_SHOWN,
            offset=view.offset,
        )
        view = SearchView(view.query, view.network, view.offset, page=found)
    except SearchQueryError as exc:
        view = SearchView(
            view.query, view.network, view.offset, error=t("search.error", reason=exc)
        )
        status = 422
    except SearchUnavailable as exc:
        view = SearchView(
            view.query, view.network, view.offset, error=t("search.unavailable", reason=exc)
        )
        status = 503
    return pages_of(request).render(
        request,
        "search.html",
        user,
        status=status,
        search=view,
        networks=[n.acronym for n in oai.Networks(engine.store).list()],
        hits_shown=HITS_SHOWN,
        snippet=snippet,
    )
