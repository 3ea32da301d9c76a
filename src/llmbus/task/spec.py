"""The task spec: prompt template + output contract + dataset + few-shot settings + metric.

A spec is a YAML file validated by pydantic. Validation errors name the file, the line and the field,
so a user can fix them without reading a traceback. The spec version is a hash of everything that
changes what the model is asked, and it is stored with every call so prompt versions can be compared.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmbus.errors import DataError, SpecError

Kind = Literal["classify", "extract", "generate"]

METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "macro_f1"),
    "extract": ("entity_f1",),
    "generate": ("exact_match", "numeric_match", "chrf"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OutputSpec(_Strict):
    """What the answer must look like: one of a label set, a JSON Schema, or free text."""

    labels: list[str] | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    answer_pattern: str | None = None  # generate: regex whose first group is the answer
    # classify: how labels are shown to the model, shown text → label ({Junk: spam}); labels not named show as
    # themselves. Few-shot examples show it, label scoring scores it, and answers are parsed back to the label.
    verbalizer: dict[str, str] | None = None
    # classify: content-free calibration (Zhao et al. 2021): the item's input is replaced by each of these texts
    # ("N/A"), and the label probabilities are divided by their mean distribution before the answer is taken
    calibrate: list[str] | None = None

    @model_validator(mode="after")
    def _one_contract(self) -> OutputSpec:
        if self.labels is not None and self.json_schema is not None:
            raise ValueError("give either labels or schema, not both")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels needs at least two distinct labels")
        if (self.verbalizer is not None or self.calibrate is not None) and self.labels is None:
            raise ValueError("verbalizer and calibrate need a label set (output.labels)")
        if self.verbalizer is not None:
            _check_verbalizer(self.verbalizer, self.labels or [])
        if self.calibrate is not None and not self.calibrate:
            raise ValueError("calibrate lists at least one content-free input, e.g. [\"N/A\"]")
        return self

    def shown(self, label: str) -> str:
        """How a label is shown to the model (its verbalizer text, else the label itself)."""
        for text, target in (self.verbalizer or {}).items():
            if target == label:
                return text
        return label

    def shown_labels(self) -> list[str]:
        """The label set as the model sees it, in output.labels order."""
        return [self.shown(label) for label in self.labels or []]

    def label_of(self, shown: str) -> str:
        """The label a shown text stands for (the text itself when it is not a verbalizer entry)."""
        return (self.verbalizer or {}).get(shown, shown)


def _check_verbalizer(verbalizer: dict[str, str], labels: list[str]) -> None:
    targets = list(verbalizer.values())
    unknown = [t for t in targets if t not in labels]
    if unknown:
        raise ValueError(f"verbalizer maps to {unknown[0]!r}, which is not one of output.labels")
    if len(set(targets)) != len(targets):
        raise ValueError("verbalizer: each label is shown one way (two texts map to the same label)")
    shown = {text for text in verbalizer} | {label for label in labels if label not in targets}
    if any(not text.strip() for text in verbalizer) or len(shown) != len(labels):
        raise ValueError("verbalizer: every label needs its own non-empty shown text")


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


class Params(_Strict):
    """Generation parameters sent with every call."""

    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    stop: list[str] = Field(default_factory=list)


class TaskSpec(_Strict):
    """One LLM feature: everything needed to render a prompt, call a model and score the answer."""

    name: str
    kind: Kind
    task_type: str | None = None  # finer type for the advisor: classification, ner, qa, chat, math, code…
    description: str = ""
    prompt: str
    output: OutputSpec = OutputSpec()
    data: DataSpec
    fewshot: FewShotSpec = FewShotSpec()
    metric: str | None = None
    params: Params = Params()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.kind == "classify" and not self.output.labels:
            raise ValueError("kind classify needs output.labels")
        if self.kind == "extract" and not self.output.json_schema:
            raise ValueError("kind extract needs output.schema")
        allowed = METRICS_BY_KIND[self.kind]
        if self.metric is not None and self.metric not in allowed:
            raise ValueError(f"metric {self.metric!r} does not fit kind {self.kind}; use one of {', '.join(allowed)}")
        return self

    @property
    def main_metric(self) -> str:
        """The metric reported for this task (the spec's, or the kind's default)."""
        return self.metric or METRICS_BY_KIND[self.kind][0]

    @property
    def version(self) -> str:
        """Hash of prompt, output contract, few-shot settings and params: what changes the model's input."""
        payload = self.model_dump(mode="json", include={"prompt", "output", "fewshot", "params"}, by_alias=True)
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
_LATER_FIELDS = (("output", "verbalizer", None), ("output", "calibrate", None), ("fewshot", "order", "default"))

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
# Plain JSON for prompts (Jinja's own `tojson` HTML-escapes quotes and angle brackets).
_JINJA.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)


def compile_template(spec: TaskSpec) -> jinja2.Template:
    """The spec's prompt as a Jinja2 template (syntax errors name the spec file); compiled once per prompt text,
    not per item."""
    try:
        return _compiled(spec.prompt)
    except jinja2.TemplateSyntaxError as exc:
        raise SpecError(f"{spec.source}: prompt template line {exc.lineno}: {exc.message}") from None


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    """A template text compiled (compiling costs ~100× a render; a failed compile is not cached). Keyed by the text,
    not the spec: specs hold dicts, so they do not hash, and specs that share a prompt share its template."""
    return _JINJA.from_string(source)


def render_prompt(spec: TaskSpec, item: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    """The exact text sent to the model for one item and its few-shot examples."""
    try:
        return compile_template(spec).render(item=item, examples=examples)
    except jinja2.UndefinedError as exc:
        raise SpecError(f"{spec.source}: prompt: {exc.message} (fields: {', '.join(sorted(item))})") from None


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
    compile_template(spec)
    return spec


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
