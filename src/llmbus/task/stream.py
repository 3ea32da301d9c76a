"""A run's eval items streamed from the dataset files in sample order, so its memory does not grow with the data.

One pass reads every row (checking them as `data.load_items` does) and keeps the pool's items (the few-shot
examples need them) but, of each eval item, only where its row starts in its file and the keys of its place in
the sample order: some 60 bytes an item, however long its text. `EvalItems` then reads the items in sample order,
each by seeking to its row. The pool/eval split, the sample orders (representative, balanced, file) and the items
themselves are exactly those of `data.split_items` / `data.sample_order` (tests compare them).

Whatever the pass cannot do exactly falls back to loading the dataset as before: a row that fails a check (the
error then comes from `load_items`, worded and ordered as always), a possible duplicate id, YAML conversations,
UTF-16/32 text, line ends other than `\\n` / `\\r\\n`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from llmbus.errors import DataError
from llmbus.task.data import (  # with the private helpers data.py reads rows with
    Item,
    _conll_row,
    _format_from_suffix,
    _hash,
    _row_item,
    data_paths,
    load_items,
    resolve_data_path,
    sample_order,
    split_items,
)
from llmbus.task.spec import TaskSpec

STREAMED_FORMATS = ("jsonl", "csv", "tsv", "conll")


class _Fallback(Exception):
    """The streaming pass cannot reproduce `load_items` exactly here: load the dataset instead."""


@dataclass
class _Index:
    """Where each eval item's row starts (file, byte offset, line) and its sample-order keys, in file order."""

    files: array = field(default_factory=lambda: array("H"))
    offsets: array = field(default_factory=lambda: array("q"))
    lines: array = field(default_factory=lambda: array("l"))
    digests: bytearray = field(default_factory=bytearray)  # sha256 of the order key: 32 bytes an item
    jitters: array = field(default_factory=lambda: array("I"))  # classify: the stratification jitter
    classes: array = field(default_factory=lambda: array("H"))  # classify: index into `class_names`
    class_names: dict[str, int] = field(default_factory=dict)

    def add(self, spec: TaskSpec, file: int, offset: int, line: int, item: Item) -> None:
        self.files.append(file)
        self.offsets.append(offset)
        self.lines.append(line)
        self.digests += hashlib.sha256(f"order:{spec.fewshot.seed}:{item.id}".encode()).digest()
        if spec.kind_strategy.labelled:  # sampled by class
            self.jitters.append(_hash(spec, "jitter", item.id) % 1_000_000)
            self.classes.append(self.class_names.setdefault(str(item.expected), len(self.class_names)))

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class EvalItems:
    """Eval items in sample order, read from their files as they are iterated (again on every iteration)."""

    spec: TaskSpec
    paths: list[Path]
    positions: np.ndarray  # into the index's rows, in the order to answer
    index: _Index | None = None  # None: `held` are the items
    held: list[Item] = field(default_factory=list)
    prefix_ids: bool = False  # ids from row numbers carry the file's stem (several files)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, window: slice) -> EvalItems:
        """The items of a slice of the order (`--offset` / `--limit`)."""
        return EvalItems(self.spec, self.paths, self.positions[window], self.index, self.held, self.prefix_ids)

    def __iter__(self) -> Iterator[Item]:
        if self.index is None:
            yield from (self.held[int(p)] for p in self.positions)
            return
        with ExitStack() as stack:
            opened: dict[int, tuple[IO[bytes], str, list[str] | None]] = {}  # file → handle, format, CSV header
            for position in self.positions:
                file, path = self.index.files[position], self.paths[self.index.files[position]]
                if file not in opened:
                    handle, fmt = stack.enter_context(path.open("rb")), _format(self.spec, path)
                    opened[file] = handle, fmt, _csv_header(self.spec, path, handle, fmt)
                handle, fmt, header = opened[file]
                try:
                    row = _row_at(self.spec, path, fmt, handle, self.index.offsets[position], header)
                except (_Fallback, StopIteration, ValueError):
                    raise DataError(f"{path}: the file changed while the run was reading it "
                                    f"(line {self.index.lines[position]})") from None
                yield _row_item(self.spec, path, self.index.lines[position], row,
                                prefix=f"{path.stem}:" if self.prefix_ids else "")

    def expected_counts(self) -> Counter[str]:
        """How often each expected answer occurs (classify: from the index, without reading the rows)."""
        if self.index is not None and self.index.class_names:
            names = {i: name for name, i in self.index.class_names.items()}
            classes = np.frombuffer(self.index.classes, dtype=np.uint16)[self.positions]
            return Counter({names[int(c)]: int(n) for c, n in zip(*np.unique(classes, return_counts=True),
                                                                  strict=True)})
        return Counter(str(item.expected) for item in self)


def eval_items_in_order(spec: TaskSpec, sampling: str = "representative") -> tuple[EvalItems, list[Item]]:
    """The task's eval items in `sampling` order (representative, balanced or file) and the pool."""
    try:
        return _streamed(spec, sampling)
    except _Fallback:
        return _held(spec, sampling)


def _held(spec: TaskSpec, sampling: str) -> tuple[EvalItems, list[Item]]:
    """As the engine always did: the whole dataset in memory."""
    all_items = load_items(spec)
    split = split_items(spec, all_items)
    ordered = sample_order(spec, split.eval, balanced=True) if sampling == "balanced" else split.eval
    if sampling == "file":
        in_eval = {item.id for item in split.eval}
        ordered = [item for item in all_items if item.id in in_eval]
    return EvalItems(spec, [], np.arange(len(ordered)), held=ordered), split.pool


def _streamed(spec: TaskSpec, sampling: str) -> tuple[EvalItems, list[Item]]:
    try:
        paths = data_paths(spec)
        formats = [_format(spec, path) for path in paths]
    except DataError:
        raise _Fallback from None  # load_items raises it, after any error in an earlier file's rows
    if any(fmt not in STREAMED_FORMATS for fmt in formats) or not _ascii_compatible(spec):
        raise _Fallback
    given = load_items(spec, [resolve_data_path(spec, spec.fewshot.pool)]) if spec.fewshot.pool else None
    pool, index, overlap = _scan(spec, paths, {p.id for p in given} if given is not None else None)
    if given is not None:
        # Rows of both files are numbered from 1: the pool's own ids must not shadow eval items (split_items).
        pool = [Item(f"pool:{p.id}", p.fields, p.expected, p.where) for p in given] if overlap else given
    balanced = sampling == "balanced"
    order = np.arange(len(index)) if sampling == "file" else _sample_order(spec, index, balanced)
    return EvalItems(spec, paths, order, index, prefix_ids=len(paths) > 1), pool


def _scan(spec: TaskSpec, paths: list[Path], pool_ids: set[str] | None) -> tuple[list[Item], _Index, bool]:
    """One pass over every row: the pool's items, the eval items' index, whether an eval id is a pool file id.
    Any check that fails, or a possible duplicate id, falls back (load_items raises it as it always did)."""
    labels = spec.kind_strategy.expected_labels(spec.output)
    cut = int(spec.fewshot.pool_fraction * 10_000)
    pool: list[Item] = []
    index = _Index()
    ids = array("Q")  # 64-bit hashes of every row's id: a repeat falls back to the exact check
    seen_inputs: set[bytes] = set()
    overlap = False
    for file, path in enumerate(paths):
        for line, row, offset in _located_rows(spec, path, _format(spec, path)):
            try:
                item = _row_item(spec, path, line, row, prefix=f"{path.stem}:" if len(paths) > 1 else "")
            except DataError:
                raise _Fallback from None
            if labels is not None and str(item.expected) not in labels:
                raise _Fallback
            # Every row's id, deduplicated or not (a conservative duplicate check: a repeat falls back).
            ids.append(int.from_bytes(hashlib.blake2b(item.id.encode(), digest_size=8).digest(), "big"))
            if spec.data.dedupe:
                key = hashlib.blake2b(" ".join(item.text(spec.data.input).split()).lower().encode(),
                                      digest_size=16).digest()
                if key in seen_inputs:
                    continue
                seen_inputs.add(key)
            if pool_ids is not None:
                overlap = overlap or item.id in pool_ids
                index.add(spec, file, offset, line, item)
            elif _hash(spec, "split", item.id) % 10_000 < cut:
                pool.append(item)
            else:
                index.add(spec, file, offset, line, item)
    hashed = np.frombuffer(ids, dtype=np.uint64)
    if not len(index) + len(pool) or len(np.unique(hashed)) != len(hashed):
        raise _Fallback  # an empty dataset, or a duplicate id (or a hash collision): load_items decides
    return pool, index, overlap


def _sample_order(spec: TaskSpec, index: _Index, balanced: bool) -> np.ndarray:
    """`data.sample_order` on the index: the same order, computed on arrays."""
    words = np.frombuffer(bytes(index.digests), dtype=">u8").reshape(-1, 4)  # the 256-bit hash, big-endian words
    by_hash = np.lexsort(words.T[::-1])  # ascending hash: lexsort's last key is the primary one
    if not spec.kind_strategy.labelled:
        return by_hash
    classes = np.frombuffer(index.classes, dtype=np.uint16)
    ranks = np.empty(len(classes), dtype=np.int64)
    sizes = np.bincount(classes)
    seen = np.zeros(len(sizes), dtype=np.int64)
    for position in by_hash:  # rank of each item within its class, in hash order
        klass = classes[position]
        ranks[position] = seen[klass]
        seen[klass] += 1
    jitter = np.frombuffer(index.jitters, dtype=np.uint32) / 1_000_000
    key = ranks + jitter if balanced else (ranks + jitter) / sizes[classes]
    return np.lexsort((*words.T[::-1], key))  # by key, then by hash (as sample_order's tuples)


def _format(spec: TaskSpec, path: Path) -> str:
    return spec.data.format or _format_from_suffix(path)


def _ascii_compatible(spec: TaskSpec) -> bool:
    """Whether rows can be split at b'\\n' bytes and decoded line by line (not UTF-16/32)."""
    return "\n".encode(spec.data.encoding) == b"\n" and codecs.lookup(spec.data.encoding).name != "utf-7"


def _located_rows(spec: TaskSpec, path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(line, row, byte offset where the row starts) for each row, as data.py's readers give (line, row)."""
    with path.open("rb") as handle:
        lines = _Lines(path, spec.data.encoding, handle, 0, raw_endings=fmt in ("csv", "tsv"))
        if fmt == "jsonl":
            for line_no, text in lines:
                if text.strip():
                    yield line_no, _json_row(path, line_no, text), lines.start
        elif fmt == "conll":
            yield from _conll_rows(lines)
        else:
            header = spec.data.columns
            reader = _csv_reader(lines, fmt)
            while True:
                start = lines.next_offset
                cells = next(reader, None)
                if cells is None:
                    return
                if header is None:
                    header = cells
                    continue
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    raise _Fallback  # load_items names the line and the columns
                yield reader.line_num, dict(zip(header, cells, strict=True)), start


def _row_at(spec: TaskSpec, path: Path, fmt: str, handle: IO[bytes], offset: int,
            header: list[str] | None) -> dict[str, Any]:
    """The row that starts at `offset` (found by `_located_rows`); CSV rows need the file's `header`."""
    handle.seek(offset)
    lines = _Lines(path, spec.data.encoding, handle, offset, raw_endings=fmt in ("csv", "tsv"))
    if fmt == "jsonl":
        line_no, text = next(lines)
        return _json_row(path, line_no, text)
    if fmt == "conll":
        return next(_conll_rows(lines))[1]
    return dict(zip(header or [], next(_csv_reader(lines, fmt)), strict=True))


def _csv_header(spec: TaskSpec, path: Path, handle: IO[bytes], fmt: str) -> list[str] | None:
    """The column names of a CSV/TSV file: data.columns, else its first row."""
    if fmt not in ("csv", "tsv"):
        return None
    if spec.data.columns is not None:
        return list(spec.data.columns)
    handle.seek(0)
    return list(next(_csv_reader(_Lines(path, spec.data.encoding, handle, 0, raw_endings=True), fmt)))


def _json_row(path: Path, line_no: int, text: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        raise _Fallback from None
    if not isinstance(row, dict):
        raise _Fallback
    return row


def _csv_reader(lines: _Lines, fmt: str) -> Any:
    # QUOTE_NONE for TSV: SMS texts contain bare quotes that are not CSV quoting (as data._read_delimited).
    return csv.reader((text for _, text in lines), delimiter="\t" if fmt == "tsv" else ",",
                      quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)


def _conll_rows(lines: _Lines) -> Iterator[tuple[int, dict[str, Any], int]]:
    """CoNLL sentences as data._read_conll reads them, with the offset of each sentence's first line."""
    tokens: list[str] = []
    tags: list[str] = []
    start, start_offset = lines.first_line, lines.next_offset
    for line_no, text in lines:
        parts = text.rstrip("\n").split("\t") if text.strip() else []
        if not parts:
            if tokens:
                yield start, _conll_row(tokens, tags), start_offset
            tokens, tags, start, start_offset = [], [], line_no + 1, lines.next_offset
            continue
        if len(parts) < 2:
            raise _Fallback
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        yield start, _conll_row(tokens, tags), start_offset


class _Lines:
    """Decoded lines of a binary file from an offset, with their numbers (from the file's start when read from 0)
    and byte offsets. As in text mode, `\r\n` reads as `\n`, or stays as it is for CSV (data.py opens CSV files
    with newline=""); a bare `\r`, a line end in text mode, falls back."""

    def __init__(self, path: Path, encoding: str, handle: IO[bytes], offset: int, raw_endings: bool = False):
        self.path, self.handle, self.encoding, self.raw_endings = path, handle, encoding, raw_endings
        self.next_offset = self.start = offset
        self.first_line = 1
        self._line_no = 0
        self._bom = offset == 0 and codecs.lookup(encoding).name == "utf-8"

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> tuple[int, str]:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        self.start = self.next_offset
        self.next_offset += len(raw)
        self._line_no += 1
        if self._bom and self._line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]  # utf-8-sig, as data.open_text reads it
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError:
            raise _Fallback from None  # load_items names the line and the byte
        body = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        if "\r" in body:
            raise _Fallback
        return self._line_no, text if self.raw_endings else body + "\n" * (body != text)
