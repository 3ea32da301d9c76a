"""Metrics by task kind, computed from (prediction, expected) pairs taken from the call log.

Each metric equals the well-known library's definition on the same answers (the tests compare against them):
- accuracy, macro_f1: scikit-learn's `accuracy_score` and `f1_score(average="macro", zero_division=0)` over the
  task's label set together with any other value the answers hold (scikit-learn's union of labels). A class the
  sample never expects still counts: predicting it wrongly costs precision, and when it is neither expected nor
  predicted its F1 is 0 (scikit-learn's zero_division=0), so a one-class sample cannot look perfect.
- entity_f1: seqeval's micro F1 over entity mentions, with a mention matched by its (text, type) — an LLM's
  answer names entities, not token positions — counting repeats.
- chrf: sacrebleu's chrF (character 6-grams, beta 2) on the 0–1 scale; the run's figure is sacrebleu's corpus
  score (statistics summed over items), an item's score its sentence score.
A failed call counts as a wrong answer (no label; an empty text): a model that breaks the schema has not answered.
A team's own metric (`package.module:function`) scores each item in [0, 1]; the run's figure is the mean.

`Tally` keeps running totals, so a run's metric after each answer costs O(1) per item, not a pass over all.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import numpy as np

from llmbus.task.checks import custom_score, resolve_function

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
CLASS_METRICS = frozenset({"accuracy", "macro_f1"})


def is_custom(metric: str) -> bool:
    """Whether `metric` is a team's own function (`package.module:function`, task/checks.py)."""
    return ":" in metric


def item_score(metric: str, predicted: Any, expected: Any, item: dict[str, Any] | None = None) -> float:
    """One item's score in [0, 1] (for accuracy-like metrics, 1 when right); a custom metric also sees the item's
    fields (`{}` where an answer is scored outside a dataset row)."""
    if predicted is None:
        return 0.0
    if is_custom(metric):
        return custom_score(resolve_function(metric), metric, expected, predicted, item or {})
    if metric in CLASS_METRICS:
        return float(str(predicted) == str(expected))
    if metric == "entity_f1":
        tp, fp, fn = entity_counts(predicted, expected)
        return f1(tp, fp, fn) if (tp + fp + fn) else 1.0
    if metric == "exact_match":
        return float(normalize_text(str(predicted)) == normalize_text(str(expected)))
    if metric == "numeric_match":
        return float(numeric_equal(str(predicted), str(expected)))
    if metric == "chrf":
        return chrf(str(predicted), str(expected))
    raise ValueError(f"unknown metric {metric!r}")


class Tally:
    """Running totals of one metric over (predicted, expected) answers; `value()` at any point is the metric
    over everything added so far (predicted None = a failed call)."""

    def __init__(self, metric: str, labels: Sequence[str] = ()):
        known = {*CLASS_METRICS, "entity_f1", "exact_match", "numeric_match", "chrf"}
        if metric not in known and not is_custom(metric):
            raise ValueError(f"unknown metric {metric!r}")
        self.metric = metric
        self.labels = [str(label) for label in labels]
        self.n = 0
        self.confusion: Counter[tuple[str, str | None]] = Counter()  # (expected, predicted) for classify
        self.sums = np.zeros(18 if metric == "chrf" else 3)  # chrF statistics, or (tp, fp, fn), or score sum

    def add(self, predicted: Any, expected: Any, score: float | None = None) -> None:
        """Count one answer (`score`: its item score when already known, which a custom metric, needing the item,
        uses instead of scoring again)."""
        self.n += 1
        if is_custom(self.metric):
            self.sums[0] += score if score is not None else item_score(self.metric, predicted, expected)
            if self.labels:  # classify: which labels the sample expects still tells how well it covers them
                self.confusion[(str(expected), None if predicted is None else str(predicted))] += 1
        elif self.metric in CLASS_METRICS:
            self.confusion[(str(expected), None if predicted is None else str(predicted))] += 1
        elif self.metric == "entity_f1":
            self.sums += entity_counts([] if predicted is None else predicted, expected)
        elif self.metric == "chrf":
            self.sums += chrf_statistics("" if predicted is None else str(predicted), str(expected))
        else:
            self.sums[0] += item_score(self.metric, predicted, expected)

    def extend(self, pairs: Iterable[tuple[Any, Any]]) -> Tally:
        """Count many answers; returns self."""
        for predicted, expected in pairs:
            self.add(predicted, expected)
        return self

    def value(self) -> float:
        """The metric so far; nan before the first answer."""
        if not self.n:
            return float("nan")
        if self.metric in CLASS_METRICS:
            right = sum(n for (gold, pred), n in self.confusion.items() if gold == pred)
            return right / self.n if self.metric == "accuracy" else self._macro_f1()
        if self.metric == "entity_f1":
            return f1(*(int(x) for x in self.sums))
        if self.metric == "chrf":
            return chrf_from_statistics(self.sums)
        return float(self.sums[0] / self.n)

    def classes(self) -> list[str]:
        """The label set followed by any other value seen (expected or predicted), in order of appearance."""
        seen = dict.fromkeys(self.labels)
        for gold, pred in self.confusion:
            seen.setdefault(gold)
            if pred is not None:
                seen.setdefault(pred)
        return list(seen)

    def expected_counts(self) -> Counter[str]:
        """How often each class was the expected answer (classify)."""
        counts: Counter[str] = Counter()
        for (gold, _), n in self.confusion.items():
            counts[gold] += n
        return counts

    def _macro_f1(self) -> float:
        tp: Counter[str] = Counter()
        fp: Counter[str] = Counter()
        fn: Counter[str] = Counter()
        for (gold, pred), n in self.confusion.items():
            if gold == pred:
                tp[gold] += n
                continue
            fn[gold] += n
            if pred is not None:
                fp[pred] += n
        return float(np.mean([f1(tp[c], fp[c], fn[c]) for c in self.classes()]))


def compute(metric: str, pairs: Iterable[tuple[Any, Any]], labels: Sequence[str] = ()) -> float:
    """The metric over all (predicted, expected) pairs (`labels`: the task's label set); nan when there are none."""
    return Tally(metric, labels).extend(pairs).value()


def macro_f1(predicted: list[Any], expected: list[Any], labels: Sequence[str] = ()) -> float:
    """Unweighted mean of per-class F1 over `labels` and every value that occurs (scikit-learn's macro F1)."""
    return compute("macro_f1", zip(predicted, expected, strict=True), labels)


def missing_labels(labels: Sequence[str], expected: Iterable[Any]) -> list[str]:
    """The declared labels no expected answer holds (a sample that cannot measure them)."""
    seen = {str(e) for e in expected}
    return [label for label in labels if label not in seen]


def coverage_warning(labels: Sequence[str], counts: Counter[str], what: str = "the expected answers") -> str | None:
    """A warning line when `counts` (per expected label) miss some of the declared labels, else None."""
    missing = [label for label in labels if not counts.get(label)]
    if not missing or not labels:
        return None
    return (f"{what} cover {len(labels) - len(missing)} of {len(labels)} labels; never expected: "
            f"{', '.join(missing)} — their F1 is 0 and the metric cannot tell how the model handles them "
            "(answer a representative sample: more items, or --stratify)")


def f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts (0 when nothing was predicted or expected)."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def entity_counts(predicted: Any, expected: Any) -> tuple[int, int, int]:
    """(tp, fp, fn) of exact (text, type) entity matches, counting duplicates."""
    pred = Counter(_entity_keys(predicted))
    gold = Counter(_entity_keys(expected))
    tp = sum((pred & gold).values())
    return tp, sum(pred.values()) - tp, sum(gold.values()) - tp


def _entity_keys(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        value = value.get("entities", [])
    if not isinstance(value, list):
        return []
    return [(str(e.get("text", "")).strip().lower(), str(e.get("type", "")).strip().lower())
            for e in value if isinstance(e, dict)]


def normalize_text(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse spaces (SQuAD-style)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def last_number(text: str) -> float | None:
    """The last number in a text ("#### 1,234" → 1234.0), None when there is none."""
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_equal(predicted: str, expected: str) -> bool:
    """Whether the last numbers of both texts are equal (math answers)."""
    a, b = last_number(predicted), last_number(expected)
    return a is not None and b is not None and abs(a - b) < 1e-6


@cache
def _chrf_metric() -> Any:
    from sacrebleu.metrics import CHRF  # sacrebleu's defaults: character 6-grams, beta 2, spaces ignored

    return CHRF()


def chrf_statistics(hypothesis: str, reference: str) -> np.ndarray:
    """sacrebleu's chrF statistics of one hypothesis: (hyp, ref, match) counts for each n-gram order."""
    return np.asarray(_chrf_metric()._extract_corpus_statistics([hypothesis], [[reference]])[0], dtype=float)


def chrf_from_statistics(statistics: np.ndarray) -> float:
    """chrF in [0, 1] from (summed) statistics, as sacrebleu computes its corpus score."""
    return float(_chrf_metric()._compute_f_score([int(x) for x in statistics])) / 100


def chrf(hypothesis: str, reference: str) -> float:
    """Character n-gram F-score of one answer (sacrebleu's sentence chrF, Popović 2015) in [0, 1]."""
    return chrf_from_statistics(chrf_statistics(hypothesis, reference))


def per_class_scores(confusion: list[list[int]], classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows expected, columns
    predicted; extra columns, such as failed answers, count as misses)."""
    out: dict[str, dict[str, float]] = {}
    for i, cls in enumerate(classes):
        row = confusion[i]
        tp = row[i]
        fp = sum(confusion[r][i] for r in range(len(classes))) - tp
        fn = sum(row) - tp
        out[cls] = {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                    "f1": f1(tp, fp, fn), "support": float(sum(row))}
    return out
