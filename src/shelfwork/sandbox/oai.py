"""An upstream OAI-PMH repository for the demo and tests: records held in memory, served by
shelfwork's own provider code (`pipelines.oai.provider.respond`) on loopback.

`MemorySource` keeps its records sorted by (datestamp, identifier) and pages them by keyset with
bisect, as an index would; `put` and `remove` change it while a harvest runs. Set membership is
hierarchical (a record in `a:b` is also in `a`), as the protocol has it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from ..pipelines.oai.provider import (
    OAI_DC,
    ExposedRecord,
    MetadataFormat,
    RepositoryInfo,
    as_utc,
)

DC_NS = "http://purl.org/dc/elements/1.1/"
OAI_DC_NS = "http://www.openarchives.org/OAI/2.0/oai_dc/"


def dc_metadata(title: str, *, creator: str = "Somebody") -> bytes:
    """A small oai_dc document, built here so tests control every byte."""
    root = etree.Element(
        "{http://www.openarchives.org/OAI/2.0/oai_dc/}dc",
        nsmap={"oai_dc": "http://www.openarchives.org/OAI/2.0/oai_dc/", "dc": DC_NS},
    )
    etree.SubElement(root, f"{{{DC_NS}}}title").text = title
    etree.SubElement(root, f"{{{DC_NS}}}creator").text = creator
    return etree.tostring(root, encoding="UTF-8")


def in_set(record: ExposedRecord, spec: str) -> bool:
    return any(s == spec or s.startswith(spec + ":") for s in record.sets)


def key(record: ExposedRecord) -> tuple[datetime, str]:
    return as_utc(record.datestamp), record.identifier


@dataclass
class MemorySource:
    """Records of one repository, in one or more formats (`available` narrows an item's formats;
    by default every item is available in every format)."""

    info_: RepositoryInfo
    records: Iterable[ExposedRecord] = ()
    formats_: Sequence[MetadataFormat] = (OAI_DC,)
    sets_: Sequence[tuple[str, str]] = ()
    available: Mapping[str, Sequence[str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sorted: list[ExposedRecord] = sorted(self.records, key=key)
        self._keys = [key(r) for r in self._sorted]
        self._by_id = {r.identifier: r for r in self._sorted}
        if len(self._by_id) != len(self._sorted):
            raise ValueError("identifiers must be unique")

    # --- changes while a harvest runs

    def put(self, record: ExposedRecord) -> None:
        """Add or replace a record (replacing moves it to its new datestamp's place)."""
        with self._lock:
            self._drop(record.identifier)
            at = bisect.bisect_left(self._keys, key(record))
            self._sorted.insert(at, record)
            self._keys.insert(at, key(record))
            self._by_id[record.identifier] = record

    def remove(self, identifier: str) -> None:
        """Forget a record entirely (deletedRecord "no"/"transient")."""
        with self._lock:
            self._drop(identifier)

    def _drop(self, identifier: str) -> None:
        old = self._by_id.pop(identifier, None)
        if old is not None:
            at = bisect.bisect_left(self._keys, key(old))
            del self._sorted[at], self._keys[at]

    # --- RecordSource

    def info(self) -> RepositoryInfo:
        return self.info_

    def formats(self, identifier: str | None = None) -> Sequence[MetadataFormat] | None:
        if identifier is None:
            return list(self.formats_)
        if identifier not in self._by_id:
            return None
        return [f for f in self.formats_ if f.prefix in self._prefixes(identifier)]

    def _prefixes(self, identifier: str) -> Sequence[str]:
        return self.available.get(identifier, [f.prefix for f in self.formats_])

    def sets(self) -> Sequence[tuple[str, str]]:
        return list(self.sets_)

    def _selected(
        self, prefix: str, set_spec: str | None, start: datetime | None, before: datetime | None
    ) -> list[ExposedRecord]:
        low = 0 if start is None else bisect.bisect_left(self._keys, (start, ""))
        return [
            r
            for r in self._sorted[low:]
            if (before is None or as_utc(r.datestamp) < before)
            and (set_spec is None or in_set(r, set_spec))
            and prefix in self._prefixes(r.identifier)
        ]

    def count(
        self, *, prefix: str, set_spec: str | None, start: datetime | None, before: datetime | None
    ) -> int:
        self.calls.append("count")
        with self._lock:
            return len(self._selected(prefix, set_spec, start, before))

    def page(
        self,
        *,
        prefix: str,
        set_spec: str | None,
        start: datetime | None,
        before: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[ExposedRecord]:
        self.calls.append("page")
        with self._lock:
            low = 0 if after is None else bisect.bisect_right(self._keys, after)
            if start is not None:
                low = max(low, bisect.bisect_left(self._keys, (start, "")))
            found: list[ExposedRecord] = []
            for record in self._sorted[low:]:
                if len(found) == limit or (before is not None and key(record)[0] >= before):
                    break
                if (set_spec is None or in_set(record, set_spec)) and prefix in self._prefixes(
                    record.identifier
                ):
                    found.append(record)
            return found

    def get(self, identifier: str, prefix: str) -> ExposedRecord | None:
        record = self._by_id.get(identifier)
        if record is None or prefix not in self._prefixes(identifier):
            return None
        return record
