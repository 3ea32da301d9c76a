"""Streamed eval items are exactly the held ones: same items, ids, `where`, pool and sample order (representative,
balanced, file) for every format the stream reads, and the whole-dataset path wherever it cannot read exactly."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from llmbus.task.spec import load_spec
from llmbus.task.stream import EvalItems, _held, _streamed, eval_items_in_order

LABELS = ["a", "b", "c"]


def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"id": f"x{i}", "text": f"text {rng.random():.6f} é {i}", "label": rng.choice(["a", "b", "c", "c", "c"])}
            for i in range(n)]


def _spec(folder: Path, name: str, **fields: object) -> Path:
    spec = {"name": "t", "kind": "classify", "prompt": "{{ item.text }}", "output": {"labels": LABELS}, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _same(task: Path) -> EvalItems:
    spec = load_spec(task)
    streamed = None
    for sampling in ("representative", "balanced", "file") if spec.kind == "classify" else ("representative", "file"):
        streamed, pool = _streamed(spec, sampling)
        held, held_pool = _held(spec, sampling)
        assert streamed.index is not None  # really streamed
        as_tuples = [(i.id, i.fields, i.expected, i.where) for i in held]
        assert [(i.id, i.fields, i.expected, i.where) for i in streamed] == as_tuples
        assert [(i.id, i.fields, i.where) for i in pool] == [(i.id, i.fields, i.where) for i in held_pool]
        assert streamed.expected_counts() == held.expected_counts()
        assert [i.id for i in streamed[5:25]] == [i.id for i in held[5:25]]  # --offset 5 --limit 20
    assert streamed is not None
    return streamed


def test_jsonl_with_a_bom_crlf_line_ends_and_blank_lines(tmp_path: Path):
    rows = _rows(1500)
    text = "".join(json.dumps(r, ensure_ascii=False) + ("\r\n" if i % 5 == 0 else "\n") for i, r in enumerate(rows))
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\n\n")
    assert len(_same(_spec(tmp_path, "ids", data={"path": "a.jsonl", "expected": "label", "id": "id"}))) > 1000
    _same(_spec(tmp_path, "rows", data={"path": "a.jsonl", "expected": "label"}))  # ids from row numbers
    _same(_spec(tmp_path, "gen", kind="generate", output={}, data={"path": "a.jsonl", "expected": "label"}))


def test_two_files_with_dedupe_and_a_separate_pool_file(tmp_path: Path):
    rows = _rows(800)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({**r, "text": "same" if i % 3 == 0 else r["text"]}) + "\n"
                                              for i, r in enumerate(_rows(800, seed=1))))
    _same(_spec(tmp_path, "two", data={"path": ["a.jsonl", "b.jsonl"], "expected": "label", "dedupe": True}))
    streamed = _same(_spec(tmp_path, "pool", data={"path": "a.jsonl", "expected": "label"},
                           fewshot={"k": 2, "pool": "b.jsonl"}))
    assert len(streamed) == 800  # every data row is an eval item when the pool is its own file


def test_csv_with_quoted_line_breaks_and_tsv_in_latin1(tmp_path: Path):
    with (tmp_path / "c.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for i, r in enumerate(_rows(900)):
            writer.writerow([r["id"], r["text"] + ('\nsaid "hi"' if i % 11 == 0 else ""), r["label"]])
        writer.writerow([])
    _same(_spec(tmp_path, "csv", data={"path": "c.csv", "expected": "label", "id": "id"}))
    (tmp_path / "c.tsv").write_text("".join(f"{r['label']}\t{r['text']} \"q\n" for r in _rows(900)), encoding="latin-1")
    _same(_spec(tmp_path, "tsv", data={"path": "c.tsv", "expected": "label", "columns": ["label", "text"],
                                       "encoding": "latin-1"}))


def test_conll_sentences(tmp_path: Path):
    rng = random.Random(2)
    (tmp_path / "n.conll").write_text("".join("\n".join(f"w{j}\t{'B-loc' if j == 0 else 'O'}"
                                                        for j in range(rng.randint(1, 5))) + "\n\n"
                                              for _ in range(400)))
    _same(_spec(tmp_path, "conll", kind="extract", output={"schema": {"type": "object"}},
                data={"path": "n.conll", "expected": "entities"}))


@pytest.mark.parametrize("content", ["bare_cr", "duplicate_id", "bad_label"])
def test_what_the_stream_cannot_read_exactly_is_loaded_as_before(tmp_path: Path, content: str):
    rows = _rows(60)
    if content == "duplicate_id":
        rows[40]["id"] = rows[3]["id"]
    if content == "bad_label":
        rows[50]["label"] = "z"
    end = "\r" if content == "bare_cr" else "\n"
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + end for r in rows), newline="")
    spec = load_spec(_spec(tmp_path, "s", data={"path": "a.jsonl", "expected": "label", "id": "id"}))
    if content == "bare_cr":
        items, _ = eval_items_in_order(spec)
        assert items.index is None and len(items) > 40  # held, as before
        return
    with pytest.raises(Exception, match="duplicate id 'x3'" if content == "duplicate_id" else "'z' is not one"):
        eval_items_in_order(spec)  # the error load_items always gave, with its file and line
