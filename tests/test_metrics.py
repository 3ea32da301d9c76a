import pytest
from sklearn.metrics import accuracy_score, f1_score

from llmbus import metrics


def test_classification_metrics_match_sklearn():
    gold = ["ham", "spam", "ham", "ham", "spam", "other"]
    pred = ["ham", "ham", "ham", "spam", "spam", None]
    assert metrics.compute("accuracy", zip(pred, gold, strict=True)) == pytest.approx(
        accuracy_score(gold, [p or "∅" for p in pred]))
    assert metrics.compute("macro_f1", zip(pred, gold, strict=True), ["ham", "spam", "other"]) == pytest.approx(
        f1_score(gold, [p or "∅" for p in pred], average="macro", labels=["ham", "spam", "other"]))


def test_entity_f1_counts_exact_text_and_type():
    gold = [{"text": "New York", "type": "geo-loc"}, {"text": "Obama", "type": "person"}]
    pred = {"entities": [{"text": "new york", "type": "geo-loc"}, {"text": "Obama", "type": "company"}]}
    assert metrics.entity_counts(pred, gold) == (1, 1, 1)
    assert metrics.compute("entity_f1", [(pred, gold), ([], [])]) == pytest.approx(0.5)
    assert metrics.item_score("entity_f1", [], []) == 1.0


def test_numeric_and_exact_match():
    assert metrics.numeric_equal("so she makes $1,800 in total", "... #### 1800")
    assert not metrics.numeric_equal("no number here", "#### 3")
    assert metrics.item_score("exact_match", "The Eiffel Tower!", "eiffel tower") == 1.0


def test_chrf_bounds():
    assert metrics.chrf("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert metrics.chrf("xyz", "the cat sat") == 0.0
    assert 0 < metrics.chrf("the cat sits", "the cat sat") < 1
