"""Transformer rules that change a harvested record before it is validated and published.

The rule types follow the reference platform's transformers (add, conditional add, translate,
rename, regex replace, identifier rewrite, remove duplicates / empties / blacklisted values, keep
the first occurrence, repository name, provenance). A transformer set is TOML or JSON, checked
completely on load like a validation rule set, and its rules run in file order on each record.
Rules hold no per-record state, so one set may serve many threads.

Rules read an occurrence the way validation does (its text, descendants included,
whitespace-normalised); a rule that rewrites an occurrence writes plain text, so child elements
inside it (rare in Dublin Core) are flattened to their text. A rule that cannot apply to a record
raises `TransformFailed`; the record is then partly transformed and is meant to be dead-lettered.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from lxml import etree
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...errors import ConfigError, ShelfworkError
from .record import (
    ANY_QUALIFIER,
    DEFAULT_NAMESPACES,
    FIELD_SYNTAX,
    MetadataRecord,
    normalise_space,
)
from .rulefile import (
    RuleFile,
    RuleFileError,
    addressable_field,
    confined_file,
    rules_context,
)
from .validation import (
    MAX_MATCH_CHARS,
    Expression,
    ExpressionError,
    compile_guarded,
    parse_expression,
)

#: longest value a rule may write (a regex replacement can multiply a value's length)
MAX_VALUE_CHARS = 100_000
#: largest translation or blacklist file a set may name
MAX_LIST_FILE_BYTES = 10 * 1024 * 1024
#: longest record identifier a rewrite may produce
MAX_IDENTIFIER_CHARS = 1_000

# Characters XML 1.0 allows; anything else makes the record unserialisable.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class TransformerSetError(RuleFileError):
    """A transformer set is wrong; each problem names the rule (position and id) and the key."""

    kind = "transformer set"


class TransformFailed(ShelfworkError):
    """Rule `rule_id` cannot apply to record `identifier` (as harvested); `problem` says why."""

    def __init__(self, identifier: str, rule_id: str, problem: str) -> None:
        self.identifier = identifier
        self.rule_id = rule_id
        self.problem = problem
        super().__init__(f"record {identifier!r}: transformer rule {rule_id!r} failed: {problem}")


class _CannotApply(Exception):
    """Raised inside a rule; `apply` turns it into `TransformFailed` with record and rule."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


def _xml_problem(text: str) -> str | None:
    bad = _NOT_XML_CHAR.search(text)
    if bad is None:
        return None
    return f"character U+{ord(bad.group()):04X} at offset {bad.start()} is not allowed in XML"


def _checked_literal(text: str) -> str:
    """A value written as configured: refused on load rather than on every record."""
    problem = _xml_problem(text)
    if problem is not None:
        raise ValueError(f"{text!r}: {problem}")
    return text


# --- the run's context and outcome ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformContext:
    """What rules may add about where a record came from (one harvest of one repository)."""

    network_acronym: str
    base_url: str
    harvested_at: dt.datetime
    network_name: str = ""
    repository_name: str = ""
    metadata_prefix: str = "oai_dc"

    def __post_init__(self) -> None:
        if self.harvested_at.tzinfo is None or self.harvested_at.utcoffset() is None:
            raise ConfigError(
                f"harvested_at {self.harvested_at.isoformat()} has no time zone; "
                "give an aware datetime (UTC)"
            )

    def harvested_at_text(self) -> str:
        """The harvest time as OAI-PMH writes datestamps: UTC, seconds, a literal Z."""
        return self.harvested_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _Run:
    context: TransformContext
    original_identifier: str


@dataclass(frozen=True, slots=True)
class TransformOutcome:
    """What `apply` did to one record: the rules that changed it, in the order they ran."""

    identifier: str
    original_identifier: str
    changed_by: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changed_by)

    @property
    def identifier_rewritten(self) -> bool:
        return self.identifier != self.original_identifier


# --- reading and writing occurrences ----------------------------------------------------------


def _value(element: etree._Element) -> str:
    return normalise_space("".join(element.itertext()))


def _match_key(text: str, case_sensitive: bool) -> str:
    """What two values must share to count as the same (composed Unicode, optionally folded)."""
    composed = unicodedata.normalize("NFC", text)
    return composed if case_sensitive else unicodedata.normalize("NFC", composed.casefold())


def _checked_output(value: str) -> str:
    if len(value) > MAX_VALUE_CHARS:
        raise _CannotApply(
            f"the new value is {len(value)} characters long; at most {MAX_VALUE_CHARS} are allowed"
        )
    problem = _xml_problem(value)
    if problem is not None:
        raise _CannotApply(f"the new value {value[:80]!r} is not XML text: {problem}")
    return value


def _write(record: MetadataRecord, element: etree._Element, value: str) -> None:
    record.set_value(element, _checked_output(value))


def _add(record: MetadataRecord, field: str, value: str) -> None:
    record.add_value(field, _checked_output(value))


def _confined_file(value: str, info: ValidationInfo) -> str:
    return confined_file(value, info, kind="list", max_bytes=MAX_LIST_FILE_BYTES)


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"file {path} cannot be read: {exc}") from None


def _checked_replacement(pattern: re.Pattern[str], replacement: str) -> str:
    """Expand `replacement` against a match with the pattern's groups, all empty: bad escapes,
    unknown groups and characters XML refuses (`\\0` is NUL) show up on load, not per record."""
    names = {index: name for name, index in pattern.groupindex.items()}
    probe = re.compile(
        "".join(
            f"(?P<{names[index]}>)" if index in names else "()"
            for index in range(1, pattern.groups + 1)
        )
    ).match("")
    assert probe is not None
    try:
        literal = probe.expand(replacement)
    except (re.error, IndexError) as exc:
        raise ValueError(f"replacement {replacement!r} is not usable: {exc}") from None
    problem = _xml_problem(literal)
    if problem is not None:
        raise ValueError(f"replacement {replacement!r} produces text XML refuses: {problem}")
    return replacement


# --- rules ------------------------------------------------------------------------------------


class Transformer(BaseModel):
    """What every transformer rule has. `condition`, a field expression as in validation, limits
    any rule to the records for which it holds (the conditional types require it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    description: str = ""
    condition: str | None = None
    _condition: Expression | None = PrivateAttr(default=None)

    @field_validator("condition")
    @classmethod
    def _condition_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            parse_expression(value, rules_context(info).get("namespaces", DEFAULT_NAMESPACES))
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _parse_condition(self) -> Transformer:
        if self.condition is not None:
            self._condition = parse_expression(self.condition)
        return self

    def applies_to(self, record: MetadataRecord) -> bool:
        return self._condition is None or self._condition.holds(record)

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        """Change `record`; True when something changed."""
        raise NotImplementedError


def writable_field(value: str, info: ValidationInfo) -> str:
    """A field a rule writes to: addressable, and one qualifier level (`dc.date.*` reads every
    qualifier but names no element to make)."""
    addressable_field(value, info)
    if value.endswith("." + ANY_QUALIFIER):
        raise ValueError(f"{value!r} selects every qualifier; it cannot be written to")
    return value


class FieldTransformer(Transformer):
    """A rule working on the occurrences of one field."""

    field: str

    @field_validator("field")
    @classmethod
    def _field_is_addressable(cls, value: str, info: ValidationInfo) -> str:
        return addressable_field(value, info)


class AddFieldRule(FieldTransformer):
    """Add `value` to `field` (reference: FieldAddRule). Unlike the reference, a value already
    present is not added twice unless `skip_if_present` is false."""

    type: Literal["add_field"]
    value: str = Field(min_length=1)
    skip_if_present: bool = True

    @field_validator("field")
    @classmethod
    def _field_is_writable(cls, value: str, info: ValidationInfo) -> str:
        return writable_field(value, info)

    @field_validator("value")
    @classmethod
    def _value_is_xml(cls, value: str) -> str:
        return _checked_literal(value)

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        if self.skip_if_present and normalise_space(self.value) in record.values(self.field):
            return False
        _add(record, self.field, self.value)
        return True


class ConditionalAddFieldRule(AddFieldRule):
    """Add `value` to `field` when `condition` holds (reference: FieldContentConditionalAddOccr)."""

    type: Literal["conditional_add_field"]
    condition: str


class NormalizeRule(FieldTransformer):
    """Tidy each value's text: Unicode form, case, whitespace, trailing punctuation.

    The reference's FieldContentNormalizeRule drops values failing a validator rule instead; its
    RemoveWhiteSpaces translator is the closest to this. Characters in `strip_trailing` are
    removed from the end (with `whitespace`, spaces between them too: "Title . ;" -> "Title").
    """

    type: Literal["normalize"]
    whitespace: bool = True
    unicode_form: Literal["NFC", "NFKC"] | None = "NFC"
    case: Literal["lower", "upper"] | None = None
    strip_trailing: str = ""

    @model_validator(mode="after")
    def _does_something(self) -> NormalizeRule:
        if not (self.whitespace or self.unicode_form or self.case or self.strip_trailing):
            raise ValueError("every option is off; the rule would change nothing")
        return self

    def normalized(self, text: str) -> str:
        if self.case == "lower":
            text = text.lower()
        elif self.case == "upper":
            text = text.upper()
        if self.unicode_form:
            text = unicodedata.normalize(self.unicode_form, text)
        if self.whitespace:
            text = normalise_space(text)
        if self.strip_trailing:
            text = text.rstrip(self.strip_trailing + (" " if self.whitespace else ""))
        return text

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        changed = False
        for element in record.elements(self.field):
            raw = "".join(element.itertext())
            tidy = self.normalized(raw)
            if tidy != raw:
                _write(record, element, tidy)
                changed = True
        return changed


class TranslateValuesRule(FieldTransformer):
    """Replace values found in a table, given inline (`mapping`) or as a file of
    `value<TAB>replacement` lines (`file`, confined to the rules folder); others are kept.

    The reference matches case-insensitively always; here `case_sensitive` chooses. Values and
    keys are compared in composed Unicode (NFC), so "é" matches however the repository wrote it.
    """

    type: Literal["translate_values"]
    mapping: dict[str, str] | None = None
    file: str | None = None
    case_sensitive: bool = True
    _table: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("file")
    @classmethod
    def _file_inside_rules_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _confined_file(value, info)

    @model_validator(mode="after")
    def _build_table(self) -> TranslateValuesRule:
        if (self.mapping is None) == (self.file is None):
            raise ValueError("give exactly one of 'mapping' (a table) or 'file'")
        pairs: list[tuple[str, str, str]] = []  # (source, target, where)
        if self.file is not None:
            for number, line in enumerate(_read_lines(self.file), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip():
                    raise ValueError(
                        f"{self.file} line {number}: expected 'value<TAB>replacement', "
                        f"found {line[:80]!r}"
                    )
                pairs.append((parts[0], parts[1], f"{self.file} line {number}"))
        else:
            pairs = [
                (key, value, f"mapping[{key!r}]") for key, value in (self.mapping or {}).items()
            ]
        table: dict[str, str] = {}
        for source, target, where in pairs:
            target = normalise_space(target)
            problem = _xml_problem(target)
            if problem is not None:
                raise ValueError(f"{where}: replacement {target!r}: {problem}")
            key = _match_key(normalise_space(source), self.case_sensitive)
            if table.get(key, target) != target:
                raise ValueError(
                    f"{where}: {source!r} is already translated to {table[key]!r}"
                    + ("" if self.case_sensitive else " (matching ignores case)")
                )
            table[key] = target
        self._table = table
        return self

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        changed = False
        for element in record.elements(self.field):
            value = _value(element)
            target = self._table.get(_match_key(value, self.case_sensitive))
            if target is not None and target != value:
                _write(record, element, target)
                changed = True
        return changed


def _retagged(element: etree._Element, record: MetadataRecord, field: str) -> bool:
    """Whether renaming `element` to `field` would change it."""
    match = FIELD_SYNTAX.fullmatch(field)
    assert match is not None
    prefix, name, qualifier = match.groups()
    tag = f"{{{record.namespaces.get(prefix, '')}}}{name}"
    return element.tag != tag or element.get("type") != qualifier


class RenameFieldRule(FieldTransformer):
    """Make every occurrence of `field` one of `to`, in place (reference: FieldNameTranslate,
    which moves them to the end). A qualifier becomes the `type` attribute; a `to` without one
    drops it."""

    type: Literal["rename_field"]
    to: str

    @field_validator("to")
    @classmethod
    def _to_is_addressable(cls, value: str, info: ValidationInfo) -> str:
        return writable_field(value, info)

    @model_validator(mode="after")
    def _not_to_itself(self) -> RenameFieldRule:
        if self.to == self.field:
            raise ValueError(f"renames {self.field!r} to itself")
        return self

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        changed = False
        for element in record.elements(self.field):
            if _retagged(element, record, self.to):
                record.rename_element(element, self.to)
                changed = True
        return changed


class ConditionalRenameFieldRule(RenameFieldRule):
    """Rename `field` to `to` when `condition` holds. The reference's conditional rename selects
    the nodes by XPath; here the condition is a field expression over the record."""

    type: Literal["conditional_rename_field"]
    condition: str


class RenameFieldsRule(Transformer):
    """Rename many fields at once from the table `renames` (reference: FieldNameBulkTranslate).
    Occurrences are picked before any is renamed, so `a -> b, b -> a` swaps and chains do not
    cascade; an occurrence two sources select is renamed by the first."""

    type: Literal["rename_fields"]
    renames: dict[str, str] = Field(min_length=1)

    @field_validator("renames")
    @classmethod
    def _fields_are_addressable(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for source, target in value.items():
            for name, check in ((source, addressable_field), (target, writable_field)):
                try:
                    check(name, info)
                except ValueError as exc:
                    raise ValueError(f"renames[{source!r}]: {exc}") from None
        return value

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        picked: dict[etree._Element, str] = {}
        for source, target in self.renames.items():
            for element in record.elements(source):
                picked.setdefault(element, target)
        changed = False
        for element, target in picked.items():
            if _retagged(element, record, target):
                record.rename_element(element, target)
                changed = True
        return changed


class RegexReplaceRule(FieldTransformer):
    """Replace what `pattern` finds in each value (`count` = 0: every match; the reference
    replaces the first). `replacement` uses Python's group references (`\\1`, `\\g<name>`), not
    Java's `$1`. With `target_field`, results of matching values are added there instead (not
    twice), and `remove_source` drops the matched occurrences. Values longer than
    validation.MAX_MATCH_CHARS are left alone."""

    type: Literal["regex_replace"]
    pattern: str
    replacement: str
    case_sensitive: bool = True
    count: int = Field(default=0, ge=0)
    target_field: str | None = None
    remove_source: bool = False
    _compiled: re.Pattern[str] = PrivateAttr()

    @field_validator("target_field")
    @classmethod
    def _target_is_addressable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else writable_field(value, info)

    @model_validator(mode="after")
    def _compile(self) -> RegexReplaceRule:
        self._compiled = compile_guarded(self.pattern, ignore_case=not self.case_sensitive)
        _checked_replacement(self._compiled, self.replacement)
        if self.remove_source and self.target_field is None:
            raise ValueError("'remove_source' needs a 'target_field'")
        return self

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        changed = False
        for element in record.elements(self.field):
            value = _value(element)
            if len(value) > MAX_MATCH_CHARS:
                continue
            result, matches = self._compiled.subn(self.replacement, value, count=self.count)
            if not matches:
                continue
            if self.target_field is None:
                if result != value:
                    _write(record, element, result)
                    changed = True
                continue
            if normalise_space(result) not in record.values(self.target_field):
                _add(record, self.target_field, result)
                changed = True
            if self.remove_source:
                record.remove_element(element)
                changed = True
        return changed


def _identifier_problem(identifier: str) -> str | None:
    if not identifier:
        return "the rewritten identifier is empty"
    if len(identifier) > MAX_IDENTIFIER_CHARS:
        return f"the rewritten identifier is longer than {MAX_IDENTIFIER_CHARS} characters"
    if any(char.isspace() for char in identifier) or _xml_problem(identifier):
        return f"the rewritten identifier {identifier[:80]!r} holds spaces or control characters"
    return None


class RewriteIdentifierRule(Transformer):
    """Rewrite the record's OAI identifier (`record_identifier`) and/or the values of `field`
    with `pattern` -> `replacement`, every match (reference: IdentifierRegexRule, which
    rewrites the record identifier only)."""

    type: Literal["rewrite_identifier"]
    pattern: str
    replacement: str
    record_identifier: bool = True
    field: str | None = None
    _compiled: re.Pattern[str] = PrivateAttr()

    @field_validator("field")
    @classmethod
    def _field_is_addressable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else addressable_field(value, info)

    @model_validator(mode="after")
    def _compile(self) -> RewriteIdentifierRule:
        self._compiled = compile_guarded(self.pattern)
        _checked_replacement(self._compiled, self.replacement)
        if not self.record_identifier and self.field is None:
            raise ValueError("rewrites nothing: set 'record_identifier' or give a 'field'")
        return self

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        changed = False
        if self.record_identifier and len(record.identifier) <= MAX_MATCH_CHARS:
            rewritten = self._compiled.sub(self.replacement, record.identifier)
            if rewritten != record.identifier:
                problem = _identifier_problem(rewritten)
                if problem is not None:
                    raise _CannotApply(problem)
                record.identifier = rewritten
                changed = True
        if self.field is not None:
            for element in record.elements(self.field):
                value = _value(element)
                if len(value) > MAX_MATCH_CHARS:
                    continue
                rewritten = self._compiled.sub(self.replacement, value)
                if rewritten != value:
                    _write(record, element, rewritten)
                    changed = True
        return changed


class RemoveDuplicatesRule(FieldTransformer):
    """Keep the first occurrence of each value (compared in NFC, optionally ignoring case)."""

    type: Literal["remove_duplicates"]
    case_sensitive: bool = True

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        seen: set[str] = set()
        changed = False
        for element in record.elements(self.field):
            key = _match_key(_value(element), self.case_sensitive)
            if key in seen:
                record.remove_element(element)
                changed = True
            else:
                seen.add(key)
        return changed


class RemoveEmptyRule(FieldTransformer):
    """Remove occurrences with no text (whitespace only counts as none)."""

    type: Literal["remove_empty"]

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        empty = [element for element in record.elements(self.field) if not _value(element)]
        for element in empty:
            record.remove_element(element)
        return bool(empty)


class RemoveBlacklistedRule(FieldTransformer):
    """Remove occurrences whose value is listed, inline (`values`) or in a file of one value per
    line (`file`, confined to the rules folder)."""

    type: Literal["remove_blacklisted"]
    values: list[str] | None = None
    file: str | None = None
    case_sensitive: bool = True
    _listed: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("file")
    @classmethod
    def _file_inside_rules_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _confined_file(value, info)

    @model_validator(mode="after")
    def _build_list(self) -> RemoveBlacklistedRule:
        if (self.values is None) == (self.file is None):
            raise ValueError("give exactly one of 'values' (a list) or 'file'")
        terms = _read_lines(self.file) if self.file is not None else list(self.values or [])
        self._listed = frozenset(
            _match_key(normalise_space(term), self.case_sensitive) for term in terms if term.strip()
        )
        return self

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        listed = [
            element
            for element in record.elements(self.field)
            if _match_key(_value(element), self.case_sensitive) in self._listed
        ]
        for element in listed:
            record.remove_element(element)
        return bool(listed)


class KeepFirstRule(FieldTransformer):
    """Remove every occurrence of `field` but the first (reference: RemoveAllButFirstOccr)."""

    type: Literal["keep_first"]

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        rest = record.elements(self.field)[1:]
        for element in rest:
            record.remove_element(element)
        return bool(rest)


class AddRepositoryNameRule(FieldTransformer):
    """Add `prefix` + the context's repository name to `field` (reference: AddRepoNameRule, same
    default prefix; its default field is the XOAI `dc.source.none`). With `replace`, values of
    `field` starting with `prefix` (all of them if it is empty) are removed first."""

    type: Literal["add_repository_name"]
    field: str = "dc.source"
    prefix: str = "reponame:"
    replace: bool = False

    @field_validator("field")
    @classmethod
    def _field_is_writable(cls, value: str, info: ValidationInfo) -> str:
        return writable_field(value, info)

    @field_validator("prefix")
    @classmethod
    def _prefix_is_xml(cls, value: str) -> str:
        return _checked_literal(value)

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        name = normalise_space(run.context.repository_name)
        if not name:
            raise _CannotApply("the transform context has no repository name")
        value = self.prefix + name
        before = record.values(self.field)
        if self.replace:
            for element in record.elements(self.field):
                if _value(element).startswith(self.prefix) and _value(element) != value:
                    record.remove_element(element)
        if value not in record.values(self.field):
            _add(record, self.field, value)
        return record.values(self.field) != before


#: provenance item -> how it is read from the run
_PROVENANCE: dict[str, Callable[[_Run], str]] = {
    "network_field": lambda run: run.context.network_acronym,
    "network_name_field": lambda run: run.context.network_name,
    "base_url_field": lambda run: run.context.base_url,
    "identifier_field": lambda run: run.original_identifier,
    "harvested_at_field": lambda run: run.context.harvested_at_text(),
    "metadata_prefix_field": lambda run: run.context.metadata_prefix,
}


class AddProvenanceRule(Transformer):
    """Record where the record came from: each `*_field` names the field that receives that item
    (the network's acronym and name, the base URL, the identifier as harvested, the harvest time,
    the metadata prefix); items without a field are not written, empty items are skipped.

    The reference writes fixed `repository:*` fields, clearing some first, and takes the harvest
    date from the record's datestamp; here fields are chosen, the time is the harvest's, values
    already present are not added twice, and `replace` clears the chosen fields first (so give
    it dedicated, qualified fields).
    """

    type: Literal["add_provenance"]
    network_field: str | None = None
    network_name_field: str | None = None
    base_url_field: str | None = None
    identifier_field: str | None = None
    harvested_at_field: str | None = None
    metadata_prefix_field: str | None = None
    replace: bool = False

    @field_validator(*_PROVENANCE)
    @classmethod
    def _fields_are_addressable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else writable_field(value, info)

    @model_validator(mode="after")
    def _writes_something(self) -> AddProvenanceRule:
        if not self.targets():
            raise ValueError(f"give at least one of {', '.join(_PROVENANCE)}")
        return self

    def targets(self) -> list[tuple[str, str]]:
        """(item, field) for each item written, in declaration order."""
        return [
            (item, target) for item in _PROVENANCE if (target := getattr(self, item)) is not None
        ]

    def change(self, record: MetadataRecord, run: _Run) -> bool:
        targets = self.targets()
        fields = list(dict.fromkeys(target for _, target in targets))
        before = [record.values(target) for target in fields]
        if self.replace:
            for target in fields:
                for element in record.elements(target):
                    record.remove_element(element)
        for item, target in targets:
            value = normalise_space(str(_PROVENANCE[item](run)))
            if value and value not in record.values(target):
                _add(record, target, value)
        return [record.values(target) for target in fields] != before


AnyTransformer = Annotated[
    AddFieldRule
    | ConditionalAddFieldRule
    | NormalizeRule
    | TranslateValuesRule
    | RenameFieldRule
    | ConditionalRenameFieldRule
    | RenameFieldsRule
    | RegexReplaceRule
    | RewriteIdentifierRule
    | RemoveDuplicatesRule
    | RemoveEmptyRule
    | RemoveBlacklistedRule
    | KeepFirstRule
    | AddRepositoryNameRule
    | AddProvenanceRule,
    Field(discriminator="type"),
]


class TransformerSet(RuleFile):
    """A named list of transformer rules; load with `load`, `from_toml`, `from_json` or
    `from_dict`. Rules run in the order given."""

    error: ClassVar[type[RuleFileError]] = TransformerSetError

    rules: list[AnyTransformer]


def apply(
    record: MetadataRecord, transformers: TransformerSet, context: TransformContext
) -> TransformOutcome:
    """Run every rule, in order, on `record` (changed in place)."""
    if transformers.namespaces:
        record.use_namespaces(transformers.namespaces)
    run = _Run(context=context, original_identifier=record.identifier)
    changed_by: list[str] = []
    for rule in transformers.rules:
        try:
            if rule.applies_to(record) and rule.change(record, run):
                changed_by.append(rule.id)
        except _CannotApply as exc:
            raise TransformFailed(run.original_identifier, rule.id, exc.problem) from None
        except ValueError as exc:  # lxml refusing a name or text the checks above let through
            raise TransformFailed(run.original_identifier, rule.id, str(exc)) from exc
    return TransformOutcome(
        identifier=record.identifier,
        original_identifier=run.original_identifier,
        changed_by=tuple(changed_by),
    )


# --- snapshot statistics ----------------------------------------------------------------------


class TransformRuleStats(BaseModel):
    type: str = ""
    description: str = ""
    #: records the rule changed / failed on
    changed: int = 0
    failed: int = 0


class TransformStats(BaseModel):
    """Counts over a snapshot's transformations: records seen, changed, failed, identifiers
    rewritten, and per rule how many records it changed."""

    transformers: str = ""
    total: int = 0
    transformed: int = 0
    failed: int = 0
    identifiers_rewritten: int = 0
    rules: dict[str, TransformRuleStats] = Field(default_factory=dict)

    @classmethod
    def for_transformers(cls, transformers: TransformerSet) -> TransformStats:
        return cls(
            transformers=transformers.name,
            rules={
                rule.id: TransformRuleStats(type=rule.type, description=rule.description)
                for rule in transformers.rules
            },
        )

    def _rule(self, rule_id: str) -> TransformRuleStats:
        return self.rules.setdefault(rule_id, TransformRuleStats())

    def add(self, outcome: TransformOutcome) -> None:
        self.total += 1
        if outcome.changed:
            self.transformed += 1
        if outcome.identifier_rewritten:
            self.identifiers_rewritten += 1
        for rule_id in outcome.changed_by:
            self._rule(rule_id).changed += 1

    def add_failure(self, error: TransformFailed) -> None:
        self.total += 1
        self.failed += 1
        self._rule(error.rule_id).failed += 1

    def merge(self, other: TransformStats) -> None:
        """Fold in stats counted elsewhere (another worker's share of the snapshot)."""
        self.total += other.total
        self.transformed += other.transformed
        self.failed += other.failed
        self.identifiers_rewritten += other.identifiers_rewritten
        for rule_id, theirs in other.rules.items():
            ours = self.rules.setdefault(
                rule_id, theirs.model_copy(update={"changed": 0, "failed": 0})
            )
            ours.changed += theirs.changed
            ours.failed += theirs.failed

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> TransformStats:
        return cls.model_validate_json(text)


__all__ = [
    "MAX_IDENTIFIER_CHARS",
    "MAX_LIST_FILE_BYTES",
    "MAX_VALUE_CHARS",
    "AddFieldRule",
    "AddProvenanceRule",
    "AddRepositoryNameRule",
    "AnyTransformer",
    "ConditionalAddFieldRule",
    "ConditionalRenameFieldRule",
    "KeepFirstRule",
    "NormalizeRule",
    "RegexReplaceRule",
    "RemoveBlacklistedRule",
    "RemoveDuplicatesRule",
    "RemoveEmptyRule",
    "RenameFieldRule",
    "RenameFieldsRule",
    "RewriteIdentifierRule",
    "TransformContext",
    "TransformFailed",
    "TransformOutcome",
    "TransformRuleStats",
    "TransformStats",
    "Transformer",
    "TransformerSet",
    "TransformerSetError",
    "TranslateValuesRule",
    "apply",
]
