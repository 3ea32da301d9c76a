"""Task kinds as strategy objects (task/kinds.py): each kind's behaviour, and no kind comparison left elsewhere."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from llmbus.task.contract import OutputSpec
from llmbus.task.kinds import KINDS, Classify, Extract, Generate, kind_named, kind_of
from llmbus.task.spec import TaskSpec

LABELS = OutputSpec(labels=["spam", "ham"], verbalizer={"Junk": "spam"}, calibrate=["N/A"])
SCHEMA = OutputSpec(schema={"type": "object", "required": ["entities"],
                            "properties": {"entities": {"type": "array"}}})
FREE = OutputSpec(answer_pattern=r"ANSWER: (\w+)")


def spec(kind: str, **output: object) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "kind": kind, "prompt": "{{ item.text }}",
                                    "data": {"path": "d.jsonl", "expected": "y"}, "output": output})


def test_kind_of_reads_the_spec_and_unknown_names_fail():
    assert isinstance(kind_of(spec("classify", labels=["a", "b"])), Classify)
    assert spec("generate").kind_strategy is KINDS["generate"]
    assert set(KINDS) == {"classify", "extract", "generate"}
    with pytest.raises(ValueError, match="unknown task kind 'summarize'"):
        kind_named("summarize")


def test_each_kind_names_the_contract_it_needs():
    assert Classify().missing_contract(OutputSpec()) == "kind classify needs output.labels"
    assert Classify().missing_contract(LABELS) is None
    assert Extract().missing_contract(OutputSpec()) == "kind extract needs output.schema"
    assert Generate().missing_contract(OutputSpec()) is None
    with pytest.raises(ValueError, match=r"kind extract needs output\.schema"):
        spec("extract")


def test_default_metric_is_the_kinds_first():
    assert [spec(k, **o).main_metric for k, o in
            [("classify", {"labels": ["a", "b"]}), ("extract", {"schema": {"type": "object"}}), ("generate", {})]] \
        == ["accuracy", "entity_f1", "exact_match"]
    with pytest.raises(ValueError, match="does not fit kind generate"):
        TaskSpec.model_validate({"name": "t", "kind": "generate", "prompt": "p", "metric": "macro_f1",
                                 "data": {"path": "d.jsonl", "expected": "y"}})


def test_parsing_is_the_kinds():
    assert Classify().parse(LABELS, " junk.").value == "spam"  # the shown text, back to its label
    assert Classify().parse(LABELS, "maybe").error_kind == "label_not_in_set"
    assert Extract().parse(SCHEMA, 'Here: {"entities": []}').value == {"entities": []}
    assert Extract().parse(SCHEMA, '{"other": 1}').error_kind == "schema_violation"
    assert Generate().parse(FREE, "so ANSWER: 42 done").value == "42"
    assert Generate().parse(FREE, "no idea").error_kind == "no_answer"
    assert Generate().parse(OutputSpec(), "  free text \n").value == "free text"


def test_request_shaping():
    assert Classify().request_labels(LABELS) == ("Junk", "ham") and Classify().request_schema(LABELS) is None
    assert Extract().request_schema(SCHEMA) == SCHEMA.json_schema and Extract().request_labels(SCHEMA) is None
    assert Generate().request_labels(FREE) is None and Generate().request_schema(FREE) is None
    assert Classify().content_free(LABELS) == ("N/A",) and Generate().content_free(FREE) == ()
    assert Classify().label_of(LABELS, "Junk") == "spam" and Generate().label_of(LABELS, "Junk") == "Junk"
    assert Classify().expected_labels(LABELS) == {"spam", "ham"} and Extract().expected_labels(SCHEMA) is None


def test_students_and_teacher_answers():
    assert (Classify().student, Extract().student, Generate().student) == ("classifier", "tagger", None)
    assert (Classify().student_epochs, Extract().student_epochs) == (3, 2)
    assert Extract().tags_tokens() and not Classify().tags_tokens()
    assert Extract().teacher_answer({"entities": [{"type": "ORG"}]}) == [{"type": "ORG"}]
    assert Classify().teacher_answer("spam") == "spam"


def test_teacher_coverage():
    assert Classify().coverage_problem(Counter({"spam": 9}), 9, 3) is not None
    assert Classify().coverage_problem(Counter({"spam": 5, "ham": 4}), 9, 3) is None
    assert Extract().coverage_problem(Counter({"ORG": 2}), 9, 3) is not None
    assert Extract().coverage_problem(Counter({"ORG": 3}), 9, 3) is None
    assert Extract().answer_counts([[{"type": "ORG"}, {"type": " PER "}], None, ["junk"]]) \
        == Counter({"ORG": 1, "PER": 1})
    assert Classify().answer_counts(["a", "b", "a"]) == Counter({"a": 2, "b": 1})
    assert Classify().rare_is_problem() and not Extract().rare_is_problem()


def test_held_out_answers():
    a, b = {"type": "ORG", "text": "Acme"}, {"type": "PER", "text": "Ann"}
    assert Extract().same_answer([a, b], [b, a]) and not Extract().same_answer([a], [a, b])
    assert Classify().same_answer("1", 1) and not Classify().same_answer("a", "b")
    assert Classify().one_answer_warning(["a", "a"], ["a", "b"], None)
    assert not Classify().one_answer_warning(["a", "b"], ["a", "b"], None)
    assert Extract().one_answer_warning([[], []], [[a], []], None)
    assert not Extract().one_answer_warning([[a], []], [[a], []], None)


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llmbus"
NAMES = "|".join(KINDS)
# A kind compared by name: `x == "classify"`, `!= 'extract'`, `in ("classify", …)`, `"generate" == x`, `case "…"`
COMPARISON = re.compile(rf"""(==|!=|\bin|\bcase)\s*[(\[{{]?\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)""")


def kind_comparisons(text: str) -> list[str]:
    """The lines of `text` that compare something with a task kind's name."""
    return [line.strip() for line in text.splitlines() if COMPARISON.search(line)]


def test_the_comparison_counter_sees_every_form():
    found = kind_comparisons('if spec.kind == "classify":\nif k != \'extract\'\nx in ("classify", "extract")\n'
                             '"generate" == k\ncase "generate":\n{% if kind == "classify" %}\n'
                             'kind="classify"\nname = "generate_report"\n')
    assert len(found) == 6


def test_no_task_kind_is_compared_outside_task_kinds():
    files = [p for p in PACKAGE.rglob("*") if p.suffix in {".py", ".html", ".j2", ".jinja", ".txt"}
             and p != PACKAGE / "task" / "kinds.py"]
    found = [f"{p.relative_to(PACKAGE)}: {line}" for p in files for line in kind_comparisons(p.read_text())]
    assert not found, "ask the kind (task/kinds.py: kind_of(spec)) instead:\n" + "\n".join(found)


def test_requests_carry_the_kinds_contract():
    from llmbus.run.adapter import build_request

    classify = spec("classify", labels=["spam", "ham"], verbalizer={"Junk": "spam"})
    extract = spec("extract", schema=SCHEMA.json_schema)
    assert build_request(classify, "p").labels == ("Junk", "ham") and build_request(classify, "p").json_schema is None
    assert build_request(extract, "p").json_schema == SCHEMA.json_schema and build_request(extract, "p").labels is None
    free = build_request(spec("generate"), "p")
    assert free.labels is None and free.json_schema is None


def test_eval_columns_follow_the_kinds_answer_shape():
    from llmbus.quality.evaluate import _right_or_wrong, item_scores, sample_from, values_at
    from llmbus.quality.samples import EntityColumns, LabelColumns, TextColumns, columns_of

    assert [columns_of(k) for k in KINDS] == [LabelColumns, EntityColumns, TextColumns]
    org = {"type": "ORG", "text": "Acme"}
    rows = [{"item_id": "1", "parsed": [org], "expected": [org], "error_kind": None},
            {"item_id": "2", "parsed": [], "expected": [org], "error_kind": None},
            {"item_id": "3", "parsed": None, "expected": [], "error_kind": "invalid_json"}]
    entities = sample_from("r", "extract", "entity_f1", [], rows)
    assert entities.counts is not None and entities.counts.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert values_at(entities)["entity_f1"] == pytest.approx(2 / 3)
    assert item_scores(entities).tolist() == [1.0, 0.0, 0.0]  # the failed call scores 0 though nothing was expected
    labels = sample_from("r", "classify", "accuracy", ["a", "b"],
                         [{"item_id": "1", "parsed": "a", "expected": "a", "error_kind": None},
                          {"item_id": "2", "parsed": None, "expected": "c", "error_kind": "label_not_in_set"}])
    assert labels.classes == ["a", "b", "c"] and _right_or_wrong(labels) is not None
    assert values_at(labels)["accuracy"] == 0.5
    text = sample_from("r", "generate", "chrf", [], [{"item_id": "1", "parsed": "4", "expected": "4",
                                                      "error_kind": None}])
    assert _right_or_wrong(text) is None and values_at(text)["exact_match"] == 1.0
