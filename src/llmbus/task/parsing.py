"""Parsing primitives of the output contracts: JSON checked against a JSON Schema, and the label a free-text answer
names. Each task kind (task/kinds.py) parses its answers with these."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema


@dataclass(frozen=True)
class Parsed:
    """The parsed answer, or an error kind plus a one-line reason (the raw text is logged either way)."""

    value: Any = None
    error_kind: str | None = None
    error: str | None = None


def parse_json(text: str, schema: dict[str, Any]) -> Parsed:
    """JSON from the text (the first {...} or [...] block), validated against a JSON Schema."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        block = re.search(r"(\{.*\}|\[.*\])", stripped, flags=re.S)
        try:
            value = json.loads(block.group(1)) if block else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            return Parsed(error_kind="invalid_json", error=f"not JSON: {stripped[:60]!r}")
    exc = jsonschema.exceptions.best_match(schema_validator(schema).iter_errors(value))  # as jsonschema.validate
    if exc is not None:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return Parsed(value, error_kind="schema_violation", error=f"{where}: {exc.message[:120]}")
    return Parsed(value)


def schema_validator(schema: dict[str, Any]) -> Any:
    """The JSON-Schema validator for `schema`, checked and built once per schema (building one checks the schema
    against its metaschema: far more work than validating an answer)."""
    return _validator(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def match_label(text: str, labels: tuple[str, ...]) -> str | None:
    """The label a model's answer names: exact, case-insensitive, or the first word; None if none fits."""
    cleaned = text.strip().strip(".\"'`*:").strip()
    for label in labels:
        if cleaned == label:
            return label
    lowered = {label.lower(): label for label in labels}
    if cleaned.lower() in lowered:
        return lowered[cleaned.lower()]
    first = cleaned.split()[0].strip(".,:;\"'`*").lower() if cleaned.split() else ""
    return lowered.get(first)
