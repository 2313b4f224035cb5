"""What rule sets and transformer sets share: a named list of rules read from TOML or JSON,
checked on load, with every problem naming the rule (position and id) and the key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo

from ...errors import ConfigError
from .record import DEFAULT_NAMESPACES, FIELD_SYNTAX


class RuleFileError(ConfigError):
    """A rule file is wrong; `problems` lists each, naming the rule and the key."""

    kind = "rule file"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n  - ".join(problems)
        super().__init__(f"{self.kind} {source}: {len(problems)} problem(s):\n  - {listed}")


def rules_context(info: ValidationInfo) -> dict[str, Any]:
    """What a rule's validators may read while its file loads: rules_dir and namespaces."""
    return info.context if isinstance(info.context, dict) else {}


def addressable_field(value: str, info: ValidationInfo) -> str:
    """A rule's field name: `prefix.element[.qualifier]` with a prefix the file knows."""
    match = FIELD_SYNTAX.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not of the form prefix.element[.qualifier]")
    known = rules_context(info).get("namespaces", DEFAULT_NAMESPACES)
    if match.group(1) not in known:
        raise ValueError(
            f"unknown namespace prefix {match.group(1)!r} in {value!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return value


def confined_file(
    value: str, info: ValidationInfo, *, kind: str, max_bytes: int | None = None
) -> str:
    """The absolute path of a file a rule names (a vocabulary, a list), which must lie inside
    the rules folder."""
    rules_dir = rules_context(info).get("rules_dir")
    if rules_dir is None:
        raise ValueError(f"a {kind} file needs a rules folder (load the set from a file)")
    folder = Path(rules_dir).resolve()
    path = (folder / value).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(f"{value!r} lies outside the rules folder {folder}")
    if not path.is_file():
        raise ValueError(f"{kind} file {path} does not exist")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ValueError(f"{kind} file {path} is larger than {max_bytes} bytes")
    return str(path)


class RuleFile(BaseModel):
    """A rule file; subclasses give `rules` its type and `error` its exception."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error: ClassVar[type[RuleFileError]] = RuleFileError

    name: str = Field(min_length=1)
    description: str = ""
    #: prefixes beyond `record.DEFAULT_NAMESPACES` the rules' fields and XPaths use
    namespaces: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, *, rules_dir: str | Path | None = None) -> Self:
        """A .toml or .json file; files the rules name resolve in `rules_dir`, by default the
        file's folder."""
        path = Path(path)
        folder = Path(rules_dir) if rules_dir is not None else path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise cls.error(str(path), [f"cannot be read: {exc}"]) from None
        if path.suffix.lower() == ".toml":
            return cls.from_toml(text, rules_dir=folder, source=str(path))
        if path.suffix.lower() == ".json":
            return cls.from_json(text, rules_dir=folder, source=str(path))
        raise cls.error(str(path), ["the file name must end in .toml or .json"])

    @classmethod
    def from_toml(
        cls, text: str, *, rules_dir: str | Path | None = None, source: str = "<toml>"
    ) -> Self:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise cls.error(source, [f"not valid TOML: {exc}"]) from None
        return cls.from_dict(data, rules_dir=rules_dir, source=source)

    @classmethod
    def from_json(
        cls, text: str, *, rules_dir: str | Path | None = None, source: str = "<json>"
    ) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise cls.error(source, [f"not valid JSON: {exc}"]) from None
        return cls.from_dict(data, rules_dir=rules_dir, source=source)

    @classmethod
    def from_dict(
        cls, data: Any, *, rules_dir: str | Path | None = None, source: str = "<dict>"
    ) -> Self:
        if not isinstance(data, dict):
            raise cls.error(source, ["the top level must be a table/object"])
        extra = data.get("namespaces")
        namespaces = {**DEFAULT_NAMESPACES, **(extra if isinstance(extra, dict) else {})}
        context = {"rules_dir": rules_dir, "namespaces": namespaces}
        try:
            loaded = cls.model_validate(data, context=context)
        except ValidationError as exc:
            raise cls.error(source, problems_of(exc, data)) from None
        duplicates = duplicate_ids(loaded.rules)  # type: ignore[attr-defined]
        if duplicates:
            raise cls.error(source, duplicates)
        return loaded

    def namespace_table(self) -> dict[str, str]:
        return {**DEFAULT_NAMESPACES, **self.namespaces}


def problems_of(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Each pydantic error as 'rules[i] (id ...): key ...: reason'."""
    raw_rules = data.get("rules") if isinstance(data.get("rules"), list) else []
    problems = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            ctx = error.get("ctx") or {}
            message = f"unknown rule type {ctx.get('tag')!r}; known: {ctx.get('expected_tags')}"
        elif error["type"] == "union_tag_not_found":
            message = "'type' is missing"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            position = loc[1]
            raw = raw_rules[position] if position < len(raw_rules) else None
            rule_id = raw.get("id") if isinstance(raw, dict) else None
            keys = loc[2:]
            if keys and isinstance(raw, dict) and keys[0] == raw.get("type"):
                keys = keys[1:]  # the discriminator's tag, not a key
            where = f"rules[{position}] (id {rule_id!r})"
            key = ".".join(str(part) for part in keys)
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{where}: key {key!r}: {message}" if key else f"{where}: {message}")
        else:
            key = ".".join(str(part) for part in loc)
            problems.append(f"key {key!r}: {message}" if key else message)
    return problems


def duplicate_ids(rules: list[Any]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for position, rule in enumerate(rules):
        if rule.id in first:
            problems.append(
                f"rules[{position}] (id {rule.id!r}): duplicate id, "
                f"already used by rules[{first[rule.id]}]"
            )
        else:
            first[rule.id] = position
    return problems
