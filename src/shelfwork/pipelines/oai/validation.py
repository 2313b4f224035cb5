"""Rule sets that decide whether a harvested record is valid, and the counts a snapshot keeps.

The model follows the reference platform's: every rule looks at the occurrences of one field (or,
for record-level rules, at one derived occurrence), judges each occurrence, and its quantifier turns
the valid-occurrence count into the rule's verdict. Only mandatory rules decide the record's
validity; the others are diagnostics. Rule sets are TOML or JSON, checked completely on load so a
mistake is reported with the rule's position and id before any record is read.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urljoin, urlsplit

import httpx
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

from ...connectors import tls_context
from ...errors import ConfigError
from ...outbound import PUBLIC_ONLY, AddressPolicy, AddressRefused, request_deadline
from .record import DEFAULT_NAMESPACES, FIELD_SYNTAX, MetadataRecord
from .rulefile import (
    RuleFile,
    RuleFileError,
    addressable_field,
    confined_file,
    rules_context,
)

#: longest regular expression a rule set may hold (a guard on compile cost and backtracking)
MAX_PATTERN_CHARS = 500
#: longer values fail regex checks without being matched, so one huge field cannot stall a run
MAX_MATCH_CHARS = 10_000


class RuleSetError(RuleFileError):
    """A rule set is wrong; each problem names the rule (position and id) and the key."""

    kind = "rule set"


class ExpressionError(ConfigError):
    """A field expression does not parse; `position` is the 0-based offset of the problem."""

    def __init__(self, expression: str, position: int, problem: str) -> None:
        self.expression = expression
        self.position = position
        self.problem = problem
        super().__init__(f"{problem} at position {position} in {expression!r}")


# --- guarded regular expressions ------------------------------------------------------------


def _nested_repeat_at(pattern: str) -> int | None:
    """Offset of a group that repeats an unbounded repeat, e.g. `(a+)+`; such patterns can
    backtrack exponentially and Python's `re` has no time limit, so they are refused on load."""
    holds_repeat: list[bool] = []
    in_class = False
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            i += 1
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1
            continue
        elif char == "(":
            holds_repeat.append(False)
        elif char == ")" and holds_repeat:
            inner = holds_repeat.pop()
            if inner and pattern[i + 1 : i + 2] in ("+", "*", "{"):
                return i
            if holds_repeat:
                holds_repeat[-1] = holds_repeat[-1] or inner
        elif (char in "+*" or re.match(r"\{\d*,\}", pattern[i:])) and holds_repeat:
            holds_repeat[-1] = True
        i += 1
    return None


def compile_guarded(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile a rule's pattern, refusing long ones and nested unbounded repeats."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"pattern is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are allowed"
        )
    nested = _nested_repeat_at(pattern)
    if nested is not None:
        raise ValueError(
            f"pattern repeats a repeated group at offset {nested} (like '(a+)+'), "
            "which can backtrack for minutes; rewrite it without the nesting"
        )
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None


def _full_match(pattern: re.Pattern[str], value: str) -> bool:
    return len(value) <= MAX_MATCH_CHARS and pattern.fullmatch(value) is not None


# --- field expressions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """`field=='value'` (an occurrence equals it) or `field=%'regex'` (one fully matches).

    The rule's quantifier counts the matching occurrences of each term, as the reference does
    (lareferencia-core-lib FieldExpressionEvaluator.toValue): with the default ONE_OR_MORE a term
    holds when some occurrence matches, with ALL when every one does (and when there is none),
    with ONE_ONLY when exactly one does, with ZERO_ONLY when none does; ZERO_OR_MORE always holds.
    (The reference builds its evaluator before the rule's quantifier is set, so its deployments
    may judge every term as ONE_OR_MORE; its own FieldExpressionValidatorRuleTest applies the
    rule's quantifier, which is what is followed here.)
    """

    field: str
    operator: Literal["==", "=%"]
    value: str
    pattern: re.Pattern[str] | None = None

    def holds(self, record: MetadataRecord, quantifier: Quantifier | None = None) -> bool:
        values = record.values(self.field)
        if self.pattern is None:
            matching = sum(value == self.value for value in values)
        else:
            pattern = self.pattern
            matching = sum(_full_match(pattern, value) for value in values)
        return (quantifier or Quantifier.ONE_OR_MORE).term_holds(matching, len(values))


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expression

    def holds(self, record: MetadataRecord, quantifier: Quantifier | None = None) -> bool:
        return not self.operand.holds(record, quantifier)


@dataclass(frozen=True, slots=True)
class AllOf:
    operands: tuple[Expression, ...]

    def holds(self, record: MetadataRecord, quantifier: Quantifier | None = None) -> bool:
        return all(operand.holds(record, quantifier) for operand in self.operands)


@dataclass(frozen=True, slots=True)
class AnyOf:
    operands: tuple[Expression, ...]

    def holds(self, record: MetadataRecord, quantifier: Quantifier | None = None) -> bool:
        return any(operand.holds(record, quantifier) for operand in self.operands)


Expression = Comparison | Not | AllOf | AnyOf

_KEYWORDS = {"AND", "OR", "NOT"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(", ")", "==", "=%", "string", "word", "keyword", "end"
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, size = 0, len(text)
    while i < size:
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token(char, char, i))
            i += 1
        elif text.startswith(("==", "=%"), i):
            tokens.append(_Token(text[i : i + 2], text[i : i + 2], i))
            i += 2
        elif char in "'\"":
            start, i, chars = i, i + 1, []
            while True:
                if i >= size:
                    raise ExpressionError(text, start, "unterminated quoted value")
                if text[i] == "\\" and i + 1 < size:
                    chars.append(text[i + 1])
                    i += 2
                elif text[i] == char:
                    i += 1
                    break
                else:
                    chars.append(text[i])
                    i += 1
            tokens.append(_Token("string", "".join(chars), start))
        elif char.isalpha() or char == "_":
            match = re.compile(r"[\w-]+(?:\.[\w-]+)*(?:\.\*)?").match(text, i)
            assert match is not None
            word = match.group()
            kind = "keyword" if word.upper() in _KEYWORDS else "word"
            tokens.append(_Token(kind, word.upper() if kind == "keyword" else word, i))
            i = match.end()
        else:
            raise ExpressionError(text, i, f"unexpected character {char!r}")
    tokens.append(_Token("end", "", size))
    return tokens


class _ExpressionParser:
    """Recursive descent: or := and (OR and)*; and := not (AND not)*; not := NOT not | primary;
    primary := '(' or ')' | field ('==' | '=%') quoted-value."""

    def __init__(self, text: str, known_prefixes: Iterable[str] | None) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0
        self.known_prefixes = set(known_prefixes) if known_prefixes is not None else None

    def parse(self) -> Expression:
        expression = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._error(token, f"unexpected {token.text!r}; expected AND, OR or the end")
        return expression

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _is_keyword(self, word: str) -> bool:
        token = self._peek()
        return token.kind == "keyword" and token.text == word

    def _error(self, token: _Token, problem: str) -> ExpressionError:
        return ExpressionError(self.text, token.position, problem)

    def _or(self) -> Expression:
        operands = [self._and()]
        while self._is_keyword("OR"):
            self._take()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else AnyOf(tuple(operands))

    def _and(self) -> Expression:
        operands = [self._not()]
        while self._is_keyword("AND"):
            self._take()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else AllOf(tuple(operands))

    def _not(self) -> Expression:
        if self._is_keyword("NOT"):
            self._take()
            return Not(self._not())
        return self._primary()

    def _primary(self) -> Expression:
        token = self._take()
        if token.kind == "(":
            inner = self._or()
            closing = self._take()
            if closing.kind != ")":
                raise self._error(closing, f"expected ')' to close the '(' at {token.position}")
            return inner
        if token.kind != "word":
            found = "the end" if token.kind == "end" else repr(token.text)
            raise self._error(token, f"expected a field or '(', found {found}")
        self._check_field(token)
        operator = self._take()
        if operator.kind not in ("==", "=%"):
            raise self._error(operator, f"expected '==' or '=%' after field {token.text!r}")
        value = self._take()
        if value.kind != "string":
            raise self._error(value, "expected a quoted value")
        if operator.kind == "==":
            return Comparison(token.text, "==", value.text)
        try:
            pattern = compile_guarded(value.text)
        except ValueError as exc:
            raise self._error(value, str(exc)) from None
        return Comparison(token.text, "=%", value.text, pattern)

    def _check_field(self, token: _Token) -> None:
        match = FIELD_SYNTAX.fullmatch(token.text)
        if match is None:
            raise self._error(
                token, f"field {token.text!r} is not of the form prefix.element[.qualifier]"
            )
        if self.known_prefixes is not None and match.group(1) not in self.known_prefixes:
            raise self._error(token, f"unknown namespace prefix {match.group(1)!r}")


def parse_expression(text: str, known_prefixes: Iterable[str] | None = None) -> Expression:
    """Parse a field expression; `known_prefixes`, when given, limits the fields' prefixes."""
    return _ExpressionParser(text, known_prefixes).parse()


# --- URL checks -----------------------------------------------------------------------------

#: one HEAD request: the URL in, (HTTP status, Location header) out; status 0 = no answer
HeadCall = Callable[[str], tuple[int, str | None]]
#: `allow_private=True`: every address (tests of the checker itself)
EVERYWHERE = AddressPolicy.allowing(["0.0.0.0/0", "::/0"])

_REDIRECTS = {301, 302, 303, 307, 308}


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


class UrlChecker:
    """Answers "does this URL exist?" (HEAD 200, after at most one redirect), each URL once.

    Thread-safe: concurrent askers of one URL share a single request, and at most
    `max_concurrency` requests are in flight whoever asks. The cache lives as long as the checker,
    which is meant to be one validation run.
    """

    def __init__(
        self,
        *,
        head: HeadCall | None = None,
        max_concurrency: int = 8,
        timeout: float = 10.0,
        allow_private: bool = False,
        addresses: AddressPolicy = PUBLIC_ONLY,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        #: where a check may connect (outbound.py); elsewhere a URL counts as "does not exist":
        #: a harvested record must not make the server probe its own network
        self.addresses = EVERYWHERE if allow_private else addresses
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self._head = head or self._httpx_head
        self._client: httpx.Client | None = None
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self._answers: dict[str, Future[bool]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.requests = 0
        self.cache_hits = 0

    def _httpx_head(self, url: str) -> tuple[int, str | None]:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    follow_redirects=False,
                    timeout=self.timeout,
                    transport=self.addresses.transport(tls_context()),
                )
            client = self._client
        try:
            # the whole check ends at `timeout`: a server dripping its headers a byte at a time
            # would otherwise restart each read's timeout for as long as it likes
            with request_deadline(self.timeout):
                response = client.head(url)
        except (httpx.HTTPError, httpx.InvalidURL, AddressRefused):
            return 0, None
        return response.status_code, response.headers.get("location")

    def _request(self, url: str) -> tuple[int, str | None]:
        with self._slots:
            with self._lock:
                self.requests += 1
            try:
                return self._head(url)
            except Exception:  # an injected call or transport that failed: the URL did not answer
                return 0, None

    def _resolve(self, url: str) -> bool:
        if not _is_web_url(url):
            return False
        status, location = self._request(url)
        if status in _REDIRECTS and location:
            try:
                target = urljoin(url, location)
            except ValueError:
                return False
            if not _is_web_url(target):
                return False
            status, _ = self._request(target)
        return status == 200

    def exists(self, url: str) -> bool:
        with self._lock:
            answer = self._answers.get(url)
            owner = answer is None
            if answer is None:
                answer = self._answers[url] = Future()
            else:
                self.cache_hits += 1
        if not owner:
            return answer.result()
        try:
            result = self._resolve(url)
        except BaseException as exc:
            answer.set_exception(exc)
            raise
        answer.set_result(result)
        return result

    def exist_many(self, urls: Iterable[str]) -> dict[str, bool]:
        """Check several URLs at once (bounded by `max_concurrency`); answers already known
        come from the cache without a trip through the pool."""
        unique = list(dict.fromkeys(urls))
        known: dict[str, bool] = {}
        with self._lock:
            for url in unique:
                answer = self._answers.get(url)
                if answer is not None and answer.done() and answer.exception() is None:
                    known[url] = answer.result()
                    self.cache_hits += 1
        unique = [url for url in unique if url not in known]
        if len(unique) <= 1:
            return {**known, **{url: self.exists(url) for url in unique}}
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, "url-exists")
            pool = self._pool
        futures = {url: pool.submit(self.exists, url) for url in unique}
        return {**known, **{url: future.result() for url, future in futures.items()}}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._client is not None:
            self._client.close()


# --- rules ----------------------------------------------------------------------------------


class Quantifier(StrEnum):
    """How many valid occurrences a rule needs. The decisions are the reference platform's
    (lareferencia-core-lib); each method names the one it follows."""

    ZERO_ONLY = "ZERO_ONLY"
    ONE_ONLY = "ONE_ONLY"
    ZERO_OR_MORE = "ZERO_OR_MORE"
    ONE_OR_MORE = "ONE_OR_MORE"
    ALL = "ALL"

    def decide(self, valid: int, total: int) -> bool:
        """A field rule's verdict (AbstractValidatorFieldContentRule.validate): ZERO_OR_MORE
        fails when values are present and none is valid; ALL passes when no value is invalid,
        an absent field included."""
        if self is Quantifier.ZERO_OR_MORE:
            return total == 0 or valid > 0
        return self.term_holds(valid, total)

    def term_holds(self, matching: int, total: int) -> bool:
        """A field-expression term (FieldExpressionEvaluator.toValue): ZERO_OR_MORE always
        holds there."""
        if self is Quantifier.ZERO_ONLY:
            return matching == 0
        if self is Quantifier.ONE_ONLY:
            return matching == 1
        if self is Quantifier.ZERO_OR_MORE:
            return True
        if self is Quantifier.ONE_OR_MORE:
            return matching >= 1
        return matching == total

    def count_holds(self, count: int) -> bool:
        """A node-count rule (NodeOccursConditionalValidatorRule.validate): ALL needs a node."""
        if self is Quantifier.ALL:
            return count > 0
        return self.term_holds(count, count)


@dataclass
class Checks:
    """What rules may consult besides the record: the current year and the URL checker."""

    year: int
    url_checker: UrlChecker | None = None


class Rule(BaseModel):
    """What every rule has; subclasses say how one occurrence is judged."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: whether the rule needs a `field`
    needs_field: ClassVar[bool] = True

    id: str = Field(min_length=1)
    description: str = ""
    field: str | None = None
    quantifier: Quantifier = Quantifier.ONE_OR_MORE
    mandatory: bool = True
    store_occurrences: bool = False

    @field_validator("field")
    @classmethod
    def _field_is_addressable(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else addressable_field(value, info)

    @model_validator(mode="after")
    def _has_field_if_needed(self) -> Rule:
        if self.needs_field and self.field is None:
            raise ValueError("'field' is required for this rule type")
        return self

    def occurrences(self, record: MetadataRecord, checks: Checks) -> list[tuple[str, bool]]:
        """Each occurrence the rule judged, with its judgement."""
        assert self.field is not None
        return [(value, self.accepts(value, checks)) for value in record.values(self.field)]

    def decide(self, judged: list[tuple[str, bool]]) -> bool:
        """The rule's verdict from its judged occurrences (the quantifier's, for field rules)."""
        return self.quantifier.decide(sum(ok for _, ok in judged), len(judged))

    def accepts(self, value: str, checks: Checks) -> bool:
        raise NotImplementedError


class ContentLengthRule(Rule):
    """Each value's length (characters, after whitespace normalisation) within min..max."""

    type: Literal["content_length"]
    min_length: int = Field(default=0, ge=0)
    max_length: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> ContentLengthRule:
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"max_length {self.max_length} is below min_length {self.min_length}")
        return self

    def accepts(self, value: str, checks: Checks) -> bool:
        return self.min_length <= len(value) and (
            self.max_length is None or len(value) <= self.max_length
        )


class ControlledVocabularyRule(Rule):
    """Each value one of a list, given inline (`values`) or as a file of one value per line
    (`file`, relative to the rules folder and confined to it)."""

    type: Literal["controlled_vocabulary"]
    values: list[str] | None = None
    file: str | None = None
    case_sensitive: bool = True
    _accepted: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("file")
    @classmethod
    def _file_inside_rules_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else confined_file(value, info, kind="vocabulary")

    @model_validator(mode="after")
    def _one_source(self) -> ControlledVocabularyRule:
        if (self.values is None) == (self.file is None):
            raise ValueError("give exactly one of 'values' (a list) or 'file'")
        if self.file is not None:
            try:
                lines = Path(self.file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"vocabulary file {self.file} cannot be read: {exc}") from None
            terms = [line.strip() for line in lines if line.strip()]
        else:
            terms = list(self.values or [])
        self._accepted = frozenset(
            term if self.case_sensitive else term.casefold() for term in terms
        )
        return self

    def accepts(self, value: str, checks: Checks) -> bool:
        return (value if self.case_sensitive else value.casefold()) in self._accepted


class RegexRule(Rule):
    """Each value fully matches `pattern`."""

    type: Literal["regex"]
    pattern: str
    case_sensitive: bool = True
    _compiled: re.Pattern[str] = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self) -> RegexRule:
        self._compiled = compile_guarded(self.pattern, ignore_case=not self.case_sensitive)
        return self

    def accepts(self, value: str, checks: Checks) -> bool:
        return _full_match(self._compiled, value)


class YearRangeRule(Rule):
    """A year found in each value by `pattern` (its group `year`, else its first group) lies
    within this year - `lower` .. this year + `upper`."""

    type: Literal["year_range"]
    pattern: str = r"(\d{4})"
    lower: int = Field(ge=0)
    upper: int = Field(default=0, ge=0)
    _compiled: re.Pattern[str] = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self) -> YearRangeRule:
        compiled = compile_guarded(self.pattern)
        if compiled.groups < 1:
            raise ValueError(f"pattern {self.pattern!r} must capture the year in a group")
        self._compiled = compiled
        return self

    def accepts(self, value: str, checks: Checks) -> bool:
        if len(value) > MAX_MATCH_CHARS:
            return False
        match = self._compiled.search(value)
        if match is None:
            return False
        captured = match.group("year") if "year" in self._compiled.groupindex else match.group(1)
        if captured is None or not captured.strip().isdigit():
            return False
        return checks.year - self.lower <= int(captured) <= checks.year + self.upper


class FieldExpressionRule(Rule):
    """A boolean expression over the record's fields; one occurrence: the expression's result,
    which is the verdict. The quantifier applies inside each term (see Comparison)."""

    needs_field: ClassVar[bool] = False
    type: Literal["field_expression"]
    expression: str
    _parsed: Expression = PrivateAttr()

    @field_validator("expression")
    @classmethod
    def _parses(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_expression(value, rules_context(info).get("namespaces", DEFAULT_NAMESPACES))
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _parse(self) -> FieldExpressionRule:
        self._parsed = parse_expression(self.expression)
        return self

    def occurrences(self, record: MetadataRecord, checks: Checks) -> list[tuple[str, bool]]:
        return [(self.expression, self._parsed.holds(record, self.quantifier))]

    def decide(self, judged: list[tuple[str, bool]]) -> bool:
        # FieldExpressionValidatorRule.validate: the evaluator's answer is the rule's validity
        return judged[0][1]


class XPathOccurrenceRule(Rule):
    """The nodes `xpath` selects are the occurrences, each valid: the quantifier bounds their
    count (ZERO_ONLY = none, ONE_ONLY = exactly one, ONE_OR_MORE and ALL = at least one,
    ZERO_OR_MORE = any number). A node without text (an empty element or attribute, or only
    whitespace) is no occurrence, as in the reference (NodeOccursConditionalValidatorRule reads
    MedatadaDOMHelper.getListOfTextNodes, which keeps only nodes with a text child)."""

    needs_field: ClassVar[bool] = False
    type: Literal["xpath_occurrence"]
    xpath: str

    @field_validator("xpath")
    @classmethod
    def _evaluates(cls, value: str, info: ValidationInfo) -> str:
        namespaces = rules_context(info).get("namespaces", DEFAULT_NAMESPACES)
        try:
            etree.XPath(value, namespaces=namespaces)(etree.Element("probe"))
        except etree.XPathError as exc:
            raise ValueError(f"XPath {value!r} is not usable: {exc}") from None
        return value

    def occurrences(self, record: MetadataRecord, checks: Checks) -> list[tuple[str, bool]]:
        found = record.xpath(self.xpath)
        if isinstance(found, bool):
            return [("true", True)] if found else []
        if not isinstance(found, list):
            text = _node_text(found)
            return [(text, True)] if text else []
        texts = (_node_text(node) for node in found)
        return [(text, True) for text in texts if text]

    def decide(self, judged: list[tuple[str, bool]]) -> bool:
        return self.quantifier.count_holds(len(judged))


def _node_text(node: Any) -> str:
    if isinstance(node, etree._Element):
        return " ".join("".join(node.itertext()).split())
    return " ".join(str(node).split())


class UrlExistsRule(Rule):
    """Each value is an http(s) URL that answers HEAD with 200, after at most one redirect."""

    type: Literal["url_exists"]

    def occurrences(self, record: MetadataRecord, checks: Checks) -> list[tuple[str, bool]]:
        assert self.field is not None
        values = record.values(self.field)
        if checks.url_checker is None:
            raise ConfigError(f"rule {self.id!r} checks URLs but no URL checker was given")
        answers = checks.url_checker.exist_many(values)
        return [(value, answers[value]) for value in values]


AnyRule = Annotated[
    ContentLengthRule
    | ControlledVocabularyRule
    | RegexRule
    | YearRangeRule
    | FieldExpressionRule
    | XPathOccurrenceRule
    | UrlExistsRule,
    Field(discriminator="type"),
]


class RuleSet(RuleFile):
    """A named list of rules; load with `load`, `from_toml`, `from_json` or `from_dict`."""

    error: ClassVar[type[RuleFileError]] = RuleSetError

    rules: list[AnyRule]
    _url_checker: UrlChecker | None = PrivateAttr(default=None)

    def url_checker(self) -> UrlChecker:
        """The checker URL rules use by default, created on first use and kept with the set."""
        if self._url_checker is None:
            self._url_checker = UrlChecker()
        return self._url_checker

    def needs_urls(self) -> bool:
        return any(isinstance(rule, UrlExistsRule) for rule in self.rules)


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's verdict on one record. Occurrence values are kept only when the rule says
    `store_occurrences`; the counts always."""

    rule_id: str
    valid: bool
    mandatory: bool
    valid_count: int
    invalid_count: int
    valid_occurrences: tuple[str, ...] = ()
    invalid_occurrences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordVerdict:
    identifier: str
    valid: bool
    results: tuple[RuleResult, ...]

    @property
    def failed_mandatory(self) -> list[str]:
        """The rule ids that made the record invalid (the reason a person reads)."""
        return [result.rule_id for result in self.results if result.mandatory and not result.valid]

    def result(self, rule_id: str) -> RuleResult:
        for result in self.results:
            if result.rule_id == rule_id:
                return result
        raise KeyError(rule_id)


def validate(
    record: MetadataRecord,
    ruleset: RuleSet,
    *,
    url_checker: UrlChecker | None = None,
    year: int | None = None,
    keep_occurrences: bool = False,
) -> RecordVerdict:
    """Judge `record` by every rule; it is valid when every mandatory rule is.

    `keep_occurrences` keeps every rule's values (a detailed diagnose), not only those of
    rules that ask to store them."""
    if ruleset.namespaces:
        record.use_namespaces(ruleset.namespaces)
    checks = Checks(
        year=year if year is not None else dt.datetime.now(dt.UTC).year,
        url_checker=url_checker
        if url_checker is not None
        else (ruleset.url_checker() if ruleset.needs_urls() else None),
    )
    results = []
    valid = True
    keep = keep_occurrences
    for rule in ruleset.rules:
        judged = rule.occurrences(record, checks)
        good = [value for value, ok in judged if ok]
        bad = [value for value, ok in judged if not ok]
        rule_valid = rule.decide(judged)
        if rule.mandatory and not rule_valid:
            valid = False
        results.append(
            RuleResult(
                rule_id=rule.id,
                valid=rule_valid,
                mandatory=rule.mandatory,
                valid_count=len(good),
                invalid_count=len(bad),
                valid_occurrences=tuple(good) if keep or rule.store_occurrences else (),
                invalid_occurrences=tuple(bad) if keep or rule.store_occurrences else (),
            )
        )
    return RecordVerdict(record.identifier, valid, tuple(results))


# --- snapshot statistics ----------------------------------------------------------------------


class ValueHistogram(BaseModel):
    """Counts of distinct values, at most `limit` of them; later newcomers count as `other`."""

    counts: dict[str, int] = Field(default_factory=dict)
    other: int = 0

    def add(self, value: str, limit: int, times: int = 1) -> None:
        if value in self.counts:
            self.counts[value] += times
        elif len(self.counts) < limit:
            self.counts[value] = times
        else:
            self.other += times

    def merge(self, other: ValueHistogram, limit: int) -> None:
        for value, times in other.counts.items():
            self.add(value, limit, times)
        self.other += other.other


class RuleStats(BaseModel):
    description: str = ""
    quantifier: Quantifier = Quantifier.ONE_OR_MORE
    mandatory: bool = True
    #: records for which the rule held / failed
    valid_count: int = 0
    invalid_count: int = 0
    valid_values: ValueHistogram = Field(default_factory=ValueHistogram)
    invalid_values: ValueHistogram = Field(default_factory=ValueHistogram)


class ValidationStats(BaseModel):
    """Counts over a snapshot's verdicts; with `detailed`, per-rule value histograms too
    (from rules that store occurrences)."""

    ruleset: str = ""
    detailed: bool = False
    max_distinct: int = Field(default=100, ge=1)
    total: int = 0
    valid: int = 0
    invalid: int = 0
    rules: dict[str, RuleStats] = Field(default_factory=dict)

    @classmethod
    def for_ruleset(
        cls, ruleset: RuleSet, *, detailed: bool = False, max_distinct: int = 100
    ) -> ValidationStats:
        return cls(
            ruleset=ruleset.name,
            detailed=detailed,
            max_distinct=max_distinct,
            rules={
                rule.id: RuleStats(
                    description=rule.description,
                    quantifier=rule.quantifier,
                    mandatory=rule.mandatory,
                )
                for rule in ruleset.rules
            },
        )

    def add(self, verdict: RecordVerdict) -> None:
        self.total += 1
        if verdict.valid:
            self.valid += 1
        else:
            self.invalid += 1
        for result in verdict.results:
            stats = self.rules.get(result.rule_id)
            if stats is None:
                stats = self.rules[result.rule_id] = RuleStats(mandatory=result.mandatory)
            if result.valid:
                stats.valid_count += 1
            else:
                stats.invalid_count += 1
            if self.detailed:
                for value in result.valid_occurrences:
                    stats.valid_values.add(value, self.max_distinct)
                for value in result.invalid_occurrences:
                    stats.invalid_values.add(value, self.max_distinct)

    def merge(self, other: ValidationStats) -> None:
        """Fold in stats counted elsewhere (another worker's share of the snapshot)."""
        self.total += other.total
        self.valid += other.valid
        self.invalid += other.invalid
        for rule_id, theirs in other.rules.items():
            ours = self.rules.setdefault(
                rule_id,
                theirs.model_copy(
                    deep=True,
                    update={
                        "valid_count": 0,
                        "invalid_count": 0,
                        "valid_values": ValueHistogram(),
                        "invalid_values": ValueHistogram(),
                    },
                ),
            )
            ours.valid_count += theirs.valid_count
            ours.invalid_count += theirs.invalid_count
            ours.valid_values.merge(theirs.valid_values, self.max_distinct)
            ours.invalid_values.merge(theirs.invalid_values, self.max_distinct)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ValidationStats:
        return cls.model_validate_json(text)


__all__ = [
    "MAX_PATTERN_CHARS",
    "AnyRule",
    "Checks",
    "ContentLengthRule",
    "ControlledVocabularyRule",
    "ExpressionError",
    "FieldExpressionRule",
    "Quantifier",
    "RecordVerdict",
    "RegexRule",
    "Rule",
    "RuleResult",
    "RuleSet",
    "RuleSetError",
    "RuleStats",
    "UrlChecker",
    "UrlExistsRule",
    "ValidationStats",
    "ValueHistogram",
    "XPathOccurrenceRule",
    "YearRangeRule",
    "compile_guarded",
    "parse_expression",
    "validate",
]
