"""A student that reads the raw input answers a nearest-shot task without rendering prompts or selecting shots;
a cascade whose student embeds its input shares the vectors the shot selection made (each text embedded once);
templates and JSON-Schema validators are built once, not per item."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import llmbus.embed as embed_module
from conftest import write_items, write_spec
from llmbus.embed import embed
from llmbus.run.engine import eval_items, run_task
from llmbus.store import Store
from llmbus.task.output import parse_json, schema_validator
from llmbus.task.spec import load_spec
from llmbus.task.templates import compiled
from llmbus.train.student import train_head


@pytest.fixture
def head_student(tmp_path: Path) -> Path:
    """A `head` student (MiniLM embeddings + logistic head) trained on a few SMS-like texts."""
    texts = [f"win a free spam prize {i}" for i in range(8)] + [f"see you at lunch {i}" for i in range(8)]
    labels = ["spam"] * 8 + ["ham"] * 8
    features = embed(texts)
    student = train_head(features, labels, features, labels)
    folder = tmp_path / "student"
    student.save(folder)
    return folder


@pytest.fixture
def counted_encodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text MiniLM encodes from now on."""
    seen: list[str] = []
    real = embed_module._encode

    def counting(texts: list[str], *args: object) -> np.ndarray:
        seen.extend(texts)
        return real(texts, *args)

    monkeypatch.setattr(embed_module, "_encode", counting)
    return seen


def _models(**models: dict[str, object]) -> None:
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump({"models": models}))


def test_a_student_on_a_nearest_shot_task_reads_inputs_without_prompts_or_shots(tmp_path: Path, head_student: Path,
                                                                                counted_encodes: list[str],
                                                                                store: Store):
    write_items(tmp_path / "items.jsonl", 40)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl", prompt="{{ item.missing_field }}",
                                fewshot={"k": 4, "strategy": "nearest", "pool_fraction": 0.3}))
    _models(**{"encoder:s": {"path": str(head_student), "threads": 1}})
    run_id = run_task(spec, "encoder:s", store)  # the prompt could not even render: it is never rendered
    rows = list(store.iter_calls(run_id))
    items = {item.id: item for item in eval_items(spec)[0]}
    assert {r["item_id"] for r in rows} == set(items)
    assert all(r["prompt"] == items[r["item_id"]].fields["text"] and r["error_kind"] is None for r in rows)
    assert sorted(counted_encodes) == sorted(item.fields["text"] for item in items.values())  # the pool never
    assert all(r["parsed"] == r["expected"] for r in rows)  # the student reads the inputs it was trained on


def test_a_cascade_student_reuses_the_vectors_the_shot_selection_embedded(tmp_path: Path, head_student: Path,
                                                                          counted_encodes: list[str], stub,
                                                                          stub_model: str, store: Store):
    write_items(tmp_path / "items.jsonl", 40)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl",
                                fewshot={"k": 2, "strategy": "nearest", "pool_fraction": 0.3}))
    config = yaml.safe_load(Path(os.environ["LLMBUS_CONFIG"]).read_text())["models"]
    _models(**config, **{"encoder:s": {"path": str(head_student), "threads": 1},
                         "cascade:c": {"student": "encoder:s", "teacher": stub_model, "threshold": 1.0}})
    items, selector = eval_items(spec)
    run_id = run_task(spec, "cascade:c", store)
    rows = list(store.iter_calls(run_id))
    assert len(rows) == len(items) and stub.requests == sum(r["meta"]["route"] == "teacher" for r in rows)
    assert all(r["prompt"].count("SMS:") == 3 for r in rows)  # the teacher's prompt, with its two nearest shots
    texts = [item.fields["text"] for item in items] + [p.fields["text"] for p in selector.pool]
    assert sorted(counted_encodes) == sorted(texts)  # each text once: the student read the selection's vectors


def test_the_prompt_template_and_the_schema_validator_are_built_once(tiny_task: Path):
    spec = load_spec(tiny_task)
    assert compiled(str(spec.prompt)) is compiled(str(spec.model_copy().prompt))
    assert compiled(str(spec.prompt)) is not compiled("other {{ item.text }}")
    schema = {"type": "object", "required": ["entities"]}
    assert schema_validator(schema) is schema_validator(dict(schema))
    assert parse_json('{"x": 1}', schema).error == "(root): 'entities' is a required property"
