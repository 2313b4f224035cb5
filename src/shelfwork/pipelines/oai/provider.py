"""shelfwork's own OAI-PMH 2.0 data provider: validated records re-exposed per network and set.

`respond` turns one request's arguments into the whole response document. It knows the protocol
and nothing else: the web side is api/oai.py, the data side a `RecordSource` (the database, or an
in-memory one in tests).

Lists are paged by keyset, (datestamp, identifier), never by offset. A record that changes while a
harvest runs gets a new datestamp and moves to the end of the list, so it is still harvested
(perhaps twice) and no other record shifts under the harvester's feet and gets skipped. Only a
record removed outright (deletedRecord "no" or "transient") leaves the list.

Resumption tokens hold no server state: the list's arguments, the keyset position, the cursor and
completeListSize, as base64url JSON, signed with HMAC-SHA256 over the repository's base URL as well.
A token that was altered, issued by another network's repository or for another verb, or that
expired, is badResumptionToken. Rotating the secret invalidates every token in flight.

Everything untrusted is checked before it is echoed: argument values must be XML characters,
metadata bytes are parsed with a parser that loads no DTD, resolves no entity and touches no
network, and documents with a DOCTYPE are refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from lxml import etree

from ...errors import ConfigError, ShelfworkError
from ...safexml import parser as safe_parser

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{OAI_NS} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd"
PROTOCOL_VERSION = "2.0"
DAY_GRANULARITY = "YYYY-MM-DD"
SECOND_GRANULARITY = "YYYY-MM-DDThh:mm:ssZ"
DELETED_RECORD_POLICIES = ("no", "transient", "persistent")
DEFAULT_TOKEN_LIFETIME = timedelta(hours=24)
#: the shortest token secret accepted (HMAC keys shorter than this are guessable)
MIN_SECRET_BYTES = 16
#: longest argument value accepted; resumption tokens carry an identifier, so they get more room
MAX_ARGUMENT = 2048
MAX_TOKEN = 16384
#: at most this many badArgument errors are listed in one answer
MAX_ERRORS = 10
TOKEN_VERSION = 1
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

LIST_ARGUMENTS = frozenset({"metadataPrefix", "from", "until", "set", "resumptionToken"})
#: the arguments each verb may carry besides `verb`
VERBS: dict[str, frozenset[str]] = {
    "Identify": frozenset(),
    "ListMetadataFormats": frozenset({"identifier"}),
    "ListSets": frozenset({"resumptionToken"}),
    "GetRecord": frozenset({"identifier", "metadataPrefix"}),
    "ListIdentifiers": LIST_ARGUMENTS,
    "ListRecords": LIST_ARGUMENTS,
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "GetRecord": ("identifier", "metadataPrefix"),
    "ListIdentifiers": ("metadataPrefix",),
    "ListRecords": ("metadataPrefix",),
}

#: OAI-PMH.xsd's emailType, which every adminEmail must match (user@host.domain)
ADMIN_EMAIL = re.compile(r"\S+@(\S+\.)+\S+")
SET_SPEC = re.compile(r"[A-Za-z0-9\-_.!~*'()]+(?::[A-Za-z0-9\-_.!~*'()]+)*")
#: OAI-PMH.xsd metadataPrefixType; a request's prefix is echoed, so it must fit
METADATA_PREFIX = re.compile(r"[A-Za-z0-9\-_.!~*'()]+")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
#: a character XML 1.0 cannot carry, in text or attributes
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ---------------------------------------------------------------------------------- the seam


@dataclass(frozen=True)
class ExposedRecord:
    """One record as the provider shows it. `datestamp` is UTC (naive means UTC); `metadata` is
    the XML of the single element inside <metadata>, None for a deleted record."""

    identifier: str
    datestamp: datetime
    sets: tuple[str, ...] = ()
    deleted: bool = False
    metadata: bytes | None = None


@dataclass(frozen=True)
class RepositoryInfo:
    """What Identify answers. `base_url` is the public URL of this network's endpoint: it is
    echoed in every answer and binds resumption tokens to this repository."""

    name: str
    base_url: str
    admin_emails: tuple[str, ...]
    earliest_datestamp: datetime
    deleted_record: str = "persistent"
    granularity: str = SECOND_GRANULARITY


@dataclass(frozen=True)
class MetadataFormat:
    prefix: str
    schema: str
    namespace: str


OAI_DC = MetadataFormat(
    "oai_dc",
    "http://www.openarchives.org/OAI/2.0/oai_dc.xsd",
    "http://www.openarchives.org/OAI/2.0/oai_dc/",
)


class RecordSource(Protocol):
    """The records of one network's repository; shelfwork implements it over its database.

    Datetimes handed in are aware UTC. A list is selected by metadata prefix, set (a record in
    `a:b` is also in `a`), and datestamp window `start <= datestamp < before` (either bound may be
    None), and ordered by (datestamp, identifier). `page` returns up to `limit` records of it
    strictly after the key `after`, so paging stays stable while records change. With
    deletedRecord "no", deleted records are simply absent.
    """

    def info(self) -> RepositoryInfo: ...

    def formats(self, identifier: str | None = None) -> Sequence[MetadataFormat] | None:
        """Every format the repository disseminates; with `identifier`, the formats that item
        is available in, or None if there is no such item."""
        ...

    def sets(self) -> Sequence[tuple[str, str]]:
        """(setSpec, setName) of every set; empty if the repository has no sets."""
        ...

    def count(
        self, *, prefix: str, set_spec: str | None, start: datetime | None, before: datetime | None
    ) -> int: ...

    def page(
        self,
        *,
        prefix: str,
        set_spec: str | None,
        start: datetime | None,
        before: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[ExposedRecord]: ...

    def get(self, identifier: str, prefix: str) -> ExposedRecord | None:
        """The item in format `prefix` (a deleted one too), or None."""
        ...


class RecordSourceError(ShelfworkError):
    """The record source broke its contract (bad metadata, misordered pages): a bug to fix in the
    data, not in the harvester's request, so it is not answered as an OAI error."""

    def __init__(self, base_url: str, identifier: str | None, problem: str) -> None:
        self.base_url = base_url
        self.identifier = identifier
        self.problem = problem
        what = f"record {identifier!r}" if identifier is not None else "record source"
        super().__init__(f"OAI-PMH provider {base_url}: {what}: {problem}")


# ------------------------------------------------------------------------------ protocol errors


class Problem(Exception):
    """OAI-PMH error conditions, answered as <error> elements; never raised out of `respond`."""

    def __init__(self, code: str, message: str, *more: tuple[str, str]) -> None:
        self.errors = [(code, message), *more]
        super().__init__(message)

    @property
    def echoes_request(self) -> bool:
        """badVerb and badArgument answers must not repeat the request's arguments."""
        return not any(code in ("badVerb", "badArgument") for code, _ in self.errors)


def shown(value: str, limit: int = 80) -> str:
    """`value` quoted for an error message, shortened, with nothing XML cannot carry."""
    text = repr(value if len(value) <= limit else value[:limit] + "...")
    return NOT_XML.sub("?", text)


# -------------------------------------------------------------------------------- datestamps


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def format_datestamp(moment: datetime, granularity: str) -> str:
    utc = as_utc(moment)
    day = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
    if granularity == DAY_GRANULARITY:
        return day
    return f"{day}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"


@dataclass(frozen=True)
class Window:
    """The datestamp window `start <= datestamp < before` a from/until pair stands for."""

    start: datetime | None = None
    before: datetime | None = None


def datestamp_kind(value: str) -> str | None:
    """The granularity `value` is written in, or None if it is no datestamp."""
    if DAY.fullmatch(value):
        return DAY_GRANULARITY
    if SECOND.fullmatch(value):
        return SECOND_GRANULARITY
    return None


def read_window(values: Mapping[str, str], granularity: str) -> Window:
    """from/until as a window, or badArgument: bad syntax, finer than the repository's
    granularity, two granularities, from later than until."""
    problems: list[str] = []
    parsed: dict[str, tuple[datetime, str]] = {}
    for name in ("from", "until"):
        value = values.get(name)
        if value is None:
            continue
        kind = datestamp_kind(value)
        if kind is None:
            accepted = (
                DAY_GRANULARITY
                if granularity == DAY_GRANULARITY
                else f"{DAY_GRANULARITY} or {SECOND_GRANULARITY}"
            )
            problems.append(f"{name}={shown(value)} is not a UTC datestamp ({accepted})")
            continue
        layout = "%Y-%m-%d" if kind == DAY_GRANULARITY else "%Y-%m-%dT%H:%M:%SZ"
        try:
            moment = datetime.strptime(value, layout).replace(tzinfo=UTC)
        except ValueError:
            problems.append(f"{name}={shown(value)} is not a date")
            continue
        if kind == SECOND_GRANULARITY and granularity == DAY_GRANULARITY:
            problems.append(
                f"{name}={shown(value)} is finer than this repository's granularity {granularity}"
            )
            continue
        parsed[name] = (moment, kind)
    if "from" in parsed and "until" in parsed:
        (start, start_kind), (end, end_kind) = parsed["from"], parsed["until"]
        if start_kind != end_kind:
            problems.append("from and until have different granularities")
        elif start > end:
            problems.append("from is later than until")
    if problems:
        raise Problem("badArgument", problems[0], *(("badArgument", p) for p in problems[1:]))
    start = parsed["from"][0] if "from" in parsed else None
    before: datetime | None = None
    if "until" in parsed:
        end, kind = parsed["until"]
        step = timedelta(days=1) if kind == DAY_GRANULARITY else timedelta(seconds=1)
        try:
            before = end + step
        except OverflowError:  # until=9999-12-31: no upper bound at all
            before = None
    return Window(start, before)


# ---------------------------------------------------------------------------------- arguments


def read_arguments(arguments: Mapping[str, Sequence[str]]) -> tuple[str, dict[str, str]]:
    """The verb and its single-valued arguments, or badVerb / badArgument."""
    verbs = list(arguments.get("verb") or ())
    if not verbs:
        raise Problem("badVerb", "the verb argument is missing")
    if len(verbs) > 1:
        raise Problem("badVerb", "the verb argument is repeated")
    verb = verbs[0]
    if verb not in VERBS:
        raise Problem("badVerb", f"{shown(verb)} is not an OAI-PMH verb")
    allowed = VERBS[verb]
    problems: list[str] = []
    values: dict[str, str] = {}
    for name, given in arguments.items():
        if name == "verb" or not given:
            continue
        if name not in allowed:
            problems.append(f"{shown(name)} is not an argument of {verb}")
            continue
        if len(given) > 1:
            problems.append(f"{name} is repeated")
            continue
        value = given[0]
        limit = MAX_TOKEN if name == "resumptionToken" else MAX_ARGUMENT
        if not value:
            problems.append(f"{name} is empty")
        elif len(value) > limit:
            problems.append(f"{name} is longer than {limit} characters")
        elif NOT_XML.search(value):
            problems.append(f"{name} holds characters XML cannot carry")
        else:
            values[name] = value
    if not problems:
        if "resumptionToken" in values and len(values) > 1:
            others = ", ".join(sorted(set(values) - {"resumptionToken"}))
            problems.append(f"resumptionToken is exclusive; it came with {others}")
        elif "resumptionToken" not in values:
            problems += [
                f"{name} is required" for name in REQUIRED.get(verb, ()) if name not in values
            ]
        if "set" in values and not SET_SPEC.fullmatch(values["set"]):
            problems.append(f"set={shown(values['set'])} is not a setSpec")
        prefix = values.get("metadataPrefix")
        if prefix is not None and not METADATA_PREFIX.fullmatch(prefix):
            problems.append(f"metadataPrefix={shown(prefix)} is not a metadata prefix")
    if problems:
        listed = problems[:MAX_ERRORS]
        raise Problem("badArgument", listed[0], *(("badArgument", p) for p in listed[1:]))
    return verb, values


# ------------------------------------------------------------------------------------ tokens


@dataclass(frozen=True)
class ListState:
    """Where a list stands: its arguments, the key of the last record sent, how many records were
    sent (the next cursor) and the size announced on the first page."""

    verb: str
    prefix: str
    set_spec: str | None
    window: Window
    after: tuple[datetime, str] | None = None
    cursor: int = 0
    size: int | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def _parse_iso(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a date")
    return as_utc(datetime.fromisoformat(value))


class Tokens:
    """Signs and reads the resumption tokens of one repository (its base URL is in the MAC)."""

    def __init__(self, secret: bytes, base_url: str, lifetime: timedelta | None) -> None:
        # A key of this repository's own: a token signed for one base URL fails at every other.
        self._key = hmac.digest(secret, b"shelfwork-oai-token\n" + base_url.encode(), "sha256")
        self.lifetime = lifetime

    def _mac(self, payload: str) -> str:
        return _b64(hmac.digest(self._key, payload.encode("utf-8"), "sha256"))

    def issue(self, state: ListState, now: datetime) -> tuple[str, datetime | None]:
        expires = None if self.lifetime is None else now + self.lifetime
        if state.after is None:
            raise ValueError("a token continues after a record; the state has none")
        body = {
            "v": TOKEN_VERSION,
            "verb": state.verb,
            "p": state.prefix,
            "s": state.set_spec,
            "f": _iso(state.window.start),
            "b": _iso(state.window.before),
            "d": _iso(state.after[0]),
            "i": state.after[1],
            "c": state.cursor,
            "n": state.size,
            "x": None if expires is None else int(expires.timestamp()),
        }
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._mac(payload)}", expires

    def read(self, token: str, verb: str, now: datetime) -> ListState:
        refused = Problem(
            "badResumptionToken", "this repository did not issue that token, or it was altered"
        )
        payload, dot, mac = token.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            raise refused
        try:
            body = json.loads(_unb64(payload))
            if body["v"] != TOKEN_VERSION:
                raise refused
            expires = None if body["x"] is None else float(body["x"])
            last = _parse_iso(body["d"])
            if last is None:
                raise refused
            state = ListState(
                verb=str(body["verb"]),
                prefix=str(body["p"]),
                set_spec=None if body["s"] is None else str(body["s"]),
                window=Window(_parse_iso(body["f"]), _parse_iso(body["b"])),
                after=(last, str(body["i"])),
                cursor=int(body["c"]),
                size=None if body["n"] is None else int(body["n"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise refused from None
        if expires is not None and now.timestamp() > expires:
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise Problem(
                "badResumptionToken", f"the token expired at {when}; start the list again"
            )
        if state.verb != verb:
            raise Problem(
                "badResumptionToken", f"the token continues a {state.verb} list, not {verb}"
            )
        return state


# ---------------------------------------------------------------------------- the response


def tag(name: str) -> str:
    return f"{{{OAI_NS}}}{name}"


def child(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, tag(name))
    if text is not None:
        element.text = text
    return element


@dataclass(frozen=True)
class Call:
    """One request being answered: what every verb handler needs."""

    source: RecordSource
    info: RepositoryInfo
    now: datetime
    page_size: int
    tokens: Tokens

    def broken(self, identifier: str | None, problem: str) -> RecordSourceError:
        return RecordSourceError(self.info.base_url, identifier, problem)


def check_info(info: RepositoryInfo) -> None:
    """Refuse an Identify answer the protocol forbids, naming the field to fix."""
    where = f"OAI-PMH repository {info.base_url or '(no base URL)'}"
    if not info.base_url:
        raise ConfigError(f"{where}: base_url is empty")
    if not info.admin_emails:
        raise ConfigError(f"{where}: at least one admin e-mail address is required")
    for email in info.admin_emails:
        if not ADMIN_EMAIL.fullmatch(email):
            raise ConfigError(
                f"{where}: adminEmail {email!r} is not an address the OAI-PMH schema accepts "
                "(user@host.domain)"
            )
    if info.deleted_record not in DELETED_RECORD_POLICIES:
        raise ConfigError(
            f"{where}: deleted_record {info.deleted_record!r} is not one of "
            f"{', '.join(DELETED_RECORD_POLICIES)}"
        )
    if info.granularity not in (DAY_GRANULARITY, SECOND_GRANULARITY):
        raise ConfigError(
            f"{where}: granularity {info.granularity!r} is not "
            f"{DAY_GRANULARITY} or {SECOND_GRANULARITY}"
        )
    for name, value in (
        ("name", info.name),
        ("base_url", info.base_url),
        *(("admin_emails", email) for email in info.admin_emails),
    ):
        if NOT_XML.search(value):
            raise ConfigError(f"{where}: {name} holds characters XML cannot carry")


def check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the OAI-PMH resumption token secret must be at least {MIN_SECRET_BYTES} bytes "
            f"(got {len(secret)}); generate one with `python -c 'import secrets; "
            "print(secrets.token_hex(32))'`"
        )


def metadata_element(call: Call, record: ExposedRecord) -> etree._Element:
    """The record's metadata as an element, parsed safely."""
    if not record.metadata:
        raise call.broken(record.identifier, "a record that is not deleted has no metadata")
    try:
        root = etree.fromstring(record.metadata, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise call.broken(record.identifier, f"malformed metadata XML: {exc.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise call.broken(record.identifier, "metadata declares a DOCTYPE; refused")
    # The schema wants the payload in a namespace of its own (##other); an element in none would
    # be read as an OAI-PMH element once inside the response's default namespace.
    if etree.QName(root).namespace == OAI_NS:
        raise call.broken(record.identifier, "metadata root is in the OAI-PMH namespace")
    for element in root.iter(tag=etree.Element):
        if etree.QName(element).namespace is None:
            raise call.broken(
                record.identifier,
                f"metadata element <{element.tag}> has no namespace; OAI-PMH needs one",
            )
    return root


def header(call: Call, parent: etree._Element, record: ExposedRecord) -> None:
    element = child(parent, "header")
    if record.deleted:
        element.set("status", "deleted")
    try:
        child(element, "identifier", record.identifier)
        child(element, "datestamp", format_datestamp(record.datestamp, call.info.granularity))
        for spec in record.sets:
            child(element, "setSpec", spec)
    except ValueError as exc:  # lxml refuses text XML cannot carry
        raise call.broken(record.identifier, f"header cannot be written: {exc}") from None


def record_element(call: Call, parent: etree._Element, record: ExposedRecord) -> None:
    element = child(parent, "record")
    header(call, element, record)
    if not record.deleted:
        child(element, "metadata").append(metadata_element(call, record))


# ------------------------------------------------------------------------------------- verbs


def identify(call: Call, values: Mapping[str, str]) -> etree._Element:
    info = call.info
    element = etree.Element(tag("Identify"))
    child(element, "repositoryName", info.name)
    child(element, "baseURL", info.base_url)
    child(element, "protocolVersion", PROTOCOL_VERSION)
    for email in info.admin_emails:
        child(element, "adminEmail", email)
    child(element, "earliestDatestamp", format_datestamp(info.earliest_datestamp, info.granularity))
    child(element, "deletedRecord", info.deleted_record)
    child(element, "granularity", info.granularity)
    return element


def list_metadata_formats(call: Call, values: Mapping[str, str]) -> etree._Element:
    identifier = values.get("identifier")
    formats = call.source.formats(identifier)
    if formats is None:
        raise Problem("idDoesNotExist", f"no item {shown(identifier or '')} in this repository")
    if not formats:
        what = f"item {shown(identifier)}" if identifier else "this repository"
        raise Problem("noMetadataFormats", f"no metadata formats are available for {what}")
    element = etree.Element(tag("ListMetadataFormats"))
    for format_ in formats:
        entry = child(element, "metadataFormat")
        child(entry, "metadataPrefix", format_.prefix)
        child(entry, "schema", format_.schema)
        child(entry, "metadataNamespace", format_.namespace)
    return element


def list_sets(call: Call, values: Mapping[str, str]) -> etree._Element:
    sets = call.source.sets()
    if not sets:
        raise Problem("noSetHierarchy", "this repository does not organise records in sets")
    if "resumptionToken" in values:  # every set fits in one answer: no token was ever issued
        raise Problem("badResumptionToken", "ListSets is never split; there is nothing to resume")
    element = etree.Element(tag("ListSets"))
    for spec, name in sets:
        entry = child(element, "set")
        child(entry, "setSpec", spec)
        child(entry, "setName", name)
    return element


def get_record(call: Call, values: Mapping[str, str]) -> etree._Element:
    identifier, prefix = values["identifier"], values["metadataPrefix"]
    formats = call.source.formats(identifier)
    if formats is None:
        raise Problem("idDoesNotExist", f"no item {shown(identifier)} in this repository")
    if prefix not in {f.prefix for f in formats}:
        raise Problem(
            "cannotDisseminateFormat",
            f"item {shown(identifier)} is not available as {shown(prefix)}",
        )
    record = call.source.get(identifier, prefix)
    if record is None:
        raise Problem("idDoesNotExist", f"no item {shown(identifier)} in this repository")
    element = etree.Element(tag("GetRecord"))
    record_element(call, element, record)
    return element


def first_state(call: Call, verb: str, values: Mapping[str, str]) -> ListState:
    window = read_window(values, call.info.granularity)
    prefix = values["metadataPrefix"]
    if prefix not in {f.prefix for f in call.source.formats()}:
        raise Problem(
            "cannotDisseminateFormat", f"this repository does not disseminate {shown(prefix)}"
        )
    set_spec = values.get("set")
    if set_spec is not None and not call.source.sets():
        raise Problem("noSetHierarchy", "this repository does not organise records in sets")
    return ListState(verb, prefix, set_spec, window)


def list_items(call: Call, verb: str, values: Mapping[str, str]) -> etree._Element:
    """ListRecords and ListIdentifiers: one page, one record more asked for to learn whether the
    list goes on, and the count only when it does (so a one-page list costs one query)."""
    token = values.get("resumptionToken")
    state = (
        call.tokens.read(token, verb, call.now)
        if token is not None
        else first_state(call, verb, values)
    )
    selection: dict[str, Any] = {
        "prefix": state.prefix,
        "set_spec": state.set_spec,
        "start": state.window.start,
        "before": state.window.before,
    }
    rows = list(call.source.page(**selection, after=state.after, limit=call.page_size + 1))
    check_order(call, state.after, rows)
    if not rows and token is None:
        raise Problem("noRecordsMatch", "no records match the arguments")
    more = len(rows) > call.page_size
    rows = rows[: call.page_size]
    size = state.size
    if token is None and more:
        size = call.source.count(**selection)
    element = etree.Element(tag(verb))
    for row in rows:
        if verb == "ListRecords":
            record_element(call, element, row)
        else:
            header(call, element, row)
    if token is None and not more:
        return element  # a complete list in one answer carries no token
    sent = state.cursor + len(rows)
    resumption = child(element, "resumptionToken")
    resumption.set("completeListSize", str(max(size or 0, sent + (1 if more else 0))))
    resumption.set("cursor", str(state.cursor))
    if more:
        last = rows[-1]
        following = ListState(
            state.verb,
            state.prefix,
            state.set_spec,
            state.window,
            after=(as_utc(last.datestamp), last.identifier),
            cursor=sent,
            size=size,
        )
        resumption.text, expires = call.tokens.issue(following, call.now)
        if expires is not None:
            resumption.set("expirationDate", format_datestamp(expires, SECOND_GRANULARITY))
    return element


def check_order(
    call: Call, after: tuple[datetime, str] | None, rows: Sequence[ExposedRecord]
) -> None:
    """Catch a source that ignores `after` or the order: its harvesters would loop or skip."""
    previous = after
    for row in rows:
        key = (as_utc(row.datestamp), row.identifier)
        if previous is not None and (key[0] < previous[0] or key == previous):
            raise call.broken(
                row.identifier,
                "page() returned records not in (datestamp, identifier) order after the last key",
            )
        previous = key


Handler = Callable[[Call, Mapping[str, str]], etree._Element]
HANDLERS: dict[str, Handler] = {
    "Identify": identify,
    "ListMetadataFormats": list_metadata_formats,
    "ListSets": list_sets,
    "GetRecord": get_record,
    "ListIdentifiers": lambda call, values: list_items(call, "ListIdentifiers", values),
    "ListRecords": lambda call, values: list_items(call, "ListRecords", values),
}


def respond(
    arguments: Mapping[str, Sequence[str]],
    source: RecordSource,
    *,
    now: datetime,
    page_size: int = 100,
    token_secret: bytes,
    token_lifetime: timedelta | None = DEFAULT_TOKEN_LIFETIME,
) -> bytes:
    """The OAI-PMH response (UTF-8 XML) to one request's arguments, each name with every value
    it was given (so repeated arguments are seen). `now` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("respond needs a timezone-aware `now`")
    if page_size < 1:
        raise ConfigError(f"OAI-PMH page size must be at least 1, not {page_size}")
    check_secret(token_secret)
    info = source.info()
    check_info(info)
    now = as_utc(now).replace(microsecond=0)
    call = Call(source, info, now, page_size, Tokens(token_secret, info.base_url, token_lifetime))

    root = etree.Element(tag("OAI-PMH"), nsmap={None: OAI_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    child(root, "responseDate", format_datestamp(now, SECOND_GRANULARITY))
    request = child(root, "request", info.base_url)
    try:
        verb, values = read_arguments(arguments)
        request.set("verb", verb)
        for name, value in values.items():
            request.set(name, value)
        root.append(HANDLERS[verb](call, values))
    except Problem as problem:
        if not problem.echoes_request:
            request.attrib.clear()
        for code, message in problem.errors:
            child(root, "error", message).set("code", code)
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)
