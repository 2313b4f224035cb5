"""/api/v1/docs: the API's reference as one HTML page, rendered here from the OpenAPI document.

FastAPI's own docs page loads Swagger UI from a CDN (a floating version, no integrity check) into
the dashboard's origin, where a session cookie lives, and shows nothing offline. This page has no
script at all, loads nothing from anywhere (its Content-Security-Policy forbids it), and says what
Swagger UI's reference view says: each operation with its parameters, body and answers, and each
schema with its fields. The machine-readable document stays at /api/v1/openapi.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

METHODS = ("get", "post", "put", "patch", "delete")
STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 1.5rem;
color:#1d1d1f}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ccd;padding-bottom:.2rem;margin-top:2.5rem}
h3{margin:1.8rem 0 .3rem;font-family:ui-monospace,monospace;font-size:1rem}
.m{display:inline-block;min-width:4.2rem;padding:0 .4rem;border-radius:3px;color:#fff;
text-align:center}.get{background:#2f6fb0}.post{background:#2a8a4a}.put{background:#a66a00}
.patch{background:#7a4ab0}.delete{background:#b03030}
table{border-collapse:collapse;width:100%;margin:.4rem 0 1rem}
th,td{border:1px solid #dde;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f8}code{font-family:ui-monospace,monospace;background:#f3f3f8;
padding:0 .2rem}nav ul{columns:2}a{color:#1f5fa8}.note{color:#555}
"""
#: no script, no frame, nothing from elsewhere: only the page's own style, named by its hash
POLICY = (
    "default-src 'none'; script-src 'none'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    + "'"
)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    page: str | None = getattr(request.app.state, "docs_page", None)
    if page is None:
        page = render(request.app.openapi(), request.app.openapi_url or "")
        request.app.state.docs_page = page  # the document does not change while the app runs
    return HTMLResponse(page, headers={"Content-Security-Policy": POLICY})


def render(spec: dict[str, Any], openapi_url: str) -> str:
    """The whole page for an OpenAPI 3 document served at `openapi_url` (a path)."""
    info = spec.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    operations = list(_operations(spec))
    tags: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for method, path, operation in operations:
        tags.setdefault((operation.get("tags") or ["other"])[0], []).append(
            (method, path, operation)
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}: API reference</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='note'>API reference. Machine-readable: <a href='{escape(openapi_url)}'>"
        "openapi.json</a>.</p>",
        _markdown(info.get("description", "")),
        "<nav><h2>Operations</h2>",
    ]
    for tag, items in tags.items():
        parts.append(f"<h4>{escape(tag)}</h4><ul>")
        for method, path, operation in items:
            parts.append(
                f"<li><a href='#op-{escape(_op_id(method, path, operation))}'>"
                f"{method.upper()} {escape(path)}</a>: {escape(operation.get('summary', ''))}</li>"
            )
        parts.append("</ul>")
    parts.append("</nav>")
    for tag, items in tags.items():
        parts.append(f"<h2>{escape(tag)}</h2>")
        parts += [_operation(method, path, op) for method, path, op in items]
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        parts.append(_schema(name, schema))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operations(spec: dict[str, Any]) -> Any:
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def _op_id(method: str, path: str, operation: dict[str, Any]) -> str:
    return str(operation.get("operationId") or f"{method}{re.sub(r'[^A-Za-z0-9]+', '_', path)}")


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    parts = [
        f"<section id='op-{escape(_op_id(method, path, operation))}'>",
        f"<h3><span class='m {method}'>{method.upper()}</span> {escape(path)}</h3>",
        f"<p><strong>{escape(operation.get('summary', ''))}</strong></p>",
        _markdown(operation.get("description", "")),
    ]
    if operation.get("security"):
        parts.append("<p class='note'>Needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>")
    parameters = operation.get("parameters") or []
    if parameters:
        parts.append(
            "<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th>"
            "<th>Description</th></tr>"
        )
        for p in parameters:
            schema = p.get("schema", {})
            parts.append(
                f"<tr><td><code>{escape(p.get('name', ''))}</code></td>"
                f"<td>{escape(p.get('in', ''))}</td><td>{_type(schema)}{_limits(schema)}</td>"
                f"<td>{'yes' if p.get('required') else 'no'}</td>"
                f"<td>{_inline(p.get('description') or schema.get('description', ''))}</td></tr>"
            )
        parts.append("</table>")
    body = operation.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            required = " (required)" if body.get("required") else ""
            parts.append(
                f"<p>Body{required}: <code>{escape(media)}</code>, "
                f"{_type(content.get('schema', {}))}</p>"
            )
    parts.append("<table><tr><th>Answer</th><th>Description</th><th>Body</th></tr>")
    for status, answer in operation.get("responses", {}).items():
        shapes = [
            f"<code>{escape(media)}</code> {_type(c.get('schema', {}))}"
            for media, c in answer.get("content", {}).items()
        ]
        parts.append(
            f"<tr><td>{escape(str(status))}</td><td>{_inline(answer.get('description', ''))}</td>"
            f"<td>{'<br>'.join(shapes)}</td></tr>"
        )
    parts.append("</table></section>")
    return "\n".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    parts = [f"<section id='schema-{escape(name)}'><h3>{escape(name)}</h3>"]
    if schema.get("description"):
        parts.append(_markdown(schema["description"]))
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    if properties:
        parts.append(
            "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>"
        )
        for field, spec in properties.items():
            parts.append(
                f"<tr><td><code>{escape(field)}</code></td><td>{_type(spec)}{_limits(spec)}</td>"
                f"<td>{'yes' if field in required else 'no'}</td>"
                f"<td>{_inline(spec.get('description', ''))}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append(f"<p>{_type(schema)}{_limits(schema)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _type(schema: dict[str, Any]) -> str:
    """A schema's type as HTML: links for references, `a or b`, `array of x`, enums."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"<a href='#schema-{escape(name)}'>{escape(name)}</a>"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            joined = " or " if key != "allOf" else " and "
            return joined.join(_type(part) for part in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_json(v)}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_json(schema['const'])}</code>"
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if kind is None:
        return "any"
    text = escape(str(kind))
    if schema.get("format"):
        text += f" ({escape(str(schema['format']))})"
    return text


def _limits(schema: dict[str, Any]) -> str:
    """Bounds, lengths, pattern and default, when the schema has them."""
    names = {
        "minimum": "≥",
        "exclusiveMinimum": ">",
        "maximum": "≤",
        "exclusiveMaximum": "<",
        "minLength": "length ≥",
        "maxLength": "length ≤",
        "minItems": "items ≥",
        "maxItems": "items ≤",
    }
    said = [f"{label} {escape(str(schema[key]))}" for key, label in names.items() if key in schema]
    if "pattern" in schema:
        said.append(f"pattern <code>{escape(str(schema['pattern']))}</code>")
    if "default" in schema:
        said.append(f"default <code>{_json(schema['default'])}</code>")
    return f"<br><span class='note'>{'; '.join(said)}</span>" if said else ""


def _markdown(text: str) -> str:
    """The little markdown the descriptions use: paragraphs, `code` and **bold**."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text or "") if b.strip()]
    return "\n".join(f"<p>{_inline(block)}</p>" for block in blocks)


def _inline(text: str) -> str:
    """One paragraph of that markdown, escaped first so nothing in it becomes markup."""
    escaped = escape(" ".join((text or "").split()), quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _json(value: Any) -> str:
    return escape(json.dumps(value, ensure_ascii=False))
