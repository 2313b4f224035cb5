"""An emulator of the DSpace 7 REST contract (`/server/api`), for the demo and the tests.

It follows the research notes in `koha-dspace-contracts.md` (parts B and E), not shelfwork's client:
each behaviour names its contract point (B1 authentication and CSRF, B2a submission, B2b admin
creation, B3 duplicate search, B4 handles) and carries the notes' confidence mark where they give
one ([V] confirmed, [P] seen in a fork or another version, [U] unverified). Where the notes are
silent the emulator picks the stricter reading and says so with [U].

Faults a real repository shows can be switched on at run time (latency, 5xx, expired tokens, CSRF
rotation on every response, an unavailable server, corrupted storage), from Python through
`DSpaceState` or over HTTP through the loopback-only `/_sandbox/` control API.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import mimetypes
import re
import secrets
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import SandboxError

API = "/server/api"
XSRF_HEADER = "DSPACE-XSRF-TOKEN"
XSRF_COOKIE = "DSPACE-XSRF-COOKIE"
CLIENT_XSRF_HEADER = "X-XSRF-TOKEN"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    412: "Precondition Failed",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

#: DSpace's stock `traditional` submission form (submission-forms.xml), trimmed to what the
#: Koha crosswalk writes; dc.identifier.other must be configured there for B2a to accept it.
DEFAULT_FORM: dict[str, frozenset[str]] = {
    "traditionalpageone": frozenset(
        {
            "dc.title",
            "dc.contributor.author",
            "dc.date.issued",
            "dc.publisher",
            "dc.identifier.other",
            "dc.identifier.isbn",
            "dc.identifier.issn",
            "dc.title.alternative",
            "dc.language.iso",
            "dc.type",
        }
    ),
    "traditionalpagetwo": frozenset(
        {
            "dc.subject",
            "dc.description.abstract",
            "dc.description",
            "dc.format.extent",
            "dc.rights",
            "dc.relation.ispartofseries",
            "dc.coverage.spatial",
            "dc.description.tableofcontents",
        }
    ),
}
#: mandatory in the stock form (B2a step 6 example errors)
REQUIRED_FIELDS = ("dc.title", "dc.date.issued")
#: written by DSpace itself, always in the registry (B4)
SYSTEM_FIELDS = frozenset(
    {
        "dc.identifier.uri",
        "dc.date.accessioned",
        "dc.date.available",
        "dc.description.provenance",
        "dc.format.mimetype",
    }
)
MAX_PAGE_SIZE = 100  # [U] rest.search.max.results default
DEFAULT_PAGE_SIZE = 20  # [U]

MetadataMap = dict[str, list[dict[str, Any]]]


def default_form() -> dict[str, set[str]]:
    return {section: set(fields) for section, fields in DEFAULT_FORM.items()}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------------------------------
# state


@dataclass
class Collection:
    uuid: str
    name: str
    workflow: bool = False
    form: dict[str, set[str]] = field(default_factory=default_form)

    @property
    def definition(self) -> str:
        """Submission definition name: `traditional` for the stock form, one per custom form."""
        stock = {s: set(f) for s, f in DEFAULT_FORM.items()}
        return "traditional" if self.form == stock else f"custom-{self.uuid[:8]}"


@dataclass
class StoredItem:
    uuid: str
    collection: str
    submitter: str
    seq: int
    metadata: MetadataMap = field(default_factory=dict)
    in_archive: bool = False
    discoverable: bool = True
    withdrawn: bool = False
    handle: str | None = None
    bundles: list[str] = field(default_factory=list)
    last_modified: str = field(default_factory=now_iso)

    def values(self, key: str) -> list[str]:
        return [str(v.get("value", "")) for v in self.metadata.get(key, [])]

    @property
    def name(self) -> str | None:
        titles = self.values("dc.title")
        return titles[0] if titles else None


@dataclass
class StoredBundle:
    uuid: str
    name: str
    item: str
    bitstreams: list[str] = field(default_factory=list)


@dataclass
class StoredBitstream:
    uuid: str
    name: str
    bundle: str
    content: bytes
    md5: str
    sequence_id: int
    metadata: MetadataMap = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def mimetype(self) -> str:
        return mimetypes.guess_type(self.name)[0] or "application/octet-stream"


@dataclass
class WorkspaceItem:
    id: int
    item: str
    collection: str
    submitter: str
    license_granted: bool = False
    acceptance_date: str | None = None


@dataclass
class WorkflowItem:
    id: int
    item: str
    collection: str
    submitter: str


@dataclass
class Caller:
    email: str
    admin: bool
    jti: str


@dataclass
class PendingFault:
    count: int
    status: int
    path_prefix: str


@dataclass
class DSpaceState:
    """Everything the emulated repository holds, plus the fault switches; every method locks."""

    users: dict[str, tuple[str, bool]] = field(default_factory=dict)
    collections: dict[str, Collection] = field(default_factory=dict)
    items: dict[str, StoredItem] = field(default_factory=dict)
    workspace_items: dict[int, WorkspaceItem] = field(default_factory=dict)
    workflow_items: dict[int, WorkflowItem] = field(default_factory=dict)
    bundles: dict[str, StoredBundle] = field(default_factory=dict)
    bitstreams: dict[str, StoredBitstream] = field(default_factory=dict)
    handle_prefix: str = "123456789"
    canonical_prefix: str | None = None  # None: `<server url>/handle/` ([U] dspace.cfg default)
    jwt_ttl: float = 1800.0  # B1 [V]: 30 minutes by default
    calls: Counter[str] = field(default_factory=Counter)
    # faults
    latency: float = 0.0
    rotate_csrf_every_response: bool = False
    down: bool = False
    server_url: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _faults: list[PendingFault] = field(default_factory=list, repr=False)
    _corrupt_uploads: int = field(default=0, repr=False)
    _live_csrf: set[str] = field(default_factory=set, repr=False)
    _live_jti: set[str] = field(default_factory=set, repr=False)
    _workspace_ids: int = field(default=0, repr=False)
    _workflow_ids: int = field(default=0, repr=False)
    _handles: int = field(default=0, repr=False)
    _seq: int = field(default=0, repr=False)

    # ---- setup

    def add_user(self, email: str, password: str, *, admin: bool = False) -> str:
        with self.lock:
            self.users[email] = (password, admin)
        return eperson_uuid(email)

    def add_collection(
        self,
        name: str,
        *,
        workflow: bool = False,
        form: dict[str, set[str]] | None = None,
        uuid: str | None = None,
    ) -> str:
        """Add a collection; its form's section ids are global step ids, as in item-submission.xml."""
        chosen = uuid or str(uuidlib.uuid4())
        wanted = {s: set(f) for s, f in (form or default_form()).items()}
        with self.lock:
            for other in self.collections.values():
                for section, fields in wanted.items():
                    if section in other.form and other.form[section] != fields:
                        raise SandboxError(
                            f"sandbox dspace: form section {section!r} already defined with "
                            f"other fields (collection {other.name!r}); step ids are global"
                        )
            self.collections[chosen] = Collection(chosen, name, workflow, wanted)
        return chosen

    # ---- faults

    def fail_next(self, count: int = 1, status: int = 500, path_prefix: str = "") -> None:
        """The next `count` API requests whose path starts with `path_prefix` answer `status`.

        The prefix may be given with or without `/server/api` (e.g. "/core/items").
        """
        with self.lock:
            self._faults.append(PendingFault(count, status, path_prefix))

    def expire_tokens(self) -> None:
        """Every JWT issued so far expires now: the next request bearing one gets 401."""
        with self.lock:
            self._live_jti.clear()

    def corrupt_next_uploads(self, count: int = 1) -> None:
        """The next `count` stored files get one byte flipped after the upload checks ran."""
        with self.lock:
            self._corrupt_uploads += count

    # ---- queries for tests and the control API

    def items_with(self, key: str, value: str) -> list[StoredItem]:
        with self.lock:
            return [i for i in self.items.values() if value in i.values(key)]

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "collections": {
                    c.uuid: {"name": c.name, "workflow": c.workflow}
                    for c in self.collections.values()
                },
                "items": len(self.items),
                "archived": sum(1 for i in self.items.values() if i.in_archive),
                "workspace_items": sorted(self.workspace_items),
                "workflow_items": sorted(self.workflow_items),
                "bitstreams": len(self.bitstreams),
                "calls": dict(self.calls),
                "faults": {
                    "latency": self.latency,
                    "down": self.down,
                    "rotate_csrf_every_response": self.rotate_csrf_every_response,
                    "pending": [vars(f) for f in self._faults],
                    "corrupt_uploads": self._corrupt_uploads,
                },
            }

    # ---- review workflow

    def approve(self, ref: int | str) -> StoredItem:
        """Archive an item waiting in review, by workflow item id or item UUID (B2a, B4)."""
        with self.lock:
            wf: WorkflowItem | None = None
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                wf = self.workflow_items.get(int(ref))
            else:
                wf = next((w for w in self.workflow_items.values() if w.item == ref), None)
            if wf is None:
                raise SandboxError(f"sandbox dspace: nothing in review matches {ref!r}")
            del self.workflow_items[wf.id]
            item = self.items[wf.item]
            self.archive(item)
            return item

    def withdraw(self, item_uuid: str) -> None:
        with self.lock:
            item = self.items[item_uuid]
            item.withdrawn = True
            item.discoverable = False

    # ---- internals used by the routes (call with the lock held)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def archive(self, item: StoredItem) -> None:
        """B4 [V]: the handle is assigned and its canonical URL written to dc.identifier.uri now."""
        self._handles += 1
        item.handle = f"{self.handle_prefix}/{self._handles}"
        item.in_archive = True
        prefix = self.canonical_prefix or f"{self.server_url or 'http://localhost'}/handle/"
        stamp = now_iso()
        add_value(item.metadata, "dc.identifier.uri", prefix + item.handle)
        add_value(item.metadata, "dc.date.accessioned", stamp)
        add_value(item.metadata, "dc.date.available", stamp)
        add_value(
            item.metadata,
            "dc.description.provenance",
            f"Made available in DSpace on {stamp} (GMT).",
        )
        item.last_modified = stamp

    def registry(self) -> set[str]:
        """The metadata registry: every form field plus the fields DSpace writes itself."""
        known = set(SYSTEM_FIELDS)
        for collection in self.collections.values():
            for fields in collection.form.values():
                known |= fields
        return known

    def issue_token(self, email: str) -> str:
        now = time.time()
        jti = secrets.token_hex(12)
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {
            "eid": eperson_uuid(email),
            "sg": [],
            "authenticationMethod": "password",
            "iat": int(now),
            "exp": round(now + self.jwt_ttl, 3),
            "jti": jti,
        }
        signing = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(payload, separators=(",", ":")).encode())
        )
        signature = hmac.new(self.secret, signing.encode("ascii"), hashlib.sha256).digest()
        self._live_jti.add(jti)
        return f"{signing}.{b64url(signature)}"

    def verify_token(self, token: str) -> Caller | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        wanted = hmac.new(self.secret, signing, hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(wanted, b64url_decode(parts[2])):
                return None
            payload = json.loads(b64url_decode(parts[1]))
        except (ValueError, TypeError):
            return None
        if payload.get("jti") not in self._live_jti or float(payload.get("exp", 0)) <= time.time():
            return None
        email = next((e for e in self.users if eperson_uuid(e) == payload.get("eid")), None)
        if email is None:
            return None
        return Caller(email, self.users[email][1], payload["jti"])

    def rotate_csrf(self, old: str | None) -> str:
        if old:
            self._live_csrf.discard(old)
        token = str(uuidlib.uuid4())
        self._live_csrf.add(token)
        return token

    def take_fault(self, full_path: str) -> int | None:
        relative = full_path[len(API) :] if full_path.startswith(API) else full_path
        for fault in self._faults:
            if full_path.startswith(fault.path_prefix) or relative.startswith(fault.path_prefix):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault.status
        return None

    def store_bitstream(
        self, bundle: StoredBundle, name: str, content: bytes, metadata: MetadataMap | None = None
    ) -> StoredBitstream:
        if self._corrupt_uploads > 0 and content:
            self._corrupt_uploads -= 1
            content = bytes([content[0] ^ 0xFF]) + content[1:]
        item = self.items[bundle.item]
        sequence = 1 + sum(
            len(self.bundles[b].bitstreams) for b in item.bundles if b in self.bundles
        )
        meta = metadata or {}
        if "dc.title" not in meta:
            meta = {**meta, "dc.title": [value_object(name)]}
        bitstream = StoredBitstream(
            str(uuidlib.uuid4()),
            name,
            bundle.uuid,
            content,
            hashlib.md5(content).hexdigest(),
            sequence,
            meta,
        )
        self.bitstreams[bitstream.uuid] = bitstream
        bundle.bitstreams.append(bitstream.uuid)
        return bitstream

    def bundle_named(self, item: StoredItem, name: str) -> StoredBundle | None:
        return next((self.bundles[b] for b in item.bundles if self.bundles[b].name == name), None)

    def add_bundle(self, item: StoredItem, name: str) -> StoredBundle:
        bundle = StoredBundle(str(uuidlib.uuid4()), name, item.uuid)
        self.bundles[bundle.uuid] = bundle
        item.bundles.append(bundle.uuid)
        return bundle


def eperson_uuid(email: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"mailto:{email.lower()}"))


def value_object(value: str, language: str | None = None) -> dict[str, Any]:
    return {"value": value, "language": language, "authority": None, "confidence": -1}


def add_value(metadata: MetadataMap, key: str, value: str) -> None:
    metadata.setdefault(key, []).append(value_object(value))


def placed(metadata: MetadataMap) -> MetadataMap:
    """Metadata as DSpace shows it: each value with its `place` (B4)."""
    return {
        key: [{**value, "place": place} for place, value in enumerate(values)]
        for key, values in sorted(metadata.items())
        if values
    }


# --------------------------------------------------------------------------------------------
# request plumbing


class ApiError(Exception):
    """An error answer in DSpace's JSON error shape (DSpaceApiExceptionControllerAdvice)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


@dataclass
class Ctx:
    request: Request
    state: DSpaceState
    caller: Caller | None
    base: str  # absolute API root, e.g. http://127.0.0.1:8123/server/api
    rotate: bool = False

    def need_auth(self) -> Caller:
        if self.caller is None:
            raise ApiError(401, "Authentication is required")  # B1 [U] message text
        return self.caller

    def need_admin(self) -> Caller:
        caller = self.need_auth()
        if not caller.admin:
            raise ApiError(403, "Access is denied")  # B2b [V]: administrators only
        return caller


Handler = Callable[[Ctx], Awaitable[Response]]


def error_response(status: int, message: str, path: str, **extra: Any) -> JSONResponse:
    body = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": status,
        "error": REASONS.get(status, "Error"),
        "message": message,
        "path": path,
        **extra,
    }
    return JSONResponse(body, status_code=status)


def link(href: str) -> dict[str, str]:
    return {"href": href}


def api_route(state: DSpaceState, method: str, template: str, handler: Handler) -> Route:
    """Wrap `handler` with the behaviour every DSpace endpoint shares: faults, CSRF, JWT."""
    key = f"{method} {template}"

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        with state.lock:
            state.calls[key] += 1
            state.server_url = f"{request.url.scheme}://{request.url.netloc}"
            latency, down = state.latency, state.down
        if latency > 0:
            await asyncio.sleep(latency)
        if down:
            return error_response(503, "Service Unavailable", path)
        cookie = request.cookies.get(XSRF_COOKIE)
        ctx = Ctx(request, state, None, f"{state.server_url}{API}")
        try:
            with state.lock:
                injected = state.take_fault(path)
            if injected is not None:
                raise ApiError(injected, "Injected fault (sandbox)")
            if method in MUTATING:
                check_csrf(state, request, cookie)
            if template != "/security/csrf":
                # a login with credentials does not care about a stale Bearer
                ctx.caller = bearer(state, request, strict=template != "/authn/login")
            response = await handler(ctx)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, path, **exc.extra)
            response.headers.update(exc.headers)
            # B1 [P]: DSpace answers a CSRF failure with a fresh token so the client may retry
            if exc.status == 403 and "CSRF" in exc.message:
                ctx.rotate = True
        with state.lock:
            if ctx.rotate or state.rotate_csrf_every_response:
                token = state.rotate_csrf(cookie)
                response.headers[XSRF_HEADER] = token
                response.set_cookie(XSRF_COOKIE, token, path="/server", httponly=True)
        response.headers["Access-Control-Expose-Headers"] = f"Authorization, {XSRF_HEADER}"
        return response

    return Route(f"{API}{template}", endpoint, methods=[method])


def check_csrf(state: DSpaceState, request: Request, cookie: str | None) -> None:
    """B1 [V]: a write needs X-XSRF-TOKEN (or `_csrf`) equal to the DSPACE-XSRF-COOKIE value.

    The emulator also refuses a token it has since rotated away, even if header and cookie agree
    ([U]: stricter than the cookie-only comparison; it makes stale clients fail loudly).
    """
    sent = request.headers.get(CLIENT_XSRF_HEADER) or request.query_params.get("_csrf")
    with state.lock:
        valid = bool(sent) and sent == cookie and sent in state._live_csrf
    if not valid:
        raise ApiError(403, "Access is denied. Invalid CSRF token.")


def bearer(state: DSpaceState, request: Request, *, strict: bool = True) -> Caller | None:
    """B1 [V]: `Authorization: Bearer <JWT>`; a bad or expired one is refused with 401 ([U])."""
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    with state.lock:
        caller = state.verify_token(token.strip()) if scheme.lower() == "bearer" else None
    if caller is None and strict:
        raise ApiError(
            401,
            "Authentication is required",
            headers={"WWW-Authenticate": 'Bearer realm="DSpace REST API", error="invalid_token"'},
        )
    return caller


def json_response(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type="application/hal+json")


async def json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from exc


def page_block(size: int, total: int, number: int) -> dict[str, int]:
    return {
        "size": size,
        "totalElements": total,
        "totalPages": (total + size - 1) // size if size else 0,
        "number": number,
    }


def parse_int(text: str | None, default: int, name: str) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ApiError(400, f"Parameter {name} must be an integer") from exc


# --------------------------------------------------------------------------------------------
# JSON views (B4: HAL, absolute links)


def item_json(ctx: Ctx, item: StoredItem) -> dict[str, Any]:
    href = f"{ctx.base}/core/items/{item.uuid}"
    hidden = item.withdrawn and not (ctx.caller and ctx.caller.admin)
    return {
        "id": item.uuid,
        "uuid": item.uuid,
        "name": item.name,
        "handle": item.handle,  # B4 [V]: null until archived
        "metadata": {} if hidden else placed(item.metadata),  # B3 [V]: withdrawn, non-admin
        "inArchive": item.in_archive,
        "discoverable": item.discoverable,
        "withdrawn": item.withdrawn,
        "lastModified": item.last_modified,
        "entityType": None,
        "type": "item",
        "_links": {
            "bundles": link(f"{href}/bundles"),
            "identifiers": link(f"{href}/identifiers"),
            "mappedCollections": link(f"{href}/mappedCollections"),
            "owningCollection": link(f"{href}/owningCollection"),
            "thumbnail": link(f"{href}/thumbnail"),
            "self": link(href),
        },
    }


def bundle_json(ctx: Ctx, bundle: StoredBundle) -> dict[str, Any]:
    href = f"{ctx.base}/core/bundles/{bundle.uuid}"
    return {
        "uuid": bundle.uuid,
        "id": bundle.uuid,
        "name": bundle.name,
        "handle": None,
        "metadata": placed({"dc.title": [value_object(bundle.name)]}),
        "type": "bundle",
        "_links": {
            "item": link(f"{ctx.base}/core/items/{bundle.item}"),
            "bitstreams": link(f"{href}/bitstreams"),
            "primaryBitstream": link(f"{href}/primaryBitstream"),
            "self": link(href),
        },
    }


def bitstream_json(ctx: Ctx, bitstream: StoredBitstream) -> dict[str, Any]:
    href = f"{ctx.base}/core/bitstreams/{bitstream.uuid}"
    bundle = ctx.state.bundles.get(bitstream.bundle)
    return {
        "uuid": bitstream.uuid,
        "id": bitstream.uuid,
        "name": bitstream.name,
        "handle": None,
        "metadata": placed(bitstream.metadata),
        "bundleName": bundle.name if bundle else None,
        "sizeBytes": bitstream.size,
        "checkSum": {"checkSumAlgorithm": "MD5", "value": bitstream.md5},
        "sequenceId": bitstream.sequence_id,
        "type": "bitstream",
        "_links": {
            "content": link(f"{href}/content"),
            "bundle": link(f"{href}/bundle"),
            "format": link(f"{href}/format"),
            "self": link(href),
        },
    }


def upload_file_json(ctx: Ctx, bitstream: StoredBitstream) -> dict[str, Any]:
    return {
        "uuid": bitstream.uuid,
        "metadata": placed(bitstream.metadata),
        "sizeBytes": bitstream.size,
        "checkSum": {"checkSumAlgorithm": "MD5", "value": bitstream.md5},
        "url": f"{ctx.base}/core/bitstreams/{bitstream.uuid}/content",
        "format": {"mimetype": bitstream.mimetype},
        "accessConditions": [],
    }


def original_files(state: DSpaceState, item: StoredItem) -> list[StoredBitstream]:
    bundle = state.bundle_named(item, "ORIGINAL")
    return [state.bitstreams[b] for b in bundle.bitstreams] if bundle else []


def submission_errors(state: DSpaceState, ws: WorkspaceItem) -> list[dict[str, Any]]:
    """B2a step 6 [V]: errors grouped by message, each with the paths it applies to."""
    item = state.items[ws.item]
    collection = state.collections[ws.collection]
    missing = [
        f"/sections/{section}/{key}"
        for section, fields in collection.form.items()
        for key in REQUIRED_FIELDS
        if key in fields and not item.values(key)
    ]
    errors: list[dict[str, Any]] = []
    if missing:
        errors.append({"message": "error.validation.required", "paths": missing})
    if not original_files(state, item):
        # [U]: webui.submit.upload.required = true in the stock configuration
        errors.append({"message": "error.validation.filerequired", "paths": ["/sections/upload"]})
    if not ws.license_granted:
        errors.append(
            {"message": "error.validation.license.notgranted", "paths": ["/sections/license"]}
        )
    return errors


def workspace_json(ctx: Ctx, ws: WorkspaceItem) -> dict[str, Any]:
    state = ctx.state
    item = state.items[ws.item]
    collection = state.collections[ws.collection]
    href = f"{ctx.base}/submission/workspaceitems/{ws.id}"
    sections: dict[str, Any] = {}
    shown = placed(item.metadata)
    for section, fields in collection.form.items():
        sections[section] = {k: v for k, v in shown.items() if k in fields}
    sections["upload"] = {
        "primary": None,
        "files": [upload_file_json(ctx, b) for b in original_files(state, item)],
    }
    sections["license"] = {
        "url": None,
        "acceptanceDate": ws.acceptance_date,
        "granted": ws.license_granted,
    }
    sections["collection"] = collection.uuid
    return {
        "id": ws.id,  # B2a [V]: an integer id
        "lastModified": item.last_modified,
        "sections": sections,
        "errors": submission_errors(state, ws),
        "type": "workspaceitem",
        "_links": {
            "collection": link(f"{href}/collection"),
            "item": link(f"{href}/item"),
            "submissionDefinition": link(f"{href}/submissionDefinition"),
            "submitter": link(f"{href}/submitter"),
            "self": link(href),
        },
    }


def workflow_json(ctx: Ctx, wf: WorkflowItem) -> dict[str, Any]:
    href = f"{ctx.base}/workflow/workflowitems/{wf.id}"
    return {
        "id": wf.id,
        "lastModified": ctx.state.items[wf.item].last_modified,
        "sections": {},
        "errors": [],
        "type": "workflowitem",
        "_links": {
            "collection": link(f"{href}/collection"),
            "item": link(f"{href}/item"),
            "submitter": link(f"{href}/submitter"),
            "self": link(href),
        },
    }


# --------------------------------------------------------------------------------------------
# B1: authentication and CSRF


async def get_csrf(ctx: Ctx) -> Response:
    """B1 [V]: 204, token in DSPACE-XSRF-TOKEN and in the HttpOnly DSPACE-XSRF-COOKIE."""
    ctx.rotate = True
    return Response(status_code=204)


async def post_login(ctx: Ctx) -> Response:
    """B1 [V]: form user/password -> 200 with the Bearer in the Authorization header.

    With no credentials but a valid Bearer, the token is renewed (B1 [V]).
    """
    state = ctx.state
    form = await ctx.request.form()
    user = str(form.get("user") or "")
    password = str(form.get("password") or "")
    with state.lock:
        if user or password:
            known = state.users.get(user)
            if known is None or not hmac.compare_digest(known[0], password):
                raise ApiError(
                    401,
                    "Authentication failed. The credentials you provided are not valid.",  # [U]
                    headers={
                        "WWW-Authenticate": 'password realm="DSpace REST API", '
                        f'location="{ctx.base}/authn/login"'
                    },
                )
            email = user
        elif ctx.caller is not None:
            email = ctx.caller.email
            state._live_jti.discard(ctx.caller.jti)
        else:
            raise ApiError(
                401,
                "Authentication is required",
                headers={"WWW-Authenticate": 'password realm="DSpace REST API"'},
            )
        token = state.issue_token(email)
    ctx.rotate = True  # B1 [V]: the CSRF token rotates at login
    # B1: the login body is not documented; clients must not rely on it
    response = json_response({"okay": True, "authenticated": True, "type": "status"})
    response.headers["Authorization"] = f"Bearer {token}"
    return response


async def get_status(ctx: Ctx) -> Response:
    body: dict[str, Any] = {
        "okay": True,
        "authenticated": ctx.caller is not None,
        "type": "status",
        "_links": {"self": link(f"{ctx.base}/authn/status")},
    }
    if ctx.caller is not None:
        body["authenticationMethod"] = "password"
        body["_links"]["eperson"] = link(
            f"{ctx.base}/eperson/epersons/{eperson_uuid(ctx.caller.email)}"
        )
    return json_response(body)


async def post_logout(ctx: Ctx) -> Response:
    caller = ctx.need_auth()
    with ctx.state.lock:
        ctx.state._live_jti.discard(caller.jti)
    ctx.rotate = True
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------
# B2a: submission


def find_collection(state: DSpaceState, request: Request) -> Collection:
    wanted = request.query_params.get("owningCollection")
    if not wanted:
        raise ApiError(400, "Parameter owningCollection is required")
    collection = state.collections.get(wanted)
    if collection is None:
        raise ApiError(422, f"Collection {wanted} not found")  # [U] status
    return collection


def own_workspace(ctx: Ctx, raw_id: str) -> WorkspaceItem:
    caller = ctx.need_auth()
    try:
        ws = ctx.state.workspace_items.get(int(raw_id))
    except ValueError:
        ws = None
    if ws is None:
        raise ApiError(404, f"WorkspaceItem with id {raw_id} not found")
    if ws.submitter != caller.email and not caller.admin:
        raise ApiError(403, "Access is denied")
    return ws


async def create_workspace(ctx: Ctx) -> Response:
    """B2a step 2 [V]: empty POST with owningCollection -> 201 workspaceitem."""
    caller = ctx.need_auth()
    state = ctx.state
    with state.lock:
        collection = find_collection(state, ctx.request)
        item = StoredItem(str(uuidlib.uuid4()), collection.uuid, caller.email, state.next_seq())
        state.items[item.uuid] = item
        state._workspace_ids += 1
        ws = WorkspaceItem(state._workspace_ids, item.uuid, collection.uuid, caller.email)
        state.workspace_items[ws.id] = ws
        return json_response(workspace_json(ctx, ws), 201)


async def get_workspace(ctx: Ctx) -> Response:
    with ctx.state.lock:
        ws = own_workspace(ctx, ctx.request.path_params["id"])
        return json_response(workspace_json(ctx, ws))


async def find_workspace_by_submitter(ctx: Ctx) -> Response:
    """workspaceitems/search/findBySubmitter?uuid= [V] (REST contract's own example of a search
    endpoint; DSpace's WorkspaceItemRestRepository): a submitter's in-progress items, HAL-paged.
    A non-admin may only list their own."""
    caller = ctx.need_auth()
    wanted = ctx.request.query_params.get("uuid")
    if not wanted:
        raise ApiError(400, "Parameter uuid is required")
    if not caller.admin and wanted != eperson_uuid(caller.email):
        raise ApiError(403, "Access is denied")
    number = parse_int(ctx.request.query_params.get("page"), 0, "page")
    size = parse_int(ctx.request.query_params.get("size"), 20, "size")
    if number < 0 or size < 1:
        raise ApiError(400, "page must be >= 0 and size >= 1")
    with ctx.state.lock:
        mine = [
            ws
            for _, ws in sorted(ctx.state.workspace_items.items())
            if eperson_uuid(ws.submitter) == wanted
        ]
        shown = [workspace_json(ctx, ws) for ws in mine[number * size : (number + 1) * size]]
    href = f"{ctx.base}/submission/workspaceitems/search/findBySubmitter?uuid={wanted}"
    links: dict[str, Any] = {"self": link(f"{href}&page={number}&size={size}")}
    if (number + 1) * size < len(mine):
        links["next"] = link(f"{href}&page={number + 1}&size={size}")
    return json_response(
        {
            "_embedded": {"workspaceitems": shown},
            "page": page_block(size, len(mine), number),
            "_links": links,
        }
    )


async def get_workspace_item(ctx: Ctx) -> Response:
    with ctx.state.lock:
        ws = own_workspace(ctx, ctx.request.path_params["id"])
        return json_response(item_json(ctx, ctx.state.items[ws.item]))


async def delete_workspace(ctx: Ctx) -> Response:
    state = ctx.state
    with state.lock:
        ws = own_workspace(ctx, ctx.request.path_params["id"])
        item = state.items.pop(ws.item)
        for bundle_id in item.bundles:
            for bitstream_id in state.bundles.pop(bundle_id).bitstreams:
                state.bitstreams.pop(bitstream_id, None)
        del state.workspace_items[ws.id]
    return Response(status_code=204)


def normalise_value(raw: Any, path: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"value": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
        raise ApiError(422, f"Patch value for {path} must be an object with a string 'value'")
    return {
        "value": raw["value"],
        "language": raw.get("language"),
        "authority": raw.get("authority"),
        "confidence": raw.get("confidence", -1) if raw.get("confidence") is not None else -1,
    }


def patch_index(text: str, length: int, path: str, *, allow_end: bool) -> int:
    if text == "-":
        if allow_end:
            return length
        raise ApiError(422, f"Index '-' is not valid here: {path}")
    try:
        index = int(text)
    except ValueError as exc:
        raise ApiError(422, f"Bad index in patch path {path}") from exc
    if not 0 <= index < length + (1 if allow_end else 0):
        raise ApiError(422, f"Index {index} out of range in patch path {path}")
    return index


def apply_metadata_op(
    metadata: MetadataMap, op: str, path: str, key: str, index: str | None, value: Any
) -> None:
    """B2a step 3 [V]: an array starts (or replaces) a field, `/-` appends one object."""
    current = metadata.setdefault(key, [])
    if op == "add":
        if index is None:
            if not isinstance(value, list):
                raise ApiError(422, f"Patch add on {path} needs an array of values")
            metadata[key] = [normalise_value(v, path) for v in value]
        else:
            current.insert(
                patch_index(index, len(current), path, allow_end=True), normalise_value(value, path)
            )
    elif op == "replace":
        if index is None:
            values = value if isinstance(value, list) else [value]
            metadata[key] = [normalise_value(v, path) for v in values]
        else:
            current[patch_index(index, len(current), path, allow_end=False)] = normalise_value(
                value, path
            )
    elif op == "remove":
        if index is None:
            current.clear()
        else:
            del current[patch_index(index, len(current), path, allow_end=False)]
    else:
        raise ApiError(422, f"Patch operation {op!r} is not supported on {path}")  # [U]
    if not metadata.get(key):
        metadata.pop(key, None)


async def patch_workspace(ctx: Ctx) -> Response:
    """B2a steps 3 and 5: JSON Patch on sections, applied all-or-nothing."""
    media = ctx.request.headers.get("content-type", "").split(";")[0].strip().lower()
    # B2a [V]: patch.md wants json-patch+json, the contract's curl examples send application/json
    if media not in ("application/json-patch+json", "application/json"):
        raise ApiError(415, f"Content type '{media}' not supported for PATCH")
    ops = await json_body(ctx.request)
    if not isinstance(ops, list) or not ops:
        raise ApiError(400, "The patch document must be a non-empty JSON array")
    state = ctx.state
    with state.lock:
        ws = own_workspace(ctx, ctx.request.path_params["id"])
        item = state.items[ws.item]
        collection = state.collections[ws.collection]
        metadata = copy.deepcopy(item.metadata)
        granted = ws.license_granted
        drop_files: list[str] = []
        files = [b.uuid for b in original_files(state, item)]
        for op in ops:
            if not isinstance(op, dict) or not isinstance(op.get("op"), str):
                raise ApiError(400, "Each patch operation needs 'op' and 'path'")
            name, path = op["op"], op.get("path")
            if not isinstance(path, str):
                raise ApiError(400, "Each patch operation needs 'op' and 'path'")
            parts = path.split("/")
            if len(parts) < 3 or parts[0] != "" or parts[1] != "sections":
                # B2a [V] message from the notes
                raise ApiError(400, "Patch path operation need to starts with 'sections'")
            section = parts[2]
            if section == "license":
                if parts[3:] != ["granted"] or name not in ("add", "replace", "remove"):
                    raise ApiError(422, f"Unsupported license patch {name} {path}")
                granted = name != "remove" and str(op.get("value")).lower() == "true"
            elif section == "upload":
                if name != "remove" or len(parts) != 5 or parts[3] != "files":
                    raise ApiError(422, f"Unsupported upload patch {name} {path}")
                index = patch_index(parts[4], len(files), path, allow_end=False)
                drop_files.append(files[index])
            elif section in collection.form:
                if len(parts) < 4 or not parts[3]:
                    raise ApiError(422, f"Patch path {path} names no metadata field")
                key = parts[3]
                if key not in collection.form[section]:
                    # B2a [P] (DSpace PR #2760): a field outside the section's form is refused
                    raise ApiError(
                        422, f"The attribute {key} does not present in section {section}"
                    )
                index = parts[4] if len(parts) > 4 else None
                apply_metadata_op(metadata, name, path, key, index, op.get("value"))
            else:
                raise ApiError(422, f"Section {section} is not part of this submission")  # [U]
        item.metadata = metadata
        item.last_modified = now_iso()
        if granted and not ws.license_granted:
            ws.acceptance_date = now_iso()
        ws.license_granted = granted
        bundle = state.bundle_named(item, "ORIGINAL")
        for bitstream_id in drop_files:
            state.bitstreams.pop(bitstream_id, None)
            if bundle:
                bundle.bitstreams.remove(bitstream_id)
        return json_response(workspace_json(ctx, ws))


async def upload_to_workspace(ctx: Ctx) -> Response:
    """B2a step 4 [V]: multipart `file` -> 201 workspaceitem with sections.upload.files[]."""
    form = await ctx.request.form()
    uploads = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
    if not uploads:
        raise ApiError(400, "No file part named 'file' in the request")  # [U] status
    contents = [(u.filename or "file", await u.read()) for u in uploads]
    state = ctx.state
    with state.lock:
        ws = own_workspace(ctx, ctx.request.path_params["id"])
        item = state.items[ws.item]
        bundle = state.bundle_named(item, "ORIGINAL") or state.add_bundle(item, "ORIGINAL")
        for name, content in contents:
            state.store_bitstream(bundle, name, content)
        item.last_modified = now_iso()
        return json_response(workspace_json(ctx, ws), 201)


async def find_definition(ctx: Ctx) -> Response:
    """B2a step 1 [V]: the submission definition used by a collection."""
    uuid = ctx.request.query_params.get("uuid", "")
    with ctx.state.lock:
        collection = ctx.state.collections.get(uuid)
        if collection is None:
            raise ApiError(404, f"Collection {uuid} not found")
        return json_response(definition_json(ctx, collection))


def definition_json(ctx: Ctx, collection: Collection) -> dict[str, Any]:
    name = collection.definition
    href = f"{ctx.base}/config/submissiondefinitions/{name}"
    return {
        "id": name,
        "name": name,
        "isDefault": name == "traditional",
        "type": "submissiondefinition",
        "_links": {
            "collections": link(f"{href}/collections"),
            "sections": link(f"{href}/sections"),
            "self": link(href),
        },
    }


def definition_sections(state: DSpaceState, name: str) -> list[tuple[str, str]]:
    collection = next((c for c in state.collections.values() if c.definition == name), None)
    if collection is None:
        raise ApiError(404, f"Submission definition {name} not found")
    steps = [("collection", "collection")]
    steps += [(section, "submission-form") for section in collection.form]
    steps += [("upload", "upload"), ("license", "license")]
    return steps


async def get_definition_sections(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    with ctx.state.lock:
        steps = definition_sections(ctx.state, name)
    sections = []
    for step, kind in steps:
        links = {"self": link(f"{ctx.base}/config/submissionsections/{step}")}
        if kind == "submission-form":
            links["config"] = link(f"{ctx.base}/config/submissionforms/{step}")
        elif kind == "upload":
            links["config"] = link(f"{ctx.base}/config/submissionuploads/{step}")
        sections.append(
            {
                "id": step,
                "header": f"submit.progressbar.{step}",
                "mandatory": True,
                "sectionType": kind,
                "type": "submissionsection",
                "_links": links,
            }
        )
    href = f"{ctx.base}/config/submissiondefinitions/{name}/sections"
    return json_response(
        {
            "_embedded": {"sections": sections},
            "_links": {"self": link(href)},
            "page": page_block(max(len(sections), 1), len(sections), 0),
        }
    )


async def get_submission_form(ctx: Ctx) -> Response:
    """The fields of one form section (submissionforms.md), as rows of one field each."""
    name = ctx.request.path_params["name"]
    with ctx.state.lock:
        fields = next(
            (c.form[name] for c in ctx.state.collections.values() if name in c.form), None
        )
    if fields is None:
        raise ApiError(404, f"Submission form {name} not found")
    rows = [
        {
            "fields": [
                {
                    "input": {"type": "onebox"},
                    "label": key,
                    "mandatory": key in REQUIRED_FIELDS,
                    "repeatable": True,
                    "hints": "",
                    "selectableMetadata": [{"metadata": key}],
                }
            ]
        }
        for key in sorted(fields)
    ]
    return json_response(
        {
            "id": name,
            "name": name,
            "rows": rows,
            "type": "submissionform",
            "_links": {"self": link(f"{ctx.base}/config/submissionforms/{name}")},
        }
    )


async def deposit(ctx: Ctx) -> Response:
    """B2a step 7 [V]: text/uri-list with the workspace item URL.

    201 with an empty body when the collection has no workflow (archived now); 201 with a
    workflowitem when it has one; 422 on validation errors; 403 when not the submitter.
    """
    caller = ctx.need_auth()
    media = ctx.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/uri-list":
        raise ApiError(415, f"Content type '{media}' not supported; send text/uri-list")  # [U]
    text = (await ctx.request.body()).decode("utf-8", "replace")
    uris = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(uris) != 1:
        raise ApiError(422, "Exactly one workspace item URI is expected")  # [U]
    found = re.search(r"/submission/workspaceitems/(\d+)/?$", uris[0])
    state = ctx.state
    with state.lock:
        ws = state.workspace_items.get(int(found.group(1))) if found else None
        if ws is None:
            raise ApiError(422, f"No workspace item at {uris[0]}")  # [U]
        if ws.submitter != caller.email:
            raise ApiError(403, "Access is denied")
        errors = submission_errors(state, ws)
        if errors:
            summary = "; ".join(f"{e['message']} {', '.join(e['paths'])}" for e in errors)
            raise ApiError(422, f"Unprocessable request: {summary}", extra={"errors": errors})
        del state.workspace_items[ws.id]
        item = state.items[ws.item]
        if not state.collections[ws.collection].workflow:
            state.archive(item)
            return Response(status_code=201)
        state._workflow_ids += 1
        wf = WorkflowItem(state._workflow_ids, item.uuid, ws.collection, ws.submitter)
        state.workflow_items[wf.id] = wf
        return json_response(workflow_json(ctx, wf), 201)


async def get_workflow(ctx: Ctx) -> Response:
    caller = ctx.need_auth()
    with ctx.state.lock:
        wf = ctx.state.workflow_items.get(parse_int(ctx.request.path_params["id"], -1, "id"))
        if wf is None:
            raise ApiError(404, "WorkflowItem not found")
        if wf.submitter != caller.email and not caller.admin:
            raise ApiError(403, "Access is denied")
        return json_response(workflow_json(ctx, wf))


# --------------------------------------------------------------------------------------------
# B2b: administrator creation, and the core read endpoints


def readable_item(ctx: Ctx, uuid: str) -> StoredItem:
    item = ctx.state.items.get(uuid)
    if item is None:
        raise ApiError(404, f"Item with uuid {uuid} not found")  # B3 [V]: 404 = gone
    if item.in_archive:
        return item
    caller = ctx.need_auth()
    if not caller.admin and caller.email != item.submitter:
        raise ApiError(403, "Access is denied")
    return item


def check_registry(state: DSpaceState, metadata: Any) -> MetadataMap:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ApiError(422, "metadata must be an object of field -> values")
    known = state.registry()
    clean: MetadataMap = {}
    for key, values in metadata.items():
        if key not in known:
            # B2b [V]: only registered fields; [U] for the exact message
            raise ApiError(422, f"Unknown metadata field {key}: not in the metadata registry")
        if not isinstance(values, list):
            raise ApiError(422, f"Values of {key} must be an array")
        clean[key] = [normalise_value(v, key) for v in values]
    return clean


async def create_item(ctx: Ctx) -> Response:
    """B2b [V]: JSON item -> 201 item, archived (installItem), so handle and uri are set."""
    ctx.need_admin()
    body = await json_body(ctx.request)
    if not isinstance(body, dict):
        raise ApiError(422, "The item must be a JSON object")
    state = ctx.state
    with state.lock:
        collection = find_collection(state, ctx.request)
        metadata = check_registry(state, body.get("metadata"))
        if "dc.title" not in metadata and isinstance(body.get("name"), str) and body["name"]:
            metadata["dc.title"] = [value_object(body["name"])]
        caller = ctx.need_auth()
        item = StoredItem(
            str(uuidlib.uuid4()),
            collection.uuid,
            caller.email,
            state.next_seq(),
            metadata,
            discoverable=bool(body.get("discoverable", True)),
        )
        state.items[item.uuid] = item
        state.archive(item)
        return json_response(item_json(ctx, item), 201)


async def get_item(ctx: Ctx) -> Response:
    with ctx.state.lock:
        return json_response(item_json(ctx, readable_item(ctx, ctx.request.path_params["uuid"])))


async def get_identifiers(ctx: Ctx) -> Response:
    """B4 [V]: the handle listed as an identifier."""
    with ctx.state.lock:
        item = readable_item(ctx, ctx.request.path_params["uuid"])
        listed = (
            [
                {
                    "value": item.handle,
                    "identifierType": "handle",
                    "identifierStatus": None,
                    "type": "identifier",
                }
            ]
            if item.handle
            else []
        )
    href = f"{ctx.base}/core/items/{item.uuid}/identifiers"
    return json_response(
        {"identifiers": listed, "type": "identifiers", "_links": {"self": link(href)}}
    )


async def get_item_bundles(ctx: Ctx) -> Response:
    with ctx.state.lock:
        item = readable_item(ctx, ctx.request.path_params["uuid"])
        bundles = [bundle_json(ctx, ctx.state.bundles[b]) for b in item.bundles]
    href = f"{ctx.base}/core/items/{item.uuid}/bundles"
    return json_response(
        {
            "_embedded": {"bundles": bundles},
            "_links": {"self": link(href)},
            "page": page_block(max(len(bundles), 20), len(bundles), 0),
        }
    )


async def create_bundle(ctx: Ctx) -> Response:
    """B2b [V]: {"name": "ORIGINAL"} -> 201 bundle; 400 when that name exists."""
    ctx.need_admin()
    body = await json_body(ctx.request)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise ApiError(422, "A bundle needs a name")
    state = ctx.state
    with state.lock:
        item = readable_item(ctx, ctx.request.path_params["uuid"])
        if state.bundle_named(item, name) is not None:
            raise ApiError(400, f"The bundle name {name} already exists in the item")
        bundle = state.add_bundle(item, name)
        return json_response(bundle_json(ctx, bundle), 201)


def readable_bundle(ctx: Ctx, uuid: str) -> StoredBundle:
    bundle = ctx.state.bundles.get(uuid)
    if bundle is None:
        raise ApiError(404, f"Bundle with uuid {uuid} not found")
    readable_item(ctx, bundle.item)
    return bundle


async def get_bundle(ctx: Ctx) -> Response:
    with ctx.state.lock:
        return json_response(
            bundle_json(ctx, readable_bundle(ctx, ctx.request.path_params["uuid"]))
        )


async def get_bundle_bitstreams(ctx: Ctx) -> Response:
    with ctx.state.lock:
        bundle = readable_bundle(ctx, ctx.request.path_params["uuid"])
        listed = [bitstream_json(ctx, ctx.state.bitstreams[b]) for b in bundle.bitstreams]
    href = f"{ctx.base}/core/bundles/{bundle.uuid}/bitstreams"
    return json_response(
        {
            "_embedded": {"bitstreams": listed},
            "_links": {"self": link(href)},
            "page": page_block(max(len(listed), 20), len(listed), 0),
        }
    )


async def create_bitstream(ctx: Ctx) -> Response:
    """B2b [V]: multipart `file` + `properties` JSON -> 201 bitstream with its MD5.

    400 without a file or with more than one; 412 when the properties declare a size or an MD5
    the received bytes do not have ([U]: the notes name the status, not the property keys; the
    emulator reads `sizeBytes` and `checkSum.value`, the names the bitstream JSON uses).
    """
    ctx.need_admin()
    form = await ctx.request.form()
    uploads = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
    if len(uploads) != 1:
        raise ApiError(400, "Exactly one file part named 'file' is required")
    raw_properties = form.get("properties")
    if isinstance(raw_properties, UploadFile):
        raw_properties = (await raw_properties.read()).decode("utf-8")
    try:
        properties = json.loads(raw_properties) if raw_properties else {}
    except ValueError as exc:
        raise ApiError(422, f"properties is not valid JSON: {exc}") from exc
    if not isinstance(properties, dict):
        raise ApiError(422, "properties must be a JSON object")
    content = await uploads[0].read()
    declared_size = properties.get("sizeBytes")
    declared_md5 = (properties.get("checkSum") or {}).get("value")
    if declared_size is not None and int(declared_size) != len(content):
        raise ApiError(412, f"Declared size {declared_size} differs from received {len(content)}")
    actual = hashlib.md5(content).hexdigest()
    if declared_md5 and str(declared_md5).lower() != actual:
        raise ApiError(412, f"Declared MD5 {declared_md5} differs from received {actual}")
    state = ctx.state
    with state.lock:
        bundle = readable_bundle(ctx, ctx.request.path_params["uuid"])
        metadata = check_registry(state, properties.get("metadata"))
        name = properties.get("name") or uploads[0].filename or "file"
        bitstream = state.store_bitstream(bundle, str(name), content, metadata)
        return json_response(bitstream_json(ctx, bitstream), 201)


def readable_bitstream(ctx: Ctx, uuid: str) -> StoredBitstream:
    bitstream = ctx.state.bitstreams.get(uuid)
    if bitstream is None:
        raise ApiError(404, f"Bitstream with uuid {uuid} not found")
    readable_bundle(ctx, bitstream.bundle)
    return bitstream


async def get_bitstream(ctx: Ctx) -> Response:
    with ctx.state.lock:
        bitstream = readable_bitstream(ctx, ctx.request.path_params["uuid"])
        return json_response(bitstream_json(ctx, bitstream))


async def get_bitstream_content(ctx: Ctx) -> Response:
    with ctx.state.lock:
        bitstream = readable_bitstream(ctx, ctx.request.path_params["uuid"])
    return Response(
        bitstream.content,
        media_type=bitstream.mimetype,
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(bitstream.name)}"},
    )


async def delete_bitstream(ctx: Ctx) -> Response:
    ctx.need_admin()
    state = ctx.state
    with state.lock:
        bitstream = readable_bitstream(ctx, ctx.request.path_params["uuid"])
        state.bundles[bitstream.bundle].bitstreams.remove(bitstream.uuid)
        del state.bitstreams[bitstream.uuid]
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------
# B3: discovery search

CLAUSE = re.compile(
    r'\s*(?:(?P<field>[A-Za-z][\w.]*):)?(?:"(?P<phrase>(?:\\.|[^"\\])*)"|(?P<term>(?:\\.|[^\s"\\])+))'
)


def lucene_unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def contains_run(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False
    width = len(needle)
    return any(haystack[i : i + width] == needle for i in range(len(haystack) - width + 1))


def parse_query(query: str) -> list[tuple[str | None, str, bool]]:
    """Clauses (field or None, text, is_phrase), all required (B3 [P]: fields as schema.element.q).

    Supported: `field:"phrase"`, `field:term`, bare words, `*:*`, and the `AND` keyword; `OR`,
    grouping and ranges are not emulated ([U] for anything beyond this).
    """
    clauses: list[tuple[str | None, str, bool]] = []
    rest = query.strip()
    if rest in ("", "*", "*:*"):
        return clauses
    position = 0
    while position < len(rest):
        match = CLAUSE.match(rest, position)
        if match is None or match.end() == position:
            raise ApiError(422, f"Unparsable search query near: {rest[position : position + 30]}")
        position = match.end()
        if match.group("term") == "AND" and not match.group("field"):
            continue
        if match.group("phrase") is not None:
            clauses.append((match.group("field"), lucene_unescape(match.group("phrase")), True))
        else:
            clauses.append((match.group("field"), lucene_unescape(match.group("term")), False))
    return clauses


def matches(item: StoredItem, clauses: list[tuple[str | None, str, bool]]) -> bool:
    for key, text, _phrase in clauses:
        haystacks = item.values(key) if key else item.values("dc.title")
        wanted = tokens(text)
        # a phrase is a run of tokens (Solr text field); a term must be one of the tokens or,
        # when it holds several (koha:42), the same run
        if not any(contains_run(tokens(h), wanted) for h in haystacks):
            return False
    return True


async def search_objects(ctx: Ctx) -> Response:
    """B3 [V]: Lucene query over archived, discoverable items; MyDSpace configurations."""
    params = ctx.request.query_params
    query = params.get("query", "")
    configuration = params.get("configuration") or "default"
    dso_type = (params.get("dsoType") or "item").lower()
    scope = params.get("scope") or None
    page = max(parse_int(params.get("page"), 0, "page"), 0)
    size = min(max(parse_int(params.get("size"), DEFAULT_PAGE_SIZE, "size"), 1), MAX_PAGE_SIZE)
    clauses = parse_query(query)
    state = ctx.state
    with state.lock:
        found: list[dict[str, Any]] = []
        if dso_type in ("item", "all"):
            if configuration in ("workspace", "workflow"):
                caller = ctx.need_auth()
                found = in_progress_hits(ctx, caller, configuration, clauses, scope)
            else:
                visible = [
                    i
                    for i in sorted(state.items.values(), key=lambda i: i.seq)
                    if i.in_archive
                    and i.discoverable
                    and not i.withdrawn
                    and (scope is None or i.collection == scope)
                    and matches(i, clauses)
                ]
                found = [item_json(ctx, i) for i in visible]
    total = len(found)
    window = found[page * size : (page + 1) * size]
    objects = [
        {
            "hitHighlights": {},
            "type": "discover",
            "_embedded": {"indexableObject": obj},
            "_links": {"indexableObject": obj["_links"]["self"]},
        }
        for obj in window
    ]

    def page_href(number: int) -> str:
        kept = {k: v for k, v in params.items() if k not in ("page", "size")}
        return f"{ctx.base}/discover/search/objects?{urlencode({**kept, 'page': number, 'size': size})}"

    block = page_block(size, total, page)
    links = {"self": link(page_href(page)), "first": link(page_href(0))}
    if (page + 1) * size < total:
        links["next"] = link(page_href(page + 1))
        links["last"] = link(page_href(block["totalPages"] - 1))
    if page > 0:
        links["prev"] = link(page_href(page - 1))
    # The notes write `_embedded.searchResults`; live DSpace 7 servers answer `searchResult`
    # (singular), as clients written against them read it ([P], several third-party clients).
    body = {
        "query": query or None,
        "scope": scope,
        "configuration": configuration,
        "appliedFilters": [],
        "sort": {"by": "score", "order": "DESC"},
        "type": "discover",
        "_embedded": {
            "searchResult": {
                "_embedded": {"objects": objects},
                "_links": links,
                "page": block,
            },
            "facets": [],
        },
        "_links": {"self": link(page_href(page))},
    }
    return json_response(body)


def in_progress_hits(
    ctx: Ctx,
    caller: Caller,
    configuration: str,
    clauses: list[tuple[str | None, str, bool]],
    scope: str | None,
) -> list[dict[str, Any]]:
    """B3 [V]: `workspace`/`workflow` show the submitter's own items in progress.

    [U]: the indexable object is the workspace/workflow item with the item embedded.
    """
    state = ctx.state
    hits: list[dict[str, Any]] = []
    pool: list[WorkspaceItem | WorkflowItem] = list(
        state.workspace_items.values()
        if configuration == "workspace"
        else state.workflow_items.values()
    )
    for entry in pool:
        item = state.items[entry.item]
        if entry.submitter != caller.email and not caller.admin:
            continue
        if scope is not None and item.collection != scope:
            continue
        if not matches(item, clauses):
            continue
        view = (
            workspace_json(ctx, entry)
            if isinstance(entry, WorkspaceItem)
            else workflow_json(ctx, entry)
        )
        view["_embedded"] = {"item": item_json(ctx, item)}
        hits.append(view)
    return hits


# --------------------------------------------------------------------------------------------
# control API (tests and demo only)


def control_routes(state: DSpaceState) -> list[Route]:
    def loopback(request: Request) -> None:
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost", "testclient"):
            raise PermissionError(host)

    async def summary(request: Request) -> Response:
        try:
            loopback(request)
        except PermissionError:
            return JSONResponse({"error": "loopback only"}, status_code=403)
        return JSONResponse(state.summary())

    async def faults(request: Request) -> Response:
        try:
            loopback(request)
            body = json.loads(await request.body() or b"{}")
        except PermissionError:
            return JSONResponse({"error": "loopback only"}, status_code=403)
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        with state.lock:
            if "latency" in body:
                state.latency = float(body["latency"])
            if "down" in body:
                state.down = bool(body["down"])
            if "rotate_csrf_every_response" in body:
                state.rotate_csrf_every_response = bool(body["rotate_csrf_every_response"])
            if body.get("expire_tokens"):
                state.expire_tokens()
            if "fail_next" in body:
                spec = body["fail_next"]
                state.fail_next(
                    int(spec.get("count", 1)),
                    int(spec.get("status", 500)),
                    str(spec.get("path_prefix", "")),
                )
            if "corrupt_uploads" in body:
                state.corrupt_next_uploads(int(body["corrupt_uploads"]))
        return JSONResponse(state.summary()["faults"])

    async def approve(request: Request) -> Response:
        try:
            loopback(request)
        except PermissionError:
            return JSONResponse({"error": "loopback only"}, status_code=403)
        try:
            item = state.approve(request.path_params["ref"])
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(
            {"uuid": item.uuid, "handle": item.handle, "inArchive": item.in_archive}
        )

    return [
        Route("/_sandbox/summary", summary, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["POST"]),
        Route("/_sandbox/approve/{ref}", approve, methods=["POST"]),
    ]


def create_app(state: DSpaceState | None = None) -> Starlette:
    """The emulator as an ASGI app; `app.state.dspace` is its `DSpaceState`."""
    state = state if state is not None else DSpaceState()
    table: list[tuple[str, str, Handler]] = [
        ("GET", "/security/csrf", get_csrf),
        ("POST", "/authn/login", post_login),
        ("GET", "/authn/status", get_status),
        ("POST", "/authn/logout", post_logout),
        ("POST", "/submission/workspaceitems", create_workspace),
        ("GET", "/submission/workspaceitems/search/findBySubmitter", find_workspace_by_submitter),
        ("GET", "/submission/workspaceitems/{id}", get_workspace),
        ("GET", "/submission/workspaceitems/{id}/item", get_workspace_item),
        ("PATCH", "/submission/workspaceitems/{id}", patch_workspace),
        ("POST", "/submission/workspaceitems/{id}", upload_to_workspace),
        ("DELETE", "/submission/workspaceitems/{id}", delete_workspace),
        ("GET", "/config/submissiondefinitions/search/findByCollection", find_definition),
        ("GET", "/config/submissiondefinitions/{name}/sections", get_definition_sections),
        ("GET", "/config/submissionforms/{name}", get_submission_form),
        ("POST", "/workflow/workflowitems", deposit),
        ("GET", "/workflow/workflowitems/{id}", get_workflow),
        ("POST", "/core/items", create_item),
        ("GET", "/core/items/{uuid}", get_item),
        ("GET", "/core/items/{uuid}/identifiers", get_identifiers),
        ("GET", "/core/items/{uuid}/bundles", get_item_bundles),
        ("POST", "/core/items/{uuid}/bundles", create_bundle),
        ("GET", "/core/bundles/{uuid}", get_bundle),
        ("GET", "/core/bundles/{uuid}/bitstreams", get_bundle_bitstreams),
        ("POST", "/core/bundles/{uuid}/bitstreams", create_bitstream),
        ("GET", "/core/bitstreams/{uuid}", get_bitstream),
        ("GET", "/core/bitstreams/{uuid}/content", get_bitstream_content),
        ("DELETE", "/core/bitstreams/{uuid}", delete_bitstream),
        ("GET", "/discover/search/objects", search_objects),
    ]
    routes = [api_route(state, method, template, handler) for method, template, handler in table]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "Not Found", request.url.path)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(
            405, f"Request method '{request.method}' is not supported", request.url.path
        )

    app = Starlette(
        routes=[*routes, *control_routes(state)],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.state.dspace = state
    return app
