"""Teacher answers filtered by stop-3 judge verdicts and human labels before a student learns from them."""

from pathlib import Path

import pytest

from llmbus.distill.teacher_data import collect_examples
from llmbus.errors import LlmbusError
from llmbus.quality.label import LabelSchema, create_project, enqueue, save_label
from llmbus.store import Store
from llmbus.task.spec import load_spec
from quality_helpers import add_judge_run, add_run


def _teacher_run(store: Store, task: Path) -> str:
    rows = [{"item_id": f"m{i}", "parsed": "ham", "expected": "spam" if i % 3 == 0 else "ham", "raw": " ham"}
            for i in range(40)]
    return add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(task))


def test_no_filter_keeps_every_usable_answer(tiny_task: Path, store: Store):
    examples = collect_examples(load_spec(tiny_task), store, _teacher_run(store, tiny_task))
    assert len(examples) == 40 and {e.teacher for e in examples} == {"ham"}
    assert all(e.teacher_text == "ham" for e in examples)


def test_judge_filter_keeps_only_passed_answers(tiny_task: Path, store: Store):
    run = _teacher_run(store, tiny_task)
    spec = load_spec(tiny_task)
    with pytest.raises(LlmbusError, match="no pointwise judge run"):
        collect_examples(spec, store, run, "judge")
    verdicts = {f"m{i}": ("fail" if i % 3 == 0 else "pass") for i in range(40)}
    verdicts["m1"] = None  # a broken verdict is not a pass
    add_judge_run(store, run, verdicts)
    kept = {e.id for e in collect_examples(spec, store, run, "judge")}
    assert kept == {f"m{i}" for i in range(40) if i % 3 != 0} - {"m1"}


def test_human_filter_applies_corrections_and_drops_rejections(tiny_task: Path, store: Store):
    run = _teacher_run(store, tiny_task)
    spec = load_spec(tiny_task)
    with pytest.raises(LlmbusError, match="no label project"):
        collect_examples(spec, store, run, "human")
    create_project(store, "fix-labels", run, LabelSchema(kind="labels", labels=("ham", "spam")))
    create_project(store, "review", run, LabelSchema(kind="labels", labels=("pass", "fail"), correction=True))
    enqueue(store, "fix-labels", [("m0", 1.0), ("m1", 1.0)], "test")
    enqueue(store, "review", [("m2", 1.0), ("m3", 1.0), ("m4", 1.0)], "test")
    save_label(store, "fix-labels", "ann", "m0", "spam")  # a task label replaces the teacher's answer
    save_label(store, "fix-labels", "ann", "m1", "ham")
    save_label(store, "review", "ann", "m2", "pass")  # kept as the teacher said
    save_label(store, "review", "ann", "m3", "fail", correction="spam")  # corrected
    save_label(store, "review", "ann", "m4", "fail")  # rejected without a correction: dropped
    examples = {e.id: e for e in collect_examples(spec, store, run, "human")}
    assert set(examples) == {"m0", "m1", "m2", "m3"}  # unlabeled items are left out
    assert examples["m0"].teacher == "spam" and examples["m0"].teacher_text == "spam"
    assert examples["m1"].teacher == "ham" and examples["m2"].teacher == "ham"
    assert examples["m3"].teacher == "spam"


def test_unknown_filter_is_one_clear_error(tiny_task: Path, store: Store):
    with pytest.raises(LlmbusError, match="--filter 'gold'"):
        collect_examples(load_spec(tiny_task), store, _teacher_run(store, tiny_task), "gold")
