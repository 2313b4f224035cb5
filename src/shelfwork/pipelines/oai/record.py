"""One harvested metadata record, parsed once so every rule reads the same tree.

Parsing is the trust boundary for what remote repositories send: lxml without entities, DTDs or
network, any DOCTYPE refused, and only UTF-8 accepted. A record that fails raises `BadMetadata`,
which the pipeline dead-letters with its reason while the run goes on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol

from lxml import etree

from ...errors import ShelfworkError
from ...safexml import parser as safe_parser

#: prefixes a field name (`dc.title`) or an XPath expression may use without declaring them
DEFAULT_NAMESPACES: dict[str, str] = {
    "oai_dc": "http://www.openarchives.org/OAI/2.0/oai_dc/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "dcterms": "http://purl.org/dc/terms/",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}

#: `prefix.element`, `prefix.element.qualifier` or `prefix.element.*` (see field_xpath)
FIELD_SYNTAX = re.compile(r"([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)(?:\.([A-Za-z_][\w-]*|\*))?")
#: the qualifier that stands for every occurrence, qualified or not
ANY_QUALIFIER = "*"

_DOCTYPE_MARKERS = ("<!DOCTYPE", "<!ENTITY")
_DECLARED_ENCODING = re.compile(r"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([^"']+)["']""")
_UTF8_NAMES = {"utf-8", "utf8"}


class BadMetadata(ShelfworkError):
    """A record's metadata cannot be read safely; `problem` says why."""

    def __init__(self, identifier: str, problem: str) -> None:
        self.identifier = identifier
        self.problem = problem
        super().__init__(f"record {identifier!r}: {problem}")


class HarvestedRecord(Protocol):
    """What `from_harvest` needs of a harvested record (`connectors.oaipmh.Record` fits)."""

    identifier: str
    metadata: bytes | None


def field_xpath(field: str) -> str:
    """The XPath a field name stands for.

    A name addresses one qualifier level, as the reference platform's names do (lareferencia-
    core-lib XOAIXPATHHelper.getXPATH: `dc.date.none` is the unqualified dates, `dc.date.issued.*`
    the issued ones, `dc.date.*` every one): `dc.date` selects the `dc:date` elements without a
    `type` attribute, `dc.date.issued` those whose `type` is `issued` (oai_dc has no qualifiers
    of its own; this is how the extended Dublin Core profiles repositories emit mark them), and
    `dc.date.*` every `dc:date`, qualified or not.
    """
    match = FIELD_SYNTAX.fullmatch(field)
    if match is None:
        raise ValueError(
            f"field {field!r} is not of the form prefix.element or prefix.element.qualifier"
        )
    prefix, element, qualifier = match.groups()
    path = f"descendant-or-self::{prefix}:{element}"
    if qualifier == ANY_QUALIFIER:
        return path
    return f"{path}[@type='{qualifier}']" if qualifier else f"{path}[not(@type)]"


@lru_cache(maxsize=1024)
def _compiled_xpath(expr: str, namespaces: tuple[tuple[str, str], ...]) -> etree.XPath:
    # Compiling an XPath costs more than evaluating it on one small record; rule sets reuse a
    # handful of expressions over many records. An etree.XPath takes its own lock per call,
    # so sharing one between threads is safe.
    return etree.XPath(expr, namespaces=dict(namespaces))


def normalise_space(text: str) -> str:
    return " ".join(text.split())


def _checked_text(data: bytes, identifier: str) -> None:
    """Refuse what is not plain UTF-8 XML without a DOCTYPE, before lxml sees it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BadMetadata(identifier, "metadata must be UTF-8; it starts with a UTF-16 mark")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMetadata(
            identifier,
            f"metadata is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
        ) from None
    if "\x00" in text:
        raise BadMetadata(identifier, "metadata holds NUL characters (not UTF-8 XML)")
    declared = _DECLARED_ENCODING.match(text.removeprefix("\ufeff"))
    if declared and declared.group(1).lower() not in _UTF8_NAMES:
        raise BadMetadata(
            identifier, f"metadata must be UTF-8; it declares encoding {declared.group(1)!r}"
        )
    upper = text.upper()
    if any(marker in upper for marker in _DOCTYPE_MARKERS):
        raise BadMetadata(
            identifier, "metadata must not contain a DOCTYPE (DTDs and entities are refused)"
        )


class MetadataRecord:
    """A parsed metadata record whose fields are addressed as `prefix.element[.qualifier]`."""

    __slots__ = ("_values", "identifier", "namespaces", "root")

    def __init__(
        self,
        identifier: str,
        root: etree._Element,
        namespaces: Mapping[str, str] | None = None,
    ) -> None:
        self.identifier = identifier
        self.root = root
        self.namespaces: dict[str, str] = {**DEFAULT_NAMESPACES, **(namespaces or {})}
        # Rules of one set read the same fields over and over; each is resolved once.
        self._values: dict[str, list[str]] = {}

    @classmethod
    def parse(
        cls, data: bytes, identifier: str, *, namespaces: Mapping[str, str] | None = None
    ) -> MetadataRecord:
        if not data or not data.strip():
            raise BadMetadata(identifier, "empty metadata (no bytes to parse)")
        _checked_text(data, identifier)
        try:
            root = etree.fromstring(data, safe_parser())
        except etree.XMLSyntaxError as exc:
            where = f" at line {exc.lineno}" if exc.lineno else ""
            raise BadMetadata(identifier, f"malformed XML{where}: {exc.msg}") from None
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            raise BadMetadata(
                identifier, "metadata must not contain a DOCTYPE (DTDs and entities are refused)"
            )
        if docinfo.encoding and docinfo.encoding.lower() not in _UTF8_NAMES | {"us-ascii"}:
            raise BadMetadata(identifier, f"metadata must be UTF-8, not {docinfo.encoding}")
        return cls(identifier, root, namespaces)

    @classmethod
    def from_harvest(
        cls, record: HarvestedRecord, *, namespaces: Mapping[str, str] | None = None
    ) -> MetadataRecord:
        if record.metadata is None:
            raise BadMetadata(record.identifier, "no metadata (a deleted record?)")
        return cls.parse(record.metadata, record.identifier, namespaces=namespaces)

    def use_namespaces(self, namespaces: Mapping[str, str]) -> None:
        """Add or rebind prefixes (a rule set's own table); resolved fields are forgotten."""
        if any(self.namespaces.get(prefix) != uri for prefix, uri in namespaces.items()):
            self.namespaces.update(namespaces)
            self._values.clear()

    def values(self, field: str) -> list[str]:
        """Each occurrence's text (descendants included), whitespace-normalised, in order.

        An element with no text, or only whitespace, is no occurrence: the reference platform
        reads only elements with a text child (OAIRecordMetadata.getFieldOcurrences) after its
        oai_dc crosswalk dropped whitespace-only text (oai_dc2xoai.xsl, xsl:strip-space)."""
        found = self._values.get(field)
        if found is None:
            nodes = self.xpath(field_xpath(field))
            texts = (normalise_space("".join(node.itertext())) for node in nodes)
            found = [text for text in texts if text]
            self._values[field] = found
        return list(found)

    def xpath(self, expr: str) -> Any:
        """`expr` evaluated on the root with the namespace table (a list for node sets)."""
        return _compiled_xpath(expr, tuple(sorted(self.namespaces.items())))(self.root)

    def to_bytes(self) -> bytes:
        return etree.tostring(self.root, encoding="UTF-8")

    # --- changes (transformer rules); each forgets the resolved field values ---------------

    def forget_values(self) -> None:
        """Drop resolved field values; the tree changed, so they may be stale."""
        self._values.clear()

    def elements(self, field: str) -> list[etree._Element]:
        """The elements holding `field`'s occurrences, in document order."""
        return [node for node in self.xpath(field_xpath(field)) if isinstance(node, etree._Element)]

    def _tag(self, field: str) -> tuple[str, str, str, str | None]:
        """(prefix, namespace URI, Clark tag, qualifier) of a field name."""
        match = FIELD_SYNTAX.fullmatch(field)
        if match is None:
            raise ValueError(
                f"field {field!r} is not of the form prefix.element or prefix.element.qualifier"
            )
        prefix, element, qualifier = match.groups()
        if qualifier == ANY_QUALIFIER:
            raise ValueError(f"field {field!r} selects every qualifier; it cannot be written to")
        uri = self.namespaces.get(prefix)
        if uri is None:
            raise ValueError(f"unknown namespace prefix {prefix!r} in field {field!r}")
        return prefix, uri, f"{{{uri}}}{element}", qualifier

    def add_value(self, field: str, value: str) -> etree._Element:
        """A new occurrence of `field`, placed after the last element of the same name (so
        repeated fields stay together), else after the root's last child."""
        prefix, uri, tag, qualifier = self._tag(field)
        same_name = self.root.xpath(
            "descendant::*[namespace-uri()=$uri and local-name()=$name]",
            uri=uri,
            name=etree.QName(tag).localname,
        )
        anchor = same_name[-1] if same_name else (self.root[-1] if len(self.root) else None)
        parent = anchor.getparent() if anchor is not None else self.root
        element = etree.Element(tag, nsmap=None if uri in parent.nsmap.values() else {prefix: uri})
        if qualifier:
            element.set("type", qualifier)
        element.text = value
        if anchor is None:
            self.root.append(element)
        else:
            layout = anchor.tail
            anchor.addnext(element)
            if layout is None or not layout.strip():
                # Keep the indentation of pretty-printed records: the newcomer takes the
                # anchor's trailing space and the anchor takes the space that precedes it.
                element.tail = layout
                if layout is not None:
                    anchor.tail = _space_before(anchor) or layout
            else:
                element.tail = None
        self.forget_values()
        return element

    def set_value(self, element: etree._Element, value: str) -> None:
        """Replace an occurrence's content with plain text (child elements are dropped)."""
        for child in list(element):
            element.remove(child)
        element.text = value
        self.forget_values()

    def remove_element(self, element: etree._Element) -> None:
        """Remove an occurrence, keeping the text that followed it in its parent."""
        parent = element.getparent()
        if parent is None:
            raise ValueError("the root element cannot be removed")
        tail = element.tail
        previous = element.getprevious()
        parent.remove(element)
        if tail and tail.strip():
            if previous is not None:
                previous.tail = (previous.tail or "") + tail
            else:
                parent.text = (parent.text or "") + tail
        self.forget_values()

    def rename_element(self, element: etree._Element, field: str) -> etree._Element:
        """Make an occurrence one of `field`, in place: its qualifier becomes the `type`
        attribute (dropped when `field` has none). Returns the element now in the tree."""
        prefix, uri, tag, qualifier = self._tag(field)
        renamed = element
        parent = element.getparent()
        if uri in element.nsmap.values() or parent is None:
            element.tag = tag
        else:
            # A fresh element declares the field's prefix; retagging alone would invent `ns0`.
            renamed = etree.Element(tag, attrib=dict(element.attrib), nsmap={prefix: uri})
            renamed.text = element.text
            renamed.tail = element.tail
            renamed.extend(list(element))
            parent.replace(element, renamed)
        if qualifier:
            renamed.set("type", qualifier)
        elif "type" in renamed.attrib:
            del renamed.attrib["type"]
        self.forget_values()
        return renamed


def _space_before(element: etree._Element) -> str | None:
    """The whitespace-only text just before `element` (its indentation), if any."""
    previous = element.getprevious()
    parent = element.getparent()
    space = previous.tail if previous is not None else (parent.text if parent is not None else None)
    return space if space is not None and not space.strip() else None
