"""Held-out figures: the student's answers and confidences on the validation and test items, scored by the
task's main metric, and its latency one item at a time (what a request sees).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmbus.distill.examples import Example
from llmbus.embed import StageCallback
from llmbus.task import metrics
from llmbus.task.spec import TaskSpec
from llmbus.train.student import Student


def task_metric(spec: TaskSpec, pairs: Iterable[tuple[Any, Any]]) -> float:
    """The task's main metric over (answer, reference) pairs, over the task's label set as runs score it."""
    return metrics.compute(spec.main_metric, pairs, spec.output.labels or ())


@dataclass
class Scored:
    """A student's answers and confidences on the validation and test items."""

    val: list[Any]
    test: list[Any]
    val_confidence: list[float]
    test_confidence: list[float]


def answer_heldout(spec: TaskSpec, student: Student, val: list[Example], test: list[Example],
                   progress: StageCallback | None = None) -> Scored:
    """The student's answers and confidences on the validation and test items."""
    total = len(val) + len(test)
    if progress:
        progress("answering the held-out items", 0, total)
    val_answers, val_conf = predict(spec, student, val)
    if progress:
        progress("answering the held-out items", len(val), total)
    test_answers, test_conf = predict(spec, student, test)
    if progress:
        progress("answering the held-out items", total, total)
    return Scored(val_answers, test_answers, val_conf, test_conf)


def predict(spec: TaskSpec, student: Student, examples: list[Example]) -> tuple[list[Any], list[float]]:
    """Student answers and confidences (1.0 for extraction, which has no single confidence)."""
    if not examples:
        return [], []
    if spec.kind == "extract":
        return student.extract([e.tokens or e.input.split() for e in examples]), [1.0] * len(examples)
    probs = student.predict_proba([e.input for e in examples])
    answers = [max(p, key=lambda k: p[k]) for p in probs]
    return answers, [p[a] for p, a in zip(probs, answers, strict=True)]


def single_item_latency(spec: TaskSpec, student: Student, examples: list[Example]) -> float:
    """Median seconds to answer one item at a time (what a request sees)."""
    ticks = []
    for example in examples:
        tick = time.perf_counter()
        predict(spec, student, [example])
        ticks.append(time.perf_counter() - tick)
    return float(np.median(ticks)) if ticks else float("nan")


def same_answer(spec: TaskSpec, a: Any, b: Any) -> bool:
    """Whether two answers are identical (entity lists: the same entities, in any order)."""
    if spec.kind == "extract":
        _, fp, fn = metrics.entity_counts(a, b)
        return fp == 0 and fn == 0
    return str(a) == str(b)
