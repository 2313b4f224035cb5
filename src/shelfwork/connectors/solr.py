"""Apache Solr: send records through the JSON update API (add, delete, commit) and read them back.

    with SolrClient("http://127.0.0.1:8983/solr", "oai", auth=("indexer", secret)) as solr:
        target = SolrTarget(solr)
        target.upsert(docs)            # POST /solr/oai/update, a JSON array per batch
        target.delete("RI", ["oai:x:1"])
        target.commit()                # nothing is searchable in Solr before this

Contract relied on (Solr 8/9, the JSON update format of the Reference Guide): a JSON array is a
list of documents to add (a document with the same uniqueKey replaces the old one); an object holds
commands, `{"delete": [ids]}`, `{"delete": {"query": q}}`, `{"commit": {}}`; success is HTTP 200
with `responseHeader.status` 0; failure is a 4xx/5xx whose JSON body carries `error.msg` (and
`error.code`). Adds and deletes are invisible to searches until a commit.

A document's id is "<network>:<identifier>"; `network`, `identifier` and `datestamp` are
single-valued, `sets` and every metadata field (dc.title -> dc_title) multi-valued strings. The
core's schema must declare them (e.g. a `dc_*` dynamic field of type strings).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any, Self

import httpx

from ..errors import ConfigError
from ..search import IndexDocument
from . import RemoteError, RemoteUnavailable, error_for, tls_context, transport_error

SYSTEM = "Solr"
#: fields the target writes itself; a metadata field mapping onto one of them is renamed
RESERVED_FIELDS = frozenset({"id", "network", "identifier", "datestamp", "sets", "_version_"})
_FIELD_CHARS = re.compile(r"[^A-Za-z0-9_]")
_CORE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SolrResults:
    num_found: int
    start: int
    docs: list[dict[str, Any]]


class SolrClient:
    """One Solr core over HTTP; `batch` documents (or ids) go in each update request."""

    def __init__(
        self,
        base_url: str,
        core: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
        batch: int = 500,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"Solr URL {base_url!r} must be http(s)://host[:port]/solr")
        if url.userinfo:
            raise ConfigError("put Solr credentials in user/password, not in the URL")
        if not _CORE.match(core):
            raise ConfigError(f"Solr core {core!r} must be letters, digits, '_', '.' or '-'")
        if batch < 1:
            raise ConfigError("a Solr batch must hold at least one document")
        self.base_url = base_url.rstrip("/")
        self.core = core
        self.batch = batch
        self._http = httpx.Client(
            base_url=f"{self.base_url}/{core}",
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
            auth=httpx.BasicAuth(*auth) if auth else None,
        )

    # -- updates ----------------------------------------------------------------------------------

    def add(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Add (or replace, by id) documents, `batch` per request; not visible before commit."""
        for chunk in _chunks(docs, self.batch):
            self._update(list(chunk), f"adding {len(chunk)} document(s) to core {self.core!r}")

    def delete_ids(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids, self.batch):
            self._update(
                {"delete": list(chunk)},
                f"deleting {len(chunk)} document(s) by id from core {self.core!r}",
            )

    def delete_query(self, query: str) -> None:
        """Delete every document matching a Solr query (build it with `term_query`)."""
        self._update({"delete": {"query": query}}, f"deleting {query!r} from core {self.core!r}")

    def commit(self) -> None:
        """Make every add and delete since the last commit visible (and durable)."""
        self._update({"commit": {}}, f"committing core {self.core!r}")

    # -- reading ----------------------------------------------------------------------------------

    def select(
        self,
        q: str = "*:*",
        *,
        fq: Sequence[str] = (),
        rows: int = 10,
        start: int = 0,
        fl: str | None = None,
    ) -> SolrResults:
        """A search over committed documents (for count checks and tests)."""
        params: list[tuple[str, str | int]] = [("q", q), ("rows", rows), ("start", start)]
        params += [("fq", f) for f in fq]
        if fl:
            params.append(("fl", fl))
        params.append(("wt", "json"))
        body = self._send("GET", "/select", f"searching core {self.core!r} for {q!r}", params)
        response = body.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("docs"), list):
            raise RemoteError(SYSTEM, f"select on core {self.core!r} answered without documents")
        return SolrResults(
            int(response.get("numFound", 0)), int(response.get("start", 0)), response["docs"]
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _update(self, body: Any, what: str) -> None:
        self._send("POST", "/update", what, [("wt", "json")], body)

    def _send(
        self, method: str, path: str, what: str, params: list[Any], body: Any = None
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                json=body,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise transport_error(SYSTEM, exc, what) from exc
        if response.status_code >= 400:
            raise solr_error(response, what)
        try:
            payload = response.json()
        except ValueError:
            raise RemoteUnavailable(
                SYSTEM,
                f"{what}: the answer is not JSON (a proxy page?)",
                method=method,
                url=str(response.request.url),
                status=response.status_code,
                body=response.text,
            ) from None
        status = payload.get("responseHeader", {}).get("status") if isinstance(payload, dict) else 0
        if status not in (0, None):
            raise solr_error(response, what)
        return payload if isinstance(payload, dict) else {}


def solr_error(response: httpx.Response, what: str) -> RemoteError:
    """The RemoteError for a failed answer, quoting Solr's own `error.msg` when there is one."""
    generic = error_for(SYSTEM, response, what)
    msg: str | None = None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        raw = payload["error"].get("msg")
        msg = str(raw) if raw is not None else None
    if msg is None:
        return generic
    return type(generic)(
        SYSTEM,
        what,
        method=generic.method,
        url=generic.url,
        status=generic.status,
        body=msg,
    )


def term_query(field: str, value: str) -> str:
    """`field:"value"` with the value's quotes and backslashes escaped, so it is one term."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{field}:"{escaped}"'


def solr_field(name: str) -> str:
    """A metadata field's Solr name: dc.title -> dc_title (letters, digits, '_' only)."""
    mapped = _FIELD_CHARS.sub("_", name)
    if not mapped or mapped in RESERVED_FIELDS or not mapped[0].isalpha():
        mapped = f"f_{mapped}"
    return mapped


def solr_document(doc: IndexDocument) -> dict[str, Any]:
    datestamp = doc.datestamp
    datestamp = datestamp.replace(tzinfo=UTC) if datestamp.tzinfo is None else datestamp
    out: dict[str, Any] = {
        "id": f"{doc.network}:{doc.identifier}",
        "network": doc.network,
        "identifier": doc.identifier,
        "datestamp": datestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sets": list(doc.sets),
    }
    for name in sorted(doc.fields):
        values = doc.values(name)
        if values:
            out.setdefault(solr_field(name), []).extend(values)
    return out


class SolrTarget:
    """The Solr index target: every network in one core, told apart by the `network` field."""

    name = "solr"

    def __init__(self, client: SolrClient) -> None:
        self.client = client

    def upsert(self, docs: Sequence[IndexDocument]) -> None:
        self.client.add([solr_document(doc) for doc in docs])

    def delete(self, network: str, identifiers: Sequence[str]) -> None:
        self.client.delete_ids([f"{network}:{identifier}" for identifier in identifiers])

    def commit(self) -> None:
        self.client.commit()

    def clear(self, network: str) -> None:
        """Delete the network's documents (visible after the next commit)."""
        self.client.delete_query(term_query("network", network))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "SolrClient",
    "SolrResults",
    "SolrTarget",
    "solr_document",
    "solr_error",
    "solr_field",
    "term_query",
]
