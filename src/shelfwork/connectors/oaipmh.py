"""OAI-PMH 2.0 harvesting client: Identify, then ListRecords page by page.

It answers the faults the reference harvester's maintainers list (la-referencia-oaipmh-dcb.md
1.2): 503 + Retry-After is honoured but bounded, network errors and 5xx are retried with
exponential backoff, a page that does not parse is retried a couple of times (a truncated page is
often transient), a repository that hands back a token it already gave is caught instead of
looping forever, and every OAI error code becomes an exception the harvest pipeline can act on
(`BadResumptionToken` names the token so it can restart from `from` with an overlap).
`noRecordsMatch` is an empty page, not an error.

Every attempt of a request counts, whatever failed: each wait is the backoff (doubling per
attempt) or the server's Retry-After if longer, never more than `max_wait`; a request is given up
after `retries` retries or when the next wait would pass `max_total_wait`. So `Retry-After: 0`
(or a date gone by) cannot make the client hammer a repository.

A repository is reached only at addresses the outbound policy allows (outbound.py: public ones,
plus an operator's allow-list), checked on every connection, so a redirect cannot lead into the
server's own network. A response may inflate to at most `max_bytes` (gzip bombs stop as they
inflate) and must arrive whole within `deadline` seconds (a server sending one byte a second
never trips a read timeout). What a remote answered is quoted in errors only as a short excerpt
on one line.

Each page is streamed to a spooled temporary file with the characters XML 1.0 forbids removed
on the way (counted on the page), then parsed with lxml's iterparse, clearing records as they
are read, so memory stays flat whatever the page size. Pages with a DOCTYPE are refused.

The client keeps no harvest state: the caller checkpoints `Page.token` after storing a page and
passes it back as `pages(..., resume=token)` after a crash.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Literal, Self

import httpx
from lxml import etree

from .. import redaction
from ..outbound import PUBLIC_ONLY, AddressPolicy, AddressRefused, request_deadline
from . import (
    RemoteError,
    RemoteRefused,
    RemoteUnavailable,
    error_class,
    tls_context,
)

log = logging.getLogger(__name__)

SYSTEM = "OAI-PMH"
OAI_NS = "http://www.openarchives.org/OAI/2.0/"
DAY_GRANULARITY = "YYYY-MM-DD"
SECOND_GRANULARITY = "YYYY-MM-DDThh:mm:ssZ"
#: pages up to this size stay in memory while they are parsed; larger ones go to disk
SPOOL_IN_MEMORY = 8 << 20
#: the largest malformed page kept in memory to be salvaged record by record
SALVAGE_LIMIT = 64 << 20
#: how much of an error answer is read to quote it
ERROR_BODY_LIMIT = 4096
#: the most characters of a remote answer an error quotes (one line, no control characters)
QUOTED = 160
#: the most bytes one response may inflate to, by default (a network's limits may change it)
MAX_BYTES = 100_000_000
#: seconds one request may take in all (connect, headers, body), by default
DEADLINE = 600.0
#: redirects followed for one request (each hop's address is checked)
MAX_REDIRECTS = 5
#: bytes inflated at a time: what a gzip bomb can make the client hold at once
INFLATE_PIECE = 1 << 20

#: characters XML 1.0 forbids, in UTF-8 (C0 controls but tab/LF/CR; U+FFFE, U+FFFF) and as
#: character references (which lxml refuses just the same); surrogates cannot occur in UTF-8
ILLEGAL_XML = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f]"
    rb"|\xef\xbf[\xbe\xbf]"
    rb"|&#(?:[xX]0{0,6}(?:[0-8bBcCeEfF]|1[0-9a-fA-F]|[dD][89a-fA-F][0-9a-fA-F]{2}|[fF]{3}[eEfF])"
    rb"|0{0,6}(?:[0-8]|1[124-9]|2[0-9]|3[01]|6553[45]));"
)
#: the longest match of ILLEGAL_XML ("&#x" + 6 zeros + 4 digits + ";")
ILLEGAL_XML_MAX = 14
#: bytes that may begin a multi-byte match of ILLEGAL_XML
ILLEGAL_XML_STARTS = (b"&", b"\xef")

Method = Literal["GET", "POST"]


def quoted(text: str | bytes, limit: int = QUOTED) -> str:
    """A remote answer as an error may quote it (redaction.excerpt), at this client's length."""
    return redaction.excerpt(text, limit)


def tag(name: str) -> str:
    return f"{{{OAI_NS}}}{name}"


ROOT = tag("OAI-PMH")
RECORD = tag("record")
HEADER = tag("header")
METADATA = tag("metadata")
TOKEN = tag("resumptionToken")
ERROR = tag("error")
RESPONSE_DATE = tag("responseDate")
IDENTIFY = tag("Identify")
SET = tag("set")
#: the verbs' list elements, the only places a record, a set or a token is the page's own
LIST_RECORDS = tag("ListRecords")
GET_RECORD = tag("GetRecord")
LIST_SETS = tag("ListSets")
LIST_IDENTIFIERS = tag("ListIdentifiers")
#: the most sets `list_sets` reads (names only label sets; a list without end must not stall)
MAX_SETS = 10_000
#: the most ListSets pages `list_sets` asks for
MAX_SET_PAGES = 500


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Identify:
    repository_name: str
    base_url: str
    protocol_version: str
    earliest_datestamp: str
    deleted_record: str
    granularity: str
    compression: tuple[str, ...]


@dataclass(frozen=True)
class Record:
    identifier: str
    datestamp: str
    deleted: bool
    sets: tuple[str, ...]
    #: the single element inside <metadata>, serialised; None for a deleted record
    metadata: bytes | None


@dataclass(frozen=True)
class Token:
    value: str
    cursor: int | None = None
    complete_list_size: int | None = None
    expiration: str | None = None


@dataclass(frozen=True)
class Page:
    records: list[Record]
    #: where the list continues; None on the last page
    token: Token | None
    response_date: str
    #: the arguments sent for this page
    request: dict[str, str]
    #: characters XML 1.0 forbids that were removed before parsing
    removed_characters: int = 0
    #: records of a malformed page that could not be read on their own (salvaged pages only)
    broken: list[BrokenRecord] = field(default_factory=list)


@dataclass(frozen=True)
class BrokenRecord:
    """One record of a page that did not parse, cut out and refused on its own."""

    identifier: str | None
    reason: str
    excerpt: str = ""


# ----------------------------------------------------------------------------------- errors


def describe(arguments: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in arguments.items())


class OaiError(RemoteRefused):
    """The repository answered with an OAI-PMH error code (HTTP 200, <error code=...>)."""

    def __init__(
        self, code: str, server_message: str, *, method: str, url: str, arguments: dict[str, str]
    ) -> None:
        self.code = code
        self.server_message = quoted(server_message)
        self.arguments = dict(arguments)
        super().__init__(
            SYSTEM,
            f"{quoted(code, 40)} for [{describe(arguments)}]: {self.server_message or '(no message)'}",
            method=method,
            url=url,
            status=200,
        )


class BadResumptionToken(OaiError):
    """The token expired or is unknown: restart the list from the last `from`, with overlap."""

    @property
    def token(self) -> str | None:
        return self.arguments.get("resumptionToken")


class BadArgument(OaiError):
    pass


class CannotDisseminateFormat(OaiError):
    pass


class NoSetHierarchy(OaiError):
    pass


OAI_ERRORS: dict[str, type[OaiError]] = {
    "badResumptionToken": BadResumptionToken,
    "badArgument": BadArgument,
    "cannotDisseminateFormat": CannotDisseminateFormat,
    "noSetHierarchy": NoSetHierarchy,
}


class BadPage(RemoteError):
    """A page that is not a well-formed OAI-PMH response; `transient` ones are retried."""

    transient = True
    label = "unreadable page"

    def __init__(
        self,
        reason: str,
        *,
        method: str,
        url: str,
        arguments: dict[str, str],
        line: int | None = None,
        excerpt: str = "",
    ) -> None:
        self.reason = reason
        self.arguments = dict(arguments)
        self.line = line
        self.excerpt = quoted(excerpt)
        #: the page's bytes, kept for salvage (clients with `salvage=True` only)
        self.raw: bytes | None = None
        where = f" at line {line}" if line is not None else ""
        super().__init__(
            SYSTEM,
            f"{self.label} for [{describe(arguments)}]{where}: {reason}",
            method=method,
            url=url,
            body=self.excerpt,
        )


class UnsafePage(BadPage):
    """A page with a DOCTYPE (possible entity expansion or XXE): refused, never retried."""

    transient = False
    label = "refused page"


class PageTooLarge(BadPage):
    """A response that inflates past the byte cap (a gzip bomb, or a page far too big): refused
    as it inflates, never retried (it would be as big the next time)."""

    transient = False
    label = "page too large"


class TooLarge(Exception):
    """Raised by the Inflater; the client turns it into a PageTooLarge naming the request."""


class UnreadableBody(Exception):
    """A body the Inflater cannot decode (unknown coding, corrupt or cut compressed data)."""


class UnknownCoding(UnreadableBody):
    """A Content-Encoding the client did not ask for (or more than one)."""


class UnsupportedCoding(BadPage):
    """A body in a content coding the client did not ask for: refused, never retried (the
    repository would send it the same way)."""

    transient = False


class Throttled(RemoteUnavailable):
    """503/429 with a Retry-After the client could not (or would no longer) wait for."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        method: str,
        url: str,
        status: int,
        body: str,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(SYSTEM, message, method=method, url=url, status=status, body=body)


class RepeatedToken(RemoteError):
    """The repository handed back a token the harvest already followed: it would never end."""

    def __init__(self, token: str, *, method: str, url: str, arguments: dict[str, str]) -> None:
        self.token = token
        self.arguments = dict(arguments)
        super().__init__(
            SYSTEM,
            f"resumption token {token!r} repeated (answer to [{describe(arguments)}]); "
            "stopping instead of looping",
            method=method,
            url=url,
        )


# -------------------------------------------------------------------------------- datestamps


def format_datestamp(moment: datetime, granularity: str) -> str:
    """`moment` in UTC at the repository's granularity (a naive datetime is refused: the
    reference harvester's local-clock-with-a-Z bug)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datestamp needs a timezone-aware datetime, got {moment!r}")
    utc = moment.astimezone(UTC)
    if granularity == DAY_GRANULARITY:
        return utc.strftime("%Y-%m-%d")
    if granularity == SECOND_GRANULARITY:
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    raise ValueError(f"unknown OAI-PMH granularity {granularity!r}")


def parse_datestamp(value: str) -> datetime:
    """An OAI-PMH datestamp (day or second granularity) as an aware UTC datetime."""
    text = value.strip()
    for layout in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"not an OAI-PMH datestamp: {value!r}")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds to wait (delta-seconds or an HTTP date); None if unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):  # "+99999999999999999999" overflows
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ------------------------------------------------------------------------ illegal characters


class IllegalCharacterFilter:
    """Removes characters XML 1.0 forbids from a UTF-8 stream fed in arbitrary chunks.

    A multi-byte match (a character reference, U+FFFE/U+FFFF) may straddle two chunks, so the
    tail of each chunk that could begin one is held back until the next chunk arrives.
    """

    def __init__(self) -> None:
        self.removed = 0
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        window = max(0, len(data) - (ILLEGAL_XML_MAX - 1))
        cut = len(data)
        for start in ILLEGAL_XML_STARTS:
            found = data.find(start, window)
            if found != -1:
                cut = min(cut, found)
        self._held = data[cut:]
        return self._clean(data[:cut])

    def close(self) -> bytes:
        data, self._held = self._held, b""
        return self._clean(data)

    def _clean(self, data: bytes) -> bytes:
        cleaned, count = ILLEGAL_XML.subn(b"", data)
        self.removed += count
        return cleaned


# ---------------------------------------------------------------------------------- inflating

_GZIP = 16 + zlib.MAX_WBITS


class Inflater:
    """A response body as sent (`iter_raw`) decoded from its Content-Encoding (gzip, deflate or
    none) in pieces of at most INFLATE_PIECE bytes, refusing to make more than `limit` bytes: a
    small compressed body cannot fill the spool, nor memory at once (httpx's own decoders inflate
    each chunk whole). Raw bytes count against the limit too (endless empty gzip members).
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise UnknownCoding(f"unsupported Content-Encoding {quoted(content_encoding, 60)!r}")
        self.coding = codings[0] if codings else None
        self.limit = limit
        self.made = 0
        self.received = 0
        self._inflate: Any = None
        self._held = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.received += len(data)
        if self.received > self.limit:
            raise TooLarge
        if self.coding is None:
            yield self._counted(data)
            return
        if self._inflate is None:
            data = self._held + data
            if self.coding == "deflate" and len(data) < 2:
                self._held = data  # the first two bytes say zlib or raw deflate
                return
            self._held = b""
            self._inflate = zlib.decompressobj(self._wbits(data))
        try:
            yield from self._pieces(data)
        except zlib.error as exc:
            raise UnreadableBody(f"corrupt {self.coding} body: {exc}") from None

    def close(self) -> None:
        """The body ended: a compressed one must have ended where its stream says."""
        if self.coding is None or (self._inflate is None and not self._held):
            return
        if self._inflate is None or not self._inflate.eof:
            raise UnreadableBody(f"the {self.coding} body ends before its compressed stream")

    def _wbits(self, head: bytes) -> int:
        if self.coding != "deflate":
            return _GZIP
        # RFC 9110 deflate is a zlib stream; some servers send raw deflate (httpx accepts both)
        zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        z = self._inflate
        while True:
            piece = z.decompress(data, INFLATE_PIECE)
            if piece:
                yield self._counted(piece)
            if z.eof:
                rest = z.unused_data
                if self.coding != "deflate" and rest.startswith(b"\x1f\x8b"):
                    self._inflate = z = zlib.decompressobj(_GZIP)  # another gzip member
                    data = rest
                    continue
                return  # bytes after the stream's end are ignored, as httpx does
            data = z.unconsumed_tail
            if not data and len(piece) < INFLATE_PIECE:
                return

    def _counted(self, piece: bytes) -> bytes:
        self.made += len(piece)
        if self.made > self.limit:
            raise TooLarge
        return piece


# ------------------------------------------------------------------------------------ parsing


@dataclass
class Response:
    """What one OAI-PMH answer said, before it becomes a Page or an Identify."""

    response_date: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    token: Token | None = None
    identify: Identify | None = None
    removed_characters: int = 0
    broken: list[BrokenRecord] = field(default_factory=list)
    #: (setSpec, setName) of a ListSets answer
    sets: list[tuple[str, str]] = field(default_factory=list)


class PageProblem(Exception):
    """Raised inside the parser; the client turns it into a BadPage naming the request."""

    def __init__(self, reason: str, *, unsafe: bool = False, line: int | None = None) -> None:
        self.reason = reason
        self.unsafe = unsafe
        self.line = line
        super().__init__(reason)


def optional_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def text_of(element: etree._Element, name: str) -> str:
    return (element.findtext(tag(name)) or "").strip()


def record_from(element: etree._Element) -> Record:
    header = element.find(HEADER)
    if header is None:
        raise PageProblem("a <record> without a <header>", line=element.sourceline)
    identifier = text_of(header, "identifier")
    if not identifier:
        raise PageProblem("a record header without an identifier", line=header.sourceline)
    deleted = header.get("status") == "deleted"
    metadata: bytes | None = None
    if not deleted:
        container = element.find(METADATA)
        if container is not None:
            payload = next(iter(container.iterchildren(tag=etree.Element)), None)
            if payload is not None:
                metadata = etree.tostring(payload, encoding="UTF-8")
    return Record(
        identifier=identifier,
        datestamp=text_of(header, "datestamp"),
        deleted=deleted,
        sets=tuple(
            (spec.text or "").strip() for spec in header.iterfind(tag("setSpec")) if spec.text
        ),
        metadata=metadata,
    )


def token_from(element: etree._Element) -> Token | None:
    """A <resumptionToken>; None for the empty one that ends a list."""
    value = (element.text or "").strip()
    if not value:
        return None
    return Token(
        value=value,
        cursor=optional_int(element.get("cursor")),
        complete_list_size=optional_int(element.get("completeListSize")),
        expiration=element.get("expirationDate"),
    )


def identify_from(element: etree._Element) -> Identify:
    fields = {
        name: text_of(element, name)
        for name in (
            "repositoryName",
            "baseURL",
            "protocolVersion",
            "earliestDatestamp",
            "deletedRecord",
            "granularity",
        )
    }
    missing = [name for name, value in fields.items() if not value and name != "repositoryName"]
    if missing:
        raise PageProblem(f"Identify lacks {', '.join(missing)}", line=element.sourceline)
    return Identify(
        repository_name=fields["repositoryName"],
        base_url=fields["baseURL"],
        protocol_version=fields["protocolVersion"],
        earliest_datestamp=fields["earliestDatestamp"],
        deleted_record=fields["deletedRecord"],
        granularity=fields["granularity"],
        compression=tuple(
            (c.text or "").strip() for c in element.iterfind(tag("compression")) if c.text
        ),
    )


#: the elements a page is read for, and the list elements that hold some of them
PAGE_ELEMENTS = frozenset({RECORD, TOKEN, RESPONSE_DATE, ERROR, IDENTIFY, SET})
PAGE_LISTS = frozenset({LIST_RECORDS, GET_RECORD, LIST_SETS, LIST_IDENTIFIERS})


def _is_top(element: etree._Element) -> bool:
    """Whether `element` is a child of the page's root element."""
    parent = element.getparent()
    return parent is not None and parent.getparent() is None


def read_response(source: IO[bytes]) -> Response:
    """Parse one OAI-PMH answer incrementally, dropping each record's tree once it is read."""
    answer = Response()
    events = etree.iterparse(
        source,
        events=("end",),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
    )
    first = True
    for _, element in events:
        if first:
            first = False
            tree = element.getroottree()
            if tree.docinfo.doctype:
                raise PageProblem("the page declares a DOCTYPE; refused", unsafe=True, line=1)
            if tree.getroot().tag != ROOT:
                raise PageProblem(f"root element is {tree.getroot().tag}, not OAI-PMH", line=1)
        name = element.tag
        if name not in PAGE_ELEMENTS:
            continue
        parent = element.getparent()
        if parent is None:
            continue
        # an element of the OAI-PMH namespace counts only where the protocol puts it: one
        # inside a record's metadata (allowed below its root) is part of that metadata
        where = parent.tag
        if where in PAGE_LISTS:
            if not _is_top(parent):
                continue
            if name == RECORD and where in (LIST_RECORDS, GET_RECORD):
                answer.records.append(record_from(element))
                element.clear(keep_tail=False)
                while element.getprevious() is not None:
                    del parent[0]
            elif name == TOKEN and where in (LIST_RECORDS, LIST_SETS, LIST_IDENTIFIERS):
                answer.token = token_from(element)
            elif name == SET and where == LIST_SETS:
                answer.sets.append((text_of(element, "setSpec"), text_of(element, "setName")))
        elif where == ROOT and _is_top(element):
            if name == RESPONSE_DATE:
                answer.response_date = (element.text or "").strip()
            elif name == ERROR:
                answer.errors.append((element.get("code") or "", (element.text or "").strip()))
            elif name == IDENTIFY:
                answer.identify = identify_from(element)
    if first:
        raise PageProblem("empty page")
    return answer


def line_excerpt(source: IO[bytes], line: int | None) -> str:
    """The text of `line` (1-based) of a page, shortened, to quote in an error."""
    if not line:
        return ""
    source.seek(0)
    for number, text in enumerate(iter(lambda: source.readline(64 * 1024), b""), start=1):
        if number == line:
            return quoted(text)
    return ""


# ------------------------------------------------------------------------------------- client


def public_url(url: str) -> str:
    """`url` without user or password, for messages."""
    return str(httpx.URL(url).copy_with(username=None, password=None))


class OaiClient:
    """One OAI-PMH repository; stateless between calls, not shared between threads.

    `timeout` bounds each connect and read, `deadline` a whole request; `retries` counts every
    retry of one request (throttling, network errors, 5xx, unreadable pages); a wait is
    `backoff` doubling per attempt, or a longer Retry-After, capped at `max_wait`, and waits
    stop at `max_total_wait` in all. `addresses` says which hosts may be reached (a `transport`
    given by a test replaces the guarded one, and its checks).
    """

    def __init__(
        self,
        base_url: str,
        *,
        method: Method = "GET",
        timeout: float = 120.0,
        deadline: float = DEADLINE,
        max_bytes: int = MAX_BYTES,
        retries: int = 5,
        backoff: float = 3.0,
        max_wait: float = 300.0,
        max_total_wait: float = 900.0,
        bad_page_retries: int = 2,
        salvage: bool = False,
        addresses: AddressPolicy = PUBLIC_ONLY,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if method not in ("GET", "POST"):
            raise ValueError(f"OAI-PMH method must be GET or POST, not {method!r}")
        if backoff <= 0 or retries < 0:
            raise ValueError("backoff must be positive and retries not negative")
        self.base_url = base_url
        self.method: Method = method
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.max_total_wait = max_total_wait
        self.bad_page_retries = bad_page_retries
        self.salvage = salvage
        self.addresses = addresses
        self._url = public_url(base_url)
        self._sleep = sleep
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport or addresses.transport(tls_context()),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"Accept-Encoding": "gzip, deflate", "User-Agent": "shelfwork-harvester"},
        )

    def __repr__(self) -> str:
        return f"OaiClient({self._url!r}, method={self.method!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------ verbs

    def identify(self) -> Identify:
        arguments = {"verb": "Identify"}
        answer = self._call(arguments)
        self._raise_errors(answer, arguments)
        if answer.identify is None:
            raise BadPage(
                "no <Identify> element", method=self.method, url=self._url, arguments=arguments
            )
        return answer.identify

    def list_sets(self, *, limit: int = MAX_SETS) -> list[tuple[str, str]]:
        """(setSpec, setName) of every set the repository lists, following resumption tokens
        (at most `limit` sets, in at most MAX_SET_PAGES pages: empty pages with new tokens
        must not go on for ever); none when it has no set hierarchy."""
        arguments = {"verb": "ListSets"}
        found: list[tuple[str, str]] = []
        followed: set[str] = set()
        for _ in range(MAX_SET_PAGES):
            answer = self._call(arguments)
            if any(code == "noSetHierarchy" for code, _ in answer.errors):
                return []
            self._raise_errors(answer, arguments)
            found += [(spec, name) for spec, name in answer.sets if spec]
            token = answer.token
            if token is None or len(found) >= limit:
                return found[:limit]
            if token.value in followed:
                raise RepeatedToken(
                    token.value, method=self.method, url=self._url, arguments=arguments
                )
            followed.add(token.value)
            arguments = {"verb": "ListSets", "resumptionToken": token.value}
        raise RemoteRefused(
            SYSTEM,
            f"ListSets goes on past {MAX_SET_PAGES} pages ({len(found)} sets so far); given up",
            method=self.method,
            url=self._url,
        )

    def list_records(
        self,
        metadata_prefix: str,
        *,
        from_: str | None = None,
        until: str | None = None,
        set_: str | None = None,
    ) -> Page:
        """The first page of a ListRecords list (`from`/`until` inclusive, as datestamps)."""
        arguments = {"verb": "ListRecords", "metadataPrefix": metadata_prefix}
        for name, value in (("from", from_), ("until", until), ("set", set_)):
            if value is not None:
                arguments[name] = value
        return self._page(arguments)

    def next_page(self, token: Token) -> Page:
        return self._page({"verb": "ListRecords", "resumptionToken": token.value})

    def pages(
        self,
        metadata_prefix: str,
        *,
        from_: str | None = None,
        until: str | None = None,
        set_: str | None = None,
        resume: Token | None = None,
    ) -> Iterator[Page]:
        """Every page of a list, or of its rest from `resume` (a checkpointed token).

        A page whose token was already followed is still yielded (its records may be new),
        then RepeatedToken is raised instead of asking for the same page again.
        """
        followed: set[str] = set()
        if resume is not None:
            followed.add(resume.value)
            page = self.next_page(resume)
        else:
            page = self.list_records(metadata_prefix, from_=from_, until=until, set_=set_)
        while True:
            yield page
            if page.token is None:
                return
            if page.token.value in followed:
                raise RepeatedToken(
                    page.token.value, method=self.method, url=self._url, arguments=page.request
                )
            followed.add(page.token.value)
            page = self.next_page(page.token)

    # ---------------------------------------------------------------------------- plumbing

    def _page(self, arguments: dict[str, str]) -> Page:
        answer = self._call(arguments)
        if answer.errors and all(code == "noRecordsMatch" for code, _ in answer.errors):
            return Page([], None, answer.response_date, arguments, answer.removed_characters)
        self._raise_errors(answer, arguments)
        return Page(
            records=answer.records,
            token=answer.token,
            response_date=answer.response_date,
            request=arguments,
            removed_characters=answer.removed_characters,
            broken=answer.broken,
        )

    def _raise_errors(self, answer: Response, arguments: dict[str, str]) -> None:
        for code, message in answer.errors:
            if code == "noRecordsMatch":
                continue
            cls = OAI_ERRORS.get(code, OaiError)
            raise cls(code, message, method=self.method, url=self._url, arguments=arguments)

    def _call(self, arguments: dict[str, str]) -> Response:
        """One request with the retry rules: every attempt counts; waits are the backoff
        (doubling) or a longer Retry-After, capped each and in total (module docstring)."""
        attempt = bad_pages = 0
        waited = 0.0
        while True:
            attempt += 1
            failure: RemoteError
            asked: float | None = None
            try:
                return self._attempt(arguments)
            except Throttled as exc:
                failure, asked = exc, exc.retry_after
            except BadPage as exc:
                if (
                    not exc.transient
                    or bad_pages >= self.bad_page_retries
                    or attempt > self.retries
                ):
                    salvaged = self._salvaged(exc)
                    if salvaged is None:
                        raise
                    return salvaged
                bad_pages += 1
                failure = exc
            except RemoteUnavailable as exc:
                failure = exc
            wait = self.backoff * 2 ** (attempt - 1)
            if asked is not None:
                wait = max(wait, asked)
            wait = min(wait, self.max_wait)
            if attempt > self.retries or waited + wait > self.max_total_wait:
                log.warning(
                    "%s: giving up after %d attempts and %.0f s of waiting",
                    failure,
                    attempt,
                    waited,
                )
                raise failure
            waited += wait
            log.warning(
                "%s; attempt %d failed, next in %.1f s (%d retries allowed)",
                failure,
                attempt,
                wait,
                self.retries,
            )
            self._sleep(wait)

    def _salvaged(self, exc: BadPage) -> Response | None:
        """A complete page with some unreadable records, read record by record (when asked)."""
        if not self.salvage or exc.raw is None:
            return None
        answer = salvage_page(exc.raw)
        if answer is not None:
            log.warning(
                "%s: %s; salvaged %d records, %d refused",
                self._url,
                exc,
                len(answer.records),
                len(answer.broken),
            )
        return answer

    def _attempt(self, arguments: dict[str, str]) -> Response:
        with SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            removed = self._download(arguments, spool)
            spool.seek(0)
            try:
                answer = self._parse(arguments, spool)
            except BadPage as exc:
                if self.salvage and spool.tell() <= SALVAGE_LIMIT:
                    spool.seek(0)
                    exc.raw = spool.read(SALVAGE_LIMIT + 1)
                raise
        answer.removed_characters = removed
        if removed:
            log.debug(
                "%s [%s]: removed %d illegal XML characters",
                self._url,
                describe(arguments),
                removed,
            )
        return answer

    def _download(self, arguments: dict[str, str], spool: IO[bytes]) -> int:
        """Stream the answer into `spool` without the characters XML forbids; how many went."""
        what = f"[{describe(arguments)}]"
        request = {"params": arguments} if self.method == "GET" else {"data": arguments}
        cleaner = IllegalCharacterFilter()
        started = time.monotonic()
        try:
            with (
                request_deadline(self.deadline),
                self._client.stream(self.method, self.base_url, **request) as response,
            ):
                if response.status_code != 200:
                    raise self._status_error(response, what)
                inflater = Inflater(response.headers.get("Content-Encoding", ""), self.max_bytes)
                for raw in response.iter_raw():
                    for piece in inflater.feed(raw):
                        spool.write(cleaner.feed(piece))
                inflater.close()
                spool.write(cleaner.close())
        except TooLarge:
            raise PageTooLarge(
                f"the answer inflates past {self.max_bytes} bytes (the limit max_page_bytes); refused",
                method=self.method,
                url=self._url,
                arguments=arguments,
            ) from None
        except UnreadableBody as exc:
            cls = UnsupportedCoding if isinstance(exc, UnknownCoding) else BadPage
            raise cls(str(exc), method=self.method, url=self._url, arguments=arguments) from None
        except AddressRefused as exc:
            raise RemoteRefused(
                SYSTEM, f"{what} not sent: {exc}", method=self.method, url=self._url
            ) from None
        except (httpx.TooManyRedirects, httpx.UnsupportedProtocol) as exc:
            raise RemoteRefused(
                SYSTEM, f"{what}: {quoted(str(exc))}", method=self.method, url=self._url
            ) from exc
        except (httpx.InvalidURL, UnicodeError) as exc:  # a host name IDNA refuses
            raise RemoteRefused(
                SYSTEM,
                f"{what}: the URL or a redirect's Location cannot be used: {quoted(str(exc))}",
                method=self.method,
                url=self._url,
            ) from exc
        except httpx.TransportError as exc:
            if time.monotonic() - started >= self.deadline:
                problem = (
                    f"did not finish within its deadline, request_deadline = {self.deadline:g} s"
                )
            else:
                problem = f"got no answer: {type(exc).__name__}: {quoted(str(exc))}".rstrip(": ")
            raise RemoteUnavailable(
                SYSTEM, f"{what} {problem}", method=self.method, url=self._url
            ) from exc
        return cleaner.removed

    def _parse(self, arguments: dict[str, str], spool: IO[bytes]) -> Response:
        try:
            return read_response(spool)
        except PageProblem as exc:
            cls = UnsafePage if exc.unsafe else BadPage
            raise cls(
                exc.reason,
                method=self.method,
                url=self._url,
                arguments=arguments,
                line=exc.line,
                excerpt="" if exc.unsafe else line_excerpt(spool, exc.line),
            ) from None
        except etree.XMLSyntaxError as exc:
            line = exc.lineno or None
            raise BadPage(
                exc.msg or str(exc),
                method=self.method,
                url=self._url,
                arguments=arguments,
                line=line,
                excerpt=line_excerpt(spool, line),
            ) from exc

    def _status_error(self, response: httpx.Response, what: str) -> RemoteError:
        """The error for a non-200 answer, quoting the start of its body (short, one line)."""
        status = response.status_code
        body = bytearray()
        try:
            inflater = Inflater(response.headers.get("Content-Encoding", ""), INFLATE_PIECE)
            for raw in response.iter_raw():
                for piece in inflater.feed(raw):
                    body += piece[:ERROR_BODY_LIMIT]
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        except (TooLarge, UnreadableBody, httpx.HTTPError):
            pass
        text = quoted(bytes(body[:ERROR_BODY_LIMIT]))
        message = f"{what} answered HTTP {status}"
        if status in (429, 503):
            header = response.headers.get("Retry-After")
            if header:
                message += f" with Retry-After {quoted(header, 40)!r}"
            return Throttled(
                message,
                retry_after=retry_after_seconds(header),
                method=self.method,
                url=self._url,
                status=status,
                body=text,
            )
        cls = error_class(status)
        return cls(SYSTEM, message, method=self.method, url=self._url, status=status, body=text)


# ---------------------------------------------------------------------------------- salvage

#: one piece of markup, in a page that may not be well-formed: a comment, CDATA, a processing
#: instruction, a DOCTYPE (with its internal subset), another declaration, an end tag (group
#: "end"), or a start tag (groups "name", "attributes", "empty"). A comment, CDATA, PI or DOCTYPE
#: that never ends takes the rest of the page (as it would for a parser), so the scan stays
#: linear: otherwise each of a million unterminated `<!--` would search to the page's end.
#: Names stop at '<' for the same reason.
_MARKUP = re.compile(
    rb"""<!--(?:.*?-->|.*)
    | <!\[CDATA\[(?:.*?\]\]>|.*)
    | <\?(?:.*?\?>|.*)
    | (?P<doctype><!DOCTYPE(?:[^\[>]*\[.*?\]\s*>|[^\[>]*>|.*))
    | <![A-Za-z][^>]*>
    | </\s*(?P<end>[^\s<>]+)\s*>
    | <(?P<name>[^\s/>!?=<"']+)
      (?P<attributes>(?:\s+[^\s=/<>]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(?P<empty>/?)>""",
    re.S | re.X,
)
#: a namespace prefix as a start tag, an end tag or an attribute uses it
_PREFIX = re.compile(rb"[<\s/]([A-Za-z_][\w.-]*):")
_NS_DECLARATION = re.compile(rb"""xmlns(?::([^\s=]+))?\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_RESPONSE_DATE = re.compile(rb"<(?:[\w.-]+:)?responseDate>\s*([^<\s]+)\s*</")
_IDENTIFIER = re.compile(rb"<(?:[\w.-]+:)?identifier(?:\s[^>]*)?>\s*([^<]{1,500}?)\s*</")
_HEADER_START = re.compile(rb"<(?:[\w.-]+:)?header(?:\s[^<>]*)?>")
_HEADER_END = re.compile(rb"</(?:[\w.-]+:)?header\s*>")
_METADATA_START = re.compile(rb"<(?:[\w.-]+:)?metadata[\s/>]")
#: where lxml says a syntax error is (", line 1, column 215")
_POSITION = re.compile(r",? line \d+, column \d+$")
_MARKUP_DECLARATION = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.I)
#: an unreadable page is salvaged only when it is whole: it ends where the protocol says
_LIST_END = re.compile(rb"</(?:[\w.-]+:)?ListRecords\s*>\s*</(?:[\w.-]+:)?OAI-PMH\s*>\s*$")


@dataclass
class _Element:
    """An element open while a page is scanned: its qualified name, namespace and declarations."""

    qname: bytes
    namespace: str | None
    declarations: dict[bytes, bytes]


@dataclass
class _Item:
    """A child of <ListRecords> as found in the page: where it lies and what it is."""

    begin: int
    end: int
    kind: str  # "record", "token" or the local name of anything else
    #: an unterminated record (the next record began, or the list ended, inside it)
    cut: bool = False


class _OpenElements:
    """The elements open while a page is scanned, with what each declares. Namespaces and end
    tags are looked up in constant time: a page nested a million deep (or full of end tags
    nothing opened) must not make every tag walk the whole stack."""

    def __init__(self) -> None:
        self.stack: list[_Element] = []
        self._uris: dict[bytes, list[bytes]] = {}  # prefix -> URIs declared, innermost last
        self._depths: dict[bytes, list[int]] = {}  # qname -> depths open, innermost last

    def __len__(self) -> int:
        return len(self.stack)

    def push(self, element: _Element) -> None:
        self._depths.setdefault(element.qname, []).append(len(self.stack))
        for prefix, uri in element.declarations.items():
            self._uris.setdefault(prefix, []).append(uri)
        self.stack.append(element)

    def cut(self, depth: int) -> None:
        """Close every element from `depth` down."""
        while len(self.stack) > depth:
            element = self.stack.pop()
            self._depths[element.qname].pop()
            for prefix in element.declarations:
                self._uris[prefix].pop()

    def namespace(self, qname: bytes, own: dict[bytes, bytes]) -> str | None:
        """The namespace of a start tag named `qname` that declares `own`."""
        prefix = qname.split(b":", 1)[0] if b":" in qname else b""
        declared = self._uris.get(prefix)
        uri = own.get(prefix, declared[-1] if declared else None)
        return uri.decode("utf-8", "replace") or None if uri is not None else None

    def innermost(self, qname: bytes) -> int | None:
        """The depth of the innermost open element named `qname`, if any."""
        depths = self._depths.get(qname)
        return depths[-1] if depths else None

    def declared_above(self, depth: int) -> dict[bytes, bytes]:
        """The declarations in scope inside the element at `depth`."""
        found: dict[bytes, bytes] = {}
        for element in self.stack[: depth + 1]:
            found.update(element.declarations)
        return found


def _local(qname: bytes) -> str:
    return qname.rsplit(b":", 1)[-1].decode("utf-8", "replace")


def _list_items(raw: bytes) -> tuple[list[_Item], dict[bytes, bytes]] | None:
    """The children of a ListRecords page, found by scanning its markup with a stack that
    resynchronises on end tags (an end tag closes up to the nearest open element of its name),
    so one broken record cannot swallow its neighbours. A record opened in any legal way
    (`<record>`, `<record xmlns=...>`, `<oai:record ...>`) is found by its namespace, not its
    spelling; a record element inside a record's metadata (MARCXML's) is in another namespace.
    An OAI-PMH record element inside a record that is still open is taken as the next record
    (the one before never closed): a record cut short looks exactly like that. Children that
    are not records are grouped up to each header, so a record with a broken start tag is one
    item, not one per element. Also the namespace declarations in scope inside <ListRecords>.
    None when the page is not a ListRecords page or declares a DOCTYPE before its root. Time
    and memory are linear in the page's size, whatever its markup."""
    opened = _OpenElements()
    items: list[_Item] = []
    list_depth = -1
    current: _Item | None = None
    for match in _MARKUP.finditer(raw):
        if match.group("doctype") is not None and not len(opened):
            return None  # entities declared for the whole page: nothing in it is safe to read
        name, end = match.group("name"), match.group("end")
        if name is not None:
            attributes = match.group("attributes") or b""
            own = {
                (m.group(1) or b""): (m.group(2) if m.group(2) is not None else m.group(3))
                for m in _NS_DECLARATION.finditer(attributes)
            }
            namespace = opened.namespace(name, own)
            local = _local(name)
            depth = len(opened)
            if depth == 0 and (local != "OAI-PMH" or namespace != OAI_NS):
                return None
            if list_depth < 0:
                if depth == 1 and local == "ListRecords" and namespace == OAI_NS:
                    list_depth = 1
            elif depth == list_depth + 1 or (
                current is not None
                and current.kind == "record"
                and local == "record"
                and namespace == OAI_NS
            ):
                kind = (
                    f"{{{namespace}}}{local}"
                    if namespace != OAI_NS
                    else {"record": "record", "resumptionToken": "token"}.get(local, local)
                )
                if current is not None:  # the record before was never closed
                    current.end, current.cut = match.start(), True
                    items.append(current)
                    current = None
                    opened.cut(list_depth + 1)
                adjacent = items and not raw[items[-1].end : match.start()].strip()
                if (
                    adjacent
                    and kind not in ("record", "token", "header")
                    and items[-1].kind not in ("record", "token")
                ):
                    current = items.pop()  # the rest of a record whose start tag is broken
                else:
                    current = _Item(match.start(), match.end(), kind)
            if match.group("empty"):
                if current is not None and len(opened) == list_depth + 1:
                    current.end = match.end()
                    items.append(current)
                    current = None
                continue
            opened.push(_Element(name, namespace, own))
        elif end is not None:
            at = opened.innermost(end)
            if at is None:
                continue  # an end tag nothing opened: part of the damage, ignored
            if list_depth >= 0 and at <= list_depth:  # the list (or the page) ends
                if current is not None:
                    current.end, current.cut = match.start(), True
                    items.append(current)
                return items, opened.declared_above(list_depth)
            opened.cut(at)
            if current is not None and len(opened) == list_depth + 1:
                current.end = match.end()
                items.append(current)
                current = None
    return None


def _fragment(declarations: dict[bytes, bytes], chunk: bytes) -> etree._Element:
    """Parse one item of a page alone, under the namespace declarations in scope that it uses
    (a page declaring thousands must not make each record carry them all), safely; it must be
    exactly one element."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    used = {m.group(1) for m in _PREFIX.finditer(chunk)} | {b""}
    attributes = b"".join(
        (b" xmlns:" + prefix if prefix else b" xmlns")
        + b'="'
        + declarations[prefix].replace(b'"', b"&quot;")
        + b'"'
        for prefix in sorted(used)
        if prefix in declarations
    )
    wrap = etree.fromstring(b"<wrap" + attributes + b">" + chunk + b"</wrap>", parser)
    if len(wrap) != 1 or (wrap.text or "").strip() or (wrap[0].tail or "").strip():
        raise etree.XMLSyntaxError("not exactly one element", None, 0, 0)  # type: ignore[call-arg]
    return wrap[0]


def salvage_page(raw: bytes) -> Response | None:
    """Read a ListRecords page that failed to parse one record at a time.

    Only a page that is whole (it ends with </ListRecords></OAI-PMH>) is salvaged, so a
    truncated page is never taken for the last one. Each child of <ListRecords> is cut out where
    it begins and ends (`_list_items`), checked (UTF-8, no markup declarations) and parsed alone;
    every one that is not a readable record becomes a `BrokenRecord` under its own identifier,
    so each record of the page is either read or refused, and counted once. None when the page
    is not a complete ListRecords page.
    """
    if not _LIST_END.search(raw[-4096:]):
        return None
    found = _list_items(raw)
    if found is None:
        return None
    items, declarations = found
    answer = Response()
    date = _RESPONSE_DATE.search(raw, 0, items[0].begin if items else len(raw))
    answer.response_date = date.group(1).decode("ascii", "replace") if date else ""
    for item in items:
        chunk = raw[item.begin : item.end]
        if item.kind == "token":
            try:
                answer.token = token_from(_fragment(declarations, chunk))
            except etree.XMLSyntaxError:
                return None  # where the list goes on is unknown: not a page to build on
            continue
        salvaged = _salvage_record(declarations, item, chunk)
        if isinstance(salvaged, Record):
            answer.records.append(salvaged)
        else:
            answer.broken.append(salvaged)
    return answer


def _header_identifier(chunk: bytes) -> str | None:
    """The identifier in a cut-out record's header; None without a header (an identifier
    elsewhere, in its metadata or provenance, may be another record's)."""
    metadata = _METADATA_START.search(chunk)
    header = _HEADER_START.search(chunk, 0, metadata.start() if metadata else len(chunk))
    if header is None:
        return None
    closed = _HEADER_END.search(chunk, header.end())
    stop = closed.start() if closed else metadata.start() if metadata else len(chunk)
    found = _IDENTIFIER.search(chunk, header.end(), stop)
    return found.group(1).decode("utf-8", "replace").strip() if found else None


def _salvage_record(
    declarations: dict[bytes, bytes], item: _Item, chunk: bytes
) -> Record | BrokenRecord:
    identifier = _header_identifier(chunk)
    excerpt = quoted(chunk[:400])

    def refused(reason: str) -> BrokenRecord:
        return BrokenRecord(identifier, reason, excerpt)

    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        return refused(f"not valid UTF-8 (byte 0x{chunk[exc.start]:02x})")
    if _MARKUP_DECLARATION.search(chunk):
        return refused("holds a DOCTYPE or ENTITY declaration; refused")
    if item.kind == "header":
        return refused("the record's start tag is unreadable (its header stands alone)")
    if item.kind != "record":
        return refused(f"not a record element: <{quoted(item.kind, 60)}>")
    if item.cut:
        return refused("the record is never closed (the next one begins inside it)")
    try:
        element = _fragment(declarations, chunk)
    except etree.XMLSyntaxError as exc:
        # lxml's line and column count in the cut-out record, not in the page: left out
        problem = _POSITION.sub("", exc.msg or str(exc))
        return refused(f"malformed XML: {quoted(problem, 120)}")
    try:
        return record_from(element)
    except PageProblem as exc:
        return refused(exc.reason)
