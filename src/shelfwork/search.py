"""Where harvested records are indexed, and the built-in full-text search over them.

An index target takes the validated records of one network as `IndexDocument`s and is told which
were deleted; the OAI pipeline feeds every target it is configured with the same changes, so the
targets stay interchangeable. Two exist: `BuiltinSearch` (tables of the metadata database, made by
migration 0002) and `connectors.solr.SolrTarget`.

Search text is parsed here and never handed to FTS5 or to_tsquery as syntax. It understands words
(all must match; an `AND` between them changes nothing), "quoted phrases", `OR` between two terms
(binding tighter than the implicit AND: `a b OR c` is a AND (b OR c)), `-word` to exclude and
`word*` for a prefix; any other punctuation separates words (`e-mail` is the phrase "e mail").

Case and accents never matter, in any script (Educação = educacao, Ελληνική = ελληνικη,
Йошкар = иошкар): this module folds document and query text alike (`fold`) and the databases
index the folded words, FTS5 on SQLite (whose own remove_diacritics knows only Latin) and
to_tsvector('simple', ...) on PostgreSQL (no unaccent extension needed). Snippets and titles are
shown from the original text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, NamedTuple, Protocol

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, ProgrammingError

from .errors import ShelfworkError
from .store.database import Store, utcnow
from .store.models import UTCDateTime

#: fields that give a hit its title and its creators (the first title is the one shown)
TITLE_FIELDS = ("dc.title",)
CREATOR_FIELDS = ("dc.creator", "dc.contributor.author")
NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_IDENTIFIER = 1000
MAX_SET_SPEC = 500
MAX_QUERY_CHARS = 500
MAX_TERMS = 32
MAX_LIMIT = 100
MAX_OFFSET = 10_000
#: text indexed per record beyond title and creators; a huge abstract is cut here
MAX_BODY_CHARS = 100_000
SNIPPET_CHARS = 200
#: how far into a record's text a snippet looks for a match (folding every word costs time)
SNIPPET_SCAN = 20_000
#: records written per transaction (SQLite holds its one write lock that long)
WRITE_BATCH = 500
#: FTS5 bm25 weights of title, creators, body (PostgreSQL weighs A, B, D alike)
BM25_WEIGHTS = "10.0, 4.0, 1.0"

_WORD = re.compile(r"[^\W_]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

metadata = MetaData()
documents_t = Table(
    "search_documents",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("network", String(64), nullable=False),
    Column("identifier", String(MAX_IDENTIFIER), nullable=False),
    Column("datestamp", UTCDateTime(), nullable=False),
    Column("sets", JSON(), nullable=False),
    Column("title", Text(), nullable=False),
    Column("creators", Text(), nullable=False),
    Column("body", Text(), nullable=False),
    Column("indexed_at", UTCDateTime(), nullable=False),
    Column("document", postgresql.TSVECTOR()),  # PostgreSQL only
)
_UPDATED = ("datestamp", "sets", "title", "creators", "body", "indexed_at")
#: every table migration 0002 makes starts so (FTS5 adds shadow tables search_fts_*)
TABLE_PREFIX = "search_"
_FOLDED = ("f_title", "f_creators", "f_body")


def include_in_autogenerate(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's include_object: the search tables (hand-written in 0002, not in the models) and
    their indexes are not model drift."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return not str(getattr(table, "name", "") or "").startswith(TABLE_PREFIX)


# --- the seam -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexDocument:
    """One record as every target indexes it; `fields` maps "dc.title" and the like to values."""

    network: str
    identifier: str
    datestamp: datetime  # UTC (a naive value is taken as UTC)
    sets: tuple[str, ...] = ()
    fields: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        """The field's values, cleaned; a lone string counts as one value, not as characters."""
        raw = self.fields.get(name, ())
        items = [raw] if isinstance(raw, str) else list(raw)
        return [v for v in (clean(str(item)) for item in items) if v]


class IndexTarget(Protocol):
    """Where the pipeline sends a network's changes. `commit` makes them visible where the target
    needs that (Solr); upserts replace a record with the same (network, identifier)."""

    name: str

    def upsert(self, docs: Sequence[IndexDocument]) -> None: ...

    def delete(self, network: str, identifiers: Sequence[str]) -> None: ...

    def commit(self) -> None: ...

    def clear(self, network: str) -> None: ...


class BadIndexDocument(ShelfworkError):
    """A record cannot be indexed as given (the message names it and why)."""

    def __init__(self, network: str, identifier: str, problem: str) -> None:
        self.network = network
        self.identifier = identifier
        self.problem = problem
        super().__init__(f"network {network!r}, record {identifier[:200]!r}: {problem}")


class SearchQueryError(ShelfworkError):
    """The search text or a search option cannot be used; the message says what to change."""


class SearchUnavailable(ShelfworkError):
    """The search tables are missing (a database not migrated to the newest schema)."""


def clean(value: str) -> str:
    """NFC, control characters dropped, runs of whitespace made one space."""
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFC", value)).split())


def fold(value: str) -> str:
    """Lower case without accents, the same for documents and queries (PostgreSQL side)."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def words(value: str) -> list[str]:
    return _WORD.findall(value)


# --- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A word or a phrase (its folded words in order); `prefix`: the last word may be a prefix."""

    words: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True)
class ParsedQuery:
    """All `groups` must match (each group: any of its terms), none of `excluded` may."""

    groups: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...]

    @property
    def empty(self) -> bool:
        return not self.groups

    def fts5(self) -> str:
        """The FTS5 MATCH expression: every term a quoted string, so user text is never syntax."""

        def string(term: Term) -> str:
            quoted = '"' + " ".join(term.words).replace('"', '""') + '"'
            return quoted + " *" if term.prefix else quoted

        ands = [
            string(g[0]) if len(g) == 1 else "(" + " OR ".join(string(t) for t in g) + ")"
            for g in self.groups
        ]
        expr = "(" + " AND ".join(ands) + ")"
        return expr + "".join(f" NOT {string(t)}" for t in self.excluded)

    def tsquery(self) -> tuple[str, dict[str, str]]:
        """A PostgreSQL tsquery expression over bound parameters, and those parameters."""
        params: dict[str, str] = {}

        def bind(value: str) -> str:
            name = f"q{len(params)}"
            params[name] = value
            return f":{name}"

        def term_sql(term: Term) -> str:
            folded = term.words
            if not term.prefix:
                return f"phraseto_tsquery('simple', {bind(' '.join(folded))})"
            last = f"to_tsquery('simple', quote_literal({bind(folded[-1])}) || ':*')"
            if len(folded) == 1:
                return last
            return (
                f"tsquery_phrase(phraseto_tsquery('simple', {bind(' '.join(folded[:-1]))}), {last})"
            )

        ands = ["(" + " || ".join(term_sql(t) for t in g) + ")" for g in self.groups]
        expr = "(" + " && ".join(ands) + ")"
        return expr + "".join(f" && !!{term_sql(t)}" for t in self.excluded), params

    def needles(self) -> tuple[frozenset[str], tuple[str, ...]]:
        """Folded words to highlight, and folded prefixes."""
        whole: set[str] = set()
        prefixes: list[str] = []
        for group in self.groups:
            for term in group:
                folded = term.words
                if term.prefix:
                    prefixes.append(folded[-1])
                    folded = folded[:-1]
                whole.update(folded)
        return frozenset(whole), tuple(prefixes)


def parse_query(query: str) -> ParsedQuery:
    """Parse search text (syntax in the module docstring); SearchQueryError says what is wrong."""
    if len(query) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"the query is {len(query)} characters; at most {MAX_QUERY_CHARS}")
    if _CONTROL.search(query):
        raise SearchQueryError("the query contains control characters")
    groups: list[list[Term]] = []
    excluded: list[Term] = []
    pending_or = False
    count = 0
    for chunk in _lex(query):
        operator = not chunk.phrase and not chunk.negated
        if operator and chunk.text == "AND":
            continue  # terms are ANDed anyway
        if operator and chunk.text == "OR":
            if not groups or pending_or:
                raise SearchQueryError(
                    f"OR at character {chunk.position + 1} needs a term before it and one after it"
                )
            pending_or = True
            continue
        found = tuple(words(fold(chunk.text)))
        if not found:
            continue  # punctuation only (or letters that fold to nothing, like U+037A)
        count += 1
        if count > MAX_TERMS:
            raise SearchQueryError(f"the query has more than {MAX_TERMS} terms")
        term = Term(found, chunk.prefix)
        if chunk.negated:
            if pending_or:
                raise SearchQueryError(
                    f"'-' at character {chunk.position + 1} cannot follow OR: "
                    "exclude outside OR groups"
                )
            excluded.append(term)
        elif pending_or:
            groups[-1].append(term)
            pending_or = False
        else:
            groups.append([term])
    if pending_or:
        raise SearchQueryError("OR at the end of the query needs a term after it")
    if excluded and not groups:
        raise SearchQueryError("a query cannot only exclude: add a word to search for")
    return ParsedQuery(tuple(tuple(g) for g in groups), tuple(excluded))


class _Chunk(NamedTuple):
    text: str
    negated: bool
    phrase: bool
    prefix: bool
    position: int


def _lex(query: str) -> Iterator[_Chunk]:
    """The query's chunks: "phrases" and runs of non-space, each maybe with - before or * after."""
    text_ = unicodedata.normalize("NFC", query)
    i, n = 0, len(text_)
    while i < n:
        if text_[i].isspace():
            i += 1
            continue
        start = i
        negated = text_[i] == "-" and i + 1 < n and not text_[i + 1].isspace()
        if negated:
            i += 1
        if text_[i] == '"':
            end = text_.find('"', i + 1)
            if end < 0:
                raise SearchQueryError(
                    f'the quote at character {i + 1} is never closed; close it with another "'
                )
            prefix = text_.startswith("*", end + 1)
            yield _Chunk(text_[i + 1 : end], negated, True, prefix, start)
            i = end + 2 if prefix else end + 1
            continue
        j = i
        while j < n and not text_[j].isspace() and text_[j] != '"':
            j += 1
        chunk = text_[i:j]
        yield _Chunk(chunk, negated, False, chunk.endswith("*"), start)
        i = j


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    network: str
    identifier: str
    title: str
    creators: tuple[str, ...]
    datestamp: datetime
    sets: tuple[str, ...]
    snippet: str
    #: [start, end) offsets of matched words in `snippet`
    highlights: tuple[tuple[int, int], ...]

    def snippet_html(self) -> str:
        """The snippet escaped for HTML, matched words in <mark>."""
        out, last = [], 0
        for start, end in self.highlights:
            out.append(escape(self.snippet[last:start]))
            out.append(f"<mark>{escape(self.snippet[start:end])}</mark>")
            last = end
        out.append(escape(self.snippet[last:]))
        return "".join(out)


@dataclass(frozen=True)
class SearchPage:
    query: str
    total: int
    limit: int
    offset: int
    hits: tuple[SearchHit, ...]


def snippet_of(
    text_: str, whole: frozenset[str], prefixes: tuple[str, ...]
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Up to SNIPPET_CHARS of `text_` around its first matched word (looked for in the first
    SNIPPET_SCAN characters), with the matches' offsets."""
    spans: list[tuple[int, int]] = []
    for match in _WORD.finditer(text_, 0, SNIPPET_SCAN + SNIPPET_CHARS):
        if spans and match.start() > spans[0][0] + SNIPPET_CHARS:
            break  # past any window the first match can open
        if not spans and match.start() >= SNIPPET_SCAN:
            break
        folded = fold(match.group())
        if folded in whole or any(folded.startswith(p) for p in prefixes):
            spans.append((match.start(), match.end()))
    start = 0
    if spans and spans[0][1] > SNIPPET_CHARS:
        start = max(0, spans[0][0] - SNIPPET_CHARS // 4)
        space = text_.rfind(" ", 0, start)
        start = space + 1 if space >= 0 else start
    end = min(len(text_), start + SNIPPET_CHARS)
    if end < len(text_):
        space = text_.rfind(" ", start, end)
        end = space if space > start else end
    lead = "…" if start > 0 else ""
    shift = len(lead) - start
    snippet = lead + text_[start:end] + ("…" if end < len(text_) else "")
    kept = tuple((s + shift, e + shift) for s, e in spans if s >= start and e <= end)
    return snippet, kept


# --- the built-in target ------------------------------------------------------------------------


class BuiltinSearch:
    """Full-text search in the metadata database: FTS5 on SQLite, tsvector + GIN on PostgreSQL.

    Writes take effect at once (each batch is one transaction), so `commit` has nothing to do."""

    name = "builtin"

    def __init__(self, store: Store, *, batch: int = WRITE_BATCH) -> None:
        self.store = store
        self.batch = batch

    # -- IndexTarget ------------------------------------------------------------------------------

    def upsert(self, docs: Sequence[IndexDocument]) -> None:
        rows = [_row(doc) for doc in docs]
        for chunk in _chunks(rows, self.batch):
            with self._writing() as conn:
                self._upsert(conn, chunk)

    def delete(self, network: str, identifiers: Sequence[str]) -> None:
        _check_network(network)
        for chunk in _chunks(list(identifiers), self.batch):
            with self._writing() as conn:
                conn.execute(
                    delete(documents_t).where(
                        documents_t.c.network == network, documents_t.c.identifier.in_(chunk)
                    )
                )

    def commit(self) -> None:
        return None

    def clear(self, network: str) -> None:
        _check_network(network)
        with self._writing() as conn:
            conn.execute(delete(documents_t).where(documents_t.c.network == network))

    # -- reading ----------------------------------------------------------------------------------

    def count(self, network: str | None = None) -> int:
        """Records indexed, in one network or in all (for a count check after indexing)."""
        q = select(func.count()).select_from(documents_t)
        if network is not None:
            q = q.where(documents_t.c.network == network)
        with self._reading() as conn:
            return int(conn.execute(q).scalar_one())

    def search(
        self,
        query: str,
        *,
        network: str | None = None,
        set_spec: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> SearchPage:
        """Records matching `query` (best first; an empty query lists the newest first), in one
        network and in one set (or a set below it: `a` also finds records in `a:b`) if given."""
        if not 1 <= limit <= MAX_LIMIT:
            raise SearchQueryError(f"limit must be 1 to {MAX_LIMIT}, not {limit}")
        if not 0 <= offset <= MAX_OFFSET:
            raise SearchQueryError(f"offset must be 0 to {MAX_OFFSET}, not {offset}")
        if network is not None and not NETWORK.match(network):
            raise SearchQueryError(f"{network[:80]!r} is not a network acronym")
        if set_spec is not None and (
            not set_spec or len(set_spec) > MAX_SET_SPEC or _CONTROL.search(set_spec)
        ):
            raise SearchQueryError("set must be 1 to 500 characters, none of them control")
        parsed = parse_query(query)
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        where: list[str] = []
        if network is not None:
            where.append("d.network = :network")
            params["network"] = network
        if set_spec is not None:
            where.append(self._in_set())
            params.update(set_spec=set_spec, set_prefix=set_spec + ":")
        pg = not self.store.is_sqlite
        if parsed.empty:
            source, rank = "search_documents d", "0"
            order = "d.datestamp DESC, d.network, d.identifier"
        elif pg:
            tsquery, qparams = parsed.tsquery()
            params.update(qparams)
            source = f"search_documents d, (SELECT {tsquery} AS query) AS q"
            where.append("d.document @@ q.query")
            rank = "ts_rank(d.document, q.query)"
            order = "rank DESC, d.datestamp DESC, d.network, d.identifier"
        else:
            source = "search_fts JOIN search_documents d ON d.id = search_fts.rowid"
            where.append("search_fts MATCH :match")
            params["match"] = parsed.fts5()
            rank = f"bm25(search_fts, {BM25_WEIGHTS})"
            order = "rank, d.datestamp DESC, d.network, d.identifier"
        condition = " AND ".join(where) or "1 = 1"
        hits_sql = text(
            f"SELECT d.network, d.identifier, d.datestamp, d.sets, d.title, d.creators, d.body, "
            f"{rank} AS rank FROM {source} WHERE {condition} "
            f"ORDER BY {order} LIMIT :limit OFFSET :offset"
        ).columns(datestamp=UTCDateTime(), sets=JSON())
        count_sql = text(f"SELECT count(*) FROM {source} WHERE {condition}")
        with self._reading() as conn:
            try:
                total = int(conn.execute(count_sql, params).scalar_one())
                rows = conn.execute(hits_sql, params).all() if total > offset else []
            except OperationalError as exc:
                if "fts5" in str(exc.orig).lower():
                    raise SearchQueryError(f"the query cannot be searched: {exc.orig}") from None
                raise
        whole, prefixes = parsed.needles()
        hits = []
        for row in rows:
            snippet, highlights = snippet_of(row.body, whole, prefixes)
            titles = row.title.split("\n")
            hits.append(
                SearchHit(
                    network=row.network,
                    identifier=row.identifier,
                    title=titles[0],
                    creators=tuple(c for c in row.creators.split("\n") if c),
                    datestamp=row.datestamp,
                    sets=tuple(row.sets or ()),
                    snippet=snippet,
                    highlights=highlights,
                )
            )
        return SearchPage(query, total, limit, offset, tuple(hits))

    # -- internals --------------------------------------------------------------------------------

    def _in_set(self) -> str:
        if self.store.is_sqlite:
            return (
                "EXISTS (SELECT 1 FROM json_each(d.sets) AS s WHERE s.value = :set_spec "
                "OR substr(s.value, 1, length(:set_prefix)) = :set_prefix)"
            )
        return (
            "EXISTS (SELECT 1 FROM json_array_elements_text(d.sets) AS s(v) "
            "WHERE s.v = :set_spec OR starts_with(s.v, :set_prefix))"
        )

    def _upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # one row per record, the last given winning (PostgreSQL refuses to update a row twice)
        rows = list({(r["network"], r["identifier"]): r for r in rows}.values())
        if self.store.is_sqlite:
            self._upsert_sqlite(conn, rows)
            return
        # The tsvector is built from folded words, weighted title A, creators B, body D.
        weighted = [
            func.setweight(
                func.to_tsvector(text("'simple'::regconfig"), bindparam(name, type_=Text())),
                literal_column(f"'{weight}'"),
            )
            for name, weight in (("f_title", "A"), ("f_creators", "B"), ("f_body", "D"))
        ]
        document = weighted[0].op("||")(weighted[1]).op("||")(weighted[2])
        stmt = postgresql.insert(documents_t).values(document=document)
        stmt = stmt.on_conflict_do_update(
            index_elements=["network", "identifier"],
            set_={name: stmt.excluded[name] for name in (*_UPDATED, "document")},
        )
        conn.execute(stmt, rows)

    def _upsert_sqlite(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """The rows, then their folded words into FTS5 under the rows' ids."""
        stmt = sqlite.insert(documents_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["network", "identifier"],
            set_={name: stmt.excluded[name] for name in _UPDATED},
        )
        conn.execute(stmt, [{k: v for k, v in r.items() if not k.startswith("f_")} for r in rows])
        by_network: dict[str, list[str]] = {}
        for r in rows:
            by_network.setdefault(r["network"], []).append(r["identifier"])
        ids: dict[tuple[str, str], int] = {}
        for network, identifiers in by_network.items():
            found = conn.execute(
                select(documents_t.c.id, documents_t.c.identifier).where(
                    documents_t.c.network == network, documents_t.c.identifier.in_(identifiers)
                )
            )
            ids.update({(network, identifier): id_ for id_, identifier in found})
        conn.execute(
            text(
                "INSERT OR REPLACE INTO search_fts(rowid, title, creators, body) "
                "VALUES (:id, :f_title, :f_creators, :f_body)"
            ),
            [
                {"id": ids[(r["network"], r["identifier"])], **{k: r[k] for k in _FOLDED}}
                for r in rows
            ],
        )

    def _writing(self) -> Any:
        return _translated(self.store.write())

    def _reading(self) -> Any:
        return _translated(self.store.read())


class _translated:
    """A store transaction whose missing-table error says to migrate."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> Connection:
        conn: Connection = self.inner.__enter__()
        return conn

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool | None:
        result: bool | None = self.inner.__exit__(kind, exc, tb)
        if isinstance(exc, (OperationalError, ProgrammingError)) and _missing_table(exc):
            raise SearchUnavailable(
                "the built-in search tables are missing: run `shelfwork db upgrade` "
                "(migration 0002 creates them)"
            ) from None
        return result


def _missing_table(exc: OperationalError | ProgrammingError) -> bool:
    message = str(exc.orig).lower()
    return "search_documents" in message or "search_fts" in message


def _check_network(network: str) -> None:
    if not NETWORK.match(network):
        raise ShelfworkError(
            f"network acronym {network[:80]!r} must be letters, digits, '-' or '_' (max 64)"
        )


def _row(doc: IndexDocument) -> dict[str, Any]:
    """The stored row of one record, plus (f_*) the folded words the databases index."""
    if not NETWORK.match(doc.network):
        raise BadIndexDocument(doc.network, doc.identifier, "the network is not an acronym")
    if not 0 < len(doc.identifier) <= MAX_IDENTIFIER or _CONTROL.search(doc.identifier):
        raise BadIndexDocument(
            doc.network,
            doc.identifier,
            f"an identifier must be 1 to {MAX_IDENTIFIER} characters, none of them control",
        )
    for spec in doc.sets:
        if not 0 < len(spec) <= MAX_SET_SPEC or _CONTROL.search(spec):
            raise BadIndexDocument(doc.network, doc.identifier, f"bad set spec {spec[:80]!r}")
    datestamp = doc.datestamp
    datestamp = datestamp.replace(tzinfo=UTC) if datestamp.tzinfo is None else datestamp
    titles = [v for name in TITLE_FIELDS for v in doc.values(name)]
    creators = [v for name in CREATOR_FIELDS for v in doc.values(name)]
    skip = {*TITLE_FIELDS, *CREATOR_FIELDS}
    body = "\n".join(v for name in sorted(doc.fields) if name not in skip for v in doc.values(name))
    if len(body) > MAX_BODY_CHARS:
        cut = body.rfind(" ", 0, MAX_BODY_CHARS)
        body = body[: cut if cut > 0 else MAX_BODY_CHARS]
    title, creator_text = "\n".join(titles), "\n".join(creators)
    return {
        "network": doc.network,
        "identifier": doc.identifier,
        "datestamp": datestamp.astimezone(UTC),
        "sets": list(dict.fromkeys(doc.sets)),
        "title": title,
        "creators": creator_text,
        "body": body,
        "indexed_at": utcnow(),
        "f_title": " ".join(words(fold(title))),
        "f_creators": " ".join(words(fold(creator_text))),
        "f_body": " ".join(words(fold(body))),
    }


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "BadIndexDocument",
    "BuiltinSearch",
    "IndexDocument",
    "IndexTarget",
    "SearchHit",
    "SearchPage",
    "SearchQueryError",
    "SearchUnavailable",
    "include_in_autogenerate",
    "parse_query",
]
