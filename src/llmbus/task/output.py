"""Turn a model's raw text into the task's answer, or say exactly how it broke the contract (the task's kind
parses: task/kinds.py; the primitives live in task/parsing.py and are importable from here as before)."""

from __future__ import annotations

from llmbus.task.kinds import kind_of
from llmbus.task.parsing import Parsed, match_label, parse_json, schema_validator
from llmbus.task.spec import TaskSpec

__all__ = ["Parsed", "match_label", "parse_json", "parse_output", "schema_validator"]


def parse_output(spec: TaskSpec, text: str) -> Parsed:
    """Parse raw model text according to the spec's output contract."""
    return kind_of(spec).parse(spec.output, text)
