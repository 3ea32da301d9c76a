"""A team's own scoring: `metric: package.module:function` and per-item `assert:` checks in a task spec.

    metric: scoring:tone            # f(expected, answer, item) -> float in [0, 1] or bool, per item; the run's
                                    # figure is the mean (imported from the spec's folder, else sys.path)
    assert:                         # promptfoo-style; every item's answer is checked against each
      - contains: "{{ item.city }}"           # values may use the item's fields
      - icontains: paris
      - name: no_pii                          # a name for gates (assert:no_pii>=0.99) and reports
        not-regex: '\\b\\d{3}-\\d{2}-\\d{4}\\b'   # not-<kind>: the negation of any kind
      - equals: ham
      - is-json                               # a bare kind when it takes no value
      - json-schema: {type: object, required: [entities]}
      - python: checks:polite                 # f(expected, answer, item) -> bool, a score, or {pass, score, reason}
        threshold: 0.5                        # a score passes at or above it (default 0.5)
      - judge: judges/helpful.yaml            # a judge spec (or a rubric in words), run by `llmbus eval`
        model: openai:gpt-judge
      - type: contains                        # promptfoo's own form works too
        value: Paris

The string checks read the answer as the model wrote it (the call's raw output); `python` gets the parsed answer
(a label, a JSON object, text) like a metric does. A call that failed without an answer fails every check.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
from pydantic import BaseModel, ConfigDict, model_validator

from llmbus.errors import DataError

KINDS = ("contains", "icontains", "regex", "equals", "is-json", "json-schema", "python", "judge")
VALUELESS = frozenset({"is-json"})  # kinds that may stand alone (is-json takes an optional schema)
FUNCTION_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NAME = re.compile(r"^[A-Za-z_]\w*$")
_TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


class Check(BaseModel):
    """One assertion: its kind, its value, whether it is negated, its name, and kind-specific settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    value: Any = None
    negate: bool = False
    name: str | None = None
    threshold: float = 0.5  # python: a returned score passes at or above this
    model: str | None = None  # judge: the judge model (default: the judge machinery's)

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, raw: Any) -> Any:
        """`- is-json`, `- contains: X` (+ name, threshold, model), or promptfoo's `- type: contains, value: X`."""
        if isinstance(raw, str):
            raw = {raw: None}
        if not isinstance(raw, dict):
            raise ValueError("an assertion is a mapping such as {contains: TEXT} or {type: regex, value: …}")
        raw = dict(raw)
        if "kind" in raw:
            return raw
        settings = {key: raw.pop(key) for key in ("name", "threshold", "model") if key in raw}
        if "type" in raw:
            kind, value = raw.pop("type"), raw.pop("value", None)
        elif len(raw) == 1:
            kind, value = raw.popitem()
        else:
            raise ValueError(f"give one assertion kind per entry, found {', '.join(map(str, raw)) or 'none'} "
                             f"(kinds: {', '.join(KINDS)})")
        if raw:
            raise ValueError(f"unknown assertion settings: {', '.join(map(str, raw))}")
        kind = str(kind)
        negate = kind.startswith("not-")
        return {**settings, "kind": kind.removeprefix("not-"), "value": value, "negate": negate}

    @model_validator(mode="after")
    def _valid(self) -> Check:
        if self.kind not in KINDS:
            raise ValueError(f"unknown assertion kind {self.kind!r}; use one of {', '.join(KINDS)} (or not-KIND)")
        if self.value is None and self.kind not in VALUELESS:
            raise ValueError(f"{self.kind} needs a value")
        if self.name is not None and not NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits and _ (it is used in gates: assert:NAME>=0.9)")
        if self.kind == "regex":
            try:
                re.compile(str(self.value))
            except re.error as exc:
                raise ValueError(f"regex {self.value!r}: {exc}") from None
        if self.kind in ("json-schema", "is-json") and self.value is not None:
            if not isinstance(self.value, dict):
                raise ValueError(f"{self.kind} takes a JSON Schema (a mapping)")
            try:
                jsonschema.validators.validator_for(self.value).check_schema(self.value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"{self.kind}: not a valid JSON Schema: {exc.message}") from None
        if self.kind == "python" and not FUNCTION_REF.match(str(self.value)):
            raise ValueError(f"python {self.value!r}: write module:function (e.g. checks:no_pii)")
        if self.kind == "judge" and not str(self.value).strip():
            raise ValueError("judge needs a judge spec file or a rubric")
        if self.model is not None and self.kind != "judge":
            raise ValueError("model is a setting of judge assertions")
        return self


def named(checks: list[Check]) -> list[Check]:
    """The checks with their report names: the given one, else the kind (not_ for negations, - as _), numbered
    from the second of a kind; a name given twice is refused."""
    out, seen = [], set()
    for check in checks:
        base = check.name or (("not_" if check.negate else "") + check.kind.replace("-", "_"))
        name, n = base, 1
        while name in seen:
            if check.name:
                raise ValueError(f"assertion name {name!r} is used twice")
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        out.append(check.model_copy(update={"name": name}))
    return out


def resolve_function(ref: str, folder: Path | None = None) -> Callable[..., Any]:
    """The function a `module:function` reference names, imported from `folder` (a spec's) or sys.path;
    ValueError says what is missing."""
    module_name, _, function = ref.partition(":")
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))  # for this import only: the module stays in sys.modules afterwards
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f"{folder} or sys.path" if folder else "sys.path"
        raise ValueError(f"cannot import {module_name!r} (looked in {where}): {exc}") from None
    except Exception as exc:  # the user's module raised while loading
        raise ValueError(f"importing {module_name!r} raised {exc.__class__.__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(folder))
    found = getattr(module, function, None)
    if not callable(found):
        raise ValueError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no function {function!r}")
    return found


def custom_score(fn: Callable[..., Any], ref: str, expected: Any, answer: Any, item: dict[str, Any]) -> float:
    """One item's score from a custom metric: a bool or a number in [0, 1]; anything else, or the function
    raising, is a DataError naming the metric and the item (a score outside the scale would skew every figure)."""
    try:
        value = fn(expected, answer, item)
    except Exception as exc:
        raise DataError(f"metric {ref} raised {exc.__class__.__name__}: {exc} on item with fields "
                        f"{sorted(item)} (expected {expected!r}, answer {answer!r})") from None
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DataError(f"metric {ref} returned {value!r} for expected {expected!r}, answer {answer!r}: return a "
                        "bool or a number in [0, 1]")
    return float(value)


def check_answer(check: Check, text: str | None, answer: Any, expected: Any, item: dict[str, Any],
                 function: Callable[..., Any] | None = None) -> tuple[bool, str]:
    """(passed, why it failed) of one deterministic check on one answer: `text` as the model wrote it (None when
    the call gave nothing), `answer` parsed; `function` is the resolved `python` check."""
    if text is None:
        return False, "no answer (the call failed)"
    ok, why = _positive(check, text, answer, expected, item, function)
    if check.negate:
        return (not ok, "" if not ok else f"not-{check.kind}: {_describe(check, item)} holds")
    return ok, why


def _positive(check: Check, text: str, answer: Any, expected: Any, item: dict[str, Any],
              function: Callable[..., Any] | None) -> tuple[bool, str]:
    if check.kind in ("contains", "icontains"):
        wanted = _render(check.value, item)
        found = wanted.lower() in text.lower() if check.kind == "icontains" else wanted in text
        return found, "" if found else f"answer does not contain {wanted!r}"
    if check.kind == "regex":
        pattern = _render(check.value, item)
        return (True, "") if re.search(pattern, text) else (False, f"answer does not match /{pattern}/")
    if check.kind == "equals":
        if isinstance(check.value, dict | list):
            value = _json(text)
            return (value == check.value, "" if value == check.value else "answer is not the expected JSON")
        wanted = _render(check.value, item)
        return (text.strip() == wanted.strip(), "" if text.strip() == wanted.strip() else f"answer is not {wanted!r}")
    if check.kind in ("is-json", "json-schema"):
        value = _json(text)
        if value is _NOT_JSON:
            return False, "answer is not JSON"
        if check.value is not None:
            try:
                jsonschema.validate(value, check.value)
            except jsonschema.ValidationError as exc:
                return False, f"answer breaks the schema: {exc.message}"
        return True, ""
    if check.kind == "python":
        assert function is not None
        return python_verdict(function(expected, answer, item), check)
    raise ValueError(f"{check.kind} assertions are not checked here")


def python_verdict(value: Any, check: Check) -> tuple[bool, str]:
    """A python check's return value as (passed, reason): bool, a score (passes at or above the threshold), or a
    mapping with pass / score / reason (promptfoo's GradingResult)."""
    if isinstance(value, dict):
        score = value.get("score")
        ok = bool(value["pass"]) if "pass" in value else score is not None and float(score) >= check.threshold
        return ok, "" if ok else str(value.get("reason") or f"{check.value} said fail")
    if isinstance(value, bool):
        return value, "" if value else f"{check.value} returned False"
    if isinstance(value, int | float):
        ok = float(value) >= check.threshold
        return ok, "" if ok else f"{check.value} scored {value:g} < {check.threshold:g}"
    raise ValueError(f"python assertion {check.value} returned {value!r}: return a bool, a number or "
                     "{'pass': …, 'score': …, 'reason': …}")


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def _render(value: Any, item: dict[str, Any]) -> str:
    """A check's value with `{{ item.FIELD }}` filled from the item."""
    text = str(value)
    if "{{" not in text and "{%" not in text:
        return text
    return _TEMPLATES.from_string(text).render(item=item)


def _describe(check: Check, item: dict[str, Any]) -> str:
    return check.kind if check.value is None else f"{check.kind} {_render(check.value, item)!r}"
