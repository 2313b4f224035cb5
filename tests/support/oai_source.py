"""An in-memory `RecordSource` for provider tests, with a generator of repositories to serve.

`MemorySource` keeps its records sorted by (datestamp, identifier) and pages them by keyset with
bisect, as an index would; `put` and `remove` change it while a harvest runs. Set membership is
hierarchical (a record in `a:b` is also in `a`), like the database source must be.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from shelfwork.pipelines.oai.provider import (
    ExposedRecord,
    MetadataFormat,
    RepositoryInfo,
    as_utc,
)
from shelfwork.sandbox.oai import MemorySource, dc_metadata, in_set, key

__all__ = ["MemorySource", "dc_metadata"]  # re-exported: the tests import them from here

MARC = MetadataFormat(
    "marcxml",
    "http://www.loc.gov/standards/marcxml/schema/MARC21slim.xsd",
    "http://www.loc.gov/MARC21/slim",
)
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def repository_info(
    base_url: str = "http://127.0.0.1/oai/test",
    *,
    granularity: str = "YYYY-MM-DDThh:mm:ssZ",
    deleted_record: str = "persistent",
    earliest: datetime = EPOCH,
) -> RepositoryInfo:
    return RepositoryInfo(
        name="shelfwork test network",
        base_url=base_url,
        admin_emails=("oai@example.org",),
        earliest_datestamp=earliest,
        deleted_record=deleted_record,
        granularity=granularity,
    )


SETS = (("theses", "Theses"), ("articles", "Articles"), ("articles:open", "Open articles"))


def generated_records(
    count: int, *, seed: int = 7, deleted_every: int = 9, start: datetime = EPOCH
) -> list[ExposedRecord]:
    """`count` records spread over about a year, several sharing each datestamp (so the keyset
    must order by identifier too), every `deleted_every`-th deleted, in the sets of SETS."""
    chooser = random.Random(seed)
    memberships = [("theses",), ("articles",), ("articles:open",), ("theses", "articles:open"), ()]
    records = []
    for number in range(count):
        stamp = start + timedelta(days=chooser.randrange(365), hours=chooser.choice((0, 12)))
        deleted = number % deleted_every == deleted_every - 1
        identifier = f"oai:shelfwork.test:{chooser.randrange(10**6):06d}-{number}"
        records.append(
            ExposedRecord(
                identifier=identifier,
                datestamp=stamp,
                sets=memberships[number % len(memberships)],
                deleted=deleted,
                metadata=None if deleted else dc_metadata(f"Title {number}"),
            )
        )
    return records


def selected(
    records: Iterable[ExposedRecord],
    *,
    set_spec: str | None = None,
    start: datetime | None = None,
    before: datetime | None = None,
) -> list[ExposedRecord]:
    """What a list with these arguments must hold, in list order, by plain filtering."""
    chosen = [
        r
        for r in records
        if (set_spec is None or in_set(r, set_spec))
        and (start is None or as_utc(r.datestamp) >= start)
        and (before is None or as_utc(r.datestamp) < before)
    ]
    return sorted(chosen, key=key)
