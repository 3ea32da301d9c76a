"""Representative samples: eval items come in a shuffled, stratified order, so `--limit N` is a fair sample even
of a file sorted by label; labels outside the spec fail at load time; a separate pool file; duplicate inputs."""

from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, write_spec
from llmbus.errors import DataError
from llmbus.task.data import load_items, sample_order, split_items
from llmbus.task.spec import load_spec

TOPICS = ROOT / "examples" / "topics" / "task.yaml"


def _sorted_file(path: Path, counts: dict[str, int]) -> Path:
    """Items grouped by label, as many real files come."""
    lines = []
    for label, n in counts.items():
        lines += [f'{{"id": "{label}{i}", "text": "{label} text {i}", "label": "{label}"}}' for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_limit_prefix_of_a_label_sorted_packaged_file_holds_every_class_at_its_share():
    spec = load_spec(TOPICS)
    items = load_items(spec)
    assert [str(i.expected) for i in items[:5]] == ["ai"] * 5  # the file really is sorted by label
    evaluation = split_items(spec, items).eval
    share = Counter(str(i.expected) for i in evaluation)
    sample = Counter(str(i.expected) for i in evaluation[:200])
    assert set(sample) == set(spec.output.labels or [])
    for label, n in share.items():
        expected = 200 * n / len(evaluation)
        assert 0.5 * expected <= sample[label] <= 1.5 * expected, (label, sample[label], expected)


def test_sample_order_is_stable_and_independent_of_file_order(tmp_path: Path):
    _sorted_file(tmp_path / "d.jsonl", {"ham": 300, "spam": 100})
    spec = load_spec(write_spec(tmp_path / "t.yaml", "d.jsonl"))
    items = load_items(spec)
    first = [i.id for i in split_items(spec, items).eval]
    again = [i.id for i in split_items(spec, list(reversed(items))).eval]
    assert first == again
    prefix = Counter(i.id.rstrip("0123456789") for i in split_items(spec, items).eval[:40])
    assert 27 <= prefix["ham"] <= 33 and 7 <= prefix["spam"] <= 13  # 3:1 like the data, not 40 hams


def test_balanced_order_gives_every_class_equal_room(tmp_path: Path):
    _sorted_file(tmp_path / "d.jsonl", {"a": 200, "b": 30, "c": 10})
    spec = load_spec(write_spec(tmp_path / "t.yaml", "d.jsonl", output={"labels": ["a", "b", "c"]}))
    items = load_items(spec)
    balanced = Counter(str(i.expected) for i in sample_order(spec, items, balanced=True)[:30])
    assert balanced == {"a": 10, "b": 10, "c": 10}


def test_expected_value_outside_the_label_set_fails_at_load_naming_line_and_labels(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"id": "1", "text": "x", "label": "ham"}\n'
                                      '{"id": "2", "text": "y", "label": "Spam"}\n')
    spec = load_spec(write_spec(tmp_path / "t.yaml", "d.jsonl"))
    with pytest.raises(DataError, match=r"d.jsonl:2: label 'Spam' is not one of the task's labels \(ham, spam\)"):
        load_items(spec)


def test_separate_pool_file_makes_every_data_row_an_eval_item(tmp_path: Path):
    _sorted_file(tmp_path / "test.jsonl", {"ham": 6, "spam": 4})
    (tmp_path / "train.jsonl").write_text('{"id": "t1", "text": "hi", "label": "ham"}\n'
                                          '{"id": "t2", "text": "win", "label": "spam"}\n')
    spec = load_spec(write_spec(tmp_path / "t.yaml", "test.jsonl",
                                fewshot={"k": 2, "strategy": "fixed", "pool": "train.jsonl"}))
    split = split_items(spec, load_items(spec))
    assert len(split.eval) == 10
    assert {p.id for p in split.pool} == {"t1", "t2"}
    bad = load_spec(write_spec(tmp_path / "b.yaml", "test.jsonl", fewshot={"k": 2, "pool": "nope.jsonl"}))
    with pytest.raises(DataError, match="dataset file not found"):
        split_items(bad, load_items(bad))


def test_pool_ids_that_collide_with_eval_ids_are_kept_apart(tmp_path: Path):
    (tmp_path / "test.tsv").write_text("ham\thello\nspam\twin now\n")
    (tmp_path / "train.tsv").write_text("spam\tfree prize\nham\tsee you\n")
    spec = load_spec(write_spec(tmp_path / "t.yaml", "test.tsv",
                                data={"path": "test.tsv", "format": "tsv", "columns": ["label", "text"],
                                      "expected": "label"},
                                fewshot={"k": 1, "strategy": "fixed", "pool": "train.tsv"}))
    split = split_items(spec, load_items(spec))
    assert {i.id for i in split.eval} == {"1", "2"}
    assert {p.id for p in split.pool} == {"pool:1", "pool:2"}


def test_dedupe_keeps_the_first_of_repeated_inputs_and_several_files_get_distinct_ids():
    spec = load_spec(TOPICS)
    items = load_items(spec)
    texts = [" ".join(i.text("question").split()).lower() for i in items]
    assert len(texts) == len(set(texts))
    assert len({i.id for i in items}) == len(items)
    assert items[0].id.startswith("ai:") and items[0].where.endswith("ai.yml:5")
    assert len(spec.output.labels or []) == 12
