"""The task spec: prompt template + output contract + dataset + few-shot settings + metric.

A spec is a YAML file validated by pydantic. Validation errors name the file, the line and the field,
so a user can fix them without reading a traceback. The spec version is a hash of everything that
changes what the model is asked, and it is stored with every call so prompt versions can be compared.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from llmbus.errors import DataError, SpecError
from llmbus.task.checks import FUNCTION_REF, Check, named, resolve_function
from llmbus.task.contract import OutputSpec
from llmbus.task.contract import Strict as _Strict
from llmbus.task.kinds import Kind, TaskKind, kind_named
from llmbus.task.templates import compiled


class DataSpec(_Strict):
    """Where the items come from and which fields matter."""

    # relative to the spec file, absolute, or "package:DIST/path/inside/it"; a list reads several files in order
    path: str | list[str]
    # conversations: ChatterBot-style YAML (`conversations:` lists; turn 1 → question, turn 2 → answer)
    format: Literal["jsonl", "csv", "tsv", "conll", "conversations"] | None = None  # default: from the extension
    columns: list[str] | None = None  # csv/tsv without a header row
    input: str = "text"  # the field baselines and nearest-example retrieval read
    expected: str  # the field holding the right answer
    id: str | None = None  # a stable id field; default: the row number (FILE_STEM:row with several files)
    dedupe: bool = False  # drop rows whose input repeats an earlier row's (the first is kept): no pool/eval leak
    encoding: str = "utf-8"  # the file's text encoding: latin-1, cp1252, utf-16… (a UTF-8 BOM is skipped)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
        return value


class FewShotSpec(_Strict):
    """How many solved examples go into each prompt and how they are picked."""

    k: int = Field(default=0, ge=0, le=64)
    # fixed: one label-balanced set for every item; balanced: a label-balanced random set per item; random: k
    # random pool items per item; nearest: most similar by MiniLM; tfidf / bm25: most similar by words
    strategy: Literal["fixed", "balanced", "random", "nearest", "tfidf", "bm25"] = "nearest"
    order: Literal["default", "reverse"] = "default"  # reverse: the most similar example first, not last
    pool_fraction: float = Field(default=0.2, gt=0, lt=1)  # share of the dataset held out as the pool
    # A separate file of solved examples (same format and fields as data): then every row of data.path is an
    # eval item and the pool comes from this file instead of the hash split.
    pool: str | None = None
    seed: int = 0
    # messages: specs: block — the examples are a Jinja loop inside a turn; turns — each example becomes a user
    # turn (the last user template rendered for it) and an assistant turn (its answer) before the item's turn
    as_: Literal["block", "turns"] = Field(default="block", alias="as")


class Params(_Strict):
    """Generation parameters sent with every call."""

    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    stop: list[str] = Field(default_factory=list)


class MessageTemplate(_Strict):
    """One turn of a `messages:` spec: its role and its content as a Jinja2 template over the item."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class TaskSpec(_Strict):
    """One LLM feature: everything needed to render a prompt, call a model and score the answer."""

    name: str
    kind: Kind
    task_type: str | None = None  # finer type for the advisor: classification, ner, qa, chat, math, code…
    description: str = ""
    prompt: str | None = None  # one text (completion style) …
    messages: list[MessageTemplate] | None = None  # … or chat turns: system first, the item's user turn last
    tools: list[dict[str, Any]] | None = None  # OpenAI function schemas offered on every call
    response_format: dict[str, Any] | None = None  # sent as given (e.g. json_schema with strict: true)
    output: OutputSpec = OutputSpec()
    data: DataSpec
    fewshot: FewShotSpec = FewShotSpec()
    metric: str | None = None  # one of the kind's metrics, or your own: package.module:function (task/checks.py)
    params: Params = Params()
    source: Path | None = Field(default=None, exclude=True)
    # per-item assertions (task/checks.py); like `metric`, they score answers and never change the prompt, so
    # they are not part of the spec version
    checks: list[Check] = Field(default_factory=list, alias="assert")

    @field_validator("checks")
    @classmethod
    def _named_checks(cls, value: list[Check]) -> list[Check]:
        return named(value)

    @field_validator("messages")
    @classmethod
    def _chat_turns(cls, value: list[MessageTemplate] | None) -> list[MessageTemplate] | None:
        if value is not None:
            check_turns([turn.role for turn in value])
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt (one text) or messages (chat turns), not both" if self.prompt
                             is not None else "missing prompt: give prompt (one text) or messages (chat turns)")
        if self.messages is None and self.fewshot.as_ == "turns":
            raise ValueError("fewshot.as: turns needs a messages: spec (a prompt: spec has no turns)")
        for i, tool in enumerate(self.tools or []):
            if tool.get("type") != "function" or not isinstance(tool.get("function"), dict) \
                    or not tool["function"].get("name"):
                raise ValueError(f"tools[{i}] is not an OpenAI function schema "
                                 "({type: function, function: {name, description, parameters}})")
        if self.response_format is not None and not isinstance(self.response_format.get("type"), str):
            raise ValueError("response_format needs a type (text, json_object or json_schema)")
        missing = self.kind_strategy.missing_contract(self.output)
        if missing:
            raise ValueError(missing)
        allowed = self.kind_strategy.metrics
        if self.metric is not None and self.metric not in allowed and not FUNCTION_REF.match(self.metric):
            raise ValueError(f"metric {self.metric!r} does not fit kind {self.kind}; use one of {', '.join(allowed)} "
                             "or your own function as module:function")
        return self

    @property
    def main_metric(self) -> str:
        """The metric reported for this task (the spec's, or the kind's default)."""
        return self.metric or self.kind_strategy.metrics[0]

    @property
    def kind_strategy(self) -> TaskKind:
        """What the spec's kind means (task/kinds.py): its parsing, metrics, sampling, students."""
        return kind_named(self.kind)

    @property
    def version(self) -> str:
        """Hash of prompt (or messages, tools, response_format), output contract, few-shot settings and params:
        what changes the model's input."""
        payload = self.model_dump(mode="json", include={"prompt", "messages", "tools", "response_format",
                                                        "output", "fewshot", "params"}, by_alias=True)
        for name in ("prompt", "messages", "tools", "response_format"):  # a prompt: spec hashes as it always did
            if payload[name] is None:
                del payload[name]
        # Fields added after versions were first stored count only when set, so older specs keep their version.
        for section, name, default in _LATER_FIELDS:
            if payload[section].get(name) == default:
                del payload[section][name]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def resolve(self, relative: str) -> Path:
        """A path from the spec, relative to the spec file's folder."""
        path = Path(relative)
        if path.is_absolute() or self.source is None:
            return path
        return self.source.parent / path


# (section, field, default) of spec fields added after spec versions were first stored.
_LATER_FIELDS = (("output", "verbalizer", None), ("output", "calibrate", None), ("fewshot", "order", "default"),
                 ("fewshot", "as", "block"))


def check_turns(roles: list[str]) -> None:
    """A conversation a chat template accepts: system/developer turns only first, then at least one user turn,
    and the last turn is the user's (the model answers it)."""
    leading = next((i for i, role in enumerate(roles) if role not in ("system", "developer")), len(roles))
    if any(role in ("system", "developer") for role in roles[leading:]):
        raise ValueError("system (and developer) turns come first, before any user turn")
    if not roles or roles[-1] != "user":
        raise ValueError("the last turn is the user's (the item's turn the model answers)")

def read_yaml(path: Path, what: str) -> tuple[yaml.Node | None, Any]:
    """The YAML document at `path` and its node tree (for line numbers); one-line SpecError otherwise."""
    if not path.is_file():
        raise SpecError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{describe_decode_error(path, 'utf-8')} (save the file as UTF-8)") from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(describe_yaml_error(path, exc)) from None


def describe_yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a PyYAML error, naming the line of the fault: file:line: malformed YAML: problem."""
    context, problem = getattr(exc, "context", None), getattr(exc, "problem", None)
    context_mark, problem_mark = getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)
    # A construct left open (a quote, a bracket, a key without its colon) is noticed lines later, often at
    # the end of the file: its start (the context mark) is the fault. For a block mapping or sequence the
    # context mark is merely where that block began, so the problem mark is the fault there.
    opened = context_mark is not None and str(context).startswith(("while scanning", "while parsing a flow"))
    mark = context_mark if opened else problem_mark or context_mark
    if mark is None:
        return f"{path}: malformed YAML: {problem or str(exc).splitlines()[0]}"
    detail = problem or str(exc).splitlines()[0]
    if opened:
        detail = f"{context}: {detail}"
        if problem_mark is not None and problem_mark.line != mark.line and "end of stream" not in detail:
            detail += f" (noticed at line {problem_mark.line + 1})"
    return f"{path}:{mark.line + 1}: malformed YAML: {detail}"


def read_utf8(path: Path) -> str:
    """A UTF-8 text file's content; any other bytes are one DataError naming the line and byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{describe_decode_error(path, 'utf-8')} (save the file as UTF-8)") from None


def describe_decode_error(path: Path, encoding: str) -> str:
    """Where `path` stops being `encoding` text: file:line, the first bad byte and its byte offset."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"{path}:{line}: not {encoding} text: byte 0x{data[exc.start]:02x} at byte offset {exc.start}"
    return f"{path}: not {encoding} text"


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate a task spec; every error names the file, line and field."""
    path = Path(path)
    node, raw = read_yaml(path, "task spec")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}:1: a task spec is a mapping with name, kind, prompt, data…")
    try:
        spec = TaskSpec.model_validate({**raw, "source": path.resolve()})
    except ValidationError as exc:
        raise SpecError(describe_validation_error(path, node, exc)) from None
    check_templates(spec)
    check_references(spec, path, node)
    return spec


def check_templates(spec: TaskSpec) -> None:
    """Compile every template of the spec now: a syntax error names the spec file, the field and the line."""
    texts = [("prompt", spec.prompt)] if spec.messages is None else \
        [(f"messages[{i}].content", turn.content) for i, turn in enumerate(spec.messages)]
    for where, text in texts:
        try:
            compiled(str(text))
        except jinja2.TemplateSyntaxError as exc:
            raise SpecError(f"{spec.source}: {where} template line {exc.lineno}: {exc.message}") from None


def check_references(spec: TaskSpec, path: Path, node: yaml.Node | None) -> None:
    """Import the spec's own metric and python assertions, and find its judge specs, so a bad reference is one
    error line naming the file, line and field before anything runs."""
    folder = path.resolve().parent
    if spec.metric is not None and FUNCTION_REF.match(spec.metric):
        try:
            resolve_function(spec.metric, folder)
        except ValueError as exc:
            raise SpecError(f"{path}:{yaml_line(node, ['metric'])}: metric: {exc}") from None
    for i, check in enumerate(spec.checks):
        try:
            if check.kind == "python":
                resolve_function(str(check.value), folder)
            elif check.kind == "judge" and str(check.value).endswith((".yaml", ".yml")) \
                    and not spec.resolve(str(check.value)).is_file():
                raise ValueError(f"judge spec {spec.resolve(str(check.value))} not found")
        except ValueError as exc:
            where = yaml_line(node, ["assert", i])
            raise SpecError(f"{path}:{where}: assert.{i} ({check.name}): {exc}") from None


def describe_validation_error(path: Path, root: yaml.Node | None, exc: ValidationError) -> str:
    """One line for the first pydantic error: file:line: field: message."""
    err = exc.errors()[0]
    loc = [part for part in err["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
    field = ".".join(str(p) for p in loc) or "(top level)"
    line = yaml_line(root, loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "missing required field"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{path}:{line}: {field}: {message}"


def yaml_line(root: yaml.Node | None, loc: list[Any]) -> int:
    """The 1-based line of the deepest YAML node on the path `loc` (1 when nothing matches)."""
    node, line = root, 1
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            # A missing field leaves node None, so the error points at its parent mapping.
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line
