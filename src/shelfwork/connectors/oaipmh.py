"""OAI-PMH 2.0 harvesting client: Identify, then ListRecords page by page.

It answers the faults the reference harvester's maintainers list (la-referencia-oaipmh-dcb.md
1.2): 503 + Retry-After is honoured but bounded (per wait and in total), network errors and
5xx are retried with exponential backoff, a page that does not parse is retried a couple of
times (a truncated page is often transient), a repository that hands back a token it already
gave is caught instead of looping forever, and every OAI error code becomes an exception the
harvest pipeline can act on (`BadResumptionToken` names the token so it can restart from `from`
with an overlap). `noRecordsMatch` is an empty page, not an error.

Each page is streamed to a spooled temporary file with the characters XML 1.0 forbids removed
on the way (counted on the page), then parsed with lxml's iterparse, clearing records as they
are read, so memory stays flat whatever the page size. Pages with a DOCTYPE are refused.

The client keeps no harvest state: the caller checkpoints `Page.token` after storing a page and
passes it back as `pages(..., resume=token)` after a crash.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from tempfile import SpooledTemporaryFile
from typing import IO, Literal, Self

import httpx
from lxml import etree

from . import (
    EXCERPT,
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
        self.server_message = server_message
        self.arguments = dict(arguments)
        super().__init__(
            SYSTEM,
            f"{code} for [{describe(arguments)}]: {server_message or '(no message)'}",
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
        self.excerpt = excerpt
        #: the page's bytes, kept for salvage (clients with `salvage=True` only)
        self.raw: bytes | None = None
        where = f" at line {line}" if line is not None else ""
        super().__init__(
            SYSTEM,
            f"{self.label} for [{describe(arguments)}]{where}: {reason}",
            method=method,
            url=url,
            body=excerpt,
        )


class UnsafePage(BadPage):
    """A page with a DOCTYPE (possible entity expansion or XXE): refused, never retried."""

    transient = False
    label = "refused page"


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
    except (TypeError, ValueError):
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
        if name == RECORD:
            answer.records.append(record_from(element))
            element.clear(keep_tail=False)
            parent = element.getparent()
            while parent is not None and element.getprevious() is not None:
                del parent[0]
        elif name == TOKEN:
            answer.token = token_from(element)
        elif name == RESPONSE_DATE:
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
            return text.decode("utf-8", "replace").strip()[:EXCERPT]
    return ""


# ------------------------------------------------------------------------------------- client


def public_url(url: str) -> str:
    """`url` without user or password, for messages."""
    return str(httpx.URL(url).copy_with(username=None, password=None))


class OaiClient:
    """One OAI-PMH repository; stateless between calls, not shared between threads."""

    def __init__(
        self,
        base_url: str,
        *,
        method: Method = "GET",
        timeout: float = 120.0,
        max_retry_after: float = 300.0,
        retry_after_cap_total: float = 1800.0,
        retries: int = 5,
        backoff: float = 3.0,
        bad_page_retries: int = 2,
        salvage: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if method not in ("GET", "POST"):
            raise ValueError(f"OAI-PMH method must be GET or POST, not {method!r}")
        self.base_url = base_url
        self.method: Method = method
        self.max_retry_after = max_retry_after
        self.retry_after_cap_total = retry_after_cap_total
        self.retries = retries
        self.backoff = backoff
        self.bad_page_retries = bad_page_retries
        self.salvage = salvage
        self._url = public_url(base_url)
        self._sleep = sleep
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            verify=tls_context(),
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
        """One request with the retry rules: Retry-After waits first (bounded per wait and in
        total), then exponential backoff for 5xx, network errors and unreadable pages."""
        failures = bad_pages = 0
        waited = 0.0
        while True:
            failure: RemoteError
            try:
                return self._attempt(arguments)
            except Throttled as exc:
                failure = exc
                if exc.retry_after is not None:
                    wait = min(exc.retry_after, self.max_retry_after)
                    if waited + wait <= self.retry_after_cap_total:
                        waited += wait
                        log.info(
                            "%s asks to retry after %.0f s; waiting %.0f s",
                            self._url,
                            exc.retry_after,
                            wait,
                        )
                        self._sleep(wait)
                        continue
            except BadPage as exc:
                if not exc.transient or bad_pages >= self.bad_page_retries:
                    salvaged = self._salvaged(exc)
                    if salvaged is None:
                        raise
                    return salvaged
                bad_pages += 1
                failure = exc
            except RemoteUnavailable as exc:
                failure = exc
            if failures >= self.retries:
                raise failure
            delay = self.backoff * 2**failures
            failures += 1
            log.warning("%s; retry %d/%d in %.0f s", failure, failures, self.retries, delay)
            self._sleep(delay)

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
        try:
            with self._client.stream(self.method, self.base_url, **request) as response:
                if response.status_code != 200:
                    raise self._status_error(response, what)
                for chunk in response.iter_bytes():
                    spool.write(cleaner.feed(chunk))
                spool.write(cleaner.close())
        except httpx.DecodingError as exc:
            raise BadPage(
                f"undecodable body: {exc}", method=self.method, url=self._url, arguments=arguments
            ) from exc
        except httpx.TransportError as exc:
            raise RemoteUnavailable(
                SYSTEM,
                f"{what} got no answer: {type(exc).__name__}: {exc}".rstrip(": "),
                method=self.method,
                url=self._url,
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
        """The error for a non-200 answer, quoting the start of its body."""
        status = response.status_code
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        text = bytes(body[:ERROR_BODY_LIMIT]).decode("utf-8", "replace")
        message = f"{what} answered HTTP {status}"
        if status in (429, 503):
            header = response.headers.get("Retry-After")
            if header:
                message += f" with Retry-After {header!r}"
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

_RECORD_START = re.compile(rb"<record>\s*<header[\s>/]")
_LIST_END = re.compile(rb"</ListRecords>\s*</OAI-PMH>\s*$")
_ROOT_TAG = re.compile(rb"<OAI-PMH\b[^>]*>")
_XMLNS = re.compile(rb"""\sxmlns(?::[\w.-]+)?\s*=\s*("[^"]*"|'[^']*')""")
_RESPONSE_DATE = re.compile(rb"<responseDate>\s*([^<\s]+)\s*</responseDate>")
_TOKEN_ELEMENT = re.compile(rb"<resumptionToken\b[^>]*?(?:/>|>.*?</resumptionToken>)", re.S)
_IDENTIFIER = re.compile(rb"<identifier>\s*([^<]{1,500}?)\s*</identifier>")
_MARKUP_DECLARATION = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.I)


def _fragment(declarations: bytes, chunk: bytes) -> etree._Element:
    """Parse one piece of a page under the root's namespace declarations, safely."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    wrapped = b"<wrap" + declarations + b">" + chunk + b"</wrap>"
    return etree.fromstring(wrapped, parser)[0]


def salvage_page(raw: bytes) -> Response | None:
    """Read a ListRecords page that failed to parse one record at a time.

    Only a page that is whole (it ends with </ListRecords></OAI-PMH>) is salvaged, so a
    truncated page is never taken for the last one. Each record is cut at the next record's
    start, checked (UTF-8, no markup declarations) and parsed alone; the ones that fail become
    `BrokenRecord`s. None when the page is not a complete ListRecords page.
    """
    if not _LIST_END.search(raw[-4096:]):
        return None
    root = _ROOT_TAG.search(raw, 0, 8192)
    starts = [m.start() for m in _RECORD_START.finditer(raw)]
    if root is None:
        return None
    declarations = b"".join(m.group(0) for m in _XMLNS.finditer(root.group(0)))
    head = raw[: starts[0]] if starts else raw
    answer = Response()
    date = _RESPONSE_DATE.search(head)
    answer.response_date = date.group(1).decode("ascii", "replace") if date else ""
    list_end = raw.rfind(b"</ListRecords>")
    bounds = [*starts, list_end]
    tail = raw[starts[-1] : list_end] if starts else raw[:list_end]
    for begin, end in itertools.pairwise(bounds):
        chunk = raw[begin:end].rstrip()
        token_at = _TOKEN_ELEMENT.search(chunk) if end == list_end else None
        if token_at is not None:
            chunk = chunk[: token_at.start()].rstrip()
        answer_record = _salvage_record(declarations, chunk)
        if isinstance(answer_record, Record):
            answer.records.append(answer_record)
        else:
            answer.broken.append(answer_record)
    token = _TOKEN_ELEMENT.search(tail)
    if token is not None:
        try:
            element = _fragment(declarations, token.group(0))
        except etree.XMLSyntaxError:
            return None
        answer.token = token_from(element)
    return answer


def _salvage_record(declarations: bytes, chunk: bytes) -> Record | BrokenRecord:
    found = _IDENTIFIER.search(chunk)
    identifier = found.group(1).decode("utf-8", "replace") if found else None
    excerpt = chunk[:200].decode("utf-8", "replace")
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BrokenRecord(identifier, f"not valid UTF-8 (byte 0x{chunk[exc.start]:02x})", excerpt)
    if _MARKUP_DECLARATION.search(chunk):
        return BrokenRecord(identifier, "holds a DOCTYPE or ENTITY declaration; refused", excerpt)
    try:
        element = _fragment(declarations, chunk)
    except etree.XMLSyntaxError as exc:
        return BrokenRecord(identifier, f"malformed XML: {exc.msg}", excerpt)
    if element.tag != RECORD:
        return BrokenRecord(identifier, f"not a record element: {element.tag}", excerpt)
    try:
        return record_from(element)
    except PageProblem as exc:
        return BrokenRecord(identifier, exc.reason, excerpt)
