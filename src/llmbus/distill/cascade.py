"""The cascade threshold: the student answers when its confidence reaches it, else the request escalates to the
teacher. Picked on the validation items as the fewest escalations that keep `target` × the teacher's quality;
reported on the test items. `providers/cascade.py` routes by it at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmbus.distill.examples import Example
from llmbus.distill.heldout import Scored, task_metric
from llmbus.task import metrics
from llmbus.task.spec import TaskSpec


def pick_threshold(confidences: list[float], student_scores: list[float], teacher_scores: list[float],
                   target: float = 0.98) -> tuple[float, float, float]:
    """The threshold with the fewest escalations whose cascade quality reaches `target` × teacher quality.

    Returns (threshold, cascade quality, escalation rate) on the given (validation) items."""
    teacher_quality = float(np.mean(teacher_scores)) if teacher_scores else 0.0
    best = (1.01, teacher_quality, 1.0)  # escalate everything: the teacher's own quality
    for threshold in [*sorted(set(confidences)), 0.0]:
        routed = [s if c >= threshold else t for c, s, t in zip(confidences, student_scores, teacher_scores,
                                                                 strict=True)]
        quality = float(np.mean(routed)) if routed else 0.0
        escalated = float(np.mean([c < threshold for c in confidences])) if confidences else 1.0
        if quality >= target * teacher_quality and escalated < best[2]:
            best = (float(threshold), quality, escalated)
    return best


def cascade_on(spec: TaskSpec, student: Scored, val: list[Example], test: list[Example],
               target: float) -> tuple[float, float, float]:
    """(threshold picked on validation, cascade quality on test, test escalation rate): the student's answer
    when its confidence reaches the threshold, else the teacher's."""
    def item_scores(answers: list[Any], examples: list[Example]) -> list[float]:
        return [metrics.item_score(spec.main_metric, a, e.gold) for a, e in zip(answers, examples, strict=True)]

    threshold, _, _ = pick_threshold(student.val_confidence, item_scores(student.val, val),
                                     item_scores([e.teacher for e in val], val), target)
    routed = [a if c >= threshold else e.teacher for a, c, e in zip(student.test, student.test_confidence, test,
                                                                     strict=True)]
    escalated = float(np.mean([c < threshold for c in student.test_confidence])) if test else 0.0
    quality = task_metric(spec, ((a, e.gold) for a, e in zip(routed, test, strict=True)))
    return threshold, quality, escalated


def cascade_entry(student: str, teacher: str, threshold: float) -> dict[str, Any]:
    """A `cascade:` model's llmbus.yaml entry."""
    return {"student": student, "teacher": teacher, "threshold": round(threshold, 6)}
