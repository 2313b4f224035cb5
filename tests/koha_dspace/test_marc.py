"""MARCXML parsing (untrusted input), writing, and the 956/856 integration fields."""

from __future__ import annotations

import pymarc
import pytest
from lxml import etree
from pymarc import Field, Indicators, Subfield

from shelfwork.pipelines.koha_dspace.marc import (
    MARC_NS,
    MAX_NOTE,
    BadRecord,
    IntegrationState,
    check_marked,
    file_reference,
    integration_state,
    item_uuid,
    mark_integration,
    note_text,
    parse_marcxml,
    title_of,
    to_marcxml,
)

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
HANDLE = "https://repository.example/handle/123456789/60"


def marcxml(*fields: str, leader: str = "00000nam a2200000 i 4500", ns: bool = True) -> bytes:
    xmlns = f' xmlns="{MARC_NS}"' if ns else ""
    body = "".join(fields)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<record{xmlns}>'
        f"<leader>{leader}</leader>{body}</record>"
    ).encode()


def datafield(tag: str, *subfields: tuple[str, str], ind1: str = " ", ind2: str = " ") -> str:
    inner = "".join(f'<subfield code="{code}">{value}</subfield>' for code, value in subfields)
    return f'<datafield tag="{tag}" ind1="{ind1}" ind2="{ind2}">{inner}</datafield>'


KOBZAR = marcxml(
    '<controlfield tag="001">42</controlfield>',
    datafield("100", ("a", "Шевченко, Тарас Григорович,"), ("d", "1814-1861."), ind1="1"),
    datafield(
        "245", ("a", "Кобзар :"), ("b", "вибрані твори /"), ("c", "Т. Г. Шевченко."), ind1="1"
    ),
    datafield("956", ("u", " scans/kobzar.pdf ")),
)


def record_with(*fields: Field) -> pymarc.Record:
    record = pymarc.Record()
    record.leader = pymarc.Leader("00000nam a2200000 i 4500")
    for field in fields:
        record.add_ordered_field(field)
    return record


def f956(*subfields: tuple[str, str]) -> Field:
    return Field(
        tag="956",
        indicators=Indicators(" ", " "),
        subfields=[Subfield(code, value) for code, value in subfields],
    )


# --- parsing untrusted XML ---------------------------------------------------------------------


def test_parses_a_record_with_cyrillic() -> None:
    record = parse_marcxml(KOBZAR, biblionumber=42)
    assert record["001"].data == "42"
    assert record["245"]["a"] == "Кобзар :"
    assert record["100"].indicators == Indicators("1", " ")
    assert str(record.leader) == "00000nam a2200000 i 4500"


def test_accepts_a_collection_and_no_namespace() -> None:
    inner = marcxml(datafield("245", ("a", "Title")), ns=False).split(b"?>", 1)[1]
    record = parse_marcxml(b"<collection>" + inner + b"</collection>")
    assert title_of(record) == "Title"
    namespaced = (
        f'<marc:collection xmlns:marc="{MARC_NS}"><marc:record><marc:leader>'
        '00000nam a2200000 i 4500</marc:leader><marc:datafield tag="245" ind1="0" ind2="0">'
        '<marc:subfield code="a">Prefixed</marc:subfield></marc:datafield></marc:record>'
        "</marc:collection>"
    ).encode()
    assert title_of(parse_marcxml(namespaced)) == "Prefixed"


def test_xxe_external_entity_is_refused(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    for target in (secret.as_uri(), "file:///etc/passwd"):
        data = (
            f'<?xml version="1.0"?><!DOCTYPE record [<!ENTITY x SYSTEM "{target}">]>'
            f'<record xmlns="{MARC_NS}"><leader>00000nam a2200000 i 4500</leader>'
            '<datafield tag="245" ind1="0" ind2="0"><subfield code="a">&x;</subfield>'
            "</datafield></record>"
        ).encode()
        with pytest.raises(BadRecord, match="DOCTYPE") as caught:
            parse_marcxml(data, biblionumber=7)
        assert "biblio 7" in str(caught.value)
        assert "TOP-SECRET" not in str(caught.value)
        assert "root:" not in str(caught.value)


def test_billion_laughs_is_refused_quickly() -> None:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">'
        for n in range(1, 10)
    )
    data = (
        f'<?xml version="1.0"?><!DOCTYPE record [{entities}]><record>'
        "<leader>00000nam a2200000 i 4500</leader>"
        '<datafield tag="245" ind1="0" ind2="0"><subfield code="a">&lol9;</subfield>'
        "</datafield></record>"
    ).encode()
    with pytest.raises(BadRecord, match="DOCTYPE"):
        parse_marcxml(data, biblionumber=1)


def test_doctype_in_utf16_is_refused_too() -> None:
    """A byte scan cannot see a UTF-16 DOCTYPE; the parsed document's docinfo can."""
    text = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE record>'
        "<record><leader>00000nam a2200000 i 4500</leader></record>"
    )
    with pytest.raises(BadRecord, match="DOCTYPE"):
        parse_marcxml(text.encode("utf-16"), biblionumber=3)


def test_a_plain_doctype_without_entities_is_refused() -> None:
    data = (
        b'<!DOCTYPE record SYSTEM "http://example.org/marc.dtd">'
        + marcxml(datafield("245", ("a", "T"))).split(b"?>", 1)[1]
    )
    with pytest.raises(BadRecord, match="DOCTYPE"):
        parse_marcxml(data)


def test_malformed_xml_names_the_biblio_and_the_line() -> None:
    data = b'<record>\n<leader>00000nam a2200000 i 4500</leader>\n<datafield tag="245">\n</record>'
    with pytest.raises(BadRecord) as caught:
        parse_marcxml(data, biblionumber=99)
    message = str(caught.value)
    assert message.startswith("biblio 99: malformed XML at line 4")
    assert caught.value.biblionumber == 99


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty MARCXML"),
        (b"   \n", "empty MARCXML"),
        (b"<html><body>Koha error</body></html>", "root element is <html>"),
        (b'<record xmlns="urn:other"/>', "in namespace 'urn:other'"),
        (b"<collection/>", "holds no <record>"),
        (b"<collection><record/><record/></collection>", "holds 2 records"),
        (b"<record/>", "the <record> is empty"),
        (b"<record><leader>short</leader></record>", "leader at line 1 has 5 characters"),
        (b'<record><controlfield tag="1">x</controlfield></record>', "bad tag '1'"),
        (b"<record><title>x</title></record>", "unexpected element <title>"),
        (
            b'<record><datafield tag="245" ind1="10"><subfield code="a">x</subfield>'
            b"</datafield></record>",
            "ind1 is '10'",
        ),
        (
            b'<record><datafield tag="245"><subfield code="ab">x</subfield></datafield></record>',
            "subfield code 'ab'",
        ),
    ],
)
def test_non_marc_or_broken_records_are_refused(data: bytes, expected: str) -> None:
    with pytest.raises(BadRecord, match="biblio 5") as caught:
        parse_marcxml(data, biblionumber=5)
    assert expected in str(caught.value)


def test_pymarc_never_parses_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymarc's own reader uses expat with default settings; it must not be reached."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pymarc's XML parser was used")

    monkeypatch.setattr(pymarc, "parse_xml_to_array", forbidden)
    monkeypatch.setattr(pymarc, "parse_xml", forbidden)
    assert parse_marcxml(KOBZAR)["245"]["b"] == "вибрані твори /"


# --- writing -----------------------------------------------------------------------------------


def test_cyrillic_round_trip() -> None:
    record = parse_marcxml(KOBZAR, biblionumber=42)
    written = to_marcxml(record)
    assert written.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert "Кобзар".encode() in written  # UTF-8 text, not character references
    root = etree.fromstring(written)
    assert root.tag == f"{{{MARC_NS}}}record"
    again = parse_marcxml(written, biblionumber=42)
    assert again.as_dict() == record.as_dict()
    assert [f.tag for f in again.fields] == ["001", "100", "245", "956"]


def test_to_marcxml_refuses_characters_xml_cannot_carry() -> None:
    record = record_with(
        Field(tag="001", data="17"),
        Field(tag="245", indicators=Indicators("0", "0"), subfields=[Subfield("a", "bad\x01")]),
    )
    with pytest.raises(BadRecord, match="biblio 17: cannot write as MARCXML"):
        to_marcxml(record)


# --- reading the integration fields ------------------------------------------------------------


def test_file_reference_and_title() -> None:
    record = parse_marcxml(KOBZAR)
    assert file_reference(record) == "scans/kobzar.pdf"
    assert title_of(record) == "Кобзар : вибрані твори"
    assert file_reference(record_with()) is None
    assert file_reference(record_with(f956(("y", "imported")))) is None
    assert file_reference(record_with(f956(("u", "  ")), f956(("u", "b.pdf")))) == "b.pdf"
    assert title_of(record_with()) is None


def test_title_keeps_an_initials_period_and_drops_isbd_punctuation() -> None:
    record = record_with(
        Field(
            tag="245",
            indicators=Indicators("1", "0"),
            subfields=[
                Subfield("a", "Harry Potter."),
                Subfield("n", "Part 1,"),
                Subfield("p", "The beginning /"),
                Subfield("c", "J. K. Rowling."),
            ],
        )
    )
    assert title_of(record) == "Harry Potter. Part 1, The beginning"
    initials = record_with(
        Field(tag="245", indicators=Indicators("0", "0"), subfields=[Subfield("a", "About T.")])
    )
    assert title_of(initials) == "About T."


def test_item_uuid_only_when_uuid_shaped() -> None:
    assert item_uuid(record_with(f956(("u", "a.pdf"), ("3", UUID.upper())))) == UUID
    assert item_uuid(record_with(f956(("u", "a.pdf"), ("3", "not-a-uuid")))) is None
    assert item_uuid(record_with(f956(("u", "a.pdf"), ("3", "")))) is None
    assert item_uuid(record_with()) is None


def test_integration_state_reads_the_956_with_u_and_all_856() -> None:
    record = record_with(
        f956(("y", "stale"), ("a", "unrelated")),
        f956(("u", "a.pdf"), ("y", "error"), ("z", "DSpace down"), ("3", UUID), ("c", "http://c")),
        Field(tag="856", indicators=Indicators("4", "0"), subfields=[Subfield("u", "http://h1")]),
        Field(tag="856", indicators=Indicators("4", "2"), subfields=[Subfield("u", "http://h2")]),
    )
    assert integration_state(record) == IntegrationState(
        status="error",
        message="DSpace down",
        uuid=UUID,
        cover_url="http://c",
        handle_urls=("http://h1", "http://h2"),
    )
    assert integration_state(record_with()) == IntegrationState()


# --- writing the integration fields ------------------------------------------------------------


def test_mark_sets_subfields_keeps_the_rest_and_adds_856() -> None:
    record = record_with(f956(("u", "a.pdf"), ("x", "local note"), ("y", "error"), ("z", "old")))
    mark_integration(
        record, status="imported", uuid=UUID, cover_url="http://koha/c.jpg", handle_url=HANDLE
    )
    field = record.get_fields("956")[0]
    assert [(sf.code, sf.value) for sf in field.subfields] == [
        ("u", "a.pdf"),
        ("x", "local note"),
        ("y", "imported"),
        ("3", UUID),
        ("c", "http://koha/c.jpg"),
    ]
    links = record.get_fields("856")
    assert len(links) == 1
    assert links[0].indicators == Indicators("4", "0")
    assert links[0]["u"] == HANDLE


def test_mark_twice_is_idempotent_one_856() -> None:
    record = parse_marcxml(KOBZAR, biblionumber=42)
    for _ in range(2):
        mark_integration(record, status="imported", uuid=UUID, handle_url=HANDLE)
    first = to_marcxml(record)
    mark_integration(record, status="imported", uuid=UUID, handle_url=HANDLE)
    assert to_marcxml(record) == first
    assert len(record.get_fields("856")) == 1
    assert len(record.get_fields("956")) == 1
    assert record["956"].get_subfields("y") == ["imported"]


def test_mark_does_not_duplicate_an_existing_856_from_elsewhere() -> None:
    record = record_with(
        f956(("u", "a.pdf")),
        Field(
            tag="856",
            indicators=Indicators("4", "1"),
            subfields=[Subfield("3", "Full text"), Subfield("u", f" {HANDLE} ")],
        ),
    )
    mark_integration(record, status="imported", handle_url=HANDLE)
    assert len(record.get_fields("856")) == 1


def test_mark_replaces_repeated_subfields_and_none_leaves_them() -> None:
    record = record_with(f956(("u", "a.pdf"), ("3", "old-1"), ("3", "old-2"), ("c", "http://c")))
    mark_integration(record, status="error", message="boom")
    field = record["956"]
    assert field.get_subfields("3") == ["old-1", "old-2"]  # uuid None: left as it is
    assert field.get_subfields("c") == ["http://c"]
    mark_integration(record, status="imported", uuid=UUID)
    assert field.get_subfields("3") == [UUID]
    assert field.get_subfields("z") == []  # message None removes the note


def test_mark_creates_a_956_when_there_is_none() -> None:
    record = record_with(Field(tag="245", indicators=Indicators("0", "0"), subfields=[]))
    mark_integration(record, status="error", message="no 956$u naming the scan")
    assert [f.tag for f in record.fields] == ["245", "956"]
    assert integration_state(record).message == "no 956$u naming the scan"


def test_mark_refuses_empty_values() -> None:
    with pytest.raises(ValueError, match="status"):
        mark_integration(record_with(), status=" ")
    with pytest.raises(ValueError, match="uuid"):
        mark_integration(record_with(), status="imported", uuid="")


def test_long_message_is_truncated_at_a_word_boundary() -> None:
    message = "DSpace refused the item: " + " ".join(f"word{n}" for n in range(100))
    note = note_text(message)
    assert len(note) <= MAX_NOTE
    assert note.endswith("…")
    assert note[:-1] == message[: len(note) - 1]
    assert message[len(note) - 1] == " " or not note[-2].isalnum()  # cut between words
    record = mark_integration(record_with(f956(("u", "a.pdf"))), status="error", message=message)
    assert integration_state(record).message == note


def test_truncation_of_one_long_word_and_of_newlines() -> None:
    note = note_text("https://x.example/" + "a" * 400)
    assert len(note) == MAX_NOTE and note.endswith("…")
    assert note_text("line one\n  line two\ttab") == "line one line two tab"
    assert note_text("short") == "short"


# --- checking what Koha kept -------------------------------------------------------------------


def test_check_marked_passes_when_everything_stuck() -> None:
    record = mark_integration(
        parse_marcxml(KOBZAR), status="imported", uuid=UUID, handle_url=HANDLE, message="ok"
    )
    expected = integration_state(record)
    stored = parse_marcxml(to_marcxml(record))
    assert check_marked(stored, expected) == []


def test_check_marked_catches_fields_an_overlay_rule_refused() -> None:
    original = parse_marcxml(KOBZAR)
    sent = mark_integration(parse_marcxml(KOBZAR), status="imported", uuid=UUID, handle_url=HANDLE)
    expected = integration_state(sent)
    # Koha kept its old 956 and 856 (an overlay rule for the source), but said 200.
    kept_old = mark_integration(original, status="error", message="DSpace was down")
    problems = check_marked(kept_old, expected)
    assert "956$y is 'error', expected 'imported'" in problems
    assert f"956$3 missing, expected '{UUID}'" in problems
    assert "956$z is 'DSpace was down', expected none" in problems
    assert f"856$u {HANDLE} missing" in problems
    assert len(problems) == 4


def test_check_marked_compares_the_note_as_it_would_be_stored() -> None:
    long = "x " * 300
    record = mark_integration(record_with(f956(("u", "a.pdf"))), status="error", message=long)
    expected = IntegrationState(status="error", message=long)
    assert check_marked(record, expected) == []
    record["956"].delete_subfield("z")
    assert check_marked(record, expected) == [f"956$z missing, expected {note_text(long)!r}"]
