"""An emulator of the DSpace 7/8 REST contract (`/server/api`), for the demo and the tests.

It follows the research notes in `koha-dspace-contracts.md` (parts B and E), checked against
DSpace/DSpace itself (branches dspace-7_x and dspace-8_x: `dspace-server-webapp` and its
integration tests, `dspace/config`), not against shelfwork's client: each behaviour names its
contract point (B1 authentication and CSRF, B2a submission, B2b admin creation, B3 duplicate
search, B4 handles) and the DSpace source it was read in, with the notes' confidence mark where
they give one ([V] confirmed, [P] seen in a fork, another version or a library, [U] unverified).
Where the sources are silent the emulator picks the stricter reading and says so with [U].
`tests/contracts/test_dspace_contract.py` holds it to shapes taken from DSpace's own tests.

Collections use DSpace's stock `traditional` submission form (`dspace/config/submission-forms.xml`,
dspace-8_x by default, `stock_form("dspace-7_x")` for 7) unless given a local one. Reviewers of a
collection's workflow see its pool tasks; `DSpaceState.approve` / `reject` act for them.

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

# --------------------------------------------------------------------------------------------
# submission forms


@dataclass(frozen=True)
class FormField:
    """One <field> of submission-forms.xml as DSpace's SubmissionFormConverter shows it.

    `keys` is the field's metadata key, or for a `qualdrop_value` field one key per value pair
    (DCInputSet.isFieldPresent accepts each of them); `pairs` are that field's (label, qualifier)
    value pairs. `required` is the <required> message (None: optional)."""

    keys: tuple[str, ...]
    input: str
    label: str
    repeatable: bool
    required: str | None = None
    style: str | None = None
    vocabulary: str | None = None  # a value-pairs list or a <vocabulary>
    closed: bool = False
    pairs: tuple[tuple[str, str], ...] = ()


#: a form: section (step) id -> rows -> fields
Form = dict[str, tuple[tuple[FormField, ...], ...]]

#: value-pairs "common_identifiers" of the stock submission-forms.xml: (displayed, stored)
COMMON_IDENTIFIERS = (
    ("ISSN", "issn"),
    ("Other", "other"),
    ("ISMN", "ismn"),
    ("Gov't Doc #", "govdoc"),
    ("URI", "uri"),
    ("ISBN", "isbn"),
)
#: where the stock form sits in DSpace/DSpace
STOCK_SOURCE = "dspace/config/submission-forms.xml"
STOCK_BRANCHES = ("dspace-7_x", "dspace-8_x")


def stock_form(branch: str = "dspace-8_x") -> Form:
    """The describe pages of DSpace's stock `traditional` submission (`dspace/config/
    submission-forms.xml`, forms traditionalpageone and traditionalpagetwo, read on DSpace/DSpace
    dspace-7_x @9a9c310 and dspace-8_x @996efc1): the same rows on both branches, except that
    8_x makes dc.type required ("You must choose at least one type.", since 8.0) and styles the
    date row col-md-4 / col-md-8 (col-sm-* on 7_x; changed in 8.4). Hints are left out."""
    if branch not in STOCK_BRANCHES:
        raise SandboxError(
            f"sandbox dspace: no stock form for {branch!r} (known: {STOCK_BRANCHES})"
        )
    type_required = "You must choose at least one type." if branch == "dspace-8_x" else None
    width = "md" if branch == "dspace-8_x" else "sm"
    return {
        "traditionalpageone": (
            (FormField(("dc.contributor.author",), "onebox", "Author", True),),
            (
                FormField(
                    ("dc.title",),
                    "onebox",
                    "Title",
                    False,
                    "You must enter a main title for this item.",
                ),
            ),
            (FormField(("dc.title.alternative",), "onebox", "Other Titles", True),),
            (
                FormField(
                    ("dc.date.issued",),
                    "date",
                    "Date of Issue",
                    False,
                    "You must enter at least the year.",
                    style=f"col-{width}-4",
                ),
                FormField(("dc.publisher",), "onebox", "Publisher", False, style=f"col-{width}-8"),
            ),
            (FormField(("dc.identifier.citation",), "onebox", "Citation", False),),
            (FormField(("dc.relation.ispartofseries",), "series", "Series/Report No.", True),),
            (
                FormField(
                    tuple(f"dc.identifier.{q}" for _, q in COMMON_IDENTIFIERS),
                    "qualdrop_value",
                    "Identifiers",
                    True,
                    vocabulary="common_identifiers",
                    pairs=COMMON_IDENTIFIERS,
                ),
            ),
            (
                FormField(
                    ("dc.type",),
                    "dropdown",
                    "Type",
                    True,
                    type_required,
                    vocabulary="common_types",
                    closed=True,
                ),
            ),
            (
                FormField(
                    ("dc.language.iso",),
                    "dropdown",
                    "Language",
                    False,
                    vocabulary="common_iso_languages",
                    closed=True,
                ),
            ),
        ),
        "traditionalpagetwo": (
            (FormField(("dc.subject",), "tag", "Subject Keywords", True, vocabulary="srsc"),),
            (FormField(("dc.description.abstract",), "textarea", "Abstract", False),),
            (FormField(("dc.description.sponsorship",), "textarea", "Sponsors", False),),
            (FormField(("dc.description",), "textarea", "Description", False),),
        ),
    }


def simple_form(sections: dict[str, set[str]] | dict[str, frozenset[str]]) -> Form:
    """A local form given as section -> field keys: one onebox per row, repeatable; dc.title and
    dc.date.issued required where present, as in the stock form."""
    required = {
        "dc.title": "You must enter a main title for this item.",
        "dc.date.issued": "You must enter at least the year.",
    }
    return {
        section: tuple(
            (FormField((key,), "onebox", key, True, required.get(key)),) for key in sorted(keys)
        )
        for section, keys in sections.items()
    }


def form_fields(form: Form) -> dict[str, tuple[str, ...]]:
    """Section -> every metadata key its form accepts (DCInputSet.isFieldPresent)."""
    return {
        section: tuple(key for row in rows for f in row for key in f.keys)
        for section, rows in form.items()
    }


#: The stock metadata registry's dc schema (dspace/config/registries/dublin-core-types.xml, the same
#: 70 fields on dspace-7_x and dspace-8_x): what the admin path (B2b) may write, and what DSpace
#: writes itself at archive time (B4). Local forms add their fields to it.
DC_REGISTRY = frozenset(
    f"dc.{name}"
    for name in [
        "contributor",
        "contributor.advisor",
        "contributor.author",
        "contributor.editor",
        "contributor.illustrator",
        "contributor.other",
        "coverage.spatial",
        "coverage.temporal",
        "creator",
        "date",
        "date.accessioned",
        "date.available",
        "date.copyright",
        "date.created",
        "date.issued",
        "date.submitted",
        "identifier",
        "identifier.citation",
        "identifier.govdoc",
        "identifier.isbn",
        "identifier.issn",
        "identifier.sici",
        "identifier.ismn",
        "identifier.other",
        "identifier.doi",
        "identifier.scopus",
        "identifier.uri",
        "description",
        "description.abstract",
        "description.provenance",
        "description.sponsorship",
        "description.statementofresponsibility",
        "description.tableofcontents",
        "description.uri",
        "format",
        "format.extent",
        "format.medium",
        "format.mimetype",
        "language",
        "language.iso",
        "publisher",
        "relation",
        "relation.isformatof",
        "relation.ispartof",
        "relation.ispartofseries",
        "relation.haspart",
        "relation.isversionof",
        "relation.hasversion",
        "relation.isbasedon",
        "relation.isreferencedby",
        "relation.requires",
        "relation.replaces",
        "relation.isreplacedby",
        "relation.uri",
        "rights",
        "rights.uri",
        "source",
        "source.uri",
        "subject",
        "subject.classification",
        "subject.ddc",
        "subject.lcc",
        "subject.lcsh",
        "subject.mesh",
        "subject.other",
        "title",
        "title.alternative",
        "type",
        "provenance",
        "rights.license",
    ]
)
#: dspace.cfg (7_x and 8_x): metadata.hide.dc.description.provenance = true; ItemConverter
#: .getPermissionFilteredMetadata shows hidden fields only to administrators and to whoever may
#: edit the item
HIDDEN_FIELDS = frozenset({"dc.description.provenance"})
MAX_PAGE_SIZE = 100  # [U] rest.search.max.results default
DEFAULT_PAGE_SIZE = 20  # [U]

MetadataMap = dict[str, list[dict[str, Any]]]


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
    form: Form = field(default_factory=stock_form)
    #: e-mails of the reviewers of its workflow's single step (they get its pool tasks)
    reviewers: tuple[str, ...] = ()

    @property
    def definition(self) -> str:
        """Submission definition name: `traditional` for a stock form, one per local form."""
        stock = any(self.form == stock_form(branch) for branch in STOCK_BRANCHES)
        return "traditional" if stock else f"custom-{self.uuid[:8]}"

    def keys(self, section: str) -> tuple[str, ...]:
        return form_fields({section: self.form[section]})[section] if section in self.form else ()


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
    #: when the deposit license was granted; None: not granted. DSpace keeps the grant on the
    #: item, as a license.txt in its LICENSE bundle (LicenseUtils.grantLicense; LicenseStep.getData
    #: and LicenseValidation look for it there), so it outlives the workspace item: a rejected
    #: item comes back granted (returnToWorkspace: "FIXME: Remove license"). The bundle itself
    #: is not emulated.
    license_accepted: str | None = None

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


@dataclass
class WorkflowItem:
    id: int
    item: str
    collection: str
    submitter: str
    pool_task: int | None = None  # the open task of the collection's reviewers, if it has any


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
    # None: `<server url>/handle/`; [V] dspace.cfg (7_x, 8_x) sets `${dspace.ui.url}/handle/`, and
    # the emulator has no separate UI
    canonical_prefix: str | None = None
    jwt_ttl: float = 1800.0  # B1 [V]: 30 minutes by default
    calls: Counter[str] = field(default_factory=Counter)
    #: every answer by status (503s of `down` too): how a test sees that a fault it set fired.
    #: Instrumentation of the emulator, not a behaviour of DSpace.
    answered: Counter[int] = field(default_factory=Counter)
    # faults
    latency: float = 0.0
    rotate_csrf_every_response: bool = False
    down: bool = False
    server_url: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _faults: list[PendingFault] = field(default_factory=list, repr=False)
    _expire_at: list[str] = field(default_factory=list, repr=False)
    _corrupt_uploads: int = field(default=0, repr=False)
    _live_csrf: set[str] = field(default_factory=set, repr=False)
    _live_jti: set[str] = field(default_factory=set, repr=False)
    _workspace_ids: int = field(default=0, repr=False)
    _workflow_ids: int = field(default=0, repr=False)
    _task_ids: int = field(default=0, repr=False)
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
        form: Form | dict[str, set[str]] | None = None,
        uuid: str | None = None,
        reviewers: list[str] | tuple[str, ...] = (),
    ) -> str:
        """Add a collection (default: the stock dspace-8_x form). A form given as section -> keys
        becomes a simple local form. Its section ids are global step ids, as in
        item-submission.xml. `reviewers` (e-mails) get the pool tasks of its workflow."""
        chosen = uuid or str(uuidlib.uuid4())
        wanted = stock_form() if form is None else form
        if any(isinstance(rows, (set, frozenset)) for rows in wanted.values()):
            wanted = simple_form(wanted)  # type: ignore[arg-type]
        with self.lock:
            for other in self.collections.values():
                for section, rows in wanted.items():
                    if section in other.form and other.form[section] != rows:
                        raise SandboxError(
                            f"sandbox dspace: form section {section!r} already defined with "
                            f"other fields (collection {other.name!r}); step ids are global"
                        )
            self.collections[chosen] = Collection(
                chosen,
                name,
                workflow,
                wanted,  # type: ignore[arg-type]
                tuple(r.lower() for r in reviewers),
            )
        return chosen

    # ---- faults

    def fail_next(self, count: int = 1, status: int = 500, path_prefix: str = "") -> None:
        """The next `count` API requests whose path starts with `path_prefix` answer `status`.

        The prefix may be given with or without `/server/api` (e.g. "/core/items").
        """
        with self.lock:
            self._faults.append(PendingFault(count, status, path_prefix))

    def clear_faults(self) -> None:
        """Forget the failures `fail_next` set that have not happened yet: DSpace is back."""
        with self.lock:
            self._faults.clear()

    def expire_tokens(self) -> None:
        """Every JWT issued so far expires now: the next request bearing one gets 401."""
        with self.lock:
            self._live_jti.clear()

    def expire_tokens_at(self, call: str) -> None:
        """Every JWT issued so far expires when the next `call` ("POST /submission/workspaceitems",
        a key of `calls`) arrives, before it is answered: a token that runs out mid-job, at a
        point the test chooses."""
        with self.lock:
            self._expire_at.append(call)

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
            wf = self.in_review(ref)
            del self.workflow_items[wf.id]
            item = self.items[wf.item]
            self.archive(item)
            return item

    def reject(self, ref: int | str, reviewer: str, reason: str) -> WorkspaceItem:
        """A reviewer's rejection, as XmlWorkflowServiceImpl.sendWorkflowItemBackSubmission does it
        (7_x and 8_x): the provenance note "<step> Rejected by <name> (<email>), reason: <reason>
        on <date> (GMT) " is added, the workflow item and its tasks go, and returnToWorkspace makes
        a new workspace item (a new id) for the same item, which stays unarchived; the submitter
        gets all item policies back."""
        with self.lock:
            wf = self.in_review(ref)
            item = self.items[wf.item]
            name = next((e for e in self.users if e.lower() == reviewer.lower()), reviewer)
            provenance = (
                f"Step: reviewstep - action:reviewaction Rejected by {name} ({name}), reason: "
                f"{reason} on {now_iso()} (GMT) "
            )
            item.metadata.setdefault("dc.description.provenance", []).append(
                value_object(provenance, "en")
            )
            item.last_modified = now_iso()
            del self.workflow_items[wf.id]
            self._workspace_ids += 1
            ws = WorkspaceItem(self._workspace_ids, item.uuid, wf.collection, wf.submitter)
            self.workspace_items[ws.id] = ws
            return ws

    def in_review(self, ref: int | str) -> WorkflowItem:
        """The workflow item `ref` names: its id, or its item's UUID."""
        with self.lock:
            wf: WorkflowItem | None = None
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                wf = self.workflow_items.get(int(ref))
            else:
                wf = next((w for w in self.workflow_items.values() if w.item == ref), None)
            if wf is None:
                raise SandboxError(f"sandbox dspace: nothing in review matches {ref!r}")
            return wf

    def withdraw(self, item_uuid: str) -> None:
        with self.lock:
            item = self.items[item_uuid]
            item.withdrawn = True
            item.discoverable = False

    # ---- internals used by the routes (call with the lock held)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def bitstream_provenance(self, item: StoredItem) -> str:
        """InstallItemServiceImpl.getBitstreamProvenanceMessage (7_x and 8_x): the count, then per
        file "<name>: <size> bytes, checksum: <md5> (MD5)", each line ended by a newline."""
        files = [
            self.bitstreams[b]
            for bundle in item.bundles
            if self.bundles[bundle].name != "LICENSE"
            for b in self.bundles[bundle].bitstreams
        ]
        lines = [f"No. of bitstreams: {len(files)}"]
        lines += [f"{b.name}: {b.size} bytes, checksum: {b.md5} (MD5)" for b in files]
        return "".join(f"{line}\n" for line in lines)

    def record_start(self, item: StoredItem, start: str | None) -> None:
        """XmlWorkflowServiceImpl.recordStart (7_x and 8_x), when a submission is deposited:
        "Submitted by <full name, or the e-mail without one> (<email>) on <date>", then
        " workflow start=<step and action>" when a review step takes it, then the files."""
        stamp = now_iso()
        note = f"Submitted by {item.submitter} ({item.submitter}) on {stamp}"
        note += f" workflow start={start}\n" if start else "\n"
        note += self.bitstream_provenance(item)
        item.metadata.setdefault("dc.description.provenance", []).append(value_object(note, "en"))

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
        # InstallItemServiceImpl.populateMetadata (7_x and 8_x)
        add_value(
            item.metadata,
            "dc.description.provenance",
            f"Made available in DSpace on {stamp} (GMT). {self.bitstream_provenance(item)}",
        )
        item.last_modified = stamp

    def registry(self) -> set[str]:
        """The metadata registry: the stock dc schema plus the fields of local forms."""
        known = set(DC_REGISTRY)
        for collection in self.collections.values():
            for keys in form_fields(collection.form).values():
                known |= set(keys)
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
        # the name is the bitstream's dc.title, set after the given metadata
        # (BundleRestRepository.processBitstreamCreation: setMetadata, then setName)
        meta = {**(metadata or {}), "dc.title": [value_object(name)]}
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
        problem: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}
        #: answered by Spring's own ResponseEntityExceptionHandler (a ProblemDetail on Spring 6)
        #: rather than by DSpaceApiExceptionControllerAdvice's sendError
        self.problem = problem


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


def problem_response(status: int, detail: str, path: str) -> JSONResponse:
    """Spring 6's ProblemDetail (DSpace 8: spring 6.2): what ResponseEntityExceptionHandler, which
    DSpaceApiExceptionControllerAdvice extends, answers for Spring's own MVC exceptions such as
    HttpMediaTypeNotSupportedException [P: read in Spring's source, not in a DSpace IT; DSpace 7
    (Spring 5.3) sends the same status and headers with an empty body]."""
    body = {
        "type": "about:blank",
        "title": REASONS.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": path,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


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
            if key in state._expire_at:
                state._expire_at.remove(key)
                state._live_jti.clear()
        if latency > 0:
            await asyncio.sleep(latency)
        if down:
            with state.lock:
                state.answered[503] += 1
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
            if exc.problem:
                response = problem_response(exc.status, exc.message, path)
            else:
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
        with state.lock:
            state.answered[response.status_code] += 1
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


def can_edit(ctx: Ctx, item: StoredItem) -> bool:
    """ItemService.canEdit as far as the emulator models policies: administrators, and the
    submitter while the item sits in their workspace (WorkspaceItemService.create and
    XmlWorkflowServiceImpl.returnToWorkspace grant them all item policies; starting the workflow
    leaves them READ only, grantSubmitterReadPolicies)."""
    caller = ctx.caller
    if caller is None:
        return False
    if caller.admin:
        return True
    return any(
        ws.item == item.uuid and ws.submitter == caller.email
        for ws in ctx.state.workspace_items.values()
    )


def shown_metadata(ctx: Ctx, item: StoredItem) -> MetadataMap:
    """ItemConverter.getPermissionFilteredMetadata (7_x and 8_x): a withdrawn item shows no
    metadata to non-admins; hidden fields (metadata.hide.*) only to those who may edit it."""
    if item.withdrawn and not (ctx.caller and ctx.caller.admin):
        return {}
    if can_edit(ctx, item):
        return placed(item.metadata)
    return placed({k: v for k, v in item.metadata.items() if k not in HIDDEN_FIELDS})


def item_json(ctx: Ctx, item: StoredItem) -> dict[str, Any]:
    href = f"{ctx.base}/core/items/{item.uuid}"
    return {
        "id": item.uuid,
        "uuid": item.uuid,
        "name": item.name,
        "handle": item.handle,  # B4 [V]: null until archived
        "metadata": shown_metadata(ctx, item),
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
    """One file of an upload section (workspaceitem-data-upload.md)."""
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
    """B2a step 6 [V]: errors grouped by message, each with the paths it applies to.

    MetadataValidation.validate (7_x and 8_x): a required field without a value is
    error.validation.required at /sections/<form>/<field> (a qualdrop field under its unqualified
    name); UploadValidation and LicenseValidation add filerequired and license.notgranted."""
    item = state.items[ws.item]
    collection = state.collections[ws.collection]
    missing = [
        f"/sections/{section}/{input_name(f)}"
        for section, rows in collection.form.items()
        for row in rows
        for f in row
        if f.required and not any(item.values(key) for key in f.keys)
    ]
    errors: list[dict[str, Any]] = []
    if missing:
        errors.append({"message": "error.validation.required", "paths": missing})
    if not original_files(state, item):
        # [V] UploadConfiguration.isRequired: webui.submit.upload.required, default true
        errors.append({"message": "error.validation.filerequired", "paths": ["/sections/upload"]})
    if item.license_accepted is None:
        errors.append(
            {"message": "error.validation.license.notgranted", "paths": ["/sections/license"]}
        )
    return errors


def input_name(form_field: FormField) -> str:
    """DCInput.getFieldName: schema.element[.qualifier]; a qualdrop field has no qualifier."""
    key = form_field.keys[0]
    return key.rsplit(".", 1)[0] if form_field.pairs else key


def form_sections(ctx: Ctx, collection: Collection, item: StoredItem) -> dict[str, Any]:
    """The `sections` of a workspace or workflow item (AInprogressItemConverter): each describe
    step with the item's values of its fields, then upload, license and collection."""
    shown = placed(item.metadata)
    sections: dict[str, Any] = {}
    for section in collection.form:
        keys = set(collection.keys(section))
        sections[section] = {k: v for k, v in shown.items() if k in keys}
    sections["upload"] = {
        "primary": None,
        "files": [upload_file_json(ctx, b) for b in original_files(ctx.state, item)],
    }
    return sections


def workspace_json(ctx: Ctx, ws: WorkspaceItem) -> dict[str, Any]:
    state = ctx.state
    item = state.items[ws.item]
    collection = state.collections[ws.collection]
    href = f"{ctx.base}/submission/workspaceitems/{ws.id}"
    sections = form_sections(ctx, collection, item)
    sections["license"] = {
        "url": None,
        "acceptanceDate": item.license_accepted,
        "granted": item.license_accepted is not None,
    }
    sections["collection"] = collection.uuid
    body: dict[str, Any] = {
        "id": ws.id,  # B2a [V]: an integer id
        "lastModified": item.last_modified,
        "sections": sections,
    }
    errors = submission_errors(state, ws)
    if errors:  # BaseObjectRest: @JsonInclude(NON_EMPTY) errors
        body["errors"] = errors
    body["type"] = "workspaceitem"
    body["_links"] = {
        "collection": link(f"{href}/collection"),
        "item": link(f"{href}/item"),
        "submissionDefinition": link(f"{href}/submissionDefinition"),
        "submitter": link(f"{href}/submitter"),
        "self": link(href),
    }
    return body


def workflow_json(ctx: Ctx, wf: WorkflowItem) -> dict[str, Any]:
    """WorkflowItemMatcher (7_x and 8_x): id, type workflowitem, the describe sections, and links
    to item, collection, submitter and submissionDefinition."""
    state = ctx.state
    item = state.items[wf.item]
    href = f"{ctx.base}/workflow/workflowitems/{wf.id}"
    sections = form_sections(ctx, state.collections[wf.collection], item)
    return {
        "id": wf.id,
        "lastModified": item.last_modified,
        "sections": sections,
        "type": "workflowitem",
        "_links": {
            "collection": link(f"{href}/collection"),
            "item": link(f"{href}/item"),
            "submissionDefinition": link(f"{href}/submissionDefinition"),
            "submitter": link(f"{href}/submitter"),
            "self": link(href),
        },
    }


def pooltask_json(ctx: Ctx, wf: WorkflowItem) -> dict[str, Any]:
    """PoolTaskMatcher (8_x): id, type pooltask, links to eperson, group, workflowitem and self;
    in a workflow-configuration search hit the workflow item is embedded
    (DiscoveryRestControllerIT.discoverSearchObjectsWorkflowConfigurationTest)."""
    href = f"{ctx.base}/workflow/pooltasks/{wf.pool_task}"
    return {
        "id": wf.pool_task,
        "type": "pooltask",
        "_links": {
            "eperson": link(f"{href}/eperson"),
            "group": link(f"{href}/group"),
            "workflowitem": link(f"{href}/workflowitem"),
            "self": link(href),
        },
        "_embedded": {"workflowitem": workflow_json(ctx, wf)},
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
        # [V] SubmissionService.createWorkspaceItem (7_x and 8_x) throws RESTAuthorizationException
        # ("collectionUUID=… not found"); DSpaceApiExceptionControllerAdvice
        # .handleAuthorizeException answers a logged-in caller 403 "Access is denied"
        raise ApiError(403, "Access is denied")
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


#: RestResourceController (7_x and 8_x): the POST mappings of a collection endpoint consume JSON
#: (`post`), text/uri-list (`postWithUriListContentType`) or multipart (`upload`, a header
#: condition Spring treats as consumes); anything else finds no handler
COLLECTION_POST_TYPES = (
    "application/json",
    "application/hal+json",
    "text/uri-list",
    "multipart/form-data",
)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def create_workspace(ctx: Ctx) -> Response:
    """B2a step 2 [V]: POST with owningCollection and a JSON body -> 201 workspaceitem.

    RestResourceController.post consumes only application/json and application/hal+json; with no
    Content-Type (Spring then takes application/octet-stream, ConsumesRequestCondition) or another
    type no mapping matches and Spring answers 415 with the consumable types in Accept, before the
    repository (and its authorisation) is reached. WorkspaceItemRestRepository.createAndReturn
    ignores the body ({} is what a client sends). The text/uri-list and multipart variants
    (creating from an external source or from files) are not emulated ([U])."""
    media = media_type(ctx.request)
    if media not in COLLECTION_POST_TYPES:
        shown = media or "null"
        raise ApiError(
            415,
            f"Content-Type '{shown}' is not supported.",
            headers={"Accept": ", ".join(COLLECTION_POST_TYPES)},
            problem=True,
        )
    if media not in ("application/json", "application/hal+json"):
        raise ApiError(400, f"POST with {media} is not emulated (sandbox)")
    await ctx.request.body()  # read and ignored, as createAndReturn does
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
        granted = item.license_accepted is not None
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
                if key not in collection.keys(section):
                    # B2a [V] DescribeStep.doPatchProcessing (7_x and 8_x): a field the section's
                    # form lacks (DCInputSet.isFieldPresent) is an UnprocessableEntityException
                    raise ApiError(422, f"The field {key} is not present in section {section}")
                index = parts[4] if len(parts) > 4 else None
                apply_metadata_op(metadata, name, path, key, index, op.get("value"))
            else:
                raise ApiError(422, f"Section {section} is not part of this submission")  # [U]
        item.metadata = metadata
        item.last_modified = now_iso()
        if not granted:
            item.license_accepted = None
        elif item.license_accepted is None:
            item.license_accepted = now_iso()
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
    """B2a step 1 [V]: the submission definition used by a collection
    (SubmissionDefinitionsControllerIT.findByCollection: 401 for anonymous callers). For a
    collection DSpace does not have, SubmissionDefinitionRestRepository.findByCollection returns
    null and RestResourceController answers a single-object search with 204 and no body."""
    ctx.need_auth()
    uuid = ctx.request.query_params.get("uuid", "")
    with ctx.state.lock:
        collection = ctx.state.collections.get(uuid)
        if collection is None:
            return Response(status_code=204)
        return json_response(definition_json(ctx, collection))


def definition_json(ctx: Ctx, collection: Collection) -> dict[str, Any]:
    """SubmissionDefinitionsMatcher.matchSubmissionDefinition (7_x and 8_x)."""
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


#: headings of the stock step definitions (dspace/config/item-submission.xml, 7_x and 8_x)
STOCK_HEADINGS = {
    "collection": "",
    "traditionalpageone": "submit.progressbar.describe.stepone",
    "traditionalpagetwo": "submit.progressbar.describe.steptwo",
    "upload": "submit.progressbar.upload",
    "license": "submit.progressbar.license",
}


def definition_sections(state: DSpaceState, name: str) -> list[tuple[str, str]]:
    """The steps of a definition: item-submission.xml's `traditional` process is collection, the
    describe pages, upload, license (7_x and 8_x, optional steps commented out)."""
    collection = next((c for c in state.collections.values() if c.definition == name), None)
    if collection is None:
        raise ApiError(404, f"Submission definition {name} not found")
    steps = [("collection", "collection")]
    steps += [(section, "submission-form") for section in collection.form]
    steps += [("upload", "upload"), ("license", "license")]
    return steps


async def get_definition_sections(ctx: Ctx) -> Response:
    """A definition's sections, embedded as `submissionsections`
    (SubmissionDefinitionsControllerIT.findSections, 7_x and 8_x; the link is named `sections`,
    SubmissionDefinitionRest, but the page embeds the resources by their plural type).
    SubmissionSectionHalLinkFactory gives a `config` link to form and upload steps only."""
    ctx.need_auth()
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
                "header": STOCK_HEADINGS.get(step, f"submit.progressbar.{step}"),
                "mandatory": True,
                "sectionType": kind,
                "type": "submissionsection",
                "_links": links,
            }
        )
    href = f"{ctx.base}/config/submissiondefinitions/{name}/sections"
    return json_response(
        {
            "_embedded": {"submissionsections": sections},
            "_links": {"self": link(href)},
            "page": page_block(max(len(sections), 20), len(sections), 0),
        }
    )


def form_field_json(form_field: FormField) -> dict[str, Any]:
    """SubmissionFormConverter.getField (7_x and 8_x): a qualdrop_value field shows as a onebox
    with one selectable metadata (label + key) per value pair; a value-pairs or vocabulary field
    names it in controlledVocabulary (closed for value pairs); null properties are left out
    (SubmissionFormFieldMatcher: no mandatoryMessage, no style unless set)."""
    if form_field.pairs:
        selectable: list[dict[str, Any]] = [
            {"label": label, "metadata": key}
            for (label, _), key in zip(form_field.pairs, form_field.keys, strict=True)
        ]
        kind = "onebox"
    else:
        selectable = [{"metadata": form_field.keys[0]}]
        if form_field.vocabulary:
            selectable[0] |= {
                "controlledVocabulary": form_field.vocabulary,
                "closed": form_field.closed,
            }
        kind = form_field.input
    shown: dict[str, Any] = {
        "input": {"type": kind},
        "label": form_field.label,
        "mandatory": form_field.required is not None,
        "repeatable": form_field.repeatable,
        "hints": "",
        "selectableMetadata": selectable,
        "typeBind": [],
    }
    if form_field.required:
        shown["mandatoryMessage"] = form_field.required
    if form_field.style:
        shown["style"] = form_field.style
    return shown


async def get_submission_form(ctx: Ctx) -> Response:
    """The rows of one form section (SubmissionFormsControllerIT.findTraditionalPageOne: 401 for
    anonymous callers; id, name, type submissionform, rows[].fields[])."""
    ctx.need_auth()
    name = ctx.request.path_params["name"]
    with ctx.state.lock:
        rows = next((c.form[name] for c in ctx.state.collections.values() if name in c.form), None)
    if rows is None:
        raise ApiError(404, f"Submission form {name} not found")
    return json_response(
        {
            "id": name,
            "name": name,
            "rows": [{"fields": [form_field_json(f) for f in row]} for row in rows],
            "type": "submissionform",
            "_links": {"self": link(f"{ctx.base}/config/submissionforms/{name}")},
        }
    )


async def deposit(ctx: Ctx) -> Response:
    """B2a step 7 [V]: text/uri-list with the workspace item URL.

    201 with an empty body when the collection has no workflow (archived now); 201 with a
    workflowitem when it has one; 422 on validation errors (SubmissionService.createWorkflowItem,
    7_x and 8_x: "Start workflow failed due to validation error on workspaceitem", no list of the
    errors: they are the workspace item's own); 403 when not the submitter. Starting the workflow
    adds the "Submitted by …" provenance note (XmlWorkflowServiceImpl.start → recordStart).
    """
    media = media_type(ctx.request)
    if media not in COLLECTION_POST_TYPES:  # RestResourceController, as for workspace items
        raise ApiError(
            415,
            f"Content-Type '{media or 'null'}' is not supported.",
            headers={"Accept": ", ".join(COLLECTION_POST_TYPES)},
            problem=True,
        )
    if media != "text/uri-list":
        raise ApiError(405, f"POST with {media} is not emulated here; send text/uri-list")  # [U]
    caller = ctx.need_auth()
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
        if submission_errors(state, ws):
            raise ApiError(422, "Start workflow failed due to validation error on workspaceitem")
        del state.workspace_items[ws.id]
        item = state.items[ws.item]
        workflow = state.collections[ws.collection].workflow
        state.record_start(item, "Step: reviewstep - action:claimaction" if workflow else None)
        if not workflow:
            state.archive(item)
            return Response(status_code=201)
        state._workflow_ids += 1
        wf = WorkflowItem(state._workflow_ids, item.uuid, ws.collection, ws.submitter)
        if state.collections[ws.collection].reviewers:
            state._task_ids += 1  # activateFirstStep: a pool task for the step's reviewers
            wf.pool_task = state._task_ids
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


async def get_workflow_item(ctx: Ctx) -> Response:
    """workflowitems/{id}/item: the linked item (WorkflowItemMatcher: `_links.item`); readable by
    the submitter (grantSubmitterReadPolicies), the reviewers and administrators."""
    caller = ctx.need_auth()
    with ctx.state.lock:
        wf = ctx.state.workflow_items.get(parse_int(ctx.request.path_params["id"], -1, "id"))
        if wf is None:
            raise ApiError(404, "WorkflowItem not found")
        reviewers = ctx.state.collections[wf.collection].reviewers
        if wf.submitter != caller.email and not caller.admin and caller.email not in reviewers:
            raise ApiError(403, "Access is denied")
        return json_response(item_json(ctx, ctx.state.items[wf.item]))


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
    """B2b [V]: JSON item -> 201 item, archived (installItem), so handle and uri are set.

    ItemRestRepository.createAndReturn (7_x and 8_x): an ItemRest's inArchive defaults to false,
    and false is a DSpaceBadRequestException (400); so is an owningCollection naming no collection
    (ItemRestRepositoryIT.testCreateItemInArchiveFalseBadRequestException,
    …InvalidCollectionBadRequestException)."""
    ctx.need_admin()
    body = await json_body(ctx.request)
    if not isinstance(body, dict):
        raise ApiError(422, "The item must be a JSON object")
    if body.get("inArchive") is not True:
        raise ApiError(400, "InArchive attribute should not be set to false for the create")
    state = ctx.state
    with state.lock:
        wanted = ctx.request.query_params.get("owningCollection", "")
        if wanted not in state.collections:
            raise ApiError(400, f"The given owningCollection parameter is invalid: {wanted}")
        collection = state.collections[wanted]
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


#: the JSON properties of a BitstreamRest (with DSpaceObjectRest and BaseObjectRest): what
#: Jackson's default ObjectMapper in BundleRestRepository.processBitstreamCreation accepts
BITSTREAM_PROPERTIES = frozenset(
    {
        "id",
        "uuid",
        "name",
        "handle",
        "metadata",
        "bundleName",
        "sizeBytes",
        "checkSum",
        "sequenceId",
        "type",
        "errors",
        "_links",
    }
)


async def create_bitstream(ctx: Ctx) -> Response:
    """B2b [V]: multipart `file` + optional `properties` JSON -> 201 bitstream with its MD5.

    BundleUploadBitstreamController + BundleRestRepository.processBitstreamCreation (7_x and 8_x):
    `properties` is read as a BitstreamRest (an unknown key fails Jackson: 422 "The properties
    parameter was incorrect: …"); only its name (default: the file name) and metadata are used, so
    a declared sizeBytes or checkSum is never compared with the bytes received (the RestContract
    text's 412 does not exist in the code). No file part: 400 (a missing required request part);
    two files: 422 (BundleUploadBitstreamControllerIT.uploadBitstreamMultipleFiles)."""
    ctx.need_admin()
    form = await ctx.request.form()
    uploads = [v for k, v in form.multi_items() if k == "file" and isinstance(v, UploadFile)]
    if not uploads:
        raise ApiError(400, "Required part 'file' is not present.")
    if len(uploads) > 1:
        raise ApiError(422, "Unprocessable or invalid entity")
    raw_properties = form.get("properties")
    if isinstance(raw_properties, UploadFile):
        raw_properties = (await raw_properties.read()).decode("utf-8")
    properties: Any = {}
    if raw_properties and raw_properties.strip():
        try:
            properties = json.loads(raw_properties)
        except ValueError:
            properties = None
        if not isinstance(properties, dict) or set(properties) - BITSTREAM_PROPERTIES:
            raise ApiError(422, f"The properties parameter was incorrect: {raw_properties}")
    content = await uploads[0].read()
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


#: the index factories' types (IndexableItem.TYPE etc., 7_x and 8_x): what dsoType may name,
#: matched without case (DiscoverQueryBuilder.getDsoType); anything else is an
#: IllegalArgumentException, which DSpaceApiExceptionControllerAdvice answers 400
RESOURCE_TYPES = {
    name.lower(): name
    for name in (
        "Item",
        "WorkspaceItem",
        "XmlWorkflowItem",
        "PoolTask",
        "ClaimedTask",
        "Community",
        "Collection",
        "MetadataField",
    )
}

Indexed = StoredItem | WorkspaceItem | WorkflowItem


def indexed_candidates(
    ctx: Ctx, configuration: str
) -> list[tuple[str, StoredItem, Indexed, str | None]]:
    """What a discovery configuration can return, as (resource type, item, object, kind).

    discovery.xml (7_x and 8_x) with SolrServiceWorkspaceWorkflowRestrictionPlugin:
    - `workspace`: (Item AND latestVersion) OR WorkspaceItem OR XmlWorkflowItem, filtered by
      submitter_authority = the caller, administrators included
      (DiscoveryRestControllerIT.discoverSearchObjectsWorkspaceConfigurationTest);
    - `workflow`: PoolTask OR ClaimedTask, filtered by taskfor = the caller or their groups, so a
      submitter who reviews nothing gets nothing (…WorkflowConfigurationTest);
    - anything else (the default): archived, discoverable, not withdrawn items.
    An anonymous workspace/workflow search is an IllegalStateException in the plugin, which no
    handler maps, so DSpace answers 500."""
    state = ctx.state
    found: list[tuple[str, StoredItem, Indexed, str | None]] = []
    if configuration in ("workspace", "workflow"):
        if ctx.caller is None:
            raise ApiError(500, "An exception has occurred")
        me = ctx.caller.email
        if configuration == "workspace":
            for item in sorted(state.items.values(), key=lambda i: i.seq):
                if item.in_archive and item.submitter == me:
                    found.append(("Item", item, item, None))
            for ws in state.workspace_items.values():
                if ws.submitter == me:
                    found.append(("WorkspaceItem", state.items[ws.item], ws, None))
            for wf in state.workflow_items.values():
                if wf.submitter == me:
                    found.append(("XmlWorkflowItem", state.items[wf.item], wf, None))
        else:
            for wf in state.workflow_items.values():
                reviewers = state.collections[wf.collection].reviewers
                if wf.pool_task is not None and me.lower() in reviewers:
                    found.append(("PoolTask", state.items[wf.item], wf, "pooltask"))
        return found
    for item in sorted(state.items.values(), key=lambda i: i.seq):
        if item.in_archive and item.discoverable and not item.withdrawn:
            found.append(("Item", item, item, None))
    return found


def indexed_json(ctx: Ctx, obj: Indexed, kind: str | None) -> dict[str, Any]:
    if kind == "pooltask":
        assert isinstance(obj, WorkflowItem)
        return pooltask_json(ctx, obj)
    if isinstance(obj, WorkspaceItem):
        return workspace_json(ctx, obj)
    if isinstance(obj, WorkflowItem):
        return workflow_json(ctx, obj)
    return item_json(ctx, obj)


async def search_objects(ctx: Ctx) -> Response:
    """B3 [V]: a Lucene query over what the configuration indexes, filtered by dsoType.

    DiscoverQueryBuilder.buildCommonDiscoverQuery + SolrServiceImpl: each dsoType becomes
    search.resourcetype:<type> (several are OR-ed), so dsoType=item with configuration=workspace
    leaves out workspace and workflow items. Hits: `_embedded.searchResult._embedded.objects[]`,
    each {type discover, _links.indexableObject, _embedded.indexableObject}
    (SearchResultMatcher.match)."""
    params = ctx.request.query_params
    query = params.get("query", "")
    configuration = params.get("configuration") or "default"
    wanted_types = set()
    for raw in params.getlist("dsoType"):
        if raw.lower() not in RESOURCE_TYPES:
            raise ApiError(400, "Request is invalid or incorrect")
        wanted_types.add(RESOURCE_TYPES[raw.lower()])
    scope = params.get("scope") or None
    page = max(parse_int(params.get("page"), 0, "page"), 0)
    size = min(max(parse_int(params.get("size"), DEFAULT_PAGE_SIZE, "size"), 1), MAX_PAGE_SIZE)
    clauses = parse_query(query)
    state = ctx.state
    with state.lock:
        found = [
            indexed_json(ctx, obj, kind)
            for resource, item, obj, kind in indexed_candidates(ctx, configuration)
            if (not wanted_types or resource in wanted_types)
            and (scope is None or item.collection == scope)
            and matches(item, clauses)
        ]
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
        kept = [(k, v) for k, v in params.multi_items() if k not in ("page", "size")]
        kept += [("page", str(number)), ("size", str(size))]
        return f"{ctx.base}/discover/search/objects?{urlencode(kept)}"

    block = page_block(size, total, page)
    links = {"self": link(page_href(page)), "first": link(page_href(0))}
    if (page + 1) * size < total:
        links["next"] = link(page_href(page + 1))
        links["last"] = link(page_href(block["totalPages"] - 1))
    if page > 0:
        links["prev"] = link(page_href(page - 1))
    # DiscoveryRestControllerIT (7_x and 8_x) reads `_embedded.searchResult` (singular); the
    # RestContract's search-endpoint.md main example still writes `searchResults`
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


async def find_workspace_by_item(ctx: Ctx) -> Response:
    """workspaceitems/search/item?uuid= (WorkspaceItemRestRepository.findByItemUuid; the IT's
    findByItemUuidTest / …DoesntExistTest / …MissingParameterTest / …ForbiddenTest /
    …UnAuthenticatedTest): 200 with the workspace item, 204 when the item has none, 400 without
    uuid, 401 anonymous, 403 without READ on the item."""
    return await find_in_progress_by_item(ctx, workflow=False)


async def find_workflow_by_item(ctx: Ctx) -> Response:
    """workflowitems/search/item?uuid= (WorkflowItemRestRepository.findByItemUuid and its IT
    tests of the same names): as for workspace items."""
    return await find_in_progress_by_item(ctx, workflow=True)


async def find_in_progress_by_item(ctx: Ctx, *, workflow: bool) -> Response:
    wanted = ctx.request.query_params.get("uuid")
    if not wanted:
        raise ApiError(400, "A required parameter is missing")
    caller = ctx.need_auth()
    state = ctx.state
    with state.lock:
        pool: list[WorkspaceItem] | list[WorkflowItem] = list(
            state.workflow_items.values() if workflow else state.workspace_items.values()
        )
        entry = next((e for e in pool if e.item == wanted), None)
        if entry is None:
            return Response(status_code=204)
        reviewers = state.collections[entry.collection].reviewers
        allowed = (
            caller.admin
            or entry.submitter == caller.email
            or (workflow and caller.email.lower() in reviewers)
        )
        if not allowed:
            raise ApiError(403, "Access is denied")
        if isinstance(entry, WorkflowItem):
            return json_response(workflow_json(ctx, entry))
        return json_response(workspace_json(ctx, entry))


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

    async def reject(request: Request) -> Response:
        """{"reviewer": e-mail, "reason": text}: the reviewer sends the item back (A6)."""
        try:
            loopback(request)
            body = json.loads(await request.body() or b"{}")
        except PermissionError:
            return JSONResponse({"error": "loopback only"}, status_code=403)
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        try:
            ws = state.reject(
                request.path_params["ref"],
                str(body.get("reviewer") or "reviewer@localhost"),
                str(body.get("reason") or ""),
            )
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"workspaceitem": ws.id, "uuid": ws.item})

    return [
        Route("/_sandbox/summary", summary, methods=["GET"]),
        Route("/_sandbox/faults", faults, methods=["POST"]),
        Route("/_sandbox/approve/{ref}", approve, methods=["POST"]),
        Route("/_sandbox/reject/{ref}", reject, methods=["POST"]),
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
        ("GET", "/submission/workspaceitems/search/item", find_workspace_by_item),
        ("GET", "/submission/workspaceitems/{id}", get_workspace),
        ("GET", "/submission/workspaceitems/{id}/item", get_workspace_item),
        ("PATCH", "/submission/workspaceitems/{id}", patch_workspace),
        ("POST", "/submission/workspaceitems/{id}", upload_to_workspace),
        ("DELETE", "/submission/workspaceitems/{id}", delete_workspace),
        ("GET", "/config/submissiondefinitions/search/findByCollection", find_definition),
        ("GET", "/config/submissiondefinitions/{name}/sections", get_definition_sections),
        ("GET", "/config/submissionforms/{name}", get_submission_form),
        ("POST", "/workflow/workflowitems", deposit),
        ("GET", "/workflow/workflowitems/search/item", find_workflow_by_item),
        ("GET", "/workflow/workflowitems/{id}", get_workflow),
        ("GET", "/workflow/workflowitems/{id}/item", get_workflow_item),
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
