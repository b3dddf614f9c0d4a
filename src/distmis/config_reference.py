"""The configuration reference (docs/reference/configuration.md), rendered from the config schema.

The schema (``schemas/config.schema.yaml``) is the one home of every key's type, default,
allowed values and meaning; this module only turns it into Markdown, so the reference cannot
drift from what validation enforces. ``tests/test_docs.py`` checks that the committed page is
exactly ``render(load_schema())``. Regenerate it with::

    python -m distmis.config_reference > docs/reference/configuration.md

A validation keyword this renderer does not show stops it with an error naming the key, rather
than leaving a constraint out of the page silently.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

REGENERATE = "python -m distmis.config_reference > docs/reference/configuration.md"

# Validation keywords of JSON Schema 2020-12 that restrict a value but that this renderer does not
# show. Meeting one stops the renderer, so a new constraint in the schema is never left out of the
# page silently. (Keywords JSON Schema does not know are ignored by validation, and here too.)
UNRENDERED_KEYWORDS = frozenset(
    {
        "$ref",
        "$dynamicRef",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "patternProperties",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "minProperties",
        "maxProperties",
        "format",
    }
)


def _json(value: Any) -> str:
    """A default or enum value as JSON (what YAML's flow style also reads), in a code span."""
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


def _escape_html(text: str) -> str:
    """Escape a ``<`` that opens a tag, outside code spans: GitHub drops ``<backend>`` as HTML."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", parts[i])
    return "`".join(parts)


def _check_keywords(schema: dict, path: str) -> None:
    unknown = sorted(set(schema) & UNRENDERED_KEYWORDS)
    if unknown:
        raise ValueError(
            f"config schema at {path or '(root)'}: keyword(s) {', '.join(unknown)} are not "
            "rendered by distmis.config_reference; teach it to show them"
        )


# Keyword → its phrase, in the order they are shown.
_BOUNDS = (
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("pattern", "matches `{}`"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
)


def _constraints(schema: dict) -> list[str]:
    """The schema's restrictions on one value, as short phrases (items and maps not included)."""
    phrases = []
    if "enum" in schema:
        phrases.append("one of " + ", ".join(_json(v) for v in schema["enum"]))
    phrases += [phrase.format(schema[key]) for key, phrase in _BOUNDS if key in schema]
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        phrases.append(f"exactly {low} items")
    else:
        if low is not None:
            phrases.append(f"at least {low} item{'s' if low != 1 else ''}")
        if high is not None:
            phrases.append(f"at most {high} items")
    if schema.get("uniqueItems"):
        phrases.append("no repeated items")
    if schema.get("required"):
        phrases.append("requires " + ", ".join(f"`{k}`" for k in schema["required"]))
    return phrases


def _types(schema: dict, path: str) -> str:
    """What kind of value a schema takes, e.g. ``array of integer`` or ``string or null``."""
    _check_keywords(schema, path)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        return " or ".join(_phrase(alt, f"{path} (alternative)") for alt in alternatives)
    if "const" in schema:
        return _json(schema["const"])
    declared = schema.get("type")
    names = declared if isinstance(declared, list) else [declared] if declared else ["any"]
    described = []
    for name in names:
        if name == "array" and isinstance(schema.get("items"), dict):
            described.append(f"array of {_types(schema['items'], path + '[]')}")
        elif name == "object" and isinstance(schema.get("additionalProperties"), dict):
            value = _phrase(schema["additionalProperties"], path + ".*")
            described.append(f"object mapping any key to {value}")
        else:
            described.append(name)
    return " or ".join(described)


def _phrase(schema: dict, path: str) -> str:
    """Type and restrictions together, for an alternative, an item or a map value."""
    constraints = _constraints(schema)
    items = schema.get("items")
    if isinstance(items, dict) and _constraints(items):
        constraints.append("each item " + ", ".join(_constraints(items)))
    text = _types(schema, path)
    return f"{text} ({'; '.join(constraints)})" if constraints else text


def _entry(name: str, schema: dict, required: bool) -> list[str]:
    """One key's section: heading, type, default, allowed values, description."""
    lines = [f"### `{name}`", "", f"- Type: {_escape_html(_types(schema, name))}"]
    if "default" in schema:
        lines.append(f"- Default: {_json(schema['default'])}")
    elif required:
        lines.append("- Default: none; required when its parent is given")
    allowed = _constraints(schema)
    items = schema.get("items")
    if isinstance(items, dict):
        allowed += [f"each item {c}" for c in _constraints(items)]
    if allowed:
        lines.append(f"- Allowed: {_escape_html('; '.join(allowed))}")
    lines.append("")
    if "description" in schema:
        lines += [_escape_html(schema["description"].strip()), ""]
    return lines


def _keys(prefix: str, schema: dict) -> list[str]:
    """The entries of an object's properties, depth first, nested keys as dotted paths."""
    lines: list[str] = []
    required = set(schema.get("required", []))
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}.{key}"
        lines += _entry(name, sub, key in required)
        lines += _keys(name, sub)
        items = sub.get("items")
        if isinstance(items, dict) and "properties" in items:  # a list of objects
            lines += _keys(f"{name}[]", items)
    return lines


def render(schema: dict) -> str:
    """The configuration reference for ``schema`` (the loaded config schema) as Markdown.

    One ``##`` section per top-level key, in the schema's order, and under it one ``###``
    entry per key, nested keys written as dotted paths (``train.asha.grace_period``; the
    objects of a list as ``report.references[].label``). The same schema always gives the
    same text.
    """
    _check_keywords(schema, "")
    sections = list(schema.get("properties", {}).items())
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from src/distmis/schemas/config.schema.yaml by",
        f"     {REGENERATE}",
        "     Do not edit by hand: edit the schema, then regenerate. -->",
        "",
    ]
    if "title" in schema:
        lines += [f"{schema['title']}.", ""]
    if "description" in schema:
        lines += [_escape_html(schema["description"].strip()), ""]
    lines += [
        "Every key below can be set in `config.yaml` (or a `--configfile` overlay); a key left "
        "out takes its default. Defaults are written as JSON, which YAML reads as written.",
        "",
        "Sections: " + ", ".join(f"[{key}](#{key})" for key, _ in sections) + ".",
        "",
    ]
    for key, sub in sections:
        _check_keywords(sub, key)
        lines += [f"## {key}", ""]
        if "description" in sub:
            lines += [_escape_html(sub["description"].strip()), ""]
        lines += _keys(key, sub)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main() -> int:
    from distmis.config import load_schema

    sys.stdout.write(render(load_schema()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
