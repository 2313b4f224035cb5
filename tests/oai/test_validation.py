"""Validation rules, quantifiers, rule-set loading, verdicts, snapshot stats and URL checks."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shelfwork.errors import ConfigError
from shelfwork.outbound import PUBLIC_ONLY
from shelfwork.pipelines.oai.record import MetadataRecord
from shelfwork.pipelines.oai.validation import (
    MAX_PATTERN_CHARS,
    AllOf,
    AnyOf,
    Comparison,
    ExpressionError,
    Not,
    Quantifier,
    RuleSet,
    RuleSetError,
    UrlChecker,
    ValidationStats,
    compile_guarded,
    parse_expression,
    validate,
)

YEAR = 2025


def dc_record(record_id: str = "oai:test:1", /, **fields: str | list[str]) -> MetadataRecord:
    """An oai_dc record built from keyword fields: title="A" or type=["x", "y"]."""
    parts = []
    for name, values in fields.items():
        for value in [values] if isinstance(values, str) else values:
            escaped = value.replace("&", "&amp;").replace("<", "&lt;")
            parts.append(f"<dc:{name}>{escaped}</dc:{name}>")
    return raw_dc("".join(parts), record_id)


def raw_dc(body: str, record_id: str = "oai:test:raw") -> MetadataRecord:
    data = (
        '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/" '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/">{body}</oai_dc:dc>'
    )
    return MetadataRecord.parse(data.encode("utf-8"), record_id)


def one_rule(tmp_path: Path | None = None, **rule: Any) -> RuleSet:
    rule.setdefault("id", "r1")
    return RuleSet.from_dict({"name": "t", "rules": [rule]}, rules_dir=tmp_path)


def rule_holds(ruleset: RuleSet, record: MetadataRecord, **kwargs: Any) -> bool:
    return validate(record, ruleset, year=YEAR, **kwargs).results[0].valid


# --- each rule type -----------------------------------------------------------------------


def test_content_length_bounds() -> None:
    rules = one_rule(
        type="content_length", field="dc.title", min_length=3, max_length=5, quantifier="ALL"
    )
    assert rule_holds(rules, dc_record(title="abc"))
    assert rule_holds(rules, dc_record(title=["abcde", "  a  b  "]))  # "a b" after normalising
    assert not rule_holds(rules, dc_record(title="ab"))
    assert not rule_holds(rules, dc_record(title="abcdef"))


def test_controlled_vocabulary_inline_and_case() -> None:
    rules = one_rule(type="controlled_vocabulary", field="dc.type", values=["article", "thesis"])
    assert rule_holds(rules, dc_record(type="thesis"))
    assert not rule_holds(rules, dc_record(type="Thesis"))
    folded = one_rule(
        type="controlled_vocabulary",
        field="dc.type",
        values=["article"],
        case_sensitive=False,
    )
    assert rule_holds(folded, dc_record(type="ARTICLE"))


def test_controlled_vocabulary_from_file(tmp_path: Path) -> None:
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "types.txt").write_text("info:eu-repo/semantics/article\n\n  book \n")
    rules = one_rule(
        tmp_path, type="controlled_vocabulary", field="dc.type", file="vocab/types.txt"
    )
    assert rule_holds(rules, dc_record(type="book"))
    assert rule_holds(rules, dc_record(type="info:eu-repo/semantics/article"))
    assert not rule_holds(rules, dc_record(type="thesis"))


def test_regex_is_a_full_match() -> None:
    rules = one_rule(type="regex", field="dc.language", pattern="[a-z]{3}")
    assert rule_holds(rules, dc_record(language="spa"))
    assert not rule_holds(rules, dc_record(language="spa-ES"))  # a search would accept this
    assert not rule_holds(rules, dc_record(language="SPA"))
    folded = one_rule(type="regex", field="dc.language", pattern="[a-z]{3}", case_sensitive=False)
    assert rule_holds(folded, dc_record(language="SPA"))


def test_regex_guard_refuses_long_and_nested_repeats() -> None:
    with pytest.raises(ValueError, match="at most 500"):
        compile_guarded("a" * (MAX_PATTERN_CHARS + 1))
    with pytest.raises(ValueError, match="repeats a repeated group"):
        compile_guarded("(a+)+$")
    with pytest.raises(ValueError, match="repeats a repeated group"):
        compile_guarded(r"((\w*)x)*")
    # bounded inner repeats, repeats inside character classes and escapes are fine
    assert compile_guarded(r"(\d{4})+").fullmatch("20202021")
    assert compile_guarded(r"([+*])+").fullmatch("+*")
    assert compile_guarded(r"(\(a\)+)").fullmatch("(a)))")


def test_dynamic_year_range() -> None:
    rules = one_rule(type="year_range", field="dc.date", lower=100, upper=2)
    assert rule_holds(rules, dc_record(date="2025-03-01"))
    assert rule_holds(rules, dc_record(date=f"{YEAR - 100}"))
    assert rule_holds(rules, dc_record(date=f"c. {YEAR + 2}"))
    assert not rule_holds(rules, dc_record(date=f"{YEAR + 3}"))
    assert not rule_holds(rules, dc_record(date=f"{YEAR - 101}"))
    assert not rule_holds(rules, dc_record(date="undated"))


def test_year_range_named_group_and_current_year_default() -> None:
    rules = one_rule(
        type="year_range", field="dc.date", pattern=r"\d{2}/\d{2}/(?P<year>\d{4})", lower=0
    )
    assert rule_holds(rules, dc_record(date=f"01/02/{YEAR}"))
    assert not rule_holds(rules, dc_record(date=f"01/02/{YEAR - 1}"))
    # without an explicit year the rule uses today's
    this_year = time.gmtime().tm_year
    assert validate(dc_record(date=f"01/02/{this_year}"), rules).valid


def test_year_range_with_the_reference_platforms_default_pattern() -> None:
    # DynamicYearRangeFieldContentValidatorRule's DEFAULT_REGEX, as the README says to write it
    rules = one_rule(type="year_range", field="dc.date", pattern="^([0-9]{3,4})", lower=1100)
    assert rule_holds(rules, dc_record(date="999"))
    assert rule_holds(rules, dc_record(date=f"{YEAR}-01-02"))
    assert not rule_holds(rules, dc_record(date=f"c. {YEAR}"))  # the default (\d{4}) takes it


def test_field_expression_rule() -> None:
    rules = one_rule(
        type="field_expression",
        expression="dc.type=='thesis' AND (dc.rights=%'.*open.*' OR NOT dc.language=='eng')",
    )
    assert rule_holds(rules, dc_record(type="thesis", rights="openAccess", language="eng"))
    assert rule_holds(rules, dc_record(type="thesis", rights="closed", language="spa"))
    assert not rule_holds(rules, dc_record(type="thesis", rights="closed", language="eng"))
    assert not rule_holds(rules, dc_record(type="article", rights="open"))


def test_xpath_occurrence_counts_nodes() -> None:
    exactly_one = one_rule(
        type="xpath_occurrence",
        xpath="//dc:identifier[starts-with(., 'http')]",
        quantifier="ONE_ONLY",
    )
    assert rule_holds(exactly_one, dc_record(identifier=["http://a", "urn:x"]))
    assert not rule_holds(exactly_one, dc_record(identifier=["http://a", "https://b"]))
    assert not rule_holds(exactly_one, dc_record(identifier="urn:x"))
    none = one_rule(type="xpath_occurrence", xpath="//dc:relation", quantifier="ZERO_ONLY")
    assert rule_holds(none, dc_record(title="t"))
    assert not rule_holds(none, dc_record(relation="r"))


# --- quantifiers ---------------------------------------------------------------------------

# (quantifier, valid occurrences, invalid occurrences, expected)
QUANTIFIER_TABLE = [
    ("ZERO_ONLY", 0, 0, True),
    ("ZERO_ONLY", 0, 2, True),
    ("ZERO_ONLY", 1, 0, False),
    ("ZERO_ONLY", 3, 1, False),
    ("ONE_ONLY", 0, 0, False),
    ("ONE_ONLY", 1, 0, True),
    ("ONE_ONLY", 1, 2, True),
    ("ONE_ONLY", 3, 0, False),
    ("ZERO_OR_MORE", 0, 0, True),
    # values present but none valid (AbstractValidatorFieldContentRule.validate, ZERO_OR_MORE)
    ("ZERO_OR_MORE", 0, 3, False),
    ("ZERO_OR_MORE", 1, 0, True),
    ("ZERO_OR_MORE", 3, 1, True),
    ("ONE_OR_MORE", 0, 0, False),
    ("ONE_OR_MORE", 0, 2, False),
    ("ONE_OR_MORE", 1, 0, True),
    ("ONE_OR_MORE", 3, 2, True),
    # valid count == occurrence count, so an absent field passes (as in the reference)
    ("ALL", 0, 0, True),
    ("ALL", 1, 0, True),
    ("ALL", 0, 1, False),
    ("ALL", 3, 0, True),
    ("ALL", 3, 1, False),
]


@pytest.mark.parametrize(("quantifier", "good", "bad", "expected"), QUANTIFIER_TABLE)
def test_quantifier_over_occurrences(quantifier: str, good: int, bad: int, expected: bool) -> None:
    rules = one_rule(
        type="controlled_vocabulary", field="dc.type", values=["ok"], quantifier=quantifier
    )
    record = dc_record(type=["ok"] * good + ["no"] * bad, title="t")
    result = validate(record, rules).results[0]
    assert (result.valid_count, result.invalid_count) == (good, bad)
    assert result.valid is expected


def test_quantifier_default_is_one_or_more() -> None:
    rules = one_rule(type="regex", field="dc.title", pattern="x")
    assert rules.rules[0].quantifier is Quantifier.ONE_OR_MORE
    assert rules.rules[0].mandatory is True


# --- semantics of the reference platform (lareferencia-core-lib) -----------------------------


@pytest.mark.parametrize(
    "empty", ["<dc:title/>", "<dc:title></dc:title>", "<dc:title> \n </dc:title>"]
)
def test_an_empty_element_is_no_occurrence(empty: str) -> None:
    # OAIRecordMetadata.getFieldOcurrences keeps only elements with a text child, and the
    # oai_dc crosswalk strips whitespace-only text first (xsl:strip-space)
    record = raw_dc(empty + "<dc:title>Real</dc:title>")
    assert record.values("dc.title") == ["Real"]
    alone = raw_dc(empty)
    assert alone.values("dc.title") == []
    any_length = one_rule(type="content_length", field="dc.title", min_length=0)
    result = validate(alone, any_length).results[0]
    assert not result.valid and (result.valid_count, result.invalid_count) == (0, 0)
    none_at_all = one_rule(
        type="content_length", field="dc.title", min_length=1, quantifier="ZERO_OR_MORE"
    )
    assert validate(alone, none_at_all).results[0].valid


@pytest.mark.parametrize(
    ("quantifier", "values", "expected"),
    [
        ("ONE_ONLY", ["en"], True),
        ("ONE_ONLY", ["en", "en"], False),  # exactly one occurrence must equal
        ("ONE_OR_MORE", ["es", "en"], True),
        ("ONE_OR_MORE", ["es"], False),
        ("ALL", ["en", "en"], True),
        ("ALL", ["en", "es"], False),  # every occurrence must equal
        ("ALL", [], True),
        ("ZERO_ONLY", ["es"], True),
        ("ZERO_ONLY", ["es", "en"], False),
        ("ZERO_OR_MORE", ["es"], True),  # a term that always holds
        ("ZERO_OR_MORE", [], True),
    ],
)
def test_field_expression_quantifier_applies_to_each_term(
    quantifier: str, values: list[str], expected: bool
) -> None:
    # FieldExpressionEvaluator.toValue counts a term's matching occurrences under the rule's
    # quantifier; the rule's verdict is the expression's value
    rules = one_rule(type="field_expression", expression="dc.language=='en'", quantifier=quantifier)
    assert rule_holds(rules, dc_record(language=values, title="t")) is expected


def test_field_expression_negates_a_quantified_term() -> None:
    always = one_rule(
        type="field_expression", expression="NOT dc.rights=='closed'", quantifier="ZERO_OR_MORE"
    )
    assert not rule_holds(always, dc_record(rights="open"))  # NOT (always true)
    every = one_rule(type="field_expression", expression="NOT dc.format=='pdf'", quantifier="ALL")
    assert rule_holds(every, dc_record(format=["pdf", "doc"]))
    assert not rule_holds(every, dc_record(format=["pdf", "pdf"]))


def test_qualified_values_are_judged_apart_from_unqualified_ones() -> None:
    # a reference field name names one level: dc.date.none (unqualified), dc.date.issued.*,
    # or dc.date.* for all (XOAIXPATHHelper.getXPATH); here dc.date, dc.date.issued, dc.date.*
    record = raw_dc(
        '<dc:date>2019</dc:date><dc:date type="available">1066</dc:date>'
        '<dc:date type="issued">2018</dc:date>'
    )
    assert record.values("dc.date") == ["2019"]
    assert record.values("dc.date.available") == ["1066"]
    assert record.values("dc.date.*") == ["2019", "1066", "2018"]
    recent = {"type": "year_range", "lower": 100, "quantifier": "ALL"}
    assert rule_holds(one_rule(field="dc.date", **recent), record)
    assert not rule_holds(one_rule(field="dc.date.*", **recent), record)
    assert not rule_holds(one_rule(field="dc.date.available", **recent), record)
    single = one_rule(type="regex", field="dc.date", pattern=r"\d{4}", quantifier="ONE_ONLY")
    assert rule_holds(single, record)
    expression = one_rule(type="field_expression", expression="dc.date.*=='1066'")
    assert rule_holds(expression, record)
    assert not rule_holds(one_rule(type="field_expression", expression="dc.date=='1066'"), record)


def test_xpath_occurrence_all_needs_a_node() -> None:
    # NodeOccursConditionalValidatorRule: ALL is "at least one node", unlike field rules
    rules = one_rule(type="xpath_occurrence", xpath="//dc:relation", quantifier="ALL")
    assert not rule_holds(rules, dc_record(title="t"))
    assert rule_holds(rules, dc_record(relation="r"))


@pytest.mark.parametrize("empty", ["<dc:relation/>", "<dc:relation> \n </dc:relation>"])
def test_xpath_occurrence_skips_empty_nodes(empty: str) -> None:
    # NodeOccursConditionalValidatorRule counts what OAIRecordMetadata.getFieldNodesByXPath
    # returns: MedatadaDOMHelper.getListOfTextNodes keeps only nodes with a text child
    present = one_rule(type="xpath_occurrence", xpath="//dc:relation", quantifier="ONE_OR_MORE")
    absent = one_rule(type="xpath_occurrence", xpath="//dc:relation", quantifier="ZERO_ONLY")
    just_one = one_rule(type="xpath_occurrence", xpath="//dc:relation", quantifier="ONE_ONLY")
    assert not rule_holds(present, raw_dc(empty))
    assert rule_holds(absent, raw_dc(empty))
    assert rule_holds(just_one, raw_dc(empty + "<dc:relation>r</dc:relation>"))
    empty_attribute = one_rule(type="xpath_occurrence", xpath="//dc:date/@type")
    assert not rule_holds(empty_attribute, raw_dc('<dc:date type="">2020</dc:date>'))
    assert rule_holds(empty_attribute, raw_dc('<dc:date type="issued">2020</dc:date>'))
    nothing = one_rule(type="xpath_occurrence", xpath="string(//dc:relation)")
    assert not rule_holds(nothing, raw_dc(empty))
    assert rule_holds(nothing, raw_dc("<dc:relation>r</dc:relation>"))


# --- mandatory vs optional -------------------------------------------------------------------


def test_only_mandatory_rules_decide_validity() -> None:
    rules = RuleSet.from_dict(
        {
            "name": "t",
            "rules": [
                {"id": "has-title", "type": "content_length", "field": "dc.title", "min_length": 1},
                {
                    "id": "has-doi",
                    "type": "regex",
                    "field": "dc.identifier",
                    "pattern": "10\\..+",
                    "mandatory": False,
                },
            ],
        }
    )
    no_doi = validate(dc_record(title="T", identifier="urn:1"), rules)
    assert no_doi.valid
    assert not no_doi.result("has-doi").valid
    assert no_doi.failed_mandatory == []
    no_title = validate(dc_record(identifier="10.1/x"), rules)
    assert not no_title.valid
    assert no_title.failed_mandatory == ["has-title"]
    assert no_title.result("has-doi").valid


def test_occurrences_kept_only_when_asked() -> None:
    rules = RuleSet.from_dict(
        {
            "name": "t",
            "rules": [
                {
                    "id": "kept",
                    "type": "regex",
                    "field": "dc.type",
                    "pattern": "a.*",
                    "store_occurrences": True,
                },
                {"id": "counted", "type": "regex", "field": "dc.type", "pattern": "a.*"},
            ],
        }
    )
    verdict = validate(dc_record(type=["article", "book"]), rules)
    kept = verdict.result("kept")
    assert (kept.valid_occurrences, kept.invalid_occurrences) == (("article",), ("book",))
    counted = verdict.result("counted")
    assert (counted.valid_occurrences, counted.invalid_occurrences) == ((), ())
    assert (counted.valid_count, counted.invalid_count) == (1, 1)


# --- field-expression parser -----------------------------------------------------------------


def test_expression_precedence_not_over_and_over_or() -> None:
    parsed = parse_expression("dc.a=='1' OR NOT dc.b=='2' AND dc.c=='3'")
    assert isinstance(parsed, AnyOf)
    left, right = parsed.operands
    assert left == Comparison("dc.a", "==", "1")
    assert isinstance(right, AllOf)
    assert isinstance(right.operands[0], Not)
    assert right.operands[1] == Comparison("dc.c", "==", "3")


def test_expression_parentheses_change_grouping() -> None:
    parsed = parse_expression("(dc.a=='1' OR dc.b=='2') AND dc.c=='3'")
    assert isinstance(parsed, AllOf)
    assert isinstance(parsed.operands[0], AnyOf)
    record = dc_record(b="2", c="3")
    assert parsed.holds(record)
    assert parse_expression("dc.a=='1' OR dc.b=='2' AND dc.c=='3'").holds(record)
    assert not parse_expression("(dc.a=='1' OR dc.b=='2') AND dc.c=='4'").holds(record)
    assert parse_expression("dc.a=='1' OR dc.b=='2' AND dc.c=='4'").holds(record) is False


def test_expression_not_nests_and_keywords_ignore_case() -> None:
    record = dc_record(type="thesis")
    assert parse_expression("NOT NOT dc.type=='thesis'").holds(record)
    assert parse_expression("not dc.type=='book' and dc.type=='thesis'").holds(record)
    assert not parse_expression("NOT (dc.type=='book' OR dc.type=='thesis')").holds(record)


def test_expression_quoting_and_regex_match() -> None:
    record = dc_record(title='It\'s "quoted"', rights="info:eu-repo/semantics/openAccess")
    assert parse_expression(r"dc.title=='It\'s \"quoted\"'").holds(record)
    assert parse_expression('dc.title=="It\'s \\"quoted\\""').holds(record)
    assert parse_expression(r"dc.rights=%'info:eu-repo/semantics/(open|embargoed)Access'").holds(
        record
    )
    assert not parse_expression("dc.rights=%'openAccess'").holds(record)  # full match
    assert parse_expression("dc.title=='a AND b'") == Comparison("dc.title", "==", "a AND b")


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [
        ("dc.a=='1' AND", 13, "expected a field or '('"),
        ("(dc.a=='1' OR dc.b=='2'", 23, "expected ')'"),
        ("dc.a='1'", 4, "unexpected character '='"),
        ("dc.a=='1", 6, "unterminated quoted value"),
        ("dc.a==1", 6, "unexpected character '1'"),
        ("dc.a dc.b", 5, "expected '==' or '=%'"),
        ("dc.a=='1' dc.b=='2'", 10, "expected AND, OR or the end"),
        ("title=='x'", 0, "prefix.element"),
        ("dc.a=%'(a+)+'", 6, "repeats a repeated group"),
        ("dc.a=%'['", 6, "does not compile"),
    ],
)
def test_expression_syntax_errors_name_the_position(text: str, position: int, problem: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert caught.value.position == position
    assert problem in caught.value.problem
    assert f"at position {position}" in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_expression_is_not_evaluated_as_python() -> None:
    with pytest.raises(ExpressionError):
        parse_expression("__import__('os').system('true')")


# --- rule-set loading --------------------------------------------------------------------------

TOML_SET = """
name = "driver"
description = "a small DRIVER-like set"

[[rules]]
id = "title"
type = "content_length"
field = "dc.title"
min_length = 1

[[rules]]
id = "type"
type = "controlled_vocabulary"
field = "dc.type"
file = "types.txt"
quantifier = "ONE_ONLY"

[[rules]]
id = "date"
type = "year_range"
field = "dc.date"
lower = 200
upper = 1
mandatory = false
store_occurrences = true
"""


def test_load_toml_and_json_give_the_same_rules(tmp_path: Path) -> None:
    (tmp_path / "types.txt").write_text("article\nthesis\n")
    (tmp_path / "driver.toml").write_text(TOML_SET)
    from_toml = RuleSet.load(tmp_path / "driver.toml")
    import tomllib

    (tmp_path / "driver.json").write_text(json.dumps(tomllib.loads(TOML_SET)))
    from_json = RuleSet.load(tmp_path / "driver.json")
    assert from_toml == from_json
    assert [rule.id for rule in from_toml.rules] == ["title", "type", "date"]
    verdict = validate(dc_record(title="T", type="thesis", date="1700"), from_toml, year=YEAR)
    assert verdict.valid
    assert not verdict.result("date").valid


def problems_of(data: dict[str, Any], rules_dir: Path | None = None) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        RuleSet.from_dict(data, rules_dir=rules_dir, source="test-set")
    assert "test-set" in str(caught.value)
    return caught.value.problems


def rules_of(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "t",
        "rules": [{"id": "ok", "type": "regex", "field": "dc.a", "pattern": "x"}, *rules],
    }


def test_unknown_type_is_named() -> None:
    [problem] = problems_of(rules_of({"id": "odd", "type": "spellcheck", "field": "dc.title"}))
    assert problem.startswith("rules[1] (id 'odd')")
    assert "unknown rule type 'spellcheck'" in problem
    assert "content_length" in problem


def test_missing_type_and_missing_keys_are_named() -> None:
    [problem] = problems_of(rules_of({"id": "untyped", "field": "dc.title"}))
    assert problem == "rules[1] (id 'untyped'): 'type' is missing"
    [problem] = problems_of(rules_of({"id": "nopat", "type": "regex", "field": "dc.title"}))
    assert problem.startswith("rules[1] (id 'nopat'): key 'pattern'")
    assert "required" in problem.lower()


def test_missing_field_is_named() -> None:
    [problem] = problems_of(rules_of({"id": "fieldless", "type": "regex", "pattern": "x"}))
    assert problem.startswith("rules[1] (id 'fieldless')")
    assert "'field' is required" in problem


def test_bad_field_name_and_unknown_prefix_are_named() -> None:
    [problem] = problems_of(
        rules_of({"id": "f", "type": "regex", "field": "title", "pattern": "x"})
    )
    assert "key 'field'" in problem and "prefix.element" in problem
    [problem] = problems_of(
        rules_of({"id": "f", "type": "regex", "field": "mods.title", "pattern": "x"})
    )
    assert "unknown namespace prefix 'mods'" in problem
    declared = rules_of({"id": "f", "type": "regex", "field": "mods.title", "pattern": "x"})
    declared["namespaces"] = {"mods": "http://www.loc.gov/mods/v3"}
    assert RuleSet.from_dict(declared).namespace_table()["mods"] == "http://www.loc.gov/mods/v3"


def test_bad_quantifier_is_named() -> None:
    [problem] = problems_of(
        rules_of(
            {"id": "q", "type": "regex", "field": "dc.a", "pattern": "x", "quantifier": "SOME"}
        )
    )
    assert problem.startswith("rules[1] (id 'q'): key 'quantifier'")
    assert "ONE_OR_MORE" in problem


def test_bad_regex_is_named() -> None:
    [problem] = problems_of(
        rules_of({"id": "re", "type": "regex", "field": "dc.a", "pattern": "(unclosed"})
    )
    assert problem.startswith("rules[1] (id 're')")
    assert "does not compile" in problem
    [problem] = problems_of(
        rules_of({"id": "long", "type": "regex", "field": "dc.a", "pattern": "x" * 501})
    )
    assert "at most 500" in problem


def test_unknown_key_is_named() -> None:
    [problem] = problems_of(
        rules_of(
            {"id": "typo", "type": "regex", "field": "dc.a", "pattern": "x", "mandatroy": True}
        )
    )
    assert problem == "rules[1] (id 'typo'): key 'mandatroy': unknown key"


def test_vocabulary_file_outside_rules_folder_is_refused(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (tmp_path / "secret.txt").write_text("x\n")
    for escape in ("../secret.txt", str(tmp_path / "secret.txt")):
        [problem] = problems_of(
            rules_of({"id": "v", "type": "controlled_vocabulary", "field": "dc.a", "file": escape}),
            rules_dir,
        )
        assert problem.startswith("rules[1] (id 'v'): key 'file'")
        assert "outside the rules folder" in problem


def test_vocabulary_file_missing_or_both_sources(tmp_path: Path) -> None:
    [problem] = problems_of(
        rules_of({"id": "v", "type": "controlled_vocabulary", "field": "dc.a", "file": "no.txt"}),
        tmp_path,
    )
    assert "does not exist" in problem
    [problem] = problems_of(
        rules_of({"id": "v", "type": "controlled_vocabulary", "field": "dc.a"}), tmp_path
    )
    assert "exactly one of 'values'" in problem


def test_duplicate_ids_are_named() -> None:
    [problem] = problems_of(
        rules_of({"id": "ok", "type": "regex", "field": "dc.b", "pattern": "y"})
    )
    assert problem == "rules[1] (id 'ok'): duplicate id, already used by rules[0]"


def test_bad_expression_and_xpath_are_named() -> None:
    [problem] = problems_of(
        rules_of({"id": "e", "type": "field_expression", "expression": "dc.a=='1' AND"})
    )
    assert problem.startswith("rules[1] (id 'e'): key 'expression'")
    assert "at position 13" in problem
    [problem] = problems_of(
        rules_of({"id": "x", "type": "xpath_occurrence", "xpath": "//dc:title["})
    )
    assert problem.startswith("rules[1] (id 'x'): key 'xpath'")
    [problem] = problems_of(
        rules_of({"id": "x", "type": "xpath_occurrence", "xpath": "//mods:title"})
    )
    assert "not usable" in problem


def test_several_mistakes_are_all_reported() -> None:
    problems = problems_of(
        rules_of(
            {"id": "a", "type": "nope"},
            {
                "id": "b",
                "type": "content_length",
                "field": "dc.a",
                "min_length": 5,
                "max_length": 2,
            },
        )
    )
    assert len(problems) == 2
    assert problems[0].startswith("rules[1] (id 'a')")
    assert problems[1].startswith("rules[2] (id 'b')") and "below min_length" in problems[1]


def test_file_level_mistakes(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(RuleSetError, match="not valid TOML"):
        RuleSet.load(tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RuleSetError, match="not valid JSON"):
        RuleSet.load(tmp_path / "bad.json")
    (tmp_path / "set.yaml").write_text("name: x")
    with pytest.raises(RuleSetError, match=r"\.toml or \.json"):
        RuleSet.load(tmp_path / "set.yaml")
    assert "key 'name'" in problems_of({"rules": []})[0]


# --- snapshot stats -------------------------------------------------------------------------


def stats_ruleset() -> RuleSet:
    return RuleSet.from_dict(
        {
            "name": "stats",
            "rules": [
                {
                    "id": "type",
                    "type": "controlled_vocabulary",
                    "field": "dc.type",
                    "values": ["article", "thesis"],
                    "store_occurrences": True,
                },
                {
                    "id": "lang",
                    "type": "regex",
                    "field": "dc.language",
                    "pattern": "[a-z]{3}",
                    "mandatory": False,
                },
            ],
        }
    )


def test_stats_accumulate_counts_and_bounded_histograms() -> None:
    rules = stats_ruleset()
    stats = ValidationStats.for_ruleset(rules, detailed=True, max_distinct=2)
    records = [
        dc_record("1", type="article", language="spa"),
        dc_record("2", type="article", language="es"),
        dc_record("3", type="book"),
        dc_record("4", type=["poster", "thesis"]),
        dc_record("5", type=["report", "book"]),
    ]
    for record in records:
        stats.add(validate(record, rules))
    assert (stats.total, stats.valid, stats.invalid) == (5, 3, 2)
    assert (stats.rules["type"].valid_count, stats.rules["type"].invalid_count) == (3, 2)
    assert (stats.rules["lang"].valid_count, stats.rules["lang"].invalid_count) == (1, 4)
    assert stats.rules["type"].valid_values.counts == {"article": 2, "thesis": 1}
    # the bound keeps the first two distinct values; "report", a third, counts as other
    assert stats.rules["type"].invalid_values.counts == {"book": 2, "poster": 1}
    assert stats.rules["type"].invalid_values.other == 1
    # a rule that does not store occurrences has no histogram
    assert stats.rules["lang"].invalid_values.counts == {}
    assert stats.rules["type"].description == "" and stats.rules["lang"].mandatory is False


def test_stats_without_detail_keep_no_values() -> None:
    rules = stats_ruleset()
    stats = ValidationStats.for_ruleset(rules)
    stats.add(validate(dc_record(type="book"), rules))
    assert stats.rules["type"].invalid_count == 1
    assert stats.rules["type"].invalid_values.counts == {}


def test_stats_round_trip_json_and_merge() -> None:
    rules = stats_ruleset()
    first = ValidationStats.for_ruleset(rules, detailed=True)
    second = ValidationStats.for_ruleset(rules, detailed=True)
    first.add(validate(dc_record("1", type="article", language="eng"), rules))
    second.add(validate(dc_record("2", type="book"), rules))
    second.add(validate(dc_record("3", type="article"), rules))
    text = first.to_json()
    assert json.loads(text)["rules"]["type"]["valid_values"]["counts"] == {"article": 1}
    again = ValidationStats.from_json(text)
    assert again == first
    again.merge(ValidationStats.from_json(second.to_json()))
    assert (again.total, again.valid, again.invalid) == (3, 2, 1)
    assert again.rules["type"].valid_values.counts == {"article": 2}
    assert again.rules["type"].invalid_values.counts == {"book": 1}
    assert again.rules["lang"].valid_count == 1 and again.rules["lang"].invalid_count == 2


# --- URL exists ---------------------------------------------------------------------------


class UrlServer:
    """A loopback HTTP server: /ok 200, /gone 404, /once -> /ok, /twice -> /once,
    /slow/N 200 after a pause, /pair/N 200 once another /pair/ request is in flight too (500
    if none comes); records how many requests overlap."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.pairs = threading.Barrier(2, timeout=10)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                with owner.lock:
                    owner.hits[self.path] += 1
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                paired = True
                try:
                    if self.path.startswith("/slow/"):
                        time.sleep(0.1)
                    elif self.path.startswith("/pair/"):
                        try:
                            owner.pairs.wait()
                        except threading.BrokenBarrierError:
                            paired = False
                finally:
                    # counted out before answering: once the answer is on its way the client
                    # may use its slot again, and that request must not overlap this one
                    with owner.lock:
                        owner.in_flight -= 1
                if self.path == "/once":
                    self.send_response(302)
                    self.send_header("Location", "/ok")
                elif self.path == "/twice":
                    self.send_response(301)
                    self.send_header("Location", f"http://127.0.0.1:{owner.port}/once")
                elif self.path == "/ok" or self.path.startswith("/slow/"):
                    self.send_response(200)
                elif self.path.startswith("/pair/"):
                    self.send_response(200 if paired else 500)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def url_server() -> Iterator[UrlServer]:
    server = UrlServer()
    yield server
    server.stop()


@pytest.fixture
def checker() -> Iterator[UrlChecker]:
    made = UrlChecker(max_concurrency=2, timeout=5.0, allow_private=True)
    yield made
    made.close()


def test_url_exists_statuses_and_redirects(url_server: UrlServer, checker: UrlChecker) -> None:
    base = url_server.url
    assert checker.exists(f"{base}/ok")
    assert not checker.exists(f"{base}/gone")
    assert checker.exists(f"{base}/once")  # one redirect is allowed
    assert not checker.exists(f"{base}/twice")  # the second is not
    assert not checker.exists("urn:nbn:de:1")  # not a web URL: no request
    assert not checker.exists("http://127.0.0.1:1/refused")  # no answer: invalid, not an error
    assert url_server.hits["/ok"] == 2  # directly, then after /once's redirect


def test_url_exists_caches_per_url(url_server: UrlServer, checker: UrlChecker) -> None:
    url = f"{url_server.url}/ok"
    assert checker.exists(url)
    assert checker.exist_many([url, url]) == {url: True}  # duplicates asked once
    assert checker.exists(url)
    assert url_server.hits["/ok"] == 1
    assert (checker.requests, checker.cache_hits) == (1, 2)


def test_url_exists_concurrent_askers_share_one_request(
    url_server: UrlServer, checker: UrlChecker
) -> None:
    url = f"{url_server.url}/slow/shared"
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(checker.exists(url))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [True] * 6
    assert url_server.hits["/slow/shared"] == 1


def test_url_exists_bounds_concurrency(url_server: UrlServer, checker: UrlChecker) -> None:
    # each /pair/ request is answered only while a second one is in flight, so every answer
    # being 200 shows two at a time were used, and the high-water mark shows no more were
    urls = [f"{url_server.url}/pair/{n}" for n in range(8)]
    answers = checker.exist_many(urls)
    assert all(answers.values()) and len(answers) == 8
    assert url_server.most_in_flight == 2  # bounded, and the bound is actually used


def test_url_exists_rule_in_a_ruleset(url_server: UrlServer, checker: UrlChecker) -> None:
    rules = one_rule(
        type="url_exists", field="dc.identifier", quantifier="ALL", store_occurrences=True
    )
    base = url_server.url
    good = dc_record(identifier=[f"{base}/ok", f"{base}/once"])
    bad = dc_record(identifier=[f"{base}/ok", f"{base}/gone"])
    assert validate(good, rules, url_checker=checker).valid
    verdict = validate(bad, rules, url_checker=checker)
    assert not verdict.valid
    assert verdict.results[0].invalid_occurrences == (f"{base}/gone",)
    assert url_server.hits["/ok"] == 2  # /ok once directly (then cached), once via /once


def test_url_exists_with_injected_call() -> None:
    calls: list[str] = []

    def head(url: str) -> tuple[int, str | None]:
        calls.append(url)
        return {"http://a.test/x": (301, "/y"), "http://a.test/y": (200, None)}.get(
            url, (404, None)
        )

    checker = UrlChecker(head=head)
    assert checker.exists("http://a.test/x")
    assert not checker.exists("http://a.test/z")
    assert calls == ["http://a.test/x", "http://a.test/y", "http://a.test/z"]


def test_url_exists_injected_call_failing_counts_as_invalid() -> None:
    def head(url: str) -> tuple[int, str | None]:
        raise OSError("boom")

    assert not UrlChecker(head=head).exists("http://a.test/")


def test_ruleset_default_url_checker_is_kept(url_server: UrlServer) -> None:
    rules = one_rule(type="url_exists", field="dc.identifier")
    record = dc_record(identifier=f"{url_server.url}/ok")
    # the default checker refuses addresses outside the public internet (loopback here)
    assert not validate(record, rules).valid
    assert url_server.hits.get("/ok", 0) == 0
    assert rules.url_checker() is rules.url_checker()
    rules.url_checker().close()
    allowed = UrlChecker(allow_private=True)
    assert validate(record, rules, url_checker=allowed).valid
    assert validate(record, rules, url_checker=allowed).valid
    assert url_server.hits["/ok"] == 1
    allowed.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "http://10.1.2.3/",
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://192.168.0.10/",
    ],
)
def test_private_addresses_are_recognised(url: str) -> None:
    assert not PUBLIC_ONLY.permits_url(url)  # the one outbound policy (tests/unit/test_outbound.py)


def test_public_address_is_not_private() -> None:
    assert PUBLIC_ONLY.permits_url("http://93.184.215.14/x")


def test_url_exists_check_of_a_dripping_server_ends_at_its_deadline() -> None:
    """A harvested record's link to a server that sends its headers a byte at a time must not
    hold a check past the checker's timeout (each byte would otherwise restart the read timeout)."""
    from tests.support.oai_hostile import Hostile, drip_headers

    with Hostile() as hostile:
        hostile.route("/slow", drip_headers(0.02, seconds=30.0))
        checker = UrlChecker(timeout=0.5, allow_private=True)
        started = time.monotonic()
        assert not checker.exists(f"{hostile.url}/slow")
        took = time.monotonic() - started
        checker.close()
    assert hostile.requests == ["/slow"]
    # without a deadline the check lasts as long as the server drips (30 s here)
    assert took < 5.0
