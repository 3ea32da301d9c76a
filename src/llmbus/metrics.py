"""Metrics by task kind, computed from (prediction, expected) pairs taken from the call log.

A failed call counts as a wrong answer: a model that breaks the schema has not answered.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def item_score(metric: str, predicted: Any, expected: Any) -> float:
    """One item's score in [0, 1] (for accuracy-like metrics, 1 when right)."""
    if predicted is None:
        return 0.0
    if metric in {"accuracy", "macro_f1"}:
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


def compute(metric: str, pairs: Iterable[tuple[Any, Any]]) -> float:
    """The metric over all (predicted, expected) pairs; nan when there are none."""
    pairs = list(pairs)
    if not pairs:
        return float("nan")
    if metric == "macro_f1":
        return macro_f1([p for p, _ in pairs], [e for _, e in pairs])
    if metric == "entity_f1":
        totals = np.sum([entity_counts(p, e) for p, e in pairs], axis=0)
        return f1(*(int(x) for x in totals))
    return float(np.mean([item_score(metric, p, e) for p, e in pairs]))


def macro_f1(predicted: list[Any], expected: list[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the expected answers."""
    classes = sorted({str(e) for e in expected})
    scores = []
    for cls in classes:
        tp = sum(1 for p, e in zip(predicted, expected, strict=True) if str(p) == cls and str(e) == cls)
        fp = sum(1 for p, e in zip(predicted, expected, strict=True) if str(p) == cls and str(e) != cls)
        fn = sum(1 for p, e in zip(predicted, expected, strict=True) if str(p) != cls and str(e) == cls)
        scores.append(f1(tp, fp, fn))
    return float(np.mean(scores))


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


def chrf(hypothesis: str, reference: str, n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (chrF, Popović 2015), averaged over n-gram orders 1..n, in [0, 1]."""
    hyp, ref = hypothesis.replace(" ", ""), reference.replace(" ", "")
    precisions, recalls = [], []
    for order in range(1, n + 1):
        hyp_grams = Counter(hyp[i:i + order] for i in range(len(hyp) - order + 1))
        ref_grams = Counter(ref[i:i + order] for i in range(len(ref) - order + 1))
        if not hyp_grams or not ref_grams:
            continue
        overlap = sum((hyp_grams & ref_grams).values())
        precisions.append(overlap / sum(hyp_grams.values()))
        recalls.append(overlap / sum(ref_grams.values()))
    if not precisions:
        return float(hyp == ref)
    p, r = float(np.mean(precisions)), float(np.mean(recalls))
    return 0.0 if p + r == 0 else (1 + beta**2) * p * r / (beta**2 * p + r)


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
