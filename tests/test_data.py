from pathlib import Path

import pytest

from conftest import SMS_TASK, write_items, write_spec
from llmbus.data import bio_to_entities, load_items, split_items
from llmbus.errors import DataError
from llmbus.spec import load_spec


def test_packaged_sms_dataset_loads_and_splits_deterministically():
    spec = load_spec(SMS_TASK)
    items = load_items(spec)
    assert len(items) == 4862
    assert {i.expected for i in items} == {"ham", "spam"}
    split = split_items(spec, items)
    assert 0.15 < len(split.pool) / len(items) < 0.25
    assert not {i.id for i in split.pool} & {i.id for i in split.eval}
    again = split_items(spec, list(reversed(items)))
    assert {i.id for i in again.pool} == {i.id for i in split.pool}


def test_jsonl_errors_name_the_line(tmp_path: Path):
    data = write_items(tmp_path / "items.jsonl", 5)
    lines = data.read_text().splitlines()
    lines[2] = '{"id": "m2", "text": "broken'
    data.write_text("\n".join(lines) + "\n")
    spec = load_spec(write_spec(tmp_path / "t.yaml", "items.jsonl"))
    with pytest.raises(DataError, match=r"items.jsonl:3: malformed JSON"):
        load_items(spec)


def test_missing_field_names_line_and_field(tmp_path: Path):
    (tmp_path / "items.jsonl").write_text('{"id": "a", "text": "x", "label": "ham"}\n{"id": "b", "text": "y"}\n')
    spec = load_spec(write_spec(tmp_path / "t.yaml", "items.jsonl"))
    with pytest.raises(DataError, match=r"items.jsonl:2: missing field 'label'"):
        load_items(spec)


def test_empty_and_missing_datasets(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="dataset is empty"):
        load_items(load_spec(write_spec(tmp_path / "t.yaml", "empty.jsonl")))
    with pytest.raises(DataError, match="dataset file not found"):
        load_items(load_spec(write_spec(tmp_path / "u.yaml", "gone.jsonl")))


def test_csv_with_header_and_wrong_column_count(tmp_path: Path):
    (tmp_path / "d.csv").write_text('id,text,label\n1,"hello, there",ham\n2,oops\n')
    spec = load_spec(write_spec(tmp_path / "t.yaml", "d.csv"))
    with pytest.raises(DataError, match=r"d.csv:3: expected 3 columns"):
        load_items(spec)
    (tmp_path / "d.csv").write_text('id,text,label\n1,"hello, there",ham\n')
    assert load_items(spec)[0].fields["text"] == "hello, there"


def test_conll_to_entities(tmp_path: Path):
    (tmp_path / "n.conll").write_text("Visit\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\n"
                                      "@bob\tO\nlikes\tO\nApple\tB-company\n")
    spec = load_spec(write_spec(tmp_path / "t.yaml", "n.conll", kind="extract", output={"schema": {"type": "object"}},
                                data={"path": "n.conll", "expected": "entities"}, metric="entity_f1"))
    items = load_items(spec)
    assert [i.expected for i in items] == [[{"text": "New York", "type": "geo-loc"}],
                                           [{"text": "Apple", "type": "company"}]]
    assert items[0].id == "1" and items[1].id == "5"


def test_bio_decoding_handles_stray_inside_tags():
    assert bio_to_entities(["a", "b", "c"], ["I-x", "I-x", "B-y"]) == [{"text": "a b", "type": "x"},
                                                                      {"text": "c", "type": "y"}]


def test_conversations_yaml_gives_question_answer_items(tmp_path: Path):
    (tmp_path / "qa.yml").write_text("categories: [trivia]\nconversations:\n"
                                     "- - Who wrote Hamlet?\n  - Shakespeare\n"
                                     "- A lone statement has no answer\n"
                                     "- - What is 2+2?\n  - '4'\n  - Are you sure?\n")
    spec = load_spec(write_spec(tmp_path / "task.yaml", "qa.yml", kind="generate", output={},
                                data={"path": "qa.yml", "format": "conversations", "input": "question",
                                      "expected": "answer"}))
    items = load_items(spec)
    assert [(i.id, i.fields["question"], i.expected) for i in items] == [
        ("3", "Who wrote Hamlet?", "Shakespeare"), ("6", "What is 2+2?", "4")]
    assert items[1].fields["turns"][2] == "Are you sure?"


def test_conversations_yaml_errors_name_the_line(tmp_path: Path):
    (tmp_path / "qa.yml").write_text("conversations:\n- - Who?\n  - - nested\n")
    spec = load_spec(write_spec(tmp_path / "task.yaml", "qa.yml", kind="generate", output={},
                                data={"path": "qa.yml", "format": "conversations", "input": "question",
                                      "expected": "answer"}))
    with pytest.raises(DataError, match=r"qa.yml:2: a conversation must be a list of text turns"):
        load_items(spec)
    (tmp_path / "qa.yml").write_text("topics: []\n")
    with pytest.raises(DataError, match=r"qa.yml:1: missing field 'conversations'"):
        load_items(spec)


def test_packaged_trivia_example_loads():
    items = load_items(load_spec(Path(__file__).parent.parent / "examples" / "trivia" / "task.yaml"))
    assert len(items) >= 250 and all(i.fields["question"] and i.expected for i in items)


# Line 3 of each file holds "café" as Latin-1 saves it (the byte 0xe9, never valid alone in UTF-8).
ENCODED_DATASETS = {
    "items.jsonl": ('{"id": "a", "text": "tea", "label": "ham"}\n{"id": "b", "text": "milk", "label": "ham"}\n'
                    '{"id": "c", "text": "caf\u00e9", "label": "spam"}\n'),
    "items.csv": "id,text,label\na,tea,ham\nc,caf\u00e9,spam\n",
    "items.tsv": "id\ttext\tlabel\na\ttea\tham\nc\tcaf\u00e9\tspam\n",
    "items.conll": "I\tO\nlike\tO\ncaf\u00e9\tB-food\n",
    "qa.yml": "conversations:\n- - What is this?\n  - caf\u00e9\n",
}


def _encoded_spec(tmp_path: Path, name: str, encoding: str | None) -> Path:
    data: dict[str, object] = {"path": name, "expected": "label", "id": "id"}
    overrides: dict[str, object] = {}
    if name.endswith(".conll"):
        data = {"path": name, "expected": "entities"}
        overrides = {"kind": "extract", "output": {"schema": {"type": "object"}}, "metric": "entity_f1"}
    if name.endswith(".yml"):
        data = {"path": name, "format": "conversations", "input": "question", "expected": "answer"}
        overrides = {"kind": "generate", "output": {}}
    if encoding:
        data["encoding"] = encoding
    return write_spec(tmp_path / f"{name}.task.yaml", name, data=data, **overrides)


@pytest.mark.parametrize("name", ENCODED_DATASETS)
def test_non_utf8_dataset_names_file_line_and_byte_offset_and_reads_with_its_encoding(tmp_path: Path, name: str):
    text = ENCODED_DATASETS[name]
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(DataError) as info:
        load_items(load_spec(_encoded_spec(tmp_path, name, None)))
    assert str(info.value).startswith(f"{tmp_path / name}:3: not utf-8 text: byte 0xe9 at byte offset {offset} ")
    assert "data.encoding" in str(info.value) and "\n" not in str(info.value)
    items = load_items(load_spec(_encoded_spec(tmp_path, name, "latin-1")))
    assert any("caf\u00e9" in str(item.fields) for item in items)


def test_utf8_byte_order_mark_is_not_part_of_the_first_field(tmp_path: Path):
    """Spreadsheets save CSV as UTF-8 with a BOM; the first header must still read `id`."""
    (tmp_path / "d.csv").write_bytes("id,text,label\n1,caf\u00e9,ham\n".encode("utf-8-sig"))
    (tmp_path / "d.jsonl").write_bytes('{"id": "1", "text": "x", "label": "ham"}\n'.encode("utf-8-sig"))
    for name in ("d.csv", "d.jsonl"):
        items = load_items(load_spec(write_spec(tmp_path / f"{name}.yaml", name)))
        assert [(i.id, i.expected) for i in items] == [("1", "ham")]
