"""An emulator of Apache Solr's JSON update API (and enough of select to read documents back), for
the tests and the demo.

It follows Solr's own contract (Reference Guide "Indexing with Update Handlers", the JSON loader
and the error writer of Solr 9), not shelfwork's client; each behaviour names its point:

S1 update bodies: a JSON array adds documents; an object holds commands, in order, keys may repeat:
   `add` (`{"doc": {...}}` or an array), `delete` (an id, a list of ids or `{"id"}`/`{"query"}`
   objects, or one such object), `commit` / `optimize` (an options object), `rollback` (`{}`).
   A scalar at the top level is ignored, an unknown command is a 400. Commands before a failing
   one stay applied, as in Solr.
S2 visibility: adds and deletes are invisible to select until a commit (`{"commit": {}}`, or the
   request parameters commit / softCommit / optimize = true); rollback drops what is not committed.
   A document added again with its id replaces the old one and moves to the end (index order).
   [sandbox] commitWithin commits at the end of the request (Solr: within that many ms).
S3 schema: the uniqueKey `id` is required; fields the schema does not know are refused; a
   single-valued field refuses several values; `pdate` fields take ISO-8601 UTC instants only.
S4 errors: HTTP status = `responseHeader.status` = `error.code`, with `error.msg` saying why and
   `error.metadata` naming the exception class; a wrong Content-Type is 415, a missing core 404
   (an HTML page, as Jetty answers), missing or wrong Basic credentials 401.
S5 select: `q` and any `fq` of the forms `*:*`, `field:value`, `field:"value"` (exact match on
   string fields); rows, start, fl. [sandbox] No scoring, sorting, or other query syntax: those
   are a 400 saying so.

Faults (from Python through `SolrState`): `down` answers 503 to everything, `fail_next` makes the
next requests fail with a chosen status, `latency` delays each request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import RunningServer, serve

MAX_BODY = 64 << 20
JSON_TYPES = ("application/json", "text/json")
LOADER_TYPES = (
    "application/xml, application/csv, application/json, application/javabin, text/csv, "
    "text/json, text/xml"
)
SOLR_EXCEPTION = "org.apache.solr.common.SolrException"
SYNTAX_ERROR = "org.apache.solr.search.SyntaxError"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_TERM = re.compile(
    r'^([A-Za-z_][A-Za-z0-9_]*):(?:"((?:[^"\\]|\\.)*)"|((?:[^\s"\\()\[\]{}:]|\\.)+))$'
)
_TRUE = {"true", "on", "yes"}


@dataclass
class SolrSchema:
    """What the core accepts (S3): single-valued fields with their types, multi-valued string
    fields, and prefixes of multi-valued string dynamic fields (`dc_` stands for `dc_*`)."""

    unique_key: str = "id"
    single: dict[str, str] = field(
        default_factory=lambda: {
            "id": "string",
            "network": "string",
            "identifier": "string",
            "datestamp": "pdate",
        }
    )
    multi: frozenset[str] = frozenset({"sets"})
    dynamic_prefixes: tuple[str, ...] = ("dc_", "dcterms_", "f_")

    def kind(self, name: str) -> str | None:
        """'string' / 'pdate' (single), 'strings' (multi), or None for a field it does not know."""
        if name in self.single:
            return self.single[name]
        if name in self.multi or any(name.startswith(p) for p in self.dynamic_prefixes):
            return "strings"
        return None


@dataclass
class SolrCore:
    name: str
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)
    working: dict[str, dict[str, Any]] = field(default_factory=dict)
    commits: int = 0


@dataclass
class Failure:
    remaining: int
    status: int


@dataclass
class SolrState:
    """The emulated server: its cores, schema, optional Basic credentials and fault switches."""

    cores: dict[str, SolrCore] = field(default_factory=lambda: {"oai": SolrCore("oai")})
    schema: SolrSchema = field(default_factory=SolrSchema)
    credentials: tuple[str, str] | None = None
    down: bool = False
    latency: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _version: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def add_core(self, name: str) -> SolrCore:
        with self._lock:
            return self.cores.setdefault(name, SolrCore(name))

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` requests answer `status` with a Solr error body."""
        with self._lock:
            self.failures.append(Failure(count, status))

    def committed(self, core: str = "oai") -> dict[str, dict[str, Any]]:
        """What select sees now, by id (a copy)."""
        with self._lock:
            return {k: dict(v) for k, v in self.cores[core].committed.items()}

    def uncommitted(self, core: str = "oai") -> bool:
        with self._lock:
            c = self.cores[core]
            return c.working != c.committed

    def take_failure(self) -> int | None:
        with self._lock:
            for failure in self.failures:
                if failure.remaining > 0:
                    failure.remaining -= 1
                    self.failures = [f for f in self.failures if f.remaining > 0]
                    return failure.status
            return None

    def next_version(self) -> int:
        self._version += 1
        return (int(time.time() * 1000) << 20) + self._version


class BadRequest(Exception):
    """A Solr error to answer with (S4)."""

    def __init__(self, msg: str, code: int = 400, error_class: str = SOLR_EXCEPTION) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.error_class = error_class


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order: Solr's commands may repeat a key."""


def error_body(code: int, msg: str, error_class: str = SOLR_EXCEPTION, qtime: int = 0) -> Any:
    return {
        "responseHeader": {"status": code, "QTime": qtime},
        "error": {
            "metadata": ["error-class", error_class, "root-error-class", error_class],
            "msg": msg,
            "code": code,
        },
    }


def jetty_page(status: int, reason: str, path: str) -> HTMLResponse:
    body = (
        '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>\n'
        f"<title>Error {status} {reason}</title>\n</head>\n<body>\n"
        f"<h2>HTTP ERROR {status} {reason}</h2>\n<table>\n<tr><th>URI:</th><td>{path}</td></tr>\n"
        f"<tr><th>STATUS:</th><td>{status}</td></tr>\n</table>\n</body>\n</html>\n"
    )
    return HTMLResponse(body, status)


# --- S5 queries -----------------------------------------------------------------------------------


def parse_query(schema: SolrSchema, query: str) -> Callable[[dict[str, Any]], bool]:
    query = query.strip()
    if query in ("*:*", "*"):
        return lambda _doc: True
    match = _TERM.match(query)
    if match is None:
        raise BadRequest(
            f"{SYNTAX_ERROR}: Cannot parse '{query}': [sandbox] only *:*, field:value and "
            'field:"value" are emulated',
            error_class=SYNTAX_ERROR,
        )
    name, quoted, bare = match.groups()
    if schema.kind(name) is None:
        raise BadRequest(f"undefined field {name}")
    value = re.sub(r"\\(.)", r"\1", quoted if quoted is not None else bare)

    def matches(doc: dict[str, Any]) -> bool:
        stored = doc.get(name)
        values = stored if isinstance(stored, list) else [stored]
        return value in [str(v) for v in values if v is not None]

    return matches


# --- S1/S3 updates --------------------------------------------------------------------------------


class UpdateRun:
    """Applies one request's commands to a core's working index, in order (S1)."""

    def __init__(self, state: SolrState, core: SolrCore) -> None:
        self.state = state
        self.core = core
        self.schema = state.schema

    def run(self, body: Any) -> None:
        if isinstance(body, list) and not isinstance(body, Pairs):
            self.adds(body)
        elif isinstance(body, Pairs):
            for key, value in body:
                self.command(key, value)
        # a scalar at the top level: Solr logs it and goes on

    def command(self, key: str, value: Any) -> None:
        if key == "add":
            if isinstance(value, Pairs):
                self.add_command(value)
            elif isinstance(value, list):
                self.adds(value)
            else:
                raise BadRequest(f"Expected: OBJECT_START but got {event(value)}")
        elif key == "delete":
            self.delete(value)
        elif key in ("commit", "optimize"):
            expect_object(value)
            self.commit()
        elif key == "rollback":
            expect_object(value)
            if value:
                raise BadRequest(f"Expected: OBJECT_END but got {event(value[0][1])}")
            self.core.working = dict(self.core.committed)
        else:
            raise BadRequest(f"Unknown command '{key}'")

    def adds(self, docs: list[Any]) -> None:
        for doc in docs:
            expect_object(doc)
            self.add(doc)

    def add_command(self, pairs: Pairs) -> None:
        doc: Pairs | None = None
        for key, value in pairs:
            if key == "doc":
                if doc is not None:
                    raise BadRequest("Multiple documents in same add command")
                expect_object(value)
                doc = value
            elif key in ("overwrite", "commitWithin", "boost"):
                continue
            else:
                raise BadRequest(f"Unknown key '{key}'")
        if doc is None:
            raise BadRequest("Missing solr document")
        self.add(doc)

    def add(self, pairs: Pairs) -> None:
        values: dict[str, list[Any]] = {}
        for name, value in pairs:
            if isinstance(value, Pairs) or (
                isinstance(value, list) and any(isinstance(v, (Pairs, list)) for v in value)
            ):
                raise BadRequest(
                    f"[sandbox] field {name}: atomic updates and child documents are not emulated"
                )
            items = value if isinstance(value, list) else [value]
            values.setdefault(name, []).extend(v for v in items if v is not None)
        key = self.schema.unique_key
        ids = values.get(key) or []
        if not ids:
            raise BadRequest(f"Document is missing mandatory uniqueKey field: {key}")
        doc_id = scalar_text(ids[0])
        stored: dict[str, Any] = {}
        for name, items in values.items():
            if name == "_version_":
                continue  # [sandbox] optimistic concurrency is not emulated
            kind = self.schema.kind(name)
            if kind is None:
                raise BadRequest(f"ERROR: [doc={doc_id}] unknown field '{name}'")
            texts = [scalar_text(v) for v in items]
            if kind == "strings":
                if texts:
                    stored[name] = texts
                continue
            if len(texts) > 1:
                raise BadRequest(
                    f"ERROR: [doc={doc_id}] multiple values encountered for non multiValued "
                    f"field {name}: [{', '.join(texts)}]"
                )
            if not texts:
                continue
            if kind == "pdate" and not _DATE.match(texts[0]):
                raise BadRequest(
                    f"ERROR: [doc={doc_id}] Error adding field '{name}'='{texts[0]}' "
                    f"msg=Invalid Date String:'{texts[0]}'"
                )
            stored[name] = texts[0]
        stored["_version_"] = self.state.next_version()
        self.core.working.pop(doc_id, None)
        self.core.working[doc_id] = stored

    def delete(self, value: Any) -> None:
        if isinstance(value, Pairs):
            self.delete_map(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Pairs):
                    self.delete_map(item)
                elif isinstance(item, list) or item is None:
                    raise BadRequest(f"Expected primitive JSON value but got: {event(item)}")
                else:
                    self.core.working.pop(scalar_text(item), None)
        elif value is None:
            raise BadRequest("Missing id or query for delete")
        else:
            self.core.working.pop(scalar_text(value), None)

    def delete_map(self, pairs: Pairs) -> None:
        doc_id: str | None = None
        query: str | None = None
        for key, value in pairs:
            if key == "id":
                doc_id = None if value is None else scalar_text(value)
            elif key == "query":
                if not isinstance(value, str):
                    raise BadRequest(f"Expected: STRING but got {event(value)}")
                query = value
            elif key in ("commitWithin", "_version_", "_route_"):
                continue
            else:
                raise BadRequest(f"Unknown key '{key}'")
        if doc_id is None and query is None:
            raise BadRequest("Missing id or query for delete")
        if doc_id is not None:
            self.core.working.pop(doc_id, None)
        if query is not None:
            matches = parse_query(self.schema, query)
            for key in [k for k, doc in self.core.working.items() if matches(doc)]:
                del self.core.working[key]

    def commit(self) -> None:
        self.core.committed = dict(self.core.working)
        self.core.commits += 1


def expect_object(value: Any) -> None:
    if not isinstance(value, Pairs):
        raise BadRequest(f"Expected: OBJECT_START but got {event(value)}")


def event(value: Any) -> str:
    """The noggit parser event a value starts with (what Solr's messages name)."""
    if isinstance(value, Pairs):
        return "OBJECT_START"
    if isinstance(value, list):
        return "ARRAY_START"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "LONG"
    if isinstance(value, float):
        return "NUMBER"
    if value is None:
        return "NULL"
    return "STRING"


def scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- HTTP ---------------------------------------------------------------------------------------


class SolrApp:
    def __init__(self, state: SolrState) -> None:
        self.state = state

    async def guard(self, request: Request) -> tuple[Response | None, SolrCore | None]:
        """Faults, Basic auth (S4) and the core lookup that every handler starts with."""
        state = self.state
        with state._lock:
            state.calls[f"{request.method} {request.url.path}"] += 1
        if state.latency > 0:
            await asyncio.sleep(state.latency)
        if state.down:
            return solr_json(error_body(503, "[sandbox] Solr is down (fault switch)"), 503), None
        status = state.take_failure()
        if status is not None:
            return solr_json(error_body(status, f"[sandbox] injected HTTP {status}"), status), None
        if state.credentials is not None:
            refusal = self.refuse_credentials(request)
            if refusal is not None:
                return refusal, None
        with state._lock:
            core = state.cores.get(request.path_params["core"])
        if core is None:
            return jetty_page(404, "Not Found", request.url.path), None
        return None, core

    def refuse_credentials(self, request: Request) -> Response | None:
        assert self.state.credentials is not None
        header = request.headers.get("authorization", "")
        challenge = {"WWW-Authenticate": 'Basic realm="solr"'}
        if not header.lower().startswith("basic "):
            page = jetty_page(401, "require authentication", request.url.path)
            page.headers.update(challenge)
            return page
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        want_user, want_password = self.state.credentials
        if not (
            hmac.compare_digest(user.encode(), want_user.encode())
            and hmac.compare_digest(password.encode(), want_password.encode())
        ):
            page = jetty_page(401, "Bad credentials", request.url.path)
            page.headers.update(challenge)
            return page
        return None

    async def update(self, request: Request) -> Response:
        started = time.monotonic()
        refusal, core = await self.guard(request)
        if refusal is not None:
            return refusal
        assert core is not None
        params = request.query_params
        wt = params.get("wt", "json")
        if wt != "json":
            return solr_json(error_body(400, f"[sandbox] only wt=json is emulated, not {wt}"), 400)
        body = await request.body()
        if len(body) > MAX_BODY:
            return solr_json(error_body(413, "[sandbox] request body too large"), 413)
        parsed: Any = None
        if body.strip():
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if not content_type:
                return solr_json(error_body(400, "Missing ContentType"), 400)
            if content_type not in JSON_TYPES:
                msg = f"Unsupported ContentType: {content_type}  Not in: [{LOADER_TYPES}]"
                return solr_json(error_body(415, msg), 415)
            try:
                parsed = json.loads(body, object_pairs_hook=Pairs)
            except (ValueError, UnicodeDecodeError) as exc:
                return solr_json(error_body(400, f"Cannot parse provided JSON: {exc}"), 400)
        with self.state._lock:
            run = UpdateRun(self.state, core)
            try:
                run.run(parsed)
            except BadRequest as exc:
                return solr_json(
                    error_body(exc.code, exc.msg, exc.error_class, qtime(started)), exc.code
                )
            if any(
                params.get(p, "").lower() in _TRUE for p in ("commit", "softCommit", "optimize")
            ) or params.get("commitWithin"):
                run.commit()
        return solr_json({"responseHeader": {"status": 0, "QTime": qtime(started)}})

    async def select(self, request: Request) -> Response:
        started = time.monotonic()
        refusal, core = await self.guard(request)
        if refusal is not None:
            return refusal
        assert core is not None
        params = request.query_params
        try:
            rows = parse_int(params.get("rows", "10"))
            start = parse_int(params.get("start", "0"))
            if rows < 0 or start < 0:
                raise BadRequest("'start' and 'rows' parameters cannot be negative")
            q = params.get("q")
            if q is None:
                raise BadRequest("[sandbox] q is required")
            tests = [parse_query(self.state.schema, q)]
            tests += [parse_query(self.state.schema, fq) for fq in params.getlist("fq")]
        except BadRequest as exc:
            return solr_json(error_body(exc.code, exc.msg, exc.error_class), exc.code)
        with self.state._lock:
            found = [doc for doc in core.committed.values() if all(t(doc) for t in tests)]
        wanted = fields_of(params.get("fl"))
        docs = [
            {k: v for k, v in doc.items() if wanted is None or k in wanted}
            for doc in found[start : start + rows]
        ]
        echoed: dict[str, Any] = {}
        for key, value in params.multi_items():
            if key in echoed:
                previous = echoed[key]
                echoed[key] = (
                    [*previous, value] if isinstance(previous, list) else [previous, value]
                )
            else:
                echoed[key] = value
        return solr_json(
            {
                "responseHeader": {"status": 0, "QTime": qtime(started), "params": echoed},
                "response": {
                    "numFound": len(found),
                    "start": start,
                    "numFoundExact": True,
                    "docs": docs,
                },
            }
        )


def parse_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f'For input string: "{value}"') from None


def fields_of(fl: str | None) -> set[str] | None:
    if not fl:
        return None
    names = {name for name in re.split(r"[\s,]+", fl) if name}
    return None if "*" in names else names


def qtime(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def solr_json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, media_type="application/json;charset=utf-8")


def create_app(state: SolrState) -> Starlette:
    """The emulated Solr under /solr: update (S1-S4) and select (S5) per core."""
    solr = SolrApp(state)
    routes = [
        Route("/solr/{core}/update", solr.update, methods=["GET", "POST"]),
        Route("/solr/{core}/update/json", solr.update, methods=["GET", "POST"]),
        Route("/solr/{core}/select", solr.select, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def serve_solr(state: SolrState, *, port: int = 0) -> RunningServer:
    """Serve the emulator on 127.0.0.1; `state.url` becomes the base URL (ending in /solr)."""
    running = serve(create_app(state), "solr", port=port)
    state.url = f"{running.url}/solr"
    return running


__all__ = ["SolrCore", "SolrSchema", "SolrState", "create_app", "serve_solr"]
