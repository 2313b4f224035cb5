"""An emulated Koha: the REST, staff-interface and OPAC contracts the `koha-dspace` pipeline uses.

Real Koha cannot run on a developer's machine, so the demo and every test talk to this instead.
It follows the contract notes (/work/shared/reference/koha-dspace-contracts.md, part A), not our
client: each behaviour names its contract point (A1..A4) and carries the notes' confidence mark
where they give one ([P] seen only in a fork or another version, [U] unverified). Details
checked against Koha's own source while writing this are marked [V] with the file.

Two generations are emulated, because the staff login and CSRF rules changed between them:
"22.11" (fields `userid`/`password`, no CSRF middleware) and "24.05" (hidden `csrf_token`,
`op=cud-login`, fields `login_userid`/`login_password`, every POST checked for a CSRF token).
`KohaState.put_checks_record` switches the REST PUT to Koha main's (2026) refusal of a body
that has no fields; released versions die on it (500) or store the empty record.

Koha's own tests pin the shapes: tests/contracts/test_koha_contract.py cites them.

The control API under `/_sandbox/` (state summary, faults, record upload, sysprefs) has NO
authentication: it exists for tests and the demo, and the sandbox only ever binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import io
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pymarc
from lxml import etree
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import RunningServer, SandboxError, serve

Generation = Literal["22.11", "24.05"]

#: the permissions this emulator models, as Koha names them in `required_permissions`
PERMISSIONS: dict[str, dict[str, str]] = {
    "catalogue": {"catalogue": "1"},
    "edit_catalogue": {"editcatalogue": "edit_catalogue"},
    "upload_local_cover_images": {"tools": "upload_local_cover_images"},
}
ALL_PERMISSIONS = frozenset(PERMISSIONS)

MARCXML = "application/marcxml+xml"
# A1 [V] Koha/REST/V1/Biblios.pm: the types GET serves, in the order its 406 lists them
GET_TYPES = [
    "application/json",
    MARCXML,
    "application/marc-in-json",
    "application/marc",
    "text/plain",
]
# A1 [V] Koha/REST/V1/Biblios.pm `update`: the list its 406 answers for a PUT
PUT_TYPES = ["application/json", MARCXML, "application/marc-in-json", "application/marc"]

# A4 [V] tools/upload-cover-image.pl: GD opens these formats; anything else is OPNIMG
COVER_FORMATS = {"JPEG", "PNG", "GIF", "XPM"}
# A4 [V] upload-images.tt (Koha-Community 03b15b8 and 0ad9220, same words): the text shown for
# each error code, as (first sentence, second sentence) around a <br />. The code itself is
# never shown.
COVER_ERRORS = {
    "UZIPFAIL": (
        "Failed to unzip archive.",
        "Please ensure you are uploading a valid zip file and try again.",
    ),
    "OPNLINK": (
        "Cannot open folder index (idlink.txt or datalink.txt) to read.",
        "Please verify that it exists.",
    ),
    "OPNIMG": (
        "Cannot process file as an image.",
        "Please ensure you only upload GIF, JPEG, PNG, or XPM images.",
    ),
    "DELERR": (
        "Unrecognized or missing field delimiter.",
        "Please verify that you are using either a single quote or a tab.",
    ),
    "DBERR": ("Unable to save image to database.", ""),
}
UNKNOWN_COVER_ERROR = (
    "An unknown error has occurred.",
    "Please review the error log for more details.",
)

# A1 [V] Koha/REST/Plugin/Exceptions.pm `unhandled_exception` (Koha-Community 011a85d): any
# exception in a controller. Older controllers answered without error_code [P]; clients must
# not depend on it
INTERNAL_ERROR = {
    "error": "Something went wrong, check Koha logs for details.",
    "error_code": "internal_server_error",
}
# A1 [V] Koha/REST/Plugin/Responses.pm `render_resource_not_found("Bibliographic record")`
BIBLIO_NOT_FOUND = {"error": "Bibliographic record not found", "error_code": "not_found"}

SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
COOKIE = "CGISESSID"
#: a route's counter key drops the trailing record id: "PUT /api/v1/biblios"
TRAILING_ID = re.compile(r"/\d+$")
STATEFUL = {"POST", "PUT", "PATCH", "DELETE"}
LOGIN_FIELDS = {
    "userid",
    "password",
    "login_userid",
    "login_password",
    "op",
    "login_op",
    "csrf_token",
    "koha_login_context",
    "branch",
    "logout.x",
    "otp_token",
}


def default_sysprefs() -> dict[str, Any]:
    return {
        "RESTBasicAuth": True,
        "RESTOAuth2ClientCredentials": True,
        "LocalCoverImages": True,
        "OPACLocalCoverImages": True,
        "AllowMultipleCovers": False,
        "IntranetUserJS": "",
        # A3 [V] C4::Auth checkauth: "disabled", "enabled" or "enforced" (staff interface only)
        "TwoFactorAuthentication": "disabled",
    }


def placeholder_image() -> bytes:
    """A4 [V] opac/opac-image.pl + C4::Images->NoImage: a 1x1 GIF stands in for a missing cover."""
    buffer = io.BytesIO()
    Image.new("P", (1, 1)).save(buffer, "GIF", transparency=0)
    return buffer.getvalue()


NO_IMAGE = placeholder_image()


#: A3 [V] C4::Auth checkauth: the session flags of a login that still needs a second step
SecondStep = Literal["waiting-for-2FA", "waiting-for-2FA-setup"]


@dataclass
class StaffSession:
    """One CGISESSID: anonymous (user None, made for the 24.05 login form), logged in, or
    waiting for the second factor (`pending`) after a right password."""

    user: str | None
    pending: SecondStep | None = None
    created: float = field(default_factory=time.time)


@dataclass
class CoverImage:
    """A4 [V] Koha/CoverImage.pm: stored as PNG, full size within 600x800, thumbnail 140x200."""

    biblionumber: int
    imagefile: bytes
    thumbnail: bytes
    mimetype: str = "image/png"


@dataclass
class Failure:
    remaining: int
    status: int
    path_prefix: str


@dataclass
class KohaState:
    """Everything the emulated Koha knows; every method is safe to call from any thread."""

    records: dict[int, bytes] = field(default_factory=dict)
    generation: Generation = "24.05"
    sysprefs: dict[str, Any] = field(default_factory=default_sysprefs)
    staff_users: dict[str, str] = field(default_factory=dict)
    permissions: dict[str, frozenset[str]] = field(default_factory=dict)
    #: users whose auth_method is "two-factor" (A3), and users whose password has expired (A2)
    two_factor: set[str] = field(default_factory=set)
    expired_passwords: set[str] = field(default_factory=set)
    #: A1 [V] Koha main (2026) Biblios.pm `update`: a body that does not parse, or parses to a
    #: record with no fields, is 400 bad_record. Off = released versions (see `put_biblio`).
    put_checks_record: bool = False
    oauth_clients: dict[str, tuple[str, str]] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    token_ttl: int = 3600
    sessions: dict[str, StaffSession] = field(default_factory=dict)
    expired_sessions: set[str] = field(default_factory=set)
    uploads: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    covers: dict[int, list[int]] = field(default_factory=dict)
    images: dict[int, CoverImage] = field(default_factory=dict)
    locked: set[int] = field(default_factory=set)
    overlay_keep: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    opac_url: str | None = None
    staff_url: str | None = None
    #: the wall clock token expiry is judged by; tests put a clock of their own here
    clock: Callable[[], float] = time.time
    # faults, switchable while serving
    latency: float = 0.0
    down: bool = False
    failures: list[Failure] = field(default_factory=list)
    next_fileid: int = 100
    next_imagenumber: int = 500
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    # -- set-up for tests and the demo -------------------------------------------------------

    def add_record(self, biblionumber: int, marcxml: bytes) -> None:
        """Load a biblio as Koha would hold it; the bytes are served back exactly."""
        if parse_marcxml(marcxml) is None:
            raise SandboxError(f"sandbox koha: biblio {biblionumber}: not a MARCXML record")
        with self._lock:
            self.records[biblionumber] = marcxml

    def record(self, biblionumber: int) -> bytes:
        with self._lock:
            return self.records[biblionumber]

    def stored(self, biblionumber: int | None) -> bytes | None:
        with self._lock:
            return self.records.get(biblionumber) if biblionumber is not None else None

    def is_locked(self, biblionumber: int) -> bool:
        with self._lock:
            return biblionumber in self.locked

    def modify(self, biblionumber: int, incoming: pymarc.Record) -> None:
        """A1: ModBiblio — store a PUT record in place of the old one (see apply_modbiblio)."""
        with self._lock:
            old = parse_marcxml(self.records[biblionumber])
            kept = apply_modbiblio(incoming, old, biblionumber, set(self.overlay_keep))
            self.records[biblionumber] = marcxml_of(kept)

    def add_staff_user(
        self,
        userid: str,
        password: str,
        permissions: frozenset[str] | set[str] = ALL_PERMISSIONS,
        *,
        two_factor: bool = False,
    ) -> None:
        unknown = set(permissions) - ALL_PERMISSIONS
        if unknown:
            raise SandboxError(f"sandbox koha: unknown permission(s) {sorted(unknown)}")
        with self._lock:
            self.staff_users[userid] = password
            self.permissions[userid] = frozenset(permissions)
            if two_factor:
                self.two_factor.add(userid)
            else:
                self.two_factor.discard(userid)

    def expire_password(self, userid: str) -> None:
        """A2: the patron's password_expiration_date has passed (auth_basic.t)."""
        with self._lock:
            if userid not in self.staff_users:
                raise SandboxError(f"sandbox koha: no staff user {userid!r}")
            self.expired_passwords.add(userid)

    def add_oauth_client(self, client_id: str, secret: str, userid: str) -> None:
        """A2: an API key made on a staff patron; requests run with that patron's rights."""
        with self._lock:
            if userid not in self.staff_users:
                raise SandboxError(f"sandbox koha: no staff user {userid!r} for client {client_id}")
            self.oauth_clients[client_id] = (secret, userid)

    def covers_of(self, biblionumber: int) -> list[int]:
        with self._lock:
            return list(self.covers.get(biblionumber, []))

    def set_syspref(self, name: str, value: Any) -> None:
        with self._lock:
            if name not in self.sysprefs:
                raise SandboxError(f"sandbox koha: unknown syspref {name!r}")
            self.sysprefs[name] = value

    def syspref(self, name: str) -> Any:
        with self._lock:
            return self.sysprefs[name]

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500, path_prefix: str = "") -> None:
        """The next `count` requests whose path starts with `path_prefix` answer `status`."""
        with self._lock:
            self.failures.append(Failure(count, status, path_prefix))

    def expire_tokens(self) -> None:
        """Every OAuth token and staff session stops working now (as after a timeout)."""
        with self._lock:
            self.tokens.clear()
            self.expired_sessions.update(self.sessions)
            self.sessions.clear()

    def take_failure(self, path: str) -> int | None:
        with self._lock:
            for failure in self.failures:
                if failure.remaining > 0 and path.startswith(failure.path_prefix):
                    failure.remaining -= 1
                    status = failure.status
                    self.failures = [f for f in self.failures if f.remaining > 0]
                    return status
            return None

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self.calls[f"{method} {TRAILING_ID.sub('', path)}"] += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "generation": self.generation,
                "records": sorted(self.records),
                "covers": {str(b): list(n) for b, n in self.covers.items()},
                "sysprefs": dict(self.sysprefs),
                "staff_users": sorted(self.staff_users),
                "two_factor": sorted(self.two_factor),
                "expired_passwords": sorted(self.expired_passwords),
                "put_checks_record": self.put_checks_record,
                "oauth_clients": sorted(self.oauth_clients),
                "locked": sorted(self.locked),
                "overlay_keep": sorted(self.overlay_keep),
                "calls": dict(self.calls),
                "latency": self.latency,
                "down": self.down,
                "pending_failures": [vars(f) for f in self.failures],
                "opac_url": self.opac_url,
                "staff_url": self.staff_url,
            }

    # -- A2: REST credentials ------------------------------------------------------------------

    def check_password(self, userid: str, password: str) -> bool:
        with self._lock:
            known = self.staff_users.get(userid)
        return known is not None and hmac.compare_digest(known, password)

    def password_expired(self, userid: str) -> bool:
        with self._lock:
            return userid in self.expired_passwords

    def second_step(self, userid: str) -> SecondStep | None:
        """A3 [V] C4::Auth checkauth: after a right staff password, a 2FA patron must give a code
        ("waiting-for-2FA"); with TwoFactorAuthentication "enforced" a password-only patron
        must first register an authenticator ("waiting-for-2FA-setup")."""
        with self._lock:
            mode = self.sysprefs["TwoFactorAuthentication"]
            if mode == "disabled":
                return None
            if userid in self.two_factor:
                return "waiting-for-2FA"
            return "waiting-for-2FA-setup" if mode == "enforced" else None

    def has_permission(self, userid: str, permission: str) -> bool:
        with self._lock:
            return permission in self.permissions.get(userid, frozenset())

    def issue_token(self, client_id: str, secret: str) -> tuple[str | None, str | None]:
        """A2 [V] Koha/OAuth.pm: unknown client → unauthorized_client, bad secret → access_denied."""
        with self._lock:
            client = self.oauth_clients.get(client_id)
            if client is None:
                return None, "unauthorized_client"
            if not hmac.compare_digest(client[0], secret):
                return None, "access_denied"
            token = secrets.token_hex(20)
            self.tokens[token] = (client[1], self.clock() + self.token_ttl)
            return token, None

    def token_user(self, token: str) -> str | None:
        with self._lock:
            entry = self.tokens.get(token)
            if entry is None:
                return None
            if entry[1] <= self.clock():
                del self.tokens[token]  # A2 [V] Koha/OAuth.pm revokes an expired token on use
                return None
            return entry[0]

    # -- A3: staff sessions and CSRF tokens -----------------------------------------------------

    def new_session(self, user: str | None, pending: SecondStep | None = None) -> str:
        with self._lock:
            session_id = secrets.token_hex(16)
            self.sessions[session_id] = StaffSession(user, pending)
            return session_id

    def drop_session(self, session_id: str) -> None:
        with self._lock:
            self.sessions.pop(session_id, None)

    def session(self, session_id: str | None) -> tuple[str, StaffSession | None]:
        """Koha's check_cookie_auth status: ok, anon, expired, failed, or (A3 [V] C4::Auth) a
        login waiting for its second step: additional-auth-needed or
        setup-additional-auth-needed. Those flags count only while TwoFactorAuthentication is
        not "disabled" (t/db_dependent/Auth.t: "User authenticated, pref was disabled, access
        OK")."""
        with self._lock:
            if not session_id:
                return "failed", None
            found = self.sessions.get(session_id)
            if found is None:
                return ("expired" if session_id in self.expired_sessions else "failed"), None
            if self.sysprefs["TwoFactorAuthentication"] != "disabled":
                if found.pending == "waiting-for-2FA":
                    return "additional-auth-needed", found
                if found.pending == "waiting-for-2FA-setup":
                    return "setup-additional-auth-needed", found
            return ("ok" if found.user else "anon"), found

    def csrf_token(self, session_id: str) -> str:
        """A3 [V] Koha::Token: a token is an HMAC over the session id, so a new session id
        (login) makes every earlier token worthless."""
        nonce = secrets.token_hex(8)
        return f"{nonce},{self._csrf_mac(session_id, nonce)}"

    def csrf_valid(self, session_id: str | None, token: str | None) -> bool:
        if not session_id or not token or "," not in token:
            return False
        nonce, mac = token.split(",", 1)
        return hmac.compare_digest(mac, self._csrf_mac(session_id, nonce))

    def _csrf_mac(self, session_id: str, nonce: str) -> str:
        return hmac.new(self._secret, f"{session_id}:{nonce}".encode(), hashlib.sha256).hexdigest()

    # -- A4: uploads and covers -----------------------------------------------------------------

    def store_upload(self, data: bytes, name: str) -> int:
        with self._lock:
            self.next_fileid += 1
            self.uploads[self.next_fileid] = (data, name)
            return self.next_fileid

    def attach_cover(self, fileid: int, biblionumber: int, replace: bool) -> str | int:
        """A4 [V] tools/upload-cover-image.pl: an imagenumber, or the page's error code."""
        with self._lock:
            upload = self.uploads.get(fileid)
        if upload is None:
            raise LookupError(f"no uploaded file {fileid}")
        scaled = scale_cover(upload[0])
        if scaled is None:
            return "OPNIMG"
        with self._lock:
            if biblionumber not in self.records:
                return "DBERR"  # Koha::Biblios->find(...) is undef inside the eval
            if replace or not self.sysprefs["AllowMultipleCovers"]:
                for old in self.covers.pop(biblionumber, []):
                    self.images.pop(old, None)
            self.next_imagenumber += 1
            number = self.next_imagenumber
            self.images[number] = CoverImage(biblionumber, *scaled)
            self.covers.setdefault(biblionumber, []).append(number)
            return number

    def cover(self, imagenumber: int) -> CoverImage | None:
        with self._lock:
            return self.images.get(imagenumber)


# -- MARC handling --------------------------------------------------------------------------------


def parse_marcxml(body: bytes) -> pymarc.Record | None:
    """A1: the record in a MARCXML body, or None when Koha would find no fields in it."""
    record = read_marcxml(body)
    return record if record is not None and record.fields else None


def read_marcxml(body: bytes) -> pymarc.Record | None:
    """A1: what MARC::Record->new_from_xml makes of a body: None where it dies (empty body,
    XML that is not well-formed), else a record, with no fields when the XML holds none.

    Parsed with lxml without entities, DTDs or network; a DOCTYPE counts as a parse failure
    (what Koha's parser does with one is [U]), as does a root that is not a record ([U]).
    """
    if not body or not body.strip():
        return None
    try:
        root = etree.fromstring(body, SAFE_XML)
    except etree.XMLSyntaxError:
        return None
    if root.getroottree().docinfo.doctype:
        return None
    if etree.QName(root).localname == "collection":
        root = next(
            (
                el
                for el in root
                if isinstance(el.tag, str) and etree.QName(el).localname == "record"
            ),
            None,
        )
    if root is None or etree.QName(root).localname != "record":
        return None
    return record_from_element(root)


def record_from_element(element: etree._Element) -> pymarc.Record:
    record = pymarc.Record()
    for child in element:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if name == "leader":
            record.leader = pymarc.Leader((child.text or "").ljust(24)[:24])
        elif name == "controlfield":
            record.add_field(pymarc.Field(tag=child.get("tag", ""), data=child.text or ""))
        elif name == "datafield":
            subfields = [
                pymarc.Subfield(code=sub.get("code", ""), value=sub.text or "")
                for sub in child
                if isinstance(sub.tag, str) and etree.QName(sub).localname == "subfield"
            ]
            indicators = pymarc.Indicators(child.get("ind1") or " ", child.get("ind2") or " ")
            record.add_field(
                pymarc.Field(tag=child.get("tag", ""), indicators=indicators, subfields=subfields)
            )
    return record


def marcxml_of(record: pymarc.Record) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + pymarc.record_to_xml(
        record, namespace=True
    )


def parse_body(content_type: str, body: bytes) -> tuple[pymarc.Record | None, list[str]]:
    """A1 [V] Biblios.pm `update`: the record in one of the three formats a PUT accepts, and
    the warnings the parser left on it.

    None where Koha's parser dies (not well-formed XML, JSON that does not parse or is not
    MARC-in-JSON); a record with no fields where it "returns a record with zero fields rather
    than dying" (Biblios.pm main's comment). For ISO 2709 whose first five bytes are not a
    number that is [V]: MARC::File::USMARC `decode` (gitpan/MARC-Record f50646b) returns an
    empty record with the warning 'Record length "…" is not numeric in record 1'. Its other
    warnings are not emulated, and which way other bad inputs go is [U].
    """
    if MARCXML in content_type:
        return read_marcxml(body), []
    if "application/marc-in-json" in content_type:
        try:
            records = list(pymarc.JSONReader(body.decode("utf-8")))
        except Exception:  # a parser that dies: Koha's try/catch (main) or a 500 (released)
            return None, []
        record = records[0] if records else None
        return (record if record is not None else pymarc.Record()), []
    if not body[:5].isdigit():
        length = body[:5].decode("utf-8", "replace")
        return pymarc.Record(), [f'Record length "{length}" is not numeric in record 1']
    try:
        records = list(pymarc.MARCReader(body, to_unicode=True, force_utf8=True))
    except Exception:
        return None, []
    record = records[0] if records else None
    return (record if record is not None else pymarc.Record()), []


def apply_modbiblio(
    incoming: pymarc.Record, old: pymarc.Record | None, biblionumber: int, keep: set[str]
) -> pymarc.Record:
    """A1: what ModBiblio stores for a PUT.

    * overlay rules (since bug 35380): fields with a protected tag keep their old values;
    * 005 is rewritten with the time of the change when the record has one (C4::Biblio
      ModBiblioMarc, enhancement 5374);
    * 999$c/$d get the biblionumber/biblioitemnumber (C4::Biblio _koha_marc_update_bib_ids).
    So a GET after a PUT never returns the bytes that were sent; compare fields, not bytes.
    """
    for tag in sorted(keep):
        incoming.remove_fields(tag)
        for kept in old.get_fields(tag) if old is not None else []:
            incoming.add_ordered_field(kept)
    stamp = incoming.get("005")
    if stamp is not None:
        stamp.data = time.strftime("%Y%m%d%H%M%S.0")
    ids = incoming.get("999")
    if ids is None:
        ids = pymarc.Field(tag="999", indicators=pymarc.Indicators(" ", " "), subfields=[])
        incoming.add_ordered_field(ids)
    for code in ("c", "d"):
        while code in ids:
            ids.delete_subfield(code)
    ids.add_subfield("c", str(biblionumber))
    ids.add_subfield("d", str(biblionumber))
    return incoming


def title_of(record: pymarc.Record | None) -> str:
    field_245 = record.get("245") if record is not None else None
    values = field_245.get_subfields("a") if field_245 is not None else []
    return values[0].rstrip(" /:;,.") if values else "(untitled)"


def biblio_json(biblionumber: int, record: pymarc.Record) -> dict[str, Any]:
    """A1: a small part of Koha's biblio `to_api` object."""
    field_100 = record.get("100")
    field_245 = record.get("245")
    subtitle = field_245.get_subfields("b") if field_245 is not None else []
    return {
        "biblio_id": biblionumber,
        "title": title_of(record),
        "subtitle": subtitle[0] if subtitle else None,
        "author": (field_100.get_subfields("a") or [None])[0] if field_100 is not None else None,
        "framework_id": "",
    }


# -- images ---------------------------------------------------------------------------------------


def scale_cover(data: bytes) -> tuple[bytes, bytes] | None:
    """A4 [V] Koha/CoverImage.pm: PNG full size (600x800 max) and thumbnail (140x200 max),
    or None when GD could not open the bytes as an image (→ OPNIMG)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format not in COVER_FORMATS:
                return None
            opened.load()
            image = opened.convert("RGBA" if "A" in opened.getbands() else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return png_within(image, 600, 800), png_within(image, 140, 200)


def png_within(image: Image.Image, max_width: int, max_height: int) -> bytes:
    """Koha's `_scale_image`: scale by the width overage if the width is too large, else by the
    height overage (so a very tall and wide image may stay taller than `max_height`)."""
    width, height = image.size
    if width > max_width or height > max_height:
        factor = max_width / width if width > max_width else max_height / height
        image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# -- HTML -----------------------------------------------------------------------------------------

e = html.escape


def staff_page(
    state: KohaState, *, title: str, body_id: str, body: str, csrf: str | None = None
) -> str:
    """A staff page shaped like Koha's: head with the csrf-token meta (24.05), the content, and
    the IntranetUserJS syspref injected raw at the end as intranet-bottom.inc does."""
    meta = f'<meta name="csrf-token" content="{e(csrf)}" />\n' if csrf else ""
    user_js = state.syspref("IntranetUserJS")
    script = f"<script>{user_js}</script>\n" if user_js else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8" />\n'
        f"<title>{e(title)} &rsaquo; Koha</title>\n{meta}</head>\n"
        f'<body id="{body_id}" class="{body_id.replace("_", "-")}">\n'
        '<nav id="header" class="navbar"><a class="navbar-brand" '
        'href="/cgi-bin/koha/mainpage.pl">Koha</a></nav>\n'
        f'<div class="main container-fluid">\n{body}\n</div>\n{script}</body>\n</html>\n'
    )


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}" />'


# -- the app --------------------------------------------------------------------------------------


@dataclass
class StaffContext:
    """The outcome of Koha's checkauth for one staff request."""

    user: str
    session_id: str
    params: dict[str, str]
    files: list[UploadFile]
    new_cookie: bool = False

    def finish(self, response: Response) -> Response:
        if self.new_cookie:
            response.set_cookie(COOKIE, self.session_id, path="/", httponly=True, samesite="lax")
        return response


class FaultInjection:
    """Counts calls and applies the switchable faults (latency, down, fail_next) to every
    request except the control API."""

    def __init__(self, app: ASGIApp, state: KohaState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        self.state.count(scope["method"], path)
        if self.state.latency > 0:
            await asyncio.sleep(self.state.latency)
        status = 503 if self.state.down else self.state.take_failure(path)
        if status is None:
            await self.app(scope, receive, send)
            return
        response: Response
        if path.startswith("/api/"):
            response = JSONResponse({"error": "Something went wrong, check the logs."}, status)
        else:
            response = PlainTextResponse(f"HTTP {status} (sandbox fault)", status)
        await response(scope, receive, send)


class KohaApp:
    def __init__(self, state: KohaState) -> None:
        self.state = state

    # -- A1/A2 REST ------------------------------------------------------------------------------

    def rest_csrf_refusal(self, request: Request) -> Response | None:
        """A2 [P] Koha/App/Plugin/CSRF.pm (24.05+): an unsafe request carrying a CGISESSID
        cookie needs a valid csrf_token param or CSRF-TOKEN header; without the cookie (Basic,
        OAuth) nothing is checked. Whether it guards /api/v1 in every 24.x is [P]."""
        if self.state.generation != "24.05" or request.method not in STATEFUL:
            return None
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        token = request.query_params.get("csrf_token") or request.headers.get("csrf-token")
        if self.state.csrf_valid(session_id, token):
            return None
        return PlainTextResponse("Wrong CSRF token", 403)

    def rest_user(self, request: Request, permission: str) -> str | Response:
        """A2 [V] Koha/REST/V1/Auth.pm `authenticate_api_request`: Bearer first, then Basic,
        then the CGISESSID cookie. `under` renders Authentication::* as 401 {error} and
        Authorization::Unauthorized as 403 {error, required_permissions}."""
        header = request.headers.get("authorization", "")
        user: str | None
        if header.startswith("Bearer "):
            user = self.state.token_user(header[len("Bearer ") :].strip())
            if user is None:  # a failed Bearer never falls back to other means
                return JSONResponse({"error": "Authentication failure."}, 401)
        elif header.startswith("Basic "):
            if not self.state.syspref("RESTBasicAuth"):
                return JSONResponse({"error": "Basic authentication disabled"}, 401)
            basic = self.basic_user(header)
            if isinstance(basic, Response):
                return basic
            user = basic
        else:
            status, session = self.state.session(request.cookies.get(COOKIE))
            if status == "expired":
                return JSONResponse({"error": "Session has been expired."}, 401)
            # "anon" and a login waiting for its second factor (A3) carry no user
            user = session.user if status == "ok" and session is not None else None
            if user is None:
                return JSONResponse({"error": "Authentication failure."}, 401)
        if not self.state.has_permission(user, permission):
            return JSONResponse(
                {
                    "error": "Authorization failure. Missing required permission(s).",
                    "required_permissions": PERMISSIONS[permission],
                },
                403,
            )
        return user

    def basic_user(self, header: str) -> str | Response:
        """A2 [V] Auth.pm `_basic_auth` (auth_basic.t 'failure tests'): a wrong password or an
        unknown user is 403 "Invalid password", an expired password 403 "Password has
        expired", both with `required_permissions` null (the exception's unset field).
        Undecodable base64 is a wrong password: Perl's decode_base64 never fails. (Koha's 401
        for `Basic ` with nothing after it cannot reach this server: the HTTP layer refuses a
        header value ending in a space.)"""
        try:
            decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        userid, _, password = decoded.partition(":")
        if not self.state.check_password(userid, password):
            return unauthorized("Invalid password")
        if self.state.password_expired(userid):
            return unauthorized("Password has expired")
        return userid

    async def get_biblio(self, request: Request) -> Response:
        """A1 [V] Biblios.pm `get`: the Accept header picks the format. Error answers go
        through `openapi_answer` (the OpenAPI response check), the record itself does not."""
        refusal = self.rest_csrf_refusal(request)
        if refusal is not None:
            return refusal
        user = self.rest_user(request, "catalogue")
        if isinstance(user, Response):
            return user
        accept = request.headers.get("accept", "")
        biblionumber = int(request.path_params["biblio_id"])
        stored = self.state.stored(biblionumber)
        if stored is None:
            return openapi_answer(accept, GET_TYPES, BIBLIO_NOT_FOUND, 404)
        if "application/json" in accept:  # Koha tests this first, as a substring
            record = parse_marcxml(stored)
            return JSONResponse(biblio_json(biblionumber, record or pymarc.Record()))
        chosen = respond_to(accept)
        if chosen is None:
            return openapi_answer(accept, GET_TYPES, GET_TYPES, 406)
        if chosen == MARCXML:
            return Response(stored, media_type=MARCXML)
        record = parse_marcxml(stored) or pymarc.Record()
        if chosen == "application/marc-in-json":
            return Response(record.as_json(), media_type=chosen)
        if chosen == "application/marc":
            return Response(record.as_marc(), media_type=chosen)
        return PlainTextResponse(str(record))

    async def put_biblio(self, request: Request) -> Response:
        """A1 [V] Biblios.pm `update`: 404, then locked 403, then 406, then the body, then
        ModBiblio. What a bad body gives depends on the version:

        * main (2026, biblios.t 'put() malformed body tests', `put_checks_record`): a body
          that does not parse or has no fields is 400 bad_record and nothing is stored;
        * released versions (Koha-Community 51d5081, openfifth's 24.x copy): the parser's die
          reaches `unhandled_exception` (500 internal_server_error), and a record with no
          fields goes to ModBiblio, which stores it (main's comment on the check says so).
        """
        refusal = self.rest_csrf_refusal(request)
        if refusal is not None:
            return refusal
        user = self.rest_user(request, "edit_catalogue")
        if isinstance(user, Response):
            return user
        accept = request.headers.get("accept", "")
        produces = ["application/json"]  # A1 [V] biblios.yaml, PUT
        biblionumber = int(request.path_params["biblio_id"])
        if self.state.stored(biblionumber) is None:
            return openapi_answer(accept, produces, BIBLIO_NOT_FOUND, 404)
        if self.state.is_locked(biblionumber):
            locked = {"error": "You do not have permission to edit a locked record"}
            return openapi_answer(accept, produces, locked, 403)
        content_type = request.headers.get("content-type", "")
        if not any(kind in content_type for kind in PUT_TYPES[1:]):
            return openapi_answer(accept, produces, PUT_TYPES, 406)
        incoming, warnings = parse_body(content_type, await request.body())
        if self.state.put_checks_record and (incoming is None or not incoming.fields):
            # A1 [V] Biblios.pm `update` (main): the record's warnings follow a colon
            error = "Unable to parse record from request body"
            if incoming is not None and warnings:
                error += ": " + "; ".join(warnings)
            return openapi_answer(
                accept, produces, {"error": error, "error_code": "bad_record"}, 400
            )
        if incoming is None:
            return openapi_answer(accept, produces, INTERNAL_ERROR, 500)
        self.state.modify(biblionumber, incoming)
        # A1 [V] biblios.yaml: PUT's 200 has no schema, so no Accept check applies to it
        return JSONResponse({"id": biblionumber})

    async def oauth_token(self, request: Request) -> Response:
        """A2 [V] Koha/REST/V1/OAuth.pm: client-credentials grant only."""
        refusal = self.rest_csrf_refusal(request)
        if refusal is not None:
            return refusal
        form = await request.form()
        values = {
            key: str(form.get(key) or "") for key in ("grant_type", "client_id", "client_secret")
        }
        missing = [key for key, value in values.items() if not value]
        if missing:  # the OpenAPI validation answers before the controller
            errors = [{"message": "Missing property.", "path": f"/body/{key}"} for key in missing]
            return JSONResponse({"errors": errors, "status": 400}, 400)
        if values["grant_type"] != "client_credentials" or not self.state.syspref(
            "RESTOAuth2ClientCredentials"
        ):
            return JSONResponse({"error": "Unimplemented grant type"}, 400)
        token, error = self.state.issue_token(values["client_id"], values["client_secret"])
        if token is None:
            return JSONResponse({"error": error}, 403)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.state.token_ttl}
        )

    # -- A3 staff login and CSRF -----------------------------------------------------------------

    async def cgi_params(self, request: Request) -> tuple[dict[str, str], list[UploadFile]]:
        """CGI->param: query string and body parameters together (first value of each)."""
        params: dict[str, str] = {}
        files: list[UploadFile] = []
        if request.method in STATEFUL:
            form = await request.form(max_part_size=10 * 1024 * 1024)
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append(value)
                else:
                    params.setdefault(key, value)
        for key, value in request.query_params.multi_items():
            params.setdefault(key, value)
        return params, files

    def csrf_refusal(self, request: Request, params: dict[str, str]) -> Response | None:
        """A3 [V] Koha/Middleware/CSRF.pm (24.05+): a GET with op=cud-* is refused; a POST needs
        an op starting with cud- (when it has an op) and a csrf_token (param or CSRF-TOKEN header)
        that matches the CGISESSID cookie. Any failure: 403 text/plain "Wrong CSRF token"."""
        if self.state.generation != "24.05":
            return None
        op = params.get("op")
        wrong = PlainTextResponse("Wrong CSRF token", 403)
        if request.method not in STATEFUL:
            return wrong if op is not None and op.startswith("cud-") else None
        if op is not None and not op.startswith("cud-"):
            return wrong
        token = params.get("csrf_token") or request.headers.get("csrf-token")
        if not self.state.csrf_valid(request.cookies.get(COOKIE), token):
            return wrong
        return None

    async def staff_gate(self, request: Request, permission: str) -> StaffContext | Response:
        """A3: Koha's checkauth for a staff page — the CSRF middleware, a login attempt, the
        session, the page's permission; anything short of that answers the login page."""
        params, files = await self.cgi_params(request)
        refusal = self.csrf_refusal(request, params)
        if refusal is not None:
            return refusal
        cookie = request.cookies.get(COOKIE)
        if "logout.x" in params and cookie:
            self.state.drop_session(cookie)
            return self.login_page(request, params, None)
        attempt = self.login_attempt(params) if request.method == "POST" else None
        if attempt is not None:
            userid, password = attempt
            if not self.state.check_password(userid, password):
                return self.login_page(request, params, cookie, invalid=True, userid=userid)
            if cookie:
                self.state.drop_session(cookie)  # A3: the session id changes at login
            # A3 [V] C4::Auth checkauth: the page's permission is checked first, then a
            # second step is asked for instead of the page
            pending = (
                self.state.second_step(userid)
                if self.state.has_permission(userid, permission)
                else None
            )
            session_id = self.state.new_session(userid, pending)
            context = StaffContext(userid, session_id, params, files, True)
            if pending is not None:
                return context.finish(self.second_step_page(request, params, session_id, pending))
        else:
            status, session = self.state.session(cookie)
            waiting = status in ("additional-auth-needed", "setup-additional-auth-needed")
            if waiting and session is not None and session.pending and cookie is not None:
                # A3: the emulator holds no TOTP secret, so every otp_token is a wrong code
                wrong = bool(params.get("otp_token"))
                return self.second_step_page(request, params, cookie, session.pending, wrong)
            if status != "ok" or session is None or session.user is None or cookie is None:
                return self.login_page(request, params, cookie, timed_out=status == "expired")
            context = StaffContext(session.user, cookie, params, files)
        if not self.state.has_permission(context.user, permission):
            return context.finish(
                self.login_page(request, params, context.session_id, nopermission=True)
            )
        return context

    def login_attempt(self, params: dict[str, str]) -> tuple[str, str] | None:
        """A3: the fields a login POST must carry for this generation ([V] 22.11, [P] 24.05).
        A client sending the other generation's names is not logging in at all."""
        if self.state.generation == "24.05":
            if params.get("op") != "cud-login" or not params.get("login_userid"):
                return None
            return params["login_userid"], params.get("login_password", "")
        if not params.get("userid"):
            return None
        return params["userid"], params.get("password", "")

    def _form_inputs(self, session_id: str | None, params: dict[str, str]) -> list[str]:
        """A3: the hidden inputs auth.tt puts in `#loginform`, for the login and the two-factor
        prompt alike: on 24.05 the session's csrf_token and op=cud-login, then the login context
        and the request's own parameters."""
        fixed = [hidden("koha_login_context", "intranet")]
        if self.state.generation == "24.05" and session_id is not None:
            fixed = [
                hidden("csrf_token", self.state.csrf_token(session_id)),
                hidden("op", "cud-login"),
                *fixed,
            ]
        return [*fixed, *(hidden(k, v) for k, v in params.items() if k not in LOGIN_FIELDS)]

    def login_page(
        self,
        request: Request,
        params: dict[str, str],
        session_id: str | None,
        *,
        invalid: bool = False,
        timed_out: bool = False,
        nopermission: bool = False,
        userid: str = "",
    ) -> Response:
        """A3: auth.tt — `#loginform` posting to the same script, the request's own parameters
        as hidden inputs, and on 24.05 a csrf_token tied to a (pre-login) session cookie."""
        new_cookie = False
        if self.state.generation == "24.05":
            status, _ = self.state.session(session_id)
            if status not in ("ok", "anon") or session_id is None:
                session_id = self.state.new_session(None)
                new_cookie = True
            user_field, password_field = "login_userid", "login_password"
        else:
            user_field, password_field = "userid", "password"
        inputs = self._form_inputs(session_id, params)
        errors = []
        if nopermission:
            errors.append(
                '<div id="login_error"><strong>Error:</strong> You do not have permission to '
                "access this page.</div>\n<p><strong>Log in as a different user</strong></p>"
            )
        if timed_out:
            errors.append(
                '<div id="login_error"><strong>Error: </strong>Session timed out.<br /> '
                "Please log in again</div>"
            )
        if invalid:  # A3 [V] auth.tt (Koha-Community 016105c, openfifth 49e7476)
            errors.append(
                '<div id="login_error"><strong>Error: </strong>Invalid username or password</div>'
            )
        body = (
            '<div id="login">\n<h1><a href="http://koha-community.org">Koha</a></h1>\n'
            + "\n".join(errors)
            + f'\n<form action="{e(request.url.path)}" method="post" name="loginform" '
            'id="loginform" class="validated">\n'
            + "\n".join(inputs)
            + f'\n<p><label for="userid">Username:</label>\n<input type="text" '
            f'name="{user_field}" id="userid" class="input focus" value="{e(userid)}" '
            'size="20" tabindex="1" autocomplete="off" /></p>\n'
            '<p><label for="password">Password:</label>\n<input type="password" '
            f'name="{password_field}" id="password" class="input" value="" size="20" '
            'tabindex="2" autocomplete="off" /></p>\n'
            '<p><label for="set-library-branch">Library:</label>\n<select name="branch" '
            'id="set-library-branch" class="input" tabindex="3">'
            '<option value="">My library</option><option value="CPL">Centerville</option>'
            "</select></p>\n"
            '<p class="submit"><input id="submit-button" type="submit" class="btn btn-primary" '
            'value="Log in" tabindex="4" /></p>\n</form>\n'
            # A3 [V] auth.tt: only the nopermission branch adds these links
            + (
                '<p><a id="previous_page" href="javascript:window.history.back()">[Previous '
                'page]</a>\n<a id="mainpage" href="/">[Main page]</a></p>\n'
                if nopermission
                else ""
            )
            + "</div>"
        )
        page = staff_page(
            self.state,
            title="Invalid username or password" if invalid else "Log in to Koha",
            body_id="main_auth",
            body=body,
            csrf=self.state.csrf_token(session_id)
            if self.state.generation == "24.05" and session_id
            else None,
        )
        # A3 [V] C4::Auth checkauth ends in output_html_with_http_headers: the login page is a
        # 200, also for a refused login or a missing permission
        response = Response(page, media_type="text/html")
        if new_cookie and session_id:
            response.set_cookie(COOKIE, session_id, path="/", httponly=True, samesite="lax")
        return response

    def second_step_page(
        self,
        request: Request,
        params: dict[str, str],
        session_id: str,
        pending: SecondStep,
        wrong_code: bool = False,
    ) -> Response:
        """A3 [V] auth.tt: TwoFA_prompt reuses `<form id="loginform">` (same name, same action)
        with an `otp_token` field instead of the user and password fields, and on 24.05 the
        csrf_token and op=cud-login; TwoFA_setup shows auth-two-factor.inc's
        `#registration-form` and no `#loginform` at all. Both answer 200."""
        if pending == "waiting-for-2FA-setup":
            title = "Two-factor authentication setup"
            body = (
                '<div id="login">\n<h1><a href="http://koha-community.org">Koha</a></h1>\n'
                '<div id="registration-form" style="display: none">\n<div class="alert '
                'alert-info"><p>Can\'t scan the code?</p></div>\n<div id="errors" class="alert '
                'alert-error" style="display: none"></div>\n<fieldset class="rows">'
                '<input type="hidden" id="secret32" name="secret32" value="" />\n<ol>'
                '<li><label for="qr_code">QR code: </label><img id="qr_code" src="" /></li>\n'
                '<li><label for="pin_code">PIN code: </label><input type="text" id="pin_code" '
                'name="pin_code" value="" /></li></ol></fieldset>\n<fieldset class="action">'
                '<input id="register-2FA" class="btn btn-primary" type="submit" value="Register '
                'with two-factor app" /> <a class="cancel" href="/cgi-bin/koha/members/'
                'two_factor_auth.pl">Cancel</a></fieldset>\n</div>\n</div>'
            )
        else:
            title = "Two-factor authentication"
            if self.state.generation == "24.05":
                alert, message = "alert alert-warning", "alert alert-info"
            else:
                alert, message = "dialog alert", "dialog message"
            inputs = self._form_inputs(session_id, params)
            error = '<div id="login_error">Invalid two-factor code</div>\n' if wrong_code else ""
            body = (
                '<div id="login">\n<h1><a href="http://koha-community.org">Koha</a></h1>\n'
                f'<form action="{e(request.url.path)}" method="post" name="loginform" '
                'id="loginform" autocomplete="off">\n'
                + "\n".join(inputs)
                + f'\n{error}<div id="email_error" class="{alert}" style="display: none;"></div>'
                f'\n<div id="email_success" class="{message}" style="display: none;"></div>\n'
                '<p><label for="otp_token">Two-factor authentication code:</label>\n'
                '<input type="text" name="otp_token" id="otp_token" class="input focus" '
                'value="" size="20" tabindex="1" /></p>\n<p><input type="submit" '
                'id="submit-button" class="btn btn-primary" value="Verify code" />\n'
                '<a class="send_otp" id="send_otp" href="#">Send the code by email</a>\n'
                '<a class="cancel" id="logout" href="/cgi-bin/koha/mainpage.pl?logout.x=1">'
                "Cancel</a></p>\n</form>\n</div>"
            )
        csrf = self.state.csrf_token(session_id) if self.state.generation == "24.05" else None
        page = staff_page(self.state, title=title, body_id="main_auth", body=body, csrf=csrf)
        return Response(page, media_type="text/html")

    def page_csrf(self, context: StaffContext) -> str | None:
        """A3 [V]: 24.05 pages carry a fresh token in <meta name="csrf-token"> (file-upload.js)."""
        if self.state.generation != "24.05":
            return None
        return self.state.csrf_token(context.session_id)

    async def mainpage(self, request: Request) -> Response:
        context = await self.staff_gate(request, "catalogue")
        if isinstance(context, Response):
            return context
        body = (
            f'<h1 id="welcome">Welcome, {e(context.user)}</h1>\n'
            '<ul id="area-list"><li><a class="icon_general icon_catalog" '
            'href="/cgi-bin/koha/catalogue/search.pl">Search the catalog</a></li>\n'
            '<li><a class="icon_general icon_tools" href="/cgi-bin/koha/tools/tools-home.pl">'
            "Tools</a></li></ul>"
        )
        page = staff_page(
            self.state,
            title="Koha staff interface",
            body_id="main_intranet-main",
            body=body,
            csrf=self.page_csrf(context),
        )
        return context.finish(Response(page, media_type="text/html"))

    async def detail(self, request: Request) -> Response:
        """catalogue/detail.pl: the record page the staff-client browser test opens."""
        context = await self.staff_gate(request, "catalogue")
        if isinstance(context, Response):
            return context
        biblionumber = as_int(context.params.get("biblionumber"))
        stored = self.state.stored(biblionumber)
        if stored is None or biblionumber is None:
            return context.finish(RedirectResponse("/cgi-bin/koha/errors/404.pl", 302))
        title = title_of(parse_marcxml(stored))
        covers = ""
        if self.state.syspref("LocalCoverImages"):
            covers = "".join(
                f'<a href="/cgi-bin/koha/catalogue/imageviewer.pl?biblionumber={biblionumber}'
                f'&amp;imagenumber={n}"><img src="/cgi-bin/koha/catalogue/image.pl?'
                f'imagenumber={n}&amp;thumbnail=1" alt="Local cover image" /></a>'
                for n in self.state.covers_of(biblionumber)
            )
        body = (
            '<div id="toolbar" class="btn-toolbar">\n'
            '<div class="btn-group"><a id="newsub" class="btn btn-default" href="/cgi-bin/koha/'
            f'cataloguing/addbiblio.pl?biblionumber={biblionumber}">Edit record</a></div>\n'
            '<div class="btn-group"><a id="addtocart" class="btn btn-default addtocart" '
            f'href="#" data-biblionumber="{biblionumber}">Add to cart</a></div>\n'
            '<div class="btn-group"><a id="printbiblio" class="btn btn-default" href="#">Print'
            "</a></div>\n</div>\n"
            f'<div id="catalogue_detail_biblio" data-biblionumber="{biblionumber}">\n'
            f'<h1 class="title">{e(title)}</h1>\n'
            f'<div class="cover-images" id="local-thumbnails">{covers}</div>\n</div>'
        )
        page = staff_page(
            self.state,
            title=f"Details for {title}",
            body_id="catalog_detail",
            body=body,
            csrf=self.page_csrf(context),
        )
        return context.finish(Response(page, media_type="text/html"))

    # -- A4 cover upload -------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> Response:
        """A4 [V] tools/upload-file.pl: cookie auth only, JSON body with Content-Type text/html."""
        params, files = await self.cgi_params(request)
        refusal = self.csrf_refusal(request, params)
        if refusal is not None:
            return refusal

        def reply(status: str, fileid: str | None = None, errors: Any = None) -> Response:
            body = json.dumps({"status": status, "fileid": fileid, "errors": errors})
            return Response(body, media_type="text/html")

        status, session = self.state.session(request.cookies.get(COOKIE))
        user = session.user if session is not None else None
        if status != "ok" or user is None:
            return reply("denied")
        # Koha::Uploader->allows_add_by: an uploading permission (we model the cover one)
        if not self.state.has_permission(user, "upload_local_cover_images"):
            return reply("denied")
        if not files:
            return reply("failed", errors={"": {"code": 3}})
        ids = [str(self.state.store_upload(await f.read(), f.filename or "")) for f in files]
        return reply("done", ",".join(ids))

    async def upload_cover_image(self, request: Request) -> Response:
        """A4 tools/upload-cover-image.pl: attach an uploaded file, or list a record's covers."""
        context = await self.staff_gate(request, "upload_local_cover_images")
        if isinstance(context, Response):
            return context
        params = context.params
        fileid = params.get("uploadedfileid")
        biblionumber = as_int(params.get("biblionumber"))
        if (
            self.state.generation == "24.05"
            and params.get("biblionumber")
            and self.state.stored(biblionumber) is None
        ):
            # A4 [P] (main-derived pders01 fork): the biblio's cover list is read before
            # anything else, and `$biblio->cover_images` on an unknown biblio dies
            return PlainTextResponse("Internal Server Error", 500)
        if self.state.generation == "24.05":
            # A4 [P] (pders01 fork): 24.05+ acts only on op=cud-process
            process = bool(fileid) and params.get("op") == "cud-process"
        else:
            process = bool(fileid)  # A4 [V]: before 24.05 any uploadedfileid is processed
        if not process:
            return context.finish(self.cover_page(context, biblionumber))
        if params.get("filetype") != "image":
            # A4 [V]: a zip is unpacked with `unzip`; not emulated, so it always fails
            return context.finish(self.cover_page(context, biblionumber, error="UZIPFAIL"))
        number = as_int(fileid)
        replace = bool(params.get("replace")) or not self.state.syspref("AllowMultipleCovers")
        try:
            if number is None or biblionumber is None:
                raise LookupError(fileid)
            outcome = self.state.attach_cover(number, biblionumber, replace)
        except LookupError:  # Koha dies on an unknown upload id: a bare 500
            return PlainTextResponse("Internal Server Error", 500)
        if isinstance(outcome, str):
            # A4 [V]: on error a 200 page showing the error's text (not its code)
            return context.finish(self.cover_page(context, biblionumber, error=outcome, total=0))
        if self.state.generation == "24.05":
            # A4 [P]: a single-image success redirects to the record's cover list
            target = f"/cgi-bin/koha/tools/upload-cover-image.pl?biblionumber={biblionumber}"
            return context.finish(RedirectResponse(target, 302))
        return context.finish(self.cover_page(context, biblionumber, total=1))

    def cover_page(
        self,
        context: StaffContext,
        biblionumber: int | None,
        *,
        error: str | None = None,
        total: int | None = None,
    ) -> Response:
        """A4 upload-images.tt: the results of a processed upload (`total` set), the upload
        forms, and the cover list with `<li id="imagenumber-N" class="thumbnail">` items."""
        stored = self.state.stored(biblionumber)
        title = title_of(parse_marcxml(stored)) if stored is not None else None
        if title is not None:
            heading = (
                '<h1>Upload local cover image for <a href="/cgi-bin/koha/catalogue/detail.pl?'
                f'biblionumber={biblionumber}"><em>{e(title)}</em></a></h1>'
            )
        else:
            heading = "<h1>Upload local cover image</h1>"
        parts = [heading]
        if total is not None:
            parts.append(self.cover_results(biblionumber, total, error))
        csrf = self.page_csrf(context)
        form_fields = [
            hidden("uploadedfileid", ""),
            hidden("biblionumber", str(biblionumber or "")),
            hidden("filetype", "image"),
        ]
        if csrf:
            form_fields[:0] = [hidden("csrf_token", csrf), hidden("op", "cud-process")]
        parts.append(
            '<form method="post" id="processfile" action="/cgi-bin/koha/tools/'
            'upload-cover-image.pl" enctype="multipart/form-data">\n'
            + "\n".join(form_fields)
            + '\n<input type="checkbox" id="replace" name="replace" value="1" /> Replace '
            'existing covers\n<fieldset id="process_images" class="action"><button '
            'type="submit" class="btn btn-primary btn-sm save_image">Process images</button>'
            "</fieldset>\n</form>"
        )
        if biblionumber is not None and self.state.syspref("LocalCoverImages"):
            items = "\n".join(
                f'<li id="imagenumber-{n}" class="thumbnail"><a class="show_cover" '
                f'data-coverimg="{n}" href="/cgi-bin/koha/catalogue/imageviewer.pl?'
                f'biblionumber={biblionumber}&amp;imagenumber={n}">\n   <img id="thumbnail_{n}" '
                f'src="/cgi-bin/koha/catalogue/image.pl?imagenumber={n}&amp;thumbnail=1" '
                'alt="Thumbnail" /></a></li>'
                for n in self.state.covers_of(biblionumber)
            )
            parts.append(f'<h3>Existing images</h3>\n<ul class="thumbnails">\n{items}\n</ul>')
        page = staff_page(
            self.state,
            title="Upload local cover image",
            body_id="tools_upload-images",
            body="\n".join(parts),
            csrf=csrf,
        )
        return Response(page, media_type="text/html")

    def cover_results(self, biblionumber: int | None, total: int, error: str | None) -> str:
        """A4 upload-images.tt under `uploadimage`: the error is shown only as its text, two
        sentences around a <br />, never as its code. Main (Koha-Community 03b15b8, [V]):
        `#upload_results` with div.alert.alert-warning and <strong>. Older (0ad9220, YUI era
        ~17.x, [V]; that 22.11 still had it is [U], no 20.x-23.x copy was found): a <ul> with
        div.dialog.alert and <b>."""
        text = ""
        if error is not None:
            first, second = COVER_ERRORS.get(error, UNKNOWN_COVER_ERROR)
            text = e(first) + (f"<br />{e(second)}" if second else "")
        if self.state.generation == "24.05":
            alert = (
                f'<div class="alert alert-warning">\n<p><strong>{text}</strong></p>\n</div>\n'
                if error is not None
                else ""
            )
            return (
                '<h2>Image upload results :</h2>\n<div id="upload_results">\n'
                f"{alert}<h3>{total} images found</h3>\n<ul>\n</ul>\n<hr />\n</div>"
            )
        alert = (
            f'<div class="dialog alert">\n<p><b>{text}</b></p>\n</div>\n</li>\n'
            if error is not None
            else ""
        )
        return (
            f"<p>Image upload results :</p>\n<ul>\n<li>{total} images found</li>\n{alert}"
            f'<li><a href="/cgi-bin/koha/catalogue/detail.pl?biblionumber={biblionumber or ""}">'
            'View final record</a></li>\n<li><a href="/cgi-bin/koha/tools/tools-home.pl">Back'
            "</a></li>\n</ul>\n<hr />"
        )

    # -- images ----------------------------------------------------------------------------------

    async def opac_image(self, request: Request) -> Response:
        """A4 opac-image.pl: a cover by imagenumber, or a record's first cover by biblionumber."""
        if self.state.generation == "24.05":
            refusal = self.csrf_refusal(request, dict(request.query_params))
            if refusal is not None:
                return refusal
        if not self.state.syspref("OPACLocalCoverImages"):
            return Response(NO_IMAGE, media_type="image/gif")  # A4 [V]: placeholder, 200
        params = request.query_params
        number = as_int(params.get("imagenumber"))
        if number is None and (biblionumber := as_int(params.get("biblionumber"))) is not None:
            numbers = self.state.covers_of(biblionumber)
            number = numbers[0] if numbers else None
        image = self.state.cover(number) if number is not None else None
        if image is None:
            # A4 [P] (newer code, seen in a fork): unknown image → the 404 page
            return RedirectResponse("/cgi-bin/koha/errors/404.pl", 302)
        data = image.thumbnail if params.get("thumbnail") else image.imagefile
        return Response(data, media_type=image.mimetype)

    async def staff_image(self, request: Request) -> Response:
        """A4 [V] catalogue/image.pl: the staff-side equivalent, behind a staff session."""
        context = await self.staff_gate(request, "catalogue")
        if isinstance(context, Response):
            return context
        number = as_int(context.params.get("imagenumber"))
        image = self.state.cover(number) if number is not None else None
        if image is None:
            return context.finish(Response(NO_IMAGE, media_type="image/gif"))
        data = image.thumbnail if context.params.get("thumbnail") else image.imagefile
        return context.finish(Response(data, media_type=image.mimetype))

    async def not_found_page(self, request: Request) -> Response:
        body = '<div id="error404"><h1>An error has occurred!</h1><p>Error 404</p></div>'
        page = staff_page(self.state, title="Error 404", body_id="err_404", body=body)
        return Response(page, status_code=404, media_type="text/html")

    async def root(self, request: Request) -> Response:
        return RedirectResponse("/cgi-bin/koha/mainpage.pl", 302)

    # -- control API (test-only, no auth, loopback only) ----------------------------------------

    async def control_state(self, request: Request) -> Response:
        return JSONResponse(self.state.summary())

    async def control_faults(self, request: Request) -> Response:
        """{"latency": s, "down": bool, "expire_tokens": true,
        "fail_next": {"count": n, "status": 500, "path_prefix": "/api"}}"""
        try:
            body = await request.json()
            if "latency" in body:
                self.state.latency = float(body["latency"])
            if "down" in body:
                self.state.down = bool(body["down"])
            if body.get("expire_tokens"):
                self.state.expire_tokens()
            if "fail_next" in body:
                spec = body["fail_next"]
                self.state.fail_next(
                    int(spec["count"]),
                    int(spec.get("status", 500)),
                    str(spec.get("path_prefix", "")),
                )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return JSONResponse({"error": f"bad fault request: {exc}"}, 400)
        return JSONResponse(self.state.summary())

    async def control_record(self, request: Request) -> Response:
        try:
            self.state.add_record(int(request.path_params["biblio_id"]), await request.body())
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"id": int(request.path_params["biblio_id"])})

    async def control_sysprefs(self, request: Request) -> Response:
        try:
            for name, value in dict(await request.json()).items():
                self.state.set_syspref(name, value)
        except (ValueError, TypeError, SandboxError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(self.state.summary()["sysprefs"])


def unauthorized(error: str) -> Response:
    """A2 [V] Auth.pm `under`: Authorization::Unauthorized → 403 with its required_permissions,
    null when the thrower set none (a refused password)."""
    return JSONResponse({"error": error, "required_permissions": None}, 403)


def accept_types(accept: str) -> list[tuple[str, float]]:
    """The media types of an Accept header with their q (1 when absent), lower-cased."""
    found: list[tuple[str, float]] = []
    for part in accept.split(","):
        pieces = [piece.strip() for piece in part.split(";")]
        if not pieces[0]:
            continue
        quality = 1.0
        for piece in pieces[1:]:
            if piece.replace(" ", "").startswith("q="):
                try:
                    quality = float(piece.split("=", 1)[1])
                except ValueError:
                    quality = 0.0
        found.append((pieces[0].lower(), quality))
    return found


def openapi_answer(accept: str, produces: list[str], body: Any, status: int) -> Response:
    """A1 [V]: an answer Koha renders with `openapi =>` (Responses.pm, Exceptions.pm and the
    controllers' errors). Mojolicious::Plugin::OpenAPI 5.09 `_render` validates it against the
    spec's response (JSON::Validator OpenAPIv2 `_validate_body`), and a response with a schema
    (every error status in biblios.yaml; not the 200s) checks the request's Accept against the
    operation's `produces`: a mismatch turns the answer into 400 (biblios.t 'get() tests',
    `application/weird+format`). So only error answers come here; the 200s, and
    authentication's 401/403 (`json =>`), are never checked."""
    refusal = accept_refusal(accept, produces)
    return refusal if refusal is not None else JSONResponse(body, status)


def accept_refusal(accept: str, produces: list[str]) -> Response | None:
    """A1 [V] the Accept check of the OpenAPI response validation (see `openapi_answer`).
    Negotiation as JSON::Validator::Util `negotiate_content_type` (mojolicious/json-validator
    eb06d33): an exact type whatever its q, or a wildcard in the header; an empty or absent
    Accept is not checked. The body is the plugin's {errors, status} with
    JSON::Validator::Error's "Expected %1 - got %3."."""
    if not accept.strip():
        return None
    types = [mime for mime, _ in accept_types(accept)]
    if any(mime in produces for mime in types):
        return None
    for mime in types:
        if "*" in mime:
            pattern = re.compile(re.escape(mime).replace(r"\*", ".*"))
            if any(pattern.search(kind) for kind in produces):
                return None
    message = f"Expected {', '.join(produces)} - got {accept}."
    return JSONResponse(
        {"errors": [{"message": message, "path": "/header/Accept"}], "status": 400}, 400
    )


#: A1 [V] Koha/REST/V1.pm registers marcxml, mij and marc; Mojolicious knows txt, html, xml...
FORMAT_OF = {
    MARCXML: "marcxml",
    "application/marc-in-json": "mij",
    "application/marc": "marc",
    "text/plain": "txt",
    "text/html": "html",
    "application/xml": "xml",
    "text/xml": "xml",
    "application/json": "json",
}


#: A1 [V] Biblios.pm `get`: the formats its respond_to offers, in its order
RESPONDS = {
    "marcxml": MARCXML,
    "mij": "application/marc-in-json",
    "marc": "application/marc",
    "txt": "text/plain",
}


def respond_to(accept: str) -> str | None:
    """A1 [V]: the MARC type Biblios.pm `get`'s respond_to picks (mojolicious/mojo b4de430:
    DefaultHelpers `_respond_to`, Renderer `accepts`, Types `detect`). The Accept types, sorted
    by name then highest q first, map to formats; the first one offered wins. When the header
    names no known format (*/*, or no header) respond_to tries the renderer's default_format,
    'html' (Koha's REST app sets none), which `get` does not offer either. None → the
    controller's `any` branch, the 406 list."""
    ranked = sorted(sorted(accept_types(accept)), key=lambda item: -item[1])
    formats = [FORMAT_OF[mime] for mime, _ in ranked if mime in FORMAT_OF] or ["html"]
    return next((RESPONDS[name] for name in formats if name in RESPONDS), None)


def as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def create_app(state: KohaState) -> Starlette:
    """The emulated Koha: REST (A1, A2), staff pages (A3, A4), OPAC images and `/_sandbox/`."""
    koha = KohaApp(state)
    cgi = "/cgi-bin/koha"
    routes = [
        Route("/", koha.root, methods=["GET"]),
        Route("/api/v1/biblios/{biblio_id:int}", koha.get_biblio, methods=["GET"]),
        Route("/api/v1/biblios/{biblio_id:int}", koha.put_biblio, methods=["PUT"]),
        Route("/api/v1/oauth/token", koha.oauth_token, methods=["POST"]),
        Route(f"{cgi}/mainpage.pl", koha.mainpage, methods=["GET", "POST"]),
        Route(f"{cgi}/catalogue/detail.pl", koha.detail, methods=["GET", "POST"]),
        Route(f"{cgi}/catalogue/image.pl", koha.staff_image, methods=["GET"]),
        Route(f"{cgi}/tools/upload-file.pl", koha.upload_file, methods=["POST"]),
        Route(
            f"{cgi}/tools/upload-cover-image.pl", koha.upload_cover_image, methods=["GET", "POST"]
        ),
        Route(f"{cgi}/opac-image.pl", koha.opac_image, methods=["GET"]),
        Route(f"{cgi}/errors/404.pl", koha.not_found_page, methods=["GET"]),
        Route("/_sandbox/state", koha.control_state, methods=["GET"]),
        Route("/_sandbox/faults", koha.control_faults, methods=["POST"]),
        Route("/_sandbox/records/{biblio_id:int}", koha.control_record, methods=["PUT"]),
        Route("/_sandbox/sysprefs", koha.control_sysprefs, methods=["PATCH"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(FaultInjection, state=state)
    return app


def serve_koha(state: KohaState, *, port: int = 0) -> RunningServer:
    """Serve the emulator on 127.0.0.1 (one host plays both OPAC and staff interface)."""
    running = serve(create_app(state), "koha", port=port)
    state.staff_url = running.url
    state.opac_url = running.url
    return running


__all__ = [
    "ALL_PERMISSIONS",
    "KohaState",
    "create_app",
    "parse_marcxml",
    "serve_koha",
]
