"""The built-in full-text search over harvested records (see shelfwork.search for the syntax)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..search import (
    MAX_LIMIT,
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    MAX_SET_SPEC,
    NETWORK,
    BuiltinSearch,
    SearchQueryError,
    SearchUnavailable,
)
from .auth import Viewer
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import NO_CONTROL

router = APIRouter(tags=["search"])


class SearchHitOut(BaseModel):
    network: str
    identifier: str
    title: str
    creators: list[str]
    datestamp: datetime
    sets: list[str]
    snippet: str = Field(description="Up to 200 characters of the record's text, plain.")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) offsets of the matched words in `snippet`."
    )


class SearchPageOut(BaseModel):
    query: str
    total: int = Field(description="Records matching, over all pages.")
    limit: int
    offset: int
    hits: list[SearchHitOut]


@router.get(
    "/search",
    response_model=SearchPageOut,
    responses=responses(401, 403, 422, 503),
    summary="Search harvested records",
    description=(
        'Words must all match; "quoted phrases", `a OR b`, `-word` to exclude, `word*` for a '
        "prefix. Case and accents are ignored. An empty `q` lists the newest records. `set` also "
        "finds records in sets below it (`col` finds `col:sub`)."
    ),
)
def search_records(
    request: Request,
    _who: Viewer,
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS, pattern=NO_CONTROL)] = "",
    network: Annotated[str | None, Query(pattern=NETWORK.pattern)] = None,
    set_spec: Annotated[
        str | None, Query(alias="set", min_length=1, max_length=MAX_SET_SPEC, pattern=NO_CONTROL)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SearchPageOut:
    search = BuiltinSearch(engine_of(request).store)
    try:
        page = search.search(q, network=network, set_spec=set_spec, limit=limit, offset=offset)
    except SearchQueryError as exc:
        raise ApiError(422, "bad_query", str(exc), fields={"q": str(exc)}) from None
    except SearchUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc)) from None
    return SearchPageOut(
        query=page.query,
        total=page.total,
        limit=page.limit,
        offset=page.offset,
        hits=[
            SearchHitOut(
                network=h.network,
                identifier=h.identifier,
                title=h.title,
                creators=list(h.creators),
                datestamp=h.datestamp,
                sets=list(h.sets),
                snippet=h.snippet,
                highlights=list(h.highlights),
            )
            for h in page.hits
        ],
    )
