"""Transformer rules, transformer-set loading, ordering, failures, stats, and the record edits
they rely on."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from shelfwork.errors import ConfigError, ShelfworkError
from shelfwork.pipelines.oai.record import MetadataRecord
from shelfwork.pipelines.oai.transform import (
    MAX_VALUE_CHARS,
    TransformContext,
    TransformerSet,
    TransformerSetError,
    TransformFailed,
    TransformOutcome,
    TransformStats,
    apply,
)

DC = "http://purl.org/dc/elements/1.1/"
DCTERMS = "http://purl.org/dc/terms/"
CONTEXT = TransformContext(
    network_acronym="LAREF",
    network_name="Red Federada",
    repository_name="Repositorio Ñandú",
    base_url="https://repo.example.org/oai",
    harvested_at=dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
)


def dc_record(record_id: str = "oai:repo:1", /, **fields: str | list[str]) -> MetadataRecord:
    """An oai_dc record built from keyword fields: title="A" or type=["x", "y"]."""
    parts = []
    for name, values in fields.items():
        for value in [values] if isinstance(values, str) else values:
            escaped = value.replace("&", "&amp;").replace("<", "&lt;")
            parts.append(f"<dc:{name}>{escaped}</dc:{name}>")
    return raw_record("".join(parts), record_id)


def raw_record(body: str, record_id: str = "oai:repo:1") -> MetadataRecord:
    data = (
        '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/" '
        f'xmlns:dc="{DC}">{body}</oai_dc:dc>'
    )
    return MetadataRecord.parse(data.encode("utf-8"), record_id)


def rules(*specs: dict[str, Any], rules_dir: Path | None = None) -> TransformerSet:
    numbered = [{"id": f"r{i}", **spec} for i, spec in enumerate(specs, start=1)]
    return TransformerSet.from_dict({"name": "t", "rules": numbered}, rules_dir=rules_dir)


def run(
    transformers: TransformerSet, record: MetadataRecord, context: TransformContext = CONTEXT
) -> TransformOutcome:
    """Apply, then check the record still serialises and re-parses to the same values."""
    outcome = apply(record, transformers, context)
    again = MetadataRecord.parse(record.to_bytes(), outcome.identifier)
    for name in ("title", "type", "subject", "identifier", "source", "date", "creator"):
        assert again.values(f"dc.{name}") == record.values(f"dc.{name}")
    return outcome


def problems_of(data: dict[str, Any], rules_dir: Path | None = None) -> list[str]:
    with pytest.raises(TransformerSetError) as caught:
        TransformerSet.from_dict(data, rules_dir=rules_dir)
    return caught.value.problems


def one_problem(spec: dict[str, Any], rules_dir: Path | None = None) -> str:
    found = problems_of({"name": "t", "rules": [{"id": "bad", **spec}]}, rules_dir)
    assert len(found) == 1, found
    return found[0]


# --- record edits ---------------------------------------------------------------------------


def test_add_value_groups_with_same_name_and_keeps_indentation() -> None:
    record = raw_record("\n  <dc:title>T</dc:title>\n  <dc:creator>C</dc:creator>\n")
    record.add_value("dc.title", "Второй")
    record.add_value("dc.subject", "S")
    text = record.to_bytes().decode()
    assert (
        "\n  <dc:title>T</dc:title>\n  <dc:title>Второй</dc:title>\n  <dc:creator>C</dc:creator>"
        "\n  <dc:subject>S</dc:subject>\n</oai_dc:dc>"
    ) in text


def test_add_value_qualifier_and_new_namespace() -> None:
    record = dc_record(title="T")
    record.add_value("dc.date.issued", "2020")
    record.add_value("dcterms.abstract", "A")
    assert record.values("dc.date.issued") == ["2020"]
    assert record.values("dcterms.abstract") == ["A"]
    text = record.to_bytes().decode()
    assert '<dc:date type="issued">2020</dc:date>' in text
    assert f'<dcterms:abstract xmlns:dcterms="{DCTERMS}">A</dcterms:abstract>' in text
    with pytest.raises(ValueError, match="unknown namespace prefix 'zz'"):
        record.add_value("zz.title", "x")


def test_value_cache_is_forgotten_after_each_edit() -> None:
    record = dc_record(title=["a", "b"], type="x")
    assert record.values("dc.title") == ["a", "b"]  # resolved and cached
    record.add_value("dc.title", "c")
    assert record.values("dc.title") == ["a", "b", "c"]
    record.remove_element(record.elements("dc.title")[0])
    assert record.values("dc.title") == ["b", "c"]
    record.set_value(record.elements("dc.title")[0], "B")
    assert record.values("dc.title") == ["B", "c"]
    assert record.values("dc.type") == ["x"]
    record.rename_element(record.elements("dc.type")[0], "dc.subject")
    assert record.values("dc.type") == []
    assert record.values("dc.subject") == ["x"]


def test_remove_element_keeps_mixed_text_and_set_value_flattens() -> None:
    record = raw_record("<dc:title>Main <i>part</i> end</dc:title>")
    title = record.elements("dc.title")[0]
    record.remove_element(title[0])  # the <i>; its tail text stays
    assert record.values("dc.title") == ["Main end"]
    record = raw_record("<dc:title>Main <i>part</i> end</dc:title>")
    record.set_value(record.elements("dc.title")[0], "Plain")
    assert record.to_bytes().count(b"<i>") == 0
    assert record.values("dc.title") == ["Plain"]
    with pytest.raises(ValueError, match="root"):
        record.remove_element(record.root)


def test_rename_element_in_place_sets_and_drops_type() -> None:
    record = raw_record('<dc:date type="issued">2020</dc:date><dc:title>T</dc:title>')
    date = record.rename_element(record.elements("dc.date.issued")[0], "dcterms.issued")
    assert record.root[0] is date  # same position
    assert date.get("type") is None
    assert date.tag == f"{{{DCTERMS}}}issued"
    record.rename_element(record.elements("dc.title")[0], "dc.title.main")
    assert record.values("dc.title.main") == ["T"]


# --- each rule type -------------------------------------------------------------------------


def test_add_field_adds_once_unless_told() -> None:
    add = rules({"type": "add_field", "field": "dc.rights", "value": "open access"})
    record = dc_record(title="T")
    assert run(add, record).changed_by == ("r1",)
    assert record.values("dc.rights") == ["open access"]
    assert not run(add, record).changed  # already present
    twice = rules(
        {
            "type": "add_field",
            "field": "dc.rights",
            "value": "open access",
            "skip_if_present": False,
        }
    )
    assert run(twice, record).changed
    assert record.values("dc.rights") == ["open access", "open access"]


def test_conditional_add_only_when_the_expression_holds() -> None:
    add = rules(
        {
            "type": "conditional_add_field",
            "field": "dc.type",
            "value": "info:eu-repo/semantics/doctoralThesis",
            "condition": "dc.type == 'tesis doctoral' AND NOT dc.language == 'en'",
        }
    )
    thesis = dc_record(type="tesis doctoral", language="es")
    assert run(add, thesis).changed
    assert thesis.values("dc.type") == ["tesis doctoral", "info:eu-repo/semantics/doctoralThesis"]
    english = dc_record(type="tesis doctoral", language="en")
    assert not run(add, english).changed
    assert english.values("dc.type") == ["tesis doctoral"]
    assert "'condition'" in one_problem(
        {"type": "conditional_add_field", "field": "dc.type", "value": "x"}
    )


def test_any_rule_takes_a_condition() -> None:
    keep = rules({"type": "keep_first", "field": "dc.title", "condition": "dc.type == 'book'"})
    book = dc_record(title=["a", "b"], type="book")
    other = dc_record(title=["a", "b"], type="article")
    assert run(keep, book).changed and book.values("dc.title") == ["a"]
    assert not run(keep, other).changed and other.values("dc.title") == ["a", "b"]


def test_normalize_whitespace_nfc_case_and_trailing_punctuation() -> None:
    tidy = rules(
        {"type": "normalize", "field": "dc.title", "case": "lower", "strip_trailing": ".;/"}
    )
    record = dc_record(title=["  ВОЙНА   и\n мир . ;", "Cafe\u0301 ÉTÉ/", "ok"])
    outcome = run(tidy, record)
    assert outcome.changed_by == ("r1",)
    assert record.values("dc.title") == ["война и мир", "café été", "ok"]
    assert record.values("dc.title")[1] == "caf\u00e9 \u00e9t\u00e9"  # composed
    assert not run(tidy, record).changed


def test_normalize_default_keeps_case_and_punctuation_and_leaves_tidy_values() -> None:
    tidy = rules({"type": "normalize", "field": "dc.title"})
    record = raw_record("<dc:title>Río\t Grande.</dc:title><dc:title>Tidy <i>kept</i></dc:title>")
    assert run(tidy, record).changed
    assert record.values("dc.title") == ["Río Grande.", "Tidy kept"]
    assert b"<i>kept</i>" in record.to_bytes()  # nothing to tidy: children untouched
    nfkc = rules({"type": "normalize", "field": "dc.title", "unicode_form": "NFKC"})
    ligature = dc_record(title="ﬁsh")
    assert run(nfkc, ligature).changed and ligature.values("dc.title") == ["fish"]
    off = {"type": "normalize", "field": "dc.title", "whitespace": False, "unicode_form": None}
    assert "change nothing" in one_problem(off)


def test_translate_inline_keeps_unmatched_and_matches_composed_unicode() -> None:
    translate = rules(
        {
            "type": "translate_values",
            "field": "dc.language",
            "mapping": {"español": "spa", "русский": "rus"},
        }
    )
    record = dc_record(language=["espan\u0303ol", "русский", "Español", "klingon"])
    assert run(translate, record).changed_by == ("r1",)
    assert record.values("dc.language") == ["spa", "rus", "Español", "klingon"]
    assert not run(translate, dc_record(language="klingon")).changed


def test_translate_case_insensitive_and_ambiguous_keys() -> None:
    translate = rules(
        {
            "type": "translate_values",
            "field": "dc.type",
            "mapping": {"ARTÍCULO": "article"},
            "case_sensitive": False,
        }
    )
    record = dc_record(type=["artículo", "Artículo", "libro"])
    run(translate, record)
    assert record.values("dc.type") == ["article", "article", "libro"]
    clash = {
        "type": "translate_values",
        "field": "dc.type",
        "mapping": {"Book": "book", "BOOK": "monograph"},
        "case_sensitive": False,
    }
    assert "already translated to 'book'" in one_problem(clash)


def test_translate_from_file(tmp_path: Path) -> None:
    (tmp_path / "types.tsv").write_text(
        "info:eu-repo/semantics/article\tartículo\n\nкнига\tlibro\n", encoding="utf-8"
    )
    translate = rules(
        {"type": "translate_values", "field": "dc.type", "file": "types.tsv"}, rules_dir=tmp_path
    )
    record = dc_record(type=["книга", "info:eu-repo/semantics/article", "other"])
    run(translate, record)
    assert record.values("dc.type") == ["libro", "artículo", "other"]
    (tmp_path / "bad.tsv").write_text("a\tb\nno tab here\n", encoding="utf-8")
    problem = one_problem(
        {"type": "translate_values", "field": "dc.type", "file": "bad.tsv"}, tmp_path
    )
    assert "line 2" in problem and "value<TAB>replacement" in problem


def test_rename_single_field() -> None:
    rename = rules({"type": "rename_field", "field": "dc.date.issued", "to": "dcterms.issued"})
    record = raw_record('<dc:date type="issued">2020</dc:date><dc:date>2019</dc:date>')
    assert run(rename, record).changed
    assert record.values("dcterms.issued") == ["2020"]
    assert record.values("dc.date") == ["2019"]
    assert not run(rename, record).changed  # nothing left to rename
    assert "to itself" in one_problem({"type": "rename_field", "field": "dc.date", "to": "dc.date"})


def test_rename_to_qualified_field_is_unchanged_when_already_there() -> None:
    rename = rules({"type": "rename_field", "field": "dc.date", "to": "dc.date.issued"})
    record = raw_record('<dc:date type="issued">2020</dc:date><dc:date>2019</dc:date>')
    assert run(rename, record).changed
    assert record.values("dc.date.issued") == ["2020", "2019"]
    assert not run(rename, record).changed


def test_conditional_rename() -> None:
    rename = rules(
        {
            "type": "conditional_rename_field",
            "field": "dc.description",
            "to": "dc.description.abstract",
            "condition": "dc.type =% 'info:eu-repo/semantics/.*'",
        }
    )
    tagged = dc_record(description="Resumen", type="info:eu-repo/semantics/article")
    plain = dc_record(description="Resumen", type="artículo")
    assert run(rename, tagged).changed
    assert tagged.values("dc.description.abstract") == ["Resumen"]
    assert not run(rename, plain).changed
    assert plain.values("dc.description.abstract") == []


def test_bulk_rename_swaps_and_does_not_chain() -> None:
    bulk = rules(
        {
            "type": "rename_fields",
            "renames": {"dc.creator": "dc.contributor", "dc.contributor": "dc.creator"},
        },
        {
            "type": "rename_fields",
            "renames": {"dc.subject": "dc.coverage", "dc.coverage": "dc.format"},
        },
    )
    record = dc_record(creator="Автор", contributor="Editor", subject="S")
    outcome = run(bulk, record)
    assert outcome.changed_by == ("r1", "r2")
    assert record.values("dc.creator") == ["Editor"]
    assert record.values("dc.contributor") == ["Автор"]
    assert record.values("dc.coverage") == ["S"]  # not carried on to dc.format
    assert record.values("dc.format") == []


def test_regex_replace_with_group_references_and_count() -> None:
    swap = rules(
        {
            "type": "regex_replace",
            "field": "dc.creator",
            "pattern": r"^(?P<last>[^,]+), (\w+)$",
            "replacement": r"\2 \g<last>",
        }
    )
    record = dc_record(creator=["Пушкин, Александр", "Plato"])
    assert run(swap, record).changed
    assert record.values("dc.creator") == ["Александр Пушкин", "Plato"]
    assert not run(swap, dc_record(creator="Plato")).changed
    first_only = rules(
        {
            "type": "regex_replace",
            "field": "dc.title",
            "pattern": "a",
            "replacement": "á",
            "count": 1,
        }
    )
    record = dc_record(title="banana")
    run(first_only, record)
    assert record.values("dc.title") == ["bánana"]


def test_regex_replace_ignoring_case_and_into_another_field() -> None:
    doi = rules(
        {
            "type": "regex_replace",
            "field": "dc.identifier",
            "pattern": r"^https?://(dx\.)?doi\.org/(10\..+)$",
            "replacement": r"\2",
            "case_sensitive": False,
            "target_field": "dc.identifier.doi",
            "remove_source": True,
        }
    )
    record = dc_record(identifier=["HTTPS://DOI.ORG/10.1/x", "http://handle/1"])
    assert run(doi, record).changed
    assert record.values("dc.identifier.doi") == ["10.1/x"]
    assert record.values("dc.identifier") == ["http://handle/1"]
    assert record.values("dc.identifier.*") == ["http://handle/1", "10.1/x"]
    assert "needs a 'target_field'" in one_problem(
        {
            "type": "regex_replace",
            "field": "dc.title",
            "pattern": "a",
            "replacement": "b",
            "remove_source": True,
        }
    )


def test_regex_replace_checks_replacement_on_load() -> None:
    base = {"type": "regex_replace", "field": "dc.title", "pattern": "(a)"}
    assert "not usable" in one_problem({**base, "replacement": r"\2"})
    assert "not usable" in one_problem({**base, "replacement": r"\g<missing>"})
    assert "U+0000" in one_problem({**base, "replacement": r"\0"})  # octal escape: NUL
    assert "U+0007" in one_problem({**base, "replacement": "\x07"})


def test_regex_replace_too_long_a_result_fails_the_record() -> None:
    grow = rules(
        {"type": "regex_replace", "field": "dc.title", "pattern": "x", "replacement": "y" * 50}
    )
    record = dc_record("oai:repo:big", title="x" * (MAX_VALUE_CHARS // 40))
    with pytest.raises(TransformFailed) as caught:
        apply(record, grow, CONTEXT)
    assert caught.value.identifier == "oai:repo:big"
    assert caught.value.rule_id == "r1"
    assert "characters long" in str(caught.value)
    assert isinstance(caught.value, ShelfworkError)


def test_rewrite_identifier_of_record_and_field() -> None:
    rewrite = rules(
        {
            "type": "rewrite_identifier",
            "pattern": r"^oai:([^:]+):(\d+)$",
            "replacement": r"oai:laref:\1:\2",
            "field": "dc.identifier",
        }
    )
    record = dc_record("oai:repo:123", identifier=["oai:repo:123", "http://x/123"])
    outcome = run(rewrite, record)
    assert outcome.identifier == "oai:laref:repo:123" == record.identifier
    assert outcome.original_identifier == "oai:repo:123"
    assert outcome.identifier_rewritten
    assert record.values("dc.identifier") == ["oai:laref:repo:123", "http://x/123"]
    unchanged = dc_record("urn:other:1")
    outcome = run(rewrite, unchanged)
    assert not outcome.changed and not outcome.identifier_rewritten


def test_rewrite_identifier_field_only_and_bad_results() -> None:
    field_only = rules(
        {
            "type": "rewrite_identifier",
            "pattern": "^hdl:",
            "replacement": "https://hdl.handle.net/",
            "record_identifier": False,
            "field": "dc.identifier",
        }
    )
    record = dc_record("hdl:1/2", identifier="hdl:1/2")
    assert run(field_only, record).identifier == "hdl:1/2"
    assert record.values("dc.identifier") == ["https://hdl.handle.net/1/2"]
    emptying = rules({"type": "rewrite_identifier", "pattern": ".*", "replacement": ""})
    with pytest.raises(TransformFailed, match=r"'oai:repo:1'.*'r1'.*empty"):
        apply(dc_record("oai:repo:1"), emptying, CONTEXT)
    assert "rewrites nothing" in one_problem(
        {
            "type": "rewrite_identifier",
            "pattern": "a",
            "replacement": "b",
            "record_identifier": False,
        }
    )


def test_remove_duplicates_keeps_first_of_each_value() -> None:
    dedupe = rules({"type": "remove_duplicates", "field": "dc.subject"})
    record = dc_record(subject=["Física", "Fi\u0301sica", "física", "Химия", " Химия "])
    assert run(dedupe, record).changed
    assert record.values("dc.subject") == ["Física", "física", "Химия"]
    assert not run(dedupe, record).changed
    folded = rules({"type": "remove_duplicates", "field": "dc.subject", "case_sensitive": False})
    run(folded, record)
    assert record.values("dc.subject") == ["Física", "Химия"]


def test_remove_empty() -> None:
    clean = rules({"type": "remove_empty", "field": "dc.subject"})
    record = raw_record("<dc:subject/><dc:subject>a</dc:subject><dc:subject> \n </dc:subject>")
    assert run(clean, record).changed
    assert record.values("dc.subject") == ["a"]
    assert not run(clean, record).changed


def test_remove_blacklisted_inline_and_from_file(tmp_path: Path) -> None:
    inline = rules(
        {"type": "remove_blacklisted", "field": "dc.subject", "values": ["N/A", "sin tema"]}
    )
    record = dc_record(subject=["N/A", "n/a", "Óptica", "sin  tema"])
    assert run(inline, record).changed
    assert record.values("dc.subject") == ["n/a", "Óptica"]
    (tmp_path / "stop.txt").write_text("n/a\nБЕЗ ТЕМЫ\n\n", encoding="utf-8")
    from_file = rules(
        {
            "type": "remove_blacklisted",
            "field": "dc.subject",
            "file": "stop.txt",
            "case_sensitive": False,
        },
        rules_dir=tmp_path,
    )
    record = dc_record(subject=["N/A", "без темы", "Óptica"])
    run(from_file, record)
    assert record.values("dc.subject") == ["Óptica"]
    assert not run(from_file, record).changed


def test_keep_first_occurrence() -> None:
    keep = rules({"type": "keep_first", "field": "dc.date"})
    record = dc_record(date=["2020", "2021", "2022"], title="T")
    assert run(keep, record).changed
    assert record.values("dc.date") == ["2020"]
    assert not run(keep, record).changed


def test_add_repository_name_with_prefix_and_replace() -> None:
    name = rules({"type": "add_repository_name"})
    record = dc_record(source="reponame:Old")
    assert run(name, record).changed
    assert record.values("dc.source") == ["reponame:Old", "reponame:Repositorio Ñandú"]
    assert not run(name, record).changed
    replacing = rules(
        {"type": "add_repository_name", "field": "dc.publisher", "prefix": "", "replace": True}
    )
    record = dc_record(publisher=["Old", "Older"])
    run(replacing, record)
    assert record.values("dc.publisher") == ["Repositorio Ñandú"]


def test_add_repository_name_needs_a_usable_name() -> None:
    name = rules({"type": "add_repository_name"})
    nameless = TransformContext(
        network_acronym="N", base_url="u", harvested_at=CONTEXT.harvested_at
    )
    with pytest.raises(TransformFailed, match="no repository name"):
        apply(dc_record(), name, nameless)
    ringing = TransformContext(
        network_acronym="N",
        base_url="u",
        harvested_at=CONTEXT.harvested_at,
        repository_name="Bell\x07",
    )
    with pytest.raises(TransformFailed, match="U\\+0007"):
        apply(dc_record("oai:repo:7"), name, ringing)


def test_add_provenance_writes_chosen_items() -> None:
    provenance = rules(
        {"type": "rewrite_identifier", "pattern": "^oai:repo:", "replacement": "oai:laref:repo:"},
        {
            "type": "add_provenance",
            "network_field": "dc.source.network",
            "base_url_field": "dc.source.baseURL",
            "identifier_field": "dc.source.identifier",
            "harvested_at_field": "dc.source.harvested",
            "metadata_prefix_field": "dc.source.metadataPrefix",
            "network_name_field": "dc.source.networkName",
        },
    )
    madrid = dt.timezone(dt.timedelta(hours=2))
    context = TransformContext(
        network_acronym="LAREF",
        base_url="https://repo.example.org/oai",
        harvested_at=dt.datetime(2025, 3, 4, 7, 6, 7, tzinfo=madrid),
    )
    record = dc_record("oai:repo:9", title="T")
    outcome = run(provenance, record, context)
    assert outcome.changed_by == ("r1", "r2")
    assert record.values("dc.source.network") == ["LAREF"]
    assert record.values("dc.source.baseURL") == ["https://repo.example.org/oai"]
    assert record.values("dc.source.identifier") == ["oai:repo:9"]  # as harvested
    assert record.values("dc.source.harvested") == ["2025-03-04T05:06:07Z"]
    assert record.values("dc.source.metadataPrefix") == ["oai_dc"]
    assert record.values("dc.source.networkName") == []  # empty in this context: skipped
    record.identifier = "oai:repo:9"  # as harvested again
    assert run(provenance, record, context).changed_by == ("r1",)  # only the rewrite


def test_add_provenance_replace_and_needs_a_field() -> None:
    provenance = rules(
        {"type": "add_provenance", "network_field": "dc.source.network", "replace": True}
    )
    record = raw_record('<dc:source type="network">UPSTREAM</dc:source><dc:source>s</dc:source>')
    assert run(provenance, record).changed
    assert record.values("dc.source.*") == ["s", "LAREF"]
    assert not run(provenance, record).changed
    assert "at least one of network_field" in one_problem({"type": "add_provenance"})


def test_context_needs_an_aware_harvest_time() -> None:
    with pytest.raises(ConfigError, match="no time zone"):
        TransformContext(network_acronym="N", base_url="u", harvested_at=dt.datetime(2025, 1, 1))


# --- ordering and failures ------------------------------------------------------------------


def test_rules_run_in_file_order() -> None:
    translate = {"type": "translate_values", "field": "dc.type", "mapping": {"tesis": "thesis"}}
    add = {"type": "add_field", "field": "dc.type", "value": "tesis"}
    translate_then_add = dc_record(type="x")
    run(rules(translate, add), translate_then_add)
    add_then_translate = dc_record(type="x")
    outcome = run(rules(add, translate), add_then_translate)
    assert translate_then_add.values("dc.type") == ["x", "tesis"]
    assert add_then_translate.values("dc.type") == ["x", "thesis"]
    assert outcome.changed_by == ("r1", "r2")


def test_conditions_see_earlier_changes() -> None:
    chain = rules(
        {"type": "rename_field", "field": "dc.subject", "to": "dc.type"},
        {
            "type": "conditional_add_field",
            "field": "dc.rights",
            "value": "ok",
            "condition": "dc.type == 'book'",
        },
    )
    record = dc_record(subject="book")
    assert record.values("dc.type") == []  # cached before the rename
    assert run(chain, record).changed_by == ("r1", "r2")
    assert record.values("dc.rights") == ["ok"]


def test_unchanged_record_reports_nothing_and_keeps_bytes() -> None:
    everything = rules(
        {"type": "normalize", "field": "dc.title"},
        {"type": "remove_duplicates", "field": "dc.title"},
        {"type": "remove_empty", "field": "dc.title"},
        {"type": "keep_first", "field": "dc.date"},
        {"type": "regex_replace", "field": "dc.title", "pattern": "zzz", "replacement": "y"},
    )
    record = dc_record(title="Война и мир", date="1869")
    before = record.to_bytes()
    outcome = run(everything, record)
    assert not outcome.changed and outcome.changed_by == ()
    assert record.to_bytes() == before


def test_set_namespaces_apply_to_records() -> None:
    extra = TransformerSet.from_dict(
        {
            "name": "t",
            "namespaces": {"x": "urn:extra"},
            "rules": [{"id": "a", "type": "add_field", "field": "x.note", "value": "n"}],
        }
    )
    record = dc_record(title="T")
    run(extra, record)
    assert record.values("x.note") == ["n"]
    assert b'xmlns:x="urn:extra"' in record.to_bytes()


# --- loading ----------------------------------------------------------------------------------

TOML_SET = """
name = "network"
description = "clean-up before validation"

[[rules]]
id = "types"
type = "translate_values"
field = "dc.type"
file = "types.tsv"
case_sensitive = false

[[rules]]
id = "move"
type = "rename_fields"
[rules.renames]
"dc.date.issued" = "dcterms.issued"

[[rules]]
id = "ids"
type = "rewrite_identifier"
pattern = '^oai:repo:'
replacement = 'oai:net:repo:'
"""


def test_load_toml_and_json_give_the_same_set(tmp_path: Path) -> None:
    (tmp_path / "types.tsv").write_text("Artículo\tarticle\n", encoding="utf-8")
    (tmp_path / "set.toml").write_text(TOML_SET, encoding="utf-8")
    from_toml = TransformerSet.load(tmp_path / "set.toml")
    (tmp_path / "set.json").write_text(
        json.dumps(
            {
                "name": "network",
                "description": "clean-up before validation",
                "rules": [
                    {
                        "id": "types",
                        "type": "translate_values",
                        "field": "dc.type",
                        "file": "types.tsv",
                        "case_sensitive": False,
                    },
                    {
                        "id": "move",
                        "type": "rename_fields",
                        "renames": {"dc.date.issued": "dcterms.issued"},
                    },
                    {
                        "id": "ids",
                        "type": "rewrite_identifier",
                        "pattern": "^oai:repo:",
                        "replacement": "oai:net:repo:",
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    from_json = TransformerSet.load(tmp_path / "set.json")
    assert from_toml == from_json
    assert [rule.id for rule in from_toml.rules] == ["types", "move", "ids"]
    record = raw_record('<dc:type>ARTÍCULO</dc:type><dc:date type="issued">2001</dc:date>')
    outcome = run(from_toml, record)
    assert outcome.identifier == "oai:net:repo:1"
    assert record.values("dc.type") == ["article"]
    assert record.values("dcterms.issued") == ["2001"]


def test_file_level_mistakes(tmp_path: Path) -> None:
    with pytest.raises(TransformerSetError, match="cannot be read"):
        TransformerSet.load(tmp_path / "missing.toml")
    (tmp_path / "set.yaml").write_text("name: x", encoding="utf-8")
    with pytest.raises(TransformerSetError, match=r"\.toml or \.json"):
        TransformerSet.load(tmp_path / "set.yaml")
    with pytest.raises(TransformerSetError, match="not valid TOML"):
        TransformerSet.from_toml("name = ")
    with pytest.raises(TransformerSetError, match="not valid JSON"):
        TransformerSet.from_json("{")
    with pytest.raises(TransformerSetError, match="top level"):
        TransformerSet.from_dict([])  # type: ignore[arg-type]


def test_errors_name_the_rule_and_key() -> None:
    assert one_problem({"type": "shuffle"}).startswith(
        "rules[0] (id 'bad'): unknown rule type 'shuffle'"
    )
    assert one_problem({"field": "dc.title"}) == "rules[0] (id 'bad'): 'type' is missing"
    missing = one_problem({"type": "add_field", "field": "dc.title"})
    assert missing.startswith("rules[0] (id 'bad'): key 'value'")
    bad_regex = one_problem(
        {"type": "regex_replace", "field": "dc.title", "pattern": "(a", "replacement": "b"}
    )
    assert bad_regex.startswith("rules[0] (id 'bad')") and "does not compile" in bad_regex
    nested = one_problem(
        {"type": "regex_replace", "field": "dc.title", "pattern": "(a+)+", "replacement": "b"}
    )
    assert "repeats a repeated group" in nested
    unknown = one_problem({"type": "keep_first", "field": "dc.title", "colour": "red"})
    assert unknown == "rules[0] (id 'bad'): key 'colour': unknown key"
    prefix = one_problem({"type": "keep_first", "field": "zz.title"})
    assert "key 'field'" in prefix and "unknown namespace prefix 'zz'" in prefix
    renames = one_problem({"type": "rename_fields", "renames": {"dc.title": "title"}})
    assert "renames['dc.title']" in renames
    condition = one_problem({"type": "keep_first", "field": "dc.title", "condition": "dc.x ="})
    assert "key 'condition'" in condition and "position" in condition


def test_duplicate_ids_and_several_mistakes_are_all_named() -> None:
    found = problems_of(
        {
            "name": "t",
            "rules": [
                {"id": "a", "type": "keep_first", "field": "dc.title"},
                {"id": "a", "type": "remove_empty", "field": "dc.title"},
            ],
        }
    )
    assert found == ["rules[1] (id 'a'): duplicate id, already used by rules[0]"]
    found = problems_of(
        {
            "name": "",
            "rules": [
                {"id": "one", "type": "keep_first"},
                {"id": "two", "type": "add_field", "field": "dc.x", "value": "v"},
                {"id": "three", "type": "nope"},
            ],
        }
    )
    assert len(found) == 3
    assert found[0].startswith("key 'name'")
    assert found[1].startswith("rules[0] (id 'one'): key 'field'")
    assert found[2].startswith("rules[2] (id 'three'): unknown rule type")


@pytest.mark.parametrize("rule_type", ["translate_values", "remove_blacklisted"])
def test_list_files_are_confined_to_the_rules_folder(tmp_path: Path, rule_type: str) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("a\tb\n", encoding="utf-8")
    base = {"type": rule_type, "field": "dc.type"}
    for escape in ("../outside.txt", str(outside)):
        problem = one_problem({**base, "file": escape}, rules_dir)
        assert "key 'file'" in problem and "outside the rules folder" in problem
    assert "does not exist" in one_problem({**base, "file": "none.txt"}, rules_dir)
    assert "needs a rules folder" in one_problem({**base, "file": "x.txt"})
    listing = "mapping" if rule_type == "translate_values" else "values"
    both = {**base, "file": "x", listing: {} if listing == "mapping" else []}
    (rules_dir / "x").write_text("a\tb\n", encoding="utf-8")
    assert "exactly one of" in one_problem(both, rules_dir)
    assert "exactly one of" in one_problem(base, rules_dir)


def test_literal_values_must_be_xml_text() -> None:
    assert "U+0001" in one_problem({"type": "add_field", "field": "dc.title", "value": "a\x01"})
    assert "U+0001" in one_problem(
        {"type": "translate_values", "field": "dc.title", "mapping": {"a": "b\x01"}}
    )


# --- stats ------------------------------------------------------------------------------------


def test_stats_count_changes_failures_and_merge() -> None:
    transformers = rules(
        {"type": "keep_first", "field": "dc.title", "description": "one title"},
        {"type": "rewrite_identifier", "pattern": "^a:", "replacement": "b:"},
        {"type": "add_repository_name"},
    )
    stats = TransformStats.for_transformers(transformers)
    assert stats.rules["r1"].description == "one title"
    assert stats.rules["r1"].type == "keep_first"
    stats.add(run(transformers, dc_record("a:1", title=["x", "y"])))
    stats.add(run(transformers, dc_record("c:2", title="x", source="reponame:Repositorio Ñandú")))
    nameless = TransformContext(
        network_acronym="N", base_url="u", harvested_at=CONTEXT.harvested_at
    )
    with pytest.raises(TransformFailed) as caught:
        apply(dc_record("a:3"), transformers, nameless)
    stats.add_failure(caught.value)
    assert (stats.total, stats.transformed, stats.failed, stats.identifiers_rewritten) == (
        3,
        1,
        1,
        1,
    )
    assert {key: (value.changed, value.failed) for key, value in stats.rules.items()} == {
        "r1": (1, 0),
        "r2": (1, 0),
        "r3": (1, 1),
    }
    other = TransformStats.from_json(stats.to_json())
    assert other == stats
    other.rules["late"] = other.rules.pop("r3")
    stats.merge(other)
    assert (stats.total, stats.transformed, stats.failed, stats.identifiers_rewritten) == (
        6,
        2,
        2,
        2,
    )
    assert stats.rules["r1"].changed == 2
    assert stats.rules["r3"].failed == 1
    assert (stats.rules["late"].changed, stats.rules["late"].failed) == (1, 1)
    assert stats.rules["late"].type == "add_repository_name"


def test_output_reparses_with_cyrillic_accents_and_new_namespaces() -> None:
    everything = rules(
        {"type": "normalize", "field": "dc.title", "case": "upper"},
        {"type": "rename_field", "field": "dc.date", "to": "dcterms.issued"},
        {"type": "add_repository_name"},
        {"type": "add_provenance", "identifier_field": "dcterms.provenance"},
    )
    record = dc_record("oai:репо:1", title="  преступление и наказание ", date="1866")
    run(everything, record)
    again = MetadataRecord.parse(record.to_bytes(), record.identifier)
    assert again.values("dc.title") == ["ПРЕСТУПЛЕНИЕ И НАКАЗАНИЕ"]
    assert again.values("dcterms.issued") == ["1866"]
    assert again.values("dcterms.provenance") == ["oai:репо:1"]
    assert again.values("dc.source") == ["reponame:Repositorio Ñandú"]
    assert etree.QName(again.root).localname == "dc"


# --- field names address one qualifier level (as the reference's do) -------------------------


def test_every_qualifier_can_be_read_but_not_written() -> None:
    tidy = rules({"type": "remove_duplicates", "field": "dc.date.*"})
    record = raw_record('<dc:date>2020</dc:date><dc:date type="issued">2020</dc:date>')
    assert run(tidy, record).changed
    assert record.values("dc.date.*") == ["2020"]
    unqualified = rules({"type": "remove_duplicates", "field": "dc.date"})
    again = raw_record('<dc:date>2020</dc:date><dc:date type="issued">2020</dc:date>')
    assert not run(unqualified, again).changed  # the issued date is another field
    for spec in (
        {"type": "add_field", "field": "dc.date.*", "value": "x"},
        {"type": "rename_field", "field": "dc.date", "to": "dc.date.*"},
        {"type": "rename_fields", "renames": {"dc.date": "dc.date.*"}},
        {"type": "add_repository_name", "field": "dc.source.*"},
        {"type": "add_provenance", "network_field": "dc.source.*"},
        {
            "type": "regex_replace",
            "field": "dc.identifier",
            "pattern": "x",
            "replacement": "y",
            "target_field": "dc.identifier.*",
        },
    ):
        assert "cannot be written" in one_problem(spec), spec
