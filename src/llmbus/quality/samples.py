"""A run's per-item results as compact arrays (a `Sample`), and how each shape of answer fills and scores them.

A task kind names the shape of its answers (`TaskKind.answers` in task/kinds.py): a label of a closed set, an
entity list, or free text. Each shape has one columns class here that accumulates call rows into its arrays and
computes its metrics, per-item right-or-wrong and per-item scores from them; evaluate.py asks the sample's shape
instead of its kind. A kind with a new shape of answer adds one class to `COLUMNS`.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from llmbus.task import metrics
from llmbus.task.kinds import kind_named


@dataclass
class Sample:
    """One run's per-item results as compact arrays (what the bootstrap resamples)."""

    run_id: str
    kind: str
    metric: str
    ids: np.ndarray  # uint64 hash of each item id, for pairing runs
    classes: list[str] = field(default_factory=list)  # classify: index K means "failed / not a label"
    pred: np.ndarray | None = None  # classify: class index per item
    gold: np.ndarray | None = None
    counts: np.ndarray | None = None  # extract: (tp, fp, fn) per item
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # generate: per-item score per metric
    chrf_stats: np.ndarray | None = None  # generate: sacrebleu's chrF statistics per item (corpus chrF sums them)
    errors: int = 0
    cost: np.ndarray | None = None  # USD per item (0 for cache hits)
    latency: np.ndarray | None = None  # seconds per item
    cached: np.ndarray | None = None  # bool: answered from the response cache
    failed: np.ndarray | None = None  # bool: the call failed (counted as a wrong answer)
    custom: dict[str, np.ndarray] = field(default_factory=dict)  # a team's own metric: per-item score (mean)

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.ids)

    def metric_names(self) -> list[str]:
        """The metrics this kind reports, the run's main metric first."""
        names = kind_named(self.kind).eval_metrics
        return [self.metric, *[m for m in [*self.custom, *names] if m != self.metric]]


class Columns:
    """The arrays of one shape of answer: filled call by call, then scored on any index sample."""

    def __init__(self, labels: list[str]) -> None:
        """`labels`: the spec's label set (label columns number their classes from it; others ignore it)."""

    def add(self, predicted: Any, expected: Any) -> None:
        """One item's answer (None when the call failed) and its expected answer."""
        raise NotImplementedError

    def fill(self, sample: Sample) -> None:
        """Write the accumulated arrays into the sample."""
        raise NotImplementedError

    @staticmethod
    def values(sample: Sample, idx: np.ndarray | None) -> dict[str, float]:
        """The kind's metrics over the items `idx` (all when None; repeats allowed)."""
        raise NotImplementedError

    @staticmethod
    def right_or_wrong(sample: Sample) -> np.ndarray | None:
        """Per-item correctness where answers are right or wrong (an entity list: exactly the expected entities),
        else None."""
        return None

    @staticmethod
    def partial_scores(sample: Sample) -> np.ndarray | None:
        """Per-item scores of a metric that is not right or wrong, when this shape computes them (else the
        sample's `scores` column of the metric is read)."""
        return None


class LabelColumns(Columns):
    """A label per item: class indexes of the prediction and the expected answer (failed: its own column)."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__(labels)
        self.classes = list(labels)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.pred, self.gold = array("i"), array("i")

    def add(self, predicted: Any, expected: Any) -> None:
        for value in (expected, predicted):
            if value is not None and str(value) not in self.index:
                self.index[str(value)] = len(self.classes)
                self.classes.append(str(value))
        self.gold.append(self.index[str(expected)])
        self.pred.append(self.index[str(predicted)] if predicted is not None else -1)

    def fill(self, sample: Sample) -> None:
        pred = np.frombuffer(self.pred, dtype=np.int32).copy()
        pred[pred < 0] = len(self.classes)  # failed answers get their own column
        sample.classes = self.classes
        sample.pred, sample.gold = pred, np.frombuffer(self.gold, dtype=np.int32).copy()

    @staticmethod
    def values(sample: Sample, idx: np.ndarray | None) -> dict[str, float]:
        assert sample.pred is not None and sample.gold is not None
        pred, gold = (sample.pred, sample.gold) if idx is None else (sample.pred[idx], sample.gold[idx])
        return label_values(pred, gold, len(sample.classes))

    @staticmethod
    def right_or_wrong(sample: Sample) -> np.ndarray | None:
        if sample.pred is None or sample.gold is None:
            return None
        return np.asarray(sample.pred == sample.gold)


def label_values(pred: np.ndarray, gold: np.ndarray, k: int) -> dict[str, float]:
    """Accuracy and macro F1 of class indexes (k classes; index k is a failed answer)."""
    if not len(pred):
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    confusion = np.bincount(gold * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)
    tp = np.diag(confusion[:, :k])
    fp = confusion[:, :k].sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    # Macro over every class (the label set plus any other value seen), like scikit-learn's f1_score: a class the
    # sample never expects still costs its wrong predictions, and scores 0 when never expected nor predicted.
    f1s = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return {"accuracy": float(tp.sum() / len(pred)), "macro_f1": float(f1s.mean())}


class EntityColumns(Columns):
    """An entity list per item: (true positives, false positives, false negatives) against the expected list."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__(labels)
        self.counts = array("q")

    def add(self, predicted: Any, expected: Any) -> None:
        self.counts.extend(metrics.entity_counts(predicted if predicted is not None else [], expected))

    def fill(self, sample: Sample) -> None:
        sample.counts = np.frombuffer(self.counts, dtype=np.int64).reshape(-1, 3).copy()

    @staticmethod
    def values(sample: Sample, idx: np.ndarray | None) -> dict[str, float]:
        assert sample.counts is not None
        counts = sample.counts if idx is None else sample.counts[idx]
        tp, fp, fn = (int(x) for x in counts.sum(axis=0)) if len(counts) else (0, 0, 0)
        exact = float(np.mean((counts[:, 1] == 0) & (counts[:, 2] == 0))) if len(counts) else float("nan")
        return {"entity_f1": metrics.f1(tp, fp, fn), "entity_precision": tp / (tp + fp) if tp + fp else 0.0,
                "entity_recall": tp / (tp + fn) if tp + fn else 0.0, "exact_match": exact}

    @staticmethod
    def right_or_wrong(sample: Sample) -> np.ndarray | None:
        if sample.counts is None:
            return None
        return np.asarray((sample.counts[:, 1] == 0) & (sample.counts[:, 2] == 0))

    @staticmethod
    def partial_scores(sample: Sample) -> np.ndarray | None:
        """Each item's entity F1 (1 when none were expected nor found)."""
        if sample.counts is None:
            return None
        tp, fp, fn = (sample.counts[:, i].astype(float) for i in range(3))
        denom = 2 * tp + fp + fn
        return np.divide(2 * tp, denom, out=np.ones(len(tp)), where=denom > 0)


class TextColumns(Columns):
    """Free text per item: its score on every generate metric, and chrF statistics (corpus chrF sums them)."""

    SCORED: ClassVar[tuple[str, ...]] = ("exact_match", "numeric_match", "chrf")

    def __init__(self, labels: list[str]) -> None:
        super().__init__(labels)
        self.scores: dict[str, array[float]] = {m: array("d") for m in self.SCORED}
        self.chrf_stats = array("d")

    def add(self, predicted: Any, expected: Any) -> None:
        stats = metrics.chrf_statistics("" if predicted is None else str(predicted), str(expected))
        self.chrf_stats.extend(stats)
        for name, column_scores in self.scores.items():
            column_scores.append(metrics.chrf_from_statistics(stats) if name == "chrf"
                                 else metrics.item_score(name, predicted, expected))

    def fill(self, sample: Sample) -> None:
        sample.scores = {m: np.frombuffer(v, dtype=np.float64).copy() for m, v in self.scores.items()}
        sample.chrf_stats = np.frombuffer(self.chrf_stats, dtype=np.float64).reshape(-1, 18).copy()

    @staticmethod
    def values(sample: Sample, idx: np.ndarray | None) -> dict[str, float]:
        values = {m: float(np.mean(v if idx is None else v[idx])) if len(v) else float("nan")
                  for m, v in sample.scores.items()}
        if sample.chrf_stats is not None and len(sample.chrf_stats):
            stats = sample.chrf_stats if idx is None else sample.chrf_stats[idx]
            values["chrf"] = metrics.chrf_from_statistics(stats.sum(axis=0))
        return values

    @staticmethod
    def right_or_wrong(sample: Sample) -> np.ndarray | None:
        if sample.metric not in {"exact_match", "numeric_match"}:
            return None
        return np.asarray(sample.scores[sample.metric] == 1.0)


COLUMNS: Mapping[str, type[Columns]] = {"label": LabelColumns, "entities": EntityColumns, "text": TextColumns}


def columns_of(kind: str) -> type[Columns]:
    """The columns class of a kind's answers."""
    return COLUMNS[kind_named(kind).answers]
