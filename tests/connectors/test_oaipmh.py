"""The OAI-PMH client against an independent provider (the `oaipmh` package's BatchingServer)
served on loopback behind a fault-injection layer (tests/support/oai_provider.py).

Contract points (issue 5, section 3; la-referencia-oaipmh-dcb.md section 2) are named H1..H16
in the test docstrings. Sleeping is injected: no test waits for a backoff or a Retry-After.
A hostile upstream (tests/support/oai_hostile.py) sends what a WSGI app cannot: gzip bombs,
bytes one at a time, redirects into the server's own network.
"""

from __future__ import annotations

import gzip
import itertools
import math
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from shelfwork.connectors import AuthFailed, RemoteRefused, RemoteUnavailable
from shelfwork.connectors import oaipmh as oaipmh_module
from shelfwork.connectors.oaipmh import (
    ILLEGAL_XML,
    BadArgument,
    BadPage,
    BadResumptionToken,
    CannotDisseminateFormat,
    IllegalCharacterFilter,
    NoSetHierarchy,
    OaiClient,
    OaiError,
    Page,
    PageTooLarge,
    Record,
    RepeatedToken,
    Throttled,
    UnsafePage,
    format_datestamp,
    parse_datestamp,
    salvage_page,
)
from tests.support.oai_hostile import (
    OAI_HEAD,
    Hostile,
    drip_body,
    drip_headers,
    gzip_bomb,
    plain,
    redirect,
    unframed,
)
from tests.support.oai_provider import (
    ILLEGAL_COUNT,
    LOOPBACK,
    START,
    Item,
    Provider,
    Repository,
    generate_items,
    running,
)

BATCH = 20
TOTAL = 250
DC = "{http://purl.org/dc/elements/1.1/}"


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return generate_items(TOTAL)


@pytest.fixture
def provider(items: list[Item]) -> Iterator[Provider]:
    yield from running(Repository(items), batch_size=BATCH)


class Sleeps(list[float]):
    """An injected `sleep` that only remembers what it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(
    server: Provider | str, sleeps: Sleeps | None = None, **options: object
) -> OaiClient:
    """A client of the provider (or of a URL, such as a hostile server's) on loopback, allowed
    explicitly, with injected sleeps."""
    url = server if isinstance(server, str) else server.url
    options.setdefault("addresses", LOOPBACK)
    return OaiClient(url, sleep=sleeps if sleeps is not None else Sleeps(), **options)  # type: ignore[arg-type]


def stamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def harvest(client: OaiClient, **arguments: str) -> tuple[list[Page], list[Record]]:
    pages = list(client.pages("oai_dc", **arguments))  # type: ignore[arg-type]
    return pages, [record for page in pages for record in page.records]


def title(record: Record) -> str:
    assert record.metadata is not None
    return etree.fromstring(record.metadata).findtext(f"{DC}title") or ""


def expected(items: list[Item], **filters: object) -> dict[str, Item]:
    spec = filters.get("set_")
    since = filters.get("since")
    up_to = filters.get("up_to")
    return {
        item.identifier: item
        for item in items
        if (spec is None or any(s == spec or s.startswith(f"{spec}:") for s in item.sets))
        and (since is None or item.datestamp >= since)  # type: ignore[operator]
        and (up_to is None or item.datestamp <= up_to)  # type: ignore[operator]
    }


def check_records(records: list[Record], want: dict[str, Item]) -> None:
    """Every wanted record arrived exactly once with its datestamp, sets, deletion and title."""
    got = [r.identifier for r in records]
    assert len(got) == len(set(got)), "a record arrived twice"
    assert set(got) == set(want)
    for record in records:
        item = want[record.identifier]
        assert record.datestamp == stamp(item.datestamp)
        assert record.sets == item.sets
        assert record.deleted is item.deleted
        if item.deleted:
            assert record.metadata is None
        else:
            assert title(record) == item.fields["title"][0]


# ------------------------------------------------------------------------------ protocol


def test_identify_fields(provider: Provider, items: list[Item]) -> None:
    """H1: Identify first — granularity, deletedRecord, earliest datestamp, compression."""
    with client_for(provider) as client:
        info = client.identify()
    assert info.repository_name == "Loopback test repository"
    assert info.base_url == provider.url
    assert info.protocol_version == "2.0"
    assert info.earliest_datestamp == stamp(min(item.datestamp for item in items))
    assert info.deleted_record == "persistent"
    assert info.granularity == "YYYY-MM-DDThh:mm:ssZ"
    assert info.compression == ("gzip", "deflate")


def test_full_harvest_every_record_and_deletion(provider: Provider, items: list[Item]) -> None:
    """H2: ListRecords walks every page by resumptionToken; every record and deletion arrives."""
    assert any(item.deleted for item in items) and not all(item.deleted for item in items)
    with client_for(provider) as client:
        pages, records = harvest(client)
    assert len(pages) == math.ceil(TOTAL / BATCH)
    assert [len(page.records) for page in pages[:-1]] == [BATCH] * (len(pages) - 1)
    assert pages[-1].token is None and all(page.token for page in pages[:-1])
    assert pages[0].request == {"verb": "ListRecords", "metadataPrefix": "oai_dc"}
    for before, page in itertools.pairwise(pages):
        assert before.token is not None
        assert page.request == {"verb": "ListRecords", "resumptionToken": before.token.value}
    assert all(page.response_date.endswith("Z") for page in pages)
    check_records(records, expected(items))
    assert sum(r.deleted for r in records) == sum(i.deleted for i in items)
    assert [e.arguments.get("verb") for e in provider.faults.requests()] == ["ListRecords"] * len(
        pages
    )


def test_set_filter_is_hierarchical(provider: Provider, items: list[Item]) -> None:
    """H3: set= selects the set and its subsets (hist covers hist:modern and hist:ancient)."""
    with client_for(provider) as client:
        _, records = harvest(client, set_="hist")
        _, leaf = harvest(client, set_="sci:physics")
    check_records(records, expected(items, set_="hist"))
    assert any("hist:modern" in r.sets for r in records)
    check_records(leaf, expected(items, set_="sci:physics"))


def test_from_until_filters_inclusive(provider: Provider, items: list[Item]) -> None:
    """H4: from/until are inclusive, at second and at day granularity."""
    ordered = sorted(items, key=lambda i: i.datestamp)
    low, high = ordered[60].datestamp, ordered[140].datestamp
    with client_for(provider) as client:
        _, records = harvest(client, from_=stamp(low), until=stamp(high))
        day = (START + timedelta(days=4)).date()
        _, one_day = harvest(client, from_=day.isoformat(), until=day.isoformat())
    check_records(records, expected(items, since=low, up_to=high))
    assert {ordered[60].identifier, ordered[140].identifier} <= {r.identifier for r in records}
    day_start = datetime.combine(day, datetime.min.time())
    want_day = expected(items, since=day_start, up_to=day_start + timedelta(seconds=86399))
    assert want_day
    check_records(one_day, want_day)


def test_post_mode(provider: Provider, items: list[Item]) -> None:
    """H5: POST with application/x-www-form-urlencoded when configured."""
    with client_for(provider, method="POST") as client:
        _, records = harvest(client, set_="art")
    check_records(records, expected(items, set_="art"))
    methods = {e.method for e in provider.faults.requests()}
    assert methods == {"POST"}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_pages(provider: Provider, items: list[Item], encoding: str) -> None:
    """H6: the client asks for gzip and deflate and reads either."""
    provider.faults.encodings = (encoding,)
    with client_for(provider) as client:
        _, records = harvest(client, set_="sci")
    check_records(records, expected(items, set_="sci"))
    log = provider.faults.requests()
    assert all("gzip" in e.accept_encoding and "deflate" in e.accept_encoding for e in log)
    assert {e.content_encoding for e in log} == {encoding}


def test_no_records_match_is_an_empty_page(provider: Provider, items: list[Item]) -> None:
    """H7: noRecordsMatch is an empty result, not an error."""
    later = max(i.datestamp for i in items) + timedelta(days=1)
    with client_for(provider) as client:
        pages = list(client.pages("oai_dc", from_=stamp(later)))
    assert len(pages) == 1
    assert pages[0].records == [] and pages[0].token is None
    assert pages[0].request["from"] == stamp(later)


def test_cannot_disseminate_format(provider: Provider) -> None:
    """H8: an OAI error code becomes an exception carrying the code and the arguments."""
    with client_for(provider) as client, pytest.raises(CannotDisseminateFormat) as caught:
        client.list_records("marc21")
    assert caught.value.code == "cannotDisseminateFormat"
    assert caught.value.arguments["metadataPrefix"] == "marc21"
    assert provider.url in str(caught.value) and "metadataPrefix=marc21" in str(caught.value)
    assert len(provider.faults.requests()) == 1, "an OAI error is not retried"


def test_bad_argument(provider: Provider) -> None:
    """H8: badArgument (a malformed datestamp) is raised as BadArgument."""
    with client_for(provider) as client, pytest.raises(BadArgument) as caught:
        client.list_records("oai_dc", from_="last tuesday")
    assert isinstance(caught.value, OaiError) and caught.value.code == "badArgument"
    assert "from=last tuesday" in str(caught.value)


def test_no_set_hierarchy() -> None:
    """H8: a repository without sets answers noSetHierarchy to set=."""
    flat = [
        Item(f"oai:flat:{n}", START + timedelta(hours=n), fields={"title": ["t"]}) for n in range(5)
    ]
    for provider in running(Repository(flat, set_names={})):
        with client_for(provider) as client, pytest.raises(NoSetHierarchy):
            client.list_records("oai_dc", set_="anything")


# --------------------------------------------------------------------------- flow control


def test_retry_after_seconds_honoured(provider: Provider) -> None:
    """H9: 503 + Retry-After (seconds) is flow control: wait what the server said, then go on."""
    provider.faults.failing, provider.faults.retry_after = 2, "7"
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client:
        page = client.list_records("oai_dc")
    assert sleeps == [7.0, 7.0]
    assert len(page.records) == BATCH
    assert [e.status for e in provider.faults.requests()] == [503, 503, 200]


def test_retry_after_http_date_honoured(provider: Provider) -> None:
    """H9: Retry-After as an HTTP date is the time until that date."""
    provider.faults.failing = 1
    provider.faults.retry_after = format_datetime(datetime.now(UTC) + timedelta(seconds=40), True)
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client:
        client.list_records("oai_dc")
    assert len(sleeps) == 1 and 30 <= sleeps[0] <= 40


def test_retry_after_capped_then_bounded(provider: Provider) -> None:
    """H9: a huge Retry-After is capped per wait; the request fails once the next wait would
    pass the total, naming the URL and the server's answer."""
    provider.faults.failing, provider.faults.retry_after = 1000, "86400"
    sleeps = Sleeps()
    options = {"max_wait": 5.0, "max_total_wait": 12.0, "retries": 30, "backoff": 1.0}
    with client_for(provider, sleeps, **options) as client, pytest.raises(Throttled) as caught:
        client.list_records("oai_dc")
    assert sleeps == [5.0, 5.0]
    assert isinstance(caught.value, RemoteUnavailable)
    message = str(caught.value)
    assert provider.url in message and "503" in message and "86400" in message
    assert "come back later" in message and "metadataPrefix=oai_dc" in message
    assert len(provider.faults.requests()) == 3


PAST = format_datetime(datetime(2001, 1, 1, tzinfo=UTC), True)


@pytest.mark.parametrize(
    "retry_after",
    ["0", PAST, "soon", "-5", "1.5", "Wed, 21 Oct 2015 07:28:00 +99999999999999999999"],
    ids=["zero", "past-date", "word", "negative", "fraction", "overflowing-date"],
)
def test_retry_after_now_still_backs_off_and_gives_up(provider: Provider, retry_after: str) -> None:
    """C1: Retry-After 0, a date gone by or a value that cannot be read is not an invitation
    to hammer (nor a crash): every attempt counts, each wait is at least the backoff
    (doubling), and the request fails after `retries`."""
    provider.faults.failing, provider.faults.retry_after = 200, retry_after
    sleeps = Sleeps()
    with (
        client_for(provider, sleeps, backoff=2.0, retries=4) as client,
        pytest.raises(Throttled),
    ):
        client.list_records("oai_dc")
    assert sleeps == [2.0, 4.0, 8.0, 16.0]
    assert len(provider.faults.requests()) == 5


def test_retry_after_forever_stops_at_the_total_wait(provider: Provider) -> None:
    """C1: a repository that says Retry-After: 1 for ever is given up on once the waits would
    pass `max_total_wait`, however many attempts are left."""
    provider.faults.failing, provider.faults.retry_after = 10_000, "1"
    sleeps = Sleeps()
    options = {"backoff": 1.0, "retries": 1000, "max_total_wait": 10.0}
    with client_for(provider, sleeps, **options) as client, pytest.raises(Throttled):
        client.list_records("oai_dc")
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(provider.faults.requests()) == 4


def test_503_without_retry_after_backs_off(provider: Provider) -> None:
    """H10: a 5xx without Retry-After is retried with backoff * 2**n."""
    provider.faults.failing, provider.faults.fail_status = 3, 500
    provider.faults.retry_after = None
    sleeps = Sleeps()
    with client_for(provider, sleeps, backoff=3.0) as client:
        page = client.list_records("oai_dc")
    assert sleeps == [3.0, 6.0, 12.0] and page.records


def test_forbidden_is_not_retried(provider: Provider) -> None:
    """H10: a 4xx is a refusal; the guidelines say stop, so no retry."""
    provider.faults.failing, provider.faults.fail_status = 5, 403
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client, pytest.raises(AuthFailed):
        client.list_records("oai_dc")
    assert sleeps == [] and len(provider.faults.requests()) == 1


def test_network_errors_back_off_then_succeed(provider: Provider) -> None:
    """H10: a dropped connection is retried with exponential backoff (3 s, 6 s...)."""
    provider.faults.dropped = 2
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client:
        page = client.list_records("oai_dc")
    assert sleeps == [3.0, 6.0]
    assert len(page.records) == BATCH
    assert [e.status for e in provider.faults.log] == [None, None, 200]


def test_network_errors_give_up(provider: Provider) -> None:
    """H10: past `retries` the failure is RemoteUnavailable naming the URL and the arguments."""
    provider.faults.dropped = 100
    sleeps = Sleeps()
    with client_for(provider, sleeps, retries=2) as client, pytest.raises(RemoteUnavailable) as e:
        client.list_records("oai_dc", set_="art")
    assert sleeps == [3.0, 6.0]
    assert provider.url in str(e.value) and "set=art" in str(e.value)


def test_slow_page_beyond_timeout(provider: Provider) -> None:
    """H11: a page slower than the timeout is retried, and fails as RemoteUnavailable if it
    stays slow."""
    provider.faults.slow, provider.faults.slow_seconds = 1, 1.0
    sleeps = Sleeps()
    with client_for(provider, sleeps, timeout=0.3) as client:
        page = client.list_records("oai_dc")
        assert sleeps == [3.0] and page.records
        provider.faults.slow = 10
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable) as caught:
            client.list_records("oai_dc")
    assert time.monotonic() - started < 3
    assert "Timeout" in str(caught.value) and provider.url in str(caught.value)


# ---------------------------------------------------------------------------- bad pages


def test_illegal_characters_removed_and_counted(provider: Provider, items: list[Item]) -> None:
    """H12: characters XML 1.0 forbids are removed before parsing and counted on the page."""
    provider.faults.control_characters = 1
    with client_for(provider) as client:
        page = client.list_records("oai_dc")
        clean = client.next_page(page.token) if page.token else None
    live = [r for r in page.records if not r.deleted]
    assert live and page.removed_characters == ILLEGAL_COUNT * len(live)
    want = expected(items)
    assert all(title(r) == want[r.identifier].fields["title"][0] for r in live)
    assert clean is not None and clean.removed_characters == 0


def test_truncated_page_retried(provider: Provider) -> None:
    """H13: a truncated page is retried like a network error (often transient)."""
    provider.faults.truncated = 1
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client:
        page = client.list_records("oai_dc")
    assert sleeps == [3.0] and len(page.records) == BATCH


def test_truncated_page_fails_as_bad_page(provider: Provider) -> None:
    """H13: a page that stays broken ends in BadPage naming the URL, the line and an excerpt."""
    provider.faults.truncated = 100
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client, pytest.raises(BadPage) as caught:
        client.list_records("oai_dc")
    assert sleeps == [3.0, 6.0], "two retries, then failure"
    error = caught.value
    assert error.line is not None and error.line > 10
    assert error.excerpt and error.excerpt in str(error)
    assert provider.url in str(error) and "verb=ListRecords" in str(error)
    assert len(provider.faults.requests()) == 3


def test_doctype_refused(provider: Provider) -> None:
    """H14: a page with a DOCTYPE (here an XXE) is refused at once and never resolved."""
    provider.faults.doctype = 5
    sleeps = Sleeps()
    with client_for(provider, sleeps) as client, pytest.raises(UnsafePage) as caught:
        client.list_records("oai_dc")
    assert "DOCTYPE" in str(caught.value) and "root:" not in str(caught.value)
    assert sleeps == [] and len(provider.faults.requests()) == 1


# ------------------------------------------------------------------------- resumption


def test_bad_resumption_token_names_the_token(provider: Provider, items: list[Item]) -> None:
    """H15: badResumptionToken mid-harvest raises with the token, so the pipeline can restart
    from its last `from` with an overlap (shown here: the restart gets the rest)."""
    with client_for(provider) as client:
        first = client.list_records("oai_dc")
        second = client.next_page(first.token) if first.token else None
        assert second is not None and second.token is not None
        provider.faults.refuse_tokens = True
        with pytest.raises(BadResumptionToken) as caught:
            client.next_page(second.token)
        provider.faults.refuse_tokens = False
        last_seen = max(parse_datestamp(r.datestamp) for r in first.records + second.records)
        restart_from = format_datestamp(last_seen - timedelta(seconds=1), "YYYY-MM-DDThh:mm:ssZ")
        _, rest = harvest(client, from_=restart_from)
    error = caught.value
    assert error.token == second.token.value
    assert second.token.value in str(error) and provider.url in str(error)
    assert {r.identifier for r in first.records + second.records + rest} == set(expected(items))


def test_repeated_token_detected(provider: Provider) -> None:
    """H16: a repository that hands back the token it was sent is caught, not looped on."""
    seen: list[Page] = []
    with client_for(provider) as client, pytest.raises(RepeatedToken) as caught:
        for page in client.pages("oai_dc"):
            seen.append(page)
            if len(seen) == 3:
                provider.faults.repeated_tokens = 50
    assert len(seen) == 4
    assert seen[3].token == seen[2].token
    assert seen[2].token is not None and caught.value.token == seen[2].token.value
    assert seen[2].token.value in str(caught.value) and provider.url in str(caught.value)
    assert len(provider.faults.requests()) == 4


def test_resume_from_checkpointed_token(provider: Provider, items: list[Item]) -> None:
    """H17: a harvest resumed from a stored token starts at that page, never re-fetching the
    finished ones, and together they cover the list."""
    with client_for(provider) as client:
        walk = client.pages("oai_dc")
        done = [next(walk), next(walk), next(walk)]
        walk.close()
        checkpoint = done[-1].token
        assert checkpoint is not None
        requests_before = len(provider.faults.requests())
        rest = list(client.pages("oai_dc", resume=checkpoint))
    resumed = provider.faults.requests()[requests_before:]
    assert resumed[0].arguments == {"verb": "ListRecords", "resumptionToken": checkpoint.value}
    check_records([r for p in done + rest for r in p.records], expected(items))


# ------------------------------------------------------------------------------- parts


def test_format_datestamp_is_utc_at_granularity() -> None:
    """H18: incremental `from` is UTC at the repository's granularity; naive times refused."""
    moment = datetime(2024, 3, 1, 1, 30, 5, tzinfo=timezone(timedelta(hours=3)))
    assert format_datestamp(moment, "YYYY-MM-DDThh:mm:ssZ") == "2024-02-29T22:30:05Z"
    assert format_datestamp(moment, "YYYY-MM-DD") == "2024-02-29"
    assert parse_datestamp("2024-02-29T22:30:05Z") == moment
    with pytest.raises(ValueError, match="timezone-aware"):
        format_datestamp(datetime(2024, 3, 1), "YYYY-MM-DD")
    with pytest.raises(ValueError, match="granularity"):
        format_datestamp(moment, "YYYY")


PIECES = st.sampled_from(
    [b"a", b"<t>", b"&amp;", b"&#x1F;", b"&#11;", b"&#x41;", b"&#65;", b"\x0b", b"\x01", b"\t",
     b"\xef\xbf\xbf", b"\xef\xbf\xbe", "é".encode(), "€".encode(), b"&#x0000B;", b"&#65535;"]
)  # fmt: skip


@given(st.lists(PIECES, max_size=40), st.lists(st.integers(0, 400), max_size=8))
def test_illegal_character_filter_across_chunks(pieces: list[bytes], cuts: list[int]) -> None:
    """H12: removal does not depend on where the network split the stream."""
    data = b"".join(pieces)
    whole = ILLEGAL_XML.sub(b"", data)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    cleaner = IllegalCharacterFilter()
    out = b"".join(cleaner.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    out += cleaner.close()
    assert out == whole
    assert cleaner.removed == len(ILLEGAL_XML.findall(data))
    etree.fromstring(b"<r>" + out.replace(b"<t>", b"") + b"</r>")


# ------------------------------------------------------------------- outbound addresses


def test_loopback_repository_is_refused_by_default(provider: Provider) -> None:
    """B2: without an allow-list a repository on loopback is never contacted, nor retried."""
    sleeps = Sleeps()
    with (
        OaiClient(provider.url, sleep=sleeps) as client,
        pytest.raises(RemoteRefused) as caught,
    ):
        client.identify()
    assert "loopback" in str(caught.value) and "allow_private_hosts" in str(caught.value)
    assert provider.faults.requests() == [] and sleeps == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.255.0.1/oai", "private"),
        ("http://192.168.77.1:8080/oai", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/oai", "link-local"),
        ("http://[::ffff:127.0.0.1]:{port}/oai", "loopback"),
        ("http://[::ffff:169.254.169.254]/oai", "link-local"),
        ("http://localhost:{port}/oai", "loopback"),
    ],
)
def test_non_public_addresses_are_refused_without_a_connection(
    provider: Provider, url: str, kind: str
) -> None:
    """B2: private, link-local and IPv4-mapped IPv6 forms are refused before any packet."""
    port = provider.url.split(":")[2].split("/")[0]
    sleeps = Sleeps()
    started = time.monotonic()
    with (
        OaiClient(url.format(port=port), sleep=sleeps, timeout=30) as client,
        pytest.raises(RemoteRefused, match=kind),
    ):
        client.list_records("oai_dc")
    assert time.monotonic() - started < 2, "refused without trying to connect"
    assert provider.faults.requests() == [] and sleeps == []


def test_a_redirect_into_a_refused_address_is_not_followed() -> None:
    """B2: an allowed repository that redirects elsewhere has each hop checked: another loopback
    address (not allowed) and the cloud metadata address are refused, never reached."""
    with Hostile("127.0.0.2") as inside, Hostile() as front:
        inside.route("/oai", plain(200, b"<internal>secret</internal>"))
        front.route("/hop", redirect(f"{inside.url}/oai"))
        front.route("/meta", redirect("http://169.254.169.254/latest/meta-data/"))
        for path, kind in (("/hop", "loopback"), ("/meta", "link-local")):
            sleeps = Sleeps()
            with (
                client_for(f"{front.url}{path}", sleeps) as client,
                pytest.raises(RemoteRefused, match=kind) as caught,
            ):
                client.identify()
            assert "secret" not in str(caught.value) and sleeps == []
        assert inside.requests == [] and front.requests == ["/hop", "/meta"]


def test_error_bodies_are_quoted_short_and_clean() -> None:
    """B2: a remote answer is quoted as a short excerpt on one line, without control
    characters, so an error readable by viewers cannot carry a whole internal page."""
    body = b"Forbidden\r\n\x1b[31mline two\x1b[0m\t" + b"x" * 400 + b" SECRET-AT-THE-END"
    with Hostile() as hostile:
        hostile.route("/oai", plain(403, body))
        with (
            client_for(f"{hostile.url}/oai") as client,
            pytest.raises(AuthFailed) as caught,
        ):
            client.identify()
    error = caught.value
    message = str(error)
    assert "Forbidden line two" in message
    assert "SECRET" not in message and "\n" not in message and "\x1b" not in message
    assert len(error.body) <= oaipmh_module.QUOTED
    # a long answer is quoted from its start all the same
    with Hostile() as hostile:
        hostile.route("/oai", plain(404, b"Not here. " + b"y" * 100_000))
        with (
            client_for(f"{hostile.url}/oai") as client,
            pytest.raises(RemoteRefused) as long_answer,
        ):
            client.identify()
    assert "Not here. yyy" in str(long_answer.value)


# --------------------------------------------------------------------- resource limits


class CountingSpool(oaipmh_module.SpooledTemporaryFile):  # type: ignore[misc,name-defined]
    """The client's spool, counting the bytes written to it."""

    written = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        CountingSpool.written += len(data)
        return super().write(data)


@pytest.fixture
def spool(monkeypatch: pytest.MonkeyPatch) -> type[CountingSpool]:
    """The client spools into a CountingSpool, counted from zero."""
    monkeypatch.setattr(oaipmh_module, "SpooledTemporaryFile", CountingSpool)
    CountingSpool.written = 0
    return CountingSpool


def test_a_gzip_bomb_stops_at_the_byte_cap(spool: type[CountingSpool]) -> None:
    """B4: a body that inflates past `max_bytes` is refused as it inflates (the spool never
    holds more than the cap) and not fetched again: it would be as big the next time."""
    cap = 1 << 20
    sleeps = Sleeps()
    with Hostile() as hostile:
        hostile.route("/oai", gzip_bomb(40 << 20))
        with (
            client_for(f"{hostile.url}/oai", sleeps, max_bytes=cap) as client,
            pytest.raises(PageTooLarge) as caught,
        ):
            client.list_records("oai_dc")
        assert hostile.requests == ["/oai"]
    assert "1048576 bytes" in str(caught.value)
    assert spool.written <= cap and sleeps == []


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("deflate", lambda: zlib.compress(OAI_HEAD + b" " * (40 << 20), 9)),
        ("deflate", lambda: raw_deflate(OAI_HEAD + b" " * (40 << 20))),
        ("gzip", lambda: gzip.compress(OAI_HEAD) + gzip.compress(b" " * (4 << 20), 9) * 10),
        ("", lambda: OAI_HEAD + b" " * (40 << 20)),
    ],
    ids=["zlib", "raw-deflate", "gzip-members", "identity"],
)
def test_every_body_stops_at_the_byte_cap(
    spool: type[CountingSpool], encoding: str, body: Callable[[], bytes]
) -> None:
    """B4: a deflate bomb (zlib or raw), a bomb of many gzip members and a plain body without
    Content-Length all stop at the cap as they arrive, fetched once."""
    cap = 1 << 20
    sleeps = Sleeps()
    with Hostile() as hostile:
        headers = {"Content-Encoding": encoding} if encoding else {}
        hostile.route("/oai", unframed(body(), headers))
        with (
            client_for(f"{hostile.url}/oai", sleeps, max_bytes=cap) as client,
            pytest.raises(PageTooLarge, match="inflates past 1048576 bytes"),
        ):
            client.list_records("oai_dc")
        assert hostile.requests == ["/oai"]
    assert spool.written <= cap and sleeps == []


@pytest.mark.parametrize("encoding", ["gzip, gzip", "br", "zstd", "compress"])
def test_a_content_encoding_not_asked_for_is_refused_once(encoding: str) -> None:
    """B4: the client asks for gzip or deflate; a body in another coding, or in two (each
    one a chance to multiply), is refused with the coding named, and not fetched again: it
    would come the same way."""
    sleeps = Sleeps()
    with Hostile() as hostile:
        hostile.route("/oai", plain(200, gzip.compress(OAI_HEAD), {"Content-Encoding": encoding}))
        with (
            client_for(f"{hostile.url}/oai", sleeps) as client,
            pytest.raises(BadPage, match=f"unsupported Content-Encoding '{encoding}'"),
        ):
            client.list_records("oai_dc")
        assert hostile.requests == ["/oai"]
    assert sleeps == []


@pytest.mark.parametrize("route", [drip_body(0.05), drip_headers(0.05)], ids=["body", "headers"])
def test_a_dripping_server_is_cut_at_the_request_deadline(route: object) -> None:
    """B4: a server sending a byte every 50 ms never trips the 1 s read timeout; the request's
    own deadline ends it (and says so)."""
    sleeps = Sleeps()
    with Hostile() as hostile:
        hostile.route("/oai", route)  # type: ignore[arg-type]
        started = time.monotonic()
        with (
            client_for(
                f"{hostile.url}/oai", sleeps, timeout=1.0, deadline=0.6, retries=0
            ) as client,
            pytest.raises(RemoteUnavailable) as caught,
        ):
            client.list_records("oai_dc")
        took = time.monotonic() - started
    assert took < 1.6
    assert "deadline" in str(caught.value)


# ---------------------------------------------------------------------------- salvage

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
PAGE_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<OAI-PMH xmlns="{OAI_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
    "<responseDate>2024-05-01T10:00:00Z</responseDate>\n"
    '<request verb="ListRecords" metadataPrefix="oai_dc">http://repo.test/oai</request>\n'
    "<ListRecords>\n"
)
PAGE_TAIL = (
    '<resumptionToken cursor="0" completeListSize="99">tok-1</resumptionToken>\n'
    "</ListRecords>\n</OAI-PMH>\n"
)


def dc_record(identifier: str, title: str = "A title", *, opening: str = "<record>") -> str:
    name = opening[1:].split()[0].rstrip(">")
    prefix = name.split(":")[0] + ":" if ":" in name else ""
    return (
        f"{opening}<{prefix}header><{prefix}identifier>{identifier}</{prefix}identifier>"
        f"<{prefix}datestamp>2024-04-01</{prefix}datestamp></{prefix}header>"
        f"<{prefix}metadata><oai_dc:dc xmlns:oai_dc='http://www.openarchives.org/OAI/2.0/oai_dc/' "
        f"xmlns:dc='http://purl.org/dc/elements/1.1/'><dc:title>{title}</dc:title></oai_dc:dc>"
        f"</{prefix}metadata></{name}>\n"
    )


MARC_RECORD = (
    "<record><header><identifier>oai:x:E</identifier><datestamp>2024-04-01</datestamp></header>"
    '<metadata><record xmlns="http://www.loc.gov/MARC21/slim"><leader>00000nam</leader>'
    '<datafield tag="245"><subfield code="a">Marc title</subfield></datafield></record>'
    "</metadata></record>\n"
)


def salvage_example() -> bytes:
    """A page that does not parse, holding eight records opened in every legal way and a few
    broken ones, each broken in its own way."""
    xmlns = f'<record xmlns="{OAI_NS}">'
    parts = [
        dc_record("oai:x:A"),
        dc_record("oai:x:B", opening=xmlns),
        dc_record(
            "oai:x:C", '<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>&x;', opening=xmlns
        ),
        dc_record("oai:x:D", opening=f'<oai:record xmlns:oai="{OAI_NS}">'),
        MARC_RECORD,
        dc_record("oai:x:F", "<unclosed>"),
        dc_record("oai:x:G", opening="<recrd>"),
        '<record><header status="deleted"><identifier>oai:x:H</identifier>'
        "<datestamp>2024-04-02</datestamp></header></record>\n",
        dc_record("oai:x:I", "caf\udce9"),  # a Latin-1 byte: not UTF-8
    ]
    text = PAGE_HEAD + "".join(parts) + PAGE_TAIL
    return text.encode("utf-8", "surrogateescape")


def test_salvage_keeps_every_record_or_says_why_not() -> None:
    """C4: every record of an unparseable page is either read or refused under its own
    identifier with its own reason, whatever way its start tag is written; nothing vanishes."""
    raw = salvage_example()
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(raw)
    answer = salvage_page(raw)
    assert answer is not None
    assert [r.identifier for r in answer.records] == [
        "oai:x:A",
        "oai:x:B",
        "oai:x:D",
        "oai:x:E",
        "oai:x:H",
    ]
    refused = {b.identifier: b.reason for b in answer.broken}
    assert set(refused) == {"oai:x:C", "oai:x:F", "oai:x:G", "oai:x:I"}
    assert "DOCTYPE" in refused["oai:x:C"]
    assert "malformed" in refused["oai:x:F"]
    assert "recrd" in refused["oai:x:G"]
    assert "UTF-8" in refused["oai:x:I"]
    assert len(answer.records) + len(answer.broken) == 9
    marc = next(r for r in answer.records if r.identifier == "oai:x:E")
    assert marc.metadata is not None and b"Marc title" in marc.metadata
    assert next(r for r in answer.records if r.identifier == "oai:x:H").deleted
    assert answer.token is not None and answer.token.value == "tok-1"
    assert answer.response_date == "2024-05-01T10:00:00Z"


def test_salvage_through_the_client() -> None:
    """C4: the client salvages such a page (when asked) instead of failing the harvest."""
    with Hostile() as hostile:
        hostile.route("/oai", plain(200, salvage_example()))
        with client_for(f"{hostile.url}/oai", salvage=True) as client:
            page = client.list_records("oai_dc")
    assert len(page.records) == 5 and len(page.broken) == 4
    assert page.token is not None and page.token.value == "tok-1"


def test_a_page_with_a_doctype_before_its_root_is_not_salvaged() -> None:
    """C4: entities declared for the whole page would make every record suspect: refused."""
    raw = salvage_example().replace(
        b"<OAI-PMH", b'<!DOCTYPE OAI-PMH [<!ENTITY e "x">]>\n<OAI-PMH', 1
    )
    assert salvage_page(raw) is None


def hostile_page(junk: bytes) -> bytes:
    """A whole ListRecords page: one good record, then `junk` (markup a parser refuses)."""
    return (PAGE_HEAD + dc_record("oai:x:A")).encode() + junk + PAGE_TAIL.encode()


@pytest.mark.parametrize(
    ("junk", "salvaged"),
    [
        (b"<!--" * 60_000, False),  # comments, CDATA, PIs and DOCTYPEs that never end:
        (b"<![CDATA[" * 30_000, False),  # the rest of the page is inside them
        (b"<?" * 100_000, False),
        (b"<!DOCTYPE x [" * 20_000, False),
        (b"<bad>" + b"</x" * 60_000 + b" </bad>", True),  # end tags never closed, one after another
        (b"<bad>" + b"<a>" * 60_000 + b"</zz>" * 60_000 + b"</bad>", True),  # deep, unmatched ends
    ],
    ids=["comment", "cdata", "pi", "doctype", "end-tags", "deep"],
)
def test_salvage_takes_linear_time_on_hostile_markup(junk: bytes, salvaged: bool) -> None:
    """C4/B4: scanning an unparseable page costs time in proportion to its size: markup that
    never ends, or nesting as deep as the page allows, cannot make one page take minutes (each
    of these ~200 KB pages took 30 s to several minutes; a page may be 64 MiB)."""
    raw = hostile_page(junk)
    started = time.monotonic()
    answer = salvage_page(raw)
    assert time.monotonic() - started < 3
    if not salvaged:
        assert answer is None  # where the page's records end is unknown: not salvaged
        return
    assert answer is not None
    assert [r.identifier for r in answer.records] == ["oai:x:A"]
    assert [b.reason for b in answer.broken] == ["not a record element: <bad>"]
    assert answer.token is not None and answer.token.value == "tok-1"


def test_salvage_of_a_page_with_many_namespace_declarations_is_linear() -> None:
    """C4/B4: each record is parsed under the declarations it uses, not under every one the
    page makes (4,000 declarations x 4,000 records took minutes)."""
    declarations = "".join(f' xmlns:p{i}="urn:p{i}"' for i in range(4000))
    head = PAGE_HEAD.replace("<ListRecords>", f"<ListRecords{declarations}>")
    records = "".join(dc_record(f"oai:x:{i}") for i in range(4000))
    broken = "<record><header><identifier>oai:x:bad</identifier></header><metadata>&x;</metadata></record>"
    used = (
        "<record><header><identifier>oai:x:p7</identifier><datestamp>2024-04-01</datestamp>"
        "</header><metadata><p7:t>seven</p7:t></metadata></record>"
    )
    raw = (head + records + broken + used + PAGE_TAIL).encode()
    started = time.monotonic()
    answer = salvage_page(raw)
    assert time.monotonic() - started < 3
    assert answer is not None
    assert len(answer.records) == 4001 and [b.identifier for b in answer.broken] == ["oai:x:bad"]
    seven = answer.records[-1]
    assert seven.identifier == "oai:x:p7" and seven.metadata is not None
    assert etree.fromstring(seven.metadata).tag == "{urn:p7}t"


def test_a_salvaged_record_is_named_only_by_its_header() -> None:
    """C4: a record without a readable header is refused without a name; it is not named after
    an identifier in its metadata (which may be another record's)."""
    headless = (
        "<record><metadata><oai_dc:dc xmlns:oai_dc='http://www.openarchives.org/OAI/2.0/oai_dc/'"
        " xmlns:dc='http://purl.org/dc/elements/1.1/'><dc:identifier>oai:x:A</dc:identifier>"
        "</oai_dc:dc></metadata></record>\n"
    )
    raw = (PAGE_HEAD + dc_record("oai:x:A") + headless + dc_record("oai:x:B", "&nbsp;")).encode()
    answer = salvage_page(raw + PAGE_TAIL.encode())
    assert answer is not None
    assert [r.identifier for r in answer.records] == ["oai:x:A"]
    assert [(b.identifier, "header" in b.reason) for b in answer.broken] == [
        (None, True),
        ("oai:x:B", False),
    ]
    # the reason does not point into the cut-out fragment (its lines and columns are not the
    # page's)
    assert "column" not in answer.broken[1].reason


def test_protocol_elements_inside_metadata_are_metadata() -> None:
    """A record's metadata may hold elements of the OAI-PMH namespace below its root (the
    schema's ##other is for the root only): they are part of the record, not a record, an
    error, a responseDate or a token of the page, and the record's metadata stays whole."""
    inner = (
        f"<w:wrap xmlns:w='urn:w' xmlns:o='{OAI_NS}'>"
        "<o:record><o:header><o:identifier>oai:x:inner</o:identifier></o:header></o:record>"
        "<o:responseDate>1999-01-01T00:00:00Z</o:responseDate>"
        "<o:error code='badArgument'>not mine</o:error>"
        "<o:resumptionToken>not-mine</o:resumptionToken><w:t>kept</w:t></w:wrap>"
    )
    page = (
        PAGE_HEAD
        + "<record><header><identifier>oai:x:A</identifier><datestamp>2024-04-01</datestamp>"
        f"</header><metadata>{inner}</metadata></record>" + PAGE_TAIL
    ).encode()
    with Hostile() as hostile:
        hostile.route("/oai", plain(200, page))
        with client_for(f"{hostile.url}/oai") as client:
            got = client.list_records("oai_dc")
    assert [r.identifier for r in got.records] == ["oai:x:A"]
    assert got.response_date == "2024-05-01T10:00:00Z"
    assert got.token is not None and got.token.value == "tok-1"
    metadata = got.records[0].metadata
    assert metadata is not None
    wrap = etree.fromstring(metadata)
    assert wrap.findtext(f"{{{OAI_NS}}}record/{{{OAI_NS}}}header/{{{OAI_NS}}}identifier") == (
        "oai:x:inner"
    )
    assert wrap.findtext("{urn:w}t") == "kept"


def test_a_redirect_to_a_host_that_cannot_be_written_is_refused() -> None:
    """B2: a Location whose host is not a valid name (IDNA) ends the request as a refusal
    naming it, not as an unexpected exception."""
    with Hostile() as hostile:
        hostile.route("/oai", redirect("http://xn--localhost/oai"))
        with (
            client_for(f"{hostile.url}/oai") as client,
            pytest.raises(RemoteRefused, match="Location cannot be used"),
        ):
            client.identify()


def test_a_list_of_sets_without_end_stops() -> None:
    """B4: a repository answering ListSets with empty pages and a new token each time (sets
    only label records) is given up on after a bounded number of pages, not followed for
    ever."""
    served = itertools.count()

    def endless(conn: object, stop: object) -> None:
        page = (
            OAI_HEAD.replace(b"ListRecords", b"ListSets")
            + f"<resumptionToken>t{next(served)}</resumptionToken></ListSets></OAI-PMH>".encode()
        )
        plain(200, page)(conn, stop)  # type: ignore[arg-type]

    with Hostile() as hostile:
        hostile.route("/oai", endless)
        with (
            client_for(f"{hostile.url}/oai") as client,
            pytest.raises(RemoteRefused, match="ListSets"),
        ):
            client.list_sets()
        assert len(hostile.requests) == oaipmh_module.MAX_SET_PAGES


def test_records_inside_comments_cdata_and_pis_are_not_records() -> None:
    """C4: markup that only looks like a record (in a comment, a CDATA section, a processing
    instruction) is neither stored nor refused: the counts hold the page's real records only."""
    ghost = "<record><header><identifier>oai:x:ghost</identifier></header></record>"
    raw = (
        PAGE_HEAD
        + dc_record("oai:x:A")
        + f"<!-- {ghost} -->"
        + dc_record("oai:x:B", f"<![CDATA[ {ghost} ]]>")
        + f"<?pi {ghost} ?>"
        + dc_record("oai:x:C", "&nbsp;")
        + dc_record("oai:x:D", opening=f'<o:record xmlns:o="{OAI_NS}">')
        + PAGE_TAIL
    ).encode()
    answer = salvage_page(raw)
    assert answer is not None
    assert [r.identifier for r in answer.records] == ["oai:x:A", "oai:x:B", "oai:x:D"]
    assert [b.identifier for b in answer.broken] == ["oai:x:C"]
    title = etree.fromstring(answer.records[1].metadata or b"").findtext(f"{DC}title")
    assert title == f" {ghost} "
