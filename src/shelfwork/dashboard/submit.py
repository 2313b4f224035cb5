"""The submit form: what each pipeline takes (from its params schema), and checking what was typed
before the engine sees it, so every mistake comes back on the form in the reader's language."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Form

from ..api.schemas import MAX_PRIORITY
from ..engine import Engine
from ..pipeline import Pipeline
from .i18n import Translator

MAX_PARAMS = 64 * 1024
#: a form field as typed (checked here, so a bad value comes back on the form, not as JSON)
FormText = Annotated[str, Form()]
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class SubmitForm:
    """What was typed into the submit form, kept when it comes back with errors."""

    pipeline: str = ""
    params: str = ""
    context: str = ""
    lane: str = ""
    priority: str = "0"
    errors: list[str] = field(default_factory=list)
    field_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineChoice:
    """A pipeline as the submit form offers it: its parameters and a starting JSON object."""

    name: str
    description: str
    fields: list[dict[str, str]]
    example: str


def pipeline_choices(engine: Engine) -> list[PipelineChoice]:
    return [pipeline_choice(p) for p in engine.registry]


def pipeline_choice(pipeline: Pipeline) -> PipelineChoice:
    schema = pipeline.params.model_json_schema()
    required = set(schema.get("required", []))
    fields = []
    example: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        kind = _kind(prop)
        if "default" in prop:
            example[name] = prop["default"]
        elif name in required:
            example[name] = {"integer": 0, "number": 0, "boolean": False}.get(kind, "")
        fields.append(
            {
                "name": name,
                "required": "yes" if name in required and "default" not in prop else "",
                "type": kind,
                "default": json.dumps(prop["default"], ensure_ascii=False)
                if "default" in prop
                else "",
                "description": str(prop.get("description", "")),
            }
        )
    return PipelineChoice(
        pipeline.name,
        pipeline.description,
        fields,
        json.dumps(example, ensure_ascii=False) if example else "{}",
    )


def _kind(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"], ensure_ascii=False)
    if "anyOf" in prop:
        return " | ".join(_kind(p) for p in prop["anyOf"])
    return str(prop.get("type", "any"))


def read_submit_form(form: SubmitForm, engine: Engine, t: Translator) -> dict[str, Any]:
    """Check the form's fields; errors go on the form, good values come back for submit()."""
    if form.pipeline not in engine.registry:
        form.errors.append(t("submit.error.pipeline"))
    params: Any = {}
    text = form.params.strip()
    if len(text) > MAX_PARAMS:
        form.errors.append(t("submit.error.json", detail=f"longer than {MAX_PARAMS} characters"))
    elif text:
        try:
            params = json.loads(text)
        except ValueError as exc:
            form.errors.append(t("submit.error.json", detail=str(exc)))
        else:
            if not isinstance(params, dict):
                form.errors.append(t("submit.error.json", detail=type(params).__name__))
    for name, value, length in (
        (t("submit.context"), form.context, 300),
        (t("submit.lane"), form.lane, 100),
    ):
        if len(value) > length or CONTROL.search(value):
            form.errors.append(t("submit.error.text", field=name, length=length))
    try:
        priority = int(form.priority or "0")
        if abs(priority) > MAX_PRIORITY:
            raise ValueError(priority)
    except ValueError:
        priority = 0
        form.errors.append(t("submit.error.priority", low=-MAX_PRIORITY, high=MAX_PRIORITY))
    return {
        "params": params if isinstance(params, dict) else {},
        "context": form.context or None,
        "lane": form.lane or None,
        "priority": priority,
    }
