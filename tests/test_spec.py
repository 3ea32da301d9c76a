from pathlib import Path

import pytest

from conftest import SMS_TASK, write_spec
from llmbus.errors import SpecError
from llmbus.task.render import render_prompt
from llmbus.task.spec import load_spec


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
    ("name: x\nkind: classify\nprompt: [unclosed\n", "t.yaml:3: malformed YAML"),  # where the [ opens
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


# A fault on line 3 of a 20-line file. PyYAML notices an unclosed quote only at the end of the file and a key
# without its colon one line later; the error must still name line 3.
YAML_FAULTS = {
    "unclosed double quote": 'description: "hello\n',
    "unclosed single quote": "description: 'hello\n",
    "key without colon": "description hello\n",
    "unclosed bracket": "labels: [a, b\n",
    "tab indent": "\tdescription: hello\n",
    "bad indent": "  description: hello\n",
}


def yaml_with_fault_at_line_3(fault: str) -> str:
    return "name: x\nkind: classify\n" + fault + "".join(f"key{i}: value {i}\n" for i in range(17))


@pytest.mark.parametrize("fault", YAML_FAULTS)
@pytest.mark.parametrize("reader", ["task spec", "llmbus.yaml", "serve.yaml", "conversations dataset"])
def test_yaml_syntax_errors_name_the_faulty_line(tmp_path: Path, reader: str, fault: str):
    from llmbus.errors import LlmbusError
    from llmbus.providers.config import load_model_configs
    from llmbus.serve.gateway import load_serve_config
    from llmbus.task.data import load_items

    text = yaml_with_fault_at_line_3(YAML_FAULTS[fault])
    assert len(text.splitlines()) == 20
    path = tmp_path / ("qa.yml" if reader == "conversations dataset" else "file.yaml")
    path.write_text(text)
    read = {"task spec": load_spec, "llmbus.yaml": load_model_configs, "serve.yaml": load_serve_config}.get(reader)
    if read is None:
        spec = load_spec(write_spec(tmp_path / "task.yaml", "qa.yml", kind="generate", output={},
                                    data={"path": "qa.yml", "format": "conversations", "input": "question",
                                          "expected": "answer"}))
        read = lambda _path: load_items(spec)  # noqa: E731
    with pytest.raises(LlmbusError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}:3: malformed YAML: "), str(info.value)
    assert "\n" not in str(info.value)


def test_non_utf8_spec_names_file_line_and_byte_offset(tmp_path: Path):
    path = write_spec(tmp_path / "t.yaml", "x.jsonl")
    text = path.read_text(encoding="utf-8").replace("kind: classify\n", "kind: classify\ndescription: caf\u00e9\n")
    path.write_bytes(text.encode("latin-1"))  # what an editor set to Latin-1 saves
    offset = text.encode("latin-1").index(b"\xe9")
    line = text[: text.index("\u00e9")].count("\n") + 1
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (f"{path}:{line}: not utf-8 text: byte 0xe9 at byte offset {offset} "
                               "(save the file as UTF-8)")


def test_data_encoding_must_be_a_known_codec(tmp_path: Path):
    path = write_spec(tmp_path / "t.yaml", "x.jsonl", data={"path": "x.jsonl", "expected": "label",
                                                             "encoding": "latin-42"})
    with pytest.raises(SpecError, match=r"t.yaml:\d+: data.encoding: unknown encoding 'latin-42'"):
        load_spec(path)
    assert load_spec(write_spec(tmp_path / "u.yaml", "x.jsonl", data={
        "path": "x.jsonl", "expected": "label", "encoding": "latin-1"})).data.encoding == "latin-1"


def test_specs_without_the_later_fields_keep_the_version_stored_before_them():
    import hashlib
    import json

    spec = load_spec(SMS_TASK)
    # The payload as it was hashed before verbalizer, calibrate, fewshot.order and fewshot.as existed.
    payload = spec.model_dump(mode="json", include={"prompt", "output", "fewshot", "params"}, by_alias=True)
    for section, name in (("output", "verbalizer"), ("output", "calibrate"), ("fewshot", "order"), ("fewshot", "as")):
        del payload[section][name]
    assert spec.version == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    assert spec.version == "01d42f5c1dc5"  # sms_spam's version in the README's tables since the first round
    later = spec.model_copy(update={"fewshot": spec.fewshot.model_copy(update={"order": "reverse"})})
    assert later.version != spec.version


def test_verbalizer_shows_labels_and_parses_back(tmp_path: Path):
    from llmbus.task.output import parse_output

    spec = load_spec(write_spec(tmp_path / "t.yaml", "x.jsonl",
                                output={"labels": ["ham", "spam"], "verbalizer": {"Junk": "spam"}}))
    assert spec.output.shown_labels() == ["ham", "Junk"]
    assert parse_output(spec, " junk.").value == "spam" and parse_output(spec, "ham").value == "ham"
    assert parse_output(spec, "spam").error_kind == "label_not_in_set"  # the contract is the shown text


@pytest.mark.parametrize(("output", "message"), [
    ({"labels": ["ham", "spam"], "verbalizer": {"Junk": "scam"}}, "'scam', which is not one of output.labels"),
    ({"labels": ["ham", "spam"], "verbalizer": {"Junk": "spam", "Trash": "spam"}}, "each label is shown one way"),
    ({"labels": ["ham", "spam"], "verbalizer": {"ham": "spam"}}, "every label needs its own"),
    ({"labels": ["ham", "spam"], "calibrate": []}, "at least one content-free input"),
    ({"schema": {"type": "object"}, "calibrate": ["N/A"]}, "need a label set"),
])
def test_bad_verbalizer_or_calibration_is_one_line_naming_file_and_field(tmp_path: Path, output, message):
    path = write_spec(tmp_path / "t.yaml", "x.jsonl", output=output)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert f"{path}:" in str(raised.value) and ": output" in str(raised.value) and message in str(raised.value)
