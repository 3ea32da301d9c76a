from pathlib import Path

import pytest

from conftest import SMS_TASK, write_spec
from llmbus.errors import SpecError
from llmbus.spec import load_spec, render_prompt


def test_example_spec_loads_and_has_a_stable_version():
    spec = load_spec(SMS_TASK)
    assert spec.kind == "classify" and spec.output.labels == ["ham", "spam"]
    assert spec.main_metric == "accuracy"
    assert spec.version == load_spec(SMS_TASK).version and len(spec.version) == 12


def test_version_changes_with_prompt_but_not_with_dataset(tmp_path: Path):
    a = load_spec(write_spec(tmp_path / "a.yaml", "x.jsonl"))
    b = load_spec(write_spec(tmp_path / "b.yaml", "y.jsonl"))
    c = load_spec(write_spec(tmp_path / "c.yaml", "x.jsonl", prompt="Other {{ item.text }}"))
    assert a.version == b.version
    assert a.version != c.version


def test_render_puts_examples_before_item(tmp_path: Path):
    spec = load_spec(write_spec(tmp_path / "t.yaml", "x.jsonl"))
    text = render_prompt(spec, {"text": "hello"}, [{"text": "win", "label": "spam"}])
    assert text == "SMS: win\nLabel: spam\nSMS: hello\nLabel:"


def test_missing_template_field_names_it(tmp_path: Path):
    spec = load_spec(write_spec(tmp_path / "t.yaml", "x.jsonl", prompt="{{ item.body }}"))
    with pytest.raises(SpecError, match="'dict object' has no attribute 'body'"):
        render_prompt(spec, {"text": "hello"}, [])


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\nkind: classify\nprompt: [unclosed\n", "t.yaml:4: malformed YAML"),
    ("name: x\nkind: summarize\nprompt: p\ndata: {path: a.jsonl, expected: y}\n", "t.yaml:2: kind: Input should be"),
    ("name: x\nkind: classify\nprompt: p\ndata:\n  path: a.jsonl\n", "t.yaml:5: data.expected: missing required"),
    ("name: x\nkind: classify\nprompt: p\ncolour: red\ndata: {path: a, expected: y}\n"
     "output: {labels: [a, b]}\n", "t.yaml:4: colour: unknown field"),
    ("name: x\nkind: classify\nprompt: p\ndata: {path: a, expected: y}\n", "kind classify needs output.labels"),
    ("name: x\nkind: classify\nprompt: '{% for %}'\ndata: {path: a, expected: y}\noutput: {labels: [a, b]}\n",
     "prompt template line 1"),
    ("- just\n- a list\n", "t.yaml:1: a task spec is a mapping"),
])
def test_bad_specs_name_file_line_and_field(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_spec_file(tmp_path: Path):
    with pytest.raises(SpecError, match="task spec not found"):
        load_spec(tmp_path / "nope.yaml")
