"""MARC21 → Dublin Core (Library of Congress table, notes part C) and the override table."""

from __future__ import annotations

import tomllib
import unicodedata

import pymarc
import pytest
from pymarc import Field, Indicators, Subfield

from shelfwork.pipelines.koha_dspace.crosswalk import (
    DEFAULT_RULES,
    CrosswalkError,
    Rule,
    crosswalk,
    load_rules,
)


def field(tag: str, *subfields: tuple[str, str], ind: str = "  ") -> Field:
    return Field(
        tag=tag,
        indicators=Indicators(ind[0], ind[1]),
        subfields=[Subfield(code, value) for code, value in subfields],
    )


def record(leader: str, *fields: Field) -> pymarc.Record:
    result = pymarc.Record()
    result.leader = pymarc.Leader(leader)
    for item in fields:
        result.add_field(item)
    return result


def ukrainian_book() -> pymarc.Record:
    """A realistic Koha record of a Ukrainian book (RDA: 264 instead of 260)."""
    return record(
        "01234nam a2200301 i 4500",
        Field(tag="001", data="42"),
        Field(tag="008", data="210315s2021    ua a          000 0 ukr d"),
        field("020", ("a", "978-966-03-1234-5 (тв. опр.)"), ("q", "палітурка")),
        field("041", ("a", "ukr"), ("a", "eng"), ind="0 "),
        field("100", ("a", "Шевченко, Тарас Григорович,"), ("d", "1814-1861."), ind="1 "),
        field(
            "245",
            ("a", "Кобзар :"),
            ("b", "вибрані твори /"),
            ("c", "Т. Г. Шевченко ; упоряд. О. Іваненко."),
            ind="10",
        ),
        field("246", ("a", "Kobzar"), ind="31"),
        field("250", ("a", "2-ге вид.")),
        field("264", ("a", "Київ :"), ("b", "Дніпро,"), ("c", "2021."), ind=" 1"),
        field("264", ("c", "©2020"), ind=" 4"),
        field("300", ("a", "256 с. :"), ("b", "іл. ;"), ("c", "21 см.")),
        field("490", ("a", "Бібліотека школяра ;"), ("v", "т. 5"), ind="1 "),
        field("500", ("a", "Покажч.: с. 250-255.")),
        field("504", ("a", "Бібліогр. в примітках.")),
        field("505", ("a", "Катерина -- Гайдамаки -- Заповіт."), ind="0 "),
        field("520", ("a", "Збірка поетичних творів.")),
        field("546", ("a", "Текст укр. та англ. мовами.")),
        field("540", ("a", "CC BY 4.0")),
        field(
            "650",
            ("a", "Українська поезія"),
            ("y", "19 ст."),
            ("v", "Збірники."),
            ("2", "local"),
            ind=" 7",
        ),
        field("650", ("a", "Українська поезія"), ("y", "19 ст."), ("v", "Збірники."), ind=" 4"),
        field("651", ("a", "Україна"), ("x", "Історія"), ("y", "19 ст."), ind=" 4"),
        field("655", ("a", "Поезія"), ind=" 4"),
        field("700", ("a", "Іваненко, Олена,"), ("e", "упорядник."), ind="1 "),
        field("856", ("u", "https://old.example/x"), ind="40"),
        field("956", ("u", "scans/kobzar.pdf")),
    )


def test_realistic_ukrainian_record() -> None:
    assert crosswalk(ukrainian_book()) == {
        "dc.type": ["Text"],
        "dc.language.iso": ["uk", "en"],
        "dc.identifier.isbn": ["978-966-03-1234-5"],
        "dc.contributor.author": ["Шевченко, Тарас Григорович", "Іваненко, Олена"],
        "dc.title": ["Кобзар : вибрані твори"],
        "dc.title.alternative": ["Kobzar"],
        "dc.publisher": ["Дніпро"],
        "dc.date.issued": ["2021"],
        "dc.relation.ispartofseries": ["Бібліотека школяра ; т. 5"],
        # 250 (edition) is not in the LoC table; 546 is left out on purpose
        "dc.description": ["Покажч.: с. 250-255", "Бібліогр. в примітках"],
        "dc.description.abstract": ["Збірка поетичних творів"],
        "dc.subject": ["Українська поезія -- 19 ст. -- Збірники"],
        # 300, 505, 540 and 651 have no field in DSpace's stock form: not sent by default
    }


def test_values_are_nfc_and_whitespace_folded() -> None:
    decomposed = unicodedata.normalize("NFD", "Йосип  Її\tїжак")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    result = crosswalk(record("00000nam a2200000   4500", field("245", ("a", decomposed))))
    assert result["dc.title"] == ["Йосип Її їжак"]
    assert unicodedata.is_normalized("NFC", result["dc.title"][0])


def test_english_record_with_260_and_several_types() -> None:
    book = record(
        "00000nkm a2200000 a 4500",  # k: two-dimensional non-projected graphic → Image
        Field(tag="008", data="990101s1999    enk           000 0 eng  "),
        field("020", ("a", "0123456789 (pbk.)")),
        field("022", ("a", "1234-5678")),
        field("024", ("a", "10.1000/xyz123"), ind="7 "),
        field("041", ("a", "engfre"), ind="1 "),  # old practice: codes run together
        field("110", ("a", "British Library."), ("b", "Map Library.")),
        field("240", ("a", "Maps."), ("l", "English"), ind="10"),
        field("245", ("a", "Maps of London :"), ("b", "1600-1900 /"), ("c", "edited by J. Smith.")),
        field("260", ("a", "London :"), ("b", "British Library,"), ("c", "c1999.")),
        field("300", ("a", "xii, 120 p. :"), ("b", "ill. ;")),
        field("506", ("a", "Open access.")),
        field("600", ("a", "Wren, Christopher,"), ("c", "Sir,"), ("d", "1632-1723."), ind="10"),
        field(
            "650",
            ("a", "Cartography"),
            ("z", "England"),
            ("z", "London"),
            ("x", "History."),
            ind=" 0",
        ),
        field("700", ("a", "Smith, J."), ("e", "editor."), ind="1 "),
        field("711", ("a", "Map Conference"), ("n", "(3rd :"), ("d", "1998 :"), ("c", "Oxford)")),
        field("830", ("a", "British Library maps ;"), ("v", "12."), ind=" 0"),
    )
    result = crosswalk(book)
    assert result["dc.type"] == ["Image"]
    assert result["dc.language.iso"] == ["en", "fr"]
    assert result["dc.identifier.isbn"] == ["0123456789"]
    assert result["dc.identifier.issn"] == ["1234-5678"]
    assert result["dc.identifier.other"] == ["10.1000/xyz123"]
    assert result["dc.contributor.author"] == [
        "British Library. Map Library",
        "Smith, J.",
        "Map Conference (3rd : 1998 : Oxford)",
    ]
    assert result["dc.title"] == ["Maps of London : 1600-1900"]
    assert result["dc.title.alternative"] == ["Maps. English"]
    assert result["dc.publisher"] == ["British Library"]
    assert result["dc.date.issued"] == ["1999"]
    assert "dc.format.extent" not in result and "dc.rights" not in result  # not in the stock form
    assert result["dc.subject"] == [
        "Wren, Christopher, Sir, 1632-1723",
        "Cartography -- England -- London -- History",
    ]
    assert result["dc.relation.ispartofseries"] == ["British Library maps ; 12"]


@pytest.mark.parametrize(
    ("leader", "types"),
    [
        ("00000nam a2200000 i 4500", ["Text"]),
        ("00000ntm a2200000 i 4500", ["Text"]),
        ("00000ngm a2200000 i 4500", ["Image"]),
        ("00000njm a2200000 i 4500", ["Sound"]),
        ("00000npc a2200000 i 4500", ["Collection"]),
        ("00000nac a2200000 i 4500", ["Text", "Collection"]),
        ("00000nmm a2200000 i 4500", None),  # computer file: LoC gives no type
    ],
)
def test_leader_type(leader: str, types: list[str] | None) -> None:
    result = crosswalk(record(leader, field("245", ("a", "T"))))
    assert result.get("dc.type") == types


@pytest.mark.parametrize(
    ("raw", "year"),
    [("c2021.", "2021"), ("[2019?]", "2019"), ("2020 р.", "2020"), ("1998, c1995", "1998")],
)
def test_dates_become_years(raw: str, year: str) -> None:
    result = crosswalk(record("00000nam a2200000   4500", field("260", ("c", raw))))
    assert result["dc.date.issued"] == [year]


def test_undated_and_264_other_functions_give_no_date() -> None:
    result = crosswalk(
        record(
            "00000nam a2200000   4500",
            field("260", ("c", "[б. р.]")),
            field("264", ("b", "Printer"), ("c", "2005"), ind=" 3"),  # manufacture, not publication
        )
    )
    assert "dc.date.issued" not in result
    assert "dc.publisher" not in result


def test_blank_or_undetermined_language_is_skipped() -> None:
    for code in ("   ", "|||", "und"):
        data = "210315s2021    ua            000 0 " + code + " d"
        result = crosswalk(record("00000nam a2200000   4500", Field(tag="008", data=data)))
        assert "dc.language.iso" not in result


def test_an_unknown_language_code_is_kept() -> None:
    result = crosswalk(record("00000nam a2200000   4500", field("041", ("a", "crh"))))
    assert result["dc.language.iso"] == ["crh"]


# --- overrides ---------------------------------------------------------------------------------

OVERRIDES_TOML = """
"245" = { field = "dc.title", subfields = "a" }
"650" = false
"999" = { field = "dc.description", subfields = "a" }
"260" = [
  { field = "dc.publisher", subfields = "ab", join = " ", split = false },
  { field = "dc.date.issued", subfields = "c", clean = "raw" },
]
"008" = { field = "dc.language", positions = [35, 38], clean = "raw" }
"""


def test_overrides_from_toml() -> None:
    rules = load_rules(tomllib.loads(OVERRIDES_TOML))
    book = ukrainian_book()
    book.add_field(field("999", ("a", "Local note"), ("c", "42")))
    book.add_field(field("260", ("a", "Львів :"), ("b", "Каменяр,"), ("c", "1990.")))
    result = crosswalk(book, rules)
    assert result["dc.title"] == ["Кобзар"]
    # 650 dropped, but 600-series siblings of the shared default rule still map
    assert "dc.subject" not in result
    book.add_field(field("600", ("a", "Шевченко, Тарас,"), ("d", "1814-1861"), ind="14"))
    assert crosswalk(book, rules)["dc.subject"] == ["Шевченко, Тарас, 1814-1861"]
    assert result["dc.description"][-1] == "Local note"
    assert result["dc.publisher"] == ["Дніпро", "Львів : Каменяр"]
    assert result["dc.date.issued"] == ["2021", "1990."]
    assert result["dc.language"] == ["ukr"]
    assert result["dc.language.iso"] == ["uk", "en"]  # 041 still maps


def test_no_overrides_gives_the_default_table() -> None:
    assert load_rules(None) is DEFAULT_RULES
    assert load_rules({}) is DEFAULT_RULES
    assert all(isinstance(rule, Rule) for rule in DEFAULT_RULES)


def test_override_of_a_tag_in_a_shared_rule_keeps_the_other_tags() -> None:
    rules = load_rules({"700": {"field": "dc.contributor.other", "subfields": "a"}})
    authors = [rule for rule in rules if rule.field == "dc.contributor.author"]
    assert any("100" in rule.tags for rule in authors)
    assert not any("700" in rule.tags for rule in authors)
    result = crosswalk(ukrainian_book(), rules)
    assert result["dc.contributor.author"] == ["Шевченко, Тарас Григорович"]
    assert result["dc.contributor.other"] == ["Іваненко, Олена"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"24": {"field": "dc.title", "subfields": "a"}}, "'24': the key must be"),
        ({"245": True}, "'245': true is not a rule"),
        ({"245": "dc.title"}, "'245': expected a table"),
        ({"245": []}, "'245': an empty list"),
        ({"245": {"subfields": "a"}}, "'245': field must be a DSpace field"),
        ({"245": {"field": "title", "subfields": "a"}}, "field must be a DSpace field"),
        ({"245": {"field": "dc.title", "subfields": "A$"}}, "subfields must be subfield codes"),
        ({"245": {"field": "dc.title"}}, "subfields is required"),
        ({"245": {"field": "dc.title", "feild": 1, "subfields": "a"}}, "unknown setting(s) feild"),
        (
            {"245": {"field": "dc.title", "subfields": "a", "clean": "fancy"}},
            "clean must be one of",
        ),
        ({"245": {"field": "dc.title", "subfields": "a", "split": "yes"}}, "split must be true"),
        ({"245": {"field": "dc.title", "subfields": "a", "ind2": "10"}}, "ind2 must be one"),
        ({"245": {"field": "dc.title", "subfields": "a", "positions": [0, 3]}}, "positions apply"),
        ({"008": {"field": "dc.language", "subfields": "a"}}, "008 has no subfields"),
        (
            {"008": {"field": "dc.language", "positions": [38, 35]}},
            "positions must be [start, end]",
        ),
        ({"008": {"field": "dc.language", "positions": "35"}}, "positions must be [start, end]"),
        ({"260": [{"field": "dc.publisher", "subfields": "b"}, {"field": 3}]}, "'260[1]'"),
    ],
)
def test_bad_overrides_name_the_entry(overrides: dict, message: str) -> None:
    with pytest.raises(CrosswalkError) as caught:
        load_rules(overrides)
    assert message in str(caught.value)
    assert str(caught.value).startswith("crosswalk override ")


# --- DSpace's stock submission form (issue 10, A3) ---------------------------------------------


def stock_fields(branch: str) -> set[str]:
    """Every field key the stock `traditional` describe pages accept (the emulator's copy of
    dspace/config/submission-forms.xml, itself checked in tests/contracts/test_dspace_contract.py)."""
    from shelfwork.sandbox.dspace import form_fields, stock_form

    return {key for keys in form_fields(stock_form(branch)).values() for key in keys}


@pytest.mark.parametrize("branch", ["dspace-7_x", "dspace-8_x"])
def test_the_default_table_only_writes_fields_of_the_stock_form(branch: str) -> None:
    written = {rule.field for rule in DEFAULT_RULES}
    assert written - stock_fields(branch) == set()
    # and a full record does not produce anything else either
    assert set(crosswalk(ukrainian_book())) <= stock_fields(branch)


def readme_local_form_table() -> str:
    """The TOML the README gives for a local form with the fields the stock form lacks."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("**Fields beyond DSpace's stock form.**", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_readme_table_maps_the_fields_a_local_form_adds() -> None:
    table = tomllib.loads(readme_local_form_table())
    rules = load_rules(table["systems"]["koha-dspace"]["crosswalk"])
    result = crosswalk(ukrainian_book(), rules)
    assert result["dc.format.extent"] == ["256 с."]
    assert result["dc.description.tableofcontents"] == ["Катерина -- Гайдамаки -- Заповіт"]
    assert result["dc.rights"] == ["CC BY 4.0"]
    assert result["dc.coverage.spatial"] == ["Україна -- Історія -- 19 ст."]
    # everything the default table wrote is still written
    assert crosswalk(ukrainian_book()).items() <= result.items()
