"""An independent OAI-PMH provider on loopback, with faults on demand, for harvester tests.

The provider is the `oaipmh` package's (4.0.0) BatchingServer, which is not WSGI: it turns a dict
of request arguments into the response bytes (`handleRequest`). `provider_app` parses GET query
strings and POST form bodies into that dict. Around it, `faulty` is a WSGI layer that misbehaves
the way real repositories do, armed by counters on a `Faults` object the test holds ("the next
N requests..."): HTTP errors with Retry-After, slow answers, truncated pages, illegal XML
characters, a DOCTYPE with an external entity, refused or repeated resumption tokens, and
gzip/deflate when the client asks. Dropped connections happen one level lower, in the request
handler, because WSGI cannot close a socket without answering.

Every exchange is logged on `Faults.log` so a test can check what went over the wire.

The provider listens on 127.0.0.1, which shelfwork refuses to reach by default (outbound.py): a
test that harvests it says so explicitly, with `LOOPBACK` (for an OaiClient) or `LOOPBACK_HOSTS`
(the `allow_private_hosts` of `[systems.oai]`).
"""

from __future__ import annotations

import gzip
import io
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from oaipmh import common, error
from oaipmh.metadata import MetadataRegistry
from oaipmh.server import BatchingServer, oai_dc_writer

from shelfwork.outbound import AddressPolicy

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: the loopback address the test servers listen on, allowed explicitly ([systems.oai]
#: allow_private_hosts); everything else private stays refused
LOOPBACK_HOSTS = ["127.0.0.1"]
#: the same for an OaiClient made by hand
LOOPBACK = AddressPolicy.allowing(LOOPBACK_HOSTS)

OAI_DC = (
    "oai_dc",
    "http://www.openarchives.org/OAI/2.0/oai_dc.xsd",
    "http://www.openarchives.org/OAI/2.0/oai_dc/",
)
TOKEN = re.compile(rb"<resumptionToken>([^<]*)</resumptionToken>")
RESPONSE_DATE = re.compile(rb"<responseDate>[^<]*</responseDate>")
OAI_NS = b"http://www.openarchives.org/OAI/2.0/"
TITLE = b"<dc:title>"
#: what `Faults.control_characters` puts in every title: one C0 control, one illegal character
#: reference and U+FFFF, three characters XML 1.0 forbids
ILLEGAL = b"\x0b&#x1F;\xef\xbf\xbf"
ILLEGAL_COUNT = 3
XXE_DOCTYPE = b'<!DOCTYPE OAI-PMH [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
#: what `poisoned` puts in a page's first three records: malformed XML, an external entity
#: declared inside the record, and a byte that is not UTF-8 (Latin-1 e-acute)
POISONS = (
    b"<unclosed>",
    b'<!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>&xxe;',
    b"caf\xe9",
)


START = datetime(2024, 3, 1, 6, 0, 0)
SETS = ("hist", "hist:modern", "hist:ancient", "sci", "sci:physics", "art")


@dataclass(frozen=True)
class Item:
    """One record of the repository; `datestamp` is naive UTC, as the oaipmh package wants."""

    identifier: str
    datestamp: datetime
    sets: tuple[str, ...] = ()
    deleted: bool = False
    fields: dict[str, list[str]] = field(default_factory=dict)


def in_set(item: Item, spec: str) -> bool:
    """Set membership with hierarchy: a record in a:b is also in a."""
    return any(s == spec or s.startswith(spec + ":") for s in item.sets)


def generate_items(count: int, seed: int = 5) -> list[Item]:
    """Records spread over about three weeks, about one in eight deleted, most in one or two
    sets (hierarchical, overlapping), a few in none."""
    rng = random.Random(seed)
    items = []
    for n in range(count):
        stamp = START + timedelta(minutes=rng.randrange(0, 21 * 24 * 60), seconds=n % 60)
        sets = tuple(sorted(set(rng.sample(SETS, rng.choice((0, 1, 1, 2))))))
        items.append(
            Item(
                identifier=f"oai:loopback:{n:05d}",
                datestamp=stamp,
                sets=sets,
                deleted=rng.random() < 0.125,
                fields={
                    "title": [f"Título {n} — {rng.choice(['αβγ', 'ёж', 'x<y&z', 'plain'])}"],
                    "creator": [f"Author {rng.randrange(40)}"],
                    "date": [str(1900 + rng.randrange(120))],
                },
            )
        )
    return items


class Repository:
    """The data side of the provider, implementing the package's IBatchingOAI interface."""

    def __init__(
        self,
        items: list[Item],
        *,
        name: str = "Loopback test repository",
        granularity: str = "YYYY-MM-DDThh:mm:ssZ",
        deleted_record: str = "persistent",
        set_names: dict[str, str] | None = None,
    ) -> None:
        self.items = sorted(items, key=lambda i: (i.datestamp, i.identifier))
        self.name = name
        self.granularity = granularity
        self.deleted_record = deleted_record
        self.base_url = "http://127.0.0.1/"  # set once the server has its port
        specs = sorted({s for item in items for s in item.sets})
        self.set_names = set_names or {spec: f"Set {spec}" for spec in specs}

    def identify(self) -> common.Identify:
        earliest = self.items[0].datestamp if self.items else datetime(2000, 1, 1)
        return common.Identify(
            repositoryName=self.name,
            baseURL=self.base_url,
            protocolVersion="2.0",
            adminEmails=["oai@example.org"],
            earliestDatestamp=earliest,
            deletedRecord=self.deleted_record,
            granularity=self.granularity,
            compression=["gzip", "deflate"],
        )

    def listMetadataFormats(self, identifier: str | None = None) -> list[tuple[str, str, str]]:
        return [OAI_DC]

    def listSets(self, cursor: int = 0, batch_size: int = 10) -> list[tuple[str, str, None]]:
        if not self.set_names:
            raise error.NoSetHierarchyError("This repository does not support sets.")
        specs = sorted(self.set_names)[cursor : cursor + batch_size]
        return [(spec, self.set_names[spec], None) for spec in specs]

    def listRecords(
        self,
        metadataPrefix: str,
        set: str | None = None,
        from_: datetime | None = None,
        until: datetime | None = None,
        cursor: int = 0,
        batch_size: int = 10,
    ) -> list[tuple[common.Header, common.Metadata | None, None]]:
        items = self.matching(metadataPrefix, set, from_, until)
        return [self.as_record(item) for item in items[cursor : cursor + batch_size]]

    def listIdentifiers(
        self,
        metadataPrefix: str,
        set: str | None = None,
        from_: datetime | None = None,
        until: datetime | None = None,
        cursor: int = 0,
        batch_size: int = 10,
    ) -> list[common.Header]:
        items = self.matching(metadataPrefix, set, from_, until)
        return [self.as_record(item)[0] for item in items[cursor : cursor + batch_size]]

    def getRecord(
        self,
        metadataPrefix: str,
        identifier: str,
    ) -> tuple[common.Header, common.Metadata | None, None]:
        self.check_prefix(metadataPrefix)
        for item in self.items:
            if item.identifier == identifier:
                return self.as_record(item)
        raise error.IdDoesNotExistError(f"No record {identifier}")

    def check_prefix(self, prefix: str) -> None:
        if prefix != OAI_DC[0]:
            raise error.CannotDisseminateFormatError(f"Format {prefix} is not supported.")

    def matching(
        self, prefix: str, spec: str | None, from_: datetime | None, until: datetime | None
    ) -> list[Item]:
        self.check_prefix(prefix)
        if spec is not None and not self.set_names:
            raise error.NoSetHierarchyError("This repository does not support sets.")
        return [
            item
            for item in self.items
            if (spec is None or in_set(item, spec))
            and (from_ is None or item.datestamp >= from_)
            and (until is None or item.datestamp <= until)
        ]

    @staticmethod
    def as_record(item: Item) -> tuple[common.Header, common.Metadata | None, None]:
        header = common.Header(None, item.identifier, item.datestamp, list(item.sets), item.deleted)
        metadata = None if item.deleted else common.Metadata(None, item.fields)
        return header, metadata, None


def batching_server(repository: Repository, batch_size: int) -> BatchingServer:
    registry = MetadataRegistry()
    registry.registerWriter(OAI_DC[0], oai_dc_writer)
    return BatchingServer(repository, metadata_registry=registry, resumption_batch_size=batch_size)


def request_arguments(environ: dict[str, Any]) -> dict[str, str]:
    """The OAI-PMH arguments of a GET query string or a POST form body (first value each);
    `oai.arguments` when the fault layer has already read (and maybe altered) them."""
    if "oai.arguments" in environ:
        return dict(environ["oai.arguments"])
    if environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        query = environ["wsgi.input"].read(length).decode("utf-8")
    else:
        query = environ.get("QUERY_STRING", "")
    return {name: values[0] for name, values in parse_qs(query, keep_blank_values=True).items()}


def provider_app(server: BatchingServer) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = server.handleRequest(request_arguments(environ))
        start_response(
            "200 OK",
            [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


@dataclass
class Exchange:
    method: str
    arguments: dict[str, str]
    status: int | None  # None: the connection was dropped without an answer
    accept_encoding: str = ""
    content_encoding: str = ""


@dataclass
class Faults:
    """Counters a test arms; each counts down as it fires."""

    failing: int = 0  # the next N requests get `fail_status`
    fail_status: int = 503
    retry_after: str | None = "1"
    dropped: int = 0  # the next N connections are closed without an answer
    slow: int = 0  # the next N requests wait `slow_seconds` before answering
    slow_seconds: float = 1.0
    truncated: int = 0  # the next N ListRecords pages are cut in half
    control_characters: int = 0  # the next N ListRecords pages get ILLEGAL in every title
    doctype: int = 0  # the next N ListRecords pages declare an external entity and use it
    poisoned: int = 0  # the next N ListRecords pages carry POISONS in their first three titles
    refuse_tokens: bool = False  # every resumption token is unknown to the server
    refused_tokens: int = 0  # the next N token requests are answered badResumptionToken
    repeated_tokens: int = 0  # the next N token requests answer with the token they were sent
    namespaced: int = 0  # the next N ListRecords pages open each record <record xmlns="...">
    #: responseDates the next ListRecords pages carry, one each, in order (then the server's own)
    response_dates: list[str] = field(default_factory=list)
    encodings: tuple[str, ...] = ("gzip", "deflate")  # in the order the provider prefers them
    log: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str) -> bool:
        """Whether counter `name` fires for this request (and count it down)."""
        with self.lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False

    def record(self, exchange: Exchange) -> None:
        with self.lock:
            self.log.append(exchange)

    def requests(self, verb: str | None = None) -> list[Exchange]:
        with self.lock:
            return [e for e in self.log if verb is None or e.arguments.get("verb") == verb]


def faulty(app: WSGIApp, faults: Faults) -> WSGIApp:
    """`app` behind the faults armed on `faults`."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        arguments = request_arguments(environ)
        accept = environ.get("HTTP_ACCEPT_ENCODING", "")
        exchange = Exchange(environ["REQUEST_METHOD"], arguments, None, accept)
        faults.record(exchange)
        if faults.take("slow"):
            time.sleep(faults.slow_seconds)
        if faults.take("failing"):
            exchange.status = faults.fail_status
            headers = [("Content-Type", "text/plain")]
            if faults.retry_after is not None:
                headers.append(("Retry-After", faults.retry_after))
            phrase = HTTPStatus(faults.fail_status).phrase
            start_response(f"{faults.fail_status} {phrase}", headers)
            return [f"{phrase}: the repository is busy, come back later".encode()]

        token = arguments.get("resumptionToken")
        forwarded = dict(arguments)
        # token faults are the harvest's (ListRecords), not the ListSets read before it
        listing = arguments.get("verb") == "ListRecords"
        if (
            token is not None
            and listing
            and (faults.refuse_tokens or faults.take("refused_tokens"))
        ):
            forwarded["resumptionToken"] = "expired"  # the server itself answers the error
        captured: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        body = b"".join(app({**environ, "oai.arguments": forwarded}, keep))

        if arguments.get("verb") == "ListRecords":
            body = damaged(body, token, faults)
        headers = [(n, v) for n, v in captured["headers"] if n.lower() != "content-length"]
        for encoding in faults.encodings:
            if encoding in accept:
                body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
                headers.append(("Content-Encoding", encoding))
                exchange.content_encoding = encoding
                break
        headers.append(("Content-Length", str(len(body))))
        exchange.status = int(captured["status"].split()[0])
        start_response(captured["status"], headers)
        return [body]

    return wrapped


def damaged(body: bytes, token: str | None, faults: Faults) -> bytes:
    """A ListRecords page with the body faults that are armed applied to it."""
    with faults.lock:
        date = faults.response_dates.pop(0) if faults.response_dates else None
    if date is not None:
        body = RESPONSE_DATE.sub(b"<responseDate>" + date.encode() + b"</responseDate>", body, 1)
    if faults.take("namespaced"):  # legal: the record declares the namespace it is already in
        body = body.replace(b"<record>", b'<record xmlns="' + OAI_NS + b'">')
    if token is not None and faults.take("repeated_tokens"):
        body = TOKEN.sub(
            lambda _: b"<resumptionToken>" + token.encode() + b"</resumptionToken>", body
        )
    if faults.take("poisoned"):
        spots = [m.end() for m in re.finditer(re.escape(TITLE), body)][: len(POISONS)]
        for at, poison in reversed(list(zip(spots, POISONS, strict=False))):
            body = body[:at] + poison + body[at:]
    if faults.take("control_characters"):
        body = body.replace(TITLE, TITLE + ILLEGAL)
    if faults.take("doctype"):
        declaration, _, rest = body.partition(b"\n")
        body = declaration + b"\n" + XXE_DOCTYPE + rest.replace(TITLE, TITLE + b"&xxe;", 1)
    if faults.take("truncated"):
        body = body[: len(body) // 2]
    return body


class QuietHandler(WSGIRequestHandler):
    """No access log; drops the connection unanswered when `Faults.dropped` says so."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # a client that gave up (timeout) breaks the pipe: not news

    def handle(self) -> None:
        faults: Faults = self.server.faults  # type: ignore[attr-defined]
        if faults.take("dropped"):
            self.rfile.readline(65537)
            faults.record(Exchange("?", {}, None))
            self.close_connection = True
            return
        super().handle()


class ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@dataclass
class Provider:
    url: str
    repository: Repository
    faults: Faults
    _httpd: ThreadedWSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_provider(repository: Repository, *, batch_size: int = 20) -> Provider:
    """Serve `repository` through BatchingServer and the fault layer on a free loopback port."""
    faults = Faults()
    app = faulty(provider_app(batching_server(repository, batch_size)), faults)
    httpd = make_server(
        "127.0.0.1", 0, app, server_class=ThreadedWSGIServer, handler_class=QuietHandler
    )
    httpd.faults = faults  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{httpd.server_port}/oai"
    repository.base_url = url
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="oai-provider"
    )
    thread.start()
    return Provider(url, repository, faults, httpd, thread)


def running(repository: Repository, *, batch_size: int = 20) -> Iterator[Provider]:
    """`start_provider` for a pytest fixture: yields the provider, stops it afterwards."""
    provider = start_provider(repository, batch_size=batch_size)
    try:
        yield provider
    finally:
        provider.stop()
