"""Solr: the emulator's contract with raw HTTP (S1..S5 of sandbox/solr.py, so it stays faithful to
Solr rather than to our client), then SolrClient and SolrTarget against it over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shelfwork.connectors import AuthFailed, NotFound, RemoteRefused, RemoteUnavailable
from shelfwork.connectors.solr import (
    SolrClient,
    SolrTarget,
    solr_document,
    solr_field,
    term_query,
)
from shelfwork.errors import ConfigError
from shelfwork.sandbox import RunningServer, free_port
from shelfwork.sandbox.solr import SolrCore, SolrSchema, SolrState, serve_solr
from shelfwork.search import IndexDocument

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[SolrState, RunningServer]]:
    state = SolrState()
    running = serve_solr(state)
    yield state, running
    running.stop()


@pytest.fixture
def solr(server: tuple[SolrState, RunningServer]) -> SolrState:
    """The module's emulator, emptied and with every fault switched off."""
    state = server[0]
    with state._lock:
        state.cores = {"oai": SolrCore("oai")}
        state.schema = SolrSchema()
        state.credentials = None
        state.down = False
        state.latency = 0.0
        state.failures.clear()
        state.calls.clear()
    return state


def post(state: SolrState, body: Any, *, params: str = "", core: str = "oai") -> httpx.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{state.url}/{core}/update{params}", content=data, headers=JSON)


def select(state: SolrState, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{state.url}/oai/select", params={"q": "*:*", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def found(state: SolrState, **params: Any) -> list[str]:
    return [d["id"] for d in select(state, rows=100, **params)["response"]["docs"]]


def solr_error_of(r: httpx.Response, status: int) -> str:
    """Solr's error shape (S4): the status three times, and the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["responseHeader"]["status"] == status
    assert body["error"]["code"] == status
    assert body["error"]["metadata"][0] == "error-class"
    return str(body["error"]["msg"])


def d(doc_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": doc_id, "network": "RI", **fields}


# --- the emulator's contract ----------------------------------------------------------------------


def test_s1_s2_an_array_adds_and_nothing_shows_before_a_commit(solr: SolrState) -> None:
    r = post(solr, [d("a", dc_title=["A"]), d("b")])
    assert r.status_code == 200 and r.json()["responseHeader"]["status"] == 0
    assert found(solr) == [] and select(solr)["response"]["numFound"] == 0
    assert httpx.post(f"{solr.url}/oai/update?commit=true").status_code == 200  # no body
    assert found(solr) == ["a", "b"]
    doc = select(solr, fq="id:a")["response"]["docs"][0]
    assert doc["dc_title"] == ["A"] and doc["network"] == "RI" and doc["_version_"] > 0


def test_s1_commands_repeat_and_run_in_order(solr: SolrState) -> None:
    body = (
        '{"add": {"doc": {"id": "a", "network": "RI"}}, "add": {"doc": {"id": "b"}},'
        ' "add": [{"id": "c"}, {"id": "d"}], "delete": "b", "commit": {},'
        ' "add": {"doc": {"id": "e"}, "overwrite": true, "commitWithin": 100000}}'
    )
    assert post(solr, body).status_code == 200
    assert found(solr) == ["a", "c", "d"]  # e came after the commit
    assert post(solr, {"commit": {}}).status_code == 200
    assert found(solr) == ["a", "c", "d", "e"]


@pytest.mark.parametrize(
    "delete",
    [
        ["a", "c"],
        [{"id": "a"}, "c"],
        {"query": "network:RI"},
        {"query": 'network:"RI"'},
    ],
)
def test_s1_every_delete_form(solr: SolrState, delete: Any) -> None:
    post(solr, [d("a"), {"id": "b", "network": "LA"}, d("c")], params="?commit=true")
    assert post(solr, {"delete": delete, "commit": {}}).status_code == 200
    assert found(solr) == ["b"]


def test_s1_single_id_and_id_object_deletes(solr: SolrState) -> None:
    post(solr, [d("a"), d("b"), d("c")], params="?commit=true")
    assert post(solr, '{"delete": "a", "delete": {"id": "b"}}', params="?commit=true").is_success
    assert found(solr) == ["c"]
    assert post(solr, '"a scalar at the top"').status_code == 200  # ignored, as Solr does


def test_s2_replacing_moves_to_the_end_and_rollback_drops_pending(solr: SolrState) -> None:
    post(solr, [d("a", dc_title=["old"]), d("b")], params="?commit=true")
    post(solr, [d("a", dc_title=["new"])], params="?softCommit=true")
    assert found(solr) == ["b", "a"]
    assert select(solr, fq="id:a")["response"]["docs"][0]["dc_title"] == ["new"]
    post(solr, [d("z")])
    post(solr, {"delete": "b"})
    assert post(solr, {"rollback": {}}).status_code == 200
    post(solr, {"commit": {}})
    assert found(solr) == ["b", "a"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ("{not json", 400, "Cannot parse provided JSON"),
        ('{"frobnicate": {}}', 400, "Unknown command 'frobnicate'"),
        ('[{"network": "RI"}]', 400, "missing mandatory uniqueKey field: id"),
        ('[{"id": "x", "title": "t"}]', 400, "ERROR: [doc=x] unknown field 'title'"),
        (
            '[{"id": "x", "network": ["RI", "LA"]}]',
            400,
            "multiple values encountered for non multiValued field network: [RI, LA]",
        ),
        ('[{"id": "x", "datestamp": "2024-13"}]', 400, "Invalid Date String:'2024-13'"),
        ('{"delete": {}}', 400, "Missing id or query for delete"),
        ('{"delete": {"idd": "x"}}', 400, "Unknown key 'idd'"),
        ('{"delete": {"query": "title:x"}}', 400, "undefined field title"),
        ('{"delete": {"query": "a AND b"}}', 400, "SyntaxError: Cannot parse"),
        ('{"add": {"doc": {"id": "x"}, "doc": {"id": "y"}}}', 400, "Multiple documents"),
        ('{"add": {"overwrite": true}}', 400, "Missing solr document"),
        ('{"commit": true}', 400, "Expected: OBJECT_START but got BOOLEAN"),
        ('["x"]', 400, "Expected: OBJECT_START but got STRING"),
    ],
)
def test_s3_s4_bad_bodies_get_solr_errors(
    solr: SolrState, body: str, status: int, says: str
) -> None:
    assert says in solr_error_of(post(solr, body), status)


def test_s1_commands_before_a_failing_one_stay_applied(solr: SolrState) -> None:
    r = post(solr, [d("good"), {"id": "bad", "nope": 1}, d("never")])
    assert "unknown field 'nope'" in solr_error_of(r, 400)
    post(solr, {"commit": {}})
    assert found(solr) == ["good"]


def test_s4_content_type_core_and_credentials(solr: SolrState) -> None:
    r = httpx.post(f"{solr.url}/oai/update", content="<add/>", headers={"Content-Type": "text/xml"})
    assert "Unsupported ContentType: text/xml" in solr_error_of(r, 415)
    r = httpx.post(f"{solr.url}/oai/update", content="[]", headers={"Content-Type": ""})
    assert solr_error_of(r, 400) == "Missing ContentType"
    missing = post(solr, [], core="nocore")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    solr.credentials = ("indexer", "s3cret")
    anonymous = post(solr, [])
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="solr"'
    wrong = httpx.post(f"{solr.url}/oai/update", content="[]", headers=JSON, auth=("indexer", "x"))
    assert wrong.status_code == 401 and "Bad credentials" in wrong.text
    right = httpx.post(f"{solr.url}/oai/update", content="[]", headers=JSON, auth=solr.credentials)
    assert right.status_code == 200


def test_s5_select_filters_pages_and_picks_fields(solr: SolrState) -> None:
    docs = [d(f"r{i}", dc_subject=["even" if i % 2 == 0 else "odd"]) for i in range(7)]
    post(solr, [*docs, {"id": "x", "network": 'we"ird'}], params="?commit=true")
    body = select(solr, fq=["network:RI", "dc_subject:even"], rows=2, start=1, fl="id,dc_subject")
    assert body["response"]["numFound"] == 4 and body["response"]["start"] == 1
    assert body["response"]["docs"] == [
        {"id": "r2", "dc_subject": ["even"]},
        {"id": "r4", "dc_subject": ["even"]},
    ]
    assert body["responseHeader"]["params"]["fq"] == ["network:RI", "dc_subject:even"]
    assert found(solr, q='network:"we\\"ird"') == ["x"]
    bad = httpx.get(f"{solr.url}/oai/select", params={"q": "*:*", "rows": "ten"})
    assert solr_error_of(bad, 400) == 'For input string: "ten"'


def test_faults_answer_in_solr_shape(solr: SolrState) -> None:
    solr.fail_next(2, 503)
    assert "injected" in solr_error_of(post(solr, []), 503)
    assert "injected" in solr_error_of(post(solr, []), 503)
    assert post(solr, []).status_code == 200
    solr.down = True
    assert "down" in solr_error_of(post(solr, []), 503)


# --- the client and the target ----------------------------------------------------------------------


def record(network: str, identifier: str, title: str, **fields: list[str]) -> IndexDocument:
    return IndexDocument(
        network,
        identifier,
        datetime(2024, 6, 1, 8, 30, 15, 999, tzinfo=UTC),
        ("col_1", "col_1:theses"),
        {"dc.title": [title], **{k.replace("_", "."): v for k, v in fields.items()}},
    )


@pytest.fixture
def client(solr: SolrState) -> Iterator[SolrClient]:
    with SolrClient(solr.url, "oai", batch=3, timeout=5) as c:
        yield c


def test_documents_are_mapped_to_solr_fields() -> None:
    doc = IndexDocument(
        "RI",
        "oai:repo:1",
        datetime(2024, 6, 1, 8, 30, 15, 999),  # naive: UTC
        ("col_1",),
        {
            "dc.title": ["T"],
            "dc.date.issued": ["2020"],
            "dc.creator": ["A", "B"],
            "dc.subject": "one value",
            "dc.rights": [],
            "id": ["collides"],
            "2x": ["digit first"],
        },
    )
    assert solr_document(doc) == {
        "id": "RI:oai:repo:1",
        "network": "RI",
        "identifier": "oai:repo:1",
        "datestamp": "2024-06-01T08:30:15Z",
        "sets": ["col_1"],
        "dc_title": ["T"],
        "dc_date_issued": ["2020"],
        "dc_creator": ["A", "B"],
        "dc_subject": ["one value"],
        "f_id": ["collides"],
        "f_2x": ["digit first"],
    }
    assert solr_field("dcterms.abstract") == "dcterms_abstract"
    assert term_query("network", 'a"b\\c') == 'network:"a\\"b\\\\c"'


def test_target_upserts_in_batches_visible_only_after_commit(
    solr: SolrState, client: SolrClient
) -> None:
    target = SolrTarget(client)
    assert target.name == "solr"
    target.upsert([record("RI", f"oai:r:{i}", f"Title {i}", dc_creator=["X"]) for i in range(7)])
    assert solr.calls["POST /solr/oai/update"] == 3  # batches of 3, 3, 1
    assert client.select().num_found == 0 and solr.uncommitted()
    target.commit()
    results = client.select("network:RI", rows=100)
    assert results.num_found == 7 and not solr.uncommitted()
    first = solr.committed()["RI:oai:r:0"]
    assert first["dc_title"] == ["Title 0"] and first["dc_creator"] == ["X"]
    assert first["datestamp"] == "2024-06-01T08:30:15Z"
    assert first["sets"] == ["col_1", "col_1:theses"] and first["identifier"] == "oai:r:0"
    target.upsert([record("RI", "oai:r:0", "Replaced")])
    target.commit()
    assert solr.committed()["RI:oai:r:0"]["dc_title"] == ["Replaced"]
    assert client.select(rows=0).num_found == 7


def test_target_deletes_by_id_and_clears_one_network(solr: SolrState, client: SolrClient) -> None:
    target = SolrTarget(client)
    target.upsert([record("RI", f"r{i}", "t") for i in range(5)])
    target.upsert([record("LA", "r1", "t"), record("LA", "r2", "t")])
    target.commit()
    target.delete("RI", ["r1", "r3", "missing", "r4", "r0"])  # two requests of 3 and 2 ids
    assert client.select(rows=0).num_found == 7  # not before the commit
    target.commit()
    assert sorted(solr.committed()) == ["LA:r1", "LA:r2", "RI:r2"]
    target.clear("LA")
    target.commit()
    assert sorted(solr.committed()) == ["RI:r2"]
    target.delete("RI", [])
    # adds 2 + 1, commit, deletes 2, commit, clear, commit; nothing for an empty delete
    assert solr.calls["POST /solr/oai/update"] == 2 + 1 + 1 + 2 + 1 + 1 + 1


def test_solr_refusals_carry_solrs_message(solr: SolrState, client: SolrClient) -> None:
    solr.schema = SolrSchema(dynamic_prefixes=())  # a core without the dc_* field
    with pytest.raises(RemoteRefused) as caught:
        SolrTarget(client).upsert([record("RI", "r1", "t")])
    err = caught.value
    assert err.status == 400 and err.system == "Solr"
    assert "ERROR: [doc=RI:r1] unknown field 'dc_title'" in str(err)
    assert "adding 1 document(s) to core 'oai'" in str(err)
    assert err.body == "ERROR: [doc=RI:r1] unknown field 'dc_title'"
    assert not isinstance(err, RemoteUnavailable)


def test_a_failed_batch_leaves_the_earlier_ones_pending(
    solr: SolrState, client: SolrClient
) -> None:
    solr.fail_next(1, 503)
    docs = [record("RI", f"r{i}", "t") for i in range(5)]
    with pytest.raises(RemoteUnavailable):  # the first batch fails
        SolrTarget(client).upsert(docs)
    SolrTarget(client).upsert(docs)  # sending again is safe: same ids replace
    client.commit()
    assert client.select(rows=0).num_found == 5


def test_unavailable_solr_is_worth_retrying(solr: SolrState, client: SolrClient) -> None:
    solr.down = True
    with pytest.raises(RemoteUnavailable, match="Solr is down") as caught:
        client.commit()
    assert caught.value.status == 503
    solr.down = False
    gone = SolrClient(f"http://127.0.0.1:{free_port()}/solr", "oai", timeout=2)
    with gone, pytest.raises(RemoteUnavailable, match="ConnectError"):
        gone.commit()


def test_missing_core_and_credentials(solr: SolrState) -> None:
    with SolrClient(solr.url, "elsewhere") as other, pytest.raises(NotFound):
        other.commit()
    solr.credentials = ("indexer", "s3cret")
    with SolrClient(solr.url, "oai") as anonymous, pytest.raises(AuthFailed) as caught:
        anonymous.commit()
    assert "s3cret" not in str(caught.value)
    wrong = SolrClient(solr.url, "oai", auth=("indexer", "wrong"))
    with wrong, pytest.raises(AuthFailed):
        wrong.add([{"id": "x"}])
    with SolrClient(solr.url, "oai", auth=("indexer", "s3cret")) as right:
        right.add([{"id": "x"}])
        right.commit()
        assert right.select().num_found == 1


@pytest.mark.parametrize(
    ("url", "core", "says"),
    [
        ("http://user:pw@127.0.0.1/solr", "oai", "not in the URL"),
        ("ftp://127.0.0.1/solr", "oai", "must be http"),
        ("http://127.0.0.1/solr", "../admin", "core"),
    ],
)
def test_client_settings_are_checked(url: str, core: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        SolrClient(url, core)


def test_an_answer_that_is_not_json_is_named() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>captive portal</html>", request=request)

    c = SolrClient("http://solr.example/solr", "oai", transport=httpx.MockTransport(proxy))
    with c, pytest.raises(RemoteUnavailable, match="not JSON"):
        c.commit()
