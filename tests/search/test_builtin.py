"""The built-in search target on both databases: SQLite (FTS5) and PostgreSQL (tsvector).

The PostgreSQL database is the session's shared one, so every test indexes under networks of its
own (random acronyms) and removes them afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from shelfwork.errors import ShelfworkError
from shelfwork.search import (
    MAX_BODY_CHARS,
    BadIndexDocument,
    BuiltinSearch,
    IndexDocument,
    SearchQueryError,
    SearchUnavailable,
    fold,
    parse_query,
)
from shelfwork.store import Store
from shelfwork.store.database import alembic_config

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Index:
    """A BuiltinSearch plus fresh network acronyms, each cleared when the test ends."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.search = BuiltinSearch(store, batch=7)  # small batches: several transactions
        self.networks: list[str] = []

    def network(self) -> str:
        name = f"T{uuid.uuid4().hex[:10]}"
        self.networks.append(name)
        return name


@pytest.fixture(params=["sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "postgres":
        store = Store(request.getfixturevalue("pg_url"))
    else:
        store = Store(f"sqlite:///{tmp_path / 'search.db'}")
        store.upgrade()
    idx = Index(store)
    yield idx
    for network in idx.networks:
        idx.search.clear(network)
    store.dispose()


def doc(
    network: str,
    identifier: str,
    title: str = "",
    *,
    creators: tuple[str, ...] = (),
    body: str = "",
    sets: tuple[str, ...] = (),
    when: datetime = T0,
) -> IndexDocument:
    fields: dict[str, list[str]] = {"dc.title": [title]} if title else {}
    if creators:
        fields["dc.creator"] = list(creators)
    if body:
        fields["dc.description"] = [body]
    return IndexDocument(network, identifier, when, sets, fields)


def ids(page: object) -> list[str]:
    return [hit.identifier for hit in page.hits]  # type: ignore[attr-defined]


def test_an_upserted_record_is_found_by_title_creator_and_text(index: Index) -> None:
    net = index.network()
    index.search.upsert(
        [
            IndexDocument(
                net,
                "oai:repo:1",
                datetime(2023, 3, 4, 5, 6, 7),  # naive: taken as UTC
                ("col_1",),
                {
                    "dc.title": ["Open access in Latin America", "Acceso abierto"],
                    "dc.creator": ["Babini, Dominique", "Rovelli, Laura"],
                    "dc.subject": ["scholarly communication"],
                    "dc.description": "A lone string is one value, not characters",
                },
            ),
            doc(net, "oai:repo:2", "Something else", body="unrelated words"),
        ]
    )
    for query in ("latin america", "abierto", "rovelli", "scholarly", "lone string"):
        page = index.search.search(query, network=net)
        assert ids(page) == ["oai:repo:1"], query
    hit = index.search.search("babini", network=net).hits[0]
    assert hit.network == net and hit.title == "Open access in Latin America"
    assert hit.creators == ("Babini, Dominique", "Rovelli, Laura")
    assert hit.datestamp == datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert hit.sets == ("col_1",)
    assert index.search.search("characters", network=net).total == 1
    assert index.search.search("c", network=net).total == 0  # not split into letters
    assert index.search.count(net) == 2


def test_upserting_again_replaces_the_record(index: Index) -> None:
    net = index.network()
    index.search.upsert([doc(net, "r1", "Old title about whales", sets=("a",))])
    later = T0 + timedelta(days=3)
    index.search.upsert([doc(net, "r1", "New title about dolphins", sets=("b",), when=later)])
    assert index.search.search("whales", network=net).total == 0
    page = index.search.search("dolphins", network=net)
    assert ids(page) == ["r1"]
    assert page.hits[0].datestamp == later and page.hits[0].sets == ("b",)
    assert index.search.count(net) == 1
    # twice in one batch: the last one wins
    index.search.upsert([doc(net, "r2", "first draft"), doc(net, "r2", "final version")])
    assert index.search.search("draft", network=net).total == 0
    assert ids(index.search.search("final", network=net)) == ["r2"]


def test_delete_removes_only_the_named_records(index: Index) -> None:
    net, other = index.network(), index.network()
    index.search.upsert([doc(net, f"r{i}", f"river {i}") for i in range(10)])
    index.search.upsert([doc(other, "r1", "river elsewhere")])
    index.search.delete(net, ["r1", "r3", "not-there", *[f"r{i}" for i in range(5, 9)]])
    remaining = ids(index.search.search("river", network=net, limit=50))
    assert sorted(remaining) == ["r0", "r2", "r4", "r9"]
    assert index.search.search("river", network=other).total == 1
    index.search.delete(net, [])
    assert index.search.count(net) == 4


def test_clear_empties_one_network_only(index: Index) -> None:
    net, other = index.network(), index.network()
    word = f"w{uuid.uuid4().hex[:8]}"
    index.search.upsert([doc(net, f"r{i}", f"{word} {i}") for i in range(20)])
    index.search.upsert([doc(other, "r1", word)])
    assert index.search.search(word).total == 21  # every network when none is named
    index.search.clear(net)
    assert index.search.count(net) == 0
    assert index.search.search(word, network=net).total == 0
    page = index.search.search(word)
    assert [(h.network, h.identifier) for h in page.hits] == [(other, "r1")]
    index.search.commit()  # nothing pending: writes took effect already
    assert index.search.count(other) == 1


@pytest.mark.parametrize(
    ("stored", "queries"),
    [
        ("Educação básica no Brasil", ["educacao", "EDUCAÇÃO", "Educacao BASICA", "educação"]),
        ("Müller and Ångström", ["muller", "MÜLLER", "angstrom"]),
        ("Библиотека и общество", ["библиотека", "БИБЛИОТЕКА", "Общество"]),
        ("Йошкар-Ола", ["йошкар", "ЙОШКАР ола", '"иошкар ола"']),
        ("Ёлка", ["елка", "ёлка"]),
        ("Ελληνική βιβλιοθήκη", ["ελληνικη", "βιβλιοθηκη"]),
    ],
)
def test_case_and_accents_do_not_matter(index: Index, stored: str, queries: list[str]) -> None:
    net = index.network()
    index.search.upsert([doc(net, "hit", stored), doc(net, "miss", "nothing in common")])
    for query in queries:
        assert ids(index.search.search(query, network=net)) == ["hit"], query


def test_phrases_or_exclusion_and_prefixes(index: Index) -> None:
    net = index.network()
    index.search.upsert(
        [
            doc(net, "a", "open access repository"),
            doc(net, "b", "access to open data"),
            doc(net, "c", "closed archive"),
            doc(net, "d", "e-mail archive"),
        ]
    )

    def found(query: str) -> list[str]:
        return sorted(ids(index.search.search(query, network=net)))

    assert found("open access") == ["a", "b"]
    assert found("open AND access") == ["a", "b"]
    assert found('"open access"') == ["a"]
    assert found('"access open"') == []
    assert found("closed OR repository") == ["a", "c"]
    assert found("archive closed OR e-mail") == ["c", "d"]  # archive AND (closed OR e-mail)
    assert found("open -data") == ["a"]
    assert found('access -"open data"') == ["a"]
    assert found("repos*") == ["a"]
    assert found("arch* -clos*") == ["d"]
    assert found('"open da"*') == ["b"]
    assert found("e-mail") == ["d"]
    assert found("nothing") == []


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ('"open access', "never closed"),
        ("OR open", "OR at character 1"),
        ("open OR", "OR at the end"),
        ("open OR OR access", "OR at character"),
        ("-open", "cannot only exclude"),
        ("open OR -access", "cannot follow OR"),
        ("x" * 501, "at most 500"),
        ("open\x00access", "control characters"),
        (" ".join(f"w{i}" for i in range(40)), "more than 32 terms"),
    ],
)
def test_query_mistakes_are_named(index: Index, query: str, says: str) -> None:
    with pytest.raises(SearchQueryError, match=says):
        index.search.search(query)


def test_search_options_are_checked(index: Index) -> None:
    for kwargs, says in [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 10_001}, "offset"),
        ({"network": "bad network"}, "acronym"),
        ({"set_spec": ""}, "set"),
        ({"set_spec": "a\nb"}, "set"),
    ]:
        with pytest.raises(SearchQueryError, match=says):
            index.search.search("x", **kwargs)  # type: ignore[arg-type]


HOSTILE = [
    "title:open",
    "NEAR(open access)",
    "open AND",
    "AND",
    "*",
    "**open",
    "'); DROP TABLE search_documents; --",
    "open) OR (access",
    "^open",
    "{title}: open",
    "open:*",
    "!!open",
    "open <-> access",
    "open & access | data",
    "\\",
    "open'",
    "'''",
    '""',
    "- -- ---",
    'open\\" OR 1=1',
    "col:a OR",
    "😀 open",
    "ͺ* open",  # U+037A folds to nothing
    "ʼ*",
]


def test_hostile_text_is_only_ever_words(index: Index) -> None:
    net = index.network()
    index.search.upsert([doc(net, "a", "open access title"), doc(net, "b", "data")])
    for query in HOSTILE:
        try:
            page = index.search.search(query, network=net)
        except SearchQueryError:
            continue
        assert page.total == len(page.hits) <= 2, query
    assert index.search.count(net) == 2
    # operators of the engines are plain words: these look for the words themselves
    assert ids(index.search.search("access:title", network=net)) == ["a"]  # phrase "access title"
    assert ids(index.search.search("title:open", network=net)) == []
    assert ids(index.search.search("NEAR(open access)", network=net)) == []
    assert ids(index.search.search("open & access", network=net)) == ["a"]
    assert ids(index.search.search("'); DROP TABLE search_documents; --", network=net)) == []


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(query=st.text(alphabet=st.sampled_from("ab c\"-*():^&|!<>'\\OR{}+~?/é"), max_size=30))
def test_any_text_gives_a_page_or_a_query_error(index: Index, query: str) -> None:
    if not index.networks:
        index.search.upsert([doc(index.network(), "a", "a b c")])
    try:
        page = index.search.search(query, network=index.networks[0])
    except SearchQueryError:
        return
    assert page.total in (0, 1)


def test_pages_cover_every_hit_once(index: Index) -> None:
    net = index.network()
    index.search.upsert(
        [doc(net, f"r{i:02}", "common word", when=T0 + timedelta(hours=i)) for i in range(25)]
    )
    seen: list[str] = []
    for offset in (0, 10, 20):
        page = index.search.search("common", network=net, limit=10, offset=offset)
        assert page.total == 25 and page.offset == offset and page.limit == 10
        seen += ids(page)
    assert len(seen) == 25 and sorted(seen) == [f"r{i:02}" for i in range(25)]
    past = index.search.search("common", network=net, limit=10, offset=30)
    assert past.total == 25 and past.hits == ()
    newest = index.search.search("", network=net, limit=3)
    assert ids(newest) == ["r24", "r23", "r22"] and newest.total == 25


def test_title_matches_rank_above_text_matches(index: Index) -> None:
    net = index.network()
    index.search.upsert(
        [
            doc(net, "in-text", "A study", body="mentions glaciers once among many other words"),
            doc(net, "in-title", "Glaciers of Patagonia", body="a survey"),
        ]
    )
    assert ids(index.search.search("glaciers", network=net)) == ["in-title", "in-text"]


def test_sets_filter_includes_sets_below(index: Index) -> None:
    net = index.network()
    index.search.upsert(
        [
            doc(net, "top", "item", sets=("col_2",)),
            doc(net, "sub", "item", sets=("col_1", "col_2:theses")),
            doc(net, "other", "item", sets=("col_20",)),
            doc(net, "none", "item"),
        ]
    )

    def found(spec: str) -> list[str]:
        return sorted(ids(index.search.search("item", network=net, set_spec=spec)))

    assert found("col_2") == ["sub", "top"]
    assert found("col_2:theses") == ["sub"]
    assert found("col_1") == ["sub"]
    assert found("col") == []
    assert found("col_2%") == [] and found("col__") == []  # no wildcards
    assert sorted(ids(index.search.search("", network=net, set_spec="col_20"))) == ["other"]


def test_snippets_show_the_match_and_escape_html(index: Index) -> None:
    net = index.network()
    filler = " ".join(f"filler{i}" for i in range(80))
    body = f"{filler} the <script>alert(1)</script> Cañón del Colca {filler}"
    index.search.upsert([doc(net, "r", "Title", body=body)])
    hit = index.search.search("canon colc*", network=net).hits[0]
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert len(hit.snippet) <= 202
    marked = [hit.snippet[s:e] for s, e in hit.highlights]
    assert marked == ["Cañón", "Colca"]
    html = hit.snippet_html()
    assert "<mark>Cañón</mark>" in html and "<mark>Colca</mark>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    short = index.search.search("title", network=net).hits[0]
    assert short.snippet.startswith("filler0 ") and short.highlights == ()


def test_values_are_cleaned_and_bounded(index: Index) -> None:
    net = index.network()
    huge = "word " * (MAX_BODY_CHARS // 4)
    index.search.upsert(
        [
            doc(net, "nul", "before\x00after  \t spaced\nout"),
            doc(net, "huge", "Huge", body=huge + " needle"),
        ]
    )
    hit = index.search.search("after", network=net).hits[0]
    assert hit.title == "before after spaced out"
    assert index.search.search("needle", network=net).total == 0  # cut past the bound
    assert index.search.search("huge", network=net).total == 1


@pytest.mark.parametrize(
    ("network", "identifier", "sets", "says"),
    [
        ("bad net", "r1", (), "not an acronym"),
        ("OK", "", (), "identifier must be"),
        ("OK", "x" * 1001, (), "identifier must be"),
        ("OK", "a\nb", (), "identifier must be"),
        ("OK", "r1", ("",), "bad set spec"),
    ],
)
def test_unindexable_records_are_refused_by_name(
    index: Index, network: str, identifier: str, sets: tuple[str, ...], says: str
) -> None:
    with pytest.raises(BadIndexDocument, match=says) as caught:
        index.search.upsert([doc(network, identifier, "t", sets=sets)])
    assert caught.value.network == network
    with pytest.raises(ShelfworkError, match="acronym"):
        index.search.clear("no such; network")


def test_a_database_without_the_tables_says_to_migrate(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'models-only.db'}")
    store.create_all()
    with pytest.raises(SearchUnavailable, match="shelfwork db upgrade"):
        BuiltinSearch(store).search("x")
    with pytest.raises(SearchUnavailable, match="shelfwork db upgrade"):
        BuiltinSearch(store).upsert([doc("RI", "r1", "t")])


def test_migration_0002_goes_down_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(url)
    store.upgrade()
    BuiltinSearch(store).upsert([doc("RI", "r1", "kept title")])
    command.downgrade(alembic_config(url), "0001")

    def names() -> set[str]:
        with store.read() as conn:
            return {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}

    assert not {n for n in names() if n.startswith("search_")}
    command.upgrade(alembic_config(url), "head")
    assert {"search_documents", "search_fts", "search_documents_ad"} <= names()
    search = BuiltinSearch(store)
    search.upsert([doc("RI", "r1", "fresh title")])
    assert ids(search.search("fresh")) == ["r1"]


def test_parsed_queries_never_carry_user_syntax() -> None:
    parsed = parse_query('alpha -beta "gamma delta"* OR f: NEAR(g) O\'Neil')
    assert parsed.fts5() == (
        '("alpha" AND ("gamma delta" * OR "f") AND "near g" AND "o neil") NOT "beta"'
    )
    sql, params = parsed.tsquery()
    assert "NEAR" not in sql and "gamma" not in sql
    assert "'" not in sql.replace("'simple'", "").replace("':*'", "")  # literals are ours only
    assert sorted(params.values()) == sorted(
        ["alpha", "gamma", "delta", "f", "near g", "o neil", "beta"]
    )
    assert fold("ÀÉÎõü Ёлка") == "aeiou елка"
