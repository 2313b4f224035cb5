"""MARC21 → Dublin Core for DSpace item metadata.

The default table follows the Library of Congress "MARC to Dublin Core Crosswalk" (qualified
DC, with DSpace's field names), so a repository manager can check it against a published
source instead of against this code, and it writes only fields that DSpace's stock
`traditional` submission form accepts (`dspace/config/submission-forms.xml` on dspace-7_x and
dspace-8_x), because the submission path refuses any other field with 422 (DescribeStep):

========================================  =====================================================
MARC                                      DSpace field (stock form page)
========================================  =====================================================
245 $a $b $n $p                           dc.title (trailing ISBD punctuation removed) (one)
130 210 240 242 246 730 740               dc.title.alternative (one)
100 110 111 700 710 711 720               dc.contributor.author (DSpace's convention; LoC says
                                          "contributor", it does not use creator) (one)
260 $b / $c                               dc.publisher / dc.date.issued (the year: "c2021." →
                                          2021) (one)
264 _1 $b / $c                            dc.publisher / dc.date.issued — an EXTENSION: 264 was
                                          defined in 2011, after the LoC table; RDA records put
                                          the publication statement there instead of 260 (one)
020 $a / 022 $a / 024 $a                  dc.identifier.isbn / .issn / .other (one: the
                                          form's "Identifiers" qualifier list)
041 $a, 008/35-37                         dc.language.iso (MARC codes turned into ISO 639-1
                                          where one exists: ukr → uk, eng → en) (one)
600 610 611 630 647 648 650 653 654       dc.subject (subdivisions $v $x $y $z joined by " -- ")
656 657 658                               (two)
520                                       dc.description.abstract (two)
other 5XX (not 505 506 530 540 546)       dc.description (two)
440 490 800 810 811 830 773               dc.relation.ispartofseries (one)
Leader/06 (and /07)                       dc.type (DCMI: Text, Image, Sound; Collection for
                                          Leader/07 c or s; no type for m, o, p, r) (one)
========================================  =====================================================

In the LoC table but not in the stock form, so not written unless a local form has the field and
the override table below maps it (the README shows the table for all four): 300 $a →
dc.format.extent, 505 → dc.description.tableofcontents, 506 540 → dc.rights, 651 662 751 752 →
dc.coverage.spatial.

Left out on purpose: 856 (the repository writes dc.identifier.uri itself), 546 and 530
(free-text notes DSpace has no good home for), 655 (genre terms would mix with the DCMI
vocabulary in dc.type), classification numbers (050/080/082), 008/07-10 (a second, possibly
different dc.date.issued). The identifier shelfwork uses for dedup is added by the caller.

Overrides (a TOML table, keyed by MARC tag, "LDR" for the leader)::

    [systems.koha-dspace.crosswalk]
    "245" = { field = "dc.title", subfields = "ab" }     # replaces every default rule for 245
    "650" = false                                         # 650 is no longer mapped
    "999" = { field = "dc.description", subfields = "a" } # a local field, mapped
    "260" = [                                             # several rules for one tag
      { field = "dc.publisher", subfields = "b", split = true },
      { field = "dc.date.issued", subfields = "c", clean = "year" },
    ]

An override replaces the default rules for that tag only (other tags of a shared default rule,
e.g. 600 next to 650, keep theirs). Settings of one rule: ``field`` (required,
schema.element[.qualifier]), ``subfields`` (codes taken in record order; required for data
fields), ``join`` (between subfields, default " "), ``subdivisions`` (codes that start a " -- "
part), ``split`` (each subfield its own value), ``ind1`` / ``ind2`` (only fields with that
indicator), ``clean`` (one of CLEANERS), ``positions`` ([start, end) of the leader or a
control field).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import pymarc

from ...errors import ShelfworkError
from .marc import strip_isbd

LEADER = "LDR"

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_YEAR = re.compile(r"(?<!\d)(\d{4})(?!\d)")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.[a-z][a-zA-Z0-9_-]*(\.[a-zA-Z][a-zA-Z0-9_-]*)?$")
_TAG = re.compile(r"^[0-9A-Za-z]{3}$")
_SUBFIELD_CODES = re.compile(r"^[0-9a-z]*$")
_IDENTIFIER_TOKEN = re.compile(r"^\S+")

#: MARC (ISO 639-2/B) language codes whose ISO 639-1 form DSpace's language list uses
MARC_TO_ISO639_1 = {
    "ara": "ar", "arm": "hy", "bel": "be", "bul": "bg", "chi": "zh", "cze": "cs", "dan": "da",
    "dut": "nl", "eng": "en", "est": "et", "fin": "fi", "fre": "fr", "geo": "ka", "ger": "de",
    "gre": "el", "heb": "he", "hrv": "hr", "hun": "hu", "ita": "it", "jpn": "ja", "kaz": "kk",
    "kor": "ko", "lat": "la", "lav": "lv", "lit": "lt", "nor": "no", "pol": "pl", "por": "pt",
    "rum": "ro", "rus": "ru", "slo": "sk", "slv": "sl", "spa": "es", "srp": "sr", "swe": "sv",
    "tur": "tr", "ukr": "uk", "yid": "yi",
    # the ISO 639-2/T spellings some catalogues use
    "ces": "cs", "deu": "de", "ell": "el", "fra": "fr", "hye": "hy", "kat": "ka", "nld": "nl",
    "ron": "ro", "slk": "sk", "zho": "zh",
}  # fmt: skip
#: 008/35-37 values that say nothing about the language
_NO_LANGUAGE = {"", "|||", "und", "###"}

#: Leader/06 → DCMI type (LoC table); other values get no type
LEADER_TYPES = {
    "a": "Text", "c": "Text", "d": "Text", "t": "Text",
    "e": "Image", "f": "Image", "g": "Image", "k": "Image",
    "i": "Sound", "j": "Sound",
}  # fmt: skip


class CrosswalkError(ShelfworkError):
    """An override table is wrong; the message names the entry and what is wrong with it."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"crosswalk override {key!r}: {problem}")


@dataclass(frozen=True)
class Rule:
    """One MARC source → one DSpace field."""

    tags: tuple[str, ...]
    subfields: str
    field: str
    join: str = " "
    subdivisions: str = ""
    split: bool = False
    ind1: str | None = None
    ind2: str | None = None
    clean: str = "text"
    positions: tuple[int, int] | None = None


# --- cleaning one value ------------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFC, control characters (Koha's non-sorting markers among them) out, whitespace folded."""
    return " ".join(_CONTROL_CHARS.sub(" ", unicodedata.normalize("NFC", text)).split())


def _clean_text(value: str) -> list[str]:
    text = strip_isbd(normalise(value))
    return [text] if text else []


def _clean_raw(value: str) -> list[str]:
    text = normalise(value)
    return [text] if text else []


def _clean_year(value: str) -> list[str]:
    # "c2021.", "[2019?]", "2020 р.", "1998, c1995": the first four-digit year is the one meant.
    match = _YEAR.search(normalise(value))
    return [match.group(1)] if match else []


def _clean_identifier(value: str) -> list[str]:
    # 020 $a "9789660312345 (тв. опр.)": old records keep the qualifier in $a.
    match = _IDENTIFIER_TOKEN.match(normalise(value))
    token = strip_isbd(match.group(0)) if match else ""
    return [token] if token else []


def _clean_language(value: str) -> list[str]:
    code = normalise(value).lower().strip(" .;,")
    # Older records run several codes together in one $a ("ukreng").
    if len(code) > 3 and len(code) % 3 == 0 and code.isalpha():
        codes = [code[i : i + 3] for i in range(0, len(code), 3)]
    else:
        codes = [code]
    return [MARC_TO_ISO639_1.get(c, c) for c in codes if c not in _NO_LANGUAGE]


def _clean_type(value: str) -> list[str]:
    """Leader/06-07 (two characters) → DCMI type(s)."""
    kind = LEADER_TYPES.get(value[:1])
    types = [kind] if kind else []
    if value[1:2] in ("c", "s"):
        types.append("Collection")
    return types


CLEANERS: dict[str, Callable[[str], list[str]]] = {
    "text": _clean_text,
    "raw": _clean_raw,
    "year": _clean_year,
    "identifier": _clean_identifier,
    "language": _clean_language,
    "type": _clean_type,
}


# --- the default table -------------------------------------------------------------------------

_SUBJECT_SUBFIELDS = "abcdfgklmnpqrstvxyz"
#: 505, 506 and 540 are in the LoC table, under fields the stock form lacks (see above)
_OTHER_NOTES = tuple(
    str(tag) for tag in range(500, 600) if tag not in (505, 506, 520, 530, 540, 546)
)

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule((LEADER,), "", "dc.type", clean="type", positions=(6, 8)),
    Rule(("008",), "", "dc.language.iso", clean="language", positions=(35, 38)),
    Rule(("020",), "a", "dc.identifier.isbn", split=True, clean="identifier"),
    Rule(("022",), "a", "dc.identifier.issn", split=True, clean="identifier"),
    Rule(("024",), "a", "dc.identifier.other", split=True),
    Rule(("041",), "a", "dc.language.iso", split=True, clean="language"),
    Rule(("100", "700"), "abcq", "dc.contributor.author"),
    Rule(("110", "710"), "ab", "dc.contributor.author"),
    Rule(("111", "711"), "acdn", "dc.contributor.author"),
    Rule(("720",), "a", "dc.contributor.author"),
    Rule(("130", "240", "730"), "adfgklmnoprs", "dc.title.alternative"),
    Rule(("210",), "ab", "dc.title.alternative"),
    Rule(("242", "246"), "abnp", "dc.title.alternative"),
    Rule(("740",), "anp", "dc.title.alternative"),
    Rule(("245",), "abnp", "dc.title"),
    Rule(("260",), "b", "dc.publisher", split=True),
    Rule(("260",), "c", "dc.date.issued", split=True, clean="year"),
    Rule(("264",), "b", "dc.publisher", split=True, ind2="1"),
    Rule(("264",), "c", "dc.date.issued", split=True, ind2="1", clean="year"),
    Rule(("440", "490"), "anpv", "dc.relation.ispartofseries"),
    Rule(("520",), "ab", "dc.description.abstract"),
    Rule(_OTHER_NOTES, "a", "dc.description"),
    Rule(
        ("600", "610", "611", "630", "647", "648", "650", "653", "654", "656", "657", "658"),
        _SUBJECT_SUBFIELDS,
        "dc.subject",
        subdivisions="vxyz",
    ),
    Rule(("773",), "t", "dc.relation.ispartofseries"),
    Rule(("800", "810", "811", "830"), "abcdfklmnpqstv", "dc.relation.ispartofseries"),
)


# --- overrides ---------------------------------------------------------------------------------

_RULE_SETTINGS = {f.name for f in fields(Rule)} - {"tags"}


def load_rules(overrides: Mapping[str, Any] | None) -> tuple[Rule, ...]:
    """DEFAULT_RULES with `overrides` (the TOML table described above) applied."""
    if not overrides:
        return DEFAULT_RULES
    if not isinstance(overrides, Mapping):
        raise CrosswalkError("(table)", f"expected a table keyed by MARC tag, got {overrides!r}")
    replaced: set[str] = set()
    added: list[Rule] = []
    for key, value in overrides.items():
        tag = _checked_tag(key)
        replaced.add(tag)
        if value is False:
            continue
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise CrosswalkError(key, "an empty list maps nothing; use false to drop the tag")
        for index, entry in enumerate(entries):
            where = key if len(entries) == 1 and not isinstance(value, list) else f"{key}[{index}]"
            added.append(_rule_from_entry(where, tag, entry))
    kept: list[Rule] = []
    for rule in DEFAULT_RULES:
        tags = tuple(tag for tag in rule.tags if tag not in replaced)
        if tags:
            kept.append(rule if tags == rule.tags else _with_tags(rule, tags))
    return (*kept, *added)


def _with_tags(rule: Rule, tags: tuple[str, ...]) -> Rule:
    settings = {name: getattr(rule, name) for name in _RULE_SETTINGS}
    return Rule(tags=tags, **settings)


def _checked_tag(key: Any) -> str:
    if not isinstance(key, str) or not (key == LEADER or _TAG.match(key)):
        raise CrosswalkError(
            str(key), 'the key must be a three-character MARC tag (quoted, "650") or "LDR"'
        )
    return key


def _rule_from_entry(key: str, tag: str, entry: Any) -> Rule:
    if entry is True:
        raise CrosswalkError(key, "true is not a rule; give a table, or false to drop the tag")
    if not isinstance(entry, Mapping):
        raise CrosswalkError(key, f"expected a table, a list of tables or false, got {entry!r}")
    unknown = sorted(set(entry) - _RULE_SETTINGS)
    if unknown:
        known = ", ".join(sorted(_RULE_SETTINGS))
        raise CrosswalkError(key, f"unknown setting(s) {', '.join(unknown)} (known: {known})")
    target = entry.get("field")
    if not isinstance(target, str) or not _FIELD_NAME.match(target):
        raise CrosswalkError(
            key, f"field must be a DSpace field such as 'dc.title.alternative', got {target!r}"
        )
    is_control = tag == LEADER or tag.startswith("00")
    codes = entry.get("subfields", "")
    if not isinstance(codes, str) or not _SUBFIELD_CODES.match(codes):
        raise CrosswalkError(key, f"subfields must be subfield codes such as 'abnp', got {codes!r}")
    if is_control and codes:
        raise CrosswalkError(key, f"{tag} has no subfields; use positions = [start, end]")
    if not is_control and not codes:
        raise CrosswalkError(key, "subfields is required for a data field (e.g. 'a')")
    subdivisions = entry.get("subdivisions", "")
    if not isinstance(subdivisions, str) or not _SUBFIELD_CODES.match(subdivisions):
        raise CrosswalkError(key, f"subdivisions must be subfield codes, got {subdivisions!r}")
    join = entry.get("join", " ")
    if not isinstance(join, str):
        raise CrosswalkError(key, f"join must be a string, got {join!r}")
    split = entry.get("split", False)
    if not isinstance(split, bool):
        raise CrosswalkError(key, f"split must be true or false, got {split!r}")
    clean = entry.get("clean", "type" if tag == LEADER else "text")
    if clean not in CLEANERS:
        raise CrosswalkError(key, f"clean must be one of {', '.join(CLEANERS)}, got {clean!r}")
    indicators = {}
    for name in ("ind1", "ind2"):
        value = entry.get(name)
        if value is not None and (not isinstance(value, str) or len(value) != 1):
            raise CrosswalkError(
                key, f"{name} must be one character (' ' for blank), got {value!r}"
            )
        if value is not None and is_control:
            raise CrosswalkError(key, f"{tag} has no indicators")
        indicators[name] = value
    positions = _checked_positions(key, entry.get("positions"), is_control)
    return Rule(
        tags=(tag,),
        subfields=codes,
        field=target,
        join=join,
        subdivisions=subdivisions,
        split=split,
        clean=clean,
        positions=positions,
        **indicators,
    )


def _checked_positions(key: str, value: Any, is_control: bool) -> tuple[int, int] | None:
    if value is None:
        return None
    if not is_control:
        raise CrosswalkError(key, "positions apply to the leader and control fields only")
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in value)
        or not 0 <= value[0] < value[1]
    ):
        raise CrosswalkError(key, f"positions must be [start, end] with start < end, got {value!r}")
    return (value[0], value[1])


# --- applying the table ------------------------------------------------------------------------


def crosswalk(record: pymarc.Record, rules: Sequence[Rule] = DEFAULT_RULES) -> dict[str, list[str]]:
    """DSpace field → values, in record order, without repeats."""
    by_tag: dict[str, list[Rule]] = {}
    for rule in rules:
        for tag in rule.tags:
            by_tag.setdefault(tag, []).append(rule)
    result: dict[str, list[str]] = {}

    def add(rule: Rule, raw: str) -> None:
        for value in CLEANERS[rule.clean](raw):
            values = result.setdefault(rule.field, [])
            if value not in values:
                values.append(value)

    for rule in by_tag.get(LEADER, []):
        add(rule, _sliced(str(record.leader), rule.positions))
    for marc_field in record.fields:
        for rule in by_tag.get(marc_field.tag, []):
            if marc_field.is_control_field():
                add(rule, _sliced(marc_field.data or "", rule.positions))
                continue
            if rule.ind1 is not None and marc_field.indicator1 != rule.ind1:
                continue
            if rule.ind2 is not None and marc_field.indicator2 != rule.ind2:
                continue
            for raw in _values_of(marc_field, rule):
                add(rule, raw)
    return {name: values for name, values in result.items() if values}


def _sliced(data: str, positions: tuple[int, int] | None) -> str:
    return data if positions is None else data[positions[0] : positions[1]]


def _values_of(marc_field: pymarc.Field, rule: Rule) -> list[str]:
    chosen = [sf for sf in marc_field.subfields if sf.code in rule.subfields and sf.value.strip()]
    if rule.split:
        return [sf.value for sf in chosen]
    if not chosen:
        return []
    # Main heading subfields join with `join`; each subdivision starts a " -- " part, and every
    # part loses its own trailing ISBD punctuation ("Шевченко, Тарас, -- Поезія.").
    parts: list[list[str]] = [[]]
    for sf in chosen:
        if sf.code in rule.subdivisions and parts[-1]:
            parts.append([])
        parts[-1].append(sf.value)
    if len(parts) == 1:
        return [rule.join.join(parts[0])]
    texts = [strip_isbd(normalise(rule.join.join(part))) for part in parts]
    return [" -- ".join(text for text in texts if text)]
