"""Koha records for the demo, the tests and the benchmarks, made at run time with pymarc."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree

import pymarc
from pymarc import Field, Indicators, Subfield


@dataclass
class Book:
    """What a cataloguer would have entered for a scanned book."""

    biblionumber: int
    title: str
    author: str | None = None
    year: str | None = None
    publisher: str | None = None
    place: str | None = None
    language: str = "eng"
    subjects: list[str] = field(default_factory=list)
    isbn: str | None = None
    pages: str | None = None
    abstract: str | None = None
    file: str | None = None  # 956$u, relative to the integrator's inbox
    item_uuid: str | None = None  # 956$3
    status: str | None = None  # 956$y


def marc_record(book: Book) -> pymarc.Record:
    record = pymarc.Record(force_utf8=True)
    record.leader = pymarc.Leader("00000nam a22000007a 4500")
    record.add_field(pymarc.Field(tag="001", data=str(book.biblionumber)))
    record.add_field(
        Field(
            tag="008",
            data=f"210101s{(book.year or '    ')[:4]:4}    xx            000 0 {book.language[:3]:3} d",
        )
    )
    if book.isbn:
        record.add_field(_field("020", "  ", a=book.isbn))
    record.add_field(_field("041", "0 ", a=book.language))
    if book.author:
        record.add_field(_field("100", "1 ", a=book.author))
    record.add_field(_field("245", "10", a=book.title))
    if book.place or book.publisher or book.year:
        parts = {"a": book.place, "b": book.publisher, "c": book.year}
        record.add_field(_field("260", "  ", **{k: v for k, v in parts.items() if v}))
    if book.pages:
        record.add_field(_field("300", "  ", a=book.pages))
    if book.abstract:
        record.add_field(_field("520", "  ", a=book.abstract))
    for subject in book.subjects:
        record.add_field(_field("650", " 4", a=subject))
    local: dict[str, str] = {}
    if book.file is not None:
        local["u"] = book.file
    if book.status:
        local["y"] = book.status
    if book.item_uuid:
        local["3"] = book.item_uuid
    if local:
        record.add_field(_field("956", "  ", **local))
    record.add_field(_field("942", "  ", c="BK"))
    return record


def marcxml(book: Book) -> bytes:
    """MARC21 slim in UTF-8 (characters, not numeric references), as Koha's REST API serves it."""
    node = pymarc.record_to_xml_node(marc_record(book), namespace=True)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(
        node, encoding="utf-8", xml_declaration=False
    )


def _field(tag: str, indicators: str, **subfields: str) -> Field:
    return Field(
        tag=tag,
        indicators=Indicators(indicators[0], indicators[1]),
        subfields=[Subfield(code, value) for code, value in subfields.items()],
    )
