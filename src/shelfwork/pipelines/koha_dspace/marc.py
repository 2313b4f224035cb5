"""MARCXML in and out of Koha, and the 956/856 fields the integration writes back.

Koha's record is the only place a cataloguer sees what happened to a scan, so the integration
keeps its state in one 956 field (the one whose $u names the file in the inbox):

- $y status (``imported`` / ``error``), $z a warning or error note, $3 the DSpace item UUID (the
  dedup key on a re-run), $c the cover image URL;
- 856 40 $u the repository's handle URL, added once and never duplicated on re-runs.

MARCXML comes from a remote system, so it is parsed as untrusted input: no DTD, no entities, no
network, no huge trees, and any DOCTYPE is refused outright (XXE and "billion laughs" both need
one). pymarc's own MARCXML reader runs expat with default settings, so it never sees the bytes;
this module converts the already-safe lxml tree into a `pymarc.Record` itself.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass

import pymarc
from lxml import etree
from pymarc import Field, Indicators, Subfield

from ...errors import ShelfworkError
from ...safexml import parser as safe_parser

MARC_NS = "http://www.loc.gov/MARC21/slim"

#: the field and subfields the integration owns
INTEGRATION_TAG = "956"
FILE_CODE = "u"
STATUS_CODE = "y"
NOTE_CODE = "z"
UUID_CODE = "3"
COVER_CODE = "c"
HANDLE_TAG = "856"

STATUS_IMPORTED = "imported"
STATUS_ERROR = "error"

#: longest 956$z note; Koha displays it in the record view, a stack trace does not belong there
MAX_NOTE = 250

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_TAG_RE = re.compile(r"^[0-9A-Za-z]{3}$")
_DOCTYPE_MARKERS = (b"<!DOCTYPE", b"<!ENTITY")
# ISBD punctuation a cataloguer leaves at the end of a subfield: " /", " :", " ;", ",", " =", "."
_TRAILING_ISBD = re.compile(r"[\s/:;,=]+$")
#: words whose final period is part of the word, not ISBD punctuation (lower-case)
ABBREVIATIONS = frozenset({
    "co", "corp", "ed", "eds", "etc", "inc", "jr", "ltd", "no", "nos", "p", "pp", "sr", "st",
    "vol", "vols",
    # Ukrainian and Russian: sheets, edition, issue, see, named after, book, scientific,
    # translated, year(s), editor, page, century, volume, compiler, part, illustrations
    "арк", "вид", "вип", "див", "ім", "кн", "наук", "пер", "р", "рр", "ред", "с", "ст", "т",
    "том", "укл", "упоряд", "ч", "іл", "ил", "изд", "гг", "г",
})  # fmt: skip
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class BadRecord(ShelfworkError):
    """The MARCXML cannot be used; the message names the biblio and what is wrong."""

    def __init__(self, biblionumber: int | None, problem: str) -> None:
        self.biblionumber = biblionumber
        self.problem = problem
        who = f"biblio {biblionumber}" if biblionumber is not None else "MARCXML record"
        super().__init__(f"{who}: {problem}")


@dataclass(frozen=True)
class IntegrationState:
    """What the integration has written into a record (None = subfield absent)."""

    status: str | None = None
    message: str | None = None
    uuid: str | None = None
    cover_url: str | None = None
    handle_urls: tuple[str, ...] = ()


# --- reading -----------------------------------------------------------------------------------


def parse_marcxml(data: bytes, *, biblionumber: int | None = None) -> pymarc.Record:
    """One MARC21 record from MARCXML bytes (`<record>` or a `<collection>` holding one)."""
    if not data or not data.strip():
        raise BadRecord(biblionumber, "empty MARCXML (no bytes to parse)")
    # Refuse before parsing when the DOCTYPE is visible as ASCII; the docinfo check below
    # catches it in other encodings (UTF-16) too.
    upper = data.upper()
    if any(marker in upper for marker in _DOCTYPE_MARKERS):
        raise BadRecord(
            biblionumber, "MARCXML must not contain a DOCTYPE (DTDs and entities are refused)"
        )
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        raise BadRecord(biblionumber, f"malformed XML{where}: {exc.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise BadRecord(
            biblionumber, "MARCXML must not contain a DOCTYPE (DTDs and entities are refused)"
        )
    return _record_from_element(_the_record_element(root, biblionumber), biblionumber)


def _local(element: etree._Element) -> tuple[str | None, str]:
    qname = etree.QName(element)
    return qname.namespace, qname.localname


def _the_record_element(root: etree._Element, biblionumber: int | None) -> etree._Element:
    namespace, name = _local(root)
    if namespace not in (None, MARC_NS):
        raise BadRecord(
            biblionumber, f"not MARCXML: root element <{name}> is in namespace {namespace!r}"
        )
    if name == "record":
        return root
    if name != "collection":
        raise BadRecord(
            biblionumber,
            f"not MARCXML: root element is <{name}>, expected <record> or <collection>",
        )
    records = [
        child
        for child in root
        if isinstance(child.tag, str) and _local(child) in ((MARC_NS, "record"), (None, "record"))
    ]
    if not records:
        raise BadRecord(biblionumber, "the <collection> holds no <record>")
    if len(records) > 1:
        raise BadRecord(
            biblionumber, f"the <collection> holds {len(records)} records, expected exactly one"
        )
    return records[0]


def _record_from_element(element: etree._Element, biblionumber: int | None) -> pymarc.Record:
    record = pymarc.Record(force_utf8=True)
    has_content = False
    for child in element:
        if not isinstance(child.tag, str):  # an entity reference or other non-element node
            raise BadRecord(biblionumber, f"unexpected XML node at line {child.sourceline}")
        namespace, name = _local(child)
        if namespace not in (None, MARC_NS):
            continue  # foreign extensions are allowed by the schema's spirit; not ours to read
        line = child.sourceline
        if name == "leader":
            text = child.text or ""
            if len(text) != 24:
                raise BadRecord(
                    biblionumber,
                    f"leader at line {line} has {len(text)} characters, expected 24",
                )
            record.leader = pymarc.Leader(text)
            has_content = True
        elif name == "controlfield":
            tag = _tag_of(child, biblionumber)
            record.add_field(Field(tag=tag, data=child.text or ""))
            has_content = True
        elif name == "datafield":
            record.add_field(_datafield(child, biblionumber))
            has_content = True
        else:
            raise BadRecord(biblionumber, f"unexpected element <{name}> at line {line}")
    if not has_content:
        raise BadRecord(biblionumber, "the <record> is empty (no leader, no fields)")
    return record


def _tag_of(element: etree._Element, biblionumber: int | None) -> str:
    tag = element.get("tag")
    if tag is None or not _TAG_RE.match(tag):
        raise BadRecord(
            biblionumber,
            f"<{_local(element)[1]}> at line {element.sourceline} has a bad tag {tag!r}",
        )
    return tag


def _indicator(element: etree._Element, name: str, biblionumber: int | None) -> str:
    value = element.get(name, " ")
    if value == "":
        return " "
    if len(value) != 1:
        raise BadRecord(
            biblionumber,
            f"datafield {element.get('tag')} at line {element.sourceline}: {name} is {value!r}",
        )
    return value


def _datafield(element: etree._Element, biblionumber: int | None) -> Field:
    tag = _tag_of(element, biblionumber)
    subfields: list[Subfield] = []
    for child in element:
        if not isinstance(child.tag, str):
            raise BadRecord(biblionumber, f"unexpected XML node at line {child.sourceline}")
        if _local(child)[1] != "subfield":
            raise BadRecord(
                biblionumber,
                f"datafield {tag} at line {child.sourceline}: unexpected <{_local(child)[1]}>",
            )
        code = child.get("code")
        if code is None or len(code) != 1:
            raise BadRecord(
                biblionumber,
                f"datafield {tag} at line {child.sourceline}: subfield code {code!r}",
            )
        subfields.append(Subfield(code=code, value=child.text or ""))
    indicators = Indicators(
        _indicator(element, "ind1", biblionumber), _indicator(element, "ind2", biblionumber)
    )
    return Field(tag=tag, indicators=indicators, subfields=subfields)


# --- writing -----------------------------------------------------------------------------------


def to_marcxml(record: pymarc.Record) -> bytes:
    """MARC21 slim `<record>` as UTF-8 bytes, the body Koha's PUT /biblios/{id} takes."""
    root = etree.Element(f"{{{MARC_NS}}}record", nsmap={None: MARC_NS})
    etree.SubElement(root, f"{{{MARC_NS}}}leader").text = str(record.leader)
    try:
        for field in record.fields:
            if field.is_control_field():
                control = etree.SubElement(root, f"{{{MARC_NS}}}controlfield", tag=field.tag)
                control.text = field.data or ""
                continue
            ind1, ind2 = field.indicators or (" ", " ")
            data = etree.SubElement(
                root, f"{{{MARC_NS}}}datafield", tag=field.tag, ind1=ind1 or " ", ind2=ind2 or " "
            )
            for subfield in field.subfields:
                element = etree.SubElement(data, f"{{{MARC_NS}}}subfield", code=subfield.code)
                element.text = subfield.value
    except ValueError as exc:  # lxml refuses control characters XML 1.0 cannot carry
        raise BadRecord(_control_number(record), f"cannot write as MARCXML: {exc}") from None
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _control_number(record: pymarc.Record) -> int | None:
    field = record.get("001")
    if field is not None and (field.data or "").strip().isdigit():
        return int(field.data.strip())
    return None


# --- the integration's fields ------------------------------------------------------------------


def _integration_field(record: pymarc.Record) -> Field | None:
    """The 956 carrying $u (the file reference), else the first 956."""
    fields = record.get_fields(INTEGRATION_TAG)
    for field in fields:
        if any(value.strip() for value in field.get_subfields(FILE_CODE)):
            return field
    return fields[0] if fields else None


def _first(field: Field | None, code: str) -> str | None:
    if field is None:
        return None
    for value in field.get_subfields(code):
        if value.strip():
            return value.strip()
    return None


def file_reference(record: pymarc.Record) -> str | None:
    """The scan's path relative to the inbox (first non-blank 956$u), or None."""
    for field in record.get_fields(INTEGRATION_TAG):
        value = _first(field, FILE_CODE)
        if value is not None:
            return value
    return None


def item_uuid(record: pymarc.Record) -> str | None:
    """The DSpace item UUID from 956$3 (lower-case), or None if absent or not UUID-shaped."""
    value = _first(_integration_field(record), UUID_CODE)
    if value is None or not _UUID_RE.match(value):
        return None
    return str(uuid.UUID(value))


def handle_urls(record: pymarc.Record) -> tuple[str, ...]:
    urls: list[str] = []
    for field in record.get_fields(HANDLE_TAG):
        urls.extend(value.strip() for value in field.get_subfields("u") if value.strip())
    return tuple(urls)


def integration_state(record: pymarc.Record) -> IntegrationState:
    field = _integration_field(record)
    return IntegrationState(
        status=_first(field, STATUS_CODE),
        message=_first(field, NOTE_CODE),
        uuid=_first(field, UUID_CODE),
        cover_url=_first(field, COVER_CODE),
        handle_urls=handle_urls(record),
    )


def note_text(message: str) -> str:
    """A note fit for 956$z: one line, at most MAX_NOTE characters, cut at a word boundary."""
    text = " ".join(_CONTROL_CHARS.sub(" ", unicodedata.normalize("NFC", message)).split())
    if len(text) <= MAX_NOTE:
        return text
    room = MAX_NOTE - 1  # keep one character for the ellipsis
    cut = text.rfind(" ", 0, room + 1)
    # A word boundary far back (a long URL or path) would waste the note; cut mid-word then.
    head = text[:cut] if cut >= room // 2 else text[:room]
    return head.rstrip(" ,;:.-") + "…"


def _set_subfield(field: Field, code: str, value: str | None) -> None:
    """Replace every `code` subfield with one holding `value` (None removes them)."""
    positions = [i for i, subfield in enumerate(field.subfields) if subfield.code == code]
    kept = [subfield for subfield in field.subfields if subfield.code != code]
    if value is not None:
        at = positions[0] if positions else len(kept)
        kept.insert(at, Subfield(code=code, value=value))
    field.subfields = kept


def _require_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError(f"{name} must not be empty (pass None to leave the subfield as it is)")
    return value


def mark_integration(
    record: pymarc.Record,
    *,
    status: str,
    message: str | None = None,
    uuid: str | None = None,
    cover_url: str | None = None,
    handle_url: str | None = None,
) -> pymarc.Record:
    """Write the integration's outcome into the record (in place) and return it.

    $y always; $z replaced by `message` or removed when it is None; $3, $c and the 856 only
    when given. Running it twice with the same values changes nothing the second time.
    """
    status = _require_text("status", status) or ""
    uuid = _require_text("uuid", uuid)
    cover_url = _require_text("cover_url", cover_url)
    handle_url = _require_text("handle_url", handle_url)
    field = _integration_field(record)
    if field is None:
        field = Field(tag=INTEGRATION_TAG, indicators=Indicators(" ", " "), subfields=[])
        record.add_ordered_field(field)
    _set_subfield(field, STATUS_CODE, status)
    note = note_text(message) if message is not None else ""
    _set_subfield(field, NOTE_CODE, note or None)
    if uuid is not None:
        _set_subfield(field, UUID_CODE, uuid)
    if cover_url is not None:
        _set_subfield(field, COVER_CODE, cover_url)
    if handle_url is not None and handle_url not in handle_urls(record):
        record.add_ordered_field(
            Field(
                tag=HANDLE_TAG,
                indicators=Indicators("4", "0"),
                subfields=[Subfield(code="u", value=handle_url)],
            )
        )
    return record


def check_marked(record: pymarc.Record, expected: IntegrationState) -> list[str]:
    """What of `expected` is not in `record` (re-read after the PUT); empty when all stuck.

    Koha's record overlay rules can keep the old 956/856 without an error, so the only proof
    is reading the record back. `expected` is usually `integration_state` of the record that was
    sent; None for uuid and cover_url means "not checked", None for message means "no $z".
    """
    actual = integration_state(record)
    problems: list[str] = []
    pairs = (
        (STATUS_CODE, expected.status, actual.status),
        (UUID_CODE, expected.uuid, actual.uuid),
        (COVER_CODE, expected.cover_url, actual.cover_url),
    )
    for code, want, have in pairs:
        if want is None:
            continue
        want = want.strip()
        if have is None:
            problems.append(f"{INTEGRATION_TAG}${code} missing, expected {want!r}")
        elif have != want:
            problems.append(f"{INTEGRATION_TAG}${code} is {have!r}, expected {want!r}")
    want_note = note_text(expected.message) if expected.message is not None else None
    if want_note != (actual.message or None):
        if want_note is None:
            problems.append(f"{INTEGRATION_TAG}${NOTE_CODE} is {actual.message!r}, expected none")
        elif actual.message is None:
            problems.append(f"{INTEGRATION_TAG}${NOTE_CODE} missing, expected {want_note!r}")
        else:
            problems.append(
                f"{INTEGRATION_TAG}${NOTE_CODE} is {actual.message!r}, expected {want_note!r}"
            )
    for url in expected.handle_urls:
        if url.strip() not in actual.handle_urls:
            problems.append(f"{HANDLE_TAG}$u {url.strip()} missing")
    return problems


def strip_isbd(text: str) -> str:
    """Drop the ISBD punctuation a subfield ends with (" /", " :", " ;", ",", " =", a final ".").

    A final period stays after an initial ("T.") or a common abbreviation ("p.", "ed.", and the
    Ukrainian/Russian ones cataloguers use: century, volume, edition, illustrations...).
    """
    text = _TRAILING_ISBD.sub("", text.strip())
    if text.endswith(".") and not text.endswith(".."):
        words = text[:-1].split()
        last = words[-1].lower() if words else ""
        if not ((len(last) == 1 and last.isalpha()) or last in ABBREVIATIONS):
            text = _TRAILING_ISBD.sub("", text[:-1])
    return text


def title_of(record: pymarc.Record) -> str | None:
    """245 $a $b $n $p as one line without the trailing ISBD punctuation, or None."""
    field = record.get("245")
    if field is None:
        return None
    parts = (" ".join(sf.value.split()) for sf in field.subfields if sf.code in "abnp")
    text = strip_isbd(" ".join(part for part in parts if part))
    return unicodedata.normalize("NFC", text) or None
