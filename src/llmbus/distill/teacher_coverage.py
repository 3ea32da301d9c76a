"""Can a teacher run teach a student, and did the student learn more than the majority answer?

Distillation refuses teacher answers on the training split that hold one label only, or a label with fewer than
MIN_LABEL_EXAMPLES answers (a student cannot learn it, and its scores would look fine on the same skew), unless
allowed; labels the spec declares but the teacher never gave are warned about. Extraction is refused only when
the teacher found (almost) no entities: rare entity types are normal there, and warned about.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llmbus.distill.examples import Example
from llmbus.errors import LlmbusError
from llmbus.task import metrics
from llmbus.task.spec import TaskSpec

MIN_LABEL_EXAMPLES = 3  # teacher answers a label needs on the training split before a student can learn it


def label_counts(spec: TaskSpec, examples: list[Example]) -> Counter[str]:
    """Teacher answers per label (classify) or entity mentions per type (extract): as the task's kind counts."""
    return spec.kind_strategy.answer_counts([e.teacher for e in examples])


def declared_labels(spec: TaskSpec) -> list[str]:
    """The labels the spec declares: output.labels, or an extract schema's entity-type enum (if it has one)."""
    if spec.output.labels:
        return list(spec.output.labels)
    entity = (((spec.output.json_schema or {}).get("properties") or {}).get("entities") or {}).get("items") or {}
    return [str(t) for t in ((entity.get("properties") or {}).get("type") or {}).get("enum") or []]


def coverage_problems(spec: TaskSpec, train: list[Example]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the teacher's training answers: problems make distillation refuse (a student
    cannot learn from them, and its scores would look fine on the same skew); warnings name labels it lacks."""
    kind = spec.kind_strategy
    counts = label_counts(spec, train)
    plural = kind.answer_noun
    found = kind.coverage_problem(counts, len(train), MIN_LABEL_EXAMPLES)
    problems = [found] if found else []
    rare = [f"{label} ({n})" for label, n in sorted(counts.items()) if n < MIN_LABEL_EXAMPLES]
    rare_line = (f"{', '.join(rare)} {'has' if len(rare) == 1 else 'have'} fewer than {MIN_LABEL_EXAMPLES} teacher "
                 f"{plural} on the training split")
    warnings = []
    if rare and kind.rare_is_problem():
        problems.append(f"label {rare_line}: too few to learn or to score")
    elif rare:
        warnings.append(f"entity type {rare_line}: the student will rarely find them")
    declared = declared_labels(spec)
    missing = metrics.missing_labels(declared, counts)
    if missing:
        warnings.append(f"the teacher's {plural} on the training split cover {len(declared) - len(missing)} of the "
                        f"{len(declared)} labels the spec declares; missing: {', '.join(missing)} (the student will "
                        "never give them)")
    return problems, warnings


def check_coverage(spec: TaskSpec, teacher: str, train: list[Example], allow_missing_labels: bool,
                   more: str | None = None) -> list[str]:
    """Refuse teacher answers a student cannot learn from (unless allowed); the warnings to report. `teacher`
    names where the answers come from ("teacher run 1a2b3c4d", "the traffic of gateway:sms"); `more` how to get
    more answers when not by running the teacher (traffic: serve more, label more)."""
    problems, warnings = coverage_problems(spec, train)
    if problems and not allow_missing_labels:
        fix = (f"Get more answers: {more}" if more else "Run the teacher on more, representative items (`llmbus run "
               "TASK --limit N` samples every class)")
        raise LlmbusError(f"{teacher}: {'; '.join(problems)}. {fix}, or pass --allow-missing-labels to train anyway")
    return [f"{p} (--allow-missing-labels)" for p in problems] + warnings


def one_answer_warning(spec: TaskSpec, answers: list[Any], teacher: list[Any], more: str | None = None) -> list[str]:
    """A warning when the student gives one answer (or, extracting, no entity) on every held-out item where the
    teacher gives several: its scores there measure the majority answer, not learning (`more`: see
    check_coverage)."""
    return spec.kind_strategy.one_answer_warning(answers, teacher, more)


def gold_coverage_warning(spec: TaskSpec, test: list[Example]) -> list[str]:
    """The metric's own warning when the test items' gold answers miss some of the task's labels."""
    found = metrics.coverage_warning(spec.output.labels or [], Counter(str(e.gold) for e in test),
                                     f"the {len(test)} test items' expected answers")
    return [found] if found else []
