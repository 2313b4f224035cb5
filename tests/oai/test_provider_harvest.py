"""The provider harvested over HTTP by clients written by others: Sickle (GET), oaipmh-scythe
(POST) and our own OaiClient, from the router served by uvicorn on loopback.

The repository is 1,234 generated records, every ninth deleted, in three sets (one nested in
another); two networks share the token secret, so a token from one shown to the other must fail.
What each harvest must bring is computed from the generated records by plain filtering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from lxml import etree
from oaipmh_scythe import Scythe
from oaipmh_scythe.config import HTTPConfig
from sickle import Sickle, oaiexceptions

from shelfwork.api.errors import install
from shelfwork.api.oai import oai_router
from shelfwork.connectors.oaipmh import OaiClient
from shelfwork.errors import DatabaseUnavailable
from shelfwork.pipelines.oai.provider import ExposedRecord, RepositoryInfo
from shelfwork.sandbox import RunningServer, free_port, serve
from tests.support.oai_provider import LOOPBACK
from tests.support.oai_source import (
    EPOCH,
    SETS,
    MemorySource,
    generated_records,
    repository_info,
    selected,
)

SECRET = b"harvest-test-secret-0123456789abcdef"
RECORDS = generated_records(1234)
BY_ID = {r.identifier: r for r in RECORDS}
NS = {"o": "http://www.openarchives.org/OAI/2.0/", "dc": "http://purl.org/dc/elements/1.1/"}
WINDOW = {"from": "2020-04-01", "until": "2020-09-30"}
WINDOW_START = datetime(2020, 4, 1, tzinfo=UTC)
WINDOW_BEFORE = datetime(2020, 10, 1, tzinfo=UTC)


@dataclass
class Provider:
    base: str
    server: RunningServer
    #: the HTTP method of every request served, to tell which way each client asked
    methods: list[str]

    @property
    def url(self) -> str:
        return f"{self.base}/net"


class Unreachable(MemorySource):
    """A source whose database is down."""

    def info(self) -> RepositoryInfo:
        raise DatabaseUnavailable("connection refused")


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    port = free_port()
    base = f"http://127.0.0.1:{port}/oai"
    sources = {
        "net": MemorySource(repository_info(f"{base}/net"), RECORDS, sets_=SETS),
        "other": MemorySource(repository_info(f"{base}/other"), RECORDS[:300], sets_=SETS),
        "broken": MemorySource(
            repository_info(f"{base}/broken"),
            [ExposedRecord("oai:broken:1", EPOCH, metadata=b"<not-namespaced/>")],
        ),
        "down": Unreachable(repository_info(f"{base}/down")),
    }
    app = FastAPI()
    install(app)  # shelfwork's error handlers, as in the real app
    app.include_router(
        oai_router(lambda network, _url: sources.get(network), token_secret=SECRET, page_size=100)
    )
    methods: list[str] = []

    @app.middleware("http")
    async def note_method(request: Request, call_next: Callable[..., Any]) -> Any:
        methods.append(request.method)
        return await call_next(request)

    server = serve(app, "oai-provider", port=port)
    try:
        yield Provider(base, server, methods)
    finally:
        server.stop()


def title(record: ExposedRecord) -> str:
    assert record.metadata is not None
    return etree.fromstring(record.metadata).findtext("dc:title", namespaces=NS)


def wanted(**selection: object) -> list[str]:
    return [r.identifier for r in selected(RECORDS, **selection)]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- Sickle


def test_sickle_harvests_every_record_and_every_deletion(provider: Provider) -> None:
    sickle = Sickle(provider.url, max_retries=0, timeout=30)
    provider.methods.clear()
    harvested = list(sickle.ListRecords(metadataPrefix="oai_dc"))
    assert provider.methods == ["GET"] * 13
    assert [r.header.identifier for r in harvested] == wanted()
    for record in harvested:
        source = BY_ID[record.header.identifier]
        assert record.deleted == source.deleted
        assert record.header.setSpecs == list(source.sets)
        assert record.header.datestamp == source.datestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        if not source.deleted:
            assert record.metadata["title"] == [title(source)]
    assert sum(r.deleted for r in harvested) == sum(r.deleted for r in RECORDS) > 100


@pytest.mark.parametrize("set_spec", [spec for spec, _ in SETS])
def test_sickle_harvests_each_set(provider: Provider, set_spec: str) -> None:
    sickle = Sickle(provider.url, timeout=30)
    got = [r.header.identifier for r in sickle.ListRecords(metadataPrefix="oai_dc", set=set_spec)]
    assert got == wanted(set_spec=set_spec)


def test_sickle_harvests_a_window_and_lists_identifiers(provider: Provider) -> None:
    sickle = Sickle(provider.url, timeout=30)
    window = [r.header.identifier for r in sickle.ListRecords(metadataPrefix="oai_dc", **WINDOW)]
    assert window == wanted(start=WINDOW_START, before=WINDOW_BEFORE)
    headers = list(sickle.ListIdentifiers(metadataPrefix="oai_dc"))
    assert [h.identifier for h in headers] == wanted()
    assert [h.identifier for h in headers if h.deleted] == [
        r.identifier for r in selected(RECORDS) if r.deleted
    ]
    live = [
        h.identifier for h in sickle.ListIdentifiers(metadataPrefix="oai_dc", ignore_deleted=True)
    ]
    assert live == [r.identifier for r in selected(RECORDS) if not r.deleted]


def test_sickle_reads_identify_sets_formats_and_single_records(provider: Provider) -> None:
    sickle = Sickle(provider.url, timeout=30)
    identify = sickle.Identify()
    assert identify.baseURL == provider.url
    assert identify.granularity == "YYYY-MM-DDThh:mm:ssZ"
    assert identify.deletedRecord == "persistent"
    assert [(s.setSpec, s.setName) for s in sickle.ListSets()] == list(SETS)
    assert [f.metadataPrefix for f in sickle.ListMetadataFormats()] == ["oai_dc"]
    live = next(r for r in RECORDS if not r.deleted)
    assert sickle.GetRecord(identifier=live.identifier, metadataPrefix="oai_dc").metadata[
        "title"
    ] == [title(live)]
    gone = next(r for r in RECORDS if r.deleted)
    assert sickle.GetRecord(identifier=gone.identifier, metadataPrefix="oai_dc").deleted
    with pytest.raises(oaiexceptions.IdDoesNotExist):
        sickle.GetRecord(identifier="oai:nope", metadataPrefix="oai_dc")
    with pytest.raises(oaiexceptions.CannotDisseminateFormat):
        next(iter(sickle.ListRecords(metadataPrefix="mods")))


# --------------------------------------------------------------------------- oaipmh-scythe


@pytest.fixture
def scythe(provider: Provider) -> Iterator[Scythe]:
    with Scythe(provider.url, http_config=HTTPConfig(http_method="POST", timeout=30)) as client:
        yield client


def test_scythe_harvests_every_record_by_post(scythe: Scythe, provider: Provider) -> None:
    provider.methods.clear()
    harvested = list(scythe.list_records(metadata_prefix="oai_dc"))
    assert provider.methods == ["POST"] * 13
    assert [r.header.identifier for r in harvested] == wanted()
    assert {r.header.identifier for r in harvested if r.deleted} == {
        r.identifier for r in RECORDS if r.deleted
    }
    for record in harvested:
        source = BY_ID[record.header.identifier]
        assert record.header.setSpecs == list(source.sets)
        if not source.deleted:
            assert record.metadata["title"] == [title(source)]


@pytest.mark.parametrize("set_spec", [spec for spec, _ in SETS])
def test_scythe_harvests_each_set_in_a_window(scythe: Scythe, set_spec: str) -> None:
    records = scythe.list_records(
        metadata_prefix="oai_dc", set_=set_spec, from_=WINDOW["from"], until=WINDOW["until"]
    )
    assert [r.header.identifier for r in records] == wanted(
        set_spec=set_spec, start=WINDOW_START, before=WINDOW_BEFORE
    )


def test_scythe_lists_identifiers_and_reads_identify(scythe: Scythe, provider: Provider) -> None:
    headers = list(scythe.list_identifiers(metadata_prefix="oai_dc"))
    assert [h.identifier for h in headers] == wanted()
    assert sum(h.deleted for h in headers) == sum(r.deleted for r in RECORDS)
    identify = scythe.identify()
    assert identify.baseURL == provider.url and identify.protocolVersion == "2.0"
    gone = next(r for r in RECORDS if r.deleted)
    assert scythe.get_record(identifier=gone.identifier).deleted


# -------------------------------------------------------------------------------- OaiClient


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_our_client_harvests_with_cursor_and_complete_list_size(
    provider: Provider, method: str
) -> None:
    provider.methods.clear()
    with OaiClient(
        provider.url,
        method=method,  # type: ignore[arg-type]
        retries=0,
        timeout=30,
        addresses=LOOPBACK,
    ) as client:
        assert client.identify().granularity == "YYYY-MM-DDThh:mm:ssZ"
        pages = list(client.pages("oai_dc"))
    assert provider.methods == [method] * 14
    records = [r for page in pages for r in page.records]
    assert [r.identifier for r in records] == wanted()
    assert [r.identifier for r in records if r.deleted] == [
        r.identifier for r in selected(RECORDS) if r.deleted
    ]
    assert all(r.metadata is None for r in records if r.deleted)
    tokens = [page.token for page in pages[:-1]]
    assert [t.cursor for t in tokens] == [100 * n for n in range(len(tokens))]
    assert {t.complete_list_size for t in tokens} == {1234}
    assert pages[-1].token is None and len(pages) == 13


def test_our_client_harvests_a_set_in_a_window(provider: Provider) -> None:
    with OaiClient(provider.url, retries=0, timeout=30, addresses=LOOPBACK) as client:
        pages = client.pages("oai_dc", set_="articles", from_="2020-04-01", until="2020-09-30")
        got = [r.identifier for page in pages for r in page.records]
    assert got == wanted(set_spec="articles", start=WINDOW_START, before=WINDOW_BEFORE)


# ------------------------------------------------------------------------------- the router


def oai(provider: Provider, network: str = "net", **kwargs: object) -> httpx.Response:
    return httpx.get(f"{provider.base}/{network}", timeout=30, **kwargs)  # type: ignore[arg-type]


def codes(response: httpx.Response) -> list[str]:
    return [e.get("code") for e in etree.fromstring(response.content).iterfind("o:error", NS)]


def test_answers_are_utf8_xml(provider: Provider) -> None:
    response = oai(provider, params={"verb": "Identify"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert response.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_repeated_arguments_reach_the_protocol(provider: Provider) -> None:
    query = "verb=ListRecords&metadataPrefix=oai_dc&metadataPrefix=oai_dc"
    assert codes(httpx.get(f"{provider.url}?{query}", timeout=30)) == ["badArgument"]
    posted = httpx.post(
        provider.url,
        content=query,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert codes(posted) == ["badArgument"]
    twice = httpx.get(f"{provider.url}?verb=Identify&verb=Identify", timeout=30)
    assert codes(twice) == ["badVerb"]


def test_an_unknown_network_is_a_plain_404(provider: Provider) -> None:
    response = oai(provider, "nowhere", params={"verb": "Identify"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")


def test_a_post_must_be_a_small_form(provider: Provider) -> None:
    as_json = httpx.post(provider.url, json={"verb": "Identify"}, timeout=30)
    assert as_json.status_code == 415
    huge = httpx.post(
        provider.url,
        content="verb=Identify&x=" + "a" * 70_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert huge.status_code == 413


def test_a_token_from_another_network_is_refused_over_http(provider: Provider) -> None:
    first = oai(provider, "other", params={"verb": "ListIdentifiers", "metadataPrefix": "oai_dc"})
    token = etree.fromstring(first.content).findtext(".//o:resumptionToken", namespaces=NS)
    assert token
    same = oai(provider, "other", params={"verb": "ListIdentifiers", "resumptionToken": token})
    assert codes(same) == []
    foreign = oai(provider, params={"verb": "ListIdentifiers", "resumptionToken": token})
    assert codes(foreign) == ["badResumptionToken"]


def test_the_sources_faults_are_http_errors_not_oai_errors(
    provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    down = oai(provider, "down", params={"verb": "Identify"})
    assert down.status_code == 503 and down.headers["retry-after"] == "60"
    broken = oai(
        provider,
        "broken",
        params={"verb": "GetRecord", "identifier": "oai:broken:1", "metadataPrefix": "oai_dc"},
    )
    assert broken.status_code == 500
    assert broken.headers["content-type"].startswith("text/plain")
    assert "oai:broken:1" not in broken.text  # told to the log, not to the harvester
    assert any("oai:broken:1" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
