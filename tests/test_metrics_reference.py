"""Every metric equals the reference library on random and adversarial answers: scikit-learn (accuracy, macro-F1,
per-class table), seqeval (entity F1), sacrebleu (chrF) — for the streaming Tally and for `eval`'s arrays."""

import numpy as np
import pytest
import sacrebleu
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from llmbus.quality.evaluate import evaluate
from llmbus.store import Store
from llmbus.task import metrics
from llmbus.task.data import bio_to_entities
from quality_helpers import add_run, classify_rows

FAILED = "<failed>"  # how a failed call reaches scikit-learn: a prediction outside every label


def _sklearn_macro(gold: list[str], pred: list[str | None], labels: list[str]) -> float:
    y_pred = [FAILED if p is None else p for p in pred]
    union = list(dict.fromkeys([*labels, *gold, *(p for p in pred if p is not None)]))
    return float(f1_score(gold, y_pred, labels=union, average="macro", zero_division=0))


def _cases() -> list[tuple[list[str], list[str | None], list[str]]]:
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c", "d", "e"]
    cases = []
    for _ in range(40):
        n = int(rng.integers(1, 60))
        gold = [str(x) for x in rng.choice(labels, n)]
        pred = [None if rng.random() < 0.1 else str(rng.choice(labels)) for _ in range(n)]
        cases.append((gold, pred, labels))
    cases += [
        (["a"] * 50, ["a"] * 50, labels),  # one-class sample, all right: not a perfect macro-F1 over 5 labels
        (["a"] * 50, ["a"] * 40 + ["b"] * 10, labels),  # wrong predictions into a class never expected
        (["a", "b", "c"] * 10, ["a"] * 30, labels),  # classes never predicted
        (["a", "b"] * 10, ["a", "b"] * 10, labels),  # classes c, d, e never expected nor predicted
        (["a", "x"] * 5, ["x", "y"] * 5, labels),  # values outside the label set (union, like scikit-learn)
        (["a"] * 5, [None] * 5, labels),  # every call failed
    ]
    return cases


@pytest.mark.parametrize("case", range(len(_cases())))
def test_tally_equals_sklearn_accuracy_and_macro_f1(case: int):
    gold, pred, labels = _cases()[case]
    pairs = list(zip(pred, gold, strict=True))
    y_pred = [FAILED if p is None else p for p in pred]
    assert metrics.compute("accuracy", pairs, labels) == pytest.approx(accuracy_score(gold, y_pred), abs=1e-9)
    assert metrics.compute("macro_f1", pairs, labels) == pytest.approx(_sklearn_macro(gold, pred, labels), abs=1e-9)


def test_one_class_sample_cannot_look_perfect():
    assert metrics.compute("macro_f1", [("a", "a")] * 200, ["a", "b", "c", "d", "e"]) == pytest.approx(0.2)


@pytest.mark.parametrize("case", [0, 5, 40, 41, 42, 43, 44, 45])
def test_eval_report_equals_sklearn_including_the_per_class_table(store: Store, case: int):
    gold, pred, labels = _cases()[case]
    report = evaluate(store, add_run(store, classify_rows(pred, gold), labels=labels, task=f"c{case}"), rounds=20)
    assert report.values["macro_f1"].value == pytest.approx(_sklearn_macro(gold, pred, labels), abs=1e-9)
    y_pred = [FAILED if p is None else p for p in pred]
    assert report.values["accuracy"].value == pytest.approx(accuracy_score(gold, y_pred), abs=1e-9)
    precision, recall, f1s, support = precision_recall_fscore_support(gold, y_pred, labels=report.classes,
                                                                      zero_division=0)
    for i, cls in enumerate(report.classes):
        row = report.per_class[cls]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1s[i], support[i]), abs=1e-9)


def _bio_sentences(seed: int) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Random BIO tag sequences over distinct tokens (so a mention's text fixes its position)."""
    rng = np.random.default_rng(seed)
    types = ["PER", "LOC", "ORG"]
    tokens, gold, pred = [], [], []
    for s in range(30):
        n = int(rng.integers(1, 12))
        tokens.append([f"w{s}_{i}" for i in range(n)])
        for tags in (gold, pred):
            seq = []
            for _ in range(n):
                r = rng.random()
                seq.append("O" if r < 0.5 else f"{'B' if r < 0.8 else 'I'}-{rng.choice(types)}")
            tags.append(seq)
    return tokens, gold, pred


@pytest.mark.parametrize("seed", range(6))
def test_entity_f1_equals_seqeval(seed: int):
    tokens, gold, pred = _bio_sentences(seed)
    pairs = [(bio_to_entities(t, p), bio_to_entities(t, g)) for t, g, p in zip(tokens, gold, pred, strict=True)]
    assert metrics.compute("entity_f1", pairs) == pytest.approx(seqeval_f1(gold, pred), abs=1e-9)


def test_entity_f1_adversarial_cases_equal_seqeval():
    tokens = [["Ann", "met", "Bob"], ["in", "Rome"]]
    cases = [
        ([["B-PER", "O", "B-PER"], ["O", "B-LOC"]], [["O", "O", "O"], ["O", "O"]]),  # nothing predicted
        ([["O", "O", "O"], ["O", "O"]], [["B-PER", "O", "B-PER"], ["O", "B-LOC"]]),  # nothing expected
        ([["B-PER", "O", "B-PER"], ["O", "B-LOC"]], [["B-LOC", "O", "B-ORG"], ["O", "B-PER"]]),  # every type wrong
        ([["B-PER", "I-PER", "O"], ["O", "B-LOC"]], [["B-PER", "O", "O"], ["O", "I-LOC"]]),  # span edges, bare I-
    ]
    for gold, pred in cases:
        pairs = [(bio_to_entities(t, p), bio_to_entities(t, g)) for t, g, p in zip(tokens, gold, pred, strict=True)]
        assert metrics.compute("entity_f1", pairs) == pytest.approx(seqeval_f1(gold, pred), abs=1e-9)


HYPOTHESES = ["the cat sat on the mat", "Andromeda", "", "a", "Paris, France", "42", "naïve café", "the the the"]
REFERENCES = ["the cat sat", "The Andromeda Galaxy", "", "b", "Paris", "forty-two", "naive cafe", "the"]


def test_chrf_equals_sacrebleu_sentence_and_corpus_scores(store: Store):
    for hyp, ref in zip(HYPOTHESES, REFERENCES, strict=True):
        assert metrics.chrf(hyp, ref) == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref]).score / 100, abs=1e-9)
    corpus = sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score / 100
    assert metrics.compute("chrf", zip(HYPOTHESES, REFERENCES, strict=True)) == pytest.approx(corpus, abs=1e-9)
    rows = [{"item_id": str(i), "parsed": h, "expected": r} for i, (h, r) in enumerate(zip(HYPOTHESES, REFERENCES,
                                                                                            strict=True))]
    report = evaluate(store, add_run(store, rows, kind="generate", metric="chrf", task="g"), rounds=20)
    assert report.values["chrf"].value == pytest.approx(corpus, abs=1e-9)


def test_failed_answer_scores_as_an_empty_text():
    pairs = [("the cat", "the cat"), (None, "a dog")]
    expected = sacrebleu.corpus_chrf(["the cat", ""], [["the cat", "a dog"]]).score / 100
    assert metrics.compute("chrf", pairs) == pytest.approx(expected, abs=1e-9)


def test_eval_names_labels_the_sample_never_expects(store: Store):
    labels = ["a", "b", "c", "d", "e"]
    report = evaluate(store, add_run(store, classify_rows(["a"] * 40, ["a"] * 40), labels=labels, task="one"),
                      rounds=20)
    assert report.values["macro_f1"].value == pytest.approx(0.2)
    assert any("cover 1 of 5 labels; never expected: b, c, d, e" in w for w in report.warnings)
    fine = evaluate(store, add_run(store, classify_rows(labels * 8, labels * 8), labels=labels, task="all"),
                    rounds=20)
    assert fine.warnings == []
