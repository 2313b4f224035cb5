"""MetadataRecord: safe parsing (the trust boundary for harvested metadata) and field access."""

from __future__ import annotations

import pytest

from shelfwork.connectors.oaipmh import Record
from shelfwork.pipelines.oai.record import BadMetadata, MetadataRecord, field_xpath

OAI_DC = (
    '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/">{}</oai_dc:dc>'
)


def dc(body: str) -> bytes:
    return OAI_DC.format(body).encode("utf-8")


def test_values_are_whitespace_normalised_in_document_order() -> None:
    record = MetadataRecord.parse(
        dc("<dc:title>  Río \n  Grande </dc:title><dc:title>Second <b>bold</b> part</dc:title>"),
        "oai:x:1",
    )
    assert record.values("dc.title") == ["Río Grande", "Second bold part"]
    assert record.values("dc.creator") == []


def test_qualifier_selects_by_type_attribute() -> None:
    record = MetadataRecord.parse(
        dc('<dc:date type="issued">2020</dc:date><dc:date>2019-05-01</dc:date>'), "oai:x:2"
    )
    assert record.values("dc.date.issued") == ["2020"]
    assert record.values("dc.date") == ["2019-05-01"]  # unqualified only
    assert record.values("dc.date.*") == ["2020", "2019-05-01"]


def test_xpath_uses_namespace_table_and_extra_prefixes() -> None:
    data = (
        b'<r xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:x="urn:extra">'
        b"<dc:title>T</dc:title><x:note>n</x:note></r>"
    )
    record = MetadataRecord.parse(data, "oai:x:3", namespaces={"ex": "urn:extra"})
    assert record.xpath("count(//dc:title)") == 1.0
    assert record.values("ex.note") == ["n"]


def test_to_bytes_round_trips() -> None:
    record = MetadataRecord.parse(dc("<dc:title>Á</dc:title>"), "oai:x:4")
    again = MetadataRecord.parse(record.to_bytes(), "oai:x:4")
    assert again.values("dc.title") == ["Á"]


def test_from_harvest_reads_connector_record_and_refuses_deleted() -> None:
    harvested = Record("oai:x:5", "2024-01-01", False, (), dc("<dc:title>H</dc:title>"))
    assert MetadataRecord.from_harvest(harvested).values("dc.title") == ["H"]
    deleted = Record("oai:x:6", "2024-01-01", True, (), None)
    with pytest.raises(BadMetadata, match="oai:x:6"):
        MetadataRecord.from_harvest(deleted)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<r>&x;</r>",
            "DOCTYPE",
            id="xxe-external-entity",
        ),
        pytest.param(
            b'<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>',
            "DOCTYPE",
            id="entity-expansion",
        ),
        pytest.param(b"<!doctype r><r/>", "DOCTYPE", id="lower-case-doctype"),
        pytest.param("<r>caf\u00e9</r>".encode("latin-1"), "not valid UTF-8", id="latin-1-bytes"),
        pytest.param(
            '<?xml version="1.0" encoding="ISO-8859-1"?><r>cafe</r>'.encode("latin-1"),
            "declares encoding",
            id="declared-latin-1",
        ),
        pytest.param(
            '<?xml version="1.0" encoding="UTF-16"?><r/>'.encode("utf-16"),
            "UTF-16",
            id="utf-16",
        ),
        pytest.param(b"<r><unclosed></r>", "malformed XML at line 1", id="malformed"),
        pytest.param(b"  ", "empty metadata", id="empty"),
    ],
)
def test_unsafe_or_unreadable_metadata_is_bad_metadata(data: bytes, problem: str) -> None:
    """The pipeline dead-letters these: the error names the record and the problem."""
    with pytest.raises(BadMetadata) as caught:
        MetadataRecord.parse(data, "oai:repo:bad")
    assert caught.value.identifier == "oai:repo:bad"
    assert problem in caught.value.problem
    assert "oai:repo:bad" in str(caught.value)


def test_field_xpath_rejects_malformed_names() -> None:
    assert field_xpath("dc.title") == "descendant-or-self::dc:title[not(@type)]"
    assert field_xpath("dc.title.*") == "descendant-or-self::dc:title"
    with pytest.raises(ValueError, match=r"prefix\.element"):
        field_xpath("title")
    with pytest.raises(ValueError, match=r"prefix\.element"):
        field_xpath("dc.title']|//x['")
