"""The OAI-PMH provider's protocol logic, verb by verb and error by error, over an in-memory source.

Expected answers are computed here from the generated records with plain filters, never read back
from the provider. Requests are the argument dicts a web layer would hand over (every value of each
name, so repetition is visible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lxml import etree

from shelfwork.errors import ConfigError
from shelfwork.pipelines.oai.provider import (
    OAI_DC,
    ExposedRecord,
    RecordSourceError,
    respond,
)
from tests.support.oai_source import (
    EPOCH,
    MARC,
    SETS,
    MemorySource,
    dc_metadata,
    generated_records,
    repository_info,
    selected,
)

NS = {"o": "http://www.openarchives.org/OAI/2.0/", "dc": "http://purl.org/dc/elements/1.1/"}
SECRET = b"unit-test-secret-0123456789abcdef"
NOW = datetime(2025, 3, 1, 12, 30, 15, tzinfo=UTC)
RECORDS = generated_records(1234)


def parse(body: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(body, parser)


def ask(
    source: MemorySource,
    *,
    now: datetime = NOW,
    page_size: int = 100,
    secret: bytes = SECRET,
    raw: dict[str, list[str]] | None = None,
    **arguments: str,
) -> etree._Element:
    """One request; keyword arguments are single values (`from_` stands for `from`)."""
    request = {name.rstrip("_"): [value] for name, value in arguments.items()}
    request.update(raw or {})
    return parse(respond(request, source, now=now, page_size=page_size, token_secret=secret))


def errors(root: etree._Element) -> list[str]:
    return [e.get("code") for e in root.iterfind("o:error", NS)]


def request_attributes(root: etree._Element) -> dict[str, str]:
    return dict(root.find("o:request", NS).attrib)


def identifiers(root: etree._Element) -> list[str]:
    return [e.text for e in root.iterfind(".//o:header/o:identifier", NS)]


def token_of(root: etree._Element) -> etree._Element | None:
    return root.find(".//o:resumptionToken", NS)


@pytest.fixture
def source() -> MemorySource:
    return MemorySource(repository_info(), RECORDS, sets_=SETS)


def harvest(
    source: MemorySource, verb: str = "ListRecords", page_size: int = 100, **arguments: str
) -> tuple[list[str], list[etree._Element]]:
    """Every identifier of a list, following tokens; and each page's resumptionToken element."""
    root = ask(source, verb=verb, metadataPrefix="oai_dc", page_size=page_size, **arguments)
    assert errors(root) == [], etree.tostring(root)
    seen, tokens = identifiers(root), []
    while (token := token_of(root)) is not None:
        tokens.append(token)
        if not token.text:
            break
        root = ask(source, verb=verb, page_size=page_size, resumptionToken=token.text)
        assert errors(root) == []
        seen += identifiers(root)
    return seen, tokens


def expected(records: Sequence[ExposedRecord], **selection: Any) -> list[str]:
    return [r.identifier for r in selected(records, **selection)]


# ------------------------------------------------------------------------------------ Identify


def test_identify_answers_the_required_elements_in_schema_order(source: MemorySource) -> None:
    root = ask(source, verb="Identify")
    assert root.findtext("o:responseDate", namespaces=NS) == "2025-03-01T12:30:15Z"
    assert request_attributes(root) == {"verb": "Identify"}
    assert root.findtext("o:request", namespaces=NS) == "http://127.0.0.1/oai/test"
    identify = root.find("o:Identify", NS)
    names = [etree.QName(e).localname for e in identify]
    assert names == [
        "repositoryName",
        "baseURL",
        "protocolVersion",
        "adminEmail",
        "earliestDatestamp",
        "deletedRecord",
        "granularity",
    ]
    assert [e.text for e in identify][1:] == [
        "http://127.0.0.1/oai/test",
        "2.0",
        "oai@example.org",
        "2020-01-01T00:00:00Z",
        "persistent",
        "YYYY-MM-DDThh:mm:ssZ",
    ]


def test_identify_of_a_day_granularity_repository() -> None:
    info = repository_info(granularity="YYYY-MM-DD", deleted_record="transient")
    root = ask(MemorySource(info, RECORDS[:3]), verb="Identify")
    assert root.findtext(".//o:earliestDatestamp", namespaces=NS) == "2020-01-01"
    assert root.findtext(".//o:granularity", namespaces=NS) == "YYYY-MM-DD"
    assert root.findtext(".//o:deletedRecord", namespaces=NS) == "transient"


# --------------------------------------------------------------------------- badVerb/badArgument


@pytest.mark.parametrize(
    "request_",
    [{}, {"verb": ["Frobnicate"]}, {"verb": ["Identify", "Identify"]}, {"verb": [""]}],
    ids=["missing", "unknown", "repeated", "empty"],
)
def test_bad_verb_without_echoing_the_request(
    source: MemorySource, request_: dict[str, list[str]]
) -> None:
    root = parse(respond(request_, source, now=NOW, token_secret=SECRET))
    assert errors(root) == ["badVerb"]
    assert request_attributes(root) == {}


@pytest.mark.parametrize(
    "request_",
    [
        {"verb": ["Identify"], "metadataPrefix": ["oai_dc"]},
        {"verb": ["ListRecords"]},
        {"verb": ["ListIdentifiers"], "set": ["theses"]},
        {"verb": ["GetRecord"], "metadataPrefix": ["oai_dc"]},
        {"verb": ["GetRecord"], "identifier": ["x"]},
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc", "oai_dc"]},
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"], "identifier": ["x"]},
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"], "resumptionToken": ["abc"]},
        {"verb": ["ListSets"], "set": ["theses"]},
        {"verb": ["ListRecords"], "metadataPrefix": [""]},
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"], "set": ["not a spec"]},
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"], "set": ["a::b"]},
        {"verb": ["GetRecord"], "metadataPrefix": ["oai_dc"], "identifier": ["x\x01y"]},
        {"verb": ["Identify"], "bad\x00name": ["1"]},
        {"verb": ["GetRecord"], "metadataPrefix": ["oai_dc"], "identifier": ["x" * 3000]},
        # metadataPrefixType [A-Za-z0-9\-_.!~*'()]+: echoed, "oai dc" would make the answer
        # invalid OAI-PMH, so it is a bad argument rather than a format not disseminated
        {"verb": ["ListRecords"], "metadataPrefix": ["oai dc"]},
        {"verb": ["GetRecord"], "metadataPrefix": ["oai/dc"], "identifier": ["x"]},
    ],
    ids=[
        "identify-with-argument",
        "list-without-prefix",
        "identifiers-without-prefix",
        "getrecord-without-identifier",
        "getrecord-without-prefix",
        "repeated-argument",
        "illegal-argument",
        "token-not-exclusive",
        "listsets-with-set",
        "empty-value",
        "set-syntax",
        "set-empty-level",
        "control-character-value",
        "control-character-name",
        "too-long",
        "prefix-syntax",
        "prefix-syntax-getrecord",
    ],
)
def test_bad_argument_without_echoing_the_request(
    source: MemorySource, request_: dict[str, list[str]]
) -> None:
    root = parse(respond(request_, source, now=NOW, token_secret=SECRET))
    assert set(errors(root)) == {"badArgument"}
    assert request_attributes(root) == {}
    assert root.find("o:error", NS).text  # says what is wrong


def test_every_bad_argument_is_named(source: MemorySource) -> None:
    root = ask(source, raw={"verb": ["ListRecords"], "foo": ["1"], "bar": ["2"]})
    messages = [e.text for e in root.iterfind("o:error", NS)]
    assert len(messages) == 2 and "'foo'" in messages[0] and "'bar'" in messages[1]


def test_a_valid_request_is_echoed_whole(source: MemorySource) -> None:
    root = ask(
        source,
        verb="ListIdentifiers",
        metadataPrefix="oai_dc",
        set="theses",
        from_="2020-03-01",
        until="2020-03-31",
    )
    assert errors(root) == []
    assert request_attributes(root) == {
        "verb": "ListIdentifiers",
        "metadataPrefix": "oai_dc",
        "set": "theses",
        "from": "2020-03-01",
        "until": "2020-03-31",
    }


# ---------------------------------------------------------------------------------- from/until


@pytest.mark.parametrize(
    ("from_", "until"),
    [
        ("2020-1-1", None),
        ("2020-01-01T00:00:00", None),
        ("2020-01-01T00:00Z", None),
        ("yesterday", None),
        ("2020-02-30", None),
        ("2020-01-01T24:00:00Z", None),
        ("2020-01-01", "2020-02-01T00:00:00Z"),
        ("2020-02-01", "2020-01-31"),
        ("2020-02-01T00:00:01Z", "2020-02-01T00:00:00Z"),
    ],
    ids=[
        "short-month",
        "no-zone",
        "no-seconds",
        "word",
        "no-such-day",
        "hour-24",
        "mixed-granularity",
        "from-after-until-days",
        "from-after-until-seconds",
    ],
)
def test_bad_datestamps_are_bad_arguments(
    source: MemorySource, from_: str, until: str | None
) -> None:
    arguments = {"from_": from_, **({"until": until} if until else {})}
    root = ask(source, verb="ListRecords", metadataPrefix="oai_dc", **arguments)
    assert errors(root) and set(errors(root)) == {"badArgument"}
    assert request_attributes(root) == {}


def test_seconds_are_finer_than_a_day_granularity_repository() -> None:
    source = MemorySource(repository_info(granularity="YYYY-MM-DD"), RECORDS)
    refused = ask(source, verb="ListRecords", metadataPrefix="oai_dc", from_="2020-02-01T00:00:00Z")
    assert errors(refused) == ["badArgument"]
    accepted = ask(source, verb="ListIdentifiers", metadataPrefix="oai_dc", from_="2020-12-01")
    assert errors(accepted) == []
    stamps = {e.text for e in accepted.iterfind(".//o:datestamp", NS)}
    assert stamps and all(len(s) == 10 and s >= "2020-12-01" for s in stamps)


def test_day_bounds_include_the_whole_day(source: MemorySource) -> None:
    day = EPOCH + timedelta(days=40)
    on_that_day = expected(RECORDS, start=day, before=day + timedelta(days=1))
    assert any(r.datestamp.hour == 12 for r in RECORDS if r.identifier in on_that_day)
    root = ask(
        source,
        verb="ListIdentifiers",
        metadataPrefix="oai_dc",
        from_="2020-02-10",
        until="2020-02-10",
    )
    assert identifiers(root) == on_that_day


def test_second_bounds_are_inclusive(source: MemorySource) -> None:
    stamp = RECORDS[0].datestamp
    text = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    root = ask(source, verb="ListIdentifiers", metadataPrefix="oai_dc", from_=text, until=text)
    assert identifiers(root) == expected(RECORDS, start=stamp, before=stamp + timedelta(seconds=1))
    assert RECORDS[0].identifier in identifiers(root)


def test_until_the_last_possible_day_has_no_upper_bound(source: MemorySource) -> None:
    seen, _ = harvest(source, "ListIdentifiers", from_="2020-06-01", until="9999-12-31")
    assert seen == expected(RECORDS, start=datetime(2020, 6, 1, tzinfo=UTC))


def test_a_window_with_nothing_in_it_is_no_records_match(source: MemorySource) -> None:
    root = ask(source, verb="ListRecords", metadataPrefix="oai_dc", until="2019-12-31")
    assert errors(root) == ["noRecordsMatch"]
    assert request_attributes(root)["until"] == "2019-12-31"  # a valid request: echoed


# --------------------------------------------------------------------------- formats and sets


def test_list_metadata_formats_for_the_repository_and_for_one_item() -> None:
    only_dc = RECORDS[1].identifier
    nothing = RECORDS[2].identifier
    source = MemorySource(
        repository_info(),
        RECORDS[:10],
        formats_=(OAI_DC, MARC),
        available={only_dc: ["oai_dc"], nothing: []},
    )
    everything = ask(source, verb="ListMetadataFormats")
    prefixes = [e.text for e in everything.iterfind(".//o:metadataPrefix", NS)]
    assert prefixes == ["oai_dc", "marcxml"]
    assert everything.findtext(".//o:metadataNamespace", namespaces=NS) == OAI_DC.namespace
    assert everything.findtext(".//o:schema", namespaces=NS) == OAI_DC.schema
    one = ask(source, verb="ListMetadataFormats", identifier=only_dc)
    assert [e.text for e in one.iterfind(".//o:metadataPrefix", NS)] == ["oai_dc"]
    assert errors(ask(source, verb="ListMetadataFormats", identifier=nothing)) == [
        "noMetadataFormats"
    ]
    assert errors(ask(source, verb="ListMetadataFormats", identifier="oai:nope")) == [
        "idDoesNotExist"
    ]
    refused = ask(source, verb="GetRecord", identifier=only_dc, metadataPrefix="marcxml")
    assert errors(refused) == ["cannotDisseminateFormat"]
    marc_list = ask(source, verb="ListIdentifiers", metadataPrefix="marcxml")
    assert sorted(identifiers(marc_list)) == sorted(
        r.identifier for r in RECORDS[:10] if r.identifier not in (only_dc, nothing)
    )


def test_a_repository_without_formats_has_no_metadata_formats() -> None:
    source = MemorySource(repository_info(), RECORDS[:3], formats_=())
    assert errors(ask(source, verb="ListMetadataFormats")) == ["noMetadataFormats"]


@pytest.mark.parametrize("verb", ["ListRecords", "ListIdentifiers"])
def test_an_unknown_prefix_cannot_be_disseminated(source: MemorySource, verb: str) -> None:
    root = ask(source, verb=verb, metadataPrefix="mods")
    assert errors(root) == ["cannotDisseminateFormat"]
    assert request_attributes(root) == {"verb": verb, "metadataPrefix": "mods"}


def test_list_sets(source: MemorySource) -> None:
    root = ask(source, verb="ListSets")
    pairs = [
        (s.findtext("o:setSpec", namespaces=NS), s.findtext("o:setName", namespaces=NS))
        for s in root.iterfind(".//o:set", NS)
    ]
    assert pairs == list(SETS)
    assert token_of(root) is None
    assert errors(ask(source, verb="ListSets", resumptionToken="anything")) == [
        "badResumptionToken"
    ]


def test_a_repository_without_sets_has_no_set_hierarchy() -> None:
    source = MemorySource(repository_info(), RECORDS[:5])
    assert errors(ask(source, verb="ListSets")) == ["noSetHierarchy"]
    for verb in ("ListRecords", "ListIdentifiers"):
        root = ask(source, verb=verb, metadataPrefix="oai_dc", set="theses")
        assert errors(root) == ["noSetHierarchy"]


def test_an_unknown_set_matches_no_records(source: MemorySource) -> None:
    root = ask(source, verb="ListRecords", metadataPrefix="oai_dc", set="posters")
    assert errors(root) == ["noRecordsMatch"]


@pytest.mark.parametrize("set_spec", ["theses", "articles", "articles:open"])
def test_a_set_lists_its_members_and_its_subsets_members(
    source: MemorySource, set_spec: str
) -> None:
    seen, _ = harvest(source, "ListIdentifiers", page_size=70, set=set_spec)
    assert seen == expected(RECORDS, set_spec=set_spec)
    if set_spec == "articles":  # the hierarchy: articles:open members are in articles too
        assert set(expected(RECORDS, set_spec="articles:open")) < set(seen)


# ----------------------------------------------------------------------------------- GetRecord


def test_get_record_returns_header_and_the_stored_metadata(source: MemorySource) -> None:
    record = next(r for r in RECORDS if not r.deleted and len(r.sets) == 2)
    root = ask(source, verb="GetRecord", identifier=record.identifier, metadataPrefix="oai_dc")
    assert errors(root) == []
    header = root.find(".//o:header", NS)
    assert header.get("status") is None
    assert header.findtext("o:identifier", namespaces=NS) == record.identifier
    assert header.findtext("o:datestamp", namespaces=NS) == record.datestamp.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert [e.text for e in header.iterfind("o:setSpec", NS)] == list(record.sets)
    payload = root.find(".//o:metadata", NS)[0]
    assert etree.tostring(payload, method="c14n", exclusive=True) == etree.tostring(
        parse(record.metadata), method="c14n", exclusive=True
    )


def test_get_record_of_a_deleted_record_has_no_metadata(source: MemorySource) -> None:
    record = next(r for r in RECORDS if r.deleted)
    root = ask(source, verb="GetRecord", identifier=record.identifier, metadataPrefix="oai_dc")
    assert root.find(".//o:header", NS).get("status") == "deleted"
    assert root.find(".//o:metadata", NS) is None


def test_get_record_errors(source: MemorySource) -> None:
    missing = ask(source, verb="GetRecord", identifier="oai:nope", metadataPrefix="oai_dc")
    assert errors(missing) == ["idDoesNotExist"]
    assert request_attributes(missing)["identifier"] == "oai:nope"
    wrong = ask(source, verb="GetRecord", identifier=RECORDS[0].identifier, metadataPrefix="mods")
    assert errors(wrong) == ["cannotDisseminateFormat"]


# ------------------------------------------------------------------------------------- paging


def test_a_full_harvest_pages_with_cursor_and_complete_list_size(source: MemorySource) -> None:
    seen, tokens = harvest(source, page_size=50)
    assert seen == expected(RECORDS)
    assert len(seen) == len(set(seen)) == 1234
    assert len(tokens) == 25  # 24 full pages of 50, then 34 more
    assert [int(t.get("cursor")) for t in tokens] == [50 * n for n in range(25)]
    assert {t.get("completeListSize") for t in tokens} == {"1234"}
    assert all(t.text for t in tokens[:-1])
    last = tokens[-1]
    assert last.text is None and last.get("expirationDate") is None
    expiry = (NOW + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {t.get("expirationDate") for t in tokens[:-1]} == {expiry}


def test_list_records_carries_metadata_and_deletions(source: MemorySource) -> None:
    root = ask(source, verb="ListRecords", metadataPrefix="oai_dc", page_size=40)
    records = root.findall(".//o:record", NS)
    assert len(records) == 40
    by_id = {r.identifier: r for r in RECORDS}
    deleted = 0
    for element in records:
        record = by_id[element.findtext(".//o:identifier", namespaces=NS)]
        status = element.find("o:header", NS).get("status")
        if record.deleted:
            deleted += 1
            assert status == "deleted" and element.find("o:metadata", NS) is None
        else:
            assert status is None
            title = element.findtext(".//dc:title", namespaces=NS)
            assert title == parse(record.metadata).findtext("dc:title", namespaces=NS)
    assert deleted > 0


def test_list_identifiers_has_headers_only(source: MemorySource) -> None:
    root = ask(source, verb="ListIdentifiers", metadataPrefix="oai_dc")
    assert root.find(".//o:record", NS) is None and root.find(".//o:metadata", NS) is None
    headers = root.findall("o:ListIdentifiers/o:header", NS)
    assert len(headers) == 100
    assert any(h.get("status") == "deleted" for h in headers)


def test_a_one_page_list_has_no_token_and_costs_no_count() -> None:
    source = MemorySource(repository_info(), RECORDS[:30])
    root = ask(source, verb="ListRecords", metadataPrefix="oai_dc", page_size=30)
    assert len(identifiers(root)) == 30 and token_of(root) is None
    assert source.calls == ["page"]


def test_a_list_of_exactly_two_pages_ends_with_an_empty_token() -> None:
    source = MemorySource(repository_info(), RECORDS[:20])
    seen, tokens = harvest(source, page_size=10)
    assert seen == expected(RECORDS[:20])
    assert [(t.get("cursor"), t.text) for t in tokens][1] == ("10", None)
    assert source.calls.count("count") == 1  # only the first page counts


def test_the_list_stays_stable_while_records_change(source: MemorySource) -> None:
    """Keyset paging: a changed record moves to the end (harvested again), nothing is skipped."""
    first = ask(source, verb="ListIdentifiers", metadataPrefix="oai_dc", page_size=100)
    done = identifiers(first)
    order = expected(RECORDS)
    ahead = order[500]  # not harvested yet, will change
    behind = done[10]  # harvested already, will change
    gone = order[700]  # removed outright before the harvester gets there
    later = NOW - timedelta(days=1)
    by_id = {r.identifier: r for r in RECORDS}
    source.put(replace(by_id[ahead], datestamp=later))
    source.put(replace(by_id[behind], datestamp=later))
    source.put(ExposedRecord("oai:shelfwork.test:new", later, metadata=dc_metadata("New")))
    source.remove(gone)
    token = token_of(first).text
    rest: list[str] = []
    while token:
        page = ask(source, verb="ListIdentifiers", resumptionToken=token, page_size=100)
        rest += identifiers(page)
        token = token_of(page).text
    seen = done + rest
    assert set(order) - {gone} <= set(seen)
    assert gone not in seen
    assert seen.count(behind) == 2 and seen.count(ahead) == 1
    assert "oai:shelfwork.test:new" in seen
    assert len(seen) == len(order) + 1  # -gone, +new, +behind again


def test_a_rest_removed_outright_ends_the_list_quietly() -> None:
    """If every record still to come was removed (transient deletion), the next answer is an
    empty last page, not an error that would break a harvest that got everything there is."""
    source = MemorySource(repository_info(deleted_record="transient"), RECORDS[:20])
    first = ask(source, verb="ListIdentifiers", metadataPrefix="oai_dc", page_size=10)
    for identifier in expected(RECORDS[:20])[10:]:
        source.remove(identifier)
    rest = ask(source, verb="ListIdentifiers", resumptionToken=token_of(first).text, page_size=10)
    assert errors(rest) == [] and identifiers(rest) == []
    last = token_of(rest)
    assert last.text is None and last.get("cursor") == "10"


# ------------------------------------------------------------------------------------- tokens


def first_token(source: MemorySource, verb: str = "ListRecords", **kwargs: object) -> str:
    root = ask(source, verb=verb, metadataPrefix="oai_dc", **kwargs)  # type: ignore[arg-type]
    return token_of(root).text


def flipped(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


@pytest.mark.parametrize("where", ["payload-start", "payload-middle", "mac", "last"])
def test_a_tampered_token_is_refused(source: MemorySource, where: str) -> None:
    token = first_token(source)
    dot = token.index(".")
    at = {"payload-start": 0, "payload-middle": dot // 2, "mac": dot + 5, "last": len(token) - 1}
    root = ask(source, verb="ListRecords", resumptionToken=flipped(token, at[where]))
    assert errors(root) == ["badResumptionToken"]
    assert request_attributes(root)["verb"] == "ListRecords"  # syntactically valid: echoed


@pytest.mark.parametrize("token", ["garbage", "a.b", ".", "x" * 100 + "." + "y" * 43, "é.é"])
def test_a_made_up_token_is_refused(source: MemorySource, token: str) -> None:
    root = ask(source, verb="ListIdentifiers", resumptionToken=token)
    assert errors(root) == ["badResumptionToken"]


def test_a_token_from_another_network_or_secret_is_refused(source: MemorySource) -> None:
    other = MemorySource(repository_info("http://127.0.0.1/oai/other"), RECORDS, sets_=SETS)
    foreign = first_token(other)
    assert errors(ask(source, verb="ListRecords", resumptionToken=foreign)) == [
        "badResumptionToken"
    ]
    resigned = first_token(source, secret=b"another-secret-0123456789abcdef")
    assert errors(ask(source, verb="ListRecords", resumptionToken=resigned)) == [
        "badResumptionToken"
    ]
    assert errors(ask(other, verb="ListRecords", resumptionToken=foreign)) == []


def test_a_token_is_for_its_own_verb(source: MemorySource) -> None:
    token = first_token(source, "ListIdentifiers")
    root = ask(source, verb="ListRecords", resumptionToken=token)
    assert errors(root) == ["badResumptionToken"]
    assert "ListIdentifiers" in root.findtext("o:error", namespaces=NS)


def test_a_token_expires(source: MemorySource) -> None:
    token = first_token(source)
    assert (
        errors(
            ask(source, verb="ListRecords", resumptionToken=token, now=NOW + timedelta(hours=23))
        )
        == []
    )
    late = ask(source, verb="ListRecords", resumptionToken=token, now=NOW + timedelta(hours=25))
    assert errors(late) == ["badResumptionToken"]
    assert "expired" in late.findtext("o:error", namespaces=NS)


def test_tokens_without_a_lifetime_never_expire(source: MemorySource) -> None:
    body = respond(
        {"verb": ["ListRecords"], "metadataPrefix": ["oai_dc"]},
        source,
        now=NOW,
        token_secret=SECRET,
        token_lifetime=None,
    )
    token = token_of(parse(body))
    assert token.get("expirationDate") is None
    later = ask(
        source, verb="ListRecords", resumptionToken=token.text, now=NOW + timedelta(days=400)
    )
    assert errors(later) == []


def test_a_token_keeps_set_and_window(source: MemorySource) -> None:
    seen, tokens = harvest(
        source, page_size=25, set="articles", from_="2020-03-01", until="2020-10-31"
    )
    wanted = expected(
        RECORDS,
        set_spec="articles",
        start=datetime(2020, 3, 1, tzinfo=UTC),
        before=datetime(2020, 11, 1, tzinfo=UTC),
    )
    assert seen == wanted and len(tokens) > 3
    assert {t.get("completeListSize") for t in tokens} == {str(len(wanted))}


# ------------------------------------------------------------------------- the source's faults


def broken_source(record: ExposedRecord) -> MemorySource:
    return MemorySource(repository_info(), [record])


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (b"<dc>unclosed", "malformed"),
        (b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>', "DOCTYPE"),
        (b'<!DOCTYPE d [<!ENTITY x "boom">]><d>&x;</d>', "DOCTYPE"),
        (None, "no metadata"),
        (b"<record><title>t</title></record>", "no namespace"),
        (b'<d:dc xmlns:d="urn:d"><title>t</title></d:dc>', "<title> has no namespace"),
        (b'<record xmlns="http://www.openarchives.org/OAI/2.0/"/>', "OAI-PMH namespace"),
    ],
    ids=[
        "malformed",
        "external-entity",
        "internal-entity",
        "missing",
        "no-namespace",
        "child-without-namespace",
        "oai-namespace",
    ],
)
def test_unsafe_or_missing_metadata_is_the_sources_fault(
    metadata: bytes | None, problem: str
) -> None:
    record = ExposedRecord("oai:x:1", EPOCH, metadata=metadata)
    with pytest.raises(RecordSourceError, match=problem) as raised:
        ask(broken_source(record), verb="GetRecord", identifier="oai:x:1", metadataPrefix="oai_dc")
    assert raised.value.identifier == "oai:x:1"


def test_a_source_that_ignores_the_keyset_is_caught(source: MemorySource) -> None:
    class Stuck(MemorySource):
        def page(self, **kwargs):  # type: ignore[no-untyped-def, override]
            return super().page(**{**kwargs, "after": None})

    stuck = Stuck(repository_info(), RECORDS)
    token = first_token(stuck)
    with pytest.raises(RecordSourceError, match="order"):
        ask(stuck, verb="ListRecords", resumptionToken=token)


def test_an_identifier_xml_cannot_carry_is_the_sources_fault() -> None:
    record = ExposedRecord("oai:x:\x02", EPOCH, deleted=True)
    with pytest.raises(RecordSourceError, match="header"):
        ask(broken_source(record), verb="ListIdentifiers", metadataPrefix="oai_dc")


# ------------------------------------------------------------------------------ configuration


def test_configuration_mistakes_are_refused(source: MemorySource) -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        ask(source, verb="Identify", secret=b"short")
    with pytest.raises(ConfigError, match="admin e-mail"):
        ask(MemorySource(replace(repository_info(), admin_emails=())), verb="Identify")
    for email in ("oai-admin@localhost", "no-at-sign.example.org", "a b@example.org", "x@.org"):
        # OAI-PMH.xsd emailType: \S+@(\S+\.)+\S+
        with pytest.raises(ConfigError, match="adminEmail"):
            ask(MemorySource(replace(repository_info(), admin_emails=(email,))), verb="Identify")
    with pytest.raises(ConfigError, match="granularity"):
        ask(MemorySource(replace(repository_info(), granularity="YYYY")), verb="Identify")
    with pytest.raises(ConfigError, match="deleted_record"):
        ask(MemorySource(replace(repository_info(), deleted_record="sometimes")), verb="Identify")
    with pytest.raises(ValueError, match="timezone-aware"):
        respond({"verb": ["Identify"]}, source, now=datetime(2025, 1, 1), token_secret=SECRET)
